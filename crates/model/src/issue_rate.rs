//! How fast this CPU issues the multiply-add instructions that mbpipe's kernels are built on,
//! measured from registers: [`CHAINS`] independent accumulators per thread (more than any of
//! these instructions' latency × throughput), updated back to back, no loads.
//!
//! Two users: the `peak` example (each precision's instruction peak, which `benches/compare.sh`
//! divides the forward's rate by), and the choice of `--dtype bf16`'s kernel. AVX512-BF16's
//! `vdpbf16ps` does twice the multiply-adds of a 512-bit FMA per instruction, but CPUs issue it
//! at very different rates: Zen 4 about as often as the FMA (2.0x the multiply-adds), an Intel
//! Xeon under a quarter as often (0.4-0.5x the multiply-adds: 93 against 234 GFLOP/s on 2
//! threads of an Emerald Rapids whose hypervisor hides the AMX tiles, 2026-12-04). Where it is
//! not faster the bf16 kernels lose to the f32 ones (there 610-651 against 975-1,063 tokens/s;
//! Sapphire Rapids with the tiles off 727 against 919), so bf16 runs `vdpbf16ps` only where
//! [`dot_product_pays`] measured it to be.

use std::sync::OnceLock;
use std::time::Instant;

/// Independent accumulators per thread.
pub const CHAINS: usize = 12;

/// One instruction: what it is, operations (a multiply-add counts two) per instruction, and a
/// loop of it.
#[derive(Clone, Copy)]
pub struct Instruction {
    /// Its name, as a person reads it.
    pub name: &'static str,
    /// Operations per instruction (a multiply-add counts two).
    pub ops_per_instruction: f64,
    /// Runs `iterations × CHAINS` of the instruction; returns a value that depends on all of them.
    pub run: fn(usize) -> f32,
}

impl Instruction {
    /// Operations per second of one run of `iterations × CHAINS` instructions on this thread.
    pub fn ops_per_second(&self, iterations: usize) -> f64 {
        let t = Instant::now();
        std::hint::black_box((self.run)(iterations));
        self.ops_per_instruction * (iterations * CHAINS) as f64 / t.elapsed().as_secs_f64()
    }
}

/// `pub fn $fn() -> Option<Instruction>`: `$run`'s loop, named `$name`, `$ops` operations per
/// instruction, where the target is `$arch` and `$present` (the CPU has its instruction), the
/// loop in module `$module`; `None` elsewhere.
macro_rules! instructions {
    ($arch:tt in $module:ident: $($(#[$doc:meta])* $fn:ident: $present:expr, $name:literal, $ops:literal, $run:ident;)*) => {$(
        $(#[$doc])*
        pub fn $fn() -> Option<Instruction> {
            #[cfg(target_arch = $arch)]
            if $present {
                return Some(Instruction {
                    name: $name,
                    ops_per_instruction: $ops,
                    run: $module::$run,
                });
            }
            None
        }
    )*};
}

instructions! { "x86_64" in x86:
    /// The 512-bit FMA of the f32 kernels on AVX-512 (`None`: the CPU has no AVX-512F).
    fma512: is_x86_feature_detected!("avx512f"), "vfmadd (512-bit)", 32.0, fma512;
    /// The 256-bit FMA of the f32 kernels on AVX2 (`None`: no AVX2 and FMA).
    fma256: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "vfmadd (256-bit)", 16.0, fma256;
    /// AVX512-BF16's `vdpbf16ps` on 512 bits, the bf16 dot-product kernel's (`None`: no
    /// AVX512-BF16).
    dpbf16_512: crate::bf16_gemm::available(), "vdpbf16ps (512-bit)", 64.0, dpbf16_512;
    /// AVX512-VNNI's `vpdpbusd` on 512 bits (`None`: no AVX512-VNNI).
    dpbusd512: is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"),
        "vpdpbusd (512-bit)", 128.0, dpbusd_512;
    /// AVX-VNNI's `vpdpbusd` on 256 bits, VEX-encoded (`None`: no AVX-VNNI).
    dpbusd256: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni"),
        "vpdpbusd (256-bit, AVX-VNNI)", 64.0, dpbusd_256;
    /// The AVX2 int8 kernel's `vpmaddwd` (16-bit pairs into 32-bit sums; `None`: no AVX2).
    maddwd256: is_x86_feature_detected!("avx2"), "vpmaddwd (256-bit)", 32.0, maddwd_256;
    /// The AVX2 int8 kernel's whole step on 64 byte products (AVX2 has no integer
    /// multiply-accumulate): two groups' `vpmaddubsw` pair sums added in 16 bits (`vpaddw`), one
    /// `vpmaddwd` by ones, the `vpaddd` that accumulates; what that kernel can issue at most.
    /// `peak` prints it beside `vpmaddwd`'s figure, which compare.sh divides by (`None`: no
    /// AVX2). Until 2026-12-07 the kernel's step was one `vpmaddubsw` per widening.
    maddubs_pair_step256: is_x86_feature_detected!("avx2"),
        "2 vpmaddubsw + vpaddw + vpmaddwd + vpaddd (256-bit)", 128.0, maddubs_pair_step_256;
    /// `vpmaddwd` on 512 bits, the multiply of the AVX512-BW int8 kernel (`None`: no AVX-512
    /// BW).
    maddwd512: is_x86_feature_detected!("avx512bw"), "vpmaddwd (512-bit)", 64.0, maddwd_512;
    /// That kernel's whole step on 64 byte products: `vpmaddubsw`, `vpmaddwd` by ones, `vpaddd`.
    maddubs_step512: is_x86_feature_detected!("avx512bw"),
        "vpmaddubsw + vpmaddwd + vpaddd (512-bit)", 128.0, maddubs_step_512;
}

instructions! { "aarch64" in arm:
    /// The 128-bit `fmla` of f32 on ARM (the f32 GEMM's there).
    fmla128: true, "fmla (128-bit)", 8.0, fmla_128;
    /// `sdot`, the ARM int8 kernel's (`None`: no DotProd).
    sdot128: std::arch::is_aarch64_feature_detected!("dotprod"), "sdot (128-bit)", 32.0, sdot_128;
    /// `smmla`, the ARM int8 matrix kernel's: 2 × 8 by 8 × 2 bytes per instruction (`None`: no
    /// I8MM).
    smmla128: std::arch::is_aarch64_feature_detected!("i8mm"), "smmla (128-bit)", 64.0, smmla_128;
    /// `bfmmla`, the ARM bf16 kernel's: 2 × 4 by 4 × 2 bf16 per instruction (`None`: no BF16).
    bfmmla128: std::arch::is_aarch64_feature_detected!("bf16"), "bfmmla (128-bit)", 32.0,
        bfmmla_128;
}

/// `vdpbf16ps` must issue at least this many times the 512-bit FMA's multiply-adds for bf16 to
/// take it. Measured far on either side (Zen 4 2.0, Intel without tiles 0.5); at par the bf16
/// kernel's halved weight traffic would not pay for rounding the activations.
pub const DOT_PRODUCT_MIN_SPEEDUP: f64 = 1.25;

/// `vdpbf16ps`'s multiply-adds per second over the 512-bit FMA's on one thread of this CPU
/// (`None`: it lacks one of them). Measured once per process, in about 2 ms: rounds that
/// alternate the two, each instruction's fastest round counted, so that a clock change or a
/// preempted thread (both common on shared VMs) moves neither side alone.
pub fn dot_product_speedup() -> Option<f64> {
    static SPEEDUP: OnceLock<Option<f64>> = OnceLock::new();
    *SPEEDUP.get_or_init(|| {
        let (dot, fma) = (dpbf16_512()?, fma512()?);
        Some(faster_ratio(&dot, &fma, 5, 20_000))
    })
}

/// The best rate of `a` over the best of `b`, over `rounds` alternating runs of `iterations`
/// (after one round of each to warm the units up).
fn faster_ratio(a: &Instruction, b: &Instruction, rounds: usize, iterations: usize) -> f64 {
    let (mut best_a, mut best_b) = (0f64, 0f64);
    for round in 0..=rounds {
        let (rate_a, rate_b) = (a.ops_per_second(iterations), b.ops_per_second(iterations));
        if round > 0 {
            best_a = best_a.max(rate_a);
            best_b = best_b.max(rate_b);
        }
    }
    best_a / best_b
}

/// Whether the bf16 dot-product kernel is faster than the f32 kernels on this CPU: it has
/// AVX512-BF16 and `vdpbf16ps` issues at least [`DOT_PRODUCT_MIN_SPEEDUP`] times the 512-bit
/// FMA's multiply-adds.
pub fn dot_product_pays() -> bool {
    dot_product_speedup().is_some_and(|s| s >= DOT_PRODUCT_MIN_SPEEDUP)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `pub fn $name(iterations) -> f32`: `CHAINS` accumulators from `$zero`, each updated by
    /// `$step` (`$a` the accumulator) `iterations` times, then reduced by `$reduce` (`$all` the
    /// accumulators). Only reached through the constructors above, which checked `$features`.
    macro_rules! chains {
        ($name:ident, $features:literal, $zero:expr, |$a:ident| $step:expr, |$all:ident| $reduce:expr) => {
            pub fn $name(iterations: usize) -> f32 {
                #[target_feature(enable = $features)]
                unsafe fn run(iterations: usize) -> f32 {
                    let mut acc = [$zero; CHAINS];
                    for _ in 0..iterations {
                        for $a in acc.iter_mut() {
                            *$a = $step;
                        }
                    }
                    let $all = acc;
                    $reduce
                }
                // SAFETY: the constructor of the `Instruction` that holds this function checked
                // that the CPU has the features.
                unsafe { run(iterations) }
            }
        };
    }

    /// The sum of 256-bit i32 accumulators, as f32.
    #[target_feature(enable = "avx2")]
    unsafe fn sum_epi32(acc: &[__m256i]) -> f32 {
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, sum);
        out.iter().sum::<i32>() as f32
    }

    chains!(
        fma256,
        "avx2,fma",
        _mm256_setzero_ps(),
        |a| _mm256_fmadd_ps(*a, _mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-3)),
        |acc| {
            let mut out = [0f32; 8];
            let sum = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
            _mm256_storeu_ps(out.as_mut_ptr(), sum);
            out.iter().sum()
        }
    );
    chains!(
        fma512,
        "avx512f",
        _mm512_setzero_ps(),
        |a| _mm512_fmadd_ps(*a, _mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-3)),
        |acc| _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a))
        )
    );
    chains!(
        dpbf16_512,
        "avx512f,avx512bf16",
        _mm512_setzero_ps(),
        |a| {
            let ones: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
            _mm512_dpbf16_ps(*a, ones, ones)
        },
        |acc| _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a))
        )
    );
    chains!(
        dpbusd_512,
        "avx512f,avx512vnni",
        _mm512_setzero_si512(),
        |a| _mm512_dpbusd_epi32(*a, _mm512_set1_epi8(1), _mm512_set1_epi8(1)),
        |acc| sum_epi32_512(&acc)
    );
    chains!(
        dpbusd_256,
        "avx2,avxvnni",
        _mm256_setzero_si256(),
        |a| _mm256_dpbusd_avx_epi32(*a, _mm256_set1_epi8(1), _mm256_set1_epi8(1)),
        |acc| sum_epi32(&acc)
    );
    // `vpmaddwd` (16-bit pairs into 32-bit sums: 16 products), the multiply of the AVX2 int8
    // kernel's step and of the 512-bit one's. Chained through a `vpaddd` instead, the loop
    // measured a quarter lower on Zen 4 (311-323 against 404-419 GOP/s) and on Zen 3: the pair,
    // not the multiply, was the limit of the 16-bit AVX2 kernel of before 2026-12-06.
    chains!(
        maddwd_256,
        "avx2",
        _mm256_set1_epi16(1),
        |a| _mm256_madd_epi16(*a, _mm256_set1_epi16(1)),
        |acc| sum_epi32(&acc)
    );
    /// `pub fn $name(iterations) -> f32`: `CHAINS` accumulators, each adding
    /// `vpmaddwd(vpmaddubsw(x, y), 1)` of registers that no accumulator feeds (chained through
    /// the accumulator, the multiplies' latency would bound the loop instead of the issue rate),
    /// on `$reg` vectors from `$set1_epi8`/`$set1_epi16`, summed by `$sum`. Empty `asm`
    /// statements hide the operands' values: once for the six `y` and the ones, so that no two
    /// products are the same and nothing folds, and every iteration for the two `x`, so that
    /// the products stay in the loop.
    macro_rules! maddubs_step {
        ($name:ident, $features:literal, $reg:ident, $zero:ident, $set1_epi8:ident,
         $set1_epi16:ident, $maddubs:ident, $madd:ident, $add:ident, $sum:expr) => {
            pub fn $name(iterations: usize) -> f32 {
                #[target_feature(enable = $features)]
                unsafe fn run(iterations: usize) -> f32 {
                    let mut acc = [$zero(); CHAINS];
                    let mut x = [$set1_epi8(1); 2];
                    let mut y = [$set1_epi8(1); CHAINS / 2];
                    let mut ones = $set1_epi16(1);
                    std::arch::asm!("/* {0} */", inout($reg) ones, options(nomem, nostack));
                    // Six values the compiler cannot tell apart: six products each.
                    for y in &mut y {
                        std::arch::asm!("/* {0} */", inout($reg) * y, options(nomem, nostack));
                    }
                    for _ in 0..iterations {
                        std::arch::asm!(
                            "/* {0} {1} */",
                            inout($reg) x[0],
                            inout($reg) x[1],
                            options(nomem, nostack, preserves_flags)
                        );
                        for (c, a) in acc.iter_mut().enumerate() {
                            let pairs = $maddubs(x[c % 2], y[c / 2]);
                            *a = $add(*a, $madd(pairs, ones));
                        }
                    }
                    $sum(&acc)
                }
                // SAFETY: the constructor of the `Instruction` that holds this function checked
                // that the CPU has the features.
                unsafe { run(iterations) }
            }
        };
    }
    /// As `maddubs_step!`'s loops, the step adding two `vpmaddubsw` before the widening
    /// `vpmaddwd`: four `x` hidden every iteration, so that the 24 products per iteration all
    /// differ.
    pub fn maddubs_pair_step_256(iterations: usize) -> f32 {
        #[target_feature(enable = "avx2")]
        unsafe fn run(iterations: usize) -> f32 {
            let mut acc = [_mm256_setzero_si256(); CHAINS];
            let mut x = [_mm256_set1_epi8(1); 4];
            let mut y = [_mm256_set1_epi8(1); CHAINS / 2];
            let mut ones = _mm256_set1_epi16(1);
            std::arch::asm!("/* {0} */", inout(ymm_reg) ones, options(nomem, nostack));
            for y in &mut y {
                std::arch::asm!("/* {0} */", inout(ymm_reg) * y, options(nomem, nostack));
            }
            for _ in 0..iterations {
                std::arch::asm!(
                    "/* {0} {1} {2} {3} */",
                    inout(ymm_reg) x[0],
                    inout(ymm_reg) x[1],
                    inout(ymm_reg) x[2],
                    inout(ymm_reg) x[3],
                    options(nomem, nostack, preserves_flags)
                );
                for (c, a) in acc.iter_mut().enumerate() {
                    let quads = _mm256_add_epi16(
                        _mm256_maddubs_epi16(x[c % 2], y[c / 2]),
                        _mm256_maddubs_epi16(x[2 + c % 2], y[c / 2]),
                    );
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(quads, ones));
                }
            }
            sum_epi32(&acc)
        }
        // SAFETY: the constructor of the `Instruction` that holds this function checked that
        // the CPU has AVX2.
        unsafe { run(iterations) }
    }
    maddubs_step!(
        maddubs_step_512,
        "avx512f,avx512bw",
        zmm_reg,
        _mm512_setzero_si512,
        _mm512_set1_epi8,
        _mm512_set1_epi16,
        _mm512_maddubs_epi16,
        _mm512_madd_epi16,
        _mm512_add_epi32,
        sum_epi32_512
    );
    /// The sum of 512-bit i32 accumulators, as f32.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_epi32_512(acc: &[__m512i]) -> f32 {
        let sum = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a));
        _mm512_reduce_add_epi32(sum) as f32
    }
    chains!(
        maddwd_512,
        "avx512f,avx512bw",
        _mm512_set1_epi16(1),
        |a| _mm512_madd_epi16(*a, _mm512_set1_epi16(1)),
        |acc| sum_epi32_512(&acc)
    );
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::CHAINS;

    /// The sum of i32 accumulators, as f32.
    fn sum_s32(acc: &[int32x4_t]) -> f32 {
        // SAFETY: NEON is part of every aarch64 CPU.
        acc.iter().map(|&a| unsafe { vaddvq_s32(a) } as f32).sum()
    }

    /// `CHAINS` accumulators of `fmla`, each `a ← 0.9999·a + 0.001` as in the x86 loops.
    pub fn fmla_128(iterations: usize) -> f32 {
        // SAFETY: NEON is part of every aarch64 CPU.
        unsafe {
            let (factor, step) = (vdupq_n_f32(0.999_9), vdupq_n_f32(1e-3));
            let mut acc = [vdupq_n_f32(0.0); CHAINS];
            for _ in 0..iterations {
                for a in acc.iter_mut() {
                    *a = vfmaq_f32(step, *a, factor);
                }
            }
            acc.iter().map(|&a| vaddvq_f32(a)).sum()
        }
    }

    /// `CHAINS` accumulators, each updated `iterations` times by `$instruction` of two vectors of
    /// byte ones, then summed. Only reached through the constructors above, which checked
    /// `$feature`.
    macro_rules! byte_chains {
        ($name:ident, $feature:literal, $instruction:literal) => {
            pub fn $name(iterations: usize) -> f32 {
                #[target_feature(enable = $feature)]
                unsafe fn run(iterations: usize) -> f32 {
                    let ones = vdupq_n_s8(1);
                    let mut acc = [vdupq_n_s32(0); CHAINS];
                    for _ in 0..iterations {
                        for a in acc.iter_mut() {
                            std::arch::asm!(
                                concat!($instruction, " {a:v}.4s, {x:v}.16b, {x:v}.16b"),
                                a = inout(vreg) *a,
                                x = in(vreg) ones,
                                options(pure, nomem, nostack, preserves_flags),
                            );
                        }
                    }
                    sum_s32(&acc)
                }
                // SAFETY: the constructor of the `Instruction` that holds this function checked
                // that the CPU has the feature.
                unsafe { run(iterations) }
            }
        };
    }

    byte_chains!(sdot_128, "dotprod", "sdot");
    byte_chains!(smmla_128, "i8mm", "smmla");

    /// `CHAINS` accumulators of `bfmmla` on bf16 ones. Only reached through the constructor
    /// above, which checked BF16.
    pub fn bfmmla_128(iterations: usize) -> f32 {
        #[target_feature(enable = "bf16")]
        unsafe fn run(iterations: usize) -> f32 {
            let ones = vdupq_n_u16(0x3F80);
            let mut acc = [vdupq_n_f32(0.0); CHAINS];
            for _ in 0..iterations {
                for a in acc.iter_mut() {
                    std::arch::asm!(
                        "bfmmla {a:v}.4s, {x:v}.8h, {x:v}.8h",
                        a = inout(vreg) *a,
                        x = in(vreg) ones,
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
            }
            acc.iter().map(|&a| vaddvq_f32(a)).sum()
        }
        // SAFETY: the constructor of the `Instruction` that holds this function checked BF16.
        unsafe { run(iterations) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction this CPU has computes what its chains should (each accumulator is a
    /// known sum), so a rate is a rate of the instruction asked for.
    #[test]
    fn each_loop_runs_its_instruction_and_counts_every_step() {
        let iterations = 100;
        let steps = (iterations * CHAINS) as f32;
        // FMA: a ← 0.9999·a + 0.001 converges from 0 as 0.001 · (1 − 0.9999ⁿ) / 0.0001.
        let fma_each = (1.0 - 0.999_9f64.powi(iterations as i32)) / 0.1;
        let cases: [(Option<Instruction>, f64); 13] = [
            (fma512(), fma_each * 16.0 * CHAINS as f64),
            (fma256(), fma_each * 8.0 * CHAINS as f64),
            // 2 products of 1·1 per f32 lane, 16 lanes.
            (dpbf16_512(), (steps * 32.0) as f64),
            // 4 byte products of 1·1 per i32 lane.
            (dpbusd512(), (steps * 64.0) as f64),
            (dpbusd256(), (steps * 32.0) as f64),
            // a ← (a_lo · 1 + a_hi · 1) from 16-bit ones: each i32 lane of pairs (1, 1) stays 2
            // after the first step reinterprets the sum (2 = lo 2, hi 0) then 2.
            (maddwd256(), (2.0 * 8.0 * CHAINS as f32) as f64),
            (maddwd512(), (2.0 * 16.0 * CHAINS as f32) as f64),
            // 4 byte products of 1·1 added to each of 16 lanes per step; on AVX2 8 (two groups
            // of 4) to each of 8.
            (maddubs_step512(), (steps * 64.0) as f64),
            (maddubs_pair_step256(), (steps * 64.0) as f64),
            // ARM: 4 lanes of the FMA's sum; `sdot` adds 4 products of 1·1 to each of 4 lanes,
            // `smmla` 8 to each of its 2 × 2 block, `bfmmla` 4.
            (fmla128(), fma_each * 4.0 * CHAINS as f64),
            (sdot128(), (steps * 16.0) as f64),
            (smmla128(), (steps * 32.0) as f64),
            (bfmmla128(), (steps * 16.0) as f64),
        ];
        let mut ran = 0;
        for (instruction, expected) in cases {
            let Some(instruction) = instruction else {
                continue;
            };
            ran += 1;
            let got = (instruction.run)(iterations) as f64;
            assert!(
                (got - expected).abs() <= 1e-3 * expected,
                "{}: {got}, expected {expected}",
                instruction.name
            );
            assert!(instruction.ops_per_second(iterations) > 0.0);
        }
        if ran == 0 {
            eprintln!("skipped: this CPU has none of the instructions measured here");
        }
    }

    /// The CPUs whose bf16 runs were timed both ways measure on the side those runs showed: Zen 4
    /// and 5 (AMD family 25 and 26: the dot-product kernel 1.5-1.9x f32) take `vdpbf16ps`,
    /// Sapphire and Emerald Rapids (Intel family 6, models 143, 167 and 207: 0.6-0.8x f32
    /// without the tiles) do not. Others are only reported.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn cpus_timed_both_ways_measure_on_their_side() {
        use std::arch::x86_64::__cpuid;
        let Some(speedup) = dot_product_speedup() else {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        };
        // CPUID leaves 0 and 1 exist on every x86-64 CPU.
        let (vendor, signature) = (__cpuid(0), __cpuid(1).eax);
        let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
        let base_family = (signature >> 8) & 0xf;
        let family = base_family
            + if base_family == 0xf {
                (signature >> 20) & 0xff
            } else {
                0
            };
        let model = ((signature >> 4) & 0xf) | ((signature >> 12) & 0xf0);
        let expected = match (amd, family, model) {
            (true, 25 | 26, _) => Some(true),
            // 167: what the Sapphire Rapids VM of 2026-12-02 reported.
            (false, 6, 143 | 167 | 207) => Some(false),
            _ => None,
        };
        eprintln!("family {family} model {model}: vdpbf16ps {speedup:.2}x the 512-bit FMA");
        if let Some(pays) = expected {
            assert_eq!(dot_product_pays(), pays, "vdpbf16ps {speedup:.2}x the FMA");
        }
    }

    #[test]
    fn the_dot_product_is_taken_only_where_it_was_measured_faster() {
        match dot_product_speedup() {
            None => assert!(!dot_product_pays(), "no vdpbf16ps, yet taken"),
            Some(s) => {
                assert!(s.is_finite() && s > 0.0, "speedup {s}");
                assert_eq!(dot_product_pays(), s >= DOT_PRODUCT_MIN_SPEEDUP);
                // The same measurement for the whole process: the kernel choice cannot change.
                assert_eq!(dot_product_speedup(), Some(s));
            }
        }
    }
}
