//! Fused elementwise kernels for f32 activations on the CPU.
//!
//! `gelu(input) * gate` of the MLP in one pass over the `Wi` output, with a vectorisable exact-erf
//! GELU (Abramowitz–Stegun 7.1.26 erf, |error| < 1.5e-7, and a polynomial exp), instead of
//! candle's three passes (narrow copy, scalar-libm GELU, multiply).

use rayon::prelude::*;

/// `gelu_erf(wi[:, ..inter]) * wi[:, inter..]` for `wi [t, 2 * inter]`, into `out [t, inter]`.
pub(crate) fn gelu_gate_slices(wi: &[f32], inter: usize, out: &mut [f32]) {
    let two_i = 2 * inter;
    assert_eq!(
        wi.len() / two_i.max(1),
        out.len() / inter.max(1),
        "rows differ"
    );
    out.par_chunks_mut(inter * 16)
        .zip(wi.par_chunks(two_i * 16))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_mut(inter).zip(src.chunks(two_i)) {
                let (input, gate) = s.split_at(inter);
                gelu_gate_row(input, gate, d);
            }
        });
}

/// LayerNorm of each row of `x [t, h]` into `out`: `(x - mean) / sqrt(var + eps) · weight +
/// bias`, with the mean and the (biased) variance in two passes over the row while it is in
/// cache, each summed in 16 lanes (so the compiler vectorises it), as transformers' two-pass
/// variance does rather than `E[x²] - E[x]²`.
pub(crate) fn layer_norm_slices(
    x: &[f32],
    (weight, bias): (&[f32], &[f32]),
    eps: f32,
    out: &mut [f32],
) {
    let h = weight.len();
    assert_eq!(bias.len(), h, "bias is not [{h}]");
    assert_eq!(x.len(), out.len(), "input and output differ");
    out.par_chunks_mut(h * 16)
        .zip(x.par_chunks(h * 16))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_mut(h).zip(src.chunks(h)) {
                layer_norm_row(s, (weight, bias), eps, d);
            }
        });
}

crate::simd::vectorized! {
    /// One row of [`layer_norm_slices`].
    pub(crate) fn layer_norm_row(x: &[f32], params: (&[f32], &[f32]), eps: f32, out: &mut [f32]) =
        layer_norm_row_generic;
}

#[inline(always)]
fn layer_norm_row_generic(x: &[f32], (w, b): (&[f32], &[f32]), eps: f32, out: &mut [f32]) {
    let n = x.len().max(1) as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * w + b;
    }
}

/// `Σ f(x)` in 16 independent lanes, then across them.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `out = gelu(input) · gate`, elementwise, on the CPU's vector instructions: the GELU of
/// [`crate::simd::Isa::gelu`] (FMAs and a reciprocal step where [`gelu_erf`], left to the
/// compiler, took a multiply and an add per polynomial step and two `vdivps`), the last
/// `len % lanes` values by [`gelu_erf`].
pub(crate) fn gelu_gate_row(input: &[f32], gate: &[f32], out: &mut [f32]) {
    // SAFETY: `cpu()` detected its instructions.
    unsafe { gelu_gate_row_on(crate::simd::cpu(), input, gate, out) }
}

/// [`gelu_gate_row`] on the vectors of `isa` (tests run each one the host has).
///
/// # Safety
/// The CPU has `isa`'s instructions.
unsafe fn gelu_gate_row_on(isa: crate::simd::Cpu, input: &[f32], gate: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::{Avx2, Avx512, Cpu};
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(input: &[f32], gate: &[f32], out: &mut [f32]) {
            gelu_gate_vectors::<Avx512>(input, gate, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(input: &[f32], gate: &[f32], out: &mut [f32]) {
            gelu_gate_vectors::<Avx2>(input, gate, out)
        }
        match isa {
            Cpu::Avx512 => return avx512(input, gate, out),
            Cpu::Avx2 => return avx2(input, gate, out),
            Cpu::Neon | Cpu::Other => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa == crate::simd::Cpu::Neon {
        return gelu_gate_vectors::<crate::simd::Neon>(input, gate, out);
    }
    gelu_gate_row_generic(input, gate, out)
}

/// [`gelu_gate_row`] on `S`'s vectors.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn gelu_gate_vectors<S: crate::simd::Isa>(input: &[f32], gate: &[f32], out: &mut [f32]) {
    assert!(gate.len() == input.len() && out.len() == input.len());
    let full = input.len() / S::LANES * S::LANES;
    let (x, g, o) = (input.as_ptr(), gate.as_ptr(), out.as_mut_ptr());
    for i in (0..full).step_by(S::LANES) {
        S::store(
            o.add(i),
            S::mul(S::gelu(S::load(x.add(i))), S::load(g.add(i))),
        );
    }
    gelu_gate_row_generic(&input[full..], &gate[full..], &mut out[full..]);
}

#[inline(always)]
fn gelu_gate_row_generic(input: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(input).zip(gate) {
        *o = gelu_erf(x) * g;
    }
}

/// ln 2 split for the Cody–Waite reduction `r = x - n ln 2` (the high part has few bits, so
/// `n · LN2_HI` is exact), shared by this exp and [`crate::simd::Isa::exp_nonpositive`].
pub(crate) const LN2_HI: f32 = 0.693_145_75;
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// e^r's Taylor coefficients, highest degree first (Horner's order).
pub(crate) const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// Abramowitz–Stegun 7.1.26: `erf(a) ≈ 1 - t · poly(t) · e^(-a²)` with `t = 1 / (1 + ERF_P a)`;
/// `poly`'s coefficients highest degree first. Shared by [`gelu_erf`] and
/// [`crate::simd::Isa::gelu`].
pub(crate) const ERF_P: f32 = 0.327_591_1;
pub(crate) const ERF_POLY: [f32; 5] = [
    1.061_405_4,
    -1.453_152,
    1.421_413_7,
    -0.284_496_74,
    0.254_829_6,
];

/// `poly` (highest degree first) at `x` by Horner's rule.
#[inline(always)]
fn horner<const N: usize>(poly: [f32; N], x: f32) -> f32 {
    poly[1..].iter().fold(poly[0], |p, &c| p * x + c)
}

/// `e^x` for x in about [-87, 88]: Cody–Waite reduction and a degree-6 polynomial (relative
/// error ~2e-7), branch-free so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = horner(EXP_POLY, r);
    // 2^n from n's bits: n is an integer in [-126, 127], so adding 1.5 · 2^23 leaves it in the
    // low mantissa bits. An `as i32` cast would saturate and map NaN to 0 lane by lane, which
    // kept every loop calling this scalar; NaN still propagates through `p`.
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    f32::from_bits(n_bits.wrapping_add(127) << 23) * p
}

/// Exact-form GELU, `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * horner(ERF_POLY, t);
    let erf_abs = 1.0 - poly * exp(-a * a);
    let erf = if z < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// The LayerNorm kernel against an f64 two-pass reference, on rows whose mean is far from
    /// zero (where `E[x²] - E[x]²` in f32 would lose most digits): within 1e-5 relative to the
    /// output's scale, for widths that are and are not multiples of the 16 lanes.
    #[test]
    fn layer_norm_matches_an_f64_reference() {
        for h in [1, 7, 16, 33, 768] {
            let rows = 37;
            let x: Vec<f32> = (0..rows * h)
                .map(|i| 100.0 + ((i * 7919 % 1000) as f32 / 250.0 - 2.0))
                .collect();
            let w: Vec<f32> = (0..h).map(|j| 0.5 + (j % 5) as f32 / 4.0).collect();
            let b: Vec<f32> = (0..h).map(|j| (j % 3) as f32 - 1.0).collect();
            let mut out = vec![f32::NAN; rows * h];
            layer_norm_slices(&x, (&w, &b), 1e-5, &mut out);
            for (r, (row, got)) in x.chunks(h).zip(out.chunks(h)).enumerate() {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                let inv = 1.0 / (var + 1e-5).sqrt();
                for j in 0..h {
                    let want = (row[j] as f64 - mean) * inv * w[j] as f64 + b[j] as f64;
                    let d = (got[j] as f64 - want).abs();
                    let mean_error = 8.0 * f32::EPSILON as f64 * mean.abs() * inv * w[j] as f64;
                    assert!(
                        d <= mean_error + 1e-5 * (1.0 + want.abs()),
                        "h {h} row {r} [{j}]: {} vs {want}",
                        got[j]
                    );
                }
            }
        }
    }

    #[test]
    fn exp_and_gelu_match_libm() {
        let mut worst_exp = 0f64;
        let mut worst_gelu = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3; // -20 .. 20
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64) - e).abs() / e);
            let g = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            worst_gelu = worst_gelu.max((gelu_erf(x) as f64 - g).abs());
        }
        // The whole range, where 2^n's exponent runs from -126 to 127.
        for i in -8_700..=8_800 {
            let x = i as f32 * 1e-2;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64) - e).abs() / e);
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        // Outside it the input is clamped; NaN stays NaN (the softmax and GELU see it).
        assert_eq!(exp(-1e4), exp(-87.0));
        assert_eq!(exp(f32::INFINITY), exp(88.0));
        assert!(exp(88.0).is_finite() && exp(-87.0) > 0.0);
        assert!(exp(f32::NAN).is_nan() && gelu_erf(f32::NAN).is_nan());
        // A–S 7.1.26 is 1.5e-7 on erf; times 0.5 |x| <= 10 and f32 rounding.
        assert!(worst_gelu < 2e-6, "gelu absolute error {worst_gelu}");
    }

    /// `gelu_gate_row` on each vector ISA this host runs (and the portable loop), against f64:
    /// the GELU times a gate within the scalar GELU's bound (2e-6 absolute, times |gate|), over
    /// -10..10 in steps of 5e-4 (not a whole number of vectors: the tail runs too), a NaN in a
    /// vector stays NaN and leaves its neighbours alone.
    #[test]
    fn vector_gelu_gate_matches_f64_on_every_isa() {
        let mut x: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 5e-4).collect();
        x[100] = f32::NAN;
        let gate: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let isas = crate::simd::executable().into_iter();
        for isa in isas.chain([crate::simd::Cpu::Other]) {
            let mut out = vec![0f32; x.len()];
            // SAFETY: `executable()` detected each ISA's features; `Other` is the portable loop.
            unsafe { gelu_gate_row_on(isa, &x, &gate, &mut out) };
            let mut worst = 0f64;
            for ((&xi, &g), &o) in x.iter().zip(&gate).zip(&out) {
                if xi.is_nan() {
                    assert!(o.is_nan(), "{isa:?}: gelu(NaN) = {o}");
                    continue;
                }
                let want = 0.5 * xi as f64 * (1.0 + erf64(xi as f64 / std::f64::consts::SQRT_2));
                worst = worst.max((o as f64 - want * g as f64).abs() / g as f64);
            }
            assert!(worst < 2e-6, "{isa:?}: gelu absolute error {worst}");
        }
    }

    /// erf to ~1e-15 (series for small, continued fraction for large arguments).
    fn erf64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let mut sum = a;
            let mut term = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = n as f64 / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        r.copysign(x)
    }

    #[test]
    fn fused_equals_candle() {
        let dev = candle_core::Device::Cpu;
        let wi = (Tensor::randn(0f32, 1.0, (37, 2 * 50), &dev).unwrap() * 3.0).unwrap();
        let mut fused = vec![0f32; 37 * 50];
        gelu_gate_slices(
            &wi.flatten_all().unwrap().to_vec1().unwrap(),
            50,
            &mut fused,
        );
        let fused = Tensor::from_vec(fused, (37, 50), &dev).unwrap();
        let reference = (wi.narrow(1, 0, 50).unwrap().gelu_erf().unwrap()
            * wi.narrow(1, 50, 50).unwrap())
        .unwrap();
        let diff = crate::selfcheck::max_abs(&(fused - reference).unwrap());
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
