//! Errors of the pipeline, split by what the user must do about them.

/// A pipeline failure.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file, its models or its columns are wrong (exit code 2).
    #[error("{0}")]
    Invalid(String),
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] mbpipe_model::ModelError),
    /// A tensor operation failed outside the engine proper (head outputs to host memory).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] mbpipe_model::CandleError),
    /// Reading input or writing output failed.
    #[error(transparent)]
    Io(#[from] mbpipe_io::IoError),
    /// Tokenization failed.
    #[error(transparent)]
    Text(#[from] mbpipe_text::TextError),
    /// Arrow failed while building output columns.
    #[error("building output columns: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The input query failed.
    #[error("input query: {0}")]
    Query(String),
    /// A local file could not be read, written, created or stat'ed.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// `read`, `write`, `open`, `create`, `stat`, `remove`.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A thread or runtime of the run could not start.
    #[error("cannot start the {what}: {source}")]
    Start {
        /// Which (the reader, the tokenizer, ...).
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A previous run's output cannot be resumed safely: what is wrong, and that `--overwrite`
    /// starts over.
    #[error("{0}")]
    Resume(String),
    /// The output folder is held by another run.
    #[error("{0}")]
    Locked(String),
    /// A batch ran out of device memory and cannot be split further.
    #[error("{0}")]
    OutOfMemory(String),
    /// Encoding a journal line, lock or manifest failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An internal invariant failed.
    #[error("{0}; this is a bug")]
    Bug(String),
    /// Anything else at run time, with context.
    #[error("{0}")]
    Run(String),
    /// The run was interrupted (SIGINT/SIGTERM) after committing finished parts.
    #[error("{0}")]
    Interrupted(String),
}

impl PipelineError {
    /// A [`PipelineError::File`] error.
    pub(crate) fn file(
        action: &'static str,
        path: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        PipelineError::File {
            action,
            path: path.to_string(),
            source,
        }
    }

    /// Whether this is a configuration problem (exit code 2: the pipeline, its input spec or its
    /// model files) rather than a run failure (1).
    pub fn is_invalid_configuration(&self) -> bool {
        match self {
            PipelineError::Invalid(_) => true,
            PipelineError::Model(e) => e.is_configuration_error(),
            PipelineError::Io(e) => e.is_input_spec_error(),
            _ => false,
        }
    }
}
