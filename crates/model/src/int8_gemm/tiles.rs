//! The int8 product on AMX tiles: `tdpbssd` multiplies signed bytes into exact i32 sums, so the
//! same packed weight and quantized rows as the AVX2 kernel give the same sums, and the same
//! f32 epilogue (`sum · (t · s) + bias + residual`) the same outputs, bit for bit.
//!
//! A panel of the weight is [`NR`] = 16 columns of groups of four bytes: 16 groups of it are one
//! B tile (1 KiB, contiguous). The micro-kernel takes two adjacent panels (32 columns) and 32
//! rows of quantized activations (two A tiles of 64 bytes of k per step).

use super::{LazyRows, PackedI8, NR};
use crate::amx::{Accumulators, BLOCK, TILE_BYTES, TILE_ROWS};
use crate::packed_gemm::BlockOut;

/// Whether the CPU and OS run the tiles (and AVX-512 for the epilogue).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::amx::available("amx-int8") && is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows `rows` of the product over the columns of `pairs` (pairs of panels), as
/// [`PanelKernel::block`](crate::packed_gemm::PanelKernel::block).
///
/// # Safety
/// As that; [`available`] said yes; `w` is packed for tiles and `a` quantized for them (rows
/// padded to [`BLOCK`]).
pub(super) unsafe fn block(
    w: &PackedI8,
    a: &LazyRows,
    rows: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
    (bias, residual): (Option<&[f32]>, *const f32),
    out: BlockOut,
) {
    #[cfg(target_arch = "x86_64")]
    crate::amx::with_tiles(|| {
        let panel_bytes = w.groups * NR * 4;
        let b_tile_bytes = TILE_ROWS * NR * 4;
        let mut acc = Accumulators([0i32; BLOCK * BLOCK]);
        for pair in pairs {
            let b0 = w.data.as_ptr().add(2 * pair * panel_bytes) as *const u8;
            let b_tiles = (b0, b0.add(panel_bytes), TILE_BYTES, b_tile_bytes);
            let col = pair * BLOCK;
            let cols = BLOCK.min(w.n - col);
            let mut r = rows.start;
            while r < rows.end {
                let mr = BLOCK.min(rows.end - r);
                let a0 = a.values.add(r * a.stride) as *const u8;
                let a_tiles = (a0, a0.add(TILE_ROWS * a.stride), a.stride, TILE_BYTES);
                crate::amx::product_i8(a_tiles, b_tiles, w.groups / 16, acc.destination());
                let t = out.tile((r, col, cols), w.n, bias, residual);
                let scales = (a.scales.add(r).cast_const(), w.scales.as_ptr().add(col));
                x86::write_tile(&acc, mr, scales, t);
                r += mr;
            }
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, a, rows, pairs, bias, residual, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::amx::{Accumulators, BLOCK};
    use crate::packed_gemm::{avx512, Tile};

    /// `y = sum · (t · s) + bias (+ residual)` for the first `rows` rows and `t.cols` columns
    /// of `acc`, in the AVX2 kernel's order of operations.
    ///
    /// # Safety
    /// `t` covers `rows` rows of `t.cols <= 32` columns; `row_scales` has `rows` scales and
    /// `col_scales` 32; the CPU has avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn write_tile(
        acc: &Accumulators<i32>,
        rows: usize,
        (row_scales, col_scales): (*const f32, *const f32),
        t: Tile,
    ) {
        for col in (0..t.cols).step_by(16) {
            let mask = avx512::lane_mask(t.cols - col);
            let s = _mm512_loadu_ps(col_scales.add(col));
            let bias = avx512::bias(&t, col, mask);
            for r in 0..rows {
                let sums = _mm512_load_si512(acc.0.as_ptr().add(r * BLOCK + col) as *const _);
                let y = avx512::dequantize(sums, *row_scales.add(r), s, bias);
                avx512::store_row(&t, (r, col), mask, y);
            }
        }
    }
}
