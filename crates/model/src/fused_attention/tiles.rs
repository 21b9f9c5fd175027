//! The attention's two products in bf16 on AMX tiles, for `--dtype bf16` and `--dtype int8` on
//! CPUs with AMX (where their linear layers run on the tiles), or in the same layouts on
//! AVX512-BF16's `vdpbf16ps` ([`AttentionProducts::Bf16Dot`]) on CPUs whose bf16 linear layers run on it
//! (Zen 4/5): a tile row of A is one row's pairs along k, and a B tile row is one pair of k for
//! 16 columns, which is the vector `vdpbf16ps` multiplies against a broadcast pair.
//!
//! In f32 the attention was a quarter of a bf16 forward on short texts (a third of an int8 one),
//! for 3% of its arithmetic: its products ran on the vector units while the linear layers ran on
//! the tiles.
//! Here one pass over the sequence's `qkv` rows rotates Q and K in f32 (as the f32 kernels do)
//! and rounds Q, K and V to bf16 straight into the layouts the tiles load; then for each block
//! of 32 queries, QKᵀ is one 32 × 32 tile product per block of 32 keys (f32 sums), the softmax
//! runs on those f32 scores, the probabilities are rounded to bf16, and PV is one tile product
//! per 32 columns of the head over the keys the block sees. The result is scaled by each row's
//! 1 / Σ and written in f32. This is the precision of transformers' bf16 attention (bf16
//! operands, f32 sums and softmax). A local layer's block multiplies only the key blocks its
//! band reaches, and each row's softmax masks the keys outside its own band.

use std::arch::x86_64::*;

use super::{simd, AttentionProducts, Block, HeadTask, Inputs, Shape, SharedOut};
use crate::aligned::AlignedVec;
use crate::amx::{Accumulators, Destination, TilePair, BLOCK, TILE_BYTES, TILE_ROWS};
use crate::config::AttentionKind;

/// Queries per tile product (two A tiles), and keys per block (two B tiles of QKᵀ, one k step
/// of PV).
const ROWS: usize = BLOCK;
/// bf16 pairs in one tile: 16 rows of 64 bytes.
const TILE_WORDS: usize = TILE_ROWS * TILE_BYTES / 4;

/// One head of one sequence in the tiles' layouts, and a query block's scores, reused by the
/// tasks that run on one thread.
#[derive(Default)]
pub(super) struct Scratch {
    /// Q, rotated and scaled: `[rows padded to 32][head_dim / 2]` pairs along the head.
    q: AlignedVec<u32>,
    /// Kᵀ, rotated: per block of 32 keys, per 32 head columns, two B tiles (keys 0-15, 16-31)
    /// of 16 pairs of head columns × 16 keys.
    k: AlignedVec<u32>,
    /// V: per block of 32 keys, per 16 head columns, one B tile of 16 pairs of keys × 16
    /// columns.
    v: AlignedVec<u32>,
    /// A row of zeros: the V row past an odd end.
    zeros: Vec<f32>,
    /// `[32][stride]` scores of a query block.
    scores: AlignedVec<f32>,
    /// The same rows' probabilities as bf16 pairs along the keys.
    probs: AlignedVec<u32>,
    /// PV's 32 × 32 sums, kept here rather than a zeroed array per block: a 4 KiB `memset`
    /// per 32 queries and head was 4% of the attention on short texts, for values that every
    /// product overwrites.
    sums: Box<Accumulators<f32>>,
}

/// The sizes of one head's buffers.
#[derive(Clone, Copy)]
struct Layout {
    head_dim: usize,
    /// Words per key block of K and of V (32 keys × head_dim bf16).
    block_words: usize,
}

impl Layout {
    fn new(head_dim: usize) -> Self {
        Layout {
            head_dim,
            block_words: ROWS * head_dim / 2,
        }
    }

    /// Pairs per Q row.
    fn q_words(self) -> usize {
        self.head_dim / 2
    }
}

/// Runs one head of one sequence on `inputs.products`, tiles or `vdpbf16ps` (see the module's
/// comment).
///
/// # Safety
/// The CPU has AVX-512 BW and BF16, and for [`AttentionProducts::Bf16Tiles`]
/// [`crate::amx_bf16_gemm::available`] said yes; `super::tiles_take(shape.head_dim)`; the task's
/// rows and head columns lie inside `qkv` and the output, and this task alone writes its part.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn run(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    dst: &SharedOut,
    (kind, shape): (AttentionKind, Shape),
    scratch: &mut Scratch,
) {
    let len = task.seq.len();
    let layout = Layout::new(shape.head_dim);
    let (rows, blocks) = (len.next_multiple_of(ROWS), len.div_ceil(ROWS));
    scratch.q.resize(rows * layout.q_words());
    scratch.k.resize(blocks * layout.block_words);
    scratch.v.resize(blocks * layout.block_words);
    scratch.zeros.resize(shape.head_dim, 0.0);
    gather(task, inputs, shape, layout, scratch);
    if inputs.products == AttentionProducts::Bf16Tiles {
        crate::amx::with_tiles(|| {
            for block in task.blocks(ROWS) {
                attend_block::<true>(&block, kind, shape, layout, scratch, dst);
            }
        });
    } else {
        for block in task.blocks(ROWS) {
            attend_block::<false>(&block, kind, shape, layout, scratch, dst);
        }
    }
}

/// Rotates, rounds and places the head's Q, K and V rows (see [`Scratch`]); V's pairs past the
/// sequence's end are zero (their probabilities are, and 0 · NaN would not be). Q and K go from
/// `qkv` through RoPE to bf16 in registers ([`rotated_pairs`]), 32 head columns at a time.
#[inline(always)]
unsafe fn gather(
    task: &HeadTask,
    inputs: &Inputs<'_>,
    shape: Shape,
    layout: Layout,
    scratch: &mut Scratch,
) {
    let (hidden, head_dim) = (shape.hidden, shape.head_dim);
    let Scratch { q, k, v, zeros, .. } = scratch;
    let len = task.seq.len();
    let q_scale = _mm512_set1_ps(inputs.scale);
    for j in (0..len).step_by(2) {
        // Keys j and j + 1 (zeros past the end) make one row of pairs of each V tile.
        let mut values = [zeros.as_ptr(); 2];
        for (i, value) in values.iter_mut().enumerate().take(len - j) {
            let t = task.seq.start + j + i;
            let row = task.row_prefetching::<simd::Avx512>(inputs, shape, t);
            let tables = (row.cos.as_ptr(), row.sin.as_ptr());
            let (src, q_row) = (
                row.src.as_ptr(),
                q.as_mut_ptr().add((j + i) * layout.q_words()),
            );
            for c in (0..head_dim).step_by(32) {
                let q_pairs = rotated_pairs(src, tables, (c, head_dim), q_scale);
                _mm512_storeu_si512(q_row.add(c / 2).cast(), q_pairs);
                let k_pairs =
                    rotated_pairs(src.add(hidden), tables, (c, head_dim), _mm512_set1_ps(1.0));
                scatter_key(k.as_mut_ptr(), (j + i, c), k_pairs, layout);
            }
            *value = row.src[2 * hidden..2 * hidden + head_dim].as_ptr();
        }
        let pair = v_pair(v.as_mut_ptr(), j / 2, layout);
        for c in (0..head_dim).step_by(16) {
            let lo = _mm512_loadu_ps(values[0].add(c));
            let hi = _mm512_loadu_ps(values[1].add(c));
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let interleaved = _mm512_permutexvar_epi16(interleave_index(), both);
            _mm512_storeu_si512(pair.add(c / 16 * TILE_WORDS).cast(), interleaved);
        }
    }
    let pairs = len.div_ceil(2);
    for pair in pairs..pairs.next_multiple_of(TILE_ROWS) {
        let row = v_pair(v.as_mut_ptr(), pair, layout);
        for c in (0..head_dim).step_by(16) {
            std::ptr::write_bytes(row.add(c / 16 * TILE_WORDS), 0, 16);
        }
    }
}

/// Head columns `c..c + 32` (of `head_dim`) of the RoPE of the head row at `x`, times `scale`,
/// as 16 bf16 pairs: [`simd::rotated`] (the operations of [`simd::rotate`], the same values)
/// kept in registers rather than stored as f32 and loaded back to be rounded. The AMX tiles'
/// attention shares this gather.
#[inline(always)]
unsafe fn rotated_pairs(
    x: *const f32,
    tables: (*const f32, *const f32),
    (c, head_dim): (usize, usize),
    scale: __m512,
) -> __m512i {
    let half = head_dim / 2;
    let lo = simd::rotated::<simd::Avx512>(x, tables, (c, half), scale);
    let hi = simd::rotated::<simd::Avx512>(x, tables, (c + 16, half), scale);
    std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Where V's pair of keys `2 * pair`, `2 * pair + 1` starts: row `pair % 16` of the first
/// tile of its block (the tiles of the next 16 columns follow one tile apart).
#[inline(always)]
unsafe fn v_pair(v: *mut u32, pair: usize, layout: Layout) -> *mut u32 {
    let (block, row) = (pair / TILE_ROWS, pair % TILE_ROWS);
    v.add(block * layout.block_words + row * 16)
}

/// The permutation of 32 bf16 that puts `x[i]` and `x[16 + i]` side by side as pair `i`.
#[inline(always)]
unsafe fn interleave_index() -> __m512i {
    let mut index = [0i16; 32];
    for (i, pair) in index.chunks_exact_mut(2).enumerate() {
        pair[0] = i as i16;
        pair[1] = 16 + i as i16;
    }
    _mm512_loadu_si512(index.as_ptr().cast())
}

/// Head columns `c..c + 32` of key `j`'s rotated row, as 16 pairs, into column `j % 16` of
/// its B tiles: pair `p` of the columns goes to row `p` of the tile for those columns.
#[inline(always)]
unsafe fn scatter_key(k: *mut u32, (j, c): (usize, usize), pairs: __m512i, layout: Layout) {
    let (block, in_block) = (j / ROWS, j % ROWS);
    let base = k.add(block * layout.block_words + in_block / 16 * TILE_WORDS + in_block % 16);
    // Tile row r starts 16 words after row r - 1.
    let rows = _mm512_slli_epi32::<4>(_mm512_set_epi32(
        15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    ));
    let tile = base.add(c / 32 * 2 * TILE_WORDS);
    _mm512_i32scatter_epi32::<4>(tile.cast(), rows, pairs);
}

/// One block of (up to) 32 queries of one head, its products on the tiles (`TILES`) or on
/// `vdpbf16ps`. A function of its own with the features (not inlined): it runs inside the tile
/// configuration's closure, which would not inherit them.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn attend_block<const TILES: bool>(
    block: &Block,
    kind: AttentionKind,
    shape: Shape,
    layout: Layout,
    scratch: &mut Scratch,
    dst: &SharedOut,
) {
    let start = block.seq.start;
    // The key blocks the block's rows see; score column c is key `b0 * 32 + c` of the sequence.
    let keys = block.key_range(kind);
    let (k0, k1) = (keys.0 - start, keys.1 - start);
    let (b0, b1) = (k0 / ROWS, k1.div_ceil(ROWS));
    let (stride, shift) = ((b1 - b0) * ROWS, k0 - b0 * ROWS);
    let Scratch {
        q,
        k,
        v,
        scores,
        probs,
        sums,
        ..
    } = scratch;
    scores.resize(ROWS * stride);
    probs.resize(ROWS * stride / 2);
    // QKᵀ: every score of the 32 rows × the blocks' keys (each store covers a 32 × 32 block).
    let q_rows = q
        .as_ptr()
        .add((block.q0 - start) * layout.q_words())
        .cast::<u8>();
    let q_bytes = layout.q_words() * 4;
    let a = (q_rows, q_rows.add(TILE_ROWS * q_bytes), q_bytes, TILE_BYTES);
    let steps = layout.head_dim / ROWS;
    for b in b0..b1 {
        let keys = k.as_ptr().add(b * layout.block_words).cast::<u8>();
        let tiles = (
            keys,
            keys.add(TILE_WORDS * 4),
            TILE_BYTES,
            2 * TILE_WORDS * 4,
        );
        let c = scores.as_mut_ptr().add((b - b0) * ROWS);
        let out = (c, c.add(TILE_ROWS * stride), stride * 4);
        // Where the keys end in a block's first 16, its second B tile holds only padding: its
        // score columns stay unwritten, past every row's band, where the softmax masks them.
        let halves = if k1 - b * ROWS <= TILE_ROWS { 1 } else { 2 };
        product::<TILES>(a, tiles, steps, out, (block.qn, halves, TILE_ROWS));
    }
    // Softmax of each row over its band, left unnormalised; rounded to bf16 pairs.
    let mut inv_sums = [0f32; ROWS];
    for (r, inv) in inv_sums.iter_mut().enumerate().take(block.qn) {
        let (lo, hi) = block.band(r, keys, kind);
        let row = scores.as_ptr().add(r * stride);
        let p = probs.as_mut_ptr().add(r * stride / 2);
        *inv = softmax_row(row, stride, lo + shift, hi + shift, p);
    }
    // PV, 32 head columns at a time, over the blocks' keys; rows scaled by 1 / Σ on the way out.
    let p_rows = probs.as_ptr().cast::<u8>();
    let p_bytes = stride * 2;
    let a = (p_rows, p_rows.add(TILE_ROWS * p_bytes), p_bytes, TILE_BYTES);
    // The pairs of keys the last key block holds (the probabilities past them are 0).
    let last_pairs = (k1 - (b1 - 1) * ROWS).div_ceil(2);
    for c0 in (0..layout.head_dim).step_by(ROWS) {
        let values = v
            .as_ptr()
            .add(b0 * layout.block_words + c0 / 16 * TILE_WORDS)
            .cast::<u8>();
        let tiles = (
            values,
            values.add(TILE_WORDS * 4),
            TILE_BYTES,
            layout.block_words * 4,
        );
        let extent = (block.qn, 2, last_pairs);
        product::<TILES>(a, tiles, b1 - b0, sums.destination(), extent);
        let out = dst
            .0
            .add(block.q0 * shape.hidden + block.head * shape.head_dim + c0);
        for (r, &inv) in inv_sums.iter().enumerate().take(block.qn) {
            let scale = _mm512_set1_ps(inv);
            for half in 0..2 {
                let x = _mm512_loadu_ps(sums.0.as_ptr().add(r * BLOCK + 16 * half));
                _mm512_storeu_ps(
                    out.add(r * shape.hidden + 16 * half),
                    _mm512_mul_ps(x, scale),
                );
            }
        }
    }
}

/// `out = a · b` over `blocks` blocks of k for a 32 × 32 block (see
/// [`crate::amx::product_bf16`]), on the tiles (`TILES`) or on `vdpbf16ps`, which computes
/// only what `extent` says is read or not zero: `(rows, halves, last_pairs)`, the rows from
/// `rows` (rounded up to 8) left out, only the first B tile where `halves` is 1 (columns 16-31
/// unwritten), and in the last block of k only its first `last_pairs` pairs (the rest are zero
/// in `a` or `b`). On short texts these trims skip a fifth to a third of the products (a
/// 44-token sequence: 48 keys of 64 in QKᵀ, 22 pairs of 32 in PV), and they add nothing that
/// was not zero, so the sums are the same.
#[inline(always)]
unsafe fn product<const TILES: bool>(
    a: TilePair,
    b: TilePair,
    blocks: usize,
    out: Destination<f32>,
    (rows, halves, last_pairs): (usize, usize, usize),
) {
    if TILES {
        crate::amx::product_bf16(a, b, blocks, out)
    } else if halves == 1 {
        dot_product::<1>(a, b, blocks, out, (rows, last_pairs))
    } else {
        dot_product::<2>(a, b, blocks, out, (rows, last_pairs))
    }
}

/// [`crate::amx::product_bf16`] on `vdpbf16ps`, from the same layouts into the same 32 × 32
/// f32 sums, for rows `..rows` (in groups of 8 rows, 8 · `HALVES` accumulators) and the first
/// `HALVES` B tiles, the last block of k cut to `last_pairs` pairs.
#[inline(always)]
unsafe fn dot_product<const HALVES: usize>(
    (a0, a1, lda, a_step): TilePair,
    (b0, b1, ldb, b_step): TilePair,
    blocks: usize,
    (c0, c1, ldc): Destination<f32>,
    (rows, last_pairs): (usize, usize),
) {
    const R: usize = 8;
    for r0 in (0..rows.min(ROWS)).step_by(R) {
        // Groups of 8 never straddle the two A tiles (16 rows each).
        let (a, c) = if r0 < TILE_ROWS {
            (a0.add(r0 * lda), c0.cast::<u8>().add(r0 * ldc))
        } else {
            let r = r0 - TILE_ROWS;
            (a1.add(r * lda), c1.cast::<u8>().add(r * ldc))
        };
        let mut acc = [[_mm512_setzero_ps(); HALVES]; R];
        for step in 0..blocks {
            let a = a.add(step * a_step);
            let b = [b0, b1].map(|b| b.add(step * b_step));
            if step + 1 < blocks {
                // A constant count, so the loop over pairs unrolls as before the trims.
                pairs_of_block::<HALVES, R>(&mut acc, (a, lda), (b, ldb), TILE_ROWS);
            } else {
                pairs_of_block::<HALVES, R>(&mut acc, (a, lda), (b, ldb), last_pairs);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = c.add(r * ldc).cast::<f32>();
            for (half, &acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(row.add(16 * half), acc);
            }
        }
    }
}

/// `acc[r][h] += Σ_p a[r, pair p] · b_h[pair p]` over the first `pairs` pairs of one block of
/// k: one broadcast of each row's pair per `HALVES` products.
#[inline(always)]
unsafe fn pairs_of_block<const HALVES: usize, const R: usize>(
    acc: &mut [[__m512; HALVES]; R],
    (a, lda): (*const u8, usize),
    (b, ldb): ([*const u8; 2], usize),
    pairs: usize,
) {
    for p in 0..pairs {
        let mut v = [_mm512_setzero_si512(); HALVES];
        for (v, b) in v.iter_mut().zip(b) {
            *v = _mm512_loadu_si512(b.add(p * ldb).cast());
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = a.add(r * lda + 4 * p).cast::<i32>().read_unaligned();
            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            for (acc, &v) in acc.iter_mut().zip(&v) {
                let v: __m512bh = std::mem::transmute(v);
                *acc = _mm512_dpbf16_ps(*acc, pair, v);
            }
        }
    }
}

/// The unnormalised softmax of the `stride` scores at `row` over columns `lo..hi`
/// (`exp(x - max)` there, 0 elsewhere), as bf16 pairs at `probs`; returns `1 / Σ` of the f32
/// values. One pass finds the max and one computes, sums and rounds, with the band as lane
/// masks: the f32 probabilities never go back to memory. Vectors wholly inside the band skip
/// the masks (the same values: max and exp do not depend on the order of lanes): a global
/// layer's rows are nearly all interior, and working out each vector's mask was a third of
/// this function's time on Zen 5. (No closures: they would not inherit the caller's target
/// features.)
#[inline(always)]
unsafe fn softmax_row(
    row: *const f32,
    stride: usize,
    lo: usize,
    hi: usize,
    probs: *mut u32,
) -> f32 {
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in (lo / 16 * 16..hi).step_by(16) {
        let x = _mm512_loadu_ps(row.add(c));
        max = if c >= lo && c + 16 <= hi {
            _mm512_max_ps(max, x)
        } else {
            _mm512_mask_max_ps(max, band(c, lo, hi), max, x)
        };
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for c in (0..stride).step_by(32) {
        let (e0, e1) = if c >= lo && c + 32 <= hi {
            (interior_exp(row, c, max), interior_exp(row, c + 16, max))
        } else {
            (
                band_exp(row, c, band(c, lo, hi), max),
                band_exp(row, c + 16, band(c + 16, lo, hi), max),
            )
        };
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(e1, e0));
        _mm512_storeu_si512(probs.add(c / 2).cast(), pairs);
    }
    1.0 / _mm512_reduce_add_ps(sum)
}

/// The lanes of columns `c..c + 16` inside the band `lo..hi`.
#[inline(always)]
fn band(c: usize, lo: usize, hi: usize) -> __mmask16 {
    let (start, end) = (lo.saturating_sub(c).min(16), hi.saturating_sub(c).min(16));
    (((1u32 << end) - 1) & !((1u32 << start) - 1)) as __mmask16
}

/// `exp(x - max)` of the 16 scores at `row + c`, all inside the band.
#[inline(always)]
unsafe fn interior_exp(row: *const f32, c: usize, max: __m512) -> __m512 {
    let x = _mm512_sub_ps(_mm512_loadu_ps(row.add(c)), max);
    <simd::Avx512 as simd::Isa>::exp_nonpositive(x)
}

/// `exp(x - max)` of the 16 scores at `row + c` in the lanes of `mask`, 0 in the others.
#[inline(always)]
unsafe fn band_exp(row: *const f32, c: usize, mask: __mmask16, max: __m512) -> __m512 {
    if mask == 0 {
        return _mm512_setzero_ps();
    }
    let x = _mm512_maskz_sub_ps(mask, _mm512_loadu_ps(row.add(c)), max);
    _mm512_maskz_mov_ps(mask, <simd::Avx512 as simd::Isa>::exp_nonpositive(x))
}
