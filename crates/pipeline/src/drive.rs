//! The compute loop of `mbpipe run`: prepared windows in (tokenized and packed one window ahead
//! on their own thread), each submitted to the workers while the one before it is assembled and
//! written, rejected rows logged, and a stop signal seen at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use mbpipe_io::{OutputDir, Rejection, RejectsWriter, SourceItem};

use crate::enrich::{finish_window, prepare, submit_window, Prepared, SubmittedWindow};
use crate::enrich::{PreparedWindow, WindowContext};
use crate::error::PipelineError;
use crate::names::OutputNames;
use crate::output::{OutputChunk, PartSink};
use crate::progress::Progress;

/// The input's items, as the reader thread sends them.
pub(crate) type SourceItems = Receiver<Result<SourceItem, mbpipe_io::IoError>>;

/// The window on the workers, the input rows it covers, and the rejected rows right after it.
struct InFlight {
    file: usize,
    first_row: u64,
    input_rows: u64,
    submitted: SubmittedWindow,
    rejected_after: Vec<(usize, u64)>,
}

/// What the loop has written so far, and where.
pub(crate) struct Drive<'a> {
    ctx: &'a WindowContext<'a>,
    sink: &'a PartSink,
    out_dir: &'a OutputDir,
    names: OutputNames,
    /// The run's input files, by index, as rejections name them.
    input_names: &'a [String],
    pub(crate) progress: Progress,
    pub(crate) rejects: Option<RejectsWriter>,
    in_flight: Option<InFlight>,
    /// Rows and tokens written by this run (resumed parts not counted).
    pub(crate) rows: u64,
    pub(crate) tokens: u64,
}

impl<'a> Drive<'a> {
    pub(crate) fn new(
        ctx: &'a WindowContext<'a>,
        sink: &'a PartSink,
        (out_dir, names): (&'a OutputDir, OutputNames),
        input_names: &'a [String],
        progress: Progress,
    ) -> Self {
        Drive {
            ctx,
            sink,
            out_dir,
            names,
            input_names,
            progress,
            rejects: None,
            in_flight: None,
            rows: 0,
            tokens: 0,
        }
    }

    /// Runs the loop over `source` until it ends, fails or `stop` is set; returns whether it was
    /// interrupted. Tokenizing and packing run one window ahead on their own thread, so the
    /// workers never wait for the tokenizer; the bounded channel keeps at most two windows
    /// prepared. `committed_before` (rows of the parts a resume kept) is for the stop message.
    pub(crate) fn run(
        &mut self,
        source: SourceItems,
        stop: &AtomicBool,
        committed_before: u64,
    ) -> Result<bool, PipelineError> {
        let ctx = self.ctx;
        let (prep_tx, prep_rx) = sync_channel::<Result<Prepared, PipelineError>>(1);
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("mbpipe-tokenize".into())
                .spawn_scoped(scope, move || {
                    // Only the compute loop watches for a stop: it alone knows what was finished.
                    for item in source {
                        let prepared = item
                            .map_err(PipelineError::from)
                            .and_then(|i| prepare(ctx, i));
                        let failed = prepared.is_err();
                        if prep_tx.send(prepared).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|source| PipelineError::Start {
                    what: "tokenizer",
                    source,
                })?;
            // Polling, so a signal is seen at once.
            while !stop.load(Ordering::Relaxed) {
                let prepared = match prep_rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let go_on = match prepared? {
                    Prepared::Rejected(rej) => self.rejected(rej).map(|()| true)?,
                    Prepared::Window {
                        file,
                        first_row,
                        input_rows,
                        window,
                    } => self.window((file, first_row, input_rows), window)?,
                };
                if !go_on {
                    break;
                }
            }
            // The tokenizer stops at its next send.
            drop(prep_rx);
            let interrupted = stop.load(Ordering::Relaxed) || !self.write_last()?;
            if interrupted {
                // The window in flight is dropped: its unstarted batches are cancelled and
                // only the batches on the devices finish. It was never committed, so a resume
                // redoes it.
                drop(self.in_flight.take());
                eprintln!(
                    "mbpipe: stopping: finishing the current batch, committing {} rows (a second signal exits at once)",
                    committed_before + self.rows
                );
            }
            Ok(interrupted)
        })
    }

    /// A rejected row: logged, and covered by the part that goes on past it (after the window
    /// before it), so rejects do not cut parts.
    fn rejected(&mut self, rej: Rejection) -> Result<(), PipelineError> {
        let w = match &mut self.rejects {
            Some(w) => w,
            None => self.rejects.insert(RejectsWriter::create_named(
                self.out_dir.staging(),
                &self.names.rejects(),
            )?),
        };
        w.write(&rej)?;
        self.progress.rejected(1);
        let path = rej.path.display().to_string();
        let file = self.input_names.iter().position(|n| *n == path);
        if let Some(at) = file.zip(rej.row) {
            match &mut self.in_flight {
                Some(w) => w.rejected_after.push(at),
                None => self.sink.rejected(at.0, at.1)?,
            }
        }
        Ok(())
    }

    /// A prepared window of `(file, first row, input rows)`: the devices start on it while the
    /// previous one is assembled and written, so they do not idle between windows. `false` when
    /// a stop came first.
    fn window(
        &mut self,
        (file, first_row, input_rows): (usize, u64, u64),
        window: PreparedWindow,
    ) -> Result<bool, PipelineError> {
        let next = InFlight {
            file,
            first_row,
            input_rows,
            submitted: submit_window(self.ctx, window),
            rejected_after: Vec::new(),
        };
        match self.in_flight.replace(next) {
            Some(previous) => self.write(previous),
            None => Ok(true),
        }
    }

    /// Writes the window still in flight, if any; `false` when a stop came first.
    fn write_last(&mut self) -> Result<bool, PipelineError> {
        match self.in_flight.take() {
            Some(last) => self.write(last),
            None => Ok(true),
        }
    }

    /// Assembles and sends a finished window and the rejected rows after it; `false` when a
    /// stop signal came first.
    fn write(&mut self, w: InFlight) -> Result<bool, PipelineError> {
        let Some((batch, window_tokens)) = finish_window(self.ctx, w.submitted)? else {
            return Ok(false);
        };
        let rows = batch.num_rows() as u64;
        self.sink.send(OutputChunk {
            file: w.file,
            first_input_row: w.first_row,
            input_rows: w.input_rows,
            batch,
            tokens: window_tokens,
        })?;
        for (file, row) in w.rejected_after {
            self.sink.rejected(file, row)?;
        }
        self.tokens += window_tokens;
        self.rows += rows;
        self.progress.advance(rows, w.input_rows, window_tokens);
        Ok(true)
    }
}
