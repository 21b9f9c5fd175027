//! The int8 product on 64-bit ARM (aarch64) with the dot-product extension (Armv8.2 DotProd:
//! AWS Graviton 2 and later, Ampere Altra, Neoverse N1/V1 and later, Apple M1 and later).
//! `sdot` sums four signed × signed byte products into each i32 lane of a 128-bit vector,
//! exactly, so the activations go in signed (no offset to take back off, as on the tiles) and
//! the weights in 8 bits.
//!
//! The packing is the vector kernels' group layout: per group of four input features a panel
//! holds its [`NR`] = 16 columns' four bytes side by side, four vectors of four columns. `sdot`'s
//! by-element form multiplies each of them by one 32-bit lane of another vector, so one 16-byte
//! load of a row serves four groups: per four groups of the 4-row tile, 16 weight loads, 4 row
//! loads and 64 `sdot`. The first version broadcast each group of a row (`ld1r`, 6 rows × 16
//! columns): those broadcasts issue on the vector pipes beside the `sdot`, and `llvm-mca-19`
//! put its loop at 15 cycles per group of 24 `sdot` on Neoverse N1 and 7.5 on V1 and V2 (80% of
//! `sdot`'s rate); this loop at 8 cycles per 16 on N1, 4 on V1 (all of it). Neither is timed.
//!
//! Rust's `sdot` intrinsics are not stable yet (`stdarch_neon_dotprod`), so the instruction is
//! one line of inline assembly; the rest is stable NEON intrinsics. The epilogue does the other
//! kernels' f32 operations in their order (`sum · (t · s) + bias (+ residual)`), so for the
//! same 8-bit weights the outputs are the AVX-VNNI, AVX512-VNNI and AMX kernels' bit for bit.
//!
//! Not timed: no development machine has been ARM; the tests run it under qemu-user
//! (`scripts/check-aarch64.sh`).

/// Whether the CPU has the dot-product instructions (and is aarch64).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// Rows per micro-kernel call: 4 × 4 accumulators, 4 rows of 16 activations and 4 weight
/// vectors take 24 of the 32 registers (6 rows would need 34).
pub(super) const MR: usize = 4;

#[cfg(target_arch = "aarch64")]
pub(super) use arm::kernel;

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::super::{Lhs, Rhs, NR};
    use crate::packed_gemm::Tile;

    /// Vectors of four columns per panel.
    const VECTORS: usize = NR / 4;

    /// `acc` plus, per i32 lane `j`, the four products of `weights`' bytes `4j..4j + 4` with
    /// `activations`' bytes `4 · LANE..4 · LANE + 4` (`sdot`'s by-element form).
    #[inline(always)]
    unsafe fn sdot_lane<const LANE: i32>(
        acc: int32x4_t,
        weights: int8x16_t,
        activations: int8x16_t,
    ) -> int32x4_t {
        let mut acc = acc;
        std::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) weights,
            x = in(vreg) activations,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }

    /// One group of four input features (lane `LANE` of each row's `x`) against a panel's
    /// group at `panel`.
    #[inline(always)]
    unsafe fn group<const R: usize, const LANE: i32>(
        acc: &mut [[int32x4_t; VECTORS]; R],
        x: &[int8x16_t; R],
        panel: *const i8,
    ) {
        let w: [int8x16_t; VECTORS] = std::array::from_fn(|v| vld1q_s8(panel.add(16 * v)));
        for (acc, &x) in acc.iter_mut().zip(x) {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = sdot_lane::<LANE>(*acc, w, x);
            }
        }
    }

    /// `c[R, cols] = t · s · (p[R, 4 · groups] · q_panelᵀ) (+ bias) (+ residual)` for one panel
    /// of [`NR`] columns, `R` at most [`MR`](super::MR).
    ///
    /// # Safety
    /// Pointers cover what the shapes say; `t.cols <= NR`; the CPU has DotProd
    /// ([`super::available`]).
    #[target_feature(enable = "neon,dotprod")]
    pub(in crate::int8_gemm) unsafe fn kernel<const R: usize>(a: &Lhs, b: &Rhs, t: Tile) {
        let mut acc = [[vdupq_n_s32(0); VECTORS]; R];
        let row = |r: usize, g: usize| a.values.add(r * a.stride + 4 * g);
        let panel = |g: usize| b.data.add(g * NR * 4);
        // Four groups per load of a row's 16 activations; the rest one broadcast group at a
        // time (a 16-byte load there would read past the row).
        let whole = b.groups / 4 * 4;
        for g in (0..whole).step_by(4) {
            let x: [int8x16_t; R] = std::array::from_fn(|r| vld1q_s8(row(r, g)));
            group::<R, 0>(&mut acc, &x, panel(g));
            group::<R, 1>(&mut acc, &x, panel(g + 1));
            group::<R, 2>(&mut acc, &x, panel(g + 2));
            group::<R, 3>(&mut acc, &x, panel(g + 3));
        }
        for g in whole..b.groups {
            let x: [int8x16_t; R] = std::array::from_fn(|r| {
                vreinterpretq_s8_s32(vdupq_n_s32((row(r, g) as *const i32).read_unaligned()))
            });
            group::<R, 0>(&mut acc, &x, panel(g));
        }
        store_rows::<R>(&acc, a, b, t);
    }

    /// The rows' i32 sums to f32, `sum · (t · s) + bias (+ residual)`, written to the tile: four
    /// columns at a time where the panel is whole, one at a time in a partial last panel.
    #[inline(always)]
    unsafe fn store_rows<const R: usize>(
        acc: &[[int32x4_t; VECTORS]; R],
        a: &Lhs,
        b: &Rhs,
        t: Tile,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            let row_scale = *a.scales.add(r);
            let out = t.c.add(r * t.ldc);
            let residual = (!t.residual.is_null()).then(|| t.residual.add(r * t.ldc));
            if t.cols == NR {
                for (v, &sums) in acc.iter().enumerate() {
                    let col = 4 * v;
                    let scale = vmulq_f32(vdupq_n_f32(row_scale), vld1q_f32(b.scales.add(col)));
                    let bias = if t.bias.is_null() {
                        vdupq_n_f32(0.0)
                    } else {
                        vld1q_f32(t.bias.add(col))
                    };
                    let mut y = vaddq_f32(vmulq_f32(vcvtq_f32_s32(sums), scale), bias);
                    if let Some(residual) = residual {
                        y = vaddq_f32(y, vld1q_f32(residual.add(col)));
                    }
                    vst1q_f32(out.add(col), y);
                }
                continue;
            }
            let mut sums = [0i32; NR];
            for (v, &s) in acc.iter().enumerate() {
                vst1q_s32(sums.as_mut_ptr().add(4 * v), s);
            }
            for (col, &sum) in sums.iter().enumerate().take(t.cols) {
                let bias = if t.bias.is_null() {
                    0.0
                } else {
                    *t.bias.add(col)
                };
                let mut y = sum as f32 * (row_scale * *b.scales.add(col)) + bias;
                if let Some(residual) = residual {
                    y += *residual.add(col);
                }
                *out.add(col) = y;
            }
        }
    }
}
