//! The output directory: part files in input order, written by their own thread, and the
//! manifest that describes a finished run.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use mbpipe_io::{OutputDir, OutputFormat, PartWriter};
use serde::Serialize;

use crate::error::PipelineError;
use crate::names::OutputNames;
use crate::resume::Journal;

/// Default rows per part file; a part never spans two input files.
pub const PART_ROWS: u64 = 100_000;
/// A part is committed after this long even when short, so a crash loses at most this much work.
const PART_SECONDS: u64 = 120;

/// One output window and the input rows it covers.
pub struct OutputChunk {
    /// Input file index.
    pub file: usize,
    /// First input row of the window (rows in that file, before any query filter).
    pub first_input_row: u64,
    /// Input rows covered (rows the query dropped count too).
    pub input_rows: u64,
    /// Output rows.
    pub batch: RecordBatch,
    /// Real tokens computed for them.
    pub tokens: u64,
}

/// A committed part file and the input range it covers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PartRecord {
    /// File name inside the output directory.
    pub file: String,
    /// Input file path.
    pub input: String,
    /// First input row covered.
    pub first_row: u64,
    /// Input rows covered.
    pub input_rows: u64,
    /// Rows in the part.
    pub rows: u64,
    /// Real tokens computed for the part's rows.
    #[serde(default)]
    pub tokens: u64,
    /// The file's size when committed; a resume checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// What the writer thread is sent, in input order.
enum SinkItem {
    /// A window of output rows.
    Chunk(OutputChunk),
    /// A rejected input row (file index, row): the part that goes on past it covers it, so
    /// rejected rows do not cut parts.
    Rejected(usize, u64),
    /// The run completed: a run without any row still gets one (empty) part for the schema.
    Complete,
}

/// Writes parts on a thread of its own so Parquet encoding overlaps inference.
pub struct PartSink {
    tx: Option<SyncSender<SinkItem>>,
    handle: Option<JoinHandle<Result<Vec<PartRecord>, PipelineError>>>,
}

impl PartSink {
    /// Starts the writer; `inputs` names input files by index for the records. Each committed
    /// part is recorded in `journal` with its sequence number, counting from `first_seq`.
    pub fn start(
        dir: OutputDir,
        schema: SchemaRef,
        layout: PartLayout,
        inputs: Vec<String>,
        mut journal: Journal,
        first_seq: u64,
    ) -> Self {
        let (tx, rx) = sync_channel::<SinkItem>(2);
        let handle = std::thread::Builder::new()
            .name("mbpipe-writer".into())
            .spawn(move || {
                let mut parts = Vec::new();
                let mut current: Option<OpenPart> = None;
                let mut seq = first_seq;
                let mut commit = |mut part: OpenPart, parts: &mut Vec<PartRecord>| {
                    let path = part.writer.finish()?;
                    let bytes = std::fs::metadata(&path)
                        .map_err(|e| PipelineError::file("stat", path.display(), e))?;
                    part.record.bytes = Some(bytes.len());
                    // The part in place under its final name, and the rejected rows it covers
                    // stored, before the journal records it as committed.
                    dir.publish(&part.record.file)?;
                    dir.publish_log(&layout.names.rejects())?;
                    journal.append(part.seq, &part.record)?;
                    parts.push(part.record);
                    Ok::<_, PipelineError>(())
                };
                let mut complete = false;
                // Rejected rows (file, first, end) met while no part was open: the next part
                // starts at them when it continues right after.
                let mut gap: Option<(usize, u64, u64)> = None;
                for item in rx {
                    let chunk = match item {
                        SinkItem::Chunk(chunk) => chunk,
                        SinkItem::Complete => {
                            complete = true;
                            continue;
                        }
                        SinkItem::Rejected(file, row) => {
                            let open_part = current.as_mut().filter(|p| {
                                p.record.input == inputs[file]
                                    && p.record.first_row + p.record.input_rows == row
                            });
                            if let Some(p) = open_part {
                                p.record.input_rows += 1;
                            } else if gap.is_some_and(|(f, _, end)| f == file && end == row) {
                                gap = gap.map(|(f, first, end)| (f, first, end + 1));
                            } else {
                                gap = Some((file, row, row + 1));
                            }
                            continue;
                        }
                    };
                    let continues = current.as_ref().is_some_and(|p| {
                        p.record.input == inputs[chunk.file]
                            && p.record.first_row + p.record.input_rows == chunk.first_input_row
                            && p.writer.rows() < layout.part_rows
                            && p.opened.elapsed().as_secs() < PART_SECONDS
                    });
                    if !continues {
                        if let Some(p) = current.take() {
                            commit(p, &mut parts)?;
                        }
                        let name = layout.names.part(seq, layout.format);
                        let writer = PartWriter::create_named(
                            dir.staging(),
                            &name,
                            schema.clone(),
                            layout.format,
                        )?;
                        let mut record = PartRecord {
                            file: name,
                            input: inputs[chunk.file].clone(),
                            first_row: chunk.first_input_row,
                            input_rows: 0,
                            rows: 0,
                            tokens: 0,
                            bytes: None,
                        };
                        if let Some((_, first, end)) = gap
                            .take()
                            .filter(|&(f, _, end)| f == chunk.file && end == chunk.first_input_row)
                        {
                            record.first_row = first;
                            record.input_rows = end - first;
                        }
                        current = Some(OpenPart {
                            writer,
                            record,
                            seq,
                            opened: Instant::now(),
                        });
                        seq += 1;
                    }
                    gap = None;
                    let p = current.as_mut().expect("a part is open, this is a bug");
                    p.writer.write(&chunk.batch)?;
                    p.record.input_rows += chunk.input_rows;
                    p.record.rows += chunk.batch.num_rows() as u64;
                    p.record.tokens += chunk.tokens;
                }
                if let Some(p) = current.take() {
                    commit(p, &mut parts)?;
                }
                if complete && parts.is_empty() && first_seq == 0 {
                    // No rows at all: one empty part still gives readers the schema. Never for a
                    // failed or interrupted run: it would look like committed work.
                    let name = layout.names.part(seq, layout.format);
                    let writer = PartWriter::create_named(
                        dir.staging(),
                        &name,
                        schema.clone(),
                        layout.format,
                    )?;
                    let record = PartRecord {
                        file: name,
                        input: inputs.first().cloned().unwrap_or_default(),
                        first_row: 0,
                        input_rows: 0,
                        rows: 0,
                        tokens: 0,
                        bytes: None,
                    };
                    let opened = Instant::now();
                    commit(
                        OpenPart {
                            writer,
                            record,
                            seq,
                            opened,
                        },
                        &mut parts,
                    )?;
                }
                Ok(parts)
            })
            .expect("cannot spawn the writer thread");
        PartSink {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Queues a window for writing (blocks while the writer is two windows behind).
    pub fn send(&self, chunk: OutputChunk) -> Result<(), PipelineError> {
        self.send_item(SinkItem::Chunk(chunk))
    }

    /// Records rejected input row `row` of input file `file`, after the windows before it.
    pub fn rejected(&self, file: usize, row: u64) -> Result<(), PipelineError> {
        self.send_item(SinkItem::Rejected(file, row))
    }

    fn send_item(&self, item: SinkItem) -> Result<(), PipelineError> {
        let tx = self.tx.as_ref().expect("sink is open, this is a bug");
        if tx.send(item).is_err() {
            // The writer stopped on an error; `finish` reports it.
            return Err(PipelineError::Bug("the output writer stopped".into()));
        }
        Ok(())
    }

    /// Closes the last part and returns the records of every committed part; `complete` says
    /// the run read all its input (an interrupted or failed one did not).
    pub fn finish(mut self, complete: bool) -> Result<Vec<PartRecord>, PipelineError> {
        if complete {
            // A writer that stopped on an error reports it below.
            let _ = self.send_item(SinkItem::Complete);
        }
        self.tx.take();
        let handle = self.handle.take().expect("finish runs once, this is a bug");
        handle
            .join()
            .map_err(|_| PipelineError::Bug("the output writer panicked".into()))?
    }
}

impl Drop for PartSink {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How part files are named, encoded and cut.
#[derive(Debug, Clone, Copy)]
pub struct PartLayout {
    /// Names of this run's files.
    pub names: OutputNames,
    /// Parquet or Arrow IPC.
    pub format: OutputFormat,
    /// Rows per part (a part closes at the first window boundary past this).
    pub part_rows: u64,
}

/// The part being written.
struct OpenPart {
    writer: PartWriter,
    record: PartRecord,
    seq: u64,
    opened: Instant,
}

/// `_manifest.json`: what a finished run computed, from what, and how fast.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    /// mbpipe version.
    pub mbpipe_version: String,
    /// The pipeline file's text.
    pub pipeline: String,
    /// Models by task.
    pub models: Vec<ModelRecord>,
    /// Input files.
    pub inputs: Vec<String>,
    /// Shard `I/N`, when sharded.
    pub shard: Option<String>,
    /// Committed parts in order.
    pub parts: Vec<PartRecord>,
    /// Rows written.
    pub rows: u64,
    /// Rows rejected (`on_error = "skip"`).
    pub rejected: u64,
    /// Real tokens run through models.
    pub tokens: u64,
    /// Fraction of the attention's computed positions (over layers) that were padding, as
    /// measured: 0 on the CPU and with FlashAttention-2; the padded GPU path pads each group of
    /// sequences to its longest. The linear layers run on packed tokens and never pad.
    pub padding_fraction: f64,
    /// Seconds spent loading models.
    pub load_seconds: f64,
    /// Seconds from first read to last write.
    pub run_seconds: f64,
    /// Real tokens per second of the run.
    pub tokens_per_second: f64,
    /// Seconds the workers spent inside forward passes (encoder and heads), summed over workers;
    /// at most `run_seconds` times the number of devices.
    #[serde(default)]
    pub model_seconds: f64,
    /// Real tokens per second of the models alone: this run's tokens over `model_seconds` per
    /// worker. `tokens_per_second` reaches it when I/O and tokenizing overlap fully with compute.
    #[serde(default)]
    pub model_tokens_per_second: f64,
    /// Device list and dtype.
    pub devices: String,
    /// Working dtype.
    pub dtype: String,
}

/// One task's model, for the manifest.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelRecord {
    /// Task name.
    pub task: String,
    /// Model reference as written.
    pub model: String,
    /// Resolved Hub commit, for Hub models.
    pub revision: Option<String>,
    /// The precision the task's model ran in: the run's `dtype`, or the task's `quantize`.
    #[serde(default)]
    pub dtype: String,
}

/// Writes the manifest and then the success marker, each atomically.
pub fn write_manifest(
    dir: &OutputDir,
    manifest: &Manifest,
    names: OutputNames,
) -> Result<(), PipelineError> {
    let json = serde_json::to_vec_pretty(manifest)?;
    dir.publish_log(&names.rejects())?;
    dir.write_atomic(&names.manifest(), &json)?;
    dir.write_atomic(&names.success(), b"")?;
    Ok(())
}
