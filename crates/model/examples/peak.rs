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

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256(iterations: usize) -> f32 {
        let (b, c) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-3));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, b, c);
            }
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            acc.iter().fold(c, |s, &a| _mm256_add_ps(s, a)),
        );
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512(iterations: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-3));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, b, c);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(c, |s, &a| _mm512_add_ps(s, a)))
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16_512(iterations: usize) -> f32 {
        let ones: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, ones, ones);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)),
        )
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpbusd_512(iterations: usize) -> f32 {
        let ones = _mm512_set1_epi8(1);
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, ones, ones);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a));
        _mm512_reduce_add_epi32(sum) as f32
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dpbusd_256(iterations: usize) -> f32 {
        let ones = _mm256_set1_epi8(1);
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm256_dpbusd_avx_epi32(*a, ones, ones);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, sum);
        out.iter().sum::<i32>() as f32
    }

    /// The AVX2 int8 kernel's step: `vpmaddubsw`, `vpmaddwd` by ones, `vpaddd` (and its
    /// `vpsignb` on the weights), 32 byte products per step.
    #[target_feature(enable = "avx2")]
    unsafe fn maddubs_256(iterations: usize) -> f32 {
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                let signed = _mm256_sign_epi8(ones8, *a);
                let pairs = _mm256_maddubs_epi16(ones8, signed);
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones16));
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, sum);
        out.iter().sum::<i32>() as f32
    }

    // Safe wrappers: each is only called where `super::instructions` checked the features.
    pub fn fma256_checked(n: usize) -> f32 {
        unsafe { fma256(n) }
    }
    pub fn fma512_checked(n: usize) -> f32 {
        unsafe { fma512(n) }
    }
    pub fn dpbf16_512_checked(n: usize) -> f32 {
        unsafe { dpbf16_512(n) }
    }
    pub fn dpbusd_512_checked(n: usize) -> f32 {
        unsafe { dpbusd_512(n) }
    }
    pub fn dpbusd_256_checked(n: usize) -> f32 {
        unsafe { dpbusd_256(n) }
    }
    pub fn maddubs_256_checked(n: usize) -> f32 {
        unsafe { maddubs_256(n) }
    }
}

/// The instruction each precision's kernel runs on this CPU, as the model picks it (`None`:
/// AMX tiles, or no own kernel).
#[cfg(target_arch = "x86_64")]
fn instructions() -> [(&'static str, Option<Instruction>); 3] {
    let avx512 = is_x86_feature_detected!("avx512f");
    let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let f32 = || (avx512 || fma).then(|| fma_instruction(avx512));
    let bf16 = match CpuBf16::detect(true) {
        CpuBf16::DotProduct => Some(Instruction {
            name: "vdpbf16ps (512-bit)",
            ops_per_instruction: 64.0,
            run: x86::dpbf16_512_checked,
        }),
        // bf16 runs the f32 kernels: f32's instruction is its ceiling.
        CpuBf16::F32 => f32(),
        _ => None,
    };
    let int8 = match Int8Kernel::detect() {
        Some(Int8Kernel::Avx512Vnni) => Some(Instruction {
            name: "vpdpbusd (512-bit)",
            ops_per_instruction: 128.0,
            run: x86::dpbusd_512_checked,
        }),
        Some(Int8Kernel::AvxVnni) => Some(Instruction {
            name: "vpdpbusd (256-bit, AVX-VNNI)",
            ops_per_instruction: 64.0,
            run: x86::dpbusd_256_checked,
        }),
        Some(Int8Kernel::Avx2) => Some(Instruction {
            name: "vpsignb + vpmaddubsw + vpmaddwd + vpaddd (256-bit)",
            ops_per_instruction: 64.0,
            run: x86::maddubs_256_checked,
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
            run: x86::fma512_checked,
        }
    } else {
        Instruction {
            name: "vfmadd (256-bit)",
            ops_per_instruction: 16.0,
            run: x86::fma256_checked,
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
