//! Random ModernBERT checkpoints in the published layout (`config.json`, `tokenizer.json`,
//! `model.safetensors`): a real model's shapes without its download, for the tests, benches and
//! profiling examples.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// Which head a synthetic checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticHead {
    /// The bare encoder, its tensors without the `model.` prefix (as `ModernBertModel` saves).
    Bare,
    /// `ModernBertForMaskedLM`: prediction head and decoder bias (tied decoder).
    MaskedLm,
    /// `ModernBertForSequenceClassification` with this many labels.
    Classifier(usize),
}

/// The shape and randomness of a synthetic checkpoint.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `global_attn_every_n_layers`.
    pub global_every: usize,
    /// `local_attention` (the window, both sides).
    pub local_attention: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// The head.
    pub head: SyntheticHead,
    /// `classifier_pooling`: `mean` or `cls`.
    pub pooling: &'static str,
    /// `(cls_token_id, sep_token_id)`.
    pub special_ids: (u32, u32),
    /// Standard deviation of the linear layers' weights and biases (embeddings: 0.5).
    pub weight_std: f32,
    /// Standard deviation of the LayerNorm weights around 1 (0: exactly 1).
    pub norm_noise: f32,
    /// The `tokenizer.json` written beside the weights.
    pub tokenizer_json: String,
}

impl Synthetic {
    /// ModernBERT-base's layer shapes (768 wide, 12 heads, 1152 intermediate, global every third
    /// layer, window 128) with `layers` layers, a 2-label classifier, small weights (0.03) so
    /// activations stay in range over 22 layers, and a `{}` tokenizer (callers pass ids).
    pub fn base(layers: usize, vocab: usize) -> Self {
        Synthetic {
            hidden: 768,
            intermediate: 1152,
            heads: 12,
            layers,
            vocab,
            global_every: 3,
            local_attention: 128,
            max_positions: 8192,
            head: SyntheticHead::Classifier(2),
            pooling: "mean",
            special_ids: (1, 2),
            weight_std: 0.03,
            norm_noise: 0.0,
            tokenizer_json: "{}".into(),
        }
    }

    /// The `config.json`, in the published (transformers 4.x) format.
    pub fn config(&self) -> serde_json::Value {
        let architecture = match self.head {
            SyntheticHead::Classifier(_) => "ModernBertForSequenceClassification",
            SyntheticHead::MaskedLm | SyntheticHead::Bare => "ModernBertForMaskedLM",
        };
        let mut cfg = serde_json::json!({
            "architectures": [architecture], "model_type": "modernbert",
            "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "global_attn_every_n_layers": self.global_every,
            "local_attention": self.local_attention,
            "max_position_embeddings": self.max_positions,
            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "norm_eps": 1e-5,
            "classifier_pooling": self.pooling,
            "cls_token_id": self.special_ids.0, "sep_token_id": self.special_ids.1
        });
        if let SyntheticHead::Classifier(labels) = self.head {
            let id2label: serde_json::Map<String, serde_json::Value> = (0..labels)
                .map(|i| (i.to_string(), format!("label_{i}").into()))
                .collect();
            cfg["id2label"] = id2label.into();
        }
        cfg
    }

    /// Random weights (f32, CPU) named as the published checkpoints name them.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let (h, inter) = (self.hidden, self.intermediate);
        let std = self.weight_std;
        let r = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &dev).unwrap();
        let norm = |n: usize| {
            let ones = Tensor::ones(n, DType::F32, &dev).unwrap();
            if self.norm_noise > 0.0 {
                (ones + r(&[n], self.norm_noise)).unwrap()
            } else {
                ones
            }
        };
        let prefix = if self.head == SyntheticHead::Bare {
            ""
        } else {
            "model."
        };
        let mut w = HashMap::new();
        w.insert(
            format!("{prefix}embeddings.tok_embeddings.weight"),
            r(&[self.vocab, h], 0.5),
        );
        w.insert(format!("{prefix}embeddings.norm.weight"), norm(h));
        for l in 0..self.layers {
            let p = format!("{prefix}layers.{l}");
            if l > 0 {
                w.insert(format!("{p}.attn_norm.weight"), norm(h));
            }
            w.insert(format!("{p}.attn.Wqkv.weight"), r(&[3 * h, h], std));
            w.insert(format!("{p}.attn.Wo.weight"), r(&[h, h], std));
            w.insert(format!("{p}.mlp_norm.weight"), norm(h));
            w.insert(format!("{p}.mlp.Wi.weight"), r(&[2 * inter, h], std));
            w.insert(format!("{p}.mlp.Wo.weight"), r(&[h, inter], std));
        }
        w.insert(format!("{prefix}final_norm.weight"), norm(h));
        if self.head != SyntheticHead::Bare {
            w.insert("head.dense.weight".into(), r(&[h, h], std));
            w.insert("head.norm.weight".into(), norm(h));
        }
        match self.head {
            SyntheticHead::Classifier(labels) => {
                w.insert("classifier.weight".into(), r(&[labels, h], std));
                w.insert("classifier.bias".into(), r(&[labels], std));
            }
            SyntheticHead::MaskedLm => {
                w.insert("decoder.bias".into(), r(&[self.vocab], std));
            }
            SyntheticHead::Bare => {}
        }
        w
    }

    /// Writes `config`, the tokenizer and `weights` into `dir` (created if needed).
    pub fn write_with(
        &self,
        dir: &Path,
        config: &serde_json::Value,
        weights: &HashMap<String, Tensor>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(config)?,
        )?;
        std::fs::write(dir.join("tokenizer.json"), &self.tokenizer_json)?;
        candle_core::safetensors::save(weights, dir.join("model.safetensors"))
            .map_err(std::io::Error::other)
    }

    /// Writes a checkpoint of random weights into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        self.write_with(dir, &self.config(), &self.weights())
    }
}
