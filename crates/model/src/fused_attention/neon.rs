//! The f32 attention's register tiles on NEON, multiplying by element.
//!
//! The generic tiles broadcast one value per row and step (a query's feature in QKᵀ, a weight
//! in PV): on aarch64 an `ld1r` per row, which costs a load and, on Neoverse cores, a vector
//! slot beside the `fmla`s. Here each row's next four values come in one vector load and
//! `fmla` takes them by lane, so a step of four issues `R` row loads, the four steps' key (or
//! value) vectors, and only `fmla`s besides. `llvm-mca-19` on the loops as compiled (cycles per
//! 64 `fmla`s, the broadcast tiles first): QKᵀ of 8 rows on Neoverse N1 46.3 → 32.1 (`fmla`'s
//! full rate), V1 25.6 → 16.1; PV of 4 × 4 vectors on N1 41.5 → 32.1, V1 21.6 → 16.1.

use std::arch::aarch64::*;
use std::ops::Range;

use super::simd::{key_step, Tiles};
use crate::simd::Neon;

impl Tiles for Neon {
    /// `R` query rows × two vectors of keys, four head columns per step: each row's four
    /// features in one vector, each feature's key row (two vectors) taken by lane.
    #[inline(always)]
    unsafe fn scores_tile<const R: usize>(
        (q, q_stride, head_dim, kt): (*const f32, usize, usize, *const f32),
        (out, stride): (*mut f32, usize),
        cols: Range<usize>,
    ) {
        let step = key_step::<Neon>();
        assert!(head_dim.is_multiple_of(4) && step == 8);
        for j in cols.step_by(step) {
            let panel = kt.add(j * head_dim);
            let mut acc = [[vdupq_n_f32(0.0); 2]; R];
            for d in (0..head_dim).step_by(4) {
                let x: [float32x4_t; R] =
                    std::array::from_fn(|r| vld1q_f32(q.add(r * q_stride + d)));
                let keys = panel.add(d * step);
                key_lane::<0, R>(&mut acc, &x, keys);
                key_lane::<1, R>(&mut acc, &x, keys.add(step));
                key_lane::<2, R>(&mut acc, &x, keys.add(2 * step));
                key_lane::<3, R>(&mut acc, &x, keys.add(3 * step));
            }
            for (r, a) in acc.iter().enumerate() {
                let o = out.add(r * stride + j);
                vst1q_f32(o, a[0]);
                vst1q_f32(o.add(4), a[1]);
            }
        }
    }

    /// `R` rows × `C` vectors of output columns, four keys per step: each row's four weights
    /// in one vector, each key's value row taken by lane; the keys past the last whole four one
    /// by one.
    #[inline(always)]
    unsafe fn values_tile<const R: usize, const C: usize>(
        (p, p_stride, v, v_stride): (*const f32, usize, *const f32, usize),
        (out, out_stride): (*mut f32, usize),
        keys: Range<usize>,
        first: bool,
        scale: Option<*const f32>,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (c, x) in a.iter_mut().enumerate() {
                    *x = vld1q_f32(out.add(r * out_stride + c * 4));
                }
            }
        }
        let mut j = keys.start;
        while j + 4 <= keys.end {
            let w: [float32x4_t; R] = std::array::from_fn(|r| vld1q_f32(p.add(r * p_stride + j)));
            value_lane::<0, R, C>(&mut acc, &w, v.add(j * v_stride));
            value_lane::<1, R, C>(&mut acc, &w, v.add((j + 1) * v_stride));
            value_lane::<2, R, C>(&mut acc, &w, v.add((j + 2) * v_stride));
            value_lane::<3, R, C>(&mut acc, &w, v.add((j + 3) * v_stride));
            j += 4;
        }
        for j in j..keys.end {
            let w: [float32x4_t; R] =
                std::array::from_fn(|r| vld1q_dup_f32(p.add(r * p_stride + j)));
            value_lane::<0, R, C>(&mut acc, &w, v.add(j * v_stride));
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * out_stride);
            let factor = scale.map(|s| *s.add(r));
            for (c, &x) in a.iter().enumerate() {
                vst1q_f32(o.add(c * 4), factor.map_or(x, |f| vmulq_n_f32(x, f)));
            }
        }
    }
}

/// `acc[r] += x[r][L] · keys[0..8]`: one head feature's products with a tile of eight keys.
#[inline(always)]
unsafe fn key_lane<const L: i32, const R: usize>(
    acc: &mut [[float32x4_t; 2]; R],
    x: &[float32x4_t; R],
    keys: *const f32,
) {
    let (k0, k1) = (vld1q_f32(keys), vld1q_f32(keys.add(4)));
    for (a, &xr) in acc.iter_mut().zip(x) {
        a[0] = vfmaq_laneq_f32::<L>(a[0], k0, xr);
        a[1] = vfmaq_laneq_f32::<L>(a[1], k1, xr);
    }
}

/// `acc[r] += w[r][L] · values[0..4 C]`: one key's value row, weighted for each row.
#[inline(always)]
unsafe fn value_lane<const L: i32, const R: usize, const C: usize>(
    acc: &mut [[float32x4_t; C]; R],
    w: &[float32x4_t; R],
    values: *const f32,
) {
    let vv: [float32x4_t; C] = std::array::from_fn(|c| vld1q_f32(values.add(c * 4)));
    for (a, &wr) in acc.iter_mut().zip(w) {
        for (x, &y) in a.iter_mut().zip(&vv) {
            *x = vfmaq_laneq_f32::<L>(*x, y, wr);
        }
    }
}
