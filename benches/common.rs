//! Shared helpers of the benches: a random ModernBERT-base-shaped checkpoint and length mixes.

#![allow(dead_code)]

use std::path::Path;

/// ModernBERT-base's attention heads.
pub const HEADS: usize = 12;

/// Writes a random classifier with ModernBERT-base layer shapes (`layers` layers, a small
/// vocabulary: the embedding gather is not what is measured) into `dir`.
pub fn write_base_model(dir: &Path, layers: usize) {
    mbpipe_model::synthetic::Synthetic::base(layers, 1024)
        .write(dir)
        .unwrap();
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
