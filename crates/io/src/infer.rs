//! JSON lines schema inference over every line of a file.
//!
//! Each line is inferred on its own (one streaming parse, keys in file order) and the lines then
//! vote per column: the kind of value (boolean, number, string, list or object) most lines have
//! wins, ties going to the kind seen first; lines of another kind are left for the reader to
//! reject with their line numbers. The whole file is read, so a key or a wider number first seen
//! late is never dropped or narrowed. Numbers get the narrowest type that holds every value
//! exactly: Int64, UInt64 when a value is above 2^63 - 1, Decimal128(20, 0) for both negative
//! values and values above 2^63 - 1, Decimal128(38, 0) beyond the 64-bit range, Float64 once a
//! value has a fraction or exponent. Integers are judged on their literal, never on serde_json's
//! f64 for them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use serde_json::value::RawValue;

use crate::inputs::Snapshot;
use crate::json_literal::{self, Json};
use crate::jsonl::LineReader;
use crate::{Compression, IoError};

/// Precision of the decimal type that holds both i64 and u64 values exactly.
pub(crate) const WIDE_INT_PRECISION: u8 = 20;
/// Precision of the widest decimal, for integers beyond the 64-bit range (a longer one is a row
/// error when read).
pub(crate) const BIG_INT_PRECISION: u8 = 38;

/// The inferred type of one JSON value (or of all values of one column).
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Null,
    Bool,
    /// Integers that fit i64; `neg`: one of them is negative.
    Int {
        neg: bool,
    },
    /// Integers, some above i64::MAX, none negative.
    UInt,
    /// Integers, some negative and some above i64::MAX.
    WideInt,
    /// Integers, some beyond the range of both i64 and u64.
    BigInt,
    Float,
    Str,
    List(Box<Ty>),
    Object(Vec<(String, Ty)>),
}

impl Ty {
    /// The vote class of a non-null type.
    fn class(&self) -> Option<usize> {
        Some(match self {
            Ty::Null => return None,
            Ty::Bool => 0,
            Ty::Int { .. } | Ty::UInt | Ty::WideInt | Ty::BigInt | Ty::Float => 1,
            Ty::Str => 2,
            Ty::List(_) => 3,
            Ty::Object(_) => 4,
        })
    }

    /// The common type of two values of one column: numbers widen without losing a value,
    /// lists and objects merge member-wise; any other conflict keeps `self` (the values of
    /// the other kind are rejected when read).
    fn merge(self, other: Ty) -> Ty {
        use Ty::*;
        match (self, other) {
            (Null, t) | (t, Null) => t,
            (Int { neg: a }, Int { neg: b }) => Int { neg: a || b },
            (Int { neg: false }, UInt) | (UInt, Int { neg: false }) | (UInt, UInt) => UInt,
            (Int { .. } | UInt | WideInt, Int { .. } | UInt | WideInt) => WideInt,
            (Int { .. } | UInt | WideInt | BigInt, Int { .. } | UInt | WideInt | BigInt) => BigInt,
            (
                Int { .. } | UInt | WideInt | BigInt | Float,
                Int { .. } | UInt | WideInt | BigInt | Float,
            ) => Float,
            (List(a), List(b)) => List(Box::new(a.merge(*b))),
            (Object(mut a), Object(b)) => {
                for (k, t) in b {
                    match a.iter_mut().find(|(n, _)| *n == k) {
                        Some((_, old)) => *old = std::mem::replace(old, Null).merge(t),
                        None => a.push((k, t)),
                    }
                }
                Object(a)
            }
            (a, _) => a,
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Ty::Null => DataType::Null,
            Ty::Bool => DataType::Boolean,
            Ty::Int { .. } => DataType::Int64,
            Ty::UInt => DataType::UInt64,
            Ty::WideInt => DataType::Decimal128(WIDE_INT_PRECISION, 0),
            Ty::BigInt => DataType::Decimal128(BIG_INT_PRECISION, 0),
            Ty::Float => DataType::Float64,
            Ty::Str => DataType::Utf8,
            Ty::List(t) => DataType::List(Arc::new(Field::new("item", t.data_type(), true))),
            Ty::Object(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|(k, t)| Field::new(k, t.data_type(), true))
                    .collect::<Vec<_>>(),
            )),
        }
    }
}

/// The type of one value, judged on its literal (see [`Json`]).
fn ty_of(raw: &RawValue) -> Ty {
    match Json::of(raw) {
        None | Some(Json::Null) => Ty::Null,
        Some(Json::Bool) => Ty::Bool,
        Some(Json::Int(i)) => {
            if i64::try_from(i).is_ok() {
                Ty::Int { neg: i < 0 }
            } else if u64::try_from(i).is_ok() {
                Ty::UInt
            } else {
                Ty::BigInt
            }
        }
        // Typed as the widest decimal; the row is rejected when read, naming the value.
        Some(Json::HugeInt) => Ty::BigInt,
        Some(Json::Float) => Ty::Float,
        Some(Json::Str(_)) => Ty::Str,
        Some(Json::List(items)) => Ty::List(Box::new(
            items.into_iter().map(ty_of).fold(Ty::Null, Ty::merge),
        )),
        Some(Json::Object(members)) => {
            Ty::Object(members.into_iter().map(|(k, v)| (k, ty_of(v))).collect())
        }
    }
}

/// The type of one line, or `None` when it is not a JSON object (the reader reports it).
fn infer_line(text: &str) -> Option<Vec<(String, Ty)>> {
    let members = json_literal::object(text).ok()?;
    Some(members.into_iter().map(|(k, v)| (k, ty_of(v))).collect())
}

/// Per column: per vote class, the merged type, how many lines had it, and when it was first
/// seen.
#[derive(Default)]
struct Votes([Option<(Ty, u64, u64)>; 5]);

impl Votes {
    fn add(&mut self, t: Ty, line: u64) {
        let Some(c) = t.class() else { return };
        let slot = &mut self.0[c];
        *slot = Some(match slot.take() {
            None => (t, 1, line),
            Some((old, n, first)) => (old.merge(t), n + 1, first),
        });
    }

    /// The type most lines agree on (the earliest on ties); Null if all were null.
    fn winner(&self) -> DataType {
        let mut best: Option<&(Ty, u64, u64)> = None;
        for v in self.0.iter().flatten() {
            if best.is_none_or(|b| v.1 > b.1 || (v.1 == b.1 && v.2 < b.2)) {
                best = Some(v);
            }
        }
        best.map_or(DataType::Null, |(t, _, _)| t.data_type())
    }
}

/// Infers a file's schema from all of its lines, columns in order of first appearance, and
/// counts its rows (non-blank lines) on the way.
///
/// Bad lines are skipped here; reading reports them with their line numbers.
pub(crate) fn infer_schema(
    path: &Path,
    compression: Compression,
    snapshot: Option<Snapshot>,
) -> Result<(Schema, u64), IoError> {
    let mut lines = LineReader::open(path, compression, snapshot)?;
    let mut rows = 0;
    let mut columns: Vec<(String, Votes)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    while let Some((line, text)) = lines.next_line()? {
        rows += 1;
        let Some(fields) = text.ok().and_then(infer_line) else {
            continue;
        };
        for (k, t) in fields {
            let i = match index.get(&k) {
                Some(&i) => i,
                None => {
                    index.insert(k.clone(), columns.len());
                    columns.push((k, Votes::default()));
                    columns.len() - 1
                }
            };
            columns[i].1.add(t, line);
        }
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, votes)| Field::new(name, votes.winner(), true))
        .collect();
    Ok((Schema::new(fields), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(text: &str) -> Vec<(String, DataType)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, text).unwrap();
        let (s, _) = infer_schema(&p, Compression::None, None).unwrap();
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    fn col(name: &str, t: DataType) -> (String, DataType) {
        (name.to_string(), t)
    }

    #[test]
    fn columns_keep_file_order_and_widen() {
        let got = infer(
            "{\"zeta\":1,\"alpha\":\"x\"}\nnot json\n{\"mid\":true,\"zeta\":2.5,\"alpha\":\"y\"}\n",
        );
        assert_eq!(
            got,
            [
                col("zeta", DataType::Float64),
                col("alpha", DataType::Utf8),
                col("mid", DataType::Boolean)
            ]
        );
    }

    #[test]
    fn an_odd_object_does_not_break_inference() {
        let got = infer("{\"text\":{\"x\":1}}\n{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":null,\"n\":null}\n");
        assert_eq!(got, [col("text", DataType::Utf8), col("n", DataType::Null)]);
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

    #[test]
    fn a_key_first_seen_after_line_1000_is_kept() {
        let mut text = "{\"id\":1}\n".repeat(1200);
        text.push_str("{\"id\":2,\"late\":\"x\"}\n");
        assert_eq!(
            infer(&text),
            [col("id", DataType::Int64), col("late", DataType::Utf8)]
        );
    }

    #[test]
    fn a_float_after_line_1000_makes_the_column_float() {
        let mut text = "{\"n\":1}\n".repeat(1200);
        text.push_str("{\"n\":1.5}\n");
        assert_eq!(infer(&text), [col("n", DataType::Float64)]);
    }

    #[test]
    fn integers_above_2_63_keep_an_exact_type() {
        assert_eq!(
            infer("{\"id\":1}\n{\"id\":9223372036854775808}\n"),
            [col("id", DataType::UInt64)]
        );
        assert_eq!(
            infer("{\"id\":-1}\n{\"id\":18446744073709551615}\n"),
            [col("id", DataType::Decimal128(WIDE_INT_PRECISION, 0))]
        );
        // serde_json reads these as rounded floats; the literal says integer.
        assert_eq!(
            infer("{\"id\":1}\n{\"id\":18446744073709551617}\n{\"id\":-5}\n"),
            [col("id", DataType::Decimal128(BIG_INT_PRECISION, 0))]
        );
        assert_eq!(
            infer("{\"a\":{\"n\":[1,99999999999999999999999]}}\n"),
            [col(
                "a",
                DataType::Struct(Fields::from(vec![Field::new(
                    "n",
                    DataType::List(Arc::new(Field::new(
                        "item",
                        DataType::Decimal128(BIG_INT_PRECISION, 0),
                        true
                    ))),
                    true
                )]))
            )]
        );
        assert_eq!(
            infer("{\"x\":1e400}\n{\"x\":1}\n"),
            [col("x", DataType::Float64)]
        );
    }

    #[test]
    fn mixed_kinds_vote_and_ties_go_to_the_first_seen() {
        assert_eq!(
            infer("{\"id\":1}\n{\"id\":\"two\"}\n"),
            [col("id", DataType::Int64)]
        );
        assert_eq!(
            infer("{\"id\":\"one\"}\n{\"id\":2}\n{\"id\":\"three\"}\n"),
            [col("id", DataType::Utf8)]
        );
    }
}
