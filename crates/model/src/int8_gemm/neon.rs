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
//! CPUs with the int8 matrix-multiply extension (Armv8.6 I8MM: Graviton 3 and 4, Neoverse V1,
//! V2, N2 and later) run [`kernel_i8mm`] instead: `smmla` multiplies a 2 × 8 block of bytes by
//! the transpose of another into a 2 × 2 block of exact i32 sums, 32 products per instruction
//! where `sdot` takes 16, at the same rate there (`llvm-mca-19`'s V1, V2 and N2 models: four,
//! four and two a cycle). Its packing holds each pair of columns' eight features side by side
//! ([`place_panel`](super::place_panel) with 8-byte pieces), and it pairs rows as it loads them.
//! Both give the same sums, so the same outputs bit for bit.
//!
//! Not timed: no development machine has been ARM; the tests run both under qemu-user
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

/// Whether the CPU has the int8 matrix-multiply instructions (and is aarch64).
pub(super) fn i8mm_available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("i8mm")
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
pub(super) use arm::{kernel, kernel_i8mm};

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

    /// `acc` plus `rows · columnsᵀ`: `rows` holds two rows' eight bytes (row 0 in the low
    /// half), `columns` two columns' eight; `acc` is the 2 × 2 block `[r0·c0, r0·c1, r1·c0,
    /// r1·c1]`.
    #[inline(always)]
    unsafe fn smmla(acc: int32x4_t, rows: int8x16_t, columns: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        std::arch::asm!(
            "smmla {acc:v}.4s, {x:v}.16b, {w:v}.16b",
            acc = inout(vreg) acc,
            x = in(vreg) rows,
            w = in(vreg) columns,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }

    /// Pairs of columns per panel.
    const COLUMN_PAIRS: usize = NR / 2;

    /// One chunk of eight input features: each pair of rows (`x[pair]`) against the panel's
    /// chunk at `panel` (per pair of columns 16 bytes: the first column's eight, then the
    /// second's).
    #[inline(always)]
    unsafe fn chunk(
        acc: &mut [[int32x4_t; COLUMN_PAIRS]; 2],
        x: &[int8x16_t; 2],
        pairs: usize,
        panel: *const i8,
    ) {
        let w: [int8x16_t; COLUMN_PAIRS] = std::array::from_fn(|p| vld1q_s8(panel.add(16 * p)));
        for (acc, &x) in acc.iter_mut().zip(x).take(pairs) {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = smmla(*acc, x, w);
            }
        }
    }

    /// [`kernel`] on `smmla`, from the 8-byte panel layout: `R` (at most 4) rows in pairs, the
    /// second row of an odd last pair zero.
    ///
    /// # Safety
    /// As [`kernel`]; the CPU has I8MM ([`super::i8mm_available`]); `b.groups` is even.
    #[target_feature(enable = "neon,i8mm")]
    pub(in crate::int8_gemm) unsafe fn kernel_i8mm<const R: usize>(a: &Lhs, b: &Rhs, t: Tile) {
        let pairs = R.div_ceil(2);
        let mut acc = [[vdupq_n_s32(0); COLUMN_PAIRS]; 2];
        let row = |r: usize, g: usize| a.values.add(r * a.stride + 4 * g);
        let panel = |g: usize| b.data.add(g * NR * 4);
        // 16 bytes of a row, or zeros past the tile's rows.
        let load = |r: usize, g: usize| match r < R {
            true => vld1q_s8(row(r, g)),
            false => vdupq_n_s8(0),
        };
        // Sixteen features per load of each row: the pairs' low halves are the first chunk,
        // their high halves the second.
        let whole = b.groups / 4 * 4;
        for g in (0..whole).step_by(4) {
            let (mut low, mut high) = ([vdupq_n_s8(0); 2], [vdupq_n_s8(0); 2]);
            for pair in 0..pairs {
                let first = vreinterpretq_s64_s8(load(2 * pair, g));
                let second = vreinterpretq_s64_s8(load(2 * pair + 1, g));
                low[pair] = vreinterpretq_s8_s64(vzip1q_s64(first, second));
                high[pair] = vreinterpretq_s8_s64(vzip2q_s64(first, second));
            }
            chunk(&mut acc, &low, pairs, panel(g));
            chunk(&mut acc, &high, pairs, panel(g + 2));
        }
        if whole < b.groups {
            // The last eight features (groups are even).
            let half = |r: usize| match r < R {
                true => vld1_s8(row(r, whole)),
                false => vdup_n_s8(0),
            };
            let x = std::array::from_fn(|pair| vcombine_s8(half(2 * pair), half(2 * pair + 1)));
            chunk(&mut acc, &x, pairs, panel(whole));
        }
        // Back to rows: a row's columns 4v..4v + 4 are the halves of two 2 × 2 blocks.
        let rows: [[int32x4_t; VECTORS]; R] = std::array::from_fn(|r| {
            let blocks = &acc[r / 2];
            std::array::from_fn(|v| {
                let (left, right) = (
                    vreinterpretq_s64_s32(blocks[2 * v]),
                    vreinterpretq_s64_s32(blocks[2 * v + 1]),
                );
                vreinterpretq_s32_s64(match r % 2 {
                    0 => vzip1q_s64(left, right),
                    _ => vzip2q_s64(left, right),
                })
            })
        });
        store_rows::<R>(&rows, a, b, t);
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
