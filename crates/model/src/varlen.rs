//! Attention over a packed batch on GPUs (any non-CPU device): few large launches instead of a
//! handful of small ones per sequence.
//!
//! Two kernels, chosen per call:
//! - with the `flash-attn` feature, on f16/bf16 tensors of a CUDA GPU of compute capability 8.0 or
//!   newer: FlashAttention-2's variable-length kernel (candle-flash-attn,
//!   `flash_attn_varlen_windowed`) straight on the packed token stream and `cu_seqlens`, with the
//!   local window `|i - j| <= local_attention / 2` as its left/right window, no window on global
//!   layers. Padding-free and memory-linear in the sequence length.
//! - otherwise, candle ops in padded groups: the batch's sequences, sorted by length, are cut into
//!   groups whose scores fit a budget; each group is gathered into `[group, heads, len, head_dim]`
//!   (padding only up to the longest sequence of the group, which sorting keeps small), masked
//!   (keys past each sequence's end, and the band on local layers), and run as two batched
//!   matmuls and one softmax. Local layers on sequences longer than [`LONG_LOCAL`] use the
//!   banded per-sequence path, whose cost grows with `len × window`, not `len²`.
//!
//! The padded path is device-agnostic and tested on the CPU against the per-sequence attention.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::batch::PackedBatch;
use crate::config::AttentionKind;
use crate::error::Result;

/// Most score elements (`group × heads × len × len`, f32) one padded group computes at once
/// (2^27 = 512 MiB of f32 scores).
const GROUP_SCORES: usize = 1 << 27;
/// Local-layer sequences longer than this take the banded per-sequence path.
pub(crate) const LONG_LOCAL: usize = 1024;

thread_local! {
    /// Set while [`attend_per_sequence`] runs.
    static PER_SEQUENCE: Cell<bool> = const { Cell::new(false) };
}

/// Whether non-CPU devices use this module's kernels; `MBPIPE_GPU_ATTENTION=per-sequence` keeps
/// the per-sequence candle path (for comparisons and as an escape hatch).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| {
        std::env::var("MBPIPE_GPU_ATTENTION").map_or(true, |v| v != "per-sequence")
    });
    on && !PER_SEQUENCE.with(Cell::get)
}

/// [`crate::attention::attend`] with the per-sequence candle path on every device: the reference
/// the GPU kernels are tested against.
pub fn attend_per_sequence(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    PER_SEQUENCE.with(|p| p.set(true));
    let out = crate::attention::attend(q, k, v, batch, kind);
    PER_SEQUENCE.with(|p| p.set(false));
    out
}

/// Attention for every sequence of `batch` on a GPU (`q`, `k`, `v`: `[heads, tokens, head_dim]`,
/// RoPE applied); returns `[heads, tokens, head_dim]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    #[cfg(feature = "flash-attn")]
    if flash_applies(q.device(), q.dtype(), q.dim(2)?) {
        return flash(q, k, v, batch, kind);
    }
    attend_padded(q, k, v, batch, kind)
}

/// Name of the attention kernel a model on `device` in `dtype` with `head_dim` runs, for logs.
pub(crate) fn kernel_name(device: &Device, dtype: DType, head_dim: usize) -> &'static str {
    if device.is_cpu() {
        return "per-sequence (CPU)";
    }
    if !enabled() {
        return "per-sequence candle ops (MBPIPE_GPU_ATTENTION=per-sequence)";
    }
    if flash_applies(device, dtype, head_dim) {
        return "flash-attn varlen (FlashAttention-2, windowed)";
    }
    if cfg!(feature = "flash-attn") {
        "padded groups, candle ops (flash-attn needs f16/bf16, compute capability >= 8.0, head_dim a multiple of 8 up to 256)"
    } else {
        "padded groups, candle ops (build with --features flash-attn for FlashAttention-2)"
    }
}

/// Whether FlashAttention-2 runs here: the feature, a CUDA device of compute capability >= 8.0,
/// f16/bf16, and a head size it has kernels for.
fn flash_applies(device: &Device, dtype: DType, head_dim: usize) -> bool {
    cfg!(feature = "flash-attn")
        && matches!(dtype, DType::F16 | DType::BF16)
        && head_dim.is_multiple_of(8)
        && head_dim <= 256
        && compute_capability(device).is_some_and(|(major, _)| major >= 8)
}

/// Compute capability of a CUDA device; `None` elsewhere.
#[cfg(feature = "cuda")]
pub(crate) fn compute_capability(device: &Device) -> Option<(i32, i32)> {
    let Device::Cuda(d) = device else { return None };
    d.cuda_stream().context().compute_capability().ok()
}

/// Compute capability of a CUDA device; `None` elsewhere (built without CUDA).
#[cfg(not(feature = "cuda"))]
pub(crate) fn compute_capability(_device: &Device) -> Option<(i32, i32)> {
    None
}

#[cfg(feature = "flash-attn")]
fn flash(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    let head_dim = q.dim(2)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // flash-attn wants token-major `[tokens, heads, head_dim]`.
    let token_major = |x: &Tensor| x.transpose(0, 1)?.contiguous();
    let cu: Vec<u32> = batch.cu_seqlens.iter().map(|&c| c as u32).collect();
    let cu = Tensor::from_vec(cu, batch.cu_seqlens.len(), q.device())?;
    let max_len = batch.max_len();
    let (left, right) = match kind {
        AttentionKind::Local { half_window } => (Some(half_window), Some(half_window)),
        AttentionKind::Global => (None, None),
    };
    let out = candle_flash_attn::flash_attn_varlen_windowed(
        &token_major(q)?,
        &token_major(k)?,
        &token_major(v)?,
        &cu,
        &cu,
        max_len,
        max_len,
        scale,
        left,
        right,
    )?;
    Ok(out.transpose(0, 1)?)
}

/// The candle-ops path: padded groups of length-sorted sequences, banded for long local ones.
pub(crate) fn attend_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    attend_padded_within(q, k, v, batch, kind, GROUP_SCORES)
}

/// [`attend_padded`] with a budget of `max_scores` score elements per group.
fn attend_padded_within(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
    max_scores: usize,
) -> Result<Tensor> {
    let (heads, tokens, head_dim) = q.dims3()?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let n = batch.num_sequences();
    let half_window = match kind {
        AttentionKind::Local { half_window } => Some(half_window),
        AttentionKind::Global => None,
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| batch.range(i).len());
    // Token-major copies with one zero row at the end, which padding slots gather.
    let device = q.device();
    let token_major = |x: &Tensor| -> Result<Tensor> {
        let zero = Tensor::zeros((1, heads, head_dim), x.dtype(), device)?;
        Ok(Tensor::cat(&[&x.transpose(0, 1)?, &zero], 0)?)
    };
    let (qt, kt, vt) = (token_major(q)?, token_major(k)?, token_major(v)?);
    // Output pieces, token-major, and the batch token each of their rows belongs to.
    let mut pieces: Vec<Tensor> = Vec::new();
    let mut rows: Vec<u32> = Vec::with_capacity(tokens);
    let mut g = 0;
    while g < n {
        let longest = batch.range(order[g]).len();
        if let Some(w) = half_window.filter(|&w| longest > LONG_LOCAL && longest > w + 1) {
            let r = batch.range(order[g]);
            let out = crate::attention::banded(
                &q.narrow(1, r.start, r.len())?,
                &k.narrow(1, r.start, r.len())?,
                &v.narrow(1, r.start, r.len())?,
                w,
                scale,
            )?;
            pieces.push(out.transpose(0, 1)?);
            rows.extend(r.map(|t| t as u32));
            g += 1;
            continue;
        }
        // Grow the group while its padded scores fit the budget (one sequence always fits).
        let mut end = g + 1;
        while end < n {
            let len = batch.range(order[end]).len();
            let long_local = half_window.is_some() && len > LONG_LOCAL;
            if long_local || (end + 1 - g) * heads * len * len > max_scores {
                break;
            }
            end += 1;
        }
        let group: Vec<std::ops::Range<usize>> =
            order[g..end].iter().map(|&i| batch.range(i)).collect();
        pieces.push(padded_group(
            &qt,
            &kt,
            &vt,
            &group,
            tokens,
            half_window,
            scale,
        )?);
        for r in &group {
            rows.extend(r.clone().map(|t| t as u32));
        }
        g = end;
    }
    let out = Tensor::cat(&pieces, 0)?; // [tokens, heads, head_dim], rows in `rows` order
    let out = if rows.iter().enumerate().all(|(i, &r)| i as u32 == r) {
        out
    } else {
        let mut inverse = vec![0u32; tokens];
        for (i, &r) in rows.iter().enumerate() {
            inverse[r as usize] = i as u32;
        }
        out.index_select(&Tensor::from_vec(inverse, tokens, device)?, 0)?
    };
    Ok(out.transpose(0, 1)?)
}

/// Attention of one group of sequences (token ranges into the batch), padded to the longest;
/// `qt`/`kt`/`vt` are `[tokens + 1, heads, head_dim]` with a zero row at `pad_row`. Returns the
/// group's tokens, in range order, as `[group tokens, heads, head_dim]`.
fn padded_group(
    qt: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    group: &[std::ops::Range<usize>],
    pad_row: usize,
    half_window: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let (_, heads, head_dim) = qt.dims3()?;
    let device = qt.device();
    let b = group.len();
    let len = group.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut gather = Vec::with_capacity(b * len);
    let mut valid = Vec::new();
    for (s, r) in group.iter().enumerate() {
        for p in 0..len {
            if p < r.len() {
                gather.push((r.start + p) as u32);
                valid.push((s * len + p) as u32);
            } else {
                gather.push(pad_row as u32);
            }
        }
    }
    let gather = Tensor::from_vec(gather, b * len, device)?;
    // [b * len, heads, hd] -> [b, heads, len, hd]
    let padded = |x: &Tensor| -> Result<Tensor> {
        Ok(x.index_select(&gather, 0)?
            .reshape((b, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (qg, kg, vg) = (padded(qt)?, padded(kt)?, padded(vt)?);
    let dtype = qg.dtype();
    let scores = (qg.matmul(&kg.t()?)? * scale)?.to_dtype(DType::F32)?; // [b, heads, len, len]
    let mask = group_mask(group, len, half_window, device)?; // [b, 1, len or 1, len]
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?.to_dtype(dtype)?;
    let out = probs
        .matmul(&vg)? // [b, heads, len, hd]
        .transpose(1, 2)?
        .reshape((b * len, heads, head_dim))?;
    let valid_len = valid.len();
    Ok(out.index_select(&Tensor::from_vec(valid, valid_len, device)?, 0)?)
}

/// Additive mask, 0 where query `i` of sequence `s` may see key `j`, -1e30 elsewhere: keys past
/// the sequence's end are hidden, and on local layers keys with `|i - j| > w`. Padding queries
/// (discarded afterwards) see every real key, so no row is all masked. Built on the device from a
/// few small tensors: `[b, 1, 1, len]` for global layers, `[b, 1, len, len]` for local ones.
fn group_mask(
    group: &[std::ops::Range<usize>],
    len: usize,
    half_window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = group.len();
    let lens: Vec<f32> = group.iter().map(|r| r.len() as f32).collect();
    let lens = Tensor::from_vec(lens, (b, 1, 1), device)?;
    let pos = Tensor::arange(0u32, len as u32, device)?.to_dtype(DType::F32)?;
    let key_valid = pos
        .reshape((1, 1, len))?
        .broadcast_lt(&lens)?
        .to_dtype(DType::F32)?; // [b, 1, len]
    let allowed = match half_window {
        None => key_valid,
        Some(w) => {
            let band = pos
                .reshape((len, 1))?
                .broadcast_sub(&pos.reshape((1, len))?)?
                .abs()?
                .le(w as f64)?
                .to_dtype(DType::F32)?; // [len, len]
            let query_pad = pos
                .reshape((1, len, 1))?
                .broadcast_ge(&lens)?
                .to_dtype(DType::F32)?; // [b, len, 1]
            band.unsqueeze(0)?
                .broadcast_maximum(&query_pad)?
                .broadcast_mul(&key_valid)? // [b, len, len]
        }
    };
    // allowed 1 -> 0, allowed 0 -> -1e30
    Ok(allowed.affine(1e30, -1e30)?.unsqueeze(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::attend as per_sequence;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn check(lengths: &[usize], kind: AttentionKind) {
        check_within(lengths, kind, GROUP_SCORES)
    }

    fn check_within(lengths: &[usize], kind: AttentionKind, max_scores: usize) {
        let dev = Device::Cpu;
        let seqs: Vec<Vec<u32>> = lengths.iter().map(|&l| vec![7; l]).collect();
        let batch = PackedBatch::from_sequences(&seqs);
        let t = batch.num_tokens();
        let r = || Tensor::randn(0f32, 1., (3, t, 16), &dev).unwrap();
        let (q, k, v) = (r(), r(), r());
        let want = per_sequence(&q, &k, &v, &batch, kind).unwrap();
        let got = attend_padded_within(&q, &k, &v, &batch, kind, max_scores).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "lengths {lengths:?} {kind:?}: max diff {d}");
    }

    #[test]
    fn padded_groups_equal_per_sequence_attention() {
        // Unsorted lengths (the output must come back in batch order), single tokens, a
        // sequence past the window, one past LONG_LOCAL (banded path on local layers).
        let lengths = [5, 1, 40, 17, 3, 17, 64, 2, LONG_LOCAL + 37, 9];
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 4 },
            AttentionKind::Local { half_window: 64 },
        ] {
            check(&lengths, kind);
            check(&[12], kind);
            check(&[8, 8, 8], kind);
        }
    }

    #[test]
    fn groups_are_cut_by_the_score_budget() {
        // 3 heads: a budget of 3 × 2 × 40² lets at most two sequences of 40 share a group.
        let lengths = [40, 3, 40, 39, 40, 1];
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 6 },
        ] {
            check_within(&lengths, kind, 3 * 2 * 40 * 40);
            // A budget below one sequence still runs it, alone.
            check_within(&lengths, kind, 1);
        }
    }

    #[test]
    fn low_precision_matches_f32_closely() {
        let dev = Device::Cpu;
        let batch = PackedBatch::from_sequences(&[vec![1; 20], vec![1; 7], vec![1; 33]]);
        let t = batch.num_tokens();
        let r = || Tensor::randn(0f32, 1., (2, t, 16), &dev).unwrap();
        let (q, k, v) = (r(), r(), r());
        let kind = AttentionKind::Local { half_window: 5 };
        let want = attend_padded(&q, &k, &v, &batch, kind).unwrap();
        let h = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
        let got = attend_padded(&h(&q), &h(&k), &h(&v), &batch, kind)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let d = max_diff(&got, &want);
        assert!(d < 5e-2, "bf16 vs f32: max diff {d}");
    }

    #[test]
    fn cpu_reports_its_kernel() {
        assert_eq!(
            kernel_name(&Device::Cpu, DType::F32, 64),
            "per-sequence (CPU)"
        );
        assert!(!flash_applies(&Device::Cpu, DType::BF16, 64));
    }
}
