//! Hot kernels of the model on ModernBERT-base shapes: attention (global and banded local over a
//! packed batch; candle's and the fused CPU kernel from `qkv`), one encoder layer (f32, bf16),
//! and the linear layer's GEMM (candle's, the packed f32 kernel, the AVX512-BF16 kernel).
//!
//! `cargo bench --bench model` (a few minutes on 2 cores).

mod common;

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mbpipe_model::internals::{attend, attend_fused, Products};
use mbpipe_model::{AttentionKind, ModelFiles, ModernBert, PackedBatch};

fn qkv(tokens: usize) -> (Tensor, Tensor, Tensor) {
    let r = || Tensor::randn(0f32, 1.0, (common::HEADS, tokens, 64), &Device::Cpu).unwrap();
    (r(), r(), r())
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let batches = [
        ("comments-4k", common::comment_lengths(4096)),
        ("long-2x2048", vec![2048, 2048]),
    ];
    for (name, lengths) in &batches {
        let batch = PackedBatch::from_sequences(&common::sequences(lengths));
        let (q, k, v) = qkv(batch.num_tokens());
        g.throughput(Throughput::Elements(batch.num_tokens() as u64));
        for (kind_name, kind) in [
            ("global", AttentionKind::Global),
            ("local", AttentionKind::Local { half_window: 64 }),
        ] {
            g.bench_with_input(BenchmarkId::new(kind_name, name), &batch, |b, batch| {
                b.iter(|| attend(&q, &k, &v, batch, kind).unwrap())
            });
        }
    }
    g.finish();
}

/// RoPE tables `[max_positions, head_dim / 2]` (cos, sin) for a base `theta`, as ModernBERT
/// builds them: angle = position * theta^(-2i / head_dim).
fn rope_tables(theta: f64, max_positions: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for p in 0..max_positions {
        for f in &inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The fused CPU attention straight from the `Wqkv` output `[tokens, 3 * hidden]` (RoPE, scores,
/// softmax, product with V), as the encoder calls it.
fn fused_attention(c: &mut Criterion) {
    const HEAD_DIM: usize = 64;
    const MAX_POSITIONS: usize = 8192;
    let hidden = common::HEADS * HEAD_DIM;
    // ModernBERT-base: global layers use theta 160000, local ones 10000.
    let global_rope = rope_tables(160_000.0, MAX_POSITIONS, HEAD_DIM);
    let local_rope = rope_tables(10_000.0, MAX_POSITIONS, HEAD_DIM);
    let local = AttentionKind::Local { half_window: 64 }; // local_attention = 128
    let cases = [
        ("100x80", vec![80; 100], "global", AttentionKind::Global),
        ("2x2048", vec![2048, 2048], "global", AttentionKind::Global),
        ("2x2048", vec![2048, 2048], "local-128", local),
    ];
    let mut g = c.benchmark_group("fused_attention");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, lengths, kind_name, kind) in &cases {
        let batch = PackedBatch::from_sequences(&common::sequences(lengths));
        let tokens = batch.num_tokens();
        let qkv = Tensor::randn(0f32, 1.0, (tokens, 3 * hidden), &Device::Cpu).unwrap();
        let (cos, sin) = match kind {
            AttentionKind::Global => &global_rope,
            _ => &local_rope,
        };
        let run =
            || attend_fused(&qkv, cos, sin, &batch, *kind, common::HEADS, Products::F32).unwrap();
        if run().is_none() {
            eprintln!(
                "fused_attention/{kind_name}/{name}: SKIPPED (fused kernel off: \
                 MBPIPE_FUSED_ATTENTION=0?)"
            );
            continue;
        }
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_function(BenchmarkId::new(*kind_name, name), |b| b.iter(run));
    }
    g.finish();
}

fn encoder_layer(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    common::write_base_model(dir.path(), 1);
    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let batch = PackedBatch::from_sequences(&common::sequences(&common::comment_lengths(2048)));
    let mut g = c.benchmark_group("encoder_layer");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(batch.num_tokens() as u64));
    for (name, dtype, kernel) in [
        ("f32", DType::F32, true),
        ("bf16", DType::BF16, true),
        ("bf16-candle", DType::BF16, false),
    ] {
        let model = ModernBert::load_with_kernel(&files, &Device::Cpu, dtype, kernel).unwrap();
        // One global layer (layer 0), with the embedding gather and final norm around it.
        g.bench_function(BenchmarkId::new(name, "comments-2k"), |b| {
            b.iter(|| model.encode(&batch).unwrap())
        });
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    use mbpipe_model::bf16_gemm::{available, PackedWeight};
    use mbpipe_model::f32_gemm::PackedF32;
    use mbpipe_model::PackedGemm;
    let (m, k, n) = (2048, 768, 2304);
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("gemm_2048x768x2304");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements((2 * m * k * n) as u64)); // elements/s = FLOP/s
    g.bench_function("candle-f32", |b| {
        b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
    });
    let (xb, wb) = (
        x.to_dtype(DType::BF16).unwrap(),
        w.to_dtype(DType::BF16).unwrap(),
    );
    g.bench_function("candle-bf16", |b| {
        b.iter(|| xb.matmul(&wb.t().unwrap()).unwrap())
    });
    let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    if let Some(packed) = PackedF32::pack(&ws, n, k) {
        g.bench_function("f32-kernel", |b| b.iter(|| packed.matmul(&xs, m, None)));
    } else {
        eprintln!("gemm/f32-kernel: SKIPPED (no AVX2 + FMA or AVX-512, or MBPIPE_F32_GEMM=0)");
    }
    if available() {
        let packed = PackedWeight::pack(&ws, n, k);
        g.bench_function("avx512bf16-kernel", |b| {
            b.iter(|| packed.matmul(&xs, m, None))
        });
    } else {
        eprintln!("gemm/avx512bf16-kernel: SKIPPED (this CPU has no avx512bf16)");
    }
    g.finish();
}

criterion_group!(benches, attention, fused_attention, encoder_layer, gemm);
criterion_main!(benches);
