//! The machine's arithmetic peak for each precision: how many multiply-adds per second the
//! instruction that mbpipe's kernel for that precision runs on this CPU can issue, on every
//! thread at once. A GEMM cannot beat it; `benches/compare.sh` divides the forward's rate by it.
//! (torch's GEMM, compare.sh's other ceiling, runs below mbpipe's own kernels on some CPUs.)
//!
//! `cargo run --release -p mbpipe-model --example peak -- [threads] [--json]`
//!
//! Each thread runs 12 independent accumulator chains (more than any of these instructions'
//! latency × throughput) of the one instruction, back to back from registers: no loads, so this
//! is the issue rate alone. AMX tiles are not measured here (`None`): their rate depends on
//! tile loads, which a register loop cannot show; compare.sh's torch ceiling covers them.

use std::time::Instant;

use mbpipe_model::int8_gemm::Int8Kernel;
use mbpipe_model::CpuBf16;

/// Independent accumulators per thread.
const CHAINS: usize = 12;

/// One instruction's peak: what it is, and operations (a multiply-add counts two) per call.
struct Instruction {
    name: &'static str,
    ops_per_instruction: f64,
    /// Runs `iterations × CHAINS` of the instruction; returns a value that depends on all of them.
    run: fn(usize) -> f32,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `pub fn $name(iterations) -> f32`: `CHAINS` accumulators from `$zero`, each updated by
    /// `$step` (`$a` the accumulator) `iterations` times, then reduced by `$reduce` (`$all` the
    /// accumulators). Only called where `super::instructions` checked `$features`.
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
                // SAFETY: the caller checked that the CPU has the features.
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
        |acc| {
            let sum = acc
                .iter()
                .fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a));
            _mm512_reduce_add_epi32(sum) as f32
        }
    );
    chains!(
        dpbusd_256,
        "avx2,avxvnni",
        _mm256_setzero_si256(),
        |a| _mm256_dpbusd_avx_epi32(*a, _mm256_set1_epi8(1), _mm256_set1_epi8(1)),
        |acc| sum_epi32(&acc)
    );
    // The AVX2 int8 kernel's multiply, `vpmaddwd` (16-bit pairs into 32-bit sums: 16
    // products); its `vpaddd` runs on other pipes. Chained through `vpaddd` instead, the loop
    // measured a quarter lower on Zen 4 (311-323 against 404-419 GOP/s): the pair, not the
    // multiply, was the limit.
    chains!(
        maddwd_256,
        "avx2",
        _mm256_set1_epi16(1),
        |a| _mm256_madd_epi16(*a, _mm256_set1_epi16(1)),
        |acc| sum_epi32(&acc)
    );
}

/// The instruction each precision's kernel runs on this CPU, as the model picks it (`None`:
/// AMX tiles, or no own kernel).
#[cfg(target_arch = "x86_64")]
fn instructions() -> [(&'static str, Option<Instruction>); 3] {
    // As the model picks it: `MBPIPE_AVX512=0` leaves the f32 kernels AVX2's FMA.
    let avx512 = is_x86_feature_detected!("avx512f") && mbpipe_model::Overrides::get().avx512;
    let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let f32 = || (avx512 || fma).then(|| fma_instruction(avx512));
    let bf16 = match CpuBf16::detect(true) {
        CpuBf16::DotProduct => Some(Instruction {
            name: "vdpbf16ps (512-bit)",
            ops_per_instruction: 64.0,
            run: x86::dpbf16_512,
        }),
        // bf16 runs the f32 kernels: f32's instruction is its ceiling.
        CpuBf16::F32 => f32(),
        _ => None,
    };
    let int8 = match Int8Kernel::detect() {
        Some(Int8Kernel::Avx512Vnni) => Some(Instruction {
            name: "vpdpbusd (512-bit)",
            ops_per_instruction: 128.0,
            run: x86::dpbusd_512,
        }),
        Some(Int8Kernel::AvxVnni) => Some(Instruction {
            name: "vpdpbusd (256-bit, AVX-VNNI)",
            ops_per_instruction: 64.0,
            run: x86::dpbusd_256,
        }),
        Some(Int8Kernel::Avx2) => Some(Instruction {
            name: "vpmaddwd (256-bit)",
            ops_per_instruction: 32.0,
            run: x86::maddwd_256,
        }),
        _ => None,
    };
    [("f32", f32()), ("bf16", bf16), ("int8", int8)]
}

/// The f32 kernels' FMA, 512-bit where the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
fn fma_instruction(avx512: bool) -> Instruction {
    if avx512 {
        Instruction {
            name: "vfmadd (512-bit)",
            ops_per_instruction: 32.0,
            run: x86::fma512,
        }
    } else {
        Instruction {
            name: "vfmadd (256-bit)",
            ops_per_instruction: 16.0,
            run: x86::fma256,
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn instructions() -> [(&'static str, Option<Instruction>); 3] {
    [("f32", None), ("bf16", None), ("int8", None)]
}

/// Operations per second of `instruction` on `threads` threads at once (best of 3 rounds of
/// about 0.3 s each).
fn peak(instruction: &Instruction, threads: usize) -> f64 {
    // Calibrate on one thread: iterations for about 0.3 s.
    let mut iterations = 1 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box((instruction.run)(iterations));
        if t.elapsed().as_secs_f64() > 0.05 {
            iterations = (iterations as f64 * 0.3 / t.elapsed().as_secs_f64()) as usize;
            break;
        }
        iterations *= 4;
    }
    let ops = instruction.ops_per_instruction * (iterations * CHAINS * threads) as f64;
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box((instruction.run)(iterations)));
                }
            });
            ops / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let threads = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut fields = Vec::new();
    for (precision, instruction) in instructions() {
        let Some(instruction) = instruction else {
            if !json {
                println!("{precision}: not measured (AMX tiles, or no own kernel on this CPU)");
            }
            continue;
        };
        let rate = peak(&instruction, threads) / 1e9;
        if json {
            fields.push(format!("\"{precision}\": {rate:.1}"));
        } else {
            println!(
                "{precision}: {} on {threads} threads: {rate:.1} G{}/s",
                instruction.name,
                if precision == "int8" { "OP" } else { "FLOP" }
            );
        }
    }
    if json {
        println!("{{{}}}", fields.join(", "));
    }
}
