//! The vector instructions the CPU kernels are written against: runtime detection, and a small
//! interface that the fused attention and the f32 GEMM implement once and instantiate for
//! AVX-512 (16 lanes, 32 registers), AVX2 + FMA (8 lanes, 16 registers) and NEON (4 lanes, 32
//! registers).

/// The vector instructions this CPU offers the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cpu {
    Avx512,
    Avx2,
    /// aarch64's vectors (every aarch64 CPU has them).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    Other,
}

/// The instructions the kernels use, detected once per process, under `MBPIPE_AVX512`.
pub(crate) fn cpu() -> Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| detected().under(&crate::Overrides::get()))
}

/// What this CPU offers.
fn detected() -> Cpu {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Cpu::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Cpu::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Cpu::Neon;
    }
    Cpu::Other
}

impl Cpu {
    /// The instructions the kernels may use under `switches`: `MBPIPE_AVX512=0` leaves an
    /// AVX-512 CPU its AVX2 + FMA (which every AVX-512 CPU has).
    pub(crate) fn under(self, switches: &crate::Overrides) -> Cpu {
        if self == Cpu::Avx512 && !switches.avx512 {
            Cpu::Avx2
        } else {
            self
        }
    }
}

/// Every kernel ISA this CPU can execute, best first (an AVX-512 CPU also runs the AVX2 kernels),
/// so tests can check each variant the host can run, not only the one [`cpu`] picks.
#[cfg(test)]
pub(crate) fn executable() -> Vec<Cpu> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut isas = Vec::new();
        if is_x86_feature_detected!("avx512f") {
            isas.push(Cpu::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            isas.push(Cpu::Avx2);
        }
        isas
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![Cpu::Neon]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    Vec::new()
}

#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Neon;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

/// The instructions the kernels need. Every method is `inline(always)`, so the intrinsics
/// land in the caller's `target_feature` function.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) trait Isa {
    type V: Copy;
    const LANES: usize;
    /// Vector registers: how large a register tile the kernels can keep.
    const REGISTERS: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn splat(x: f32) -> Self::V;
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `c - a * b`.
    unsafe fn fnmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// The lanewise maximum. Where a lane of either is NaN: `b`'s lane on x86 (`vmaxps`), NaN
    /// on NEON (`fmax`); callers rely only on a NaN in `b` staying NaN.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// The largest lane.
    unsafe fn reduce_max(v: Self::V) -> f32;
    /// The sum of the lanes.
    unsafe fn reduce_add(v: Self::V) -> f32;
    /// `2^n · p` for lanes of `n` that hold integers in [-126, 127].
    unsafe fn scale_by_power_of_two(p: Self::V, n: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    unsafe fn round(v: Self::V) -> Self::V;
    /// `|v|`.
    unsafe fn abs(v: Self::V) -> Self::V;
    /// `magnitude` with the sign bits of `sign`.
    unsafe fn copy_sign(magnitude: Self::V, sign: Self::V) -> Self::V;
    /// `1 / v` to 12 bits or better.
    unsafe fn approximate_reciprocal(v: Self::V) -> Self::V;
    /// Asks for the cache line at `p` (any address: nothing is read, nothing faults).
    unsafe fn prefetch(p: *const i8);
    /// `e^x` for `x <= 0`, as [`crate::fused::exp`] (Cody–Waite reduction, degree-6
    /// polynomial, relative error ~2e-7) but on FMAs; below -87 it is e^-87 (a normal
    /// number); NaN stays NaN.
    #[inline(always)]
    unsafe fn exp_nonpositive(x: Self::V) -> Self::V {
        // `max(c, x)` is x where x is NaN.
        let x = Self::max(Self::splat(-87.0), x);
        let n = Self::round(Self::mul(x, Self::splat(std::f32::consts::LOG2_E)));
        let r = Self::fnmadd(n, Self::splat(crate::fused::LN2_HI), x);
        let r = Self::fnmadd(n, Self::splat(crate::fused::LN2_LO), r);
        let p = Self::horner(crate::fused::EXP_POLY, r);
        Self::scale_by_power_of_two(p, n)
    }
    /// `poly` (highest degree first) at `x` by Horner's rule on FMAs.
    #[inline(always)]
    unsafe fn horner<const N: usize>(poly: [f32; N], x: Self::V) -> Self::V {
        let mut p = Self::splat(poly[0]);
        for &c in &poly[1..] {
            p = Self::fma(p, x, Self::splat(c));
        }
        p
    }
    /// `1 / v` for normal `v` from the approximate reciprocal and one Newton step (within
    /// about 2 ulp of the quotient; `vdivps` issues once per 16 cycles at 512 bits).
    #[inline(always)]
    unsafe fn reciprocal(v: Self::V) -> Self::V {
        let r = Self::approximate_reciprocal(v);
        // r (2 - v r)
        Self::fma(r, Self::fnmadd(v, r, Self::splat(1.0)), r)
    }
    /// Exact-form GELU, `0.5 x (1 + erf(x / sqrt 2))`, as [`crate::fused::gelu_erf`]
    /// (Abramowitz–Stegun 7.1.26 for erf) on FMAs; NaN stays NaN.
    #[inline(always)]
    unsafe fn gelu(x: Self::V) -> Self::V {
        let z = Self::mul(x, Self::splat(std::f32::consts::FRAC_1_SQRT_2));
        let a = Self::abs(z);
        let t = Self::reciprocal(Self::fma(
            Self::splat(crate::fused::ERF_P),
            a,
            Self::splat(1.0),
        ));
        let p = Self::mul(Self::horner(crate::fused::ERF_POLY, t), t);
        let e = Self::exp_nonpositive(Self::sub(Self::zero(), Self::mul(a, a)));
        let erf = Self::copy_sign(Self::fnmadd(p, e, Self::splat(1.0)), z);
        let half = Self::mul(x, Self::splat(0.5));
        Self::fma(half, erf, half)
    }
}

/// `fn name(args) -> ret = generic;` defines `name`, which runs `generic` (an
/// `#[inline(always)]` function) compiled for the CPU's vector instructions: one copy for
/// AVX-512, one for AVX2 + FMA, chosen by [`cpu`], and the plain one elsewhere (aarch64's
/// plain code already has NEON). For elementwise
/// and row loops that the compiler vectorises itself once it may use the instructions.
macro_rules! vectorized {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:path;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                // SAFETY: `cpu()` detected the features.
                match $crate::simd::cpu() {
                    $crate::simd::Cpu::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Cpu::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Cpu::Neon | $crate::simd::Cpu::Other => {}
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use vectorized;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Isa;

    pub(crate) struct Avx512;
    impl Isa for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        const REGISTERS: usize = 32;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
        #[inline(always)]
        unsafe fn reduce_add(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn scale_by_power_of_two(p: __m512, n: __m512) -> __m512 {
            _mm512_scalef_ps(p, n)
        }
        #[inline(always)]
        unsafe fn round(v: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
        }
        #[inline(always)]
        unsafe fn abs(v: __m512) -> __m512 {
            _mm512_abs_ps(v)
        }
        #[inline(always)]
        unsafe fn copy_sign(magnitude: __m512, sign: __m512) -> __m512 {
            let bit = _mm512_set1_epi32(i32::MIN);
            let m = _mm512_andnot_si512(bit, _mm512_castps_si512(magnitude));
            let s = _mm512_and_si512(bit, _mm512_castps_si512(sign));
            _mm512_castsi512_ps(_mm512_or_si512(m, s))
        }
        #[inline(always)]
        unsafe fn approximate_reciprocal(v: __m512) -> __m512 {
            _mm512_rcp14_ps(v)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const i8) {
            _mm_prefetch::<_MM_HINT_T0>(p)
        }
    }

    pub(crate) struct Avx2;
    impl Isa for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        const REGISTERS: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m256) -> f32 {
            let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
        }
        #[inline(always)]
        unsafe fn reduce_add(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
        #[inline(always)]
        unsafe fn scale_by_power_of_two(p: __m256, n: __m256) -> __m256 {
            // 2^n built in the exponent bits (n + 127 is a normal exponent for n >= -126).
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
        }
        #[inline(always)]
        unsafe fn round(v: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
        }
        #[inline(always)]
        unsafe fn abs(v: __m256) -> __m256 {
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
        }
        #[inline(always)]
        unsafe fn copy_sign(magnitude: __m256, sign: __m256) -> __m256 {
            let bit = _mm256_set1_ps(-0.0);
            _mm256_or_ps(_mm256_andnot_ps(bit, magnitude), _mm256_and_ps(bit, sign))
        }
        #[inline(always)]
        unsafe fn approximate_reciprocal(v: __m256) -> __m256 {
            _mm256_rcp_ps(v)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const i8) {
            _mm_prefetch::<_MM_HINT_T0>(p)
        }
    }
}

/// NEON (every aarch64 CPU): 4 lanes, 32 registers.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::Isa;

    pub(crate) struct Neon;
    impl Isa for Neon {
        type V = float32x4_t;
        const LANES: usize = 4;
        const REGISTERS: usize = 32;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmsq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vsubq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn reduce_max(v: float32x4_t) -> f32 {
            vmaxvq_f32(v)
        }
        #[inline(always)]
        unsafe fn reduce_add(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
        #[inline(always)]
        unsafe fn scale_by_power_of_two(p: float32x4_t, n: float32x4_t) -> float32x4_t {
            // 2^n built in the exponent bits (n + 127 is a normal exponent for n >= -126).
            let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
            vmulq_f32(p, vreinterpretq_f32_s32(bits))
        }
        #[inline(always)]
        unsafe fn round(v: float32x4_t) -> float32x4_t {
            vrndnq_f32(v)
        }
        #[inline(always)]
        unsafe fn abs(v: float32x4_t) -> float32x4_t {
            vabsq_f32(v)
        }
        #[inline(always)]
        unsafe fn copy_sign(magnitude: float32x4_t, sign: float32x4_t) -> float32x4_t {
            vbslq_f32(vdupq_n_u32(1 << 31), sign, magnitude)
        }
        /// `frecpe`'s 8-bit estimate and one `frecps` step: about 16 bits.
        #[inline(always)]
        unsafe fn approximate_reciprocal(v: float32x4_t) -> float32x4_t {
            let r = vrecpeq_f32(v);
            vmulq_f32(r, vrecpsq_f32(v, r))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const i8) {
            // `prfm` reads nothing and never faults (Rust's `_prefetch` is not yet stable).
            std::arch::asm!(
                "prfm pldl1keep, [{p}]",
                p = in(reg) p,
                options(nostack, preserves_flags, readonly)
            );
        }
    }
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// `exp_nonpositive` of `x` (a multiple of `S::LANES` long) compiled for `S`.
    #[inline(always)]
    unsafe fn exp_all<S: Isa>(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for i in (0..x.len()).step_by(S::LANES) {
            S::store(
                out.as_mut_ptr().add(i),
                S::exp_nonpositive(S::load(x.as_ptr().add(i))),
            );
        }
        out
    }

    /// `exp_nonpositive` of `x` on `isa`'s vectors.
    ///
    /// # Safety
    /// The CPU has `isa`'s instructions.
    unsafe fn exp_on(isa: Cpu, x: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(x: &[f32]) -> Vec<f32> {
                exp_all::<Avx512>(x)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(x: &[f32]) -> Vec<f32> {
                exp_all::<Avx2>(x)
            }
            match isa {
                Cpu::Avx512 => avx512(x),
                _ => avx2(x),
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(isa, Cpu::Neon);
            exp_all::<Neon>(x)
        }
    }

    /// The vector exp of the softmax, on every ISA this host runs, against f64 over the range
    /// where 2^n stays a normal number (relative error below 5e-7, as the portable exp), and at
    /// its edges: below -87 it is e^-87, -inf included (the softmax's masked lanes); NaN stays NaN.
    #[test]
    fn vector_exp_matches_f64_on_every_isa() {
        let mut x: Vec<f32> = (0..=87_000).map(|i| -(i as f32) * 1e-3).collect();
        x.extend([-87.0, -87.5, -1e4, f32::NEG_INFINITY, f32::NAN, -0.0]);
        x.resize(x.len().next_multiple_of(16), 0.0);
        let isas = executable();
        if isas.is_empty() {
            eprintln!("SKIPPED: this CPU has neither AVX-512 nor AVX2 + FMA (nor NEON)");
        }
        for isa in isas {
            // SAFETY: `executable()` detected the features.
            let e = unsafe { exp_on(isa, &x) };
            let floor = (-87f64).exp();
            let mut worst = 0f64;
            for (&xi, &ei) in x.iter().zip(&e) {
                if xi.is_nan() {
                    assert!(ei.is_nan(), "{isa:?}: exp(NaN) = {ei}");
                    continue;
                }
                let want = (xi as f64).max(-87.0).exp();
                worst = worst.max((ei as f64 - want).abs() / want);
            }
            assert!(worst < 5e-7, "{isa:?}: exp relative error {worst}");
            let at = |v: f32| e[x.iter().position(|&xi| xi == v).unwrap()] as f64;
            for v in [-87.5, -1e4, f32::NEG_INFINITY] {
                assert!(
                    (at(v) - floor).abs() / floor < 5e-7,
                    "{isa:?}: exp({v}) = {}",
                    at(v)
                );
            }
            assert_eq!(at(0.0), 1.0, "{isa:?}: exp(0)");
        }
    }
}
