//! Per-sequence attention over a packed batch: global, or banded local.
//!
//! Queries, keys and values arrive as `[heads, tokens, head_dim]` for the whole batch. Each
//! sequence attends only to itself. A local layer computes only the band `|i - j| <= w`: queries
//! go in blocks, and each block multiplies against the keys its band can reach, so the cost
//! grows with `len * (block + 2w)` instead of `len²`.

use candle_core::{DType, Device, Tensor};

use crate::batch::PackedBatch;
use crate::config::AttentionKind;
use crate::error::Result;

/// Query rows per block in banded local attention.
const LOCAL_BLOCK: usize = 128;

/// Attention over every sequence of `batch` (`q`, `k`, `v`: `[heads, tokens, head_dim]`, RoPE
/// applied); returns `[heads, tokens, head_dim]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    // GPUs: FlashAttention-2 varlen or padded groups, a few launches per layer (varlen.rs).
    if !q.device().is_cpu() && crate::varlen::enabled() {
        return crate::varlen::attend(q, k, v, batch, kind);
    }
    let head_dim = q.dim(2)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(batch.num_sequences());
    for i in 0..batch.num_sequences() {
        let r = batch.range(i);
        let (start, len) = (r.start, r.len());
        let (qs, ks, vs) = (
            q.narrow(1, start, len)?,
            k.narrow(1, start, len)?,
            v.narrow(1, start, len)?,
        );
        let out = match kind {
            AttentionKind::Local { half_window } if len > half_window + 1 => {
                banded(&qs, &ks, &vs, half_window, scale)?
            }
            // A local window that covers the whole sequence is global attention.
            _ => block(&qs, &ks, &vs, None, scale)?,
        };
        outputs.push(out);
    }
    Ok(Tensor::cat(&outputs, 1)?)
}

/// Softmax attention of `q` over `k`/`v`, with an optional additive mask `[q_len, k_len]`.
fn block(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Local attention computing only the band of keys each block of queries can see.
pub(crate) fn banded(q: &Tensor, k: &Tensor, v: &Tensor, w: usize, scale: f64) -> Result<Tensor> {
    let len = q.dim(1)?;
    let qb = LOCAL_BLOCK.max(w);
    let mut outputs = Vec::with_capacity(len.div_ceil(qb));
    let mut q_start = 0;
    while q_start < len {
        let q_len = qb.min(len - q_start);
        let k_start = q_start.saturating_sub(w);
        let k_end = (q_start + q_len + w).min(len);
        let mask = band_mask(q_start, q_len, k_start, k_end - k_start, w, q.device())?;
        let out = block(
            &q.narrow(1, q_start, q_len)?,
            &k.narrow(1, k_start, k_end - k_start)?,
            &v.narrow(1, k_start, k_end - k_start)?,
            Some(&mask),
            scale,
        )?;
        outputs.push(out);
        q_start += q_len;
    }
    Ok(Tensor::cat(&outputs, 1)?)
}

/// 0 where `|i - j| <= w`, -inf elsewhere, for queries `q0..q0+qn` and keys `k0..k0+kn`.
fn band_mask(
    q0: usize,
    qn: usize,
    k0: usize,
    kn: usize,
    w: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut data = Vec::with_capacity(qn * kn);
    for i in q0..q0 + qn {
        for j in k0..k0 + kn {
            data.push(if i.abs_diff(j) <= w {
                0f32
            } else {
                f32::NEG_INFINITY
            });
        }
    }
    Ok(Tensor::from_vec(data, (qn, kn), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense reference: full scores with a `|i - j| <= w` mask.
    fn dense_local(q: &Tensor, k: &Tensor, v: &Tensor, w: usize) -> Tensor {
        let len = q.dim(1).unwrap();
        let mask = band_mask(0, len, 0, len, w, &Device::Cpu).unwrap();
        block(q, k, v, Some(&mask), 0.25).unwrap()
    }

    #[test]
    fn banded_equals_dense_masked_attention() {
        let dev = Device::Cpu;
        for (len, w) in [(300, 8), (257, 64), (129, 64), (1000, 3)] {
            let q = Tensor::randn(0f32, 1., (2, len, 16), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (2, len, 16), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (2, len, 16), &dev).unwrap();
            let a = banded(&q, &k, &v, w, 0.25).unwrap();
            let b = dense_local(&q, &k, &v, w);
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "len {len} w {w}: max diff {diff}");
        }
    }
}
