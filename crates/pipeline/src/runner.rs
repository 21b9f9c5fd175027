//! `mbpipe run`: read, tokenize, pack, infer, write, with every stage bounded.
//!
//! Threads: a reader streams input batches, a tokenizer thread applies the query, tokenizes
//! (rayon) and packs each window of rows one window ahead, this thread sends the packed batches
//! to the worker pool and assembles the output, and a writer thread encodes part files. Every
//! channel is bounded and windows are written in input order, so memory stays flat however large
//! the corpus is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mbpipe_io::{open_source, OnError, OutputDir, OutputFormat, Source, SourceOptions};
use mbpipe_model::{DeviceSpec, Precision};

use crate::config::{OnErrorSetting, OutputFormatSetting};
use crate::drive::{Drive, SourceItems};
use crate::engine::configure_threads;
use crate::enrich::{EnrichOptions, Enricher, WINDOW_ROWS};
use crate::error::PipelineError;
use crate::names::OutputNames;
use crate::output::{write_manifest, Manifest, ModelRecord, PartLayout, PartRecord, PartSink};
use crate::plan::{Purpose, RunPlan, Work};
use crate::progress::{Progress, TotalRows};
use crate::resume;
use crate::validate::Pipeline;
use crate::workers::ModelClock;

/// Default token budget of one packed batch on the CPU. Measured on a 2-core EPYC (AVX2), base
/// shapes: 4096 ran 1.25x faster than 16384 on short texts and 1.1x on long documents (larger
/// batches page-fault 7x more: their activation buffers are freshly mapped, not reused); 2048
/// and below were slower again. The f32 kernels on AVX-512 (Sapphire Rapids) agree: 1024 ran
/// 13% slower than 4096.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4_096;
/// Default token budget of one packed batch on the CPU when the linear layers run on AMX
/// tiles (bf16, int8). The tiles multiply 6-8x faster than the f32 kernels, so a 4096-token
/// batch spends its time writing products that no longer fit in the cache (`[4096, 2304]` f32
/// is 37 MiB) rather than multiplying: on Sapphire Rapids, short texts ran 12-17% faster at
/// 1024 than at 4096 (bf16 and int8), and 8-10% slower again at 512. Once the attention's
/// products ran on the tiles too, 2048 was faster than 1024 (comments and mid-length texts:
/// bf16 4-8%, int8 8-11%; long documents within 2%) and than 4096 (4-8%).
pub const DEFAULT_AMX_MAX_BATCH_TOKENS: usize = 2_048;
/// Default token budget of one packed batch when the devices are GPUs: large batches keep a GPU
/// busy, and a batch that does not fit is split and retried (see the README's "GPUs").
pub const DEFAULT_CUDA_MAX_BATCH_TOKENS: usize = 65_536;

/// The default `--max-batch-tokens` for these devices and precision:
/// [`DEFAULT_CUDA_MAX_BATCH_TOKENS`] when every device is a GPU, else
/// [`DEFAULT_AMX_MAX_BATCH_TOKENS`] where the precision runs on this CPU's AMX tiles, else
/// [`DEFAULT_MAX_BATCH_TOKENS`].
pub fn default_max_batch_tokens(devices: &[DeviceSpec], precision: Precision) -> usize {
    if !devices.is_empty() && devices.iter().all(|&d| !device_is_cpu(d)) {
        DEFAULT_CUDA_MAX_BATCH_TOKENS
    } else if precision.runs_on_cpu_tiles() {
        DEFAULT_AMX_MAX_BATCH_TOKENS
    } else {
        DEFAULT_MAX_BATCH_TOKENS
    }
}

fn device_is_cpu(device: DeviceSpec) -> bool {
    matches!(device, DeviceSpec::Cpu)
}

/// What `mbpipe run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Pipeline file.
    pub pipeline: PathBuf,
    /// One worker per device.
    pub devices: Vec<DeviceSpec>,
    /// Working precision.
    pub precision: Precision,
    /// CPU threads.
    pub threads: Option<usize>,
    /// Token budget per batch (`None`: each model's default for the devices and its precision,
    /// see [`default_max_batch_tokens`]).
    pub max_batch_tokens: Option<usize>,
    /// `I/N` or `auto/N`.
    pub shard: Option<String>,
    /// Start over.
    pub overwrite: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Rows written.
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Real tokens.
    pub tokens: u64,
    /// Whether the output was already complete and nothing ran.
    pub already_complete: bool,
}

impl RunOutcome {
    /// 0 success, 3 finished with rejected rows.
    pub fn exit_code(&self) -> u8 {
        if self.rejected > 0 {
            3
        } else {
            0
        }
    }
}

/// Runs a pipeline end to end: builds the [`RunPlan`] (every check, reading only), locks the
/// output folder, loads the models, then streams the input through them.
pub fn run(opts: RunOptions) -> Result<RunOutcome, PipelineError> {
    configure_threads(opts.threads);
    let mut plan = RunPlan::build(&opts, Purpose::Run)?;
    let query = plan.query.take();
    let (pipeline, names, out_dir) = (plan.pipeline.clone(), plan.names, &plan.out_dir);
    let (files, input_schema, row_schema) = (&plan.files, &plan.input_schema, &plan.row_schema);
    // Checked and locked, but nothing in it changes before every check of the run has passed.
    let folder = crate::folder::open(out_dir, names, &pipeline.input.path, &plan.all_files)?;
    let (resolved, fingerprint) = match &plan.work {
        // Checked again under the lock: another run may have finished meanwhile.
        Work::Run {
            models,
            fingerprint,
            ..
        } if opts.overwrite || !folder.entries.contains(&names.success()) => (models, fingerprint),
        _ => return Ok(already_complete(out_dir, names)),
    };
    // Decided again on the entries seen under the lock.
    let start = plan.resume(&folder.entries, fingerprint, opts.overwrite)?;
    let shard_inputs: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    let files = resume::remaining_inputs(files.clone(), &start.resumed)?;
    // Models: one replica of each distinct model per device.
    let load_start = Instant::now();
    let enricher = Enricher::load(
        &pipeline,
        resolved,
        &EnrichOptions {
            devices: opts.devices.clone(),
            precision: opts.precision,
            max_batch_tokens: opts.max_batch_tokens,
        },
    )?;
    let model_records = resolved.records(&pipeline, opts.precision);
    let shape = enricher.shape(query, row_schema)?;
    let out_schema = shape.output_schema().clone();
    let load_seconds = load_start.elapsed().as_secs_f64();

    let files_to_count = files.clone();
    let source = open_source(files, input_schema.clone(), source_options(&pipeline))?;

    // Every check passed: only now is the folder changed (leftovers removed, or with
    // --overwrite this run's own files).
    let (journal, resumed) = resume::start(start)?;
    if let Some((input, row)) = resumed.position() {
        eprintln!(
            "mbpipe: resuming: {} committed part file(s) kept; continuing from {input} row {row}",
            resumed.parts.len()
        );
    }
    let input_names: Vec<String> = files_to_count
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    let sink = PartSink::start(
        out_dir.clone(),
        out_schema.clone(),
        PartLayout {
            names,
            format: match pipeline.output_format {
                OutputFormatSetting::Parquet => OutputFormat::Parquet,
                OutputFormatSetting::Arrow => OutputFormat::ArrowIpc,
            },
            part_rows: pipeline.part_rows,
        },
        input_names.clone(),
        journal,
        resumed.next_seq,
    );
    let (src_rx, reader) = spawn_reader(source)?;

    let stop = stop_on_signals()?;
    let (model_clock, workers) = (enricher.pool().model_clock(), enricher.pool().workers());
    let total_rows = count_rows_beside(files_to_count);
    let run_start = Instant::now();
    let ctx = enricher.context(&shape, &stop);
    let resumed_rows: u64 = resumed.parts.iter().map(|p| p.rows).sum();
    let mut drive = Drive::new(
        &ctx,
        &sink,
        (out_dir, names),
        &input_names,
        Progress::new(total_rows),
    );
    let result = drive.run(src_rx, &stop, resumed_rows);
    let (rows_written, tokens) = (drive.rows, drive.tokens);
    let (progress, rejects) = (drive.progress, drive.rejects);
    drop(enricher);
    let _ = reader.join();
    // A writer failure (a full disk) is the root cause of a failed send: report it first.
    let interrupted = matches!(result, Ok(true));
    let complete = matches!(result, Ok(false));
    let new_parts = match (result, sink.finish(complete)) {
        (_, Err(writer)) => return Err(writer),
        (Err(e), _) => return Err(e),
        (Ok(_), Ok(parts)) => parts,
    };
    let run_seconds = run_start.elapsed().as_secs_f64();
    progress.finish();
    finish_run(Finished {
        opts: &opts,
        pipeline: &pipeline,
        names,
        out_dir,
        model_records,
        shard_inputs,
        kept: resumed.parts.len(),
        parts: resumed.parts.into_iter().chain(new_parts).collect(),
        rejected: resumed.rejected + rejects.as_ref().map_or(0, |r| r.count()),
        written: (rows_written, tokens),
        interrupted,
        seconds: (load_seconds, run_seconds),
        // The pool is dropped (its workers joined): every forward is on the clock.
        model: (&model_clock, workers),
    })
}

/// A run whose output is complete already: says so and does nothing.
fn already_complete(out_dir: &OutputDir, names: OutputNames) -> RunOutcome {
    eprintln!(
        "mbpipe: {out_dir} is already complete ({} exists); nothing to do. Use --overwrite to run again.",
        out_dir.show(&names.success())
    );
    RunOutcome {
        rows: 0,
        rejected: 0,
        tokens: 0,
        already_complete: true,
    }
}

/// What a run that stopped knows, for its manifest and summary.
struct Finished<'a> {
    opts: &'a RunOptions,
    pipeline: &'a Pipeline,
    names: OutputNames,
    out_dir: &'a OutputDir,
    model_records: Vec<ModelRecord>,
    shard_inputs: Vec<String>,
    /// Every committed part: kept from an interrupted run, then this run's.
    parts: Vec<PartRecord>,
    kept: usize,
    rejected: u64,
    /// Rows and tokens this run wrote.
    written: (u64, u64),
    interrupted: bool,
    /// Loading and running, in seconds.
    seconds: (f64, f64),
    model: (&'a ModelClock, usize),
}

/// The end of a run: an interrupted one says what is committed; a complete one is checked part
/// by part, then gets its manifest and success marker, and the summary line.
fn finish_run(f: Finished) -> Result<RunOutcome, PipelineError> {
    let Finished {
        names,
        out_dir,
        parts,
        rejected,
        ..
    } = &f;
    let (rows_written, tokens) = f.written;
    let ((load_seconds, run_seconds), (model_clock, workers)) = (f.seconds, f.model);
    let total_rows: u64 = parts.iter().map(|p| p.rows).sum();
    if f.interrupted {
        return Err(PipelineError::Interrupted(format!(
            "interrupted: {total_rows} rows are committed in {} part file(s) of {}; run the same command again to resume",
            parts.len(),
            out_dir
        )));
    }
    // Never a _SUCCESS over a folder that is not complete.
    resume::verify(out_dir, parts, *names)?;
    let model_seconds = model_clock.seconds();
    let manifest = Manifest {
        mbpipe_version: env!("CARGO_PKG_VERSION").to_string(),
        pipeline: f.pipeline.source.clone(),
        models: f.model_records.clone(),
        inputs: f.shard_inputs.clone(),
        shard: names.shard.map(|(i, n)| format!("{i}/{n}")),
        parts: parts.clone(),
        rows: total_rows,
        rejected: *rejected,
        tokens: parts.iter().map(|p| p.tokens).sum(),
        padding_fraction: model_clock.padding_fraction(),
        load_seconds,
        run_seconds,
        tokens_per_second: tokens as f64 / run_seconds.max(1e-9),
        model_seconds,
        model_tokens_per_second: model_tokens_per_second(tokens, model_seconds, workers),
        devices: f
            .opts
            .devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(","),
        dtype: f.opts.precision.to_string(),
    };
    write_manifest(out_dir, &manifest, *names)?;
    resume::finish(out_dir, *names);
    let kept = f.kept;
    eprintln!(
        "mbpipe: {rows_written} rows{}{}, {tokens} tokens in {run_seconds:.1} s ({:.0} tokens/s, model-only {:.0} tokens/s, padding {:.1}%, models loaded in {load_seconds:.1} s) -> {} ({} part file{})",
        if kept > 0 { format!(" (after {kept} part file(s) kept from the interrupted run)") } else { String::new() },
        if *rejected > 0 { format!(" ({rejected} rejected, see {})", names.rejects()) } else { String::new() },
        manifest.tokens_per_second,
        manifest.model_tokens_per_second,
        manifest.padding_fraction * 100.0,
        out_dir,
        parts.len(),
        if parts.len() == 1 { "" } else { "s" },
    );
    Ok(RunOutcome {
        rows: rows_written,
        rejected: *rejected,
        tokens,
        already_complete: false,
    })
}

/// The rate the models alone sustained: this run's tokens over the workers' mean time inside
/// forward passes (0 when nothing ran). The end-to-end rate reaches it when reading, tokenizing
/// and writing fully overlap with compute.
fn model_tokens_per_second(tokens: u64, model_seconds: f64, workers: usize) -> f64 {
    if tokens == 0 || model_seconds <= 0.0 {
        return 0.0;
    }
    tokens as f64 / (model_seconds / workers.max(1) as f64)
}

/// How the pipeline's inputs are read: its bad-row policy, its text columns checked as strings
/// (when no query makes them), and windows no longer than a part.
fn source_options(pipeline: &Pipeline) -> SourceOptions {
    let on_error = match pipeline.input.on_error {
        OnErrorSetting::Fail => OnError::Fail,
        OnErrorSetting::Skip => OnError::Skip,
    };
    let string_columns: Vec<String> = match pipeline.input.query {
        None => pipeline
            .input
            .text
            .fields()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(_) => Vec::new(),
    };
    SourceOptions {
        // Small parts need small windows: a part closes only between windows.
        batch_rows: WINDOW_ROWS.min(pipeline.part_rows as usize).max(1),
        on_error,
        string_columns,
        ..Default::default()
    }
}

/// The reader thread: streams `source` into a channel of two items.
fn spawn_reader(source: Source) -> Result<(SourceItems, JoinHandle<()>), PipelineError> {
    let (src_tx, src_rx) = sync_channel(2);
    let reader = std::thread::Builder::new()
        .name("mbpipe-reader".into())
        .spawn(move || {
            for item in source {
                if src_tx.send(item).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| PipelineError::Start {
            what: "reader",
            source,
        })?;
    Ok((src_rx, reader))
}

/// The ETA's row count, counted on a thread beside the job (JSON lines files were counted by
/// schema inference already; others are read once).
fn count_rows_beside(files: Vec<mbpipe_io::InputFile>) -> TotalRows {
    let total: TotalRows = Arc::new(AtomicU64::new(u64::MAX));
    let sum_into = Arc::clone(&total);
    let _ = std::thread::Builder::new()
        .name("mbpipe-count".into())
        .spawn(move || {
            let sum = files
                .iter()
                .map(mbpipe_io::count_file_rows)
                .sum::<Result<u64, _>>();
            if let Ok(n) = sum {
                sum_into.store(n, Ordering::Relaxed);
            }
        });
    total
}

/// A flag that SIGINT or SIGTERM sets; the run stops at the next window and commits what is
/// finished. A second signal exits at once (committed parts stay committed).
fn stop_on_signals() -> Result<Arc<AtomicBool>, PipelineError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag only once the plain handler has set it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|source| PipelineError::Start {
                what: "signal handlers",
                source,
            })?;
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_only_rate_is_tokens_over_mean_worker_time() {
        assert_eq!(model_tokens_per_second(1000, 2.0, 1), 500.0);
        // Two workers busy 2 s each: 1000 tokens in 2 s of wall clock.
        assert_eq!(model_tokens_per_second(1000, 4.0, 2), 500.0);
        assert_eq!(model_tokens_per_second(0, 0.0, 1), 0.0);
        assert_eq!(model_tokens_per_second(10, 0.0, 1), 0.0);
    }

    #[test]
    fn default_batch_is_smaller_where_the_products_run_on_amx_tiles() {
        let cpu = [DeviceSpec::Cpu];
        assert_eq!(
            default_max_batch_tokens(&cpu, Precision::F32),
            DEFAULT_MAX_BATCH_TOKENS
        );
        assert_eq!(
            default_max_batch_tokens(&cpu, Precision::F16),
            DEFAULT_MAX_BATCH_TOKENS
        );
        for precision in [Precision::Bf16, Precision::Int8] {
            let expected = if precision.runs_on_cpu_tiles() {
                DEFAULT_AMX_MAX_BATCH_TOKENS
            } else {
                DEFAULT_MAX_BATCH_TOKENS
            };
            assert_eq!(default_max_batch_tokens(&cpu, precision), expected);
        }
        let gpus = [DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)];
        assert_eq!(
            default_max_batch_tokens(&gpus, Precision::Bf16),
            DEFAULT_CUDA_MAX_BATCH_TOKENS
        );
    }
}
