//! Times the fused CPU attention alone on ModernBERT-base head shapes (profiling aid).
//!
//! `cargo run --release -p mbpipe-model --example attention_bench -- [len] [count] [reps] [products]`
//! Packs `count` sequences of `len` tokens and prints GFLOP/s (QKᵀ and PV) for a global and a
//! banded local (window 128) layer; `products` 1: the bf16 products where the CPU has them (AMX
//! tiles, else `vdpbf16ps`), 2: QKᵀ in int8 where the CPU has 512-bit VNNI, 0: f32.

use std::time::Instant;

use mbpipe_model::internals::{attend_fused, Products};
use mbpipe_model::{AttentionKind, Device, PackedBatch, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().unwrap());
    let (len, count, reps) = (arg(0, 80), arg(1, 100), arg(2, 20));
    let products = match arg(3, 0) {
        1 => Products::Bf16,
        2 => Products::Int8,
        _ => Products::F32,
    };
    let (heads, hidden) = (12, 768);
    let half = hidden / heads / 2;
    let cos = vec![0.6f32; 8192 * half];
    let sin = vec![0.8f32; 8192 * half];
    let batch = PackedBatch::from_sequences(&vec![vec![0u32; len]; count]);
    let t = batch.num_tokens();
    let qkv = Tensor::randn(0f32, 1.0, (t, 3 * hidden), &Device::Cpu).unwrap();
    for (name, kind, keys) in [
        ("global", AttentionKind::Global, len),
        (
            "local",
            AttentionKind::Local { half_window: 64 },
            len.min(129),
        ),
    ] {
        let flop = 4.0 * hidden as f64 * (t * keys) as f64;
        let mut best = f64::MAX;
        let cpu0 = cpu_seconds();
        for _ in 0..reps {
            let t0 = Instant::now();
            attend_fused(&qkv, &cos, &sin, &batch, kind, heads, products)
                .unwrap()
                .unwrap();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let cpu = (cpu_seconds() - cpu0) / reps as f64;
        println!(
            "{name}: {count} x {len} tokens: best {:.2} ms wall, {:.1} GFLOP/s; mean {:.2} ms CPU, {:.1} GFLOP per CPU-second",
            best * 1e3,
            flop / best / 1e9,
            cpu * 1e3,
            flop / cpu / 1e9
        );
    }
}

/// User + system CPU time of this process (Linux), for measuring on a busy machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum()
    });
    ticks / 100.0
}
