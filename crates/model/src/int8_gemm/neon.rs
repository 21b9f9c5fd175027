//! The int8 product on 64-bit ARM (aarch64) with the dot-product extension (Armv8.2 DotProd:
//! AWS Graviton 2 and later, Ampere Altra, Neoverse N1/V1 and later, Apple M1 and later).
//! `sdot` sums four signed × signed byte products into each i32 lane of a 128-bit vector,
//! exactly, so the activations go in signed (no offset to take back off, as on the tiles) and
//! the weights in 8 bits.
//!
//! The packing is the vector kernels' group layout: per group of four input features a panel
//! holds its [`NR`] = 16 columns' four bytes side by side, four vectors of four columns. A row's
//! four activations of the group, broadcast to every lane (`ld1r`), multiply each of them: per
//! group of the 6-row tile, 4 weight loads, 6 broadcasts and 24 `sdot` into 24 accumulators,
//! which with the 4 weight vectors and the broadcast take 29 of the 32 vector registers.
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

#[cfg(target_arch = "aarch64")]
pub(super) use arm::kernel;

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::super::{Lhs, Rhs, NR};
    use crate::packed_gemm::Tile;

    /// Vectors of four columns per panel.
    const VECTORS: usize = NR / 4;

    /// `acc` plus, per i32 lane, the four products of `weights`' and `activations`' bytes there.
    #[inline(always)]
    unsafe fn sdot(acc: int32x4_t, weights: int8x16_t, activations: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        std::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) weights,
            x = in(vreg) activations,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }

    /// `c[R, cols] = t · s · (p[R, 4 · groups] · q_panelᵀ) (+ bias) (+ residual)` for one panel
    /// of [`NR`] columns, `R` at most 6.
    ///
    /// # Safety
    /// Pointers cover what the shapes say; `t.cols <= NR`; the CPU has DotProd
    /// ([`super::available`]).
    #[target_feature(enable = "neon,dotprod")]
    pub(in crate::int8_gemm) unsafe fn kernel<const R: usize>(a: &Lhs, b: &Rhs, t: Tile) {
        let mut acc = [[vdupq_n_s32(0); VECTORS]; R];
        for g in 0..b.groups {
            let panel = b.data.add(g * NR * 4);
            let w: [int8x16_t; VECTORS] = std::array::from_fn(|v| vld1q_s8(panel.add(16 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = a.values.add(r * a.stride + 4 * g) as *const i32;
                let x = vreinterpretq_s8_s32(vdupq_n_s32(at.read_unaligned()));
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = sdot(*acc, w, x);
                }
            }
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
