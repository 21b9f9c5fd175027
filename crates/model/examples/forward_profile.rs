//! Times the packed forward of a random ModernBERT-base-shaped model (profiling aid).
//!
//! `cargo run --release -p mbpipe-model --example forward_profile -- [f32|bf16|f16|int8] [tokens] [median] [layers] [reps] [all|cls]`
//! Writes random weights to a temporary folder, packs sequences with a long-tailed length mix
//! (log-normal around `median`), and prints real tokens/s and linear-layer GFLOP/s per rep. With
//! `all` or `cls` the classifier pools the cls token, and `cls` keeps only those rows.

use std::time::Instant;

use mbpipe_model::synthetic::Synthetic;
use mbpipe_model::{Device, ModelFiles, ModernBert, PackedBatch, Precision, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let precision: Precision = arg(0, "f32").parse().unwrap();
    let tokens: usize = arg(1, "4096").parse().unwrap();
    let median: f64 = arg(2, "44").parse().unwrap();
    let layers: usize = arg(3, "22").parse().unwrap();
    let reps: usize = arg(4, "3").parse().unwrap();
    // `cls`: the forward keeps each sequence's first row alone (`encode_rows`), as a pipeline
    // does for a cls-pooled classifier; `all` (the default): every row.
    let cls_rows = match arg(5, "all").as_str() {
        "cls" => true,
        "all" => false,
        other => panic!("rows must be `all` or `cls`, found `{other}`"),
    };
    let (h, inter) = (768, 1152);

    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = Synthetic::base(layers, 50368);
    checkpoint.special_ids = (50281, 50282);
    if args.len() > 5 {
        checkpoint.pooling = "cls";
    }
    checkpoint.write(dir.path()).unwrap();
    let files = ModelFiles::from_dir(dir.path()).unwrap();
    let t0 = Instant::now();
    let model = ModernBert::load_precision(&files, &Device::Cpu, precision).unwrap();
    eprintln!("load {:.3}s", t0.elapsed().as_secs_f64());

    // Log-normal lengths (sigma 1), deterministic.
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut total = 0;
    while total < tokens {
        let z = (-2.0 * uniform().max(1e-12).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * uniform()).cos();
        let len = ((median * z.exp()) as usize)
            .clamp(3, 8192)
            .min(tokens - total)
            .max(1);
        seqs.push((0..len as u32).map(|i| 1000 + (i * 7919) % 40000).collect());
        total += len;
    }
    seqs.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let batch = PackedBatch::from_sequences(&seqs);
    // Attention FLOPs (QKᵀ and PV): global layers see the whole sequence, local ones 129 keys.
    let global_layers = layers.div_ceil(3) as f64;
    let attn_flop: f64 = seqs
        .iter()
        .map(|s| {
            let n = s.len() as f64;
            4.0 * h as f64
                * n
                * (global_layers * n + (layers as f64 - global_layers) * n.min(129.0))
        })
        .sum();
    println!(
        "longest sequence {} tokens; attention {:.1} GFLOP per forward",
        seqs[0].len(),
        attn_flop / 1e9
    );
    let flop_per_token =
        2.0 * layers as f64 * (h * 3 * h + h * h + h * 2 * inter + inter * h) as f64;
    // The machine's f32 GEMM rate right now (shared machines are noisy): candle on Wqkv's shape.
    let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap();
    let (a, b) = (r(&[2048, 768]), r(&[2304, 768]));
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        let _ = a.matmul(&b.t().unwrap()).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "candle f32 GEMM 2048x768x2304: {:.1} GFLOP/s",
        2.0 * 2048.0 * 768.0 * 2304.0 / best / 1e9
    );
    mbpipe_model::profile::enable(true);
    let mut busy = 0.0;
    for rep in 0..reps {
        let t0 = Instant::now();
        let logits = match cls_rows {
            true => {
                let first = (0..batch.num_sequences()).map(|i| batch.range(i).start as u32);
                let states = model.encode_rows(&batch, first.collect()).unwrap();
                model.classify(&states, &batch).unwrap()
            }
            false => model
                .classify(&model.encode(&batch).unwrap(), &batch)
                .unwrap(),
        };
        let _ = logits.to_vec2::<f32>().unwrap();
        let s = t0.elapsed().as_secs_f64();
        busy += s;
        println!(
            "rep {rep}: {} seqs, {} tokens, {:.3}s, {:.0} tokens/s, {:.1} linear GFLOP/s",
            seqs.len(),
            total,
            s,
            total as f64 / s,
            flop_per_token * total as f64 / s / 1e9
        );
    }
    println!("stage | seconds | share");
    for (stage, secs) in mbpipe_model::profile::report() {
        println!("{stage} | {secs:.3} | {:.1}%", 100.0 * secs / busy);
    }
}
