//! The machine's arithmetic peak for each precision: how many multiply-adds per second the
//! instruction that mbpipe's kernel for that precision runs on this CPU can issue, on every
//! thread at once. A GEMM cannot beat it; `benches/compare.sh` divides the forward's rate by it.
//! (torch's GEMM, compare.sh's other ceiling, runs below mbpipe's own kernels on some CPUs.)
//!
//! `cargo run --release -p mbpipe-model --example peak -- [threads] [--json]`
//!
//! Each thread runs the loops of `mbpipe_model::issue_rate` (independent accumulator chains of
//! the one instruction, back to back from registers: no loads), so this is the issue rate
//! alone. AMX tiles are not measured here (`None`): their rate depends on tile loads, which a
//! register loop cannot show; compare.sh's torch ceiling covers them.

use std::time::Instant;

use mbpipe_model::int8_gemm::Int8Kernel;
use mbpipe_model::issue_rate::{self, Instruction};
use mbpipe_model::CpuBf16;

/// The instruction each precision's kernel runs on this CPU, as the model picks it (`None`:
/// AMX tiles, or no own kernel).
fn instructions() -> [(&'static str, Option<Instruction>); 3] {
    // As the model picks it: `MBPIPE_AVX512=0` leaves the f32 kernels AVX2's FMA.
    let avx512 = mbpipe_model::Overrides::get().avx512;
    // On ARM: NEON's `fmla` (the f32 GEMM's by-element form issues at its rate).
    let f32 = || {
        issue_rate::fma512()
            .filter(|_| avx512)
            .or_else(issue_rate::fma256)
            .or_else(issue_rate::fmla128)
    };
    let bf16 = match CpuBf16::detect(true) {
        CpuBf16::DotProduct => issue_rate::dpbf16_512(),
        CpuBf16::ArmMatrix => issue_rate::bfmmla128(),
        // bf16 runs the f32 kernels: f32's instruction is its ceiling.
        CpuBf16::F32 => f32(),
        _ => None,
    };
    let int8 = match Int8Kernel::detect() {
        Some(Int8Kernel::Avx512Vnni) => issue_rate::dpbusd512(),
        Some(Int8Kernel::AvxVnni) => issue_rate::dpbusd256(),
        Some(Int8Kernel::Avx2) => issue_rate::maddwd256(),
        Some(Int8Kernel::Avx512Bw) => issue_rate::maddwd512(),
        Some(Int8Kernel::ArmDot) => issue_rate::sdot128(),
        Some(Int8Kernel::ArmMatrix) => issue_rate::smmla128(),
        _ => None,
    };
    [("f32", f32()), ("bf16", bf16), ("int8", int8)]
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
    let ops = instruction.ops_per_instruction * (iterations * issue_rate::CHAINS * threads) as f64;
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
    // Without VNNI there is no integer multiply-accumulate: the AVX512-BW kernel's step is two
    // multiplies and an add per 32 byte products (Zen 3: 0.95-0.97 of `vpmaddwd` alone; the
    // 16-bit kernel's multiply and add before it, 0.75-0.77); the AVX2 kernel's, on 7-bit
    // activations, three multiplies and two adds per 64 (more products per multiply than
    // `vpmaddwd` alone). Not in the JSON, whose int8 figure compare.sh divides by.
    let step = match Int8Kernel::detect() {
        Some(Int8Kernel::Avx2) => issue_rate::maddubs_pair_step256(),
        Some(Int8Kernel::Avx512Bw) => issue_rate::maddubs_step512(),
        _ => None,
    };
    if let (false, Some(step)) = (json, step) {
        let rate = peak(&step, threads) / 1e9;
        println!(
            "int8, the kernel's whole step: {} on {threads} threads: {rate:.1} GOP/s",
            step.name
        );
    }
    if json {
        println!("{{{}}}", fields.join(", "));
    }
}
