//! Errors of table registration, querying and output.

use std::path::PathBuf;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Everything that can go wrong in `mbpipe sql`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A `--table` argument is not `NAME=PATH`.
    #[error("invalid table `{spec}`: expected NAME=PATH (e.g. `out=runs/toxicity`), {reason}")]
    TableSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A table name is not a plain SQL identifier.
    #[error(
        "invalid table name `{name}`: expected an identifier \
         (ASCII letters, digits and `_`, not starting with a digit)"
    )]
    TableName {
        /// The name as given.
        name: String,
    },
    /// Two tables share a name (names are case-insensitive, as unquoted SQL identifiers are).
    #[error("table `{name}` is given more than once")]
    DuplicateTable {
        /// The repeated name.
        name: String,
    },
    /// A table's path does not exist.
    #[error("table `{table}`: no such file or directory: {}", path.display())]
    MissingPath {
        /// The table name.
        table: String,
        /// The path given for it.
        path: PathBuf,
    },
    /// A table's path exists but is not something this command can read.
    #[error("table `{table}`: {}: {reason}", path.display())]
    Unsupported {
        /// The table name.
        table: String,
        /// The path given for it.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },
    /// Resolving or listing a path failed.
    #[error("table `{table}`: cannot access {}: {source}", path.display())]
    Io {
        /// The table name.
        table: String,
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// DataFusion could not register the table (unreadable or corrupt file, schema conflict).
    #[error("table `{table}`: cannot read {}: {source}", path.display())]
    Register {
        /// The table name.
        table: String,
        /// The path given for it.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DataFusionError,
    },
    /// The query names a table that no `--table` gave.
    #[error("{source}; the tables given are: {tables}")]
    UnknownTable {
        /// DataFusion's message, naming the table.
        #[source]
        source: DataFusionError,
        /// The names given, or a hint when there are none.
        tables: String,
    },
    /// The query failed to parse, plan or run; the message is DataFusion's.
    #[error(transparent)]
    Query(#[from] DataFusionError),
    /// An unknown `--format`.
    #[error("unknown output format `{0}`: expected one of table, csv, json")]
    Format(String),
    /// Encoding results failed.
    #[error("cannot write {format} output: {source}")]
    Encode {
        /// The output format (`table`, `csv` or `json`).
        format: &'static str,
        /// The cause.
        #[source]
        source: ArrowError,
    },
    /// Writing results failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Write(#[source] std::io::Error),
}
