//! Tasks bound to their loaded models, and what one packed batch yields for each of them.

use std::sync::Arc;

use mbpipe_model::{
    scores_from_logits, ModernBert, PackedBatch, Pooling, ProblemType, TokenStates,
};
use mbpipe_text::TextEncoder;
pub use mbpipe_text::{InputVariant, RowInput};

use crate::config::LongText;
use crate::engine::LoadedModel;
use crate::error::PipelineError;
use crate::validate::{check_weight_labels, TaskKind, TaskSpec};
use mbpipe_text::template::Template;

/// A task with everything resolved that needs its model.
#[derive(Debug, Clone)]
pub struct BoundTask {
    /// Column prefix.
    pub name: String,
    /// Index of its model among the pipeline's distinct models.
    pub model: usize,
    /// Token limit, special tokens included.
    pub max_length: usize,
    /// What to compute.
    pub kind: BoundKind,
}

/// Resolved settings per task kind.
#[derive(Debug, Clone)]
pub enum BoundKind {
    /// Sequence classification (also the shape of zero-shot output).
    Classify {
        /// Label names in id order.
        labels: Vec<String>,
        /// How logits become scores.
        problem: ProblemType,
        /// Multi-label threshold.
        threshold: f32,
        /// Weight per label (aligned with `labels`) for `NAME_polarity`.
        weights: Option<Vec<f64>>,
    },
    /// Zero-shot through the masked LM.
    ZeroShot {
        /// The prompt.
        template: Template,
        /// Label names in output order.
        labels: Vec<String>,
        /// Verbalizer token per label.
        token_ids: Vec<u32>,
        /// Weight per label for `NAME_polarity`.
        weights: Option<Vec<f64>>,
        /// [MASK] id.
        mask_id: u32,
        /// Whether the template's [MASK] comes after `{text}` (then it is the last mask of the
        /// sequence, whatever masks the text itself holds).
        mask_after_text: bool,
    },
    /// Embeddings.
    Embed {
        /// Pooling.
        pooling: Pooling,
        /// L2 normalisation.
        normalize: bool,
        /// Output dimension (after Matryoshka truncation).
        dim: usize,
        /// Over-long texts.
        long_text: LongText,
        /// Chunk overlap in tokens.
        chunk_overlap: usize,
        /// Prepended text.
        prefix: String,
    },
    /// Fill-mask.
    FillMask {
        /// Predictions per mask.
        top_k: usize,
        /// [MASK] id.
        mask_id: u32,
    },
}

impl BoundTask {
    /// Resolves a checked task against its loaded model; errors name the task.
    pub fn bind(
        spec: &TaskSpec,
        model_index: usize,
        m: &LoadedModel,
    ) -> Result<Self, PipelineError> {
        let fail = |msg: String| PipelineError::Invalid(format!("task `{}`: {msg}", spec.name));
        let config = m.model.config();
        let max_length = spec.max_length.unwrap_or(config.max_position_embeddings);
        if max_length > config.max_position_embeddings {
            return Err(fail(format!(
                "max_length {max_length} exceeds the model's max_position_embeddings {}",
                config.max_position_embeddings
            )));
        }
        // A limit with no room for text fails here, at `validate`, not at the first row.
        let encoder = TextEncoder::new(Arc::clone(&m.tokenizer), max_length)
            .map_err(|e| fail(e.to_string()))?;
        let weights_for = |weights: &Option<Vec<(String, f64)>>,
                           labels: &[String]|
         -> Result<Option<Vec<f64>>, PipelineError> {
            let Some(w) = weights else { return Ok(None) };
            check_weight_labels(w, labels).map_err(fail)?;
            Ok(Some(
                labels
                    .iter()
                    .map(|l| w.iter().find(|(k, _)| k == l).map_or(0.0, |(_, v)| *v))
                    .collect(),
            ))
        };
        let kind = match &spec.kind {
            TaskKind::Classify { threshold, weights } => {
                if !m.model.has_classifier() {
                    return Err(fail(format!(
                        "model `{}` has no sequence-classification head (classifier.weight); use a fine-tuned classifier or a zero_shot task",
                        m.reference
                    )));
                }
                let labels = if config.labels.is_empty() {
                    vec!["LABEL_0".to_string()]
                } else {
                    config.labels.clone()
                };
                BoundKind::Classify {
                    weights: weights_for(weights, &labels)?,
                    labels,
                    problem: config.problem_type,
                    threshold: *threshold,
                }
            }
            TaskKind::ZeroShot {
                template,
                labels,
                weights,
            } => {
                if !m.model.has_mlm_head() {
                    return Err(fail(format!(
                        "model `{}` has no masked-LM head; zero_shot needs one",
                        m.reference
                    )));
                }
                let (before, after) = template
                    .around("text")
                    .expect("validated: template uses {text}, this is a bug");
                let mask_after_text = after.contains("[MASK]");
                let mask_side = if mask_after_text { &after } else { &before };
                let lead_space = mask_side
                    .split("[MASK]")
                    .next()
                    .is_some_and(|s| s.ends_with(' '));
                let mut token_ids = Vec::new();
                for (label, word) in labels {
                    let shown = if lead_space {
                        format!(" {}", word.trim_start())
                    } else {
                        word.clone()
                    };
                    let enc = m
                        .tokenizer
                        .encode(shown.as_str(), false)
                        .map_err(|e| fail(format!("cannot tokenize verbalizer `{word}`: {e}")))?;
                    match enc.get_ids() {
                        [id] => token_ids.push(*id),
                        ids => {
                            return Err(fail(format!(
                                "verbalizer word {shown:?} of label `{label}` is {} tokens {:?}; it must be exactly one token",
                                ids.len(),
                                enc.get_tokens()
                            )))
                        }
                    }
                }
                // The template alone must leave room for some text.
                InputVariant::Template(template.clone())
                    .encode(&encoder, "")
                    .map_err(|e| fail(e.to_string()))?;
                let names: Vec<String> = labels.iter().map(|l| l.0.clone()).collect();
                BoundKind::ZeroShot {
                    template: template.clone(),
                    weights: weights_for(weights, &names)?,
                    labels: names,
                    token_ids,
                    mask_id: m.special_token("[MASK]")?,
                    mask_after_text,
                }
            }
            TaskKind::Embed {
                pooling,
                normalize,
                dimensions,
                long_text,
                chunk_overlap,
                prefix,
            } => {
                let st = m.files.sentence_transformers.clone().unwrap_or_default();
                let hidden = config.hidden_size;
                let dim = dimensions.unwrap_or(hidden);
                if dim > hidden {
                    return Err(fail(format!(
                        "dimensions {dim} exceeds the model's hidden size {hidden}"
                    )));
                }
                BoundKind::Embed {
                    pooling: pooling.or(st.pooling).unwrap_or(Pooling::Mean),
                    normalize: normalize.unwrap_or(st.normalize),
                    dim,
                    long_text: *long_text,
                    chunk_overlap: *chunk_overlap,
                    prefix: prefix.clone().or(st.default_prompt).unwrap_or_default(),
                }
            }
            TaskKind::FillMask { top_k } => {
                if !m.model.has_mlm_head() {
                    return Err(fail(format!(
                        "model `{}` has no masked-LM head; fill_mask needs one",
                        m.reference
                    )));
                }
                BoundKind::FillMask {
                    top_k: *top_k,
                    mask_id: m.special_token("[MASK]")?,
                }
            }
        };
        Ok(BoundTask {
            name: spec.name.clone(),
            model: model_index,
            max_length,
            kind,
        })
    }

    /// The text this task feeds its model, for sharing one encoder pass between tasks: tasks
    /// whose models, input variants and limits are equal run together.
    pub fn input_variant(&self) -> InputVariant {
        match &self.kind {
            BoundKind::Classify { .. } | BoundKind::FillMask { .. } => InputVariant::Plain,
            BoundKind::ZeroShot { template, .. } => InputVariant::Template(template.clone()),
            // No prefix and no chunks: the text as is, so an embedding shares the encoder pass
            // of a classifier or fill-mask task on the same model.
            BoundKind::Embed {
                prefix,
                long_text: LongText::Truncate,
                ..
            } if prefix.is_empty() => InputVariant::Plain,
            BoundKind::Embed {
                prefix,
                long_text,
                chunk_overlap,
                ..
            } => InputVariant::Prefixed {
                prefix: prefix.clone(),
                chunk_overlap: (*long_text == LongText::Chunk).then_some(*chunk_overlap),
            },
        }
    }
}

/// What one packed batch yields for one task, per sequence of the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskBatchOutput {
    /// Classifier logits.
    Logits(Vec<Vec<f32>>),
    /// Verbalizer logits at the template's [MASK].
    Candidates(Vec<Vec<f32>>),
    /// Pooled vectors, already cut to `dim` (normalised later, after chunk averaging).
    Pooled(Vec<Vec<f32>>),
    /// Top-k per mask.
    FillMask(Vec<Vec<Vec<(u32, f32)>>>),
}

/// The token rows of `batch` whose last hidden states `tasks`' heads read, increasing
/// (`classifier_pooling`: their model's, for classify tasks); `None` where one reads every
/// token (mean pooling) or none reads any (a fill-mask task on texts without a [MASK]: the
/// plain forward then runs, with its checks).
pub fn rows_read(
    tasks: &[&BoundTask],
    classifier_pooling: Pooling,
    batch: &PackedBatch,
) -> Option<Vec<u32>> {
    // Each non-empty sequence's first token (an empty one is pooling's error to report).
    let first_tokens = || {
        (0..batch.num_sequences())
            .map(|i| batch.range(i))
            .filter(|r| !r.is_empty())
            .map(|r| r.start as u32)
            .collect::<Vec<_>>()
    };
    let pooled = |pooling: Pooling| match pooling {
        Pooling::Cls => Some(first_tokens()),
        Pooling::Mean => None,
    };
    let mut rows = Vec::new();
    for task in tasks {
        rows.extend(match &task.kind {
            BoundKind::Classify { .. } => pooled(classifier_pooling)?,
            BoundKind::Embed { pooling, .. } => pooled(*pooling)?,
            BoundKind::ZeroShot {
                mask_id,
                mask_after_text,
                ..
            } => zero_shot_rows(batch, *mask_id, *mask_after_text)
                .into_iter()
                .flatten()
                .collect(),
            BoundKind::FillMask { mask_id, .. } => ModernBert::positions_of(batch, *mask_id)
                .into_iter()
                .flatten()
                .collect(),
        });
    }
    rows.sort_unstable();
    rows.dedup();
    (!rows.is_empty()).then_some(rows)
}

/// Per sequence, the row of the template's [MASK] that a zero-shot task reads: the last of the
/// sequence's masks where the text comes before it (a [MASK] in the text itself comes first),
/// else the first.
fn zero_shot_rows(batch: &PackedBatch, mask_id: u32, mask_after_text: bool) -> Vec<Option<u32>> {
    ModernBert::positions_of(batch, mask_id)
        .iter()
        .map(|p| match mask_after_text {
            true => p.last().copied(),
            false => p.first().copied(),
        })
        .collect()
}

/// Runs the heads of `tasks` on one batch's hidden states (every token's, or the rows
/// [`rows_read`] names).
pub fn run_heads(
    m: &LoadedModel,
    tasks: &[&BoundTask],
    hidden: &impl TokenStates,
    batch: &PackedBatch,
) -> Result<Vec<TaskBatchOutput>, PipelineError> {
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(match &task.kind {
            BoundKind::Classify { .. } => {
                TaskBatchOutput::Logits(m.model.classify(hidden, batch)?.to_vec2()?)
            }
            BoundKind::ZeroShot {
                token_ids,
                mask_id,
                mask_after_text,
                ..
            } => {
                let rows = zero_shot_rows(batch, *mask_id, *mask_after_text);
                let logits = m.model.candidate_logits(hidden, &rows, token_ids)?;
                let logits = logits
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| {
                        l.ok_or_else(|| {
                            PipelineError::Bug(format!(
                                "zero-shot task `{}`: prompt {i} of a batch lost its [MASK]",
                                task.name
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                TaskBatchOutput::Candidates(logits)
            }
            BoundKind::Embed { pooling, dim, .. } => {
                let pooled = m.model.pool(hidden, batch, *pooling)?;
                TaskBatchOutput::Pooled(pooled.narrow(1, 0, *dim)?.to_vec2()?)
            }
            BoundKind::FillMask { top_k, mask_id } => {
                TaskBatchOutput::FillMask(m.model.fill_mask(hidden, batch, *mask_id, *top_k)?)
            }
        });
    }
    Ok(outputs)
}

/// The final value of one task for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskValue {
    /// Scores per label (softmax, sigmoid or raw).
    Scores(Vec<f32>),
    /// An embedding.
    Embedding(Vec<f32>),
    /// Fill-mask predictions per [MASK].
    Predictions(Vec<Vec<(u32, f32)>>),
}

impl BoundTask {
    /// Combines the outputs of a row's sequences (one, or several chunks) into its value.
    pub fn finish_row(&self, parts: Vec<TaskBatchRow>) -> TaskValue {
        match &self.kind {
            BoundKind::Classify { problem, .. } => match parts.into_iter().next() {
                Some(TaskBatchRow::Logits(l)) => {
                    TaskValue::Scores(scores_from_logits(&l, *problem))
                }
                _ => unreachable!("classify rows carry logits, this is a bug"),
            },
            BoundKind::ZeroShot { .. } => match parts.into_iter().next() {
                Some(TaskBatchRow::Candidates(l)) => {
                    TaskValue::Scores(scores_from_logits(&l, ProblemType::SingleLabel))
                }
                _ => unreachable!("zero-shot rows carry candidate logits, this is a bug"),
            },
            BoundKind::Embed { normalize, dim, .. } => {
                let mut sum = vec![0f64; *dim];
                let n = parts.len().max(1) as f64;
                for part in parts {
                    if let TaskBatchRow::Pooled(v) = part {
                        sum.iter_mut().zip(v).for_each(|(s, x)| *s += x as f64);
                    }
                }
                let mut v: Vec<f32> = sum.into_iter().map(|s| (s / n) as f32).collect();
                if *normalize {
                    l2_normalize(&mut v);
                }
                TaskValue::Embedding(v)
            }
            BoundKind::FillMask { .. } => match parts.into_iter().next() {
                Some(TaskBatchRow::FillMask(p)) => TaskValue::Predictions(p),
                _ => unreachable!("fill-mask rows carry predictions, this is a bug"),
            },
        }
    }
}

/// One sequence's share of a [`TaskBatchOutput`].
#[derive(Debug, Clone)]
pub enum TaskBatchRow {
    /// Classifier logits.
    Logits(Vec<f32>),
    /// Verbalizer logits.
    Candidates(Vec<f32>),
    /// Pooled vector.
    Pooled(Vec<f32>),
    /// Top-k per mask.
    FillMask(Vec<Vec<(u32, f32)>>),
}

impl TaskBatchOutput {
    /// Appends the rows of `other` (the same task on the sequences that follow).
    pub fn append(&mut self, other: TaskBatchOutput) -> Result<(), PipelineError> {
        match (self, other) {
            (TaskBatchOutput::Logits(a), TaskBatchOutput::Logits(b))
            | (TaskBatchOutput::Candidates(a), TaskBatchOutput::Candidates(b))
            | (TaskBatchOutput::Pooled(a), TaskBatchOutput::Pooled(b)) => a.extend(b),
            (TaskBatchOutput::FillMask(a), TaskBatchOutput::FillMask(b)) => a.extend(b),
            _ => {
                return Err(PipelineError::Bug(
                    "task outputs of different kinds cannot be joined".into(),
                ))
            }
        }
        Ok(())
    }

    /// Splits into per-sequence rows.
    pub fn into_rows(self) -> Vec<TaskBatchRow> {
        match self {
            TaskBatchOutput::Logits(v) => v.into_iter().map(TaskBatchRow::Logits).collect(),
            TaskBatchOutput::Candidates(v) => v.into_iter().map(TaskBatchRow::Candidates).collect(),
            TaskBatchOutput::Pooled(v) => v.into_iter().map(TaskBatchRow::Pooled).collect(),
            TaskBatchOutput::FillMask(v) => v.into_iter().map(TaskBatchRow::FillMask).collect(),
        }
    }
}

/// Scales a vector to unit L2 length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: u32 = 9;

    fn task(kind: BoundKind) -> BoundTask {
        BoundTask {
            name: "t".into(),
            model: 0,
            max_length: 512,
            kind,
        }
    }

    fn classify() -> BoundTask {
        task(BoundKind::Classify {
            labels: vec!["a".into(), "b".into()],
            problem: ProblemType::SingleLabel,
            threshold: 0.5,
            weights: None,
        })
    }

    fn embed(pooling: Pooling) -> BoundTask {
        task(BoundKind::Embed {
            pooling,
            normalize: true,
            dim: 8,
            long_text: LongText::Truncate,
            chunk_overlap: 0,
            prefix: String::new(),
        })
    }

    fn zero_shot(mask_after_text: bool) -> BoundTask {
        task(BoundKind::ZeroShot {
            template: Template::parse("{text} is [MASK]").unwrap(),
            labels: vec!["a".into()],
            token_ids: vec![5],
            weights: None,
            mask_id: MASK,
            mask_after_text,
        })
    }

    /// Which rows the forward keeps for each kind of head: one per sequence for cls pooling
    /// (an empty sequence has none), each [MASK] for fill-mask, the template's [MASK] for
    /// zero-shot; the union, increasing, for tasks sharing a pass; every row (`None`) as soon
    /// as one task pools the mean, or where no task reads any row.
    #[test]
    fn rows_read_are_the_rows_the_heads_read() {
        // Rows 0-4, 5-6, (empty), 7-10.
        let batch = PackedBatch::from_sequences(&[
            vec![1, 3, MASK, 4, 2],
            vec![1, 2],
            vec![],
            vec![1, MASK, MASK, 2],
        ]);
        let fill = task(BoundKind::FillMask {
            top_k: 3,
            mask_id: MASK,
        });
        let read = |tasks: &[&BoundTask], pooling| rows_read(tasks, pooling, &batch);
        assert_eq!(read(&[&classify()], Pooling::Cls), Some(vec![0, 5, 7]));
        assert_eq!(read(&[&classify()], Pooling::Mean), None);
        assert_eq!(
            read(&[&embed(Pooling::Cls)], Pooling::Mean),
            Some(vec![0, 5, 7])
        );
        assert_eq!(read(&[&embed(Pooling::Mean)], Pooling::Cls), None);
        assert_eq!(read(&[&fill], Pooling::Mean), Some(vec![2, 8, 9]));
        assert_eq!(read(&[&zero_shot(true)], Pooling::Mean), Some(vec![2, 9]));
        assert_eq!(read(&[&zero_shot(false)], Pooling::Mean), Some(vec![2, 8]));
        assert_eq!(
            read(&[&fill, &classify(), &zero_shot(true)], Pooling::Cls),
            Some(vec![0, 2, 5, 7, 8, 9])
        );
        assert_eq!(read(&[&fill, &embed(Pooling::Mean)], Pooling::Cls), None);
        let unmasked = PackedBatch::from_sequences(&[vec![1, 3, 2]]);
        assert_eq!(rows_read(&[&fill], Pooling::Cls, &unmasked), None);
    }
}
