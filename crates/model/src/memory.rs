//! An estimate of a forward pass's peak device memory from a batch's sequence lengths: what the
//! out-of-memory split compares batches by (a token count alone misjudges the padded path, whose
//! attention grows with the square of the longest sequence).

use crate::config::{AttentionKind, ModernBertConfig};
use crate::kernel::AttentionKernel;

/// Tensors of one token alive at a layer's peak, in units of `hidden_size` elements: the
/// residual, the normed input, qkv (3), the rotated queries and keys (2) and the head-major copies
/// (3), the padded path's token-major copies (3) and its output on the way back (3).
const HIDDEN_PER_TOKEN: usize = 16;
/// ... and in units of `intermediate_size`: the gated product (2) and its GEGLU (1).
const INTERMEDIATE_PER_TOKEN: usize = 3;

/// Approximate peak bytes of a forward over sequences of `sorted` lengths (ascending) with
/// `kernel`, activations of `dtype_bytes` each: the activations, linear in the tokens, plus the
/// largest attention block over the config's layer kinds (nothing extra for FlashAttention-2,
/// whose memory is linear in the tokens).
pub(crate) fn forward_bytes(
    config: &ModernBertConfig,
    kernel: AttentionKernel,
    dtype_bytes: usize,
    sorted: &[usize],
) -> u64 {
    let tokens: usize = sorted.iter().sum();
    let per_token = (HIDDEN_PER_TOKEN * config.hidden_size
        + INTERMEDIATE_PER_TOKEN * config.intermediate_size)
        * dtype_bytes;
    let heads = config.num_attention_heads;
    let mut kinds: Vec<Option<usize>> = config
        .layers
        .iter()
        .map(|(kind, _)| match *kind {
            AttentionKind::Global => None,
            AttentionKind::Local { half_window } => Some(half_window),
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let attention = kinds
        .iter()
        .map(|&half_window| match kernel {
            AttentionKernel::Flash => 0,
            AttentionKernel::Padded | AttentionKernel::PaddedAfterFlashFailed => {
                crate::varlen::padded_peak_bytes(
                    sorted,
                    heads,
                    config.hidden_size,
                    dtype_bytes,
                    half_window,
                )
            }
            AttentionKernel::Cpu | AttentionKernel::PerSequence => {
                crate::varlen::per_sequence_peak_bytes(sorted, heads, half_window)
            }
        })
        .max()
        .unwrap_or(0);
    (tokens * per_token + attention) as u64
}

/// Padding the attention of a forward over sequences of `sorted` lengths computes with
/// `kernel`, and all the positions it computes, both summed over layers: `(padding, positions)`,
/// positions being the tokens plus the padding. Only the padded GPU path pads; the CPU kernels,
/// the per-sequence path and FlashAttention-2 compute exactly the tokens.
pub(crate) fn attention_padding(
    config: &ModernBertConfig,
    kernel: AttentionKernel,
    sorted: &[usize],
) -> (u64, u64) {
    let tokens: usize = sorted.iter().sum();
    let mut padding = 0;
    for (kind, _) in &config.layers {
        let half_window = match *kind {
            AttentionKind::Global => None,
            AttentionKind::Local { half_window } => Some(half_window),
        };
        if matches!(
            kernel,
            AttentionKernel::Padded | AttentionKernel::PaddedAfterFlashFailed
        ) {
            padding += crate::varlen::padded_slots(sorted, config.num_attention_heads, half_window);
        }
    }
    let positions = tokens * config.layers.len() + padding;
    (padding as u64, positions as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ModernBertConfig {
        // ModernBERT-base's shape: 768 wide, 12 heads, 1152 intermediate, global every third layer.
        ModernBertConfig::from_json(
            r#"{"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 1152,
                "num_hidden_layers": 22, "vocab_size": 50368, "global_attn_every_n_layers": 3,
                "local_attention": 128, "max_position_embeddings": 8192}"#,
        )
        .unwrap()
    }

    #[test]
    fn only_the_padded_path_pads_and_every_layer_counts() {
        let c = base();
        let lens = [100, 128];
        for kernel in [
            AttentionKernel::Cpu,
            AttentionKernel::PerSequence,
            AttentionKernel::Flash,
        ] {
            assert_eq!(attention_padding(&c, kernel, &lens), (0, 228 * 22));
        }
        // One group padded to 128 on each of the 22 layers: 28 slots each.
        let (padding, positions) = attention_padding(&c, AttentionKernel::Padded, &lens);
        assert_eq!((padding, positions), (28 * 22, (228 + 28) * 22));
    }

    #[test]
    fn estimates_follow_lengths_on_the_padded_path_and_tokens_with_flash() {
        let c = base();
        let est = |kernel, lens: &[usize]| forward_bytes(&c, kernel, 2, lens);
        let short = vec![128; 64]; // 8,192 tokens of short texts
        let long = vec![8192]; // the same tokens in one document
        let padded = AttentionKernel::Padded;
        assert!(
            est(padded, &long) > 2 * est(padded, &short),
            "{} vs {}",
            est(padded, &long),
            est(padded, &short)
        );
        // FlashAttention-2: the same tokens, the same memory.
        let flash = AttentionKernel::Flash;
        assert_eq!(est(flash, &long), est(flash, &short));
        // Linear in tokens beyond the attention block; more tokens never estimate less.
        assert!(est(padded, &[128; 128]) > est(padded, &short));
        assert!(est(flash, &[128; 128]) == 2 * est(flash, &short));
        // The per-sequence path holds a whole long sequence's scores: 12 × 8192² × 8 bytes.
        let per_sequence = est(AttentionKernel::PerSequence, &long);
        assert!(per_sequence > 12 * 8192 * 8192 * 8, "{per_sequence}");
        assert!(per_sequence > 4 * est(padded, &long));
        assert_eq!(est(padded, &[]), 0);
    }
}
