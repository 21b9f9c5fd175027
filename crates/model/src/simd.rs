//! The vector instructions the CPU kernels are written against: runtime detection, and a small
//! interface that the fused attention and the f32 GEMM implement once and instantiate for
//! AVX-512 (16 lanes, 32 registers) and AVX2 + FMA (8 lanes, 16 registers).

/// The vector instructions this CPU offers the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cpu {
    Avx512,
    Avx2,
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
    let mut isas = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            isas.push(Cpu::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            isas.push(Cpu::Avx2);
        }
    }
    isas
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512, Isa};

/// `fn name(args) -> ret = generic;` defines `name`, which runs `generic` (an
/// `#[inline(always)]` function) compiled for the CPU's vector instructions: one copy for
/// AVX-512, one for AVX2 + FMA, chosen by [`cpu`], and the plain one elsewhere. For elementwise
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
                    $crate::simd::Cpu::Other => {}
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

    /// The instructions the kernels need. Every method is `inline(always)`, so the intrinsics
    /// land in the caller's `target_feature` function.
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
    }

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
    }
}
