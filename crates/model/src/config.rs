//! `config.json` of a ModernBERT checkpoint, in the published format and in transformers v5's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// How token states are pooled into one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over every token of the sequence, [CLS] and [SEP] included.
    Mean,
    /// The first token ([CLS]).
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(format!("pooling must be `mean` or `cls`, found `{other}`")),
        }
    }
}

/// How classifier logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// Softmax over labels.
    SingleLabel,
    /// Independent sigmoid per label.
    MultiLabel,
    /// One raw value.
    Regression,
}

/// Attention pattern of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Every token sees the whole sequence.
    Global,
    /// Token `i` sees tokens `j` with `|i - j| <= half_window`.
    Local {
        /// `local_attention / 2`.
        half_window: usize,
    },
}

/// The parts of the config the engine uses, normalised from either format.
#[derive(Debug, Clone)]
pub struct ModernBertConfig {
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size (Wi outputs twice this).
    pub intermediate_size: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon (`norm_eps`).
    pub norm_eps: f64,
    /// Whether LayerNorms carry a bias.
    pub norm_bias: bool,
    /// Whether attention projections carry a bias.
    pub attention_bias: bool,
    /// Whether MLP projections carry a bias.
    pub mlp_bias: bool,
    /// Whether `head.dense` carries a bias (the final classifier always has one).
    pub classifier_bias: bool,
    /// Whether the MLM decoder has a bias.
    pub decoder_bias: bool,
    /// Per layer: global or local attention, and the RoPE theta it uses.
    pub layers: Vec<(AttentionKind, f64)>,
    /// Pooling used by the sequence classifier.
    pub classifier_pooling: Pooling,
    /// Labels in id order (`id2label`), empty when the config has none.
    pub labels: Vec<String>,
    /// How classifier logits become scores.
    pub problem_type: ProblemType,
    /// Architectures listed in the config.
    pub architectures: Vec<String>,
    /// [CLS] id.
    pub cls_token_id: u32,
    /// [SEP] id.
    pub sep_token_id: u32,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_norm_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
    #[serde(default = "yes")]
    decoder_bias: bool,
    hidden_activation: Option<String>,
    classifier_activation: Option<String>,
    classifier_pooling: Option<Pooling>,
    // Published format.
    global_attn_every_n_layers: Option<usize>,
    local_attention: Option<usize>,
    global_rope_theta: Option<f64>,
    local_rope_theta: Option<f64>,
    // transformers v5 format.
    layer_types: Option<Vec<String>>,
    rope_parameters: Option<BTreeMap<String, RopeParameters>>,
    sliding_window: Option<usize>,
    id2label: Option<BTreeMap<String, String>>,
    problem_type: Option<String>,
    cls_token_id: Option<u32>,
    sep_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn default_max_pos() -> usize {
    8192
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl ModernBertConfig {
    /// Reads and normalises `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and normalises the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(t) = &raw.model_type {
            if t != "modernbert" {
                return Err(format!("model_type is `{t}`, expected `modernbert`"));
            }
        }
        for (key, act) in [
            ("hidden_activation", &raw.hidden_activation),
            ("classifier_activation", &raw.classifier_activation),
        ] {
            if let Some(a) = act {
                if a != "gelu" {
                    return Err(format!(
                        "{key} is `{a}`; only `gelu` (exact erf GELU) is supported"
                    ));
                }
            }
        }
        check_limits(&raw)?;
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            ));
        }
        if !(raw.hidden_size / raw.num_attention_heads).is_multiple_of(2) {
            return Err("head dimension must be even for rotary embeddings".into());
        }
        let layers = layer_plan(&raw)?;
        let labels = match &raw.id2label {
            None => Vec::new(),
            Some(map) => {
                let mut pairs = Vec::with_capacity(map.len());
                for (id, label) in map {
                    let id: usize = id
                        .parse()
                        .map_err(|_| format!("id2label key `{id}` is not an integer"))?;
                    pairs.push((id, label.clone()));
                }
                pairs.sort();
                for (expected, (id, _)) in pairs.iter().enumerate() {
                    if *id != expected {
                        return Err(format!(
                            "id2label ids must be 0..{}; id {expected} is missing",
                            pairs.len()
                        ));
                    }
                }
                pairs.into_iter().map(|(_, l)| l).collect()
            }
        };
        let problem_type = match raw.problem_type.as_deref() {
            Some("multi_label_classification") => ProblemType::MultiLabel,
            Some("regression") => ProblemType::Regression,
            Some("single_label_classification") => ProblemType::SingleLabel,
            Some(other) => return Err(format!("unknown problem_type `{other}`")),
            None if labels.len() == 1 => ProblemType::Regression,
            None => ProblemType::SingleLabel,
        };
        Ok(ModernBertConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_attention_heads: raw.num_attention_heads,
            max_position_embeddings: raw.max_position_embeddings,
            norm_eps: raw.norm_eps,
            norm_bias: raw.norm_bias,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            classifier_bias: raw.classifier_bias,
            decoder_bias: raw.decoder_bias,
            layers,
            classifier_pooling: raw.classifier_pooling.unwrap_or(Pooling::Cls),
            labels,
            problem_type,
            architectures: raw.architectures,
            cls_token_id: raw.cls_token_id.unwrap_or(50281),
            sep_token_id: raw.sep_token_id.unwrap_or(50282),
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Upper bounds far above any ModernBERT, so that a corrupt or hostile config.json gets a clear
/// error instead of sizing an allocation (the weights' shapes are checked when they load).
const LIMITS: [(&str, usize); 6] = [
    ("vocab_size", 1 << 24),
    ("hidden_size", 1 << 16),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1024),
    ("num_attention_heads", 1024),
    ("max_position_embeddings", 1 << 20),
];

/// Checks the sizes against [`LIMITS`] and that none is zero.
fn check_limits(raw: &RawConfig) -> Result<(), String> {
    let values = [
        raw.vocab_size,
        raw.hidden_size,
        raw.intermediate_size,
        raw.num_hidden_layers,
        raw.num_attention_heads,
        raw.max_position_embeddings,
    ];
    for ((key, max), value) in LIMITS.iter().zip(values) {
        if value == 0 || value > *max {
            return Err(format!(
                "{key} is {value}; expected 1 to {max} (is config.json the model's own?)"
            ));
        }
    }
    let window = raw.local_attention.or(raw.sliding_window).unwrap_or(0);
    if window > 1 << 20 {
        return Err(format!(
            "local_attention / sliding_window is {window}; expected at most {}",
            1 << 20
        ));
    }
    Ok(())
}

/// Per layer: attention kind and RoPE theta, from whichever format the config uses.
fn layer_plan(raw: &RawConfig) -> Result<Vec<(AttentionKind, f64)>, String> {
    let local_attention = match (raw.local_attention, raw.sliding_window) {
        (Some(w), _) => w,
        (None, Some(half)) => half * 2,
        (None, None) => 128,
    };
    let half_window = local_attention / 2;
    let theta = |kind: &str, legacy: Option<f64>, default: f64| -> Result<f64, String> {
        if let Some(params) = raw.rope_parameters.as_ref().and_then(|p| p.get(kind)) {
            if let Some(t) = params.rope_type.as_deref() {
                if t != "default" {
                    return Err(format!(
                        "rope_type `{t}` for {kind} is not supported (only `default`)"
                    ));
                }
            }
            if let Some(theta) = params.rope_theta {
                return Ok(theta);
            }
        }
        Ok(legacy.unwrap_or(default))
    };
    let global_theta = theta("full_attention", raw.global_rope_theta, 160_000.0)?;
    let local_theta = theta("sliding_attention", raw.local_rope_theta, 10_000.0)?;
    let global = (AttentionKind::Global, global_theta);
    let local = (AttentionKind::Local { half_window }, local_theta);
    match &raw.layer_types {
        Some(types) => {
            if types.len() != raw.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries, num_hidden_layers is {}",
                    types.len(),
                    raw.num_hidden_layers
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(global),
                    "sliding_attention" => Ok(local),
                    other => Err(format!("unknown layer type `{other}`")),
                })
                .collect()
        }
        None => {
            let every = raw.global_attn_every_n_layers.unwrap_or(3).max(1);
            Ok((0..raw.num_hidden_layers)
                .map(|i| if i % every == 0 { global } else { local })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 4, "num_attention_heads": 2"#;

    #[test]
    fn published_format_alternates_global_every_n() {
        let cfg = ModernBertConfig::from_json(&format!(
            r#"{{{BASE}, "global_attn_every_n_layers": 3, "local_attention": 16,
            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}}"#
        ))
        .unwrap();
        let local = (AttentionKind::Local { half_window: 8 }, 10_000.0);
        let global = (AttentionKind::Global, 160_000.0);
        assert_eq!(cfg.layers, vec![global, local, local, global]);
    }

    #[test]
    fn v5_format_reads_layer_types_and_rope_parameters() {
        let cfg = ModernBertConfig::from_json(&format!(
            r#"{{{BASE}, "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "sliding_window": 4,
            "rope_parameters": {{"full_attention": {{"rope_type": "default", "rope_theta": 5000.0}},
                                 "sliding_attention": {{"rope_type": "default", "rope_theta": 700.0}}}}}}"#
        ))
        .unwrap();
        let local = (AttentionKind::Local { half_window: 4 }, 700.0);
        let global = (AttentionKind::Global, 5000.0);
        assert_eq!(cfg.layers, vec![global, local, global, local]);
    }

    #[test]
    fn integer_label_ids_and_multi_label() {
        let cfg = ModernBertConfig::from_json(&format!(
            r#"{{{BASE}, "id2label": {{"1": "b", "0": "a", "10": "k", "2": "c", "3": "d", "4": "e",
            "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}}, "label2id": {{"a": 0}},
            "problem_type": "multi_label_classification"}}"#
        ))
        .unwrap();
        assert_eq!(
            cfg.labels,
            "abcdefghijk".chars().map(String::from).collect::<Vec<_>>()
        );
        assert_eq!(cfg.problem_type, ProblemType::MultiLabel);
    }

    #[test]
    fn rejects_tanh_gelu_and_bad_heads() {
        let err = ModernBertConfig::from_json(&format!(
            r#"{{{BASE}, "hidden_activation": "gelu_pytorch_tanh"}}"#
        ))
        .unwrap_err();
        assert!(err.contains("hidden_activation"), "{err}");
        let err = ModernBertConfig::from_json(
            r#"{"vocab_size": 100, "hidden_size": 9, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap_err();
        assert!(err.contains("multiple"), "{err}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        // max_position_embeddings = 1e15 used to abort the process at load.
        for (key, value) in [
            ("max_position_embeddings", "1000000000000000"),
            ("max_position_embeddings", "0"),
            ("num_hidden_layers", "1000000000000"),
            ("vocab_size", "100000000000"),
            ("local_attention", "1000000000000"),
        ] {
            let mut cfg: serde_json::Value = serde_json::from_str(&format!("{{{BASE}}}")).unwrap();
            cfg[key] = serde_json::from_str(value).unwrap();
            let json = cfg.to_string();
            let err = ModernBertConfig::from_json(&json).unwrap_err();
            assert!(err.contains(key) && err.contains(value), "{key}: {err}");
        }
        assert!(ModernBertConfig::from_json(&format!(
            r#"{{{BASE}, "max_position_embeddings": 1048576}}"#
        ))
        .is_ok());
    }

    #[test]
    fn single_label_becomes_regression() {
        let cfg =
            ModernBertConfig::from_json(&format!(r#"{{{BASE}, "id2label": {{"0": "score"}}}}"#))
                .unwrap();
        assert_eq!(cfg.problem_type, ProblemType::Regression);
    }
}
