//! Where a model's files come from: a local directory or the Hugging Face Hub.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Pooling;
use crate::error::{ModelError, Result};

/// A model as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A directory laid out as the Hub has it.
    Local(PathBuf),
    /// A Hub repository, at an optional revision (branch, tag or commit).
    Hub {
        /// `org/name`.
        repo: String,
        /// Revision, `main` when absent.
        revision: Option<String>,
    },
}

impl ModelRef {
    /// Parses `path/to/dir`, `org/name` or `org/name@revision`.
    ///
    /// An existing directory always wins; anything else must be a valid Hub id, so a
    /// mistyped path is reported as a missing directory rather than sent to the Hub.
    pub fn parse(reference: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(reference);
        if path.is_dir() {
            if revision.is_some() {
                return Err(invalid(
                    reference,
                    "a revision only applies to Hub models, not to a local directory",
                ));
            }
            return Ok(ModelRef::Local(path.to_path_buf()));
        }
        let looks_like_path = reference.starts_with('.')
            || reference.starts_with('/')
            || reference.starts_with('~')
            || reference.contains('\\')
            || reference.matches('/').count() != 1;
        if looks_like_path {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: "no such model directory (a Hub model is named `org/name` or `org/name@revision`)".into(),
            });
        }
        let (repo, inline_rev) = match reference.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (reference, None),
        };
        let revision = match (inline_rev, revision) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    reference,
                    &format!("revision given twice: `{a}` and `{b}`"),
                ))
            }
            (a, b) => a.or(b).map(str::to_string),
        };
        validate_repo_id(reference, repo)?;
        if let Some(rev) = &revision {
            let ok = !rev.is_empty()
                && rev.len() <= 255
                && !rev.contains("..")
                && rev
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !ok {
                return Err(invalid(
                    reference,
                    &format!("revision `{rev}` may only use letters, digits, `.`, `_`, `-`, `/`"),
                ));
            }
        }
        Ok(ModelRef::Hub {
            repo: repo.to_string(),
            revision,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRef::Local(p) => write!(f, "{}", p.display()),
            ModelRef::Hub {
                repo,
                revision: Some(r),
            } => write!(f, "{repo}@{r}"),
            ModelRef::Hub {
                repo,
                revision: None,
            } => write!(f, "{repo}"),
        }
    }
}

fn invalid(reference: &str, reason: &str) -> ModelError {
    ModelError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    }
}

fn validate_repo_id(reference: &str, repo: &str) -> Result<()> {
    let parts: Vec<&str> = repo.split('/').collect();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if parts.len() != 2 || !parts.iter().all(|p| part_ok(p)) {
        return Err(invalid(
            reference,
            "a Hub id is `org/name`, each part letters, digits, `.`, `_` or `-` (and no such local directory exists)",
        ));
    }
    Ok(())
}

/// Sentence-transformers settings found beside the model (`modules.json`, `1_Pooling`, prompts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceTransformersConfig {
    /// Pooling from `1_Pooling/config.json`.
    pub pooling: Option<Pooling>,
    /// Whether `modules.json` ends with a Normalize module.
    pub normalize: bool,
    /// The default prompt (`default_prompt_name`, else the `document` prompt), if any.
    pub default_prompt: Option<String>,
}

/// The files of one model, all local.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The directory (or Hub snapshot) they come from, for messages.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// Safetensors shards (one file unless sharded).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Sentence-transformers settings, when the model ships them.
    pub sentence_transformers: Option<SentenceTransformersConfig>,
    /// The revision the files were resolved at (Hub models), for manifests.
    pub revision: Option<String>,
}

impl ModelFiles {
    /// Finds the files of `model`, downloading Hub models into the standard HF cache.
    pub fn resolve(model: &ModelRef) -> Result<Self> {
        match model {
            ModelRef::Local(dir) => Self::from_dir(dir),
            ModelRef::Hub { repo, revision } => crate::hub::fetch(repo, revision.as_deref()),
        }
    }

    /// Reads a local model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let get = |name: &str, hint: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile {
                    path: p,
                    hint: hint.to_string(),
                })
            }
        };
        let config = get(
            "config.json",
            "a model directory needs config.json, as on the Hub",
        )?;
        let weights = local_weights(dir)?;
        let tokenizer = get(
            "tokenizer.json",
            "a model directory needs tokenizer.json, as on the Hub",
        )?;
        let sentence_transformers = SentenceTransformersConfig::read(dir)?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            sentence_transformers,
            revision: None,
        })
    }
}

/// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
fn local_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards_from_index(&index);
    }
    for pickle in [
        "pytorch_model.bin",
        "model.bin",
        "pytorch_model.bin.index.json",
        "model.pt",
    ] {
        let p = dir.join(pickle);
        if p.is_file() {
            return Err(ModelError::PickleRefused { path: p });
        }
    }
    Err(ModelError::MissingFile {
        path: single,
        hint: "a model directory needs model.safetensors (or model.safetensors.index.json with its shards)".into(),
    })
}

/// Shard files listed in a safetensors index, in first-seen order, each checked to exist.
pub(crate) fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = read(index)?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: index.to_path_buf(),
        reason: e.to_string(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for file in parsed.weight_map.values() {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::Config {
                path: index.to_path_buf(),
                reason: format!("shard name `{file}` must be a plain file name"),
            });
        }
        let p = dir.join(file);
        if !shards.contains(&p) {
            if !p.is_file() {
                return Err(ModelError::MissingFile {
                    path: p,
                    hint: format!("listed in {}", index.display()),
                });
            }
            shards.push(p);
        }
    }
    Ok(shards)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl SentenceTransformersConfig {
    /// Reads `modules.json` and friends from a model directory; `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Module {
            #[serde(default)]
            path: String,
            #[serde(rename = "type")]
            kind: String,
        }
        let bad = |path: &Path, e: serde_json::Error| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let modules: Vec<Module> =
            serde_json::from_str(&read(&modules_path)?).map_err(|e| bad(&modules_path, e))?;
        let mut out = SentenceTransformersConfig::default();
        for m in &modules {
            if m.kind.ends_with(".Normalize") {
                out.normalize = true;
            }
            if m.kind.ends_with(".Pooling") {
                #[derive(Deserialize)]
                struct PoolingConfig {
                    #[serde(default)]
                    pooling_mode_cls_token: bool,
                    #[serde(default)]
                    pooling_mode_mean_tokens: bool,
                }
                let p = dir.join(&m.path).join("config.json");
                if p.is_file() {
                    let cfg: PoolingConfig =
                        serde_json::from_str(&read(&p)?).map_err(|e| bad(&p, e))?;
                    out.pooling = match (cfg.pooling_mode_cls_token, cfg.pooling_mode_mean_tokens) {
                        (true, _) => Some(Pooling::Cls),
                        (false, true) => Some(Pooling::Mean),
                        _ => None,
                    };
                }
            }
        }
        let prompts_path = dir.join("config_sentence_transformers.json");
        if prompts_path.is_file() {
            #[derive(Deserialize)]
            struct Prompts {
                #[serde(default)]
                prompts: BTreeMap<String, String>,
                default_prompt_name: Option<String>,
            }
            let p: Prompts =
                serde_json::from_str(&read(&prompts_path)?).map_err(|e| bad(&prompts_path, e))?;
            let name = p
                .default_prompt_name
                .unwrap_or_else(|| "document".to_string());
            out.default_prompt = p.prompts.get(&name).filter(|s| !s.is_empty()).cloned();
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_and_revisions() {
        assert_eq!(
            ModelRef::parse("answerdotai/ModernBERT-base@v1.0", None).unwrap(),
            ModelRef::Hub {
                repo: "answerdotai/ModernBERT-base".into(),
                revision: Some("v1.0".into())
            }
        );
        assert_eq!(
            ModelRef::parse("org/name", Some("abc123")).unwrap(),
            ModelRef::Hub {
                repo: "org/name".into(),
                revision: Some("abc123".into())
            }
        );
    }

    #[test]
    fn rejects_hub_ids_that_would_escape_the_cache() {
        for bad in ["org/..", "org/na me", "org/name@../../etc", "-org/x"] {
            assert!(ModelRef::parse(bad, None).is_err(), "{bad} accepted");
        }
        let err = ModelRef::parse("./not/here", None).unwrap_err().to_string();
        assert!(err.contains("no such model directory"), "{err}");
    }

    #[test]
    fn refuses_pickled_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"PK").unwrap();
        let err = ModelFiles::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("pickled PyTorch checkpoint") && err.contains("safetensors"),
            "{err}"
        );
    }

    #[test]
    fn reads_sentence_transformers_settings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
               {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
               {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        std::fs::create_dir(d.join("1_Pooling")).unwrap();
        std::fs::write(
            d.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("config_sentence_transformers.json"),
            r#"{"prompts": {"query": "search_query: ", "document": "search_document: "}, "default_prompt_name": null}"#,
        )
        .unwrap();
        let st = SentenceTransformersConfig::read(d).unwrap().unwrap();
        assert_eq!(st.pooling, Some(Pooling::Cls));
        assert!(st.normalize);
        assert_eq!(st.default_prompt.as_deref(), Some("search_document: "));
    }
}
