//! Attention over a packed batch on GPUs (any non-CPU device): few large launches instead of a
//! handful of small ones per sequence.
//!
//! Two kernels, chosen once per model ([`crate::kernel::choose`], then checked at load against
//! each other, [`crate::selfcheck`]):
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
//!   banded per-sequence path, whose cost grows with `len × window`, not `len²`. A sequence
//!   whose scores alone exceed the budget runs in blocks of queries, one block's scores at a time
//!   ([`Piece::Chunked`]), so one long document fits where its whole score matrix would not.
//!
//! The padded path is device-agnostic and tested on the CPU against the per-sequence attention.

use candle_core::{DType, Device, Tensor};

use crate::attention::{block, SCORE_BYTES};
use crate::batch::PackedBatch;
use crate::config::AttentionKind;
use crate::error::Result;

/// Most score elements (`group × heads × len × len`, f32) one padded group, or one query block of
/// a long sequence, computes at once (2^27: 512 MiB of f32 scores, 1 GiB at the softmax's peak).
pub(crate) const GROUP_SCORES: usize = 1 << 27;
/// Local-layer sequences longer than this take the banded per-sequence path.
pub(crate) const LONG_LOCAL: usize = 1024;

/// [`crate::attention::attend`] with the per-sequence candle path on every device: the reference
/// the GPU kernels are tested against.
pub fn attend_per_sequence(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &PackedBatch,
    kind: AttentionKind,
) -> Result<Tensor> {
    crate::attention::per_sequence(q, k, v, batch, kind)
}

/// One launch unit of the padded path, over the batch's sequences sorted by length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Sorted sequences `start..end`, padded to the longest (the last).
    Group { start: usize, end: usize },
    /// One long sequence of a local layer, banded.
    Banded(usize),
    /// One sequence whose scores alone exceed the budget: blocks of `rows` queries, each against
    /// all its keys, one after the other.
    Chunked { at: usize, rows: usize },
}

/// Cuts sequences of `sorted` lengths (ascending) into [`Piece`]s whose scores (`heads` per
/// sequence) fit `max_scores` elements; `half_window` is the local window (`None` on global
/// layers).
pub(crate) fn plan(
    sorted: &[usize],
    heads: usize,
    half_window: Option<usize>,
    max_scores: usize,
) -> Vec<Piece> {
    let long_local = |len: usize| half_window.is_some_and(|w| len > LONG_LOCAL && len > w + 1);
    let mut pieces = Vec::new();
    let mut g = 0;
    while g < sorted.len() {
        let len = sorted[g];
        if long_local(len) {
            pieces.push(Piece::Banded(g));
            g += 1;
            continue;
        }
        let per_query = heads * len;
        if per_query * len > max_scores {
            let rows = (max_scores / per_query).max(1);
            pieces.push(Piece::Chunked { at: g, rows });
            g += 1;
            continue;
        }
        // Grow the group while its padded scores fit the budget.
        let mut end = g + 1;
        while end < sorted.len() {
            let len = sorted[end];
            if long_local(len) || (end + 1 - g) * heads * len * len > max_scores {
                break;
            }
            end += 1;
        }
        pieces.push(Piece::Group { start: g, end });
        g = end;
    }
    pieces
}

/// Approximate peak bytes of the attention of one layer over sequences of `sorted` lengths on the
/// padded path: the largest piece's scores at the softmax ([`SCORE_BYTES`] each), its mask, and
/// its gathered queries, keys, values and output (`hidden` wide, `dtype_bytes` each).
pub(crate) fn padded_peak_bytes(
    sorted: &[usize],
    heads: usize,
    hidden: usize,
    dtype_bytes: usize,
    half_window: Option<usize>,
) -> usize {
    let mask = |rows: usize, keys: usize| {
        if half_window.is_some() {
            rows * keys * 4
        } else {
            0
        }
    };
    plan(sorted, heads, half_window, GROUP_SCORES)
        .iter()
        .map(|piece| match *piece {
            Piece::Group { start, end } => {
                let (b, len) = (end - start, sorted[end - 1]);
                b * heads * len * len * SCORE_BYTES
                    + b * mask(len, len)
                    + 4 * b * len * hidden * dtype_bytes
            }
            Piece::Banded(_) => {
                let w = half_window.unwrap_or(0);
                let rows = crate::attention::LOCAL_BLOCK.max(w);
                heads * rows * (rows + 2 * w) * SCORE_BYTES + mask(rows, rows + 2 * w)
            }
            Piece::Chunked { at, rows } => {
                let len = sorted[at];
                heads * rows * len * SCORE_BYTES + mask(rows, len) + rows * hidden * dtype_bytes
            }
        })
        .max()
        .unwrap_or(0)
}

/// Padding slots (query positions that are not a token) of one layer's attention over sequences
/// of `sorted` lengths on the padded path: each group is padded to its longest sequence; banded
/// and chunked pieces hold one sequence and pad nothing.
pub(crate) fn padded_slots(sorted: &[usize], heads: usize, half_window: Option<usize>) -> usize {
    plan(sorted, heads, half_window, GROUP_SCORES)
        .iter()
        .map(|piece| match *piece {
            Piece::Group { start, end } => {
                let group = &sorted[start..end];
                group.len() * sorted[end - 1] - group.iter().sum::<usize>()
            }
            Piece::Banded(_) | Piece::Chunked { .. } => 0,
        })
        .sum()
}

/// Approximate peak bytes of one layer's attention over sequences of `sorted` lengths on the
/// per-sequence path: a whole sequence's scores on global layers, a band block on local ones.
pub(crate) fn per_sequence_peak_bytes(
    sorted: &[usize],
    heads: usize,
    half_window: Option<usize>,
) -> usize {
    let len = sorted.last().copied().unwrap_or(0);
    let keys = match half_window {
        Some(w) if len > w + 1 => (crate::attention::LOCAL_BLOCK.max(w) + 2 * w).min(len),
        _ => len,
    };
    let rows = match half_window {
        Some(w) if len > w + 1 => crate::attention::LOCAL_BLOCK.max(w).min(len),
        _ => len,
    };
    heads * rows * keys * SCORE_BYTES
}

/// FlashAttention-2 varlen over the packed batch.
#[cfg(feature = "flash-attn")]
pub(crate) fn flash(
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
    let sorted: Vec<usize> = order.iter().map(|&i| batch.range(i).len()).collect();
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
    let one = |at: usize| -> Result<(std::ops::Range<usize>, Tensor, Tensor, Tensor)> {
        let r = batch.range(order[at]);
        let (s, l) = (r.start, r.len());
        Ok((
            r,
            q.narrow(1, s, l)?,
            k.narrow(1, s, l)?,
            v.narrow(1, s, l)?,
        ))
    };
    for piece in plan(&sorted, heads, half_window, max_scores) {
        match piece {
            Piece::Banded(at) => {
                let (r, qs, ks, vs) = one(at)?;
                let w = half_window.expect("banded pieces are local, this is a bug");
                let out = crate::attention::banded(&qs, &ks, &vs, w, scale)?;
                pieces.push(out.transpose(0, 1)?);
                rows.extend(r.map(|t| t as u32));
            }
            Piece::Chunked {
                at,
                rows: block_rows,
            } => {
                let (r, qs, ks, vs) = one(at)?;
                pieces.push(chunked(&qs, &ks, &vs, block_rows, half_window, scale)?);
                rows.extend(r.map(|t| t as u32));
            }
            Piece::Group { start, end } => {
                let group: Vec<std::ops::Range<usize>> =
                    order[start..end].iter().map(|&i| batch.range(i)).collect();
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
            }
        }
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

/// Attention of one sequence (`[heads, len, head_dim]`) in blocks of `block_rows` queries, each
/// against all the sequence's keys (banded by a mask on local layers): the scores of one block,
/// not of the whole sequence, exist at a time. Returns `[len, heads, head_dim]`.
fn chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_rows: usize,
    half_window: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let len = q.dim(1)?;
    let mut outputs = Vec::with_capacity(len.div_ceil(block_rows));
    let mut q0 = 0;
    while q0 < len {
        let qn = block_rows.min(len - q0);
        let mask = match half_window {
            Some(w) => Some(crate::attention::band_mask(q0, qn, 0, len, w, q.device())?),
            None => None,
        };
        outputs.push(block(&q.narrow(1, q0, qn)?, k, v, mask.as_ref(), scale)?);
        q0 += qn;
    }
    Ok(Tensor::cat(&outputs, 1)?.transpose(0, 1)?)
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
    let scores = (qg * scale)?.matmul(&kg.t()?)?; // [b, heads, len, len]
    let mask = group_mask(group, len, half_window, device)?; // [b, 1, len or 1, len]
    let probs = crate::attention::softmax_freeing(scores, Some(&mask))?.to_dtype(dtype)?;
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
    use crate::attention::per_sequence;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::selfcheck::max_abs(&(a - b).unwrap())
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
    fn padding_is_each_group_padded_to_its_longest() {
        // One group (budget allows): 3 sequences padded to 40 -> 3 * 40 - (3 + 39 + 40) = 38.
        assert_eq!(padded_slots(&[3, 39, 40], 1, None), 38);
        assert_eq!(padded_slots(&[7, 7, 7], 12, None), 0);
        assert_eq!(padded_slots(&[], 12, None), 0);
        // A long local sequence is banded on its own: only the short ones pad.
        assert_eq!(padded_slots(&[10, 20, 5000], 1, Some(64)), 10);
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

    /// bf16 against an f32 reference on the same (rounded) seeded inputs, relative to the
    /// output's scale: bf16 keeps 8 bits, so a correct kernel is within about 1%.
    #[test]
    fn low_precision_matches_f32_closely() {
        use crate::selfcheck::{relative_error, seeded_tensor};
        let dev = Device::Cpu;
        let batch = PackedBatch::from_sequences(&[vec![1; 20], vec![1; 7], vec![1; 33]]);
        let shape = [2, batch.num_tokens(), 16];
        let r = |seed| seeded_tensor(seed, &shape, DType::BF16, &dev).unwrap();
        let (q, k, v) = (r(11), r(12), r(13));
        let f = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let kind = AttentionKind::Local { half_window: 5 };
        let want = per_sequence(&f(&q), &f(&k), &f(&v), &batch, kind).unwrap();
        let got = attend_padded(&q, &k, &v, &batch, kind).unwrap();
        let err = relative_error(&got, &want).unwrap();
        assert!(err < 1e-2, "bf16 vs f32: relative error {err}");
    }

    #[test]
    fn long_sequences_are_chunked_into_query_blocks_that_fit() {
        // 2 heads × 100 keys: a budget of 2 × 30 × 100 scores is 30 query rows per block.
        let sorted = [3, 5, 100];
        let budget = 2 * 30 * 100;
        assert_eq!(
            plan(&sorted, 2, None, budget),
            vec![
                Piece::Group { start: 0, end: 2 },
                Piece::Chunked { at: 2, rows: 30 }
            ]
        );
        // Local layers: long sequences are banded, whatever the budget.
        let long = [4, LONG_LOCAL + 1];
        assert_eq!(
            plan(&long, 2, Some(8), GROUP_SCORES),
            vec![Piece::Group { start: 0, end: 1 }, Piece::Banded(1)]
        );
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 7 },
            AttentionKind::Local { half_window: 200 },
        ] {
            // 3 heads: blocks of 30, 4 and 1 query rows of a 100-token sequence.
            for budget in [3 * 30 * 100, 3 * 4 * 100, 1] {
                check_within(&[100, 5, 3], kind, budget);
            }
        }
    }

    #[test]
    fn the_memory_estimate_grows_with_the_longest_sequence_not_the_token_count() {
        let est = |lens: &[usize]| padded_peak_bytes(lens, 12, 768, 2, None);
        // Same tokens: 64 texts of 128 against one of 8,192.
        let short = est(&[128; 64]);
        let long = est(&[8192]);
        assert!(long > 4 * short, "{long} vs {short}");
        // A long sequence is chunked: its peak stays near the budget, not 12 × 8192² × 8.
        assert!(
            long <= GROUP_SCORES * SCORE_BYTES + 8192 * 8192 * 4,
            "{long}"
        );
        assert!(long > GROUP_SCORES * SCORE_BYTES / 2, "{long}");
        // Local layers of long sequences are banded: far below the global peak.
        let local = padded_peak_bytes(&[8192], 12, 768, 2, Some(64));
        assert!(local * 10 < long, "{local} vs {long}");
        // The per-sequence path does not chunk.
        assert_eq!(
            per_sequence_peak_bytes(&[5, 8192], 12, None),
            12 * 8192 * 8192 * 8
        );
        assert_eq!(est(&[]), 0);
    }
}
