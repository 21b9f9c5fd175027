//! The int8 products on 512-bit vectors: `vpdpbusd` (AVX512-VNNI: Ice Lake, Cascade Lake, Zen
//! 4/5, and Xeons with AMX when the tiles are off) and, on AVX-512 CPUs without VNNI (Skylake-SP
//! and -X), its AVX512-BW stand-in, `vpmaddubsw` + `vpmaddwd` by ones + `vpaddd`, exact with
//! the 7-bit weights that kernel is packed with (as the AVX2 kernel: see the parent module).
//! Both share the group layout, the register tiling, the block driver and the epilogue below
//! ([`Step`]).
//!
//! As in the AVX-VNNI kernel, the activations go in unsigned, offset by 128 (`p + 128`, a flip
//! of the byte's top bit, written so by the quantization), and the offset comes back off
//! exactly: `Σ (p + 128) · q = Σ p · q + 128 · Σ q`, with `Σ q` per column summed at load. One
//! 16-lane vector covers a panel of [`NR`] = 16 columns; a group of four inputs costs one
//! broadcast per row and one step per row and panel. The sums are the other kernels' exactly
//! (the 32-bit additions and the subtraction wrap modulo 2³², so the difference is exact
//! wherever `Σ p · q` itself fits in i32: k < 133,000), and the epilogue does their f32
//! operations in the same order, so the outputs are the same bit for bit for the same weights.

use super::{LazyRows, PackedI8, NR};
use crate::packed_gemm::BlockOut;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512i, _mm512_add_epi32, _mm512_dpbusd_epi32, _mm512_madd_epi16, _mm512_maddubs_epi16,
    _mm512_set1_epi16,
};

/// The product one of the two 512-bit kernels runs per group of four input features.
pub(super) trait Step {
    /// The step is `vpdpbusd`, so its entry point enables AVX512-VNNI (the other is compiled
    /// without it).
    const VNNI: bool;

    /// `acc` plus, per 32-bit lane, the four products of the broadcast offset activations
    /// (unsigned bytes) with a group's weights (signed bytes).
    #[cfg(target_arch = "x86_64")]
    unsafe fn accumulate(acc: __m512i, activations: __m512i, weights: __m512i) -> __m512i;
}

/// `vpdpbusd`.
pub(super) struct Vnni;

/// `vpmaddubsw` (pairs of unsigned × signed bytes into i16, saturating), `vpmaddwd` by ones
/// (pairs of those into i32), `vpaddd`: `vpdpbusd`'s sums wherever no pair sum saturates,
/// which 7-bit weights guarantee (`2 · 255 · 63 = 32,130`). Three instructions per 64 byte
/// products where the 16-bit scheme this replaced (activations as i16, weights widened by
/// `vpmovsxbw` as they loaded, until 2026-12-06) took a `vpmaddwd` and a `vpaddd` per 32, and a
/// widening per weight load: per four input features of the 12 × 2 tile 72 vector instructions
/// against 100 (and 12 broadcasts against 24), all on ports 0 and 5 of a Skylake-SP with two
/// FMA units.
pub(super) struct MaddUbs;

impl Step for Vnni {
    const VNNI: bool = true;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate(acc: __m512i, activations: __m512i, weights: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, activations, weights)
    }
}

impl Step for MaddUbs {
    const VNNI: bool = false;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate(acc: __m512i, activations: __m512i, weights: __m512i) -> __m512i {
        let pairs = _mm512_maddubs_epi16(activations, weights);
        _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)))
    }
}

/// Rows per micro-kernel call.
pub(super) const MR: usize = 12;
/// Panels (of [`NR`] columns) per micro-kernel call: `MR × PANELS` = 24 accumulators and
/// `PANELS` weight vectors of the 32 registers, so each broadcast of four activations feeds two
/// `vpdpbusd`. A call's 12 rows (9 KiB at k = 768) stay in L1 while the block's panels stream
/// past them from L2, two at a time (2 × 12 KiB); the other order, a pair of panels held while
/// the block's rows stream past, measured level (`gemm_bench`, 2026-12-03). On Zen 4
/// (`gemm_bench`, base and -large shapes): 8 rows × 1 panel, a broadcast per product, 390-510
/// GOP/s; 6 × 4 panels 270-310; 12 × 2 625-760.
const PANELS: usize = 2;

/// Whether the CPU has the instructions of the [`MaddUbs`] kernel (AVX-512 F and BW) and, with
/// `vnni`, of the `vpdpbusd` one (AVX512-VNNI too).
pub(super) fn available(vnni: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && (!vnni || is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = vnni;
        false
    }
}

/// Rows `rows` of the product over the columns of `panels`, as
/// [`PanelKernel::block`](crate::packed_gemm::PanelKernel::block), on `S`'s product; `a` holds
/// the activations offset to unsigned ([`super::RowBytes::Offset`]).
///
/// # Safety
/// As that; [`available`] said yes for `S`.
pub(super) unsafe fn block<S: Step>(
    w: &PackedI8,
    a: &LazyRows,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    (bias, residual): (Option<&[f32]>, *const f32),
    out: BlockOut,
) {
    let panel_bytes = w.groups * NR * 4;
    let mut r = rows.start;
    while r < rows.end {
        let mr = MR.min(rows.end - r);
        let mut p = panels.start;
        while p < panels.end {
            let np = PANELS.min(panels.end - p);
            let col = p * NR;
            let operands = x86::Operands {
                values: a.values.add(r * a.stride) as *const u8,
                groups: w.groups,
                stride: a.stride,
                row_scales: a.scales.add(r),
                weights: w.data.as_ptr().add(p * panel_bytes),
                panel_bytes,
                col_scales: w.scales.as_ptr().add(col),
                column_sums: w.column_sums.as_ptr().add(col),
            };
            let t = out.tile((r, col, (np * NR).min(w.n - col)), w.n, bias, residual);
            #[cfg(target_arch = "x86_64")]
            x86::kernel_for::<S>(mr, np)(&operands, t);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (operands, t);
            p += np;
        }
        r += mr;
    }
}

mod x86 {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    #[cfg(target_arch = "x86_64")]
    use super::{Step, NR};
    #[cfg(target_arch = "x86_64")]
    use crate::packed_gemm::{avx512, Tile};

    /// A micro-kernel's rows of activations and panels of the weight.
    pub(super) struct Operands {
        pub values: *const u8,
        /// Groups of four input features.
        pub groups: usize,
        pub stride: usize,
        pub row_scales: *const f32,
        /// The first panel; the next ones follow `panel_bytes` apart.
        pub weights: *const i8,
        pub panel_bytes: usize,
        pub col_scales: *const f32,
        pub column_sums: *const i32,
    }

    #[cfg(target_arch = "x86_64")]
    type Kernel = unsafe fn(&Operands, Tile);

    /// The micro-kernel for `rows` rows (1..=MR) and `panels` panels (1..=PANELS).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn kernel_for<S: Step>(rows: usize, panels: usize) -> Kernel {
        const _: () = assert!(super::MR == 12 && super::PANELS == 2);
        macro_rules! by_rows {
            ($kernel:ident, $c:literal) => {
                match rows {
                    12 => $kernel::<12, $c> as Kernel,
                    11 => $kernel::<11, $c>,
                    10 => $kernel::<10, $c>,
                    9 => $kernel::<9, $c>,
                    8 => $kernel::<8, $c>,
                    7 => $kernel::<7, $c>,
                    6 => $kernel::<6, $c>,
                    5 => $kernel::<5, $c>,
                    4 => $kernel::<4, $c>,
                    3 => $kernel::<3, $c>,
                    2 => $kernel::<2, $c>,
                    _ => $kernel::<1, $c>,
                }
            };
        }
        match (S::VNNI, panels) {
            (true, 2) => by_rows!(kernel_vnni, 2),
            (true, _) => by_rows!(kernel_vnni, 1),
            (false, 2) => by_rows!(kernel_maddubs, 2),
            (false, _) => by_rows!(kernel_maddubs, 1),
        }
    }

    /// [`kernel`] on `vpdpbusd`.
    ///
    /// # Safety
    /// As [`kernel`]'s; the CPU has avx512f, avx512bw and avx512vnni.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel_vnni<const R: usize, const C: usize>(o: &Operands, t: Tile) {
        kernel::<super::Vnni, R, C>(o, t)
    }

    /// [`kernel`] on [`super::MaddUbs`], compiled without VNNI, which the CPUs that take this
    /// kernel lack (LLVM may fuse such a sequence into VNNI's instructions where enabled).
    ///
    /// # Safety
    /// As [`kernel`]'s; the CPU has avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn kernel_maddubs<const R: usize, const C: usize>(o: &Operands, t: Tile) {
        kernel::<super::MaddUbs, R, C>(o, t)
    }

    /// `c[R, cols] = t · s · (p[R, 4 · groups] · q_panelsᵀ) (+ bias) (+ residual)` for `C`
    /// panels of 16 columns: one broadcast of each row's next four bytes per `C` products.
    ///
    /// # Safety
    /// The pointers cover what the shapes say; `t.cols <= 16 · C`; inlined into a function
    /// with `S`'s instructions (the CPU has them).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn kernel<S: Step, const R: usize, const C: usize>(o: &Operands, t: Tile) {
        t.prefetch_residual(R);
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        for g in 0..o.groups {
            let mut q = [_mm512_setzero_si512(); C];
            for (c, q) in q.iter_mut().enumerate() {
                *q = _mm512_loadu_si512(o.weights.add(c * o.panel_bytes + g * 4 * NR).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // Already offset to unsigned by the quantization.
                let at = o.values.add(r * o.stride + 4 * g) as *const i32;
                let activations = _mm512_set1_epi32(at.read_unaligned());
                for (acc, &q) in acc.iter_mut().zip(&q) {
                    *acc = S::accumulate(*acc, activations, q);
                }
            }
        }
        for c in 0..C {
            let col = 16 * c;
            if col >= t.cols {
                break;
            }
            let mask = avx512::lane_mask(t.cols - col);
            let sums = _mm512_loadu_si512(o.column_sums.add(col) as *const _);
            let offset = _mm512_slli_epi32::<7>(sums);
            let s = _mm512_loadu_ps(o.col_scales.add(col));
            let bias = avx512::bias(&t, col, mask);
            for (r, acc) in acc.iter().enumerate() {
                let sums = _mm512_sub_epi32(acc[c], offset);
                let y = avx512::dequantize(sums, *o.row_scales.add(r), s, bias);
                avx512::store_row(&t, (r, col), mask, y);
            }
        }
    }
}
