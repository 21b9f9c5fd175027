//! Writing query results as a table, CSV or JSON lines.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{make_encoder, EncoderOptions, LineDelimited};
use datafusion::arrow::json::WriterBuilder as JsonWriterBuilder;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use crate::SqlError;

/// How `run_query` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table (all rows are held in memory to size the columns).
    #[default]
    Table,
    /// CSV with a header row; list, struct and map values are written as JSON text.
    Csv,
    /// One JSON object per line, nulls written as `null`.
    Json,
}

impl OutputFormat {
    /// The name `FromStr` accepts.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = SqlError;

    fn from_str(s: &str) -> Result<Self, SqlError> {
        match s {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            _ => Err(SqlError::Format(s.to_owned())),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Drains `stream` into `out` in `format`; returns the number of rows written.
pub(crate) async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64, SqlError> {
    let schema = stream.schema();
    let encode = |source| SqlError::Encode {
        format: format.name(),
        source,
    };
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                batches.push(batch);
            }
            let table = pretty_format_batches_with_schema(schema, &batches).map_err(encode)?;
            writeln!(out, "{table}").map_err(SqlError::Write)?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote_header = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer
                    .write(&nested_as_json_text(&batch).map_err(encode)?)
                    .map_err(encode)?;
                wrote_header = true;
            }
            if !wrote_header {
                // The header alone still tells the reader which columns matched nothing.
                let empty = RecordBatch::new_empty(schema);
                writer
                    .write(&nested_as_json_text(&empty).map_err(encode)?)
                    .map_err(encode)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = JsonWriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch).map_err(encode)?;
            }
            writer.finish().map_err(encode)?;
        }
    }
    out.flush().map_err(SqlError::Write)?;
    Ok(rows)
}

/// Whether the CSV writer cannot write a column of this type as a single cell.
fn is_nested(data_type: &DataType) -> bool {
    match data_type {
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..)
        | DataType::Union(..) => true,
        DataType::Dictionary(_, value) => is_nested(value),
        _ => false,
    }
}

/// Replaces nested columns by their JSON text, so CSV gets one cell per value.
fn nested_as_json_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_nested(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if is_nested(field.data_type()) {
            fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
            columns.push(json_text(field, column.as_ref())?);
        } else {
            fields.push(Arc::clone(field));
            columns.push(Arc::clone(column));
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns)
}

/// Each value of `array` as JSON text (`{"insult":0.9}`, `[1,2]`); nulls stay null.
fn json_text(field: &FieldRef, array: &dyn Array) -> Result<ArrayRef, ArrowError> {
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let mut encoder = make_encoder(field, array, &options)?;
    let mut builder = StringBuilder::with_capacity(array.len(), array.len() * 16);
    let mut buf = Vec::new();
    for i in 0..array.len() {
        if encoder.is_null(i) {
            builder.append_null();
            continue;
        }
        buf.clear();
        encoder.encode(i, &mut buf);
        builder.append_value(String::from_utf8_lossy(&buf));
    }
    Ok(Arc::new(builder.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float32Array, Int64Array, ListArray, StructArray};
    use datafusion::arrow::datatypes::Int32Type;

    #[test]
    fn format_names_round_trip() {
        for format in [OutputFormat::Table, OutputFormat::Csv, OutputFormat::Json] {
            assert_eq!(format.name().parse::<OutputFormat>().unwrap(), format);
        }
        let err = "yaml".parse::<OutputFormat>().unwrap_err();
        assert!(
            err.to_string().contains("expected one of table, csv, json"),
            "{err}"
        );
    }

    #[test]
    fn nested_columns_become_json_text() {
        let scores = StructArray::from(vec![(
            Arc::new(Field::new("insult", DataType::Float32, false)),
            Arc::new(Float32Array::from(vec![0.5, 0.25])) as ArrayRef,
        )]);
        let ids = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]);
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("scores", Arc::new(scores) as ArrayRef),
            ("ids", Arc::new(ids) as ArrayRef),
        ])
        .unwrap();
        let flat = nested_as_json_text(&batch).unwrap();
        assert_eq!(flat.schema().field(0).data_type(), &DataType::Int64);
        let text = |col: usize, row: usize| {
            let a = flat
                .column(col)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>();
            let a = a.unwrap();
            (!a.is_null(row)).then(|| a.value(row).to_owned())
        };
        assert_eq!(text(1, 0).as_deref(), Some(r#"{"insult":0.5}"#));
        assert_eq!(text(2, 0).as_deref(), Some("[1,2]"));
        assert_eq!(text(2, 1), None);
    }
}
