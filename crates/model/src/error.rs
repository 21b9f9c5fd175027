//! Errors of model loading and inference.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model needs is not in the model directory.
    #[error("model file `{path}` is missing: {hint}")]
    MissingFile {
        /// The file looked for.
        path: PathBuf,
        /// What the user can do about it.
        hint: String,
    },
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a ModernBERT config we understand.
    #[error("invalid model config `{path}`: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("cannot read weights `{path}` (corrupt or truncated safetensors file?): {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint in `{dir}`")]
    MissingTensor {
        /// Name of the tensor (with the checkpoint's prefix).
        name: String,
        /// Model directory.
        dir: PathBuf,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} (from config.json)")]
    TensorShape {
        /// Name of the tensor.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor is not floating point (weights stored as integers cannot be used).
    #[error("tensor `{name}` has dtype {found}; the engine needs floating-point weights (F32, F16 or BF16)")]
    TensorDtype {
        /// Name of the tensor.
        name: String,
        /// The dtype in the checkpoint.
        found: String,
    },
    /// A pickled PyTorch checkpoint: refused, since loading it would run code from the file.
    #[error(
        "`{path}` is a pickled PyTorch checkpoint, which mbpipe never loads (unpickling runs code \
         from the file). Convert it to safetensors, e.g. in Python: \
         `AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
    )]
    PickleRefused {
        /// The `.bin` / `.pt` file found.
        path: PathBuf,
    },
    /// A Hub reference that is not a valid `org/name[@revision]`.
    #[error("invalid model reference `{reference}`: {reason}")]
    InvalidReference {
        /// What the user wrote.
        reference: String,
        /// Why it is not valid.
        reason: String,
    },
    /// Downloading from the Hugging Face Hub failed.
    #[error("cannot fetch `{file}` of `{repo}` from the Hugging Face Hub: {reason}")]
    Hub {
        /// Repository id.
        repo: String,
        /// File in the repository.
        file: String,
        /// The cause, with a hint.
        reason: String,
    },
    /// A model file was written to while a run read it (the token embeddings, read on demand).
    #[error(
        "model file `{path}` was written to while the run read it ({change}); the run stops so \
         that no row mixes two models. Rerun once the model is written, and replace a model by \
         writing a new file, not over the one a run is using"
    )]
    ChangedDuringRun {
        /// The file.
        path: PathBuf,
        /// What changed (length, or modification time).
        change: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer `{path}`: {reason}")]
    Tokenizer {
        /// tokenizer.json path.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A request the model cannot serve (e.g. classification on a masked LM).
    #[error("{0}")]
    Unsupported(String),
    /// An input the engine rejects (e.g. a sequence longer than the model's positions).
    #[error("invalid input: {0}")]
    Input(String),
    /// The tensor library failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Whether the user must fix a model reference, directory or checkpoint (as opposed to a
    /// failure while running).
    pub fn is_configuration_error(&self) -> bool {
        matches!(
            self,
            ModelError::Config { .. }
                | ModelError::MissingFile { .. }
                | ModelError::InvalidReference { .. }
                | ModelError::PickleRefused { .. }
                | ModelError::MissingTensor { .. }
                | ModelError::TensorShape { .. }
                | ModelError::TensorDtype { .. }
                | ModelError::Weights { .. }
                | ModelError::Tokenizer { .. }
                | ModelError::Unsupported(_)
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
