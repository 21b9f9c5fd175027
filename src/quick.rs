//! The quick commands: try a model on one text, or on a file of them, before writing a pipeline.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
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

/// The texts to run: the positional TEXT, or the `text` field of every line of --input (a null
/// text is `None`: its outputs are null, as in pipelines).
fn read_texts(args: &QuickArgs) -> anyhow::Result<Vec<Option<String>>> {
    match (&args.text, &args.input) {
        (Some(t), None) => Ok(vec![Some(t.clone())]),
        (None, Some(path)) => read_jsonl_texts(path),
        _ => Err(UsageError("give a TEXT or --input FILE.jsonl".into()).into()),
    }
}

fn read_jsonl_texts(path: &Path) -> anyhow::Result<Vec<Option<String>>> {
    if matches!(
        mbpipe_io::detect_format(path),
        Some(mbpipe_io::InputFormat::Parquet)
    ) {
        return Err(UsageError(format!(
            "{}: --input takes JSON lines (one {{\"text\": ...}} object per line), not Parquet; \
             write a pipeline file to run over Parquet",
            path.display()
        ))
        .into());
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut texts = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Ok(line) = std::str::from_utf8(&buf) else {
            return Err(UsageError(format!(
                "{}:{line_no}: not valid UTF-8; --input takes JSON lines (UTF-8 text, one object per line)",
                path.display()
            ))
            .into());
        };
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{line_no}: invalid JSON", path.display()))?;
        match value.get("text") {
            Some(serde_json::Value::String(s)) => texts.push(Some(s.clone())),
            Some(serde_json::Value::Null) => texts.push(None),
            Some(other) => anyhow::bail!(
                "{}:{line_no}: field `text` must be a string or null, found {}",
                path.display(),
                json_kind(other)
            ),
            None => anyhow::bail!("{}:{line_no}: no `text` field", path.display()),
        }
    }
    Ok(texts)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
    let encoder = TextEncoder::new(loaded.tokenizer.clone(), max_length)
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
    let texts = read_texts(&a.common)?;
    let mut mask_id = None;
    let loaded = load_model(&a.common)?;
    let preds = run_packed(&a.common, &loaded, &texts, |m, hidden, batch| {
        let id = *mask_id.get_or_insert(m.special_token("[MASK]")?);
        Ok(m.model.fill_mask(hidden, batch, id, a.top_k)?)
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
        return print_lines(
            preds
                .iter()
                .map(|p| json!({"predictions": p.as_ref().map(&render)}).to_string()),
        );
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
    print_lines(lines)
}

/// `mbpipe classify`.
pub fn classify(a: ClassifyArgs) -> anyhow::Result<u8> {
    let texts = read_texts(&a.common)?;
    let loaded = load_model(&a.common)?;
    let logits = run_packed(&a.common, &loaded, &texts, |m, hidden, batch| {
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
    print_lines(lines)
}

/// `mbpipe embed`.
pub fn embed(a: EmbedArgs) -> anyhow::Result<u8> {
    let mut texts = read_texts(&a.common)?;
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
    if !prefix.is_empty() {
        texts = texts
            .into_iter()
            .map(|t| t.map(|t| format!("{prefix}{t}")))
            .collect();
    }
    let pooling = a.pooling.or(st.pooling).unwrap_or(Pooling::Mean);
    let normalize = a.normalize || st.normalize;
    let embeddings = run_packed(&a.common, &loaded, &texts, |m, hidden, batch| {
        let mut rows = m.model.pool(hidden, batch, pooling)?.to_vec2::<f32>()?;
        if normalize {
            rows.iter_mut().for_each(|r| l2_normalize(r));
        }
        Ok(rows)
    })?;
    if a.common.json {
        return print_lines(
            embeddings
                .iter()
                .map(|e| json!({"embedding": e}).to_string()),
        );
    }
    print_lines(embeddings.iter().map(|e| match e {
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
    }))
}
