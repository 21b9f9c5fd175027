//! Output columns of each task, with the names and types of the contract in design.md.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, FixedSizeListBuilder, Float32Array, Float32Builder,
    Int32Builder, ListBuilder, StringBuilder, StructArray, StructBuilder,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};

use crate::engine::token_text;
use crate::tasks::{BoundKind, BoundTask, TaskValue};
use mbpipe_model::Tokenizer;
use mbpipe_model::{argmax, ProblemType};

/// A row's outcome for one task: `None` for a null text.
pub type RowValue = Option<(TaskValue, bool)>;

/// Builds the output columns of one task for a window of rows.
pub fn task_columns(
    task: &BoundTask,
    tokenizer: &Tokenizer,
    rows: &[RowValue],
) -> Vec<(Field, ArrayRef)> {
    let n = &task.name;
    let mut cols = match &task.kind {
        BoundKind::Classify {
            labels,
            problem,
            threshold,
            weights,
        } => scored_columns(
            n,
            labels,
            *problem == ProblemType::MultiLabel,
            *threshold,
            weights.as_deref(),
            rows,
        ),
        BoundKind::ZeroShot {
            labels, weights, ..
        } => scored_columns(n, labels, false, 0.5, weights.as_deref(), rows),
        BoundKind::Embed { dim, .. } => vec![embedding_column(n, *dim, rows)],
        BoundKind::FillMask { .. } => vec![predictions_column(n, tokenizer, rows)],
    };
    let mut truncated = BooleanBuilder::with_capacity(rows.len());
    for r in rows {
        truncated.append_option(r.as_ref().map(|(_, t)| *t));
    }
    cols.push((
        Field::new(format!("{n}_truncated"), DataType::Boolean, true),
        Arc::new(truncated.finish()),
    ));
    cols
}

fn scores_of(r: &RowValue) -> Option<&[f32]> {
    match r {
        Some((TaskValue::Scores(s), _)) => Some(s),
        _ => None,
    }
}

/// `NAME_label`, `NAME_score`, `NAME_scores`, and `NAME_labels` / `NAME_polarity` when they apply.
fn scored_columns(
    n: &str,
    labels: &[String],
    multi: bool,
    threshold: f32,
    weights: Option<&[f64]>,
    rows: &[RowValue],
) -> Vec<(Field, ArrayRef)> {
    let mut label = StringBuilder::new();
    let mut score = Float32Builder::new();
    for r in rows {
        match scores_of(r).and_then(|s| argmax(s).map(|i| (i, s[i]))) {
            Some((i, s)) => {
                label.append_value(&labels[i]);
                score.append_value(s);
            }
            None => {
                label.append_null();
                score.append_null();
            }
        }
    }
    let fields: Fields = labels
        .iter()
        .map(|l| Field::new(l, DataType::Float32, true))
        .collect();
    let per_label: Vec<ArrayRef> = (0..labels.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|r| scores_of(r).map(|s| s[i]))
                    .collect::<Float32Array>(),
            ) as ArrayRef
        })
        .collect();
    let validity = NullBuffer::from(
        rows.iter()
            .map(|r| scores_of(r).is_some())
            .collect::<Vec<_>>(),
    );
    let scores = StructArray::new(fields.clone(), per_label, Some(validity));
    let mut cols: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new(format!("{n}_label"), DataType::Utf8, true),
            Arc::new(label.finish()),
        ),
        (
            Field::new(format!("{n}_score"), DataType::Float32, true),
            Arc::new(score.finish()),
        ),
        (
            Field::new(format!("{n}_scores"), DataType::Struct(fields), true),
            Arc::new(scores),
        ),
    ];
    if multi {
        let mut list = ListBuilder::new(StringBuilder::new());
        for r in rows {
            match scores_of(r) {
                Some(s) => {
                    for (l, v) in labels.iter().zip(s) {
                        if *v >= threshold {
                            list.values().append_value(l);
                        }
                    }
                    list.append(true);
                }
                None => list.append(false),
            }
        }
        let arr = list.finish();
        cols.push((
            Field::new(format!("{n}_labels"), arr.data_type().clone(), true),
            Arc::new(arr),
        ));
    }
    if let Some(w) = weights {
        let polarity: Float32Array = rows
            .iter()
            .map(|r| {
                scores_of(r)
                    .map(|s| s.iter().zip(w).map(|(p, w)| *p as f64 * w).sum::<f64>() as f32)
            })
            .collect();
        cols.push((
            Field::new(format!("{n}_polarity"), DataType::Float32, true),
            Arc::new(polarity),
        ));
    }
    cols
}

fn embedding_column(n: &str, dim: usize, rows: &[RowValue]) -> (Field, ArrayRef) {
    let mut b = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * dim),
        dim as i32,
        rows.len(),
    );
    for r in rows {
        match r {
            Some((TaskValue::Embedding(v), _)) => {
                b.values().append_slice(v);
                b.append(true);
            }
            _ => {
                b.values().append_nulls(dim);
                b.append(false);
            }
        }
    }
    let arr = b.finish();
    (
        Field::new(format!("{n}_embedding"), arr.data_type().clone(), true),
        Arc::new(arr),
    )
}

/// The struct of one prediction: token text, id and probability.
pub fn prediction_fields() -> Fields {
    Fields::from(vec![
        Field::new("token", DataType::Utf8, true),
        Field::new("token_id", DataType::Int32, true),
        Field::new("score", DataType::Float32, true),
    ])
}

fn predictions_column(n: &str, tokenizer: &Tokenizer, rows: &[RowValue]) -> (Field, ArrayRef) {
    let inner = StructBuilder::from_fields(prediction_fields(), 0);
    let mut b = ListBuilder::new(ListBuilder::new(inner));
    for r in rows {
        match r {
            Some((TaskValue::Predictions(masks), _)) => {
                for top in masks {
                    let per_mask = b.values();
                    for &(id, p) in top {
                        let s = per_mask.values();
                        s.field_builder::<StringBuilder>(0)
                            .expect("field 0 is Utf8")
                            .append_value(token_text(tokenizer, id));
                        s.field_builder::<Int32Builder>(1)
                            .expect("field 1 is Int32")
                            .append_value(id as i32);
                        s.field_builder::<Float32Builder>(2)
                            .expect("field 2 is Float32")
                            .append_value(p);
                        s.append(true);
                    }
                    per_mask.append(true);
                }
                b.append(true);
            }
            _ => b.append(false),
        }
    }
    let arr = b.finish();
    (
        Field::new(format!("{n}_predictions"), arr.data_type().clone(), true),
        Arc::new(arr),
    )
}
