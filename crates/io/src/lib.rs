//! Input sources and output sinks for mbpipe: Parquet and JSON lines in, Parquet or Arrow IPC
//! part files out.
//!
//! ```no_run
//! use mbpipe_io::{expand_inputs, open_source, unified_schema, SourceItem, SourceOptions};
//!
//! let files = expand_inputs("corpus/*.jsonl.gz")?;
//! let schema = unified_schema(&files)?;
//! for item in open_source(files, schema, SourceOptions::default())? {
//!     if let SourceItem::Batch(b) = item? {
//!         println!("file {} rows {}..", b.file, b.first_row);
//!     }
//! }
//! # Ok::<(), mbpipe_io::IoError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod infer;
mod inputs;
mod json_literal;
mod jsonl;
mod output_dir;
mod parquet_source;
#[cfg(test)]
mod passthrough_tests;
mod remote;
mod schema;
#[cfg(test)]
mod shard_tests;
mod sink;
mod source;
mod split;
#[cfg(test)]
mod tests;

pub use error::IoError;
pub use inputs::{detect_format, expand_inputs, Compression, InputFile, InputFormat, Snapshot};
pub use output_dir::OutputDir;
pub use schema::unified_schema;
pub use sink::{
    part_file_name, write_atomic, OutputFormat, PartWriter, RejectsWriter, REJECTS_FILE,
};
pub use source::{
    open_source, OnError, Rejection, RowOrigin, Source, SourceBatch, SourceItem, SourceOptions,
};
pub use split::{count_file_rows, shard_files};
