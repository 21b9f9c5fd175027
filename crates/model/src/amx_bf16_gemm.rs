//! `y = x Wᵀ (+ b)` with bf16 inputs and f32 accumulation on AMX tiles (`tdpbf16ps`), for the
//! CPU `bf16` precision on CPUs with AMX-BF16 (Intel Xeon Sapphire Rapids and later).
//!
//! One `tdpbf16ps` multiplies a 16-row × 32-bf16 tile of activations by a 32-bf16 × 16-column
//! tile of weights into a 16 × 16 f32 tile. The micro-kernel keeps a 2 × 2 block of such output
//! tiles (32 rows × 32 columns) over all of k: two activation and two weight tiles per step,
//! the eight tile registers in all.
//!
//! The weight is packed once, at load, into panels of [`NR`] = 32 columns, k padded with zeros
//! to whole tiles; inside a panel, for each block of 16 pairs of input features, the two weight
//! tiles lie one after the other (1 KiB each, word `[p][j]` = `W[j, 2p]` low, `W[j, 2p + 1]`
//! high), so every tile load reads contiguous memory. Activations stay f32 in the model; each
//! product rounds them to bf16 pairs (rows padded to whole tiles) on the way in, and writes f32
//! plus bias and residual from the accumulators, as the AVX512-BF16 kernel does. Its tests are
//! the bf16 kernels' tests in `bf16_gemm` (every kernel the CPU runs, and the two against each
//! other).

use rayon::prelude::*;

use crate::aligned::AlignedVec;
use crate::amx::{BLOCK, TILE_BYTES, TILE_ROWS};
use crate::packed_gemm::{
    with_thread_buffer, write_blocks, write_gated_blocks, BlockOut, Blocking, LazyBlocks,
    PanelGemm, PanelKernel, RowNorm,
};

/// Output columns per packed panel: two tiles of 16.
pub const NR: usize = BLOCK;
/// Rows per micro-kernel call: two tiles of 16.
const MR: usize = BLOCK;
/// Pairs of bf16 per tile row (64 bytes).
const KB: usize = TILE_BYTES / 4;
/// Words of one weight tile.
const B_TILE: usize = KB * 16;
/// Rows per work block.
const MC: usize = 256;
/// Panels per work block.
const PANELS_PER_BLOCK: usize = 4;
/// Rows per block of a gated (GEGLU) product, as the other kernels'.
const GATED_MC: usize = 64;

/// Whether this CPU (and OS) runs the AMX-BF16 kernel: tiles for the products, AVX512-BF16 for
/// the conversion of activations and the epilogue.
pub fn available() -> bool {
    crate::amx::available("amx-bf16") && crate::bf16_gemm::available()
}

/// A weight `[n, k]` packed for the AMX kernel.
pub struct PackedAmxBf16 {
    /// Packed columns (for a gated weight `2 · inter`).
    n: usize,
    k: usize,
    /// GEGLU: the output is `gelu(y[:, ..n/2]) · y[:, n/2..]` of the product `y`.
    gated: bool,
    /// Pairs of input features, padded to whole tiles: a multiple of [`KB`].
    kp: usize,
    /// `n.div_ceil(NR)` panels of `kp / KB` blocks of two weight tiles, on cache lines.
    data: AlignedVec<u32>,
}

impl PackedAmxBf16 {
    /// Packs a row-major `[n, k]` f32 weight (rounded to bf16, to nearest even).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
        let kp = k.div_ceil(2).next_multiple_of(KB).max(KB);
        let panels = n.div_ceil(NR);
        let mut data = AlignedVec::<u32>::zeroed(panels * kp * NR);
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                let mut pairs = vec![0u32; k.div_ceil(2)];
                for j in 0..NR {
                    let row = panel * NR + j;
                    if row >= n {
                        break;
                    }
                    crate::bf16_gemm::convert_weight_row(&w[row * k..(row + 1) * k], &mut pairs);
                    let (tile, col) = (j / 16, j % 16);
                    for (p, &pair) in pairs.iter().enumerate() {
                        let (block, at) = (p / KB, p % KB);
                        out[(2 * block + tile) * B_TILE + at * 16 + col] = pair;
                    }
                }
            });
        PackedAmxBf16 {
            n,
            k,
            gated: false,
            kp,
            data,
        }
    }

    /// Packs a GEGLU weight `[2 · inter, k]` (rows `..inter` are `W_in`, the rest `W_gate`), as
    /// the AVX512-BF16 kernel's [`pack_gated`](crate::bf16_gemm::PackedWeight::pack_gated).
    pub fn pack_gated(w: &[f32], inter: usize, k: usize) -> Self {
        PackedAmxBf16 {
            gated: true,
            ..Self::pack(w, 2 * inter, k)
        }
    }

    /// [`write`](PackedGemm::write) with `a` as the buffer of activation pairs, the rows of `x`
    /// normalized by `norm` first where given.
    unsafe fn write_with(
        &self,
        a: &mut AlignedVec<u32>,
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        // Rows padded to whole micro-kernel calls: the padding rows' products are computed and
        // never written, so their contents do not matter, only that they are there to load.
        a.resize(m.next_multiple_of(MR) * self.kp);
        let block_rows = if self.gated { GATED_MC } else { MC };
        let rows = LazyPairs::new(a, (x, norm), m, self.k, self.kp, block_rows);
        if self.gated {
            return write_gated_blocks(self, &rows, m, Blocking::whole_rows(GATED_MC), bias, out);
        }
        let blocking = Blocking {
            rows: MC,
            panels: PANELS_PER_BLOCK,
        };
        write_blocks(self, &rows, m, blocking, bias, residual, out);
    }
}

/// The activations of one product as bf16 pairs in tile layout, each block of rows converted
/// from f32 by the first task that multiplies it, right before it does: the block's pairs are
/// then still in cache for its products. (A pass converting the whole batch first had every
/// block come back from memory: the f32 rows of a 1,024-token batch are 3-4.5 MiB; that pass
/// and its reloads were 10-12% of the bf16 forward.)
///
/// Tile-major: each group of 16 rows is `kp / KB` tiles of 16 rows × 16 pairs, one after the
/// other, so a tile load reads 1 KiB of contiguous memory.
pub(crate) struct LazyPairs {
    pairs: *mut u32,
    kp: usize,
    /// The f32 rows, in blocks of a multiple of [`TILE_ROWS`] rows.
    rows: LazyBlocks,
}

// SAFETY: a block's pairs are written once, while `rows` prepares the block, and read only
// after that completed.
unsafe impl Sync for LazyPairs {}

impl LazyPairs {
    /// `pairs` holds `m` rows rounded up to [`MR`] of `kp` pairs; `x` is `[m, k]` and the
    /// norm's parameters `[k]`; all outlive the product.
    fn new(
        pairs: &mut AlignedVec<u32>,
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        m: usize,
        k: usize,
        kp: usize,
        block_rows: usize,
    ) -> Self {
        debug_assert!(pairs.len() >= m.next_multiple_of(MR) * kp);
        debug_assert!(block_rows.is_multiple_of(TILE_ROWS));
        LazyPairs {
            pairs: pairs.as_mut_ptr(),
            kp,
            rows: LazyBlocks::new((x, norm), (m, k), block_rows),
        }
    }

    /// The pairs of row 0 on, once the block holding `rows` (which lie in one block) is converted.
    fn ready(&self, rows: &std::ops::Range<usize>) -> *const u32 {
        let kp = self.kp;
        self.rows.ready(rows, |block, i, s| {
            // SAFETY: this block's groups of pairs, which no other task touches until the
            // block is prepared (blocks start on tile groups).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.pairs.add(block.first * kp),
                    block.count.next_multiple_of(TILE_ROWS) * kp,
                )
            };
            let group = &mut dst[(i / TILE_ROWS) * TILE_ROWS * kp..];
            // Zero past the row's end: padding pairs meet zero weights, but stale NaNs there
            // would not vanish.
            let row = &mut group[(i % TILE_ROWS) * KB..];
            crate::bf16_gemm::convert_row_into_blocks(s, row, B_TILE, kp / KB);
        });
        self.pairs
    }
}

impl PanelKernel for PackedAmxBf16 {
    type Rows = LazyPairs;

    fn packed_columns(&self) -> usize {
        self.n
    }

    fn panel_width(&self) -> usize {
        NR
    }

    /// # Safety
    /// As the trait's; [`available`] said yes; `a` holds `rows.end` rounded up to [`MR`] rows.
    unsafe fn block(
        &self,
        a: &LazyPairs,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        residual: *const f32,
        out: BlockOut,
    ) {
        #[cfg(target_arch = "x86_64")]
        crate::amx::with_tiles(|| {
            let (n, kp) = (self.n, self.kp);
            let a = a.ready(&rows);
            let mut acc = crate::amx::Accumulators([0.0; MR * NR]);
            for p in panels {
                let b = self.data.as_ptr().add(p * kp * NR) as *const u8;
                let b_tiles = (b, b.add(B_TILE * 4), TILE_BYTES, 2 * B_TILE * 4);
                let col = p * NR;
                let cols = NR.min(n - col);
                let mut r = rows.start;
                while r < rows.end {
                    let mr = MR.min(rows.end - r);
                    let a0 = a.add(r * kp) as *const u8;
                    let a_tiles = (a0, a0.add(TILE_ROWS * kp * 4), TILE_BYTES, B_TILE * 4);
                    let t = out.tile((r, col, cols), n, bias, residual);
                    if (mr, cols) == (MR, NR) && t.bias.is_null() {
                        // A whole block with no bias: the tiles store straight into the output
                        // (most of `Wqkv`, the gated `Wi`, and with the residual loaded into
                        // the accumulators first, the two `Wo`s), not through a copy.
                        let dst = (t.c, t.c.add(TILE_ROWS * t.ldc), t.ldc * 4);
                        if t.residual.is_null() {
                            crate::amx::product_bf16(a_tiles, b_tiles, kp / KB, dst);
                        } else {
                            let res = (t.residual, t.residual.add(TILE_ROWS * t.ldc), t.ldc * 4);
                            crate::amx::load_accumulators(res);
                            crate::amx::product_bf16_onto(a_tiles, b_tiles, kp / KB, dst);
                        }
                    } else {
                        crate::amx::product_bf16(a_tiles, b_tiles, kp / KB, acc.destination());
                        x86::write_tile(&acc, mr, t);
                    }
                    r += mr;
                }
            }
        });
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a, rows, panels, bias, residual, out);
    }
}

impl PanelGemm for PackedAmxBf16 {
    fn shape(&self) -> (usize, usize, bool) {
        (self.n, self.k, self.gated)
    }

    fn runs_here(&self) -> bool {
        available()
    }

    unsafe fn write_prepared(
        &self,
        rows: (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        with_thread_buffer(&PAIRS, |a| self.write_with(a, rows, m, bias, residual, out));
    }

    /// Rows are normalized as each block is converted.
    fn normalizes_rows(&self) -> bool {
        true
    }
}

thread_local! {
    /// The activations as bf16 pairs (tile-major, on cache lines), reused across calls from one
    /// thread.
    static PAIRS: std::cell::RefCell<AlignedVec<u32>> = std::cell::RefCell::new(AlignedVec::default());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use crate::amx::Accumulators;
    use crate::packed_gemm::{avx512, Tile};
    use std::arch::x86_64::*;

    /// The first `rows` rows and `t.cols` columns of `acc`, plus bias and residual, to `t`.
    ///
    /// # Safety
    /// `t` covers `rows` rows of `t.cols <= NR` columns; the CPU has avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn write_tile(acc: &Accumulators<f32>, rows: usize, t: Tile) {
        for col in (0..t.cols).step_by(16) {
            let mask = avx512::lane_mask(t.cols - col);
            let bias = avx512::bias(&t, col, mask);
            for r in 0..rows {
                let y = _mm512_add_ps(_mm512_load_ps(acc.0.as_ptr().add(r * NR + col)), bias);
                avx512::store_row(&t, (r, col), mask, y);
            }
        }
    }
}
