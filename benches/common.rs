//! Shared helpers of the benches: a random ModernBERT-base-shaped checkpoint and length mixes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// ModernBERT-base shapes.
pub const HIDDEN: usize = 768;
pub const INTER: usize = 1152;
pub const HEADS: usize = 12;

/// Writes a random classifier with ModernBERT-base layer shapes (`layers` layers, a small
/// vocabulary: the embedding gather is not what is measured) into `dir`.
pub fn write_base_model(dir: &Path, layers: usize) {
    let (h, inter, vocab) = (HIDDEN, INTER, 1024);
    let cfg = serde_json::json!({
        "architectures": ["ModernBertForSequenceClassification"], "model_type": "modernbert",
        "vocab_size": vocab, "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "global_attn_every_n_layers": 3, "local_attention": 128, "max_position_embeddings": 8192,
        "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "norm_eps": 1e-5,
        "classifier_pooling": "mean", "cls_token_id": 1, "sep_token_id": 2,
        "id2label": {"0": "a", "1": "b"}
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let dev = Device::Cpu;
    let r = |s: &[usize], std: f32| Tensor::randn(0f32, std, s, &dev).unwrap();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &dev).unwrap();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert(
        "model.embeddings.tok_embeddings.weight".into(),
        r(&[vocab, h], 0.5),
    );
    w.insert("model.embeddings.norm.weight".into(), ones(h));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        if l > 0 {
            w.insert(format!("{p}.attn_norm.weight"), ones(h));
        }
        w.insert(format!("{p}.attn.Wqkv.weight"), r(&[3 * h, h], 0.03));
        w.insert(format!("{p}.attn.Wo.weight"), r(&[h, h], 0.03));
        w.insert(format!("{p}.mlp_norm.weight"), ones(h));
        w.insert(format!("{p}.mlp.Wi.weight"), r(&[2 * inter, h], 0.03));
        w.insert(format!("{p}.mlp.Wo.weight"), r(&[h, inter], 0.03));
    }
    w.insert("model.final_norm.weight".into(), ones(h));
    w.insert("head.dense.weight".into(), r(&[h, h], 0.03));
    w.insert("head.norm.weight".into(), ones(h));
    w.insert("classifier.weight".into(), r(&[2, h], 0.03));
    w.insert("classifier.bias".into(), r(&[2], 0.03));
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

/// Sequence lengths of a comments-like corpus (median ~44, long tail), `total` tokens in all,
/// deterministic.
pub fn comment_lengths(total: usize) -> Vec<usize> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::new();
    let mut sum = 0;
    while sum < total {
        let z = (-2.0 * uniform().max(1e-12).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * uniform()).cos();
        let len = ((44.0 * z.exp()) as usize).clamp(3, 1024).min(total - sum);
        out.push(len);
        sum += len;
    }
    out
}

/// Token ids for sequences of the given lengths (ids 3.. below the bench model's vocabulary).
pub fn sequences(lengths: &[usize]) -> Vec<Vec<u32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            (0..len as u32)
                .map(|i| 3 + (i * 31 + s as u32 * 17) % 1000)
                .collect()
        })
        .collect()
}
