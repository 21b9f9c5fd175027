//! JSON lines schema inference that survives a few odd lines.
//!
//! arrow-json infers types well but gives up on a whole file when one line has an object where
//! others have a string. Here each line is inferred alone and the lines then vote per column:
//! the shape (scalar, list or object) most lines agree on wins, and lines of another shape are
//! left for the reader to reject with their line numbers.

use std::collections::HashMap;
use std::path::Path;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::error::ArrowError;
use arrow::json::reader::infer_json_schema_from_iterator;
use serde_json::Value;

use crate::jsonl::{parse_object, LineReader};
use crate::{Compression, IoError};

/// How many non-blank lines of each file schema inference looks at.
const INFER_LINES: usize = 1000;

/// The keys of a JSON object in the order they appear in the text (serde_json's Map sorts them).
struct OrderedKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for OrderedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(OrderedKeys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The shape classes lines vote between.
#[derive(Clone, Copy)]
enum Shape {
    Scalar = 0,
    List = 1,
    Object = 2,
}

fn shape(t: &DataType) -> Option<Shape> {
    match t {
        DataType::Null => None,
        DataType::List(_) => Some(Shape::List),
        DataType::Struct(_) => Some(Shape::Object),
        _ => Some(Shape::Scalar),
    }
}

/// Per column: for each shape, the merged type and how many lines had it.
#[derive(Default)]
struct Votes([Option<(DataType, usize)>; 3]);

impl Votes {
    fn add(&mut self, t: &DataType) {
        let Some(s) = shape(t) else { return };
        let slot = &mut self.0[s as usize];
        *slot = Some(match slot.take() {
            None => (t.clone(), 1),
            Some((old, n)) => (merge(&old, t), n + 1),
        });
    }

    /// The type most lines agree on (the first shape on ties); Null if all were null.
    fn winner(&self) -> DataType {
        let mut best: Option<&(DataType, usize)> = None;
        for v in self.0.iter().flatten() {
            if best.is_none_or(|b| v.1 > b.1) {
                best = Some(v);
            }
        }
        best.map_or(DataType::Null, |(t, _)| t.clone())
    }
}

/// Merges two inferred types of the same column; on a shape conflict the first one stays.
fn merge(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    let scalar = |t: &DataType| matches!(shape(t), Some(Shape::Scalar));
    match (a, b) {
        _ if a == b => a.clone(),
        (Null, t) | (t, Null) => t.clone(),
        (x, y) if x.is_numeric() && y.is_numeric() => Float64,
        // Mixed scalars read as text, as arrow-json's own inference does.
        (x, y) if scalar(x) && scalar(y) => Utf8,
        (List(x), List(y)) => {
            List(Field::new(x.name(), merge(x.data_type(), y.data_type()), true).into())
        }
        (Struct(x), Struct(y)) => Struct(merge_fields(x, y)),
        _ => a.clone(),
    }
}

/// Member-wise union of two struct types.
fn merge_fields(x: &Fields, y: &Fields) -> Fields {
    let mut out: Vec<Field> = x.iter().map(|f| f.as_ref().clone()).collect();
    for f in y {
        match out.iter_mut().find(|o| o.name() == f.name()) {
            Some(o) => *o = Field::new(f.name(), merge(o.data_type(), f.data_type()), true),
            None => out.push(f.as_ref().clone()),
        }
    }
    out.into()
}

/// Infers a file's schema from its first lines, columns in order of first appearance.
///
/// Bad lines are skipped here; reading reports them with their line numbers.
pub(crate) fn infer_schema(path: &Path, compression: Compression) -> Result<Schema, IoError> {
    let mut lines = LineReader::open(path, compression)?;
    let mut columns: Vec<(String, Votes)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut sampled = 0;
    while sampled < INFER_LINES {
        let Some((_, text)) = lines.next_line()? else {
            break;
        };
        let Ok(text) = text else { continue };
        let Ok(map) = parse_object(text) else {
            continue;
        };
        sampled += 1;
        if let Ok(OrderedKeys(keys)) = serde_json::from_str(text) {
            for k in keys {
                if !index.contains_key(&k) {
                    index.insert(k.clone(), columns.len());
                    columns.push((k, Votes::default()));
                }
            }
        }
        let value = Value::Object(map);
        let line_schema = infer_json_schema_from_iterator(std::iter::once(Ok::<_, ArrowError>(
            &value,
        )))
        .map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            context: "cannot infer a schema".into(),
            source,
        })?;
        for field in line_schema.fields() {
            if let Some(&i) = index.get(field.name()) {
                columns[i].1.add(field.data_type());
            }
        }
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, votes)| Field::new(name, votes.winner(), true))
        .collect();
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(text: &str) -> Vec<(String, DataType)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, text).unwrap();
        let s = infer_schema(&p, Compression::None).unwrap();
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    #[test]
    fn columns_keep_file_order_and_widen() {
        let got = infer(
            "{\"zeta\":1,\"alpha\":\"x\"}\nnot json\n{\"mid\":true,\"zeta\":2.5,\"alpha\":3}\n",
        );
        assert_eq!(
            got,
            [
                ("zeta".to_string(), DataType::Float64),
                ("alpha".to_string(), DataType::Utf8),
                ("mid".to_string(), DataType::Boolean)
            ]
        );
    }

    #[test]
    fn an_odd_object_does_not_break_inference() {
        let got = infer("{\"text\":{\"x\":1}}\n{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":null,\"n\":null}\n");
        assert_eq!(
            got,
            [
                ("text".to_string(), DataType::Utf8),
                ("n".to_string(), DataType::Null)
            ]
        );
    }

    #[test]
    fn nested_objects_merge_members() {
        let got = infer("{\"m\":{\"a\":1}}\n{\"m\":{\"b\":\"x\"}}\n");
        let DataType::Struct(f) = &got[0].1 else {
            panic!("{got:?}")
        };
        let names: Vec<_> = f.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
