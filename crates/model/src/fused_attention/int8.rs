//! QKᵀ in int8 on AVX512-VNNI's `vpdpbusd` for `--dtype int8`
//! ([`AttentionProducts::Int8Dot`](super::AttentionProducts::Int8Dot)); the softmax and PV stay
//! f32 on the AVX-512 micro-kernels.
//!
//! In f32 the attention was a quarter of an int8 forward on short texts and three fifths on long
//! documents, its QKᵀ a third of that on long rows: the linear layers ran four multiply-adds per
//! lane per instruction while QKᵀ ran one. Here Q and K are rounded to int8 once per head, and
//! one `vpdpbusd` takes four dimensions of 16 keys against a broadcast query, with exact int32
//! sums.
//!
//! The rounding follows SageAttention's (which smooths K the same way before rounding it):
//! - Q per row: `q ≈ s_q · q8`, `s_q = max |q| / 127` (after RoPE and the `1/sqrt(d)` scale).
//! - K per key after subtracting the head's mean key over the sequence, `k - k̄ ≈ s_k · k8`.
//!   The mean shifts every score of a query row by the same `q · k̄`, which the softmax
//!   cancels; what it removes is the bias that keys of one head share, which would otherwise
//!   set every key's scale and leave the part that tells keys apart a few levels.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: K is stored as `k8 + 128`, so each sum is
//! `q8 · k8 + 128 Σ q8`, and the second term (one per query row) is subtracted before the
//! scales are applied. PV keeps f32: the probabilities of a row with a diffuse softmax are small
//! and many, and rounding them to 8 bits would lose a visible part of their sum (fp16 kept
//! them, but was no faster on Emerald Rapids: benches/RESULTS.md).

use std::arch::x86_64::*;

use super::simd::{self, Avx512, QueryKeyScores, Tile};
use super::{HeadTask, Inputs, Shape, SharedOut, QUERY_BLOCK};
use crate::config::AttentionKind;

/// Keys per panel and per score tile: two vectors of 16 (the f32 kernels' key step).
const KEYS: usize = 32;
/// Query rows per register tile: 8 × 2 accumulators of the 32 registers.
const ROWS: usize = 8;

/// One head of one sequence, rounded and laid out for `vpdpbusd`, reused by the tasks that run
/// on one thread.
#[derive(Default)]
pub(super) struct Scratch {
    /// Q rounded, `[len, head_dim]`.
    q8: Vec<i8>,
    /// Per Q row: `s_q`.
    q_scales: Vec<f32>,
    /// Per Q row: `128 Σ q8`, the sum's part from K's offset.
    q_offsets: Vec<i32>,
    /// K (rotated) in f32, `[len, head_dim]`, until it is rounded.
    k: Vec<f32>,
    /// K's mean over the sequence, `[head_dim]`.
    k_mean: Vec<f32>,
    /// K rounded plus 128: per panel of [`KEYS`] keys, per 4 dimensions, two vectors of 16 keys
    /// × 4 bytes (the dimensions of one key side by side, as `vpdpbusd` sums them).
    k8: Vec<u8>,
    /// Per key: `s_k` (0 for the padding keys of the last panel).
    k_scales: Vec<f32>,
    /// V, `[len, head_dim]`.
    v: Vec<f32>,
    /// One rotated Q row.
    q_row: Vec<f32>,
    /// One rounded K row.
    k_row8: Vec<i8>,
    /// A block's scores.
    scores: Vec<f32>,
}

/// Runs one head of one sequence (see the module's comment).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `shape.head_dim` is a multiple of
/// [`simd::HEAD_DIM_STEP`]; the task's rows and head columns lie inside `qkv` and the output,
/// and this task alone writes its part.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn run(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    (kind, shape): (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    assert!(shape.head_dim.is_multiple_of(simd::HEAD_DIM_STEP));
    assert_eq!(simd::key_step::<Avx512>(), KEYS);
    gather(task, inputs, shape, scratch);
    let Scratch {
        q8,
        q_scales,
        q_offsets,
        k8,
        k_scales,
        v,
        scores,
        ..
    } = scratch;
    let products = Int8Scores {
        q8,
        q_scales,
        q_offsets,
        k8,
        k_scales,
        head_dim: shape.head_dim,
    };
    for block in task.blocks(QUERY_BLOCK) {
        block.attend_simd::<Avx512>(&products, v, scores, dst, kind, shape);
    }
}

/// Rotates the head's Q and K rows, rounds Q, copies V, then rounds K about its mean into the
/// panels; the padding keys of the last panel get scale 0.
#[inline(always)]
unsafe fn gather(task: &HeadTask, inputs: &Inputs<'_>, shape: Shape, scratch: &mut Scratch) {
    let head_dim = shape.head_dim;
    let len = task.seq.len();
    let padded = len.next_multiple_of(KEYS);
    scratch.q8.resize(len * head_dim, 0);
    scratch.q_scales.resize(len, 0.0);
    scratch.q_offsets.resize(len, 0);
    scratch.k.resize(len * head_dim, 0.0);
    scratch.v.resize(len * head_dim, 0.0);
    scratch.q_row.resize(head_dim, 0.0);
    scratch.k_row8.resize(head_dim, 0);
    scratch.k_mean.resize(head_dim, 0.0);
    scratch.k8.resize(padded * head_dim, 0);
    scratch.k_scales.resize(padded, 0.0);
    let Scratch {
        q8,
        q_scales,
        q_offsets,
        k,
        k_mean,
        k8,
        k_scales,
        v,
        q_row,
        k_row8,
        ..
    } = scratch;
    let rows = k
        .chunks_exact_mut(head_dim)
        .zip(v.chunks_exact_mut(head_dim))
        .zip(q8.chunks_exact_mut(head_dim));
    for (j, ((k_row, v_row), q8_row)) in rows.enumerate() {
        let values = task.rotate_row::<Avx512>(inputs, shape, task.seq.start + j, q_row, k_row);
        let (scale, sum) = round_row(q_row, None, q8_row.as_mut_ptr());
        q_scales[j] = scale;
        q_offsets[j] = 128 * sum;
        simd::copy_row(values, v_row);
    }
    mean_row(k, head_dim, k_mean);
    for (j, k_row) in k.chunks_exact(head_dim).enumerate() {
        let (scale, _) = round_row(k_row, Some(k_mean), k_row8.as_mut_ptr());
        k_scales[j] = scale;
        place_key(k8, j, k_row8);
    }
    // The padding keys of the last panel: zero keys of scale 0, so their scores are 0 (the
    // softmax masks them) rather than a former head's.
    k_row8.fill(0);
    k_scales[len..].fill(0.0);
    for j in len..padded {
        place_key(k8, j, k_row8);
    }
}

/// `mean = Σ rows / count` over the `[count, width]` matrix `rows` (one row at a time, in
/// order).
#[inline(always)]
unsafe fn mean_row(rows: &[f32], width: usize, mean: &mut [f32]) {
    assert!(width.is_multiple_of(16) && mean.len() == width && !rows.is_empty());
    let (m, count) = (mean.as_mut_ptr(), rows.len() / width);
    for c in (0..width).step_by(16) {
        let mut sum = _mm512_setzero_ps();
        for row in rows.chunks_exact(width) {
            sum = _mm512_add_ps(sum, _mm512_loadu_ps(row.as_ptr().add(c)));
        }
        _mm512_storeu_ps(m.add(c), _mm512_div_ps(sum, _mm512_set1_ps(count as f32)));
    }
}

/// Rounds `x - shift` (`shift` 0 where `None`) to `out`: `x - shift ≈ scale · out` with
/// `scale = max |x - shift| / 127` (0 for a zero row, whose bytes are 0); returns the scale and
/// the bytes' sum.
#[inline(always)]
unsafe fn round_row(x: &[f32], shift: Option<&[f32]>, out: *mut i8) -> (f32, i32) {
    let n = x.len();
    assert!(n.is_multiple_of(16) && shift.is_none_or(|s| s.len() == n));
    let at = |c: usize| {
        let v = _mm512_loadu_ps(x.as_ptr().add(c));
        shift.map_or(v, |s| _mm512_sub_ps(v, _mm512_loadu_ps(s.as_ptr().add(c))))
    };
    let (mut max, mut poison) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for c in (0..n).step_by(16) {
        let v = at(c);
        max = _mm512_max_ps(max, _mm512_abs_ps(v));
        // 0 · v is NaN for an inf or NaN (which `vmaxps` may drop).
        poison = _mm512_add_ps(poison, _mm512_mul_ps(v, _mm512_setzero_ps()));
    }
    let max = _mm512_reduce_max_ps(max);
    let finite = _mm512_reduce_add_ps(poison) == 0.0;
    if max == 0.0 || !finite {
        // A zero row rounds to zeros; a row with inf or NaN to zeros with a NaN scale, so its
        // scores are NaN as in f32.
        std::ptr::write_bytes(out, 0, n);
        return (if finite { 0.0 } else { f32::NAN }, 0);
    }
    let factor = _mm512_set1_ps(127.0 / max);
    let mut sum = _mm512_setzero_si512();
    for c in (0..n).step_by(16) {
        // Rounded to nearest (even on ties); |x| · 127 / max stays within 127 and a rounding.
        let i = _mm512_cvtps_epi32(_mm512_mul_ps(at(c), factor));
        sum = _mm512_add_epi32(sum, i);
        _mm_storeu_si128(out.add(c).cast(), _mm512_cvtepi32_epi8(i));
    }
    (max / 127.0, _mm512_reduce_add_epi32(sum))
}

/// Key `j`'s rounded row, plus 128, into its panel: dimensions `4g..4g + 4` (one 32-bit word)
/// at lane `j % 16` of vector `(j % 32) / 16` of group `g`.
#[inline(always)]
fn place_key(k8: &mut [u8], j: usize, rounded: &[i8]) {
    let head_dim = rounded.len();
    let panel = &mut k8[j / KEYS * KEYS * head_dim..][..KEYS * head_dim];
    let lane = (j % KEYS) / 16 * 64 + (j % 16) * 4;
    for (g, dims) in rounded.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([dims[0], dims[1], dims[2], dims[3]].map(|x| x as u8));
        // Adding 128 to each signed byte flips its top bit.
        let at = g * 2 * 64 + lane;
        panel[at..at + 4].copy_from_slice(&(word ^ 0x8080_8080).to_le_bytes());
    }
}

/// The head's rounded Q and K (see [`Scratch`]).
struct Int8Scores<'a> {
    q8: &'a [i8],
    q_scales: &'a [f32],
    q_offsets: &'a [i32],
    k8: &'a [u8],
    k_scales: &'a [f32],
    head_dim: usize,
}

impl QueryKeyScores for Int8Scores<'_> {
    #[inline(always)]
    unsafe fn scores(
        &self,
        first_query: usize,
        base: usize,
        scores: &mut [f32],
        stride: usize,
        tile: Tile,
    ) {
        let Tile { r0, rows, keys } = tile;
        let head_dim = self.head_dim;
        let first = first_query + r0;
        assert!((1..=simd::ROWS).contains(&rows) && first + rows <= self.q_scales.len());
        assert!(keys.start.is_multiple_of(KEYS) && base.is_multiple_of(KEYS));
        assert!(keys.end <= stride && stride.is_multiple_of(KEYS));
        assert!(
            base + stride <= self.k_scales.len() && self.k8.len() >= self.k_scales.len() * head_dim
        );
        assert!(self.q8.len() >= (first + rows) * head_dim && scores.len() >= (r0 + rows) * stride);
        let mut r = 0;
        while r < rows {
            let n = ROWS.min(rows - r);
            let q = first + r;
            let queries = (
                self.q8.as_ptr().add(q * head_dim),
                self.q_scales.as_ptr().add(q),
                self.q_offsets.as_ptr().add(q),
            );
            let keys_at = (
                self.k8.as_ptr().add(base * head_dim),
                self.k_scales.as_ptr().add(base),
                head_dim,
            );
            let out = (scores.as_mut_ptr().add((r0 + r) * stride), stride);
            let cols = keys.clone();
            match n {
                1 => scores_tile::<1>(queries, keys_at, out, cols),
                2 => scores_tile::<2>(queries, keys_at, out, cols),
                3 => scores_tile::<3>(queries, keys_at, out, cols),
                4 => scores_tile::<4>(queries, keys_at, out, cols),
                5 => scores_tile::<5>(queries, keys_at, out, cols),
                6 => scores_tile::<6>(queries, keys_at, out, cols),
                7 => scores_tile::<7>(queries, keys_at, out, cols),
                _ => scores_tile::<8>(queries, keys_at, out, cols),
            }
            r += n;
        }
    }
}

/// `R` query rows × two vectors of keys per register tile: int32 sums over the head, less the
/// rows' offsets, times the key's and the row's scales.
#[inline(always)]
unsafe fn scores_tile<const R: usize>(
    (q8, q_scales, q_offsets): (*const i8, *const f32, *const i32),
    (k8, k_scales, head_dim): (*const u8, *const f32, usize),
    (out, stride): (*mut f32, usize),
    cols: std::ops::Range<usize>,
) {
    let mut j = cols.start;
    while j < cols.end {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        let panel = k8.add(j * head_dim);
        for g in 0..head_dim / 4 {
            let k0 = _mm512_loadu_si512(panel.add(g * 128).cast());
            let k1 = _mm512_loadu_si512(panel.add(g * 128 + 64).cast());
            for (r, a) in acc.iter_mut().enumerate() {
                let q =
                    _mm512_set1_epi32(q8.add(r * head_dim + 4 * g).cast::<i32>().read_unaligned());
                a[0] = _mm512_dpbusd_epi32(a[0], k0, q);
                a[1] = _mm512_dpbusd_epi32(a[1], k1, q);
            }
        }
        let scales = [
            _mm512_loadu_ps(k_scales.add(j)),
            _mm512_loadu_ps(k_scales.add(j + 16)),
        ];
        for (r, a) in acc.iter().enumerate() {
            let offset = _mm512_set1_epi32(*q_offsets.add(r));
            let q_scale = _mm512_set1_ps(*q_scales.add(r));
            for (c, (&sum, &k_scale)) in a.iter().zip(&scales).enumerate() {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, offset));
                let score = _mm512_mul_ps(exact, _mm512_mul_ps(k_scale, q_scale));
                _mm512_storeu_ps(out.add(r * stride + j + 16 * c), score);
            }
        }
        j += KEYS;
    }
}
