//! One schema over many input files, and fitting batches to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::{infer, parquet_source, InputFile, InputFormat, IoError};

/// The unified schema over all files: JSON lines inferred from every line of each file,
/// Parquet from file metadata; columns in order of first appearance, all nullable (a column
/// missing from a file reads as nulls). Conflicting types are an error naming both files.
pub fn unified_schema(files: &[InputFile]) -> Result<SchemaRef, IoError> {
    let mut merged = Merger::default();
    for file in files {
        let schema = match file.format {
            InputFormat::Parquet => parquet_source::file_schema(&file.path, file.snapshot)?,
            InputFormat::JsonLines { compression } => {
                let (schema, rows) = infer::infer_schema(&file.path, compression, file.snapshot)?;
                file.row_count.record(rows);
                Some(Arc::new(schema))
            }
        };
        for field in schema.iter().flat_map(|s| s.fields().iter()) {
            merged.add(field, &file.path)?;
        }
    }
    Ok(Arc::new(Schema::new(merged.fields)))
}

/// Accumulates fields across files, remembering where each column was first seen.
#[derive(Default)]
struct Merger {
    fields: Vec<Field>,
    index: HashMap<String, (usize, PathBuf)>,
}

impl Merger {
    /// Adds one file's field, widening or failing on a type conflict.
    fn add(&mut self, field: &Field, path: &Path) -> Result<(), IoError> {
        let Some((i, first_path)) = self.index.get(field.name()) else {
            self.index.insert(
                field.name().clone(),
                (self.fields.len(), path.to_path_buf()),
            );
            self.fields
                .push(Field::new(field.name(), field.data_type().clone(), true));
            return Ok(());
        };
        let current = self.fields[*i].data_type();
        let merged =
            merge_types(current, field.data_type()).ok_or_else(|| IoError::SchemaConflict {
                column: field.name().clone(),
                first_path: first_path.clone(),
                first_type: current.clone(),
                second_path: path.to_path_buf(),
                second_type: field.data_type().clone(),
            })?;
        self.fields[*i] = Field::new(field.name(), merged, true);
        Ok(())
    }
}

/// The common type of two columns, or `None` if they cannot share one.
///
/// Widening never changes a value silently: nulls take any type, integers widen to Int64,
/// UInt64 or (signed with UInt64) Decimal128(20, 0), other numeric mixes to Float64 (a value
/// it cannot hold exactly becomes a row error when read), strings to the larger string type,
/// and structs/lists merge member-wise.
fn merge_types(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    let string = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    Some(match (a, b) {
        (Null, t) | (t, Null) => t.clone(),
        (x, y) if x.is_signed_integer() && y.is_signed_integer() => Int64,
        (x, y) if x.is_unsigned_integer() && y.is_unsigned_integer() => UInt64,
        // Signed and unsigned: Int64 holds the narrow unsigned types, a decimal both 64-bit ones.
        (x, y) if x.is_integer() && y.is_integer() => {
            if matches!(x, UInt64) || matches!(y, UInt64) {
                Decimal128(crate::infer::WIDE_INT_PRECISION, 0)
            } else {
                Int64
            }
        }
        (Decimal128(p, 0), x) | (x, Decimal128(p, 0)) if x.is_integer() => {
            Decimal128((*p).max(crate::infer::WIDE_INT_PRECISION), 0)
        }
        // Anything else numeric reads as Float64; values it cannot hold exactly are row errors.
        (x, y) if x.is_numeric() && y.is_numeric() => Float64,
        (x, y) if string(x) && string(y) => {
            if matches!(x, LargeUtf8) || matches!(y, LargeUtf8) {
                LargeUtf8
            } else {
                Utf8
            }
        }
        (List(x), List(y)) => {
            let item = merge_types(x.data_type(), y.data_type())?;
            List(Arc::new(Field::new(x.name(), item, true)))
        }
        (Struct(x), Struct(y)) => Struct(merge_struct(x, y)?),
        _ => return None,
    })
}

/// Member-wise union of two struct types.
fn merge_struct(x: &Fields, y: &Fields) -> Option<Fields> {
    let mut out: Vec<Field> = x
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for f in y {
        match out.iter_mut().find(|o| o.name() == f.name()) {
            Some(o) => *o = Field::new(f.name(), merge_types(o.data_type(), f.data_type())?, true),
            None => out.push(f.as_ref().clone().with_nullable(true)),
        }
    }
    Some(out.into())
}

/// Rows of a batch that cannot be kept, with the reason (row index in the batch).
pub(crate) type BadRows = Vec<(usize, String)>;

/// Fits a batch read from `path` to `schema`: columns by name, cast where types differ, nulls
/// where the file lacks a column, extra columns dropped. A number that the cast would change
/// (an integer too large for a Float64 column, a value out of range) makes its row bad instead.
pub(crate) fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    path: &Path,
) -> Result<(RecordBatch, BadRows), IoError> {
    let rows = batch.num_rows();
    let mut bad = BadRows::new();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            None => new_null_array(field.data_type(), rows),
            Some(c) if c.data_type() == field.data_type() => c.clone(),
            Some(c) => {
                let arrow_err = |source| IoError::Arrow {
                    path: path.to_path_buf(),
                    context: format!(
                        "cannot convert column `{}` from {} to {}",
                        field.name(),
                        c.data_type(),
                        field.data_type()
                    ),
                    source,
                };
                let cast = arrow::compute::cast(c, field.data_type()).map_err(arrow_err)?;
                if c.data_type().is_numeric() && field.data_type().is_numeric() {
                    // Cast back and compare: a value that does not survive the round trip would
                    // be changed silently.
                    let back = arrow::compute::cast(&cast, c.data_type()).map_err(arrow_err)?;
                    let same = arrow::compute::kernels::cmp::eq(c, &back).map_err(arrow_err)?;
                    for i in 0..rows {
                        if c.is_valid(i) && !(same.is_valid(i) && same.value(i)) {
                            let value = arrow::util::display::array_value_to_string(c, i)
                                .unwrap_or_default();
                            let reason = format!(
                                "column `{}`: expected a value that {} (the column's type across the input files) holds exactly, found {value} ({} in this file)",
                                field.name(),
                                field.data_type(),
                                c.data_type(),
                            );
                            if !bad.iter().any(|(j, _)| *j == i) {
                                bad.push((i, reason));
                            }
                        }
                    }
                }
                cast
            }
        };
        columns.push(column);
    }
    bad.sort_by_key(|(i, _)| *i);
    // The row count matters for schemas with no columns at all.
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    let batch =
        RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|source| {
            IoError::Arrow {
                path: path.to_path_buf(),
                context: "batch does not match the unified schema".into(),
                source,
            }
        })?;
    Ok((batch, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Compression;

    fn jsonl(dir: &Path, name: &str, text: &str) -> InputFile {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        InputFile::new(
            path,
            InputFormat::JsonLines {
                compression: Compression::None,
            },
        )
    }

    #[test]
    fn merges_jsonl_files_with_different_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = jsonl(dir.path(), "a.jsonl", "{\"id\":1,\"text\":\"x\"}\n");
        let b = jsonl(
            dir.path(),
            "b.jsonl",
            "{\"id\":2.5,\"lang\":\"en\",\"text\":null}\n",
        );
        let s = unified_schema(&[a, b]).unwrap();
        let cols: Vec<_> = s
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", DataType::Float64, true),
                ("text", DataType::Utf8, true),
                ("lang", DataType::Utf8, true)
            ]
        );
    }

    #[test]
    fn conflicting_types_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = jsonl(dir.path(), "a.jsonl", "{\"x\":1}\n");
        let b = jsonl(dir.path(), "b.jsonl", "{\"x\":{\"y\":1}}\n");
        let err = unified_schema(&[a, b]).unwrap_err().to_string();
        assert!(
            err.contains("a.jsonl") && err.contains("b.jsonl") && err.contains("`x`"),
            "{err}"
        );
    }

    #[test]
    fn merges_struct_members() {
        let s1 = DataType::Struct(vec![Field::new("a", DataType::Int64, true)].into());
        let s2 = DataType::Struct(vec![Field::new("b", DataType::Utf8, true)].into());
        let DataType::Struct(f) = merge_types(&s1, &s2).unwrap() else {
            panic!("not a struct")
        };
        assert_eq!(f.len(), 2);
        assert_eq!(merge_types(&DataType::Utf8, &DataType::Boolean), None);
    }
}
