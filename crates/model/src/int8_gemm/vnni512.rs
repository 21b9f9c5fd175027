//! The int8 product on 512-bit VNNI (`vpdpbusd` on zmm: Ice Lake, Cascade Lake, Zen 4/5, and
//! Xeons with AMX when the tiles are off).
//!
//! AVX-512 has no byte sign instruction (`vpsignb`), so instead of the AVX2 kernel's sign trick
//! the activations go in unsigned, offset by 128 (`p + 128`, a flip of the byte's top bit), and
//! the offset comes back off exactly: `Σ (p + 128) · q = Σ p · q + 128 · Σ q`, with `Σ q` per
//! column summed at load. One 16-lane vector covers a whole panel of [`NR`] = 16 columns, so a
//! group of four inputs costs one broadcast and one `vpdpbusd` per row. The sums are the other
//! kernels' exactly (|Σ (p + 128) · q| ≤ 255 · 127 · k < 2³¹ for k < 66,000), and the epilogue
//! does their f32 operations in the same order, so the outputs are the same bit for bit.

use super::{PackedI8, QuantizedRows, NR};
use crate::packed_gemm::BlockOut;

/// Rows per micro-kernel call (eight accumulators of the 32 vector registers).
const MR: usize = 8;

/// Whether the CPU has the instructions (AVX-512 F and BW, VNNI).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows `rows` of the product over the columns of `panels`, as
/// [`PanelKernel::block`](crate::packed_gemm::PanelKernel::block).
///
/// # Safety
/// As that; [`available`] said yes.
pub(super) unsafe fn block(
    w: &PackedI8,
    a: &QuantizedRows,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    (bias, residual): (Option<&[f32]>, *const f32),
    out: BlockOut,
) {
    let mut r = rows.start;
    while r < rows.end {
        let mr = MR.min(rows.end - r);
        for p in panels.clone() {
            let col = p * NR;
            let operands = x86::Operands {
                values: a.values.as_ptr().add(r * a.stride),
                stride: a.stride,
                row_scales: a.scales.as_ptr().add(r),
                weights: w.data.as_ptr().add(p * w.groups * NR * 4),
                groups: w.groups,
                col_scales: w.scales.as_ptr().add(col),
                column_sums: w.column_sums.as_ptr().add(col),
            };
            let t = out.tile((r, col, NR.min(w.n - col)), w.n, bias, residual);
            #[cfg(target_arch = "x86_64")]
            {
                let kernel = match mr {
                    8 => x86::kernel::<8>,
                    7 => x86::kernel::<7>,
                    6 => x86::kernel::<6>,
                    5 => x86::kernel::<5>,
                    4 => x86::kernel::<4>,
                    3 => x86::kernel::<3>,
                    2 => x86::kernel::<2>,
                    _ => x86::kernel::<1>,
                };
                kernel(&operands, t);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (operands, t);
        }
        r += mr;
    }
}

mod x86 {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    #[cfg(target_arch = "x86_64")]
    use crate::packed_gemm::{avx512, Tile};

    /// A micro-kernel's rows of quantized activations and panel of the weight.
    pub(super) struct Operands {
        pub values: *const i8,
        pub stride: usize,
        pub row_scales: *const f32,
        pub weights: *const i8,
        pub groups: usize,
        pub col_scales: *const f32,
        pub column_sums: *const i32,
    }

    /// `c[R, cols] = t · s · (p[R, 4 · groups] · q_panelᵀ) (+ bias) (+ residual)` for one panel.
    ///
    /// # Safety
    /// The pointers cover what the shapes say; `t.cols <= 16`; the CPU has avx512f, avx512bw
    /// and avx512vnni.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn kernel<const R: usize>(o: &Operands, t: Tile) {
        let mut acc = [_mm512_setzero_si512(); R];
        for g in 0..o.groups {
            let q = _mm512_loadu_si512(o.weights.add(g * 64) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let p = (o.values.add(r * o.stride + 4 * g) as *const u32).read_unaligned();
                // p + 128 per byte: the top bit flipped.
                let unsigned = _mm512_set1_epi32((p ^ 0x8080_8080) as i32);
                *acc = _mm512_dpbusd_epi32(*acc, unsigned, q);
            }
        }
        let mask = avx512::lane_mask(t.cols);
        let offset = _mm512_slli_epi32::<7>(_mm512_loadu_si512(o.column_sums as *const _));
        let s = _mm512_loadu_ps(o.col_scales);
        let bias = avx512::bias(&t, 0, mask);
        for (r, acc) in acc.iter().enumerate() {
            let sums = _mm512_sub_epi32(*acc, offset);
            let y = avx512::dequantize(sums, *o.row_scales.add(r), s, bias);
            avx512::store_row(&t, (r, 0), mask, y);
        }
    }
}
