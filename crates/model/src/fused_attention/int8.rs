//! QKᵀ in int8 on `vpdpbusd` for `--dtype int8`
//! ([`AttentionProducts::Int8Dot`](super::AttentionProducts::Int8Dot)): 512-bit on AVX512-VNNI,
//! with PV in fp16 on AVX512-FP16 where the CPU has it; 256-bit on CPUs without AVX-512: on
//! AVX-VNNI where the CPU has it, else the same sums on AVX2's `vpmaddwd` ([`words`]), with PV
//! in 16-bit integers on either ([`words_values`]: `vpdpwssd`, or `vpmaddwd`). The softmax stays
//! f32 on the same vectors' micro-kernels.
//!
//! In f32 the attention was a quarter of an int8 forward on short texts and three fifths on long
//! documents, its QKᵀ a third of that on long rows: the linear layers ran four multiply-adds per
//! lane per instruction while QKᵀ ran one. Here Q and K are rounded to int8 once per head, and
//! one `vpdpbusd` takes four dimensions of 16 keys (8 at 256 bits) against a broadcast query,
//! with exact int32 sums. The rounding gives the same bytes on either width.
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
//! scales are applied.
//!
//! PV runs in fp16 where the CPU has AVX512-FP16 ([`Fp16Values`]), in 16-bit integers with
//! 13-bit probabilities scaled per pass of 128 keys on 256-bit vectors ([`words_values`]), f32
//! otherwise (AVX-512 without FP16); not in int8: the probabilities of a row with a diffuse
//! softmax are small and many, and rounding them to 8 bits would lose a visible part of their
//! sum.

use std::arch::x86_64::*;
use std::marker::PhantomData;

mod words_values;

use super::simd::{self, Avx2, Avx512, Isa, QueryKeyScores, Tile};
use super::{HeadTask, Inputs, Shape, SharedOut, QUERY_BLOCK};
use crate::config::AttentionKind;
use crate::simd::Cpu;

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
    /// Q rounded as 16-bit pairs for `vpmaddwd` (AVX2 without VNNI, [`words`]): per row, per 4
    /// dimensions `4g..4g + 4`, dimensions `4g` and `4g + 2`, then `4g + 1` and `4g + 3`.
    q_words: Vec<i32>,
    /// K (rotated) in f32, `[len, head_dim]`, until it is rounded.
    k: Vec<f32>,
    /// K's mean over the sequence, `[head_dim]`.
    k_mean: Vec<f32>,
    /// K rounded plus 128: per panel of [`ByteDot::KEYS`] keys, per 4 dimensions, two vectors
    /// of keys × 4 bytes (the dimensions of one key side by side, as `vpdpbusd` sums them).
    k8: Vec<u8>,
    /// Per key: `s_k` (0 for the padding keys of the last panel).
    k_scales: Vec<f32>,
    /// V, `[len, head_dim]`.
    v: Vec<f32>,
    /// V in fp16 bits, `[len, head_dim]`, where PV runs on AVX512-FP16.
    v16: Vec<u16>,
    /// V rounded to 16-bit integers, where PV runs on `vpmaddwd` or `vpdpwssd` ([`words_values`]).
    v_words: words_values::RoundedValues,
    /// One rotated Q row.
    q_row: Vec<f32>,
    /// One rounded K row.
    k_row8: Vec<i8>,
    /// A block's scores.
    scores: Vec<f32>,
}

/// What the int8 QKᵀ needs of a vector width beyond its integer vectors ([`IntVectors`]: the
/// `vpdpbusd` of 512-bit AVX512-VNNI for [`Avx512`], of 256-bit AVX-VNNI for [`Avx2`]): the
/// panels' and register tiles' sizes and the rounding to bytes.
pub(super) trait ByteDot: IntVectors {
    /// Keys per panel and per score tile: two vectors (the f32 kernels' key step).
    const KEYS: usize = 2 * Self::LANES;
    /// Query rows per register tile: `2 · ROWS` accumulators, two vectors of keys and a
    /// broadcast fit the registers (8 of 32 on AVX-512, 6 of AVX2's 16).
    const ROWS: usize;

    /// `x - shift` rounded to nearest (even on ties) after multiplying by `factor`, into
    /// `out`; returns the bytes' sum. `x.len()` is a multiple of 16.
    unsafe fn round_into(x: &[f32], shift: Option<&[f32]>, factor: f32, out: *mut i8) -> i32;
}

impl ByteDot for Avx512 {
    const ROWS: usize = 8;

    #[inline(always)]
    unsafe fn round_into(x: &[f32], shift: Option<&[f32]>, factor: f32, out: *mut i8) -> i32 {
        let factor = _mm512_set1_ps(factor);
        let mut sum = _mm512_setzero_si512();
        for c in (0..x.len()).step_by(16) {
            // Rounded to nearest (even on ties); |x| · 127 / max stays within 127 and a rounding.
            let i = _mm512_cvtps_epi32(_mm512_mul_ps(shifted::<Self>(x, shift, c), factor));
            sum = _mm512_add_epi32(sum, i);
            _mm_storeu_si128(out.add(c).cast(), _mm512_cvtepi32_epi8(i));
        }
        _mm512_reduce_add_epi32(sum)
    }
}

impl ByteDot for Avx2 {
    const ROWS: usize = 6;

    #[inline(always)]
    unsafe fn round_into(x: &[f32], shift: Option<&[f32]>, factor: f32, out: *mut i8) -> i32 {
        let factor = _mm256_set1_ps(factor);
        let mut sum = _mm256_setzero_si256();
        for c in (0..x.len()).step_by(16) {
            // As on AVX-512, 16 values at a time: the packs saturate, but every value is
            // within ±127 already.
            let lo = _mm256_cvtps_epi32(_mm256_mul_ps(shifted::<Self>(x, shift, c), factor));
            let hi = _mm256_cvtps_epi32(_mm256_mul_ps(shifted::<Self>(x, shift, c + 8), factor));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(lo, hi));
            let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
            let bytes = _mm_packs_epi16(
                _mm256_castsi256_si128(words),
                _mm256_extracti128_si256::<1>(words),
            );
            _mm_storeu_si128(out.add(c).cast(), bytes);
        }
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum);
        lanes.iter().sum()
    }
}

/// Runs one head of one sequence (see the module's comment) on `inputs.isa`'s vectors.
///
/// # Safety
/// The CPU has the products' instructions ([`super::int8_dot_available`] for `inputs.isa`);
/// `shape.head_dim` is a multiple of [`simd::HEAD_DIM_STEP`]; the task's rows and head columns
/// lie inside `qkv` and the output, and this task alone writes its part.
pub(super) unsafe fn run(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    at: (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    match inputs.isa {
        Cpu::Avx512 if fp16_available() => run_fp16(task, inputs, dst, at, scratch),
        Cpu::Avx512 => run_f32(task, inputs, dst, at, scratch),
        Cpu::Avx2 if avx_vnni_available() => run_avx_vnni(task, inputs, dst, at, scratch),
        Cpu::Avx2 => run_words(task, inputs, dst, at, scratch),
        Cpu::Neon | Cpu::Other => {
            unreachable!("the int8 products run on AVX-512 or AVX2 vectors only")
        }
    }
}

/// Whether the 256-bit products run on AVX-VNNI's `vpdpbusd` (else on `vpmaddwd`, [`words`]):
/// where the CPU has it and `MBPIPE_VNNI=0` does not turn VNNI off.
pub(super) fn avx_vnni_available() -> bool {
    is_x86_feature_detected!("avxvnni") && crate::overrides::Overrides::get().vnni
}

/// Whether PV runs in fp16 ([`Fp16Values`]): AVX512-FP16 (Sapphire Rapids and later).
pub(super) fn fp16_available() -> bool {
    is_x86_feature_detected!("avx512fp16") && is_x86_feature_detected!("avx512vl")
}

/// [`run`] on AVX-512 with PV in f32 (CPUs without AVX512-FP16: Ice Lake, Cascade Lake; the
/// tests run it on the others too).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn run_f32(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    at: (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    run_on::<Avx512, false, PV_F32>(task, inputs, dst, at, scratch)
}

/// [`run`] on AVX-512 with PV in fp16 where the head's values allow it.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512fp16,avx512vl,avx2,fma")]
unsafe fn run_fp16(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    at: (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    run_on::<Avx512, false, PV_FP16>(task, inputs, dst, at, scratch)
}

/// [`run`] on AVX2 with AVX-VNNI's 256-bit `vpdpbusd` (CPUs with AVX-VNNI but no AVX-512), PV
/// on its `vpdpwssd` ([`words_values`]; in f32 where a value is not finite).
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn run_avx_vnni(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    at: (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    run_on::<Avx2, false, PV_DOT_WORDS>(task, inputs, dst, at, scratch)
}

/// [`run`] on AVX2 alone: QKᵀ on `vpmaddwd` ([`words`]), PV too ([`words_values`]; in f32
/// where a value is not finite).
#[target_feature(enable = "avx2,fma")]
unsafe fn run_words(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    at: (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    run_on::<Avx2, true, PV_WORDS>(task, inputs, dst, at, scratch)
}

/// What [`run_on`] runs PV on where the head's values allow it (else in f32): f32,
const PV_F32: u8 = 0;
/// fp16 (AVX-512 only),
const PV_FP16: u8 = 1;
/// 16-bit integers on `vpmaddwd` (256-bit only),
const PV_WORDS: u8 = 2;
/// 16-bit integers on AVX-VNNI's `vpdpwssd` (256-bit only).
const PV_DOT_WORDS: u8 = 3;

/// `WORDS`: QKᵀ on `vpmaddwd` ([`words`], 256-bit only), else on `vpdpbusd`. `PV`: one of the
/// `PV_*` above.
#[inline(always)]
unsafe fn run_on<S: ByteDot, const WORDS: bool, const PV: u8>(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    (kind, shape): (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    assert!(shape.head_dim.is_multiple_of(simd::HEAD_DIM_STEP));
    assert_eq!(simd::key_step::<S>(), S::KEYS);
    gather::<S, WORDS>(task, inputs, shape, scratch);
    let Scratch {
        q8,
        q_scales,
        q_offsets,
        q_words,
        k8,
        k_scales,
        v,
        v16,
        v_words,
        scores,
        ..
    } = scratch;
    let products = Int8Scores::<S, WORDS> {
        q8,
        q_scales,
        q_offsets,
        q_words,
        k8,
        k_scales,
        head_dim: shape.head_dim,
        isa: PhantomData,
    };
    let head_dim = shape.head_dim;
    let at = (kind, shape);
    match PV {
        PV_FP16 if to_fp16(v, head_dim, v16) => {
            let values = Fp16Values { v16, head_dim };
            attend_blocks::<S>(task, (&products, &values), scores, dst, at)
        }
        PV_WORDS if v_words.round(v, head_dim) => {
            let values = words_values::WordValues::<false> {
                values: v_words,
                head_dim,
            };
            attend_blocks::<S>(task, (&products, &values), scores, dst, at)
        }
        PV_DOT_WORDS if v_words.round(v, head_dim) => {
            let values = words_values::WordValues::<true> {
                values: v_words,
                head_dim,
            };
            attend_blocks::<S>(task, (&products, &values), scores, dst, at)
        }
        _ => {
            let values = simd::F32Values::<S> {
                v,
                head_dim,
                layout: simd::ValueLayout::Rows,
                isa: PhantomData,
            };
            attend_blocks::<S>(task, (&products, &values), scores, dst, at)
        }
    }
}

/// The head's blocks of queries, each on `products` and `values`.
#[inline(always)]
unsafe fn attend_blocks<S: Isa>(
    task: &HeadTask,
    (products, values): (&impl QueryKeyScores, &impl simd::WeightedValues),
    scores: &mut Vec<f32>,
    dst: &SharedOut,
    (kind, shape): (AttentionKind, Shape),
) {
    for block in task.blocks(QUERY_BLOCK) {
        block.attend_simd::<S, _>(products, values, scores, dst, kind, shape);
    }
}

/// Rotates the head's Q and K rows, rounds Q, copies V, then rounds K about its mean into the
/// panels; the padding keys of the last panel get scale 0.
#[inline(always)]
unsafe fn gather<S: ByteDot, const WORDS: bool>(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    shape: Shape,
    scratch: &mut Scratch,
) {
    let head_dim = shape.head_dim;
    let len = task.seq.len();
    let padded = len.next_multiple_of(S::KEYS);
    scratch.q8.resize(len * head_dim, 0);
    scratch.q_scales.resize(len, 0.0);
    scratch.q_offsets.resize(len, 0);
    if WORDS {
        scratch.q_words.resize(len * head_dim / 2, 0);
    }
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
        q_words,
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
        let values = task.rotate_row::<S>(inputs, shape, task.seq.start + j, q_row, k_row);
        let (scale, sum) = round_row::<S>(q_row, None, q8_row.as_mut_ptr());
        q_scales[j] = scale;
        q_offsets[j] = 128 * sum;
        if WORDS {
            words::place_query(q8_row, &mut q_words[j * head_dim / 2..][..head_dim / 2]);
        }
        simd::copy_row(values, v_row);
    }
    mean_row::<S>(k, head_dim, k_mean);
    for (j, k_row) in k.chunks_exact(head_dim).enumerate() {
        let (scale, _) = round_row::<S>(k_row, Some(k_mean), k_row8.as_mut_ptr());
        k_scales[j] = scale;
        place_key::<S>(k8, j, k_row8);
    }
    // The padding keys of the last panel: zero keys of scale 0, so their scores are 0 (the
    // softmax masks them) rather than a former head's.
    k_row8.fill(0);
    k_scales[len..].fill(0.0);
    for j in len..padded {
        place_key::<S>(k8, j, k_row8);
    }
}

/// `mean = Σ rows / count` over the `[count, width]` matrix `rows` (one row at a time, in
/// order, then one division per column: the same values on every vector width).
#[inline(always)]
unsafe fn mean_row<S: Isa>(rows: &[f32], width: usize, mean: &mut [f32]) {
    assert!(width.is_multiple_of(S::LANES) && mean.len() == width && !rows.is_empty());
    let (m, count) = (mean.as_mut_ptr(), rows.len() / width);
    for c in (0..width).step_by(S::LANES) {
        let mut sum = S::zero();
        for row in rows.chunks_exact(width) {
            sum = S::add(sum, S::load(row.as_ptr().add(c)));
        }
        S::store(m.add(c), sum);
    }
    for m in mean.iter_mut() {
        *m /= count as f32;
    }
}

/// Rounds `x - shift` (`shift` 0 where `None`) to `out`: `x - shift ≈ scale · out` with
/// `scale = max |x - shift| / 127` (0 for a zero row, whose bytes are 0); returns the scale and
/// the bytes' sum. The same rounding as the linear layers' `int8_gemm::quantize_row`, but
/// inlined with the shift and the sum in its passes: that AVX2 function, called per row here
/// with a separate subtraction and sum, made the attention 9-15% slower.
#[inline(always)]
unsafe fn round_row<S: ByteDot>(x: &[f32], shift: Option<&[f32]>, out: *mut i8) -> (f32, i32) {
    let n = x.len();
    assert!(n.is_multiple_of(16) && shift.is_none_or(|s| s.len() == n));
    let (max, finite) = magnitude::<S>(x, shift);
    if max == 0.0 || !finite {
        // A zero row rounds to zeros; a row with inf or NaN to zeros with a NaN scale, so its
        // scores are NaN as in f32.
        std::ptr::write_bytes(out, 0, n);
        return (if finite { 0.0 } else { f32::NAN }, 0);
    }
    (max / 127.0, S::round_into(x, shift, 127.0 / max, out))
}

/// `max |x - shift|` (`shift` 0 where `None`; the length a multiple of the lanes) and whether
/// every value is finite.
#[inline(always)]
unsafe fn magnitude<S: Isa>(x: &[f32], shift: Option<&[f32]>) -> (f32, bool) {
    let (mut max, mut poison) = (S::zero(), S::zero());
    for c in (0..x.len()).step_by(S::LANES) {
        let v = shifted::<S>(x, shift, c);
        max = S::max(max, S::abs(v));
        // 0 · v is NaN for an inf or NaN (which `vmaxps` may drop).
        poison = S::add(poison, S::mul(v, S::zero()));
    }
    (S::reduce_max(max), S::reduce_add(poison) == 0.0)
}

/// `x[c..c + lanes] - shift[c..c + lanes]` (`shift` 0 where `None`).
#[inline(always)]
unsafe fn shifted<S: Isa>(x: &[f32], shift: Option<&[f32]>, c: usize) -> S::V {
    let v = S::load(x.as_ptr().add(c));
    shift.map_or(v, |s| S::sub(v, S::load(s.as_ptr().add(c))))
}

/// Key `j`'s rounded row, plus 128, into its panel: dimensions `4g..4g + 4` (one 32-bit word)
/// at lane `j % lanes` of vector `(j % KEYS) / lanes` of group `g`.
#[inline(always)]
fn place_key<S: ByteDot>(k8: &mut [u8], j: usize, rounded: &[i8]) {
    let (head_dim, keys, lanes) = (rounded.len(), S::KEYS, S::LANES);
    let panel = &mut k8[j / keys * keys * head_dim..][..keys * head_dim];
    let lane = (j % keys) / lanes * 4 * lanes + (j % lanes) * 4;
    for (g, dims) in rounded.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([dims[0], dims[1], dims[2], dims[3]].map(|x| x as u8));
        // Adding 128 to each signed byte flips its top bit.
        let at = g * 4 * keys + lane;
        panel[at..at + 4].copy_from_slice(&(word ^ 0x8080_8080).to_le_bytes());
    }
}

/// The head's rounded Q and K (see [`Scratch`]), in `S`'s panels; `WORDS`: the products on
/// `vpmaddwd` ([`words`]: 256-bit, from `q_words`), else on `vpdpbusd` (from `q8`).
struct Int8Scores<'a, S, const WORDS: bool> {
    q8: &'a [i8],
    q_scales: &'a [f32],
    q_offsets: &'a [i32],
    q_words: &'a [i32],
    k8: &'a [u8],
    k_scales: &'a [f32],
    head_dim: usize,
    isa: PhantomData<S>,
}

impl<S: ByteDot, const WORDS: bool> QueryKeyScores for Int8Scores<'_, S, WORDS> {
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
        assert!((1..=simd::MAX_ROWS).contains(&rows) && first + rows <= self.q_scales.len());
        assert!(keys.start.is_multiple_of(S::KEYS) && base.is_multiple_of(S::KEYS));
        assert!(keys.end <= stride && stride.is_multiple_of(S::KEYS));
        assert!(
            base + stride <= self.k_scales.len() && self.k8.len() >= self.k_scales.len() * head_dim
        );
        assert!(self.q8.len() >= (first + rows) * head_dim && scores.len() >= (r0 + rows) * stride);
        assert!(!WORDS || (S::LANES == 8 && self.q_words.len() >= (first + rows) * head_dim / 2));
        let mut r = 0;
        while r < rows {
            let n = if WORDS { words::ROWS } else { S::ROWS }.min(rows - r);
            let q = first + r;
            let row_scales = (
                self.q_scales.as_ptr().add(q),
                self.q_offsets.as_ptr().add(q),
            );
            let keys_at = (
                self.k8.as_ptr().add(base * head_dim),
                self.k_scales.as_ptr().add(base),
                head_dim,
            );
            let out = (scores.as_mut_ptr().add((r0 + r) * stride), stride);
            if WORDS {
                let queries = (self.q_words.as_ptr().add(q * head_dim / 2), row_scales);
                words::scores_rows(n, queries, keys_at, out, keys.clone());
            } else {
                let queries = (self.q8.as_ptr().add(q * head_dim), row_scales);
                scores_rows::<S>(n, queries, keys_at, out, keys.clone());
            }
            r += n;
        }
    }
}

/// The integer side of a score tile on one vector width: `vpdpbusd` and the arithmetic
/// around it, so that [`scores_tile`] is written once.
pub(super) trait IntVectors: simd::Tiles {
    type I: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn load_i(p: *const u8) -> Self::I;
    unsafe fn splat_i(x: i32) -> Self::I;
    /// `acc + Σ` of four unsigned (`keys`) × signed (`query`) byte products per lane.
    unsafe fn dot(acc: Self::I, keys: Self::I, query: Self::I) -> Self::I;
    unsafe fn sub_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn to_float(x: Self::I) -> Self::V;
}

/// [`IntVectors`] for `$isa` from its intrinsics.
macro_rules! int_vectors {
    ($isa:ty, $int:ty, $zero:ident, $load:ident, $splat:ident, $dot:ident, $sub:ident, $cvt:ident) => {
        impl IntVectors for $isa {
            type I = $int;
            #[inline(always)]
            unsafe fn zero_i() -> $int {
                $zero()
            }
            #[inline(always)]
            unsafe fn load_i(p: *const u8) -> $int {
                $load(p.cast())
            }
            #[inline(always)]
            unsafe fn splat_i(x: i32) -> $int {
                $splat(x)
            }
            #[inline(always)]
            unsafe fn dot(acc: $int, keys: $int, query: $int) -> $int {
                $dot(acc, keys, query)
            }
            #[inline(always)]
            unsafe fn sub_i(a: $int, b: $int) -> $int {
                $sub(a, b)
            }
            #[inline(always)]
            unsafe fn to_float(x: $int) -> Self::V {
                $cvt(x)
            }
        }
    };
}

#[rustfmt::skip]
int_vectors!(Avx512, __m512i, _mm512_setzero_si512, _mm512_loadu_si512, _mm512_set1_epi32,
    _mm512_dpbusd_epi32, _mm512_sub_epi32, _mm512_cvtepi32_ps);
#[rustfmt::skip]
int_vectors!(Avx2, __m256i, _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32,
    _mm256_dpbusd_avx_epi32, _mm256_sub_epi32, _mm256_cvtepi32_ps);

/// The scores of `rows` (1..=[`ByteDot::ROWS`]) query rows against the key panels of `cols`
/// (see [`scores_tile`]).
#[inline(always)]
unsafe fn scores_rows<S: ByteDot>(
    rows: usize,
    queries: (*const i8, (*const f32, *const i32)),
    keys: (*const u8, *const f32, usize),
    out: (*mut f32, usize),
    cols: std::ops::Range<usize>,
) {
    debug_assert!((1..=S::ROWS).contains(&rows));
    match rows {
        1 => scores_tile::<S, 1>(queries, keys, out, cols),
        2 => scores_tile::<S, 2>(queries, keys, out, cols),
        3 => scores_tile::<S, 3>(queries, keys, out, cols),
        4 => scores_tile::<S, 4>(queries, keys, out, cols),
        5 => scores_tile::<S, 5>(queries, keys, out, cols),
        6 => scores_tile::<S, 6>(queries, keys, out, cols),
        7 => scores_tile::<S, 7>(queries, keys, out, cols),
        _ => scores_tile::<S, 8>(queries, keys, out, cols),
    }
}

/// `R` query rows × two vectors of keys per register tile: int32 sums over the head, less the
/// rows' offsets, times the key's and the row's scales.
#[inline(always)]
unsafe fn scores_tile<S: ByteDot, const R: usize>(
    (q8, row_scales): (*const i8, (*const f32, *const i32)),
    (k8, k_scales, head_dim): (*const u8, *const f32, usize),
    (out, stride): (*mut f32, usize),
    cols: std::ops::Range<usize>,
) {
    let (lanes, keys) = (S::LANES, S::KEYS);
    let mut j = cols.start;
    while j < cols.end {
        let mut acc = [[S::zero_i(); 2]; R];
        let panel = k8.add(j * head_dim);
        for g in 0..head_dim / 4 {
            let k0 = S::load_i(panel.add(g * 4 * keys));
            let k1 = S::load_i(panel.add(g * 4 * keys + 4 * lanes));
            for (r, a) in acc.iter_mut().enumerate() {
                let q = S::splat_i(q8.add(r * head_dim + 4 * g).cast::<i32>().read_unaligned());
                a[0] = S::dot(a[0], k0, q);
                a[1] = S::dot(a[1], k1, q);
            }
        }
        store_scores::<S, R>(&acc, row_scales, k_scales.add(j), out.add(j), stride);
        j += keys;
    }
}

/// A register tile's int32 sums (`R` query rows × two vectors of keys) as scores into `out`
/// (row stride `stride`): less the rows' offsets, times the keys' scales (`k_scales`, from
/// the tile's first key) and the row's.
#[inline(always)]
unsafe fn store_scores<S: IntVectors, const R: usize>(
    acc: &[[S::I; 2]; R],
    (q_scales, q_offsets): (*const f32, *const i32),
    k_scales: *const f32,
    out: *mut f32,
    stride: usize,
) {
    let lanes = S::LANES;
    let scales = [S::load(k_scales), S::load(k_scales.add(lanes))];
    for (r, a) in acc.iter().enumerate() {
        let offset = S::splat_i(*q_offsets.add(r));
        let q_scale = S::splat(*q_scales.add(r));
        for (c, (&sum, &k_scale)) in a.iter().zip(&scales).enumerate() {
            let exact = S::to_float(S::sub_i(sum, offset));
            let score = S::mul(exact, S::mul(k_scale, q_scale));
            S::store(out.add(r * stride + lanes * c), score);
        }
    }
}

/// QKᵀ on AVX2 without VNNI, on `vpmaddwd` (16-bit pairs, int32 sums). The key panels stay as
/// `vpdpbusd` takes them (each 32-bit lane four dimensions of one key, as the unsigned bytes
/// `k8 + 128`): a mask and a shift split a panel vector into its even and odd bytes as 16-bit
/// words, once per four dimensions for all the tile's rows; Q is stored split the same way
/// ([`Scratch::q_words`]), so a row's step is two broadcasts, four `vpmaddwd` and four
/// `vpaddd` for 64 products, where f32 takes eight FMAs. The int32 sums, and so the scores,
/// are `vpdpbusd`'s bit for bit.
mod words {
    use std::arch::x86_64::*;

    use super::{store_scores, Avx2};

    /// Query rows per register tile: 8 accumulators, 4 split key vectors and 2 broadcasts of
    /// AVX2's 16 registers.
    pub(super) const ROWS: usize = 4;

    /// Rounded row `q8` (length a multiple of 4) as `vpmaddwd`'s 16-bit pairs into `words`
    /// (half its length): per four dimensions, the even two, then the odd two.
    pub(super) fn place_query(q8: &[i8], words: &mut [i32]) {
        let word = |a: i8, b: i8| (a as i16 as u16 as u32 | (b as i16 as u16 as u32) << 16) as i32;
        for (dims, pair) in q8.chunks_exact(4).zip(words.chunks_exact_mut(2)) {
            pair[0] = word(dims[0], dims[2]);
            pair[1] = word(dims[1], dims[3]);
        }
    }

    /// The scores of `rows` (1..=[`ROWS`]) query rows against the key panels of `cols`.
    #[inline(always)]
    pub(super) unsafe fn scores_rows(
        rows: usize,
        queries: (*const i32, (*const f32, *const i32)),
        keys: (*const u8, *const f32, usize),
        out: (*mut f32, usize),
        cols: std::ops::Range<usize>,
    ) {
        debug_assert!((1..=ROWS).contains(&rows));
        match rows {
            1 => tile::<1>(queries, keys, out, cols),
            2 => tile::<2>(queries, keys, out, cols),
            3 => tile::<3>(queries, keys, out, cols),
            _ => tile::<4>(queries, keys, out, cols),
        }
    }

    /// `R` query rows × two vectors of keys per register tile.
    #[inline(always)]
    unsafe fn tile<const R: usize>(
        (q_words, row_scales): (*const i32, (*const f32, *const i32)),
        (k8, k_scales, head_dim): (*const u8, *const f32, usize),
        (out, stride): (*mut f32, usize),
        cols: std::ops::Range<usize>,
    ) {
        const LANES: usize = 8;
        const KEYS: usize = 2 * LANES;
        let low_bytes = _mm256_set1_epi16(0xff);
        let mut j = cols.start;
        while j < cols.end {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            let panel = k8.add(j * head_dim);
            for g in 0..head_dim / 4 {
                let k = [
                    _mm256_loadu_si256(panel.add(g * 4 * KEYS).cast()),
                    _mm256_loadu_si256(panel.add(g * 4 * KEYS + 4 * LANES).cast()),
                ];
                // Unsigned bytes: the even ones by a mask, the odd ones by a logical shift.
                let even = k.map(|v| _mm256_and_si256(v, low_bytes));
                let odd = k.map(|v| _mm256_srli_epi16::<8>(v));
                for (r, a) in acc.iter_mut().enumerate() {
                    let q = q_words.add(r * head_dim / 2 + 2 * g);
                    let (q_even, q_odd) = (_mm256_set1_epi32(*q), _mm256_set1_epi32(*q.add(1)));
                    for (c, a) in a.iter_mut().enumerate() {
                        let pairs = _mm256_add_epi32(
                            _mm256_madd_epi16(even[c], q_even),
                            _mm256_madd_epi16(odd[c], q_odd),
                        );
                        *a = _mm256_add_epi32(*a, pairs);
                    }
                }
            }
            store_scores::<Avx2, R>(&acc, row_scales, k_scales.add(j), out.add(j), stride);
            j += KEYS;
        }
    }
}

/// Keys summed in fp16 before the partial sums go to f32: each lane sums every other key (the
/// layout holds keys in pairs), so with probabilities at most 1 and |v| at most
/// [`FP16_MAX_VALUE`] a lane's partial sum stays within fp16's range (65,504), and its rounding
/// about 2⁻¹¹ of a few dozen terms.
const FP16_KEYS: usize = 64;
/// The largest |v| PV takes in fp16 (32 × 1,024 = 32,768); heads with larger values run in f32.
const FP16_MAX_VALUE: f32 = 1024.0;

/// One pass of a PV that takes keys in pairs, over up to `per_pass` keys of a tile's `keys`.
struct KeyPass {
    /// The pass's first key, a multiple of its vectors' `align`: the probabilities from there
    /// are read as whole vectors (rows are finite and 0 outside their band, and their stride is
    /// a multiple of `align`).
    from: usize,
    /// One past its last key.
    to: usize,
    /// Its pairs of keys from `from`: whole pairs, the extra key's probability 0 (outside the
    /// band, or a zero key past the sequence's end).
    pairs: std::ops::Range<usize>,
    /// Whether it is the tile's first pass (the sums start there) and its last (the rows'
    /// factors apply).
    first: bool,
    last: bool,
}

/// The passes of `keys`, each from a multiple of `align` and over at most `per_pass` keys.
fn key_passes(
    keys: std::ops::Range<usize>,
    align: usize,
    per_pass: usize,
) -> impl Iterator<Item = KeyPass> {
    let mut chunk = keys.start;
    std::iter::from_fn(move || {
        if chunk >= keys.end {
            return None;
        }
        let from = chunk / align * align;
        let to = (from + per_pass).min(keys.end);
        let pass = KeyPass {
            from,
            to,
            pairs: (chunk - from) / 2..(to - from).div_ceil(2),
            first: chunk == keys.start,
            last: to == keys.end,
        };
        chunk = to;
        Some(pass)
    })
}

/// `v` (`[len, head_dim]`) in fp16 bits into `v16` by pairs of keys: for keys `2m`, `2m + 1`,
/// per 16 columns, 32 halves with the two keys' values of each column side by side (a zero key
/// after an odd last one); or `false` (and `v16` unused) when a value is outside
/// ±[`FP16_MAX_VALUE`] or not finite.
#[inline(always)]
unsafe fn to_fp16(v: &[f32], head_dim: usize, v16: &mut Vec<u16>) -> bool {
    assert!(v.len().is_multiple_of(head_dim) && head_dim.is_multiple_of(16));
    let (max, finite) = magnitude::<Avx512>(v, None);
    if max > FP16_MAX_VALUE || !finite {
        return false;
    }
    let len = v.len() / head_dim;
    v16.resize(len.next_multiple_of(2) * head_dim, 0);
    let mut index = [0i16; 32];
    for (i, pair) in index.chunks_exact_mut(2).enumerate() {
        pair[0] = i as i16;
        pair[1] = 16 + i as i16;
    }
    let interleave = _mm512_loadu_si512(index.as_ptr().cast());
    for m in 0..len.div_ceil(2) {
        let (a, b) = (2 * m * head_dim, (2 * m + 1) * head_dim);
        for c in (0..head_dim).step_by(16) {
            let first = _mm512_cvtxps_ph(_mm512_loadu_ps(v.as_ptr().add(a + c)));
            let second = if 2 * m + 1 < len {
                _mm512_cvtxps_ph(_mm512_loadu_ps(v.as_ptr().add(b + c)))
            } else {
                _mm256_setzero_ph()
            };
            let both = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_castph_si256(first)),
                _mm256_castph_si256(second),
            );
            let pairs = _mm512_permutexvar_epi16(interleave, both);
            _mm512_storeu_si512(v16.as_mut_ptr().add(a + 2 * c).cast(), pairs);
        }
    }
    true
}

/// PV in fp16 on AVX512-FP16's `vfmadd231ph` (32 lanes, twice the f32 FMA's multiply-adds):
/// probabilities and V rounded to fp16 (2⁻¹¹), by pairs of keys so that one 32-bit broadcast
/// (a load, no shuffle) feeds 16 columns of two keys; sums in fp16 over [`FP16_KEYS`] keys,
/// then in f32.
struct Fp16Values<'a> {
    v16: &'a [u16],
    head_dim: usize,
}

/// Query rows per register tile: 4 × 4 fp16 partial sums.
const VALUE_ROWS: usize = 4;
/// Keys per pass over a tile's rows (their fp16 probabilities, 8 rows × 128, on the stack).
const VALUE_KEYS: usize = 128;

impl simd::WeightedValues for Fp16Values<'_> {
    #[inline(always)]
    unsafe fn weighted(
        &self,
        p: &[f32],
        p_stride: usize,
        base: usize,
        (out, out_stride): (*mut f32, usize),
        prepared: simd::PreparedRows<'_>,
        tile: Tile,
    ) {
        let scales = prepared.scales;
        let Tile { r0, rows, keys } = tile;
        let head_dim = self.head_dim;
        assert!((1..=simd::ROWS).contains(&rows) && keys.end <= p_stride);
        assert!(p_stride.is_multiple_of(16) && head_dim.is_multiple_of(simd::HEAD_DIM_STEP));
        assert!(base.is_multiple_of(2));
        assert!(self.v16.len() >= (base + keys.end).next_multiple_of(2) * head_dim);
        assert!(p.len() >= (r0 + rows) * p_stride && scales.len() == rows);
        let mut probs = [[0u16; VALUE_KEYS]; simd::ROWS];
        for pass in key_passes(keys, 16, VALUE_KEYS) {
            let KeyPass {
                from,
                to,
                first,
                last,
                ..
            } = pass;
            for (r, row) in probs.iter_mut().enumerate().take(rows) {
                let src = p.as_ptr().add((r0 + r) * p_stride);
                for k in (from..to).step_by(16) {
                    let half = _mm512_cvtxps_ph(_mm512_loadu_ps(src.add(k)));
                    let dst = row.as_mut_ptr().add(k - from);
                    _mm256_storeu_si256(dst.cast(), _mm256_castph_si256(half));
                }
            }
            let mut r = 0;
            while r < rows {
                let n = VALUE_ROWS.min(rows - r);
                let scale = last.then(|| scales[r..].as_ptr());
                let probs = (probs[r..].as_ptr().cast::<u16>(), pass.pairs.clone());
                for c0 in (0..head_dim).step_by(simd::HEAD_DIM_STEP) {
                    let v = (
                        self.v16.as_ptr().add((base + from) * head_dim + 2 * c0),
                        head_dim,
                    );
                    let o = (out.add((r0 + r) * out_stride + c0), out_stride);
                    match n {
                        1 => values_tile_fp16::<1>(probs.clone(), v, o, first, scale),
                        2 => values_tile_fp16::<2>(probs.clone(), v, o, first, scale),
                        3 => values_tile_fp16::<3>(probs.clone(), v, o, first, scale),
                        _ => values_tile_fp16::<4>(probs.clone(), v, o, first, scale),
                    }
                }
                r += n;
            }
        }
    }
}

/// `R` rows × 64 output columns: the pairs of keys `pairs` of the fp16 probabilities (rows
/// [`VALUE_KEYS`] apart) against V's pairs (`2 * head_dim` halves apart, from the
/// probabilities' first key), in fp16 over [`FP16_KEYS`] keys at a time, then added to the f32
/// sums in `out` (which start there unless `first`); `scale` (the rows' factors) multiplies
/// the sums at the end. The f32 sums stay in memory so that the fp16 ones of 4 rows fit in
/// registers.
#[inline(always)]
unsafe fn values_tile_fp16<const R: usize>(
    (p, pairs): (*const u16, std::ops::Range<usize>),
    (v, head_dim): (*const u16, usize),
    (out, out_stride): (*mut f32, usize),
    first: bool,
    scale: Option<*const f32>,
) {
    // Lanes 2i and 2i + 1 of the two f32 halves of a partial sum hold column i's two keys.
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    let mut stored = !first;
    let mut m = pairs.start;
    while m < pairs.end {
        let stop = (m + FP16_KEYS / 2).min(pairs.end);
        let mut part = [[_mm512_setzero_ph(); 4]; R];
        for pair in m..stop {
            let row = v.add(pair * 2 * head_dim);
            let vs: [__m512h; 4] = std::array::from_fn(|c| {
                _mm512_castsi512_ph(_mm512_loadu_si512(row.add(32 * c).cast()))
            });
            for (r, s) in part.iter_mut().enumerate() {
                let w = p
                    .add(r * VALUE_KEYS + 2 * pair)
                    .cast::<i32>()
                    .read_unaligned();
                let w = _mm512_castsi512_ph(_mm512_set1_epi32(w));
                for (x, &y) in s.iter_mut().zip(&vs) {
                    *x = _mm512_fmadd_ph(w, y, *x);
                }
            }
        }
        for (r, s) in part.iter().enumerate() {
            for (c, &half) in s.iter().enumerate() {
                let bits = _mm512_castph_si512(half);
                let lo = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(bits)));
                let hi =
                    _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64::<1>(bits)));
                let sum = _mm512_add_ps(
                    _mm512_permutex2var_ps(lo, even, hi),
                    _mm512_permutex2var_ps(lo, odd, hi),
                );
                let o = out.add(r * out_stride + 16 * c);
                let x = if stored {
                    _mm512_add_ps(_mm512_loadu_ps(o), sum)
                } else {
                    sum
                };
                _mm512_storeu_ps(o, x);
            }
        }
        stored = true;
        m = stop;
    }
    for r in 0..R {
        for c in 0..4 {
            let o = out.add(r * out_stride + 16 * c);
            let x = if stored {
                _mm512_loadu_ps(o)
            } else {
                _mm512_setzero_ps()
            };
            let x = scale.map_or(x, |s| _mm512_mul_ps(x, _mm512_set1_ps(*s.add(r))));
            _mm512_storeu_ps(o, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd::WeightedValues;

    /// Deterministic values in [0, 1): the kernels' shared generator's, moved from [-1, 1)
    /// (exactly: its values are multiples of 2^-23).
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        crate::packed_gemm::test_support::random(n, seed)
            .into_iter()
            .map(|x| (x + 1.0) / 2.0)
            .collect()
    }

    /// PV of `rows` probability rows (stride `stride`, keys `keys`), each scaled by its
    /// `prepared` scale (and with its pass maxima), by two implementations, into
    /// `[rows, head_dim]` buffers of NaNs (inlined into the caller's target features).
    #[inline(always)]
    pub(super) unsafe fn outputs_of(
        values: (&impl WeightedValues, &impl WeightedValues),
        (p, stride): (&[f32], usize),
        head_dim: usize,
        prepared: simd::PreparedRows<'_>,
        keys: std::ops::Range<usize>,
    ) -> (Vec<f32>, Vec<f32>) {
        let rows = prepared.scales.len();
        let mut outs = [
            vec![f32::NAN; rows * head_dim],
            vec![f32::NAN; rows * head_dim],
        ];
        let tile = || Tile {
            r0: 0,
            rows,
            keys: keys.clone(),
        };
        let [a, b] = &mut outs;
        values
            .0
            .weighted(p, stride, 0, (a.as_mut_ptr(), head_dim), prepared, tile());
        values
            .1
            .weighted(p, stride, 0, (b.as_mut_ptr(), head_dim), prepared, tile());
        let [a, b] = outs;
        (a, b)
    }

    /// PV of `rows` probability rows (stride `stride`, keys `keys`) against `v` by both
    /// implementations: (fp16, f32), `[rows, head_dim]` each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512fp16,avx512vl,avx2,fma")]
    unsafe fn both(
        p: &[f32],
        stride: usize,
        v: &[f32],
        head_dim: usize,
        (rows, keys): (usize, std::ops::Range<usize>),
    ) -> (Vec<f32>, Vec<f32>) {
        let mut v16 = Vec::new();
        assert!(to_fp16(v, head_dim, &mut v16));
        let halves = Fp16Values {
            v16: &v16,
            head_dim,
        };
        let floats = simd::F32Values::<Avx512> {
            v,
            head_dim,
            layout: simd::ValueLayout::Rows,
            isa: std::marker::PhantomData,
        };
        let scales = vec![0.5f32; rows];
        outputs_of(
            (&halves, &floats),
            (p, stride),
            head_dim,
            simd::PreparedRows::scaled(&scales),
            keys,
        )
    }

    /// PV in fp16 against PV in f32 on the same probabilities and values: within 2e-3 of the
    /// output's largest value (fp16 rounds p and v to 2⁻¹¹, and each lane's partial sum of 32
    /// products at 2⁻¹¹ of its size; measured 1.0-1.3e-3 on these dense rows of 77-300 keys,
    /// whose partial sums reach the size of the output), over several passes of 128 keys, odd
    /// first and last keys (pairs half outside the band, a zero key past an odd end), 8, 5 and
    /// 3 rows (tiles of 4 and their tails), heads of 64 and 128.
    #[test]
    fn fp16_values_match_f32_values() {
        if !(super::super::int8_dot_available(Cpu::Avx512) && fp16_available()) {
            eprintln!(
                "SKIPPED: PV in fp16 needs AVX512-FP16 beside AVX512-VNNI; this CPU lacks one"
            );
            return;
        }
        let cases: [(usize, usize, usize, std::ops::Range<usize>); 3] = [
            (64, 8, 301, 3..301),
            (128, 5, 77, 0..77),
            (64, 3, 40, 17..33),
        ];
        for (head_dim, rows, len, keys) in cases {
            let stride = len.next_multiple_of(32);
            let mut p = uniform(rows * stride, 1);
            for row in p.chunks_exact_mut(stride) {
                for (j, x) in row.iter_mut().enumerate() {
                    if !keys.contains(&j) {
                        *x = 0.0;
                    }
                }
            }
            let v: Vec<f32> = uniform(len * head_dim, 2)
                .iter()
                .map(|x| 8.0 * x - 4.0)
                .collect();
            // SAFETY: the CPU has the features (checked above).
            let (halves, floats) = unsafe { both(&p, stride, &v, head_dim, (rows, keys.clone())) };
            let largest = floats.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = halves
                .iter()
                .zip(&floats)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("fp16 PV, head {head_dim}, keys {keys:?}: max diff {worst:e} of {largest}");
            assert!(
                worst <= 2e-3 * largest,
                "head {head_dim}, keys {keys:?}: {worst} of {largest}"
            );
        }
    }

    /// A head's rounded Q and K and their scores ([`rounded_scores`]).
    #[derive(Debug, PartialEq)]
    struct Rounded {
        q8: Vec<i8>,
        q_scales: Vec<f32>,
        k8: Vec<i8>,
        k_scales: Vec<f32>,
        /// `[rows, keys padded to the width's panels]`.
        scores: Vec<f32>,
        padded: usize,
    }

    /// Rounds `q` and `k` (`[_, head_dim]`) as [`gather`] does and scores every query row
    /// against every key, in tiles of [`simd::MAX_ROWS`] rows, on `S`'s vectors (`WORDS`: on
    /// `vpmaddwd`).
    #[inline(always)]
    unsafe fn rounded_scores<S: ByteDot, const WORDS: bool>(
        q: &[f32],
        k: &[f32],
        head_dim: usize,
    ) -> Rounded {
        let (rows, len) = (q.len() / head_dim, k.len() / head_dim);
        let padded = len.next_multiple_of(S::KEYS);
        let (mut q8, mut q_scales) = (vec![0i8; q.len()], vec![0f32; rows]);
        let mut q_offsets = vec![0i32; rows];
        let mut q_words = vec![0i32; q.len() / 2];
        for (r, row) in q.chunks_exact(head_dim).enumerate() {
            let (scale, sum) = round_row::<S>(row, None, q8[r * head_dim..].as_mut_ptr());
            (q_scales[r], q_offsets[r]) = (scale, 128 * sum);
            let words = &mut q_words[r * head_dim / 2..][..head_dim / 2];
            words::place_query(&q8[r * head_dim..][..head_dim], words);
        }
        let mut mean = vec![0f32; head_dim];
        mean_row::<S>(k, head_dim, &mut mean);
        let (mut k8, mut k_scales) = (vec![0i8; k.len()], vec![0f32; padded]);
        let mut panels = vec![0u8; padded * head_dim];
        for (j, row) in k.chunks_exact(head_dim).enumerate() {
            let at = j * head_dim;
            (k_scales[j], _) = round_row::<S>(row, Some(&mean), k8[at..].as_mut_ptr());
            place_key::<S>(&mut panels, j, &k8[at..at + head_dim]);
        }
        for j in len..padded {
            place_key::<S>(&mut panels, j, &vec![0i8; head_dim]);
        }
        let products = Int8Scores::<S, WORDS> {
            q8: &q8,
            q_scales: &q_scales,
            q_offsets: &q_offsets,
            q_words: &q_words,
            k8: &panels,
            k_scales: &k_scales,
            head_dim,
            isa: PhantomData,
        };
        let mut scores = vec![f32::NAN; rows * padded];
        for r0 in (0..rows).step_by(simd::MAX_ROWS) {
            let tile = Tile {
                r0,
                rows: simd::MAX_ROWS.min(rows - r0),
                keys: 0..padded,
            };
            products.scores(0, 0, &mut scores, padded, tile);
        }
        Rounded {
            q8,
            q_scales,
            k8,
            k_scales,
            scores,
            padded,
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn rounded_scores_512(q: &[f32], k: &[f32], head_dim: usize) -> Rounded {
        rounded_scores::<Avx512, false>(q, k, head_dim)
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn rounded_scores_256(q: &[f32], k: &[f32], head_dim: usize) -> Rounded {
        rounded_scores::<Avx2, false>(q, k, head_dim)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rounded_scores_words(q: &[f32], k: &[f32], head_dim: usize) -> Rounded {
        rounded_scores::<Avx2, true>(q, k, head_dim)
    }

    /// On each width and instruction this CPU runs (512-bit and 256-bit `vpdpbusd`, 256-bit
    /// `vpmaddwd`): Q rounded per row and K per key about the mean key give the scalar
    /// rounding's bytes and scales (to nearest, even on ties), and every score is the exact
    /// integer product times the two scales, bit for bit (the padding keys' 0); so all of them
    /// give the same scores. 13 query rows (every register tile and a tail), 37 keys (a
    /// part-filled last panel on both widths), a shared key bias, an all-zero query row and a
    /// row that rounds a value exactly half a step, a query row at -127 throughout and a key
    /// near ±127 throughout (the stored bytes' extremes, 1 and 255).
    #[test]
    fn both_widths_round_and_score_as_the_scalar_products() {
        let head_dim = 64;
        let (rows, len) = (13, 37);
        let mut q: Vec<f32> = uniform(rows * head_dim, 3)
            .iter()
            .map(|x| 6.0 * x - 3.0)
            .collect();
        let mut k: Vec<f32> = uniform(len * head_dim, 4)
            .iter()
            .map(|x| 2.0 * x + 1.5)
            .collect();
        for (d, x) in k[11 * head_dim..12 * head_dim].iter_mut().enumerate() {
            *x = if d % 3 == 0 { 100.0 } else { -100.0 };
        }
        q[2 * head_dim..3 * head_dim].fill(0.0);
        q[7 * head_dim..8 * head_dim].fill(-3.0);
        q[5 * head_dim] = 127.0;
        q[5 * head_dim + 1] = 0.5;
        // The scalar rounding: `x - shift` times `127 / max`, to nearest even.
        let round = |x: &[f32], shift: &[f32]| -> (Vec<i8>, f32) {
            let d: Vec<f32> = x.iter().zip(shift).map(|(a, b)| a - b).collect();
            let max = d.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max == 0.0 {
                return (vec![0; d.len()], 0.0);
            }
            let bytes = d
                .iter()
                .map(|v| (v * (127.0 / max)).round_ties_even() as i8);
            (bytes.collect(), max / 127.0)
        };
        let mut mean = vec![0f32; head_dim];
        for row in k.chunks_exact(head_dim) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= len as f32);
        let zero = vec![0f32; head_dim];
        let (qs, ks): (Vec<_>, Vec<_>) = (
            q.chunks_exact(head_dim).map(|r| round(r, &zero)).collect(),
            k.chunks_exact(head_dim).map(|r| round(r, &mean)).collect(),
        );
        assert_eq!(&qs[5].0[..2], &[127, 0], "ties to even");
        assert!(qs[7].0.iter().all(|&b| b == -127));
        assert!(
            ks[11].0.iter().all(|&b| b.unsigned_abs() >= 120),
            "{:?}",
            ks[11].0
        );
        let mut runs = Vec::new();
        if super::super::int8_dot_available(Cpu::Avx512) {
            // SAFETY: the CPU has the features (checked).
            runs.push(("512-bit", unsafe { rounded_scores_512(&q, &k, head_dim) }));
        } else {
            eprintln!("SKIPPED (part): 512-bit: this CPU has no AVX512-VNNI");
        }
        if super::super::int8_dot_available(Cpu::Avx2) && is_x86_feature_detected!("avxvnni") {
            // SAFETY: the CPU has the features (checked).
            runs.push(("256-bit", unsafe { rounded_scores_256(&q, &k, head_dim) }));
        } else {
            eprintln!("SKIPPED (part): 256-bit vpdpbusd: this CPU has no AVX-VNNI");
        }
        if super::super::int8_dot_available(Cpu::Avx2) {
            // SAFETY: the CPU has the features (checked).
            runs.push(("256-bit vpmaddwd", unsafe {
                rounded_scores_words(&q, &k, head_dim)
            }));
        } else {
            eprintln!("SKIPPED (part): 256-bit vpmaddwd: this CPU has no AVX2 and FMA");
        }
        for (width, got) in &runs {
            let q8: Vec<i8> = qs.iter().flat_map(|(b, _)| b.clone()).collect();
            let k8: Vec<i8> = ks.iter().flat_map(|(b, _)| b.clone()).collect();
            assert_eq!(got.q8, q8, "{width}: Q's bytes");
            assert_eq!(got.k8, k8, "{width}: K's bytes");
            assert!(
                qs.iter().zip(&got.q_scales).all(|((_, s), g)| s == g),
                "{width}"
            );
            assert!(
                ks.iter().zip(&got.k_scales).all(|((_, s), g)| s == g),
                "{width}"
            );
            for (r, (qb, qscale)) in qs.iter().enumerate() {
                for j in 0..got.padded {
                    let want = ks.get(j).map_or(0.0, |(kb, kscale)| {
                        let dot: i32 = qb.iter().zip(kb).map(|(&a, &b)| a as i32 * b as i32).sum();
                        dot as f32 * (kscale * qscale)
                    });
                    let score = got.scores[r * got.padded + j];
                    assert_eq!(score.to_bits(), want.to_bits(), "{width} [{r}, {j}]");
                }
            }
        }
        let cut = |x: &Rounded| -> Vec<f32> {
            x.scores
                .chunks_exact(x.padded)
                .flat_map(|r| r[..len].to_vec())
                .collect()
        };
        for pair in runs.windows(2) {
            let [(a, first), (b, second)] = pair else {
                unreachable!()
            };
            assert_eq!(cut(first), cut(second), "{a} and {b}: scores");
        }
    }

    /// Values beyond ±1,024, or not finite, keep PV in f32 (an fp16 partial sum could overflow).
    #[test]
    fn values_outside_the_fp16_range_stay_f32() {
        if !(super::super::int8_dot_available(Cpu::Avx512) && fp16_available()) {
            eprintln!(
                "SKIPPED: PV in fp16 needs AVX512-FP16 beside AVX512-VNNI; this CPU lacks one"
            );
            return;
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512fp16,avx512vl")]
        unsafe fn takes(v: &[f32]) -> bool {
            to_fp16(v, 16, &mut Vec::new())
        }
        let mut v = vec![1000f32; 48];
        // SAFETY: the CPU has the features (checked above).
        unsafe {
            assert!(takes(&v));
            for bad in [-2000.0, f32::INFINITY, f32::NAN] {
                v[37] = bad;
                assert!(!takes(&v), "{bad}");
            }
        }
    }
}
