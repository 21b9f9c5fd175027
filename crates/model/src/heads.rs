//! Task heads on top of the encoder, and turning their logits into scores.

use candle_core::{DType, Tensor};

use crate::batch::PackedBatch;
use crate::config::{ModernBertConfig, Pooling, ProblemType};
use crate::error::{ModelError, Result};
use crate::layers::{LayerNorm, Linear};
use crate::states::TokenStates;
use crate::weights::Weights;

/// `head`: dense -> GELU -> LayerNorm, shared by the MLM and classification models.
pub(crate) struct PredictionHead {
    dense: Linear,
    norm: LayerNorm,
}

impl PredictionHead {
    pub(crate) fn load(w: &Weights, config: &ModernBertConfig) -> Result<Self> {
        let h = config.hidden_size;
        Ok(PredictionHead {
            dense: Linear::load(w, "head.dense", false, (h, h), config.classifier_bias)?,
            norm: LayerNorm::load(w, "head.norm", false, h, config.norm_bias, config.norm_eps)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(&self.dense.forward(x)?.gelu_erf()?)
    }
}

/// Pools the tokens' states (cls: each sequence's first row; mean: every row) into
/// `[sequences, hidden]` in f32, with a fixed handful of ops for the whole batch (a gather, or
/// a scatter-add and a division), not a few per sequence: on a GPU every op is a kernel launch,
/// and batches hold hundreds of short sequences.
pub(crate) fn pool(
    hidden: &impl TokenStates,
    batch: &PackedBatch,
    pooling: Pooling,
) -> Result<Tensor> {
    let n = batch.num_sequences();
    // An empty sequence has no token to pool: cls would read the next sequence's first token
    // (or, on a GPU, past the end: a device assert), mean would divide by zero.
    if let Some(empty) = (0..n).find(|&i| batch.range(i).is_empty()) {
        return Err(ModelError::Input(format!(
            "sequence {empty} of the batch has no tokens; {} pooling needs at least one",
            if pooling == Pooling::Cls {
                "cls"
            } else {
                "mean"
            }
        )));
    }
    let pooled = match pooling {
        Pooling::Cls => {
            let first: Vec<u32> = (0..n).map(|i| batch.range(i).start as u32).collect();
            hidden.rows(&first)?
        }
        Pooling::Mean => {
            let hidden = hidden.every_row()?;
            let device = hidden.device();
            let mut sequence_of_token = Vec::with_capacity(batch.num_tokens());
            let mut lengths = Vec::with_capacity(n);
            for i in 0..n {
                let len = batch.range(i).len();
                sequence_of_token.extend(std::iter::repeat_n(i as u32, len));
                lengths.push(len as f32);
            }
            let sequence_of_token =
                Tensor::from_vec(sequence_of_token, batch.num_tokens(), device)?;
            // Accumulate in f32 so bf16/f16 means do not lose precision over long texts.
            let sums = Tensor::zeros((n, hidden.dim(1)?), DType::F32, device)?.index_add(
                &sequence_of_token,
                &hidden.to_dtype(DType::F32)?,
                0,
            )?;
            sums.broadcast_div(&Tensor::from_vec(lengths, (n, 1), device)?)?
        }
    };
    Ok(pooled.to_dtype(DType::F32)?)
}

/// Converts one row of classifier logits into scores, as `NAME_scores` defines them.
pub fn scores_from_logits(logits: &[f32], problem: ProblemType) -> Vec<f32> {
    match problem {
        ProblemType::SingleLabel => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
            let sum: f64 = exp.iter().sum();
            exp.iter().map(|e| (e / sum) as f32).collect()
        }
        ProblemType::MultiLabel => logits
            .iter()
            .map(|&l| (1.0 / (1.0 + (-(l as f64)).exp())) as f32)
            .collect(),
        ProblemType::Regression => logits.to_vec(),
    }
}

/// Index of the highest score (the first one on ties); `None` for no scores.
pub fn argmax(scores: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

/// The `k` best `(token_id, probability)` of one row of vocabulary probabilities, best first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, probs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sigmoid_and_raw() {
        let s = scores_from_logits(&[1.0, 2.0, 3.0], ProblemType::SingleLabel);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[2] - 0.665_240_9).abs() < 1e-6);
        let m = scores_from_logits(&[0.0, 2.0], ProblemType::MultiLabel);
        assert!((m[0] - 0.5).abs() < 1e-7 && (m[1] - 0.880_797).abs() < 1e-6);
        assert_eq!(
            scores_from_logits(&[-3.5], ProblemType::Regression),
            vec![-3.5]
        );
    }

    /// Both poolings against a per-sequence loop in f64, for f32 and bf16 states.
    #[test]
    fn pooling_matches_per_sequence_loop() {
        use crate::config::Pooling;
        use candle_core::Device;
        let lengths = [1usize, 7, 2, 300, 5];
        let batch = PackedBatch::from_sequences(
            &lengths
                .map(|len| vec![1u32; len])
                .into_iter()
                .collect::<Vec<_>>(),
        );
        let hidden = Tensor::randn(0f32, 1.0, (batch.num_tokens(), 24), &Device::Cpu).unwrap();
        for states in [hidden.clone(), hidden.to_dtype(DType::BF16).unwrap()] {
            let rows: Vec<Vec<f64>> = states.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
            for pooling in [Pooling::Cls, Pooling::Mean] {
                let got: Vec<Vec<f32>> = pool(&states, &batch, pooling).unwrap().to_vec2().unwrap();
                assert_eq!(got.len(), lengths.len());
                for (i, got) in got.iter().enumerate() {
                    let r = batch.range(i);
                    for (c, &g) in got.iter().enumerate() {
                        let want = match pooling {
                            Pooling::Cls => rows[r.start][c],
                            Pooling::Mean => {
                                rows[r.clone()].iter().map(|row| row[c]).sum::<f64>()
                                    / r.len() as f64
                            }
                        };
                        // f32 sums of at most 300 values of magnitude ~1.
                        assert!(
                            (g as f64 - want).abs() < 1e-5,
                            "{pooling:?} seq {i} col {c}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Regression: cls pooling of an empty sequence read the next sequence's first token (and on
    /// a GPU, for the last sequence, indexed past the end: a device assert).
    #[test]
    fn pooling_an_empty_sequence_is_a_clear_error() {
        use candle_core::Device;
        let batch = PackedBatch::from_sequences(&[vec![1u32, 2], vec![], vec![3]]);
        let hidden = Tensor::zeros((batch.num_tokens(), 4), DType::F32, &Device::Cpu).unwrap();
        for pooling in [Pooling::Cls, Pooling::Mean] {
            let err = pool(&hidden, &batch, pooling).unwrap_err().to_string();
            assert!(
                err.contains("sequence 1 of the batch has no tokens"),
                "{err}"
            );
        }
    }

    #[test]
    fn top_k_is_sorted_and_stable() {
        let p = [0.1, 0.4, 0.05, 0.4, 0.05];
        assert_eq!(top_k(&p, 3), vec![(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(argmax(&p), Some(1));
        assert!(top_k(&p, 0).is_empty());
    }
}
