//! Fetching a model from the Hugging Face Hub into the standard HF cache (`HF_HOME`).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};
use crate::files::{shards_from_index, ModelFiles};

/// Files beyond config, weights and tokenizer that matter when present.
const OPTIONAL_FILES: &[&str] = &[
    "modules.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn hub_repo(repo: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    )
}

/// Resolves `repo@revision` to local files, downloading what the cache lacks.
pub(crate) fn fetch(repo: &str, revision: Option<&str>) -> Result<ModelFiles> {
    let config = if offline() {
        from_cache(repo, revision)?
    } else {
        download(repo, revision)?
    };
    let dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut files = ModelFiles::from_dir(&dir)?;
    // hf-hub lays files out as snapshots/<commit>/..., so the directory name is the commit.
    files.revision = dir.file_name().map(|s| s.to_string_lossy().into_owned());
    files.dir = PathBuf::from(match revision {
        Some(r) => format!("{repo}@{r}"),
        None => repo.to_string(),
    });
    Ok(files)
}

fn from_cache(repo: &str, revision: Option<&str>) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let cached = cache.repo(hub_repo(repo, revision));
    let missing = |file: &str| ModelError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        reason: format!(
            "HF_HUB_OFFLINE is set and the file is not in the cache at {}; run once with network \
             access (unset HF_HUB_OFFLINE), or set `model` to a local directory",
            cache.path().display()
        ),
    };
    let config = cached
        .get("config.json")
        .ok_or_else(|| missing("config.json"))?;
    cached
        .get("tokenizer.json")
        .ok_or_else(|| missing("tokenizer.json"))?;
    if cached.get("model.safetensors").is_none()
        && cached.get("model.safetensors.index.json").is_none()
    {
        return Err(missing("model.safetensors"));
    }
    Ok(config)
}

fn download(repo: &str, revision: Option<&str>) -> Result<PathBuf> {
    let hub_error = |file: &str, e: &dyn std::fmt::Display| ModelError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        reason: format!(
            "{e} (check the network and the repository name; gated or private models need \
             HF_TOKEN; offline, set HF_HUB_OFFLINE=1 to use the cache)"
        ),
    };
    let api = ApiBuilder::from_env()
        .with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| hub_error("(client)", &e))?;
    let api_repo = api.repo(hub_repo(repo, revision));
    let info = api_repo
        .info()
        .map_err(|e| hub_error("(repository info)", &e))?;
    let has = |name: &str| info.siblings.iter().any(|s| s.rfilename == name);
    let get = |name: &str| api_repo.get(name).map_err(|e| hub_error(name, &e));
    let config = get("config.json")?;
    get("tokenizer.json")?;
    if has("model.safetensors") {
        get("model.safetensors")?;
    } else if has("model.safetensors.index.json") {
        let index = get("model.safetensors.index.json")?;
        // The index names shards; fetch them before checking they exist on disk.
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| hub_error("model.safetensors.index.json", &e))?;
        let mut shards: Vec<String> = value["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in &shards {
            get(shard)?;
        }
        shards_from_index(&index)?;
    } else if let Some(bin) = info.siblings.iter().find(|s| s.rfilename.ends_with(".bin")) {
        return Err(ModelError::PickleRefused {
            path: PathBuf::from(format!("{repo}/{}", bin.rfilename)),
        });
    } else {
        return Err(hub_error(
            "model.safetensors",
            &"the repository has no safetensors weights",
        ));
    }
    for name in OPTIONAL_FILES {
        if has(name) {
            get(name)?;
        }
    }
    Ok(config)
}
