//! The one error type of this crate; every variant names the file it is about.

use std::path::PathBuf;

use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use parquet::errors::ParquetError;

/// Errors from reading inputs or writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An object storage operation failed (after its retries); the error names the URL.
    #[error(transparent)]
    Store(#[from] mbpipe_store::StoreError),
    /// An input spec matched no file.
    #[error("no input files match `{spec}`")]
    NoMatch {
        /// The spec as given (file, directory or glob).
        spec: String,
    },
    /// An input file changed after the run listed it.
    #[error(
        "{} changed while mbpipe was reading it ({detail}); run again once it is complete",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// What changed.
        detail: String,
    },
    /// A glob pattern could not be parsed.
    #[error("invalid glob pattern `{spec}`")]
    Glob {
        /// The spec as given.
        spec: String,
        /// Why the pattern is invalid.
        #[source]
        source: glob::PatternError,
    },
    /// An explicitly named file has an extension this crate cannot read.
    #[error(
        "{}: unknown input format; expected .parquet, .jsonl or .ndjson (JSON lines optionally + .gz or .zst)",
        path.display()
    )]
    UnknownExtension {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory could not be opened, listed or created.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading (or decompressing) a file failed part way.
    #[error("error reading {}{}", path.display(), line.map(|l| format!(" after line {l}")).unwrap_or_default())]
    Read {
        /// The file.
        path: PathBuf,
        /// The last line read successfully, for line-oriented files.
        line: Option<u64>,
        /// The OS or decompression error.
        #[source]
        source: std::io::Error,
    },
    /// Writing, syncing or renaming an output file failed.
    #[error("error writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// One row of an input is bad (only returned with `OnError::Fail`).
    #[error("{}{}: {reason}", path.display(), location(*line, *row))]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number, for JSON lines.
        line: Option<u64>,
        /// 0-based row index in the file.
        row: Option<u64>,
        /// What is wrong with the row.
        reason: String,
    },
    /// A Parquet file is corrupt, truncated or unreadable.
    #[error("invalid Parquet file {}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: ParquetError,
    },
    /// Encoding a Parquet output file failed.
    #[error("cannot write Parquet file {}", path.display())]
    ParquetWrite {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: ParquetError,
    },
    /// Arrow failed to decode, convert or encode data of a file.
    #[error("{}: {context}", path.display())]
    Arrow {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// Arrow's error.
        #[source]
        source: ArrowError,
    },
    /// Two input files disagree on the type of a column.
    #[error(
        "column `{column}` is {first_type} in {} but {second_type} in {}",
        first_path.display(),
        second_path.display()
    )]
    SchemaConflict {
        /// The column.
        column: String,
        /// The file that first defined the column.
        first_path: PathBuf,
        /// Its type there.
        first_type: DataType,
        /// The file that disagrees.
        second_path: PathBuf,
        /// Its type there.
        second_type: DataType,
    },
    /// A column the caller needs is missing from the input schema.
    #[error("column `{column}` not found in the input; available: {available}")]
    MissingColumn {
        /// The column asked for.
        column: String,
        /// Comma-separated names of the columns that exist.
        available: String,
    },
    /// A column the caller needs has the wrong type.
    #[error("column `{column}` must be {expected}, found {found}")]
    ColumnType {
        /// The column.
        column: String,
        /// What is needed, in words.
        expected: String,
        /// The type the input has.
        found: DataType,
    },
}

impl IoError {
    /// Whether the input spec itself is wrong (no file matches, a bad glob, an unknown
    /// extension): invalid usage rather than a failure while reading.
    pub fn is_input_spec_error(&self) -> bool {
        match self {
            IoError::NoMatch { .. } | IoError::Glob { .. } | IoError::UnknownExtension { .. } => {
                true
            }
            // No such bucket, denied access, bad credentials: retrying will not help.
            IoError::Store(e) => e.is_permanent(),
            _ => false,
        }
    }
}

/// Formats `:line` or ` row N` for row error messages.
fn location(line: Option<u64>, row: Option<u64>) -> String {
    match (line, row) {
        (Some(l), _) => format!(":{l}"),
        (None, Some(r)) => format!(": row {r}"),
        (None, None) => String::new(),
    }
}
