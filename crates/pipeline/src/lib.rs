//! The mbpipe pipeline: a TOML pipeline file in, Parquet part files with task columns out.
//!
//! ```no_run
//! use mbpipe_pipeline::{cli, RunOptions};
//! let outcome = cli::run(RunOptions {
//!     pipeline: "pipelines/moderation.toml".into(),
//!     devices: vec![mbpipe_model::DeviceSpec::Cpu],
//!     precision: mbpipe_model::Precision::F32,
//!     threads: None,
//!     max_batch_tokens: None,
//!     shard: None,
//!     overwrite: false,
//! })?;
//! println!("{} rows", outcome.rows);
//! # Ok::<(), mbpipe_pipeline::PipelineError>(())
//! ```
#![deny(missing_docs)]

mod check;
pub mod cli;
pub mod columns;
pub mod config;
mod drive;
pub mod engine;
mod enrich;
mod error;
mod folder;
mod lock;
mod names;
mod oom;
pub mod output;
mod plan;
mod progress;
mod query;
mod resume;
mod rows;
mod runner;
mod shard;
pub mod tasks;
pub use mbpipe_text::template;
pub mod validate;
mod workers;

pub use enrich::{input_query, EnrichOptions, Enricher, ResolvedModels, RowShape};
pub use error::PipelineError;
pub use oom::{is_out_of_memory, MemoryEstimate, OomSplitter, PerSequence, SplitOutput};
pub use plan::{Purpose, RunPlan, Work};
pub use runner::{
    default_max_batch_tokens, RunOptions, RunOutcome, DEFAULT_AMX_MAX_BATCH_TOKENS,
    DEFAULT_CUDA_MAX_BATCH_TOKENS, DEFAULT_MAX_BATCH_TOKENS,
};
