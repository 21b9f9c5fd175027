//! Task heads on top of the encoder, and turning their logits into scores.

use candle_core::{DType, Tensor};

use crate::batch::PackedBatch;
use crate::config::{ModernBertConfig, Pooling, ProblemType};
use crate::error::Result;
use crate::layers::{LayerNorm, Linear};
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

/// Pools `[tokens, hidden]` into `[sequences, hidden]`.
pub(crate) fn pool(hidden: &Tensor, batch: &PackedBatch, pooling: Pooling) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(batch.num_sequences());
    for i in 0..batch.num_sequences() {
        let r = batch.range(i);
        let row = match pooling {
            Pooling::Cls => hidden.get(r.start)?,
            // Accumulate in f32 so bf16/f16 means do not lose precision over long texts.
            Pooling::Mean => hidden
                .narrow(0, r.start, r.len())?
                .to_dtype(DType::F32)?
                .mean(0)?,
        };
        rows.push(row.to_dtype(DType::F32)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
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

    #[test]
    fn top_k_is_sorted_and_stable() {
        let p = [0.1, 0.4, 0.05, 0.4, 0.05];
        assert_eq!(top_k(&p, 3), vec![(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(argmax(&p), Some(1));
        assert!(top_k(&p, 0).is_empty());
    }
}
