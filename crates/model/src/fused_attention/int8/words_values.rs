//! PV on 256-bit integer multiply-adds for the int8 attention on CPUs without AVX-512
//! ([`WordValues`]): the probabilities and V rounded to 16-bit integers, summed exactly in 32
//! bits, on AVX2's `vpmaddwd` and `vpaddd`, or AVX-VNNI's `vpdpwssd`, which does both in one.
//!
//! In f32, PV was 44% of that attention's time on long documents (its QKᵀ, already on
//! `vpmaddwd`, 27%): one FMA multiplies 8 pairs where one `vpmaddwd` multiplies 16, and on Zen 3
//! a `vpmaddwd` with its `vpaddd` issues as often as an FMA. On AVX-VNNI (Alder Lake and later
//! cores without AVX-512), `vpdpwssd` issues as often as an FMA too, without the add; no such CPU
//! has measured it yet (`scripts/check-avx512.sh`'s emulated Sapphire Rapids checks its values).
//!
//! The rounding keeps far more than int8's 8 bits, which would lose the small probabilities of a
//! diffuse softmax:
//! - V per column over the sequence, to ±[`V_LEVELS`] (11 bits and a sign): `v ≈ s_v · v16`.
//! - The probabilities per row and per pass of up to [`WORD_KEYS`] keys, each pass scaled by its
//!   own largest probability to [`P_LEVELS`] (13 bits): a pass far from the row's largest score
//!   keeps its resolution. `p ≈ f · p16`, `f` per row and pass. Only in the pass holding a
//!   row's largest probability do many small ones round coarsely (to 1/8191 of it), and a
//!   pass holds at most 128 of them.
//!
//! The probabilities are made and rounded in one pass over the scores ([`round_exponentials`]):
//! `p16 = round(P_LEVELS · 2^((s - m) log₂e))`, `m` the pass's largest score, and `f =
//! e^(m - row max)`. A pass's sums are exact in i32 (`WORD_KEYS · P_LEVELS · V_LEVELS < 2³¹`),
//! then go to f32 times `f`; the row's `1 / Σ f · p16` (the rounded probabilities' own sum) and
//! the column's `s_v` multiply at the end.

use std::arch::x86_64::*;

use super::super::simd::{self, Isa, Tile, WeightedValues};
use super::key_passes;
use crate::simd::Avx2;

/// The largest rounded |v| (11 bits).
const V_LEVELS: f32 = 2047.0;
/// The largest rounded probability of a pass (13 bits).
const P_LEVELS: f32 = 8191.0;
/// Keys per pass: their rounded values (16 KiB at head size 64) stay in L1 while a tile's rows
/// pass, and a pass's i32 sums cannot overflow. Against 256 keys with 12-bit probabilities,
/// global layers 3-4% faster (`attention_bench`, Zen 3, 2026-12-06).
const WORD_KEYS: usize = 128;
const _: () = assert!(WORD_KEYS as i64 * P_LEVELS as i64 * V_LEVELS as i64 <= i32::MAX as i64);
/// Query rows per register tile: 6 × 2 accumulators, two vectors of V and a broadcast fit
/// AVX2's 16 registers.
const VALUE_ROWS: usize = 6;
/// Columns per register tile: two vectors.
const VALUE_COLUMNS: usize = 16;

/// V rounded for [`WordValues`].
#[derive(Default)]
pub(in super::super) struct RoundedValues {
    /// Per pair of keys `2m`, `2m + 1` (a zero key after an odd last one), per column, the two
    /// keys' rounded values side by side: one 32-bit word, as `vpmaddwd` multiplies them
    /// against a broadcast pair of probabilities.
    words: Vec<i16>,
    /// Per column: `s_v`.
    scales: Vec<f32>,
    /// Per column: `1 / s_v` (0 for an all-zero column), while rounding.
    inverse: Vec<f32>,
}

impl RoundedValues {
    /// Rounds `v` (`[len, head_dim]`, `head_dim` a multiple of 16) per column; `false` where a
    /// value is not finite (PV then runs in f32, whose sums carry the inf or NaN).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    pub(in super::super) unsafe fn round(&mut self, v: &[f32], head_dim: usize) -> bool {
        assert!(head_dim.is_multiple_of(VALUE_COLUMNS) && v.len().is_multiple_of(head_dim));
        let len = v.len() / head_dim;
        // Each column's largest magnitude, and 0 · v (NaN for an inf or NaN) summed.
        self.scales.clear();
        self.scales.resize(head_dim, 0.0);
        let (mut poison, sign) = (_mm256_setzero_ps(), _mm256_set1_ps(-0.0));
        let max = self.scales.as_mut_ptr();
        for row in v.chunks_exact(head_dim) {
            for c in (0..head_dim).step_by(8) {
                let x = _mm256_loadu_ps(row.as_ptr().add(c));
                poison = _mm256_add_ps(poison, _mm256_mul_ps(x, _mm256_setzero_ps()));
                let m = _mm256_max_ps(_mm256_loadu_ps(max.add(c)), _mm256_andnot_ps(sign, x));
                _mm256_storeu_ps(max.add(c), m);
            }
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), poison);
        if lanes.iter().sum::<f32>() != 0.0 {
            return false;
        }
        // The factors that round each column (0 for an all-zero one), then its scale.
        self.inverse.clear();
        self.inverse.resize(head_dim, 0.0);
        for (s, i) in self.scales.iter_mut().zip(&mut self.inverse) {
            if *s > 0.0 {
                *i = V_LEVELS / *s;
                *s /= V_LEVELS;
            }
        }
        // Every word is written below: grown, not cleared (as the probabilities in `weighted`).
        self.words.resize(len.next_multiple_of(2) * head_dim, 0);
        let low = _mm256_set1_epi32(0xffff);
        for m in 0..len.div_ceil(2) {
            let (a, b) = (2 * m * head_dim, (2 * m + 1) * head_dim);
            for c in (0..head_dim).step_by(8) {
                let f = _mm256_loadu_ps(self.inverse.as_ptr().add(c));
                let first =
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v.as_ptr().add(a + c)), f));
                let second = match 2 * m + 1 < len {
                    true => {
                        _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v.as_ptr().add(b + c)), f))
                    }
                    false => _mm256_setzero_si256(),
                };
                // Lane i: the first key's value in the low half, the second's in the high.
                let pairs = _mm256_or_si256(
                    _mm256_and_si256(first, low),
                    _mm256_slli_epi32::<16>(second),
                );
                _mm256_storeu_si256(self.words.as_mut_ptr().add(a + 2 * c).cast(), pairs);
            }
        }
        true
    }
}

/// PV from [`RoundedValues`] (see the module's comment): on `vpmaddwd` and `vpaddd`, or with
/// `VNNI` on AVX-VNNI's `vpdpwssd` (the caller's target features include `avxvnni` then).
pub(in super::super) struct WordValues<'a, const VNNI: bool> {
    pub values: &'a RoundedValues,
    pub head_dim: usize,
}

impl<const VNNI: bool> WeightedValues for WordValues<'_, VNNI> {
    const PASS_KEYS: usize = WORD_KEYS;

    fn tile_rows(&self) -> usize {
        simd::MAX_ROWS
    }

    /// The rows stay scores (-inf outside the band), the scale is the row's largest, and each
    /// pass's largest is found here too ([`band_max`]): each pass turns its scores into
    /// probabilities as it rounds them ([`round_exponentials`]). Exponentials stored as f32,
    /// then read again for each pass's largest and once more to round, were a fifth of this
    /// attention's time on long documents; each pass's own search for its largest, 5% of it
    /// (`attention_bench 1700 2 6 2`, one thread, Zen 3).
    #[inline(always)]
    unsafe fn prepare_row<S: simd::Isa>(
        &self,
        row: &mut [f32],
        (lo, hi): (usize, usize),
        tile_keys: std::ops::Range<usize>,
        pass_maxima: &mut [f32],
    ) -> f32 {
        band_max(row, lo..hi, tile_keys, pass_maxima)
    }

    #[inline(always)]
    unsafe fn weighted(
        &self,
        scores: &[f32],
        stride: usize,
        base: usize,
        (out, out_stride): (*mut f32, usize),
        prepared: simd::PreparedRows<'_>,
        tile: Tile,
    ) {
        let simd::PreparedRows {
            scales: row_maxima,
            pass_maxima,
            passes,
        } = prepared;
        let Tile { r0, rows, keys } = tile;
        let head_dim = self.head_dim;
        let RoundedValues {
            words,
            scales: column_scales,
            ..
        } = self.values;
        assert!((1..=simd::MAX_ROWS).contains(&rows) && keys.end <= stride);
        assert!(stride.is_multiple_of(8) && head_dim.is_multiple_of(VALUE_COLUMNS));
        assert!(base.is_multiple_of(2) && column_scales.len() == head_dim);
        assert!(words.len() >= (base + keys.end).next_multiple_of(2) * head_dim);
        assert!(scores.len() >= (r0 + rows) * stride && row_maxima.len() == rows);
        assert!(pass_maxima.len() == rows * passes);
        assert!(key_passes(keys.clone(), 8, WORD_KEYS).count() <= passes);
        // Left unset: each pass writes the rows and keys its products read. Zeroing it per tile,
        // and V's words per head, took 2% of the attention's samples on short texts
        // (`attention_bench 96 64`: `memset` 4.2% → 2.6% of all samples).
        let mut probs = std::mem::MaybeUninit::<[[i16; WORD_KEYS]; simd::MAX_ROWS]>::uninit();
        let probs = probs.as_mut_ptr().cast::<i16>();
        // Per row: the pass's factor, and the sum of the passes' rounded probabilities times
        // their factors (the last pass applies its inverse).
        let mut factors = [0f32; simd::MAX_ROWS];
        let mut sums = [0f32; simd::MAX_ROWS];
        for (j, pass) in key_passes(keys, 8, WORD_KEYS).enumerate() {
            let from = pass.from;
            for r in 0..rows {
                let row = scores.as_ptr().add((r0 + r) * stride + from);
                let (factor, sum) = round_exponentials(
                    (row, pass.to - from),
                    (row_maxima[r], pass_maxima[r * passes + j]),
                    probs.add(r * WORD_KEYS),
                );
                factors[r] = factor;
                sums[r] += factor * sum as f32;
            }
            if pass.last {
                for sum in &mut sums[..rows] {
                    *sum = 1.0 / *sum;
                }
            }
            let mut r = 0;
            while r < rows {
                let n = VALUE_ROWS.min(rows - r);
                let ends = Ends {
                    first: pass.first,
                    last: pass.last.then(|| sums[r..].as_ptr()),
                };
                for c0 in (0..head_dim).step_by(VALUE_COLUMNS) {
                    let probs = (probs.add(r * WORD_KEYS).cast_const(), &factors[r..]);
                    let v = (
                        words.as_ptr().add((base + from) * head_dim + 2 * c0),
                        head_dim,
                        column_scales.as_ptr().add(c0),
                    );
                    let o = (out.add((r0 + r) * out_stride + c0), out_stride);
                    let pairs = pass.pairs.clone();
                    match n {
                        1 => values_tile::<1, VNNI>(probs, pairs, v, o, &ends),
                        2 => values_tile::<2, VNNI>(probs, pairs, v, o, &ends),
                        3 => values_tile::<3, VNNI>(probs, pairs, v, o, &ends),
                        4 => values_tile::<4, VNNI>(probs, pairs, v, o, &ends),
                        5 => values_tile::<5, VNNI>(probs, pairs, v, o, &ends),
                        _ => values_tile::<6, VNNI>(probs, pairs, v, o, &ends),
                    }
                }
                r += n;
            }
        }
    }
}

/// `P_LEVELS · 2^x` for `x <= 0` (NaN stays NaN), to well within the rounding that follows:
/// `2^x = 2^n · 2^f`, `n` the nearest integer, `2^f` for `|f| <= 1/2` by a degree-4 polynomial
/// fitted to its relative error (2.6e-6, 0.02 of a level; `exp_nonpositive`'s degree 6 and
/// two-part reduction were twice the work here). Below 2^-30, where a level is 7.6e-6 of it,
/// it is `P_LEVELS · 2^-30`, which rounds to 0.
#[inline(always)]
unsafe fn levels_exp2(x: __m256) -> __m256 {
    // `max(c, x)` is x where x is NaN.
    let x = _mm256_max_ps(_mm256_set1_ps(-30.0), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm256_sub_ps(x, n);
    let mut p = _mm256_set1_ps(EXP2_POLY[0] * P_LEVELS);
    for &c in &EXP2_POLY[1..] {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c * P_LEVELS));
    }
    // Times 2^n, added to the exponent bits (p is a normal number well above 2^-96).
    _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_castps_si256(p),
        _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n)),
    ))
}

/// `2^f` on `[-1/2, 1/2]`, highest degree first: least relative error, by Lawson's
/// iteration on a grid of 20,001 points (`python`: numpy `lstsq` with weights).
const EXP2_POLY: [f32; 5] = [
    0.009_570_069,
    0.055_917_81,
    0.240_247_45,
    0.693_121_8,
    0.999_999_3,
];

/// [`WordValues`]' part of the softmax before PV: every entry of `row` outside `band`
/// becomes -inf (its probability then rounds to 0 in whichever pass reads it), and
/// `pass_maxima[j]` the band's largest score in PV's pass `j` of the tile (keys `tile_keys`,
/// passes of [`WORD_KEYS`] from the multiple of 8 at or before its first: [`key_passes`]),
/// -inf where the pass holds none of the band. Returns the band's largest score, NaN where one
/// is NaN or +inf or every one is -inf (the row's outputs are NaN then, as in f32).
#[inline(always)]
unsafe fn band_max(
    row: &mut [f32],
    band: std::ops::Range<usize>,
    tile_keys: std::ops::Range<usize>,
    pass_maxima: &mut [f32],
) -> f32 {
    let (lo, hi) = (band.start, band.end);
    let grid = tile_keys.start / 8 * 8;
    assert!(lo < hi && hi <= row.len() && row.len().is_multiple_of(8));
    assert!(grid <= lo && hi <= tile_keys.end);
    assert!(pass_maxima.len() >= (tile_keys.end - grid).div_ceil(WORD_KEYS));
    row[..lo].fill(f32::NEG_INFINITY);
    row[hi..].fill(f32::NEG_INFINITY);
    let p = row.as_ptr();
    let (first, end) = (lo / 8 * 8, hi.next_multiple_of(8));
    let mut nan = _mm256_setzero_ps();
    let mut max = f32::NEG_INFINITY;
    for (from, pass_max) in (grid..tile_keys.end).step_by(WORD_KEYS).zip(pass_maxima) {
        // Two chains of `vmaxps` in flight; `vcmpunordps` keeps a NaN that `vmaxps` may drop.
        let mut maxes = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
        let keys = from.max(first)..(from + WORD_KEYS).min(end);
        for (i, c) in keys.step_by(8).enumerate() {
            let x = _mm256_loadu_ps(p.add(c));
            maxes[i % 2] = _mm256_max_ps(maxes[i % 2], x);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        }
        *pass_max = Avx2::reduce_max(_mm256_max_ps(maxes[0], maxes[1]));
        max = max.max(*pass_max);
    }
    match _mm256_movemask_ps(nan) == 0 && max.is_finite() {
        true => max,
        false => f32::NAN,
    }
}

/// The probabilities of scores `s[..n]` (read up to a multiple of 8; -inf where a key is
/// outside the row's band) rounded to `out`, scaled by their largest `max` ([`band_max`]'s
/// for the pass): `out ≈ P_LEVELS · e^(s - max)`. Returns `e^(max - row_max)`, the factor
/// that puts `out` on the row's common scale, and `Σ out`; `(0, 0)` where every key is
/// outside the band, `(NaN, 0)` where `row_max` is NaN (`out` 0 in both).
#[inline(always)]
unsafe fn round_exponentials(
    (s, n): (*const f32, usize),
    (row_max, max): (f32, f32),
    out: *mut i16,
) -> (f32, i32) {
    let n = n.next_multiple_of(8);
    if row_max.is_nan() || max == f32::NEG_INFINITY {
        std::ptr::write_bytes(out, 0, n);
        let factor = if row_max.is_nan() { f32::NAN } else { 0.0 };
        return (factor, 0);
    }
    let shift = _mm256_set1_ps(max * std::f32::consts::LOG2_E);
    let mut total = _mm256_setzero_si256();
    for k in (0..n).step_by(8) {
        let x = _mm256_fmsub_ps(
            _mm256_loadu_ps(s.add(k)),
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            shift,
        );
        let rounded = _mm256_cvtps_epi32(levels_exp2(x));
        total = _mm256_add_epi32(total, rounded);
        // Lanes 0-3 and 4-7 as 16 bits in the low 128 bits.
        let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packs_epi32(rounded, rounded));
        _mm_storeu_si128(out.add(k).cast(), _mm256_castsi256_si128(packed));
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total);
    ((max - row_max).exp(), lanes.iter().sum())
}

/// Whether a pass is a row's first (its sums are stored rather than added) and its last (then
/// the rows' factors `1 / Σ p`, and the columns' scales, multiply the sums).
struct Ends {
    first: bool,
    last: Option<*const f32>,
}

/// `R` rows × [`VALUE_COLUMNS`] output columns of one pass: the pairs of keys `pairs` of the
/// rounded probabilities (rows [`WORD_KEYS`] apart, each with its factor) against V's pairs
/// (`2 · head_dim` words apart from the pass's first key, from the tile's first column, with
/// the columns' scales), summed exactly in i32 (on `vpdpwssd` with `VNNI`), then added in f32 to
/// `out`.
#[inline(always)]
unsafe fn values_tile<const R: usize, const VNNI: bool>(
    (p, factors): (*const i16, &[f32]),
    pairs: std::ops::Range<usize>,
    (v, head_dim, column_scales): (*const i16, usize, *const f32),
    (out, out_stride): (*mut f32, usize),
    ends: &Ends,
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for pair in pairs {
        let row = v.add(pair * 2 * head_dim);
        let vs = [
            _mm256_loadu_si256(row.cast()),
            _mm256_loadu_si256(row.add(16).cast()),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            let w = _mm256_set1_epi32(
                p.add(r * WORD_KEYS + 2 * pair)
                    .cast::<i32>()
                    .read_unaligned(),
            );
            for (a, &v) in a.iter_mut().zip(&vs) {
                *a = match VNNI {
                    true => _mm256_dpwssd_avx_epi32(*a, w, v),
                    false => _mm256_add_epi32(*a, _mm256_madd_epi16(w, v)),
                };
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let factor = _mm256_set1_ps(factors[r]);
        for (c, &sum) in a.iter().enumerate() {
            let o = out.add(r * out_stride + 8 * c);
            let sum = _mm256_cvtepi32_ps(sum);
            let x = match ends.first {
                true => _mm256_mul_ps(sum, factor),
                false => _mm256_fmadd_ps(sum, factor, _mm256_loadu_ps(o)),
            };
            let x = match ends.last {
                Some(row_factors) => _mm256_mul_ps(
                    x,
                    _mm256_mul_ps(
                        _mm256_set1_ps(*row_factors.add(r)),
                        _mm256_loadu_ps(column_scales.add(8 * c)),
                    ),
                ),
                None => x,
            };
            _mm256_storeu_ps(o, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::outputs_of;
    use super::*;
    use crate::fused_attention::int8_dot_available;
    use crate::simd::{Avx2, Cpu};

    /// The kernels this CPU runs: on `vpmaddwd` (`false`), and on `vpdpwssd` (`true`) where it
    /// has AVX-VNNI (`scripts/check-avx512.sh`'s emulated Sapphire Rapids has).
    fn kernels() -> Vec<bool> {
        let dot = is_x86_feature_detected!("avxvnni");
        if !dot {
            eprintln!("SKIPPED (part): PV on vpdpwssd: this CPU has no AVX-VNNI");
        }
        [false].into_iter().chain(dot.then_some(true)).collect()
    }

    /// The name of a kernel of [`kernels`].
    fn name(dot: bool) -> &'static str {
        match dot {
            true => "vpdpwssd",
            false => "vpmaddwd",
        }
    }

    /// Arguments of [`both`]: `p` and its row stride, `v`, the head size, the rows and keys.
    type Args<'a> = (
        &'a [f32],
        usize,
        &'a [f32],
        usize,
        (usize, std::ops::Range<usize>),
    );

    /// PV of `rows` probability rows (stride `stride`, keys `keys`) against `v` both ways: (on
    /// the kernel `dot` names, in f32), `[rows, head_dim]` each; `None` where V did not round.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and AVX-VNNI for `dot`.
    unsafe fn both(args: Args, dot: bool) -> Option<(Vec<f32>, Vec<f32>)> {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn on_words(args: Args) -> Option<(Vec<f32>, Vec<f32>)> {
            both_on::<false>(args)
        }
        #[target_feature(enable = "avx2,fma,avxvnni")]
        unsafe fn on_dot(args: Args) -> Option<(Vec<f32>, Vec<f32>)> {
            both_on::<true>(args)
        }
        match dot {
            true => on_dot(args),
            false => on_words(args),
        }
    }

    /// [`both`]'s body, inlined into each of its target-feature wrappers.
    #[inline(always)]
    unsafe fn both_on<const VNNI: bool>(
        (p, stride, v, head_dim, (rows, keys)): Args,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        let mut rounded = RoundedValues::default();
        if !rounded.round(v, head_dim) {
            return None;
        }
        let words = WordValues::<VNNI> {
            values: &rounded,
            head_dim,
        };
        let floats = simd::F32Values::<Avx2> {
            v,
            head_dim,
            layout: simd::ValueLayout::Rows,
            isa: std::marker::PhantomData,
        };
        // f32: the probabilities, each row scaled by its 1 / Σ p, as the softmax gives them.
        let scales: Vec<f32> = p
            .chunks_exact(stride)
            .take(rows)
            .map(|row| 1.0 / row[keys.clone()].iter().sum::<f32>())
            .collect();
        let (_, floats) = outputs_of(
            (&floats, &floats),
            (p, stride),
            head_dim,
            simd::PreparedRows::scaled(&scales),
            keys.clone(),
        );
        // Words: scores whose softmax gives them, `ln p` (the rows' largest at 0), as the
        // softmax's first part leaves them, each row's band the whole tile's.
        let mut scores: Vec<f32> = p[..rows * stride].iter().map(|x| x.ln()).collect();
        let passes = stride.div_ceil(WORD_KEYS);
        let mut pass_maxima = vec![f32::NAN; rows * passes];
        let maxima: Vec<f32> = scores
            .chunks_exact_mut(stride)
            .zip(pass_maxima.chunks_exact_mut(passes))
            .map(|(row, passes)| {
                let band = (keys.start, keys.end);
                words.prepare_row::<Avx2>(row, band, keys.clone(), passes)
            })
            .collect();
        let prepared = simd::PreparedRows {
            scales: &maxima,
            pass_maxima: &pass_maxima,
            passes,
        };
        let (words, _) = outputs_of(
            (&words, &words),
            (&scores, stride),
            head_dim,
            prepared,
            keys,
        );
        Some((words, floats))
    }

    fn skip() -> bool {
        let skip = !int8_dot_available(Cpu::Avx2);
        if skip {
            eprintln!("SKIPPED: PV on vpmaddwd needs AVX2 and FMA");
        }
        skip
    }

    /// `len` keys of values in [-4, 4) by the kernels' shared generator, `[len, head_dim]`.
    fn values(len: usize, head_dim: usize) -> Vec<f32> {
        crate::packed_gemm::test_support::random(len * head_dim, 2)
            .into_iter()
            .map(|x| 4.0 * x)
            .collect()
    }

    /// The largest difference between the two outputs.
    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Dense rows of probabilities in [0, 1) against V in [-4, 4): within 5e-4 of max |v| of
    /// PV in f32. The bound: each value rounds within 0.5/2047 of its column's largest, each
    /// probability within 0.5/8191 of its pass's largest, and these rows' sums are about half
    /// their length, so the error is at most (2.4e-4 + 1.2e-4 · 2) · max |v|; measured
    /// 2.4e-5 to 1.1e-4 · max |v| (the most on 16 keys). Several passes of 128 keys, odd first
    /// and last keys (pairs half outside the band, a zero key past an odd end), 12, 7, 5 and 1
    /// rows (tiles of 6 and their tails), heads of 64 and 128. Both kernels sum the same
    /// integers exactly, so `vpdpwssd`'s outputs equal `vpmaddwd`'s bit for bit.
    #[test]
    fn word_values_match_f32_values() {
        if skip() {
            return;
        }
        let kernels = kernels();
        let cases: [(usize, usize, usize, std::ops::Range<usize>); 5] = [
            (64, 12, 301, 3..301),
            (128, 5, 77, 0..77),
            (64, 7, 600, 0..600),
            (64, 1, 40, 17..33),
            (128, 12, 257, 129..257),
        ];
        for (head_dim, rows, len, keys) in cases {
            let stride = len.next_multiple_of(16);
            let mut p: Vec<f32> = crate::packed_gemm::test_support::random(rows * stride, 1)
                .into_iter()
                .map(|x| (x + 1.0) / 2.0)
                .collect();
            for row in p.chunks_exact_mut(stride) {
                for (j, x) in row.iter_mut().enumerate() {
                    if !keys.contains(&j) {
                        *x = 0.0;
                    }
                }
            }
            let v = values(len, head_dim);
            let largest = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let mut outputs = Vec::new();
            for &dot in &kernels {
                let args = (&p[..], stride, &v[..], head_dim, (rows, keys.clone()));
                // SAFETY: the CPU has AVX2 and FMA (checked above), and AVX-VNNI for `dot`.
                let (words, floats) = unsafe { both(args, dot) }.unwrap();
                let worst = worst(&words, &floats);
                let kernel = name(dot);
                eprintln!("PV on {kernel}, head {head_dim}, keys {keys:?}: max diff {worst:e} of max |v| {largest}");
                assert!(
                    worst <= 5e-4 * largest,
                    "{kernel}, head {head_dim}, keys {keys:?}: {worst} of {largest}"
                );
                outputs.push(words);
            }
            assert!(outputs.windows(2).all(|w| w[0] == w[1]), "keys {keys:?}");
        }
    }

    /// A row whose largest probability (1, key 0) sits beside 1,023 small ones (1e-4, a tenth
    /// of the row's sum): each pass rounds to its own largest, so only the first pass's 127
    /// small ones round coarsely (1e-4 to 1/8191 ≈ 1.22e-4), and the output stays within 5e-3
    /// of f32's (measured 2.3e-3, V 1 on the small ones' keys, 0 on key 0). Rounded to the
    /// row's largest instead, all 1,023 would, and the output would move by 2e-2.
    #[test]
    fn small_probabilities_keep_their_sum_beside_a_large_one() {
        if skip() {
            return;
        }
        let (head_dim, len) = (64, 1024);
        let mut p = vec![1e-4f32; len];
        p[0] = 1.0;
        let mut v = vec![1f32; len * head_dim];
        v[..head_dim].fill(0.0);
        for dot in kernels() {
            // SAFETY: the CPU has AVX2 and FMA (checked above), and AVX-VNNI for `dot`.
            let (words, floats) =
                unsafe { both((&p, len, &v, head_dim, (1, 0..len)), dot) }.unwrap();
            let worst = worst(&words, &floats);
            eprintln!(
                "{}: output {} (f32 {}), diff {worst:e}",
                name(dot),
                words[0],
                floats[0]
            );
            assert!(worst <= 5e-3, "{}: {worst}", name(dot));
        }
    }

    /// `levels_exp2` against `P_LEVELS · 2^x` in f64 on 200,001 points of [-40, 0]: within
    /// 0.03 of a level (the fit: 0.021), so the rounding that follows moves by at most one
    /// level where the exact value sits that close to a half; 0 at and below -30; NaN kept.
    #[test]
    fn levels_exp2_is_within_a_thirtieth_of_a_level() {
        if skip() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn at(x: f32) -> f32 {
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), levels_exp2(_mm256_set1_ps(x)));
            out[0]
        }
        let mut worst = (0f64, 0f32);
        for i in 0..=200_000 {
            let x = -40.0 * i as f32 / 200_000.0;
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got = unsafe { at(x) } as f64;
            let want = P_LEVELS as f64 * (x as f64).exp2();
            if (got - want).abs() > worst.0 {
                worst = ((got - want).abs(), x);
            }
            if x <= -30.0 {
                assert!(got.round() == 0.0, "{x}: {got}");
            }
        }
        eprintln!("levels_exp2: worst {:e} levels at {}", worst.0, worst.1);
        assert!(worst.0 <= 0.03, "{worst:?}");
        // SAFETY: as above.
        assert!(unsafe { at(f32::NAN) }.is_nan());
    }

    /// `band_max` masks the row outside its band with -inf, returns the band's largest and
    /// writes each pass's largest (passes of `WORD_KEYS` from the tile's first key's multiple
    /// of 8, as `key_passes` makes them), -inf for a pass with none of the band: each the
    /// scalar maximum over the same keys. Bands at the tile's start, inside it, across pass
    /// edges and ending with it; a NaN or +inf score makes the row's largest NaN (a -inf one is
    /// a probability of 0, as in f32).
    #[test]
    fn band_max_finds_the_rows_and_each_passs_largest() {
        if skip() {
            return;
        }
        let stride = 536;
        let scores = crate::packed_gemm::test_support::random(stride, 5);
        let tile = 3..530;
        let passes = key_passes(tile.clone(), 8, WORD_KEYS).collect::<Vec<_>>();
        for band in [3..530, 3..4, 40..300, 127..129, 255..530, 520..530] {
            let mut row = scores.clone();
            let mut maxima = vec![f32::NAN; passes.len()];
            // SAFETY: the CPU has AVX2 (checked above); the row's length is a multiple of 8.
            let max = unsafe { band_max(&mut row, band.clone(), tile.clone(), &mut maxima) };
            let largest = |keys: std::ops::Range<usize>| {
                (keys.start.max(band.start)..keys.end.min(band.end))
                    .map(|k| scores[k])
                    .fold(f32::NEG_INFINITY, f32::max)
            };
            assert_eq!(max, largest(0..stride), "{band:?}");
            for (j, pass) in passes.iter().enumerate() {
                let keys = pass.from..(pass.from + WORD_KEYS).min(stride);
                assert_eq!(maxima[j], largest(keys), "{band:?}, pass {j}");
            }
            for (k, &x) in row.iter().enumerate() {
                let want = if band.contains(&k) {
                    scores[k]
                } else {
                    f32::NEG_INFINITY
                };
                assert_eq!(x, want, "{band:?}, key {k}");
            }
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut row = scores.clone();
            row[200] = bad;
            let mut maxima = vec![0.0; passes.len()];
            // SAFETY: as above.
            let max = unsafe { band_max(&mut row, 40..300, tile.clone(), &mut maxima) };
            assert_eq!(max.is_nan(), bad != f32::NEG_INFINITY, "{bad}: {max}");
        }
    }

    /// A NaN probability leaves its row's outputs NaN (as in f32) and no other row's; a value
    /// that is not finite leaves V unrounded (PV then runs in f32).
    #[test]
    fn non_finite_inputs_give_nan_not_a_finite_guess() {
        if skip() {
            return;
        }
        let (head_dim, len, rows) = (64, 40, 3);
        let v = values(len, head_dim);
        let mut p = vec![0.5f32; rows * len.next_multiple_of(16)];
        let stride = len.next_multiple_of(16);
        p[stride + 7] = f32::NAN;
        for dot in kernels() {
            // SAFETY: the CPU has AVX2 and FMA (checked above), and AVX-VNNI for `dot`.
            let (words, _) =
                unsafe { both((&p, stride, &v, head_dim, (rows, 0..len)), dot) }.unwrap();
            for (r, row) in words.chunks_exact(head_dim).enumerate() {
                assert!(
                    row.iter().all(|x| x.is_nan() == (r == 1)),
                    "{}: row {r}",
                    name(dot)
                );
            }
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut v = v.clone();
            v[5 * head_dim + 3] = bad;
            // SAFETY: as above (`vpmaddwd`).
            let rounded = unsafe { both((&p, stride, &v, head_dim, (rows, 0..len)), false) };
            assert!(rounded.is_none(), "{bad}");
        }
    }
}
