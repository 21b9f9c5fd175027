//! The environment switches that change which kernels a model runs, parsed in one place, once
//! per process (the README's "Environment variables" lists them), and the CPU kernels a model
//! chooses from them and the CPU's instructions at load.

use std::sync::OnceLock;

use crate::simd::Cpu;

/// What the environment asks of the kernels. Every switch defaults to the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrides {
    /// `MBPIPE_F32_GEMM=0`: candle's matmul instead of the own f32 GEMM (A/B measurements).
    pub f32_gemm: bool,
    /// `MBPIPE_FUSED_ATTENTION=0`: candle's per-sequence attention on the CPU.
    pub fused_attention: bool,
    /// `MBPIPE_BF16_GEMM=0`: candle's bf16 throughout for `--dtype bf16` on a CPU.
    pub bf16_gemm: bool,
    /// `MBPIPE_AMX=0`: no AMX tiles; bf16 on the AVX512-BF16 kernel (A/B measurements).
    pub amx: bool,
    /// `MBPIPE_VNNI=0`: no VNNI; `--dtype int8` on the AVX2 kernel and the attention's QKᵀ on
    /// `vpmaddwd`, as on CPUs without it (A/B measurements; AMX tiles, where present, follow
    /// `MBPIPE_AMX`).
    pub vnni: bool,
    /// `MBPIPE_I8MM=0`: on ARM, `--dtype int8` on the `sdot` kernel rather than the `smmla` one
    /// (A/B measurements).
    pub i8mm: bool,
    /// `MBPIPE_BF16_ATTENTION=0`: the attention's products in f32 for `--dtype bf16` on AMX
    /// (A/B measurements).
    pub bf16_attention: bool,
    /// `MBPIPE_INT8_ATTENTION=0`: the attention's QKᵀ (and without AVX-512 its PV) in f32 for
    /// `--dtype int8` (A/B and accuracy measurements).
    pub int8_attention: bool,
    /// `MBPIPE_AVX512=0`: no AVX-512 (nor the AMX tiles, whose kernels use it): every CPU
    /// kernel as on a CPU with AVX2 alone, so an AVX-512 machine measures and tests that path.
    pub avx512: bool,
    /// `MBPIPE_GPU_ATTENTION=per-sequence`: per-sequence candle attention on GPUs.
    pub gpu_batched_attention: bool,
    /// `MBPIPE_REQUIRE_GPU=1`: GPU test skips and failed load-time kernel checks are errors.
    pub require_gpu: bool,
}

/// Name of the `require_gpu` switch (tests set it for a child process).
pub const REQUIRE_GPU_ENV: &str = "MBPIPE_REQUIRE_GPU";

impl Overrides {
    /// The process's switches, read from the environment the first time.
    pub fn get() -> Overrides {
        static PARSED: OnceLock<Overrides> = OnceLock::new();
        *PARSED.get_or_init(|| Overrides::from_lookup(|name| std::env::var(name).ok()))
    }

    /// The switches as `lookup` gives the variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let not_zero = |name: &str| lookup(name).is_none_or(|v| v.trim() != "0");
        Overrides {
            f32_gemm: not_zero("MBPIPE_F32_GEMM"),
            fused_attention: not_zero("MBPIPE_FUSED_ATTENTION"),
            bf16_gemm: not_zero("MBPIPE_BF16_GEMM"),
            amx: not_zero("MBPIPE_AMX"),
            vnni: not_zero("MBPIPE_VNNI"),
            i8mm: not_zero("MBPIPE_I8MM"),
            bf16_attention: not_zero("MBPIPE_BF16_ATTENTION"),
            int8_attention: not_zero("MBPIPE_INT8_ATTENTION"),
            avx512: not_zero("MBPIPE_AVX512"),
            gpu_batched_attention: lookup("MBPIPE_GPU_ATTENTION")
                .is_none_or(|v| v.trim() != "per-sequence"),
            require_gpu: require_gpu_value(lookup(REQUIRE_GPU_ENV).as_deref()),
        }
    }
}

#[cfg(test)]
impl Overrides {
    /// The switches with the environment given as `(name, value)` pairs (tests).
    pub(crate) fn from_pairs(vars: &[(&str, &str)]) -> Self {
        Overrides::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }
}

/// The `MBPIPE_REQUIRE_GPU` value parsed: unset, empty, `0`, `false` and `no` are off.
pub fn require_gpu_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    })
}

/// The CPU kernels a model runs, chosen once at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuKernels {
    /// The own f32 GEMM's instructions; `None`: candle's matmul.
    pub gemm: Option<Cpu>,
    /// The fused attention's: micro-kernels for AVX-512, AVX2 or NEON, its generic path on
    /// [`Cpu::Other`]; `None`: candle's per-sequence ops.
    pub attention: Option<Cpu>,
}

impl CpuKernels {
    /// No own CPU kernel (a GPU model).
    pub(crate) const NONE: CpuKernels = CpuKernels {
        gemm: None,
        attention: None,
    };

    /// The kernels for a CPU with `cpu`'s instructions under `overrides`.
    pub(crate) fn choose(cpu: Cpu, overrides: &Overrides) -> Self {
        CpuKernels {
            gemm: (overrides.f32_gemm && cpu != Cpu::Other).then_some(cpu),
            attention: overrides.fused_attention.then_some(cpu),
        }
    }

    /// This CPU's kernels under the process's switches ([`crate::simd::cpu`] applies
    /// `MBPIPE_AVX512`).
    pub(crate) fn detect() -> Self {
        Self::choose(crate::simd::cpu(), &Overrides::get())
    }
}

impl std::fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |isa: Option<Cpu>, off: &str| match isa {
            Some(Cpu::Avx512) => "AVX-512".to_string(),
            Some(Cpu::Avx2) => "AVX2".to_string(),
            Some(Cpu::Neon) => "NEON".to_string(),
            Some(Cpu::Other) => "generic".to_string(),
            None => off.to_string(),
        };
        write!(
            f,
            "f32 GEMM {}, attention {}",
            name(self.gemm, "candle"),
            name(self.attention, "candle per-sequence")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Overrides {
        Overrides::from_pairs(vars)
    }

    #[test]
    fn switches_default_to_the_fast_paths_and_each_turns_one_off() {
        let all_on = Overrides {
            f32_gemm: true,
            fused_attention: true,
            bf16_gemm: true,
            amx: true,
            vnni: true,
            i8mm: true,
            bf16_attention: true,
            int8_attention: true,
            avx512: true,
            gpu_batched_attention: true,
            require_gpu: false,
        };
        assert_eq!(parse(&[]), all_on);
        assert_eq!(
            parse(&[("MBPIPE_F32_GEMM", "0")]),
            Overrides {
                f32_gemm: false,
                ..all_on
            }
        );
        let off = parse(&[
            ("MBPIPE_FUSED_ATTENTION", "0"),
            ("MBPIPE_BF16_GEMM", " 0 "),
            ("MBPIPE_AMX", "0"),
            ("MBPIPE_VNNI", "0"),
            ("MBPIPE_I8MM", "0"),
            ("MBPIPE_BF16_ATTENTION", "0"),
            ("MBPIPE_INT8_ATTENTION", "0"),
            ("MBPIPE_AVX512", "0"),
            ("MBPIPE_GPU_ATTENTION", "per-sequence"),
            ("MBPIPE_REQUIRE_GPU", "yes"),
        ]);
        assert!(!off.fused_attention && !off.bf16_gemm && !off.gpu_batched_attention && !off.amx);
        assert!(!off.bf16_attention && !off.int8_attention && !off.vnni && !off.avx512);
        assert!(!off.i8mm);
        assert!(off.f32_gemm && off.require_gpu);
        // Any other value leaves a kernel on.
        assert_eq!(parse(&[("MBPIPE_F32_GEMM", "1")]), all_on);
    }

    #[test]
    fn the_require_gpu_switch_reads_true_values_only() {
        for on in ["1", "true", "YES", " 1 "] {
            assert!(require_gpu_value(Some(on)), "{on:?}");
        }
        for off in [None, Some(""), Some("0"), Some("false"), Some("No")] {
            assert!(!require_gpu_value(off), "{off:?}");
        }
    }

    #[test]
    fn cpu_kernels_follow_the_instructions_and_the_switches() {
        let on = parse(&[]);
        let k = CpuKernels::choose(Cpu::Avx2, &on);
        assert_eq!((k.gemm, k.attention), (Some(Cpu::Avx2), Some(Cpu::Avx2)));
        let k = CpuKernels::choose(Cpu::Other, &on);
        assert_eq!((k.gemm, k.attention), (None, Some(Cpu::Other)));
        assert_eq!(
            CpuKernels::choose(Cpu::Neon, &on).to_string(),
            "f32 GEMM NEON, attention NEON"
        );
        let off = parse(&[("MBPIPE_F32_GEMM", "0"), ("MBPIPE_FUSED_ATTENTION", "0")]);
        let k = CpuKernels::choose(Cpu::Avx512, &off);
        assert_eq!((k.gemm, k.attention), (None, None));
        assert_eq!(
            CpuKernels::choose(Cpu::Avx512, &on).to_string(),
            "f32 GEMM AVX-512, attention AVX-512"
        );
        // `MBPIPE_AVX512=0` leaves an AVX-512 CPU its AVX2 and changes no other CPU.
        let no_avx512 = parse(&[("MBPIPE_AVX512", "0")]);
        assert_eq!(Cpu::Avx512.under(&no_avx512), Cpu::Avx2);
        assert_eq!(Cpu::Avx512.under(&on), Cpu::Avx512);
        for other in [Cpu::Avx2, Cpu::Neon, Cpu::Other] {
            assert_eq!(other.under(&no_avx512), other);
        }
    }
}
