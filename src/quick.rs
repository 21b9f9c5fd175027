//! The quick commands: try a model on one text, or on a file of them, before writing a pipeline.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mbpipe_io::{InputFormat, OnError, SourceItem, SourceOptions};
use mbpipe_model::{argmax, scores_from_logits, Pooling, Tensor};
use mbpipe_pipeline::engine::{configure_threads, LoadedModel};
use mbpipe_pipeline::tasks::l2_normalize;
use mbpipe_pipeline::{OomSplitter, PerSequence, PipelineError};
use mbpipe_text::{pack_by_length, TextEncoder};
use serde_json::json;

use crate::args::{ClassifyArgs, EmbedArgs, FillMaskArgs, QuickArgs};

/// A usage mistake (exit code 2), as opposed to a failure while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// Rows of --input per window: tokenized, packed and printed together, so memory stays bounded
/// however long the file.
const WINDOW_ROWS: usize = 2048;

/// Runs `window` over the texts and prints its lines: the positional TEXT, or the `text` field
/// of every row of --input (JSON lines, `.gz` / `.zst` too), read as a stream through the same
/// reader as pipelines (same checks, same messages), one window of rows at a time, in input
/// order. A null or missing text is `None`: its outputs are null, as in pipelines.
fn for_each_window(
    args: &QuickArgs,
    mut window: impl FnMut(Vec<Option<String>>) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<u8> {
    let path = match (&args.text, &args.input) {
        (Some(t), None) => return print_lines(window(vec![Some(t.clone())])?),
        (None, Some(path)) => path,
        _ => return Err(UsageError("give a TEXT or --input FILE.jsonl".into()).into()),
    };
    if !matches!(
        mbpipe_io::detect_format(path),
        Some(InputFormat::JsonLines { .. })
    ) {
        return Err(UsageError(format!(
            "{}: --input takes JSON lines (one {{\"text\": ...}} object per line, `.jsonl`, \
             `.ndjson`, optionally `.gz` or `.zst`); write a pipeline file to run over Parquet",
            path.display()
        ))
        .into());
    }
    let files = mbpipe_io::expand_inputs(&path.to_string_lossy())?;
    let schema = with_text_column(mbpipe_io::unified_schema(&files)?);
    let options = SourceOptions {
        batch_rows: WINDOW_ROWS,
        on_error: OnError::Fail,
        string_columns: vec![TEXT.into()],
        ..SourceOptions::default()
    };
    for item in mbpipe_io::open_source(files, schema, options)? {
        let SourceItem::Batch(b) = item? else {
            continue; // Rejections come only with OnError::Skip.
        };
        let column = b
            .batch
            .column_by_name(TEXT)
            .and_then(|c| c.as_string_opt::<i32>())
            .context("the `text` column is not a string column; this is a bug")?;
        let texts = column.iter().map(|t| t.map(str::to_string)).collect();
        print_lines(window(texts)?)?;
    }
    Ok(0)
}

/// The field --input reads.
const TEXT: &str = "text";

/// `schema` with a `text` column (a file whose lines all lack one has nulls only).
fn with_text_column(schema: SchemaRef) -> SchemaRef {
    if schema.field_with_name(TEXT).is_ok() {
        return schema;
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(TEXT, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Loads `--model` onto the first `--device`.
fn load_model(args: &QuickArgs) -> anyhow::Result<LoadedModel> {
    configure_threads(args.runtime.threads);
    let device = *args
        .runtime
        .device
        .0
        .first()
        .expect("clap gives at least one device, this is a bug");
    Ok(LoadedModel::load(
        &args.model,
        None,
        device,
        args.runtime.dtype,
    )?)
}

/// Tokenizes every text and runs packed batches; `per_batch` turns one batch's hidden states
/// into one output per sequence, returned in input order (`None` for a null text).
// The splitter's error is the pipeline's (large) error type; boxing it buys nothing here.
#[allow(clippy::result_large_err)]
fn run_packed<T: Clone>(
    args: &QuickArgs,
    loaded: &LoadedModel,
    texts: &[Option<String>],
    mut per_batch: impl FnMut(
        &LoadedModel,
        &Tensor,
        &mbpipe_model::PackedBatch,
    ) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<Vec<Option<T>>> {
    let max_length = args
        .max_length
        .unwrap_or(loaded.model.config().max_position_embeddings);
    let encoder = TextEncoder::new(Arc::clone(&loaded.tokenizer), max_length)
        .map_err(|e| UsageError(format!("--max-length: {e}")))?;
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let encoded: Vec<_> = encoder
        .encode_many(&refs)
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut results: Vec<Option<T>> = vec![None; texts.len()];
    let batches = pack_by_length(
        encoded
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.ids.as_slice()))),
        args.runtime.batch_tokens(),
    );
    // A batch that runs out of device memory is split and retried, as in `mbpipe run`.
    let device = args.runtime.device.0.first().map(|d| d.to_string());
    let mut splitter = OomSplitter::new(device.unwrap_or_default());
    for packed in batches {
        let estimate = |batch: &mbpipe_model::PackedBatch| loaded.model.memory_estimate(batch);
        let PerSequence(outputs) = splitter.run(&packed.batch, &estimate, &mut |batch| {
            let hidden = loaded.model.encode(batch)?;
            let outputs = per_batch(loaded, &hidden, batch).map_err(|e| {
                e.downcast::<PipelineError>()
                    .unwrap_or_else(|e| PipelineError::Run(format!("{e:#}")))
            })?;
            Ok(PerSequence(outputs))
        })?;
        for (key, out) in packed.keys.iter().zip(outputs) {
            results[*key] = Some(out);
        }
    }
    Ok(results)
}

fn print_lines(lines: impl IntoIterator<Item = String>) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}

/// How a null input text shows in the plain (non-JSON) output.
const NULL_TEXT: &str = "(null text)";

/// `mbpipe fill-mask`.
pub fn fill_mask(a: FillMaskArgs) -> anyhow::Result<u8> {
    let loaded = load_model(&a.common)?;
    let mask_id = loaded.special_token("[MASK]")?;
    for_each_window(&a.common, |texts| {
        fill_mask_lines(&a, &loaded, mask_id, texts)
    })
}

/// `mbpipe fill-mask`'s lines for one window of texts.
fn fill_mask_lines(
    a: &FillMaskArgs,
    loaded: &LoadedModel,
    mask_id: u32,
    texts: Vec<Option<String>>,
) -> anyhow::Result<Vec<String>> {
    let preds = run_packed(&a.common, loaded, &texts, |m, hidden, batch| {
        Ok(m.model.fill_mask(hidden, batch, mask_id, a.top_k)?)
    })?;
    let render = |masks: &Vec<Vec<(u32, f32)>>| -> Vec<Vec<serde_json::Value>> {
        masks
            .iter()
            .map(|top| {
                top.iter()
                    .map(|&(id, p)| json!({"token": loaded.token_text(id), "token_id": id, "score": p}))
                    .collect()
            })
            .collect()
    };
    if a.common.json {
        return Ok(preds
            .iter()
            .map(|p| json!({"predictions": p.as_ref().map(&render)}).to_string())
            .collect());
    }
    let mut lines = Vec::new();
    for (text, masks) in texts.iter().zip(&preds) {
        lines.push(text.clone().unwrap_or_else(|| NULL_TEXT.into()));
        let Some(masks) = masks else { continue };
        if masks.is_empty() {
            lines.push("  (no [MASK] in the text)".into());
        }
        for (n, top) in masks.iter().enumerate() {
            let best: Vec<String> = top
                .iter()
                .map(|&(id, p)| format!("{:?} {:.4}", loaded.token_text(id), p))
                .collect();
            lines.push(format!("  [MASK] #{}: {}", n + 1, best.join(", ")));
        }
    }
    Ok(lines)
}

/// `mbpipe classify`.
pub fn classify(a: ClassifyArgs) -> anyhow::Result<u8> {
    let loaded = load_model(&a.common)?;
    for_each_window(&a.common, |texts| classify_lines(&a, &loaded, texts))
}

/// `mbpipe classify`'s lines for one window of texts.
fn classify_lines(
    a: &ClassifyArgs,
    loaded: &LoadedModel,
    texts: Vec<Option<String>>,
) -> anyhow::Result<Vec<String>> {
    let logits = run_packed(&a.common, loaded, &texts, |m, hidden, batch| {
        Ok(m.model.classify(hidden, batch)?.to_vec2::<f32>()?)
    })?;
    let config = loaded.model.config();
    let labels: Vec<String> = if config.labels.is_empty() {
        let width = logits.iter().flatten().next().map_or(0, Vec::len);
        (0..width).map(|i| format!("LABEL_{i}")).collect()
    } else {
        config.labels.clone()
    };
    // Per label, keyed like `scores`, so neither needs the model's label order to be read.
    let by_label = |values: &[f32]| -> serde_json::Map<String, serde_json::Value> {
        labels
            .iter()
            .zip(values)
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect()
    };
    let mut lines = Vec::new();
    for (text, l) in texts.iter().zip(&logits) {
        let Some(l) = l else {
            lines.push(if a.common.json {
                json!({"label": null, "scores": null, "logits": null}).to_string()
            } else {
                format!("\t\t{NULL_TEXT}")
            });
            continue;
        };
        let scores = scores_from_logits(l, config.problem_type);
        let best = argmax(&scores).map(|i| labels[i].clone());
        if a.common.json {
            lines.push(
                json!({"label": best, "scores": by_label(&scores), "logits": by_label(l)})
                    .to_string(),
            );
        } else {
            let detail: Vec<String> = labels
                .iter()
                .zip(&scores)
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            lines.push(format!(
                "{}\t{}\t{}",
                best.unwrap_or_default(),
                detail.join(", "),
                text.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(lines)
}

/// `mbpipe embed`.
pub fn embed(a: EmbedArgs) -> anyhow::Result<u8> {
    let loaded = load_model(&a.common)?;
    let st = loaded
        .files
        .sentence_transformers
        .clone()
        .unwrap_or_default();
    let prefix = a
        .prefix
        .clone()
        .or(st.default_prompt.clone())
        .unwrap_or_default();
    let pooling = a.pooling.or(st.pooling).unwrap_or(Pooling::Mean);
    let normalize = a.normalize || st.normalize;
    for_each_window(&a.common, |texts| {
        let texts: Vec<Option<String>> = texts
            .into_iter()
            .map(|t| t.map(|t| format!("{prefix}{t}")))
            .collect();
        let embeddings = run_packed(&a.common, &loaded, &texts, |m, hidden, batch| {
            let mut rows = m.model.pool(hidden, batch, pooling)?.to_vec2::<f32>()?;
            if normalize {
                rows.iter_mut().for_each(|r| l2_normalize(r));
            }
            Ok(rows)
        })?;
        Ok(embeddings
            .iter()
            .map(|e| embedding_line(e, a.common.json))
            .collect())
    })
}

/// One embedding as `mbpipe embed` prints it: JSON, or its size and first values.
fn embedding_line(e: &Option<Vec<f32>>, json: bool) -> String {
    if json {
        return json!({"embedding": e}).to_string();
    }
    match e {
        None => NULL_TEXT.to_string(),
        Some(e) => {
            let shown: Vec<String> = e.iter().take(8).map(|v| format!("{v:.5}")).collect();
            format!(
                "dim {} [{}{}]",
                e.len(),
                shown.join(", "),
                if e.len() > 8 { ", ..." } else { "" }
            )
        }
    }
}
