//! SQL over mbpipe outputs, with [DataFusion](https://datafusion.apache.org).
//!
//! Each [`TableSource`] names an mbpipe output directory (its `*.parquet` or `*.arrow` part
//! files, skipping names that start with `_` or `.`), a single `.parquet` / `.arrow` file, a
//! `.jsonl` / `.ndjson` file, or a glob matching files of one format. [`run_query`] registers
//! them and prints the result of one read-only query; [`query_batches`] returns it as Arrow
//! batches.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mbpipe_sql::{run_query, OutputFormat, TableSource};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("comments.jsonl");
//! std::fs::write(&path, "{\"id\":1,\"text\":\"great\"}\n{\"id\":2,\"text\":\"meh\"}\n")?;
//!
//! let table: TableSource = format!("comments={}", path.display()).parse()?;
//! let mut out = Vec::new();
//! let rows = run_query(
//!     &[table],
//!     "SELECT id FROM comments WHERE text = 'meh'",
//!     OutputFormat::Csv,
//!     &mut out,
//! )
//! .await?;
//! assert_eq!(rows, 1);
//! assert_eq!(String::from_utf8(out)?, "id\n2\n");
//! # Ok(())
//! # }
//! ```
//!
//! Struct columns (such as a classifier's `toxicity_scores`) are queried by field:
//! `SELECT id, toxicity_scores['insult'] FROM out WHERE toxicity_scores['insult'] > 0.5`.
//!
//! Table names are case-insensitive, like unquoted SQL identifiers. Rows come back in part
//! file name order unless the query says `ORDER BY`. Statements that would write or change
//! state (`CREATE`, `COPY`, `INSERT`, `SET`) are refused.
#![deny(missing_docs)]

mod complete;
mod error;
mod output;
mod source;

use std::collections::HashSet;
use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use complete::incomplete_outputs;
pub use error::SqlError;
pub use output::OutputFormat;
pub use source::TableSource;

/// Registers each table and runs the query, writing results to `out`; returns the row count.
pub async fn run_query(
    tables: &[TableSource],
    query: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64, SqlError> {
    let frame = plan(tables, query).await?;
    let stream = frame.execute_stream().await?;
    output::write_stream(stream, format, out).await
}

/// Registers each table and runs the query, returning the result batches.
pub async fn query_batches(
    tables: &[TableSource],
    query: &str,
) -> Result<Vec<RecordBatch>, SqlError> {
    Ok(plan(tables, query).await?.collect().await?)
}

/// A session holding `tables`, and the planned query.
async fn plan(tables: &[TableSource], query: &str) -> Result<DataFrame, SqlError> {
    // One partition: scans read files one after another in name order, so a plain SELECT
    // returns rows in the order the pipeline wrote them.
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);

    let mut seen = HashSet::new();
    for table in tables {
        if !seen.insert(table.name.to_ascii_lowercase()) {
            return Err(SqlError::DuplicateTable {
                name: table.name.clone(),
            });
        }
        source::register(&ctx, table).await?;
    }

    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(query, read_only).await.map_err(|e| {
        let message = e.to_string();
        if message.contains("table '") && message.contains("' not found") {
            let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
            let tables = if names.is_empty() {
                "none (add --table NAME=PATH)".to_owned()
            } else {
                names.join(", ")
            };
            SqlError::UnknownTable { source: e, tables }
        } else {
            SqlError::Query(e)
        }
    })
}
