//! Command-line arguments. What a pipeline computes lives in its TOML; runtime knobs are flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mbpipe_model::{DeviceSpec, Pooling, Precision};

/// Batch ModernBERT inference over Parquet and JSON-lines corpora.
#[derive(Parser)]
#[command(name = "mbpipe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a pipeline file: read the input, run every task, write Parquet part files.
    Run(RunArgs),
    /// Check everything `run` with the same flags checks before its first row (pipeline, inputs,
    /// output folder and resume, devices, models, tasks, output columns), changing nothing.
    Validate(ValidateArgs),
    /// Run SQL over output directories or Parquet / JSON-lines files.
    Sql(SqlArgs),
    /// Predict the [MASK] tokens of a text (or of every line of --input).
    FillMask(FillMaskArgs),
    /// Classify a text with a sequence-classification model.
    Classify(ClassifyArgs),
    /// Embed a text (mean or CLS pooling, optional L2 normalisation).
    Embed(EmbedArgs),
}

/// The devices of `--device`, one worker each.
#[derive(Clone, Debug)]
pub struct Devices(pub Vec<DeviceSpec>);

fn parse_devices(s: &str) -> Result<Devices, String> {
    DeviceSpec::parse_list(s).map(Devices)
}

/// Runtime knobs shared by every command that runs a model.
#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// `cpu`, or `cuda:0,1,...` (one worker per GPU; needs the `cuda` build feature).
    #[arg(long, default_value = "cpu", value_parser = parse_devices)]
    pub device: Devices,
    /// Precision: f32, bf16 or f16; int8 (CPU) quantizes the encoder's linear layers.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// CPU threads for the matrix products and tokenization (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Token budget of one packed batch (default: 4096 on the CPU, 1024 for models whose bf16
    /// or int8 products run on AMX tiles, 65536 on GPUs; a GPU batch that runs out of memory is
    /// split and retried).
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
}

impl RuntimeArgs {
    /// `--max-batch-tokens`, or the default for the devices and `--dtype` (the quick commands
    /// run one model at `--dtype`; `mbpipe run` decides per model).
    pub fn batch_tokens(&self) -> usize {
        self.max_batch_tokens.unwrap_or_else(|| {
            mbpipe_pipeline::default_max_batch_tokens(&self.device.0, self.dtype)
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline TOML file.
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Run one shard `I/N` of the input (0-based), or `auto/N` to take I from
    /// JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID.
    #[arg(long)]
    pub shard: Option<String>,
    /// Delete a previous run's output and start over.
    #[arg(long)]
    pub overwrite: bool,
}

impl RunArgs {
    pub fn into_options(self) -> mbpipe_pipeline::RunOptions {
        mbpipe_pipeline::RunOptions {
            pipeline: self.pipeline,
            devices: self.runtime.device.0,
            precision: self.runtime.dtype,
            threads: self.runtime.threads,
            max_batch_tokens: self.runtime.max_batch_tokens,
            shard: self.shard,
            overwrite: self.overwrite,
        }
    }
}

#[derive(Args)]
pub struct ValidateArgs {
    /// The run to check, with the same flags as `mbpipe run`.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct SqlArgs {
    /// A table `NAME=PATH` (an output directory, a Parquet file or a JSON-lines file); repeatable.
    #[arg(long = "table", value_name = "NAME=PATH")]
    pub tables: Vec<mbpipe_sql::TableSource>,
    /// Result format.
    #[arg(long, default_value = "table")]
    pub format: mbpipe_sql::OutputFormat,
    /// The SQL query.
    pub query: String,
}

/// Input and output options shared by the quick commands.
#[derive(Args)]
pub struct QuickArgs {
    /// Model: a local directory or a Hub id (`org/name` or `org/name@revision`).
    #[arg(long)]
    pub model: String,
    /// The text; omit it and use --input for many.
    pub text: Option<String>,
    /// A JSON-lines file with a `text` field per line.
    #[arg(long, conflicts_with = "text")]
    pub input: Option<PathBuf>,
    /// Print one JSON object per input, in input order.
    #[arg(long)]
    pub json: bool,
    /// Longest input in tokens (default: the model's max_position_embeddings).
    #[arg(long)]
    pub max_length: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct FillMaskArgs {
    #[command(flatten)]
    pub common: QuickArgs,
    /// Predictions per [MASK].
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub common: QuickArgs,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub common: QuickArgs,
    /// mean or cls (default: the model's sentence-transformers pooling, else mean).
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// L2-normalise (always on when the model's sentence-transformers config normalises).
    #[arg(long)]
    pub normalize: bool,
    /// Text prepended to every input (default: the model's sentence-transformers prompt).
    #[arg(long)]
    pub prefix: Option<String>,
}
