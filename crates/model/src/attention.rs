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
use crate::kernel::AttentionKernel;

/// Query rows per block in banded local attention.
pub(crate) const LOCAL_BLOCK: usize = 128;

/// Attention over every sequence of `batch` (`q`, `k`, `v`: `[heads, tokens, head_dim]`, RoPE
/// applied) with the kernel a model on this device and dtype would choose; returns
/// `[heads, tokens, head_dim]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    let kernel = crate::kernel::choose(q.device(), q.dtype(), q.dim(2)?);
    attend_with(kernel, q, k, v, batch, kind)
}

/// [`attend`] with a given kernel (the model's, after its load-time check).
pub(crate) fn attend_with(
    kernel: AttentionKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    match kernel {
        AttentionKernel::Cpu | AttentionKernel::PerSequence => per_sequence(q, k, v, batch, kind),
        // GPUs: FlashAttention-2 varlen or padded groups, a few launches per layer (varlen.rs).
        #[cfg(feature = "flash-attn")]
        AttentionKernel::Flash => crate::varlen::flash(q, k, v, batch, kind),
        _ => crate::varlen::attend_padded(q, k, v, batch, kind),
    }
}

/// The per-sequence candle path (any device): the reference the GPU kernels are tested against.
pub(crate) fn per_sequence(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
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

/// Softmax attention of `q` over `k`/`v`, with an optional additive mask (broadcast over the
/// scores `[.., q_len, k_len]`).
pub(crate) fn block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    // Scaling the queries (small) rather than the scores (large) saves one score-sized tensor.
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let probs = softmax_freeing(scores, mask)?.to_dtype(dtype)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Softmax over the last dimension in f32 of `scores` (any dtype) plus `mask`, dropping each
/// intermediate as soon as the next exists: at most two score-sized tensors are alive at once
/// (8 bytes per score, [`SCORE_BYTES`]), where a chained expression keeps all of them to its end.
pub(crate) fn softmax_freeing(scores: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    // Each step takes the previous tensor by value, so it is freed on return (shadowing a
    // binding would keep it alive to the end of the function).
    let scores = to_f32_owned(scores)?;
    let scores = match mask {
        Some(m) => add_owned(scores, m)?,
        None => scores,
    };
    softmax_owned(scores)
}

fn to_f32_owned(scores: Tensor) -> Result<Tensor> {
    Ok(scores.to_dtype(DType::F32)?)
}

fn add_owned(scores: Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(scores.broadcast_add(mask)?)
}

fn softmax_owned(scores: Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&scores)?)
}

/// Peak bytes per score element of [`softmax_freeing`]: two f32 tensors alive at once.
pub(crate) const SCORE_BYTES: usize = 8;

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
pub(crate) fn band_mask(
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
