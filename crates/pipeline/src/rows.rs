//! Texts out of input rows: the `[input] text` template over string columns.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

use crate::error::PipelineError;
use mbpipe_text::template::Template;

/// Checks that every column the template names exists and holds strings.
pub fn check_text_columns(template: &Template, schema: &Schema) -> Result<(), PipelineError> {
    for name in template.fields() {
        let field = schema.field_with_name(name).map_err(|_| {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            PipelineError::Invalid(format!(
                "[input] text uses column `{name}`, which the input does not have (columns: {})",
                have.join(", ")
            ))
        })?;
        if !is_string(field.data_type()) && field.data_type() != &DataType::Null {
            return Err(PipelineError::Invalid(format!(
                "[input] text uses column `{name}`, which holds {} values, not strings",
                field.data_type()
            )));
        }
    }
    Ok(())
}

/// Strings in any of Arrow's layouts, dictionary-encoded too (pandas categoricals, Parquet
/// written with the Arrow schema).
fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// The text of every row: `None` where the text column is null (for a template over several
/// columns: where all of them are null; a null among others renders as empty).
pub fn row_texts(
    template: &Template,
    batch: &RecordBatch,
) -> Result<Vec<Option<String>>, PipelineError> {
    let fields = template.fields();
    let mut columns = Vec::with_capacity(fields.len());
    for name in &fields {
        let col = batch.column_by_name(name).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "[input] text uses column `{name}`, which the input does not have"
            ))
        })?;
        let col = match col.data_type() {
            DataType::Utf8 => col.clone(),
            t if *t == DataType::Null || is_string(t) => {
                arrow::compute::cast(col, &DataType::Utf8)?
            }
            other => {
                return Err(PipelineError::Invalid(format!(
                    "[input] text uses column `{name}`, which holds {other} values, not strings"
                )))
            }
        };
        columns.push(col);
    }
    let strings: Vec<_> = columns.iter().map(|c| c.as_string::<i32>()).collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if strings.iter().all(|s| s.is_null(row)) {
            out.push(None);
            continue;
        }
        if let (Some(only), 1) = (template.single_field(), strings.len()) {
            debug_assert_eq!(only, fields[0]);
            out.push(Some(strings[0].value(row).to_string()));
            continue;
        }
        out.push(Some(template.render(|name| {
            let i = fields
                .iter()
                .position(|f| *f == name)
                .expect("fields come from the template, this is a bug");
            if strings[i].is_null(row) {
                ""
            } else {
                strings[i].value(row)
            }
        })));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use std::sync::Arc;

    #[test]
    fn renders_templates_and_keeps_nulls() {
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("title", DataType::Utf8, true),
            arrow::datatypes::Field::new("body", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("T"), None, None])),
                Arc::new(StringArray::from(vec![Some("B"), Some("b"), None])),
            ],
        )
        .unwrap();
        let t = Template::parse("{title}: {body}").unwrap();
        check_text_columns(&t, &schema).unwrap();
        assert_eq!(
            row_texts(&t, &batch).unwrap(),
            vec![Some("T: B".into()), Some(": b".into()), None]
        );
        let err = check_text_columns(&Template::parse("{nope}").unwrap(), &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`nope`") && err.contains("title, body"),
            "{err}"
        );
    }
}
