//! One worker per device, each with its own model replicas, fed from one bounded queue: a batch
//! goes to whichever worker is free (a GPU that finishes early takes the next batch; no device
//! waits behind a slower one's backlog).
//!
//! A batch that runs out of device memory is split in two by sequences and each half retried,
//! recursively, with the outputs put back together in sequence order ([`OomSplitter`]); a single
//! sequence that still does not fit is an error naming the device and its length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mbpipe_model::{DeviceSpec, PackedBatch};

use crate::engine::LoadedModel;
use crate::error::PipelineError;
use crate::tasks::{run_heads, BoundTask, TaskBatchOutput};

/// A batch of one encoder group.
pub struct Job {
    /// Which model runs it.
    pub model: usize,
    /// Indices (into the bound tasks) of the tasks that share this pass.
    pub tasks: Arc<Vec<usize>>,
    /// The tokens.
    pub batch: PackedBatch,
    /// Caller's tag, returned with the result.
    pub tag: usize,
}

/// A finished job: its tag, and one output per task or the error.
pub type JobResult = (usize, Result<Vec<TaskBatchOutput>, PipelineError>);

/// What travels on the queue: the job, where its result goes, and its submission's cancel flag.
type Queued = (Job, Sender<JobResult>, Arc<AtomicBool>);

/// The models of one device.
pub struct Replica {
    /// Where they run.
    pub device: DeviceSpec,
    /// One per distinct model of the pipeline, in model order.
    pub models: Vec<LoadedModel>,
}

/// The pool.
pub struct WorkerPool {
    jobs: Option<SyncSender<Queued>>,
    handles: Vec<JoinHandle<()>>,
    clock: Arc<ModelClock>,
}

/// Time the workers spent inside forward passes (encoder and heads, out-of-memory attempts
/// included), summed over workers: with `w` workers busy all the time it grows `w` seconds per
/// second. What is left of the run's wall clock is reading, tokenizing, assembling and writing
/// that the workers waited for.
#[derive(Debug, Default)]
pub struct ModelClock {
    nanos: AtomicU64,
}

impl ModelClock {
    /// Adds one forward call's duration.
    pub fn add(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Seconds so far, summed over workers.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// Jobs handed to the pool by [`WorkerPool::submit`]; dropping it before [`Pending::wait_unless`]
/// cancels those not started.
pub struct Pending {
    replies: Receiver<JobResult>,
    count: usize,
    cancel: Arc<AtomicBool>,
}

impl WorkerPool {
    /// Starts one thread per replica set (one per device), fed from one queue of two batches per
    /// device.
    pub fn start(replicas: Vec<Replica>, tasks: Arc<Vec<BoundTask>>) -> Self {
        let (tx, rx) = sync_channel::<Queued>(replicas.len() * 2);
        let rx = Arc::new(Mutex::new(rx));
        let clock = Arc::new(ModelClock::default());
        let handles = replicas
            .into_iter()
            .enumerate()
            .map(|(n, replica)| {
                let rx = Arc::clone(&rx);
                let tasks = Arc::clone(&tasks);
                let clock = Arc::clone(&clock);
                std::thread::Builder::new()
                    .name(format!("mbpipe-worker-{n}"))
                    .spawn(move || worker_loop(&replica, &tasks, &rx, &clock))
                    .expect("cannot spawn a worker thread")
            })
            .collect();
        WorkerPool {
            jobs: Some(tx),
            handles,
            clock,
        }
    }

    /// Number of workers (one per device).
    pub fn workers(&self) -> usize {
        self.handles.len()
    }

    /// The workers' forward time; read it after the pool is dropped (its workers joined) for the
    /// final figure.
    pub fn model_clock(&self) -> Arc<ModelClock> {
        Arc::clone(&self.clock)
    }

    /// Hands jobs to the pool and returns at once; a helper thread feeds the bounded queue, so
    /// the caller can prepare (or collect) other work meanwhile, e.g. the next window while the
    /// devices run this one.
    pub fn submit(&self, jobs: Vec<Job>) -> Pending {
        let count = jobs.len();
        let (reply_tx, replies) = channel::<JobResult>();
        let cancel = Arc::new(AtomicBool::new(false));
        let sender = self.jobs.clone().expect("pool is running, this is a bug");
        let flag = Arc::clone(&cancel);
        std::thread::Builder::new()
            .name("mbpipe-feed".into())
            .spawn(move || {
                for job in jobs {
                    if flag.load(Ordering::Relaxed)
                        || sender
                            .send((job, reply_tx.clone(), Arc::clone(&flag)))
                            .is_err()
                    {
                        return;
                    }
                }
            })
            .expect("cannot spawn a feeder thread");
        Pending {
            replies,
            count,
            cancel,
        }
    }
}

impl Pending {
    /// Waits for every job (results in order of completion, with tags; the first error is
    /// returned), but gives up (`None`, cancelling the jobs not started) soon after
    /// `stop` is set, so an interrupt waits for the batches on the devices, not the whole window.
    pub fn wait_unless(
        self,
        stop: &AtomicBool,
    ) -> Result<Option<Vec<(usize, Vec<TaskBatchOutput>)>>, PipelineError> {
        let mut out = Vec::with_capacity(self.count);
        while out.len() < self.count {
            match self.replies.recv_timeout(Duration::from_millis(50)) {
                Ok((tag, result)) => out.push((tag, result?)),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PipelineError::Run(
                        "a worker stopped before finishing its batches".into(),
                    ))
                }
            }
        }
        Ok(Some(out))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.jobs.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

type Queue = Mutex<Receiver<Queued>>;

fn worker_loop(replica: &Replica, tasks: &[BoundTask], rx: &Queue, clock: &ModelClock) {
    let mut splitter = OomSplitter::new(replica.device.to_string());
    loop {
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok((job, reply, cancel))) = next else {
            return;
        };
        if cancel.load(Ordering::Relaxed) {
            continue;
        }
        let result = run_job(&replica.models, tasks, &job, &mut splitter, clock);
        // A receiver that is gone gave up on its jobs (an error elsewhere, an interrupt).
        let _ = reply.send((job.tag, result));
    }
}

fn run_job(
    models: &[LoadedModel],
    tasks: &[BoundTask],
    job: &Job,
    splitter: &mut OomSplitter,
    clock: &ModelClock,
) -> Result<Vec<TaskBatchOutput>, PipelineError> {
    let model = &models[job.model];
    let group: Vec<&BoundTask> = job.tasks.iter().map(|&i| &tasks[i]).collect();
    splitter.run(&job.batch, &mut |batch| {
        // The heads copy their results to the host, so on a GPU this includes the whole forward.
        let start = Instant::now();
        let out = model
            .model
            .encode(batch)
            .map_err(PipelineError::from)
            .and_then(|hidden| run_heads(model, &group, &hidden, batch));
        clock.add(start.elapsed());
        out
    })
}

/// Whether an error is the device running out of memory (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`,
/// "out of memory", or cuBLAS failing to allocate its workspace), as opposed to a real failure.
pub fn is_out_of_memory(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let message = e.to_string().to_ascii_lowercase();
        if message.contains("out of memory")
            || message.contains("out_of_memory")
            || message.contains("cublas_status_alloc_failed")
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Runs batches through a forward pass, splitting those that run out of device memory.
///
/// A batch that fails with out-of-memory is cut in two between sequences (near half its tokens)
/// and each half is run the same way, recursively; the outputs are concatenated in sequence
/// order, so the result is the unsplit batch's. A single sequence that does not fit is an error.
/// The smallest batch that ran out of memory is remembered: later batches of at least that many
/// tokens are split before trying, instead of failing again first. Device-agnostic: the forward
/// is a closure, so the logic is tested on the CPU with an injected failure.
pub struct OomSplitter {
    device: String,
    /// Smallest token count that ran out of memory so far.
    limit: Option<usize>,
    /// Batches split so far.
    splits: u64,
}

impl OomSplitter {
    /// A splitter for one device (named in messages).
    pub fn new(device: String) -> Self {
        OomSplitter {
            device,
            limit: None,
            splits: 0,
        }
    }

    /// How many batches were split so far.
    pub fn splits(&self) -> u64 {
        self.splits
    }

    /// Runs `forward` on `batch`, splitting on out-of-memory; one output per task, one row per
    /// sequence, in sequence order.
    pub fn run<O, F>(&mut self, batch: &PackedBatch, forward: &mut F) -> Result<O, PipelineError>
    where
        O: SplitOutput,
        F: FnMut(&PackedBatch) -> Result<O, PipelineError>,
    {
        let (sequences, tokens) = (batch.num_sequences(), batch.num_tokens());
        if sequences > 1 && self.limit.is_some_and(|limit| tokens >= limit) {
            return self.split(batch, forward);
        }
        match forward(batch) {
            Err(e) if is_out_of_memory(&e) => {
                self.limit = Some(self.limit.map_or(tokens, |l| l.min(tokens)));
                if sequences <= 1 {
                    return Err(PipelineError::Run(format!(
                        "{}: out of memory on a single sequence of {tokens} tokens, which cannot be \
                         split further; lower the task's max_length or use a device with more \
                         memory ({e})",
                        self.device
                    )));
                }
                if self.splits == 0 {
                    eprintln!(
                        "mbpipe: {}: out of memory on a batch of {tokens} tokens ({sequences} \
                         sequences); splitting it and batches of that size from now on (a lower \
                         --max-batch-tokens avoids the retries)",
                        self.device
                    );
                }
                self.split(batch, forward)
            }
            other => other,
        }
    }

    fn split<O, F>(&mut self, batch: &PackedBatch, forward: &mut F) -> Result<O, PipelineError>
    where
        O: SplitOutput,
        F: FnMut(&PackedBatch) -> Result<O, PipelineError>,
    {
        self.splits += 1;
        let (left, right) = batch.split_at(split_point(batch));
        let mut out = self.run(&left, forward)?;
        out.join(self.run(&right, forward)?)?;
        Ok(out)
    }
}

/// What a forward returns for a batch, such that the outputs of a split batch's two halves join
/// into the unsplit batch's.
pub trait SplitOutput: Sized {
    /// Appends `rest`, the output for the sequences that follow.
    fn join(&mut self, rest: Self) -> Result<(), PipelineError>;
}

/// One output per task, each with one row per sequence (the pipeline's workers).
impl SplitOutput for Vec<TaskBatchOutput> {
    fn join(&mut self, rest: Self) -> Result<(), PipelineError> {
        if self.len() != rest.len() {
            return Err(PipelineError::Run(
                "the halves of a split batch gave different numbers of task outputs; this is a bug"
                    .into(),
            ));
        }
        for (o, r) in self.iter_mut().zip(rest) {
            o.append(r)?;
        }
        Ok(())
    }
}

/// One value per sequence, in sequence order (the one-shot commands).
pub struct PerSequence<T>(pub Vec<T>);

impl<T> SplitOutput for PerSequence<T> {
    fn join(&mut self, rest: Self) -> Result<(), PipelineError> {
        self.0.extend(rest.0);
        Ok(())
    }
}

/// The sequence boundary nearest half the batch's tokens, leaving at least one sequence on each
/// side (the batch has two or more).
fn split_point(batch: &PackedBatch) -> usize {
    let n = batch.num_sequences();
    let half = batch.num_tokens() / 2;
    let at = batch.cu_seqlens[1..n]
        .iter()
        .position(|&c| c >= half)
        .map_or(n - 1, |i| i + 1);
    at.clamp(1, n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mbpipe_model::{CandleError, ModelError};

    fn oom() -> PipelineError {
        // What candle's CUDA backend reports (through the model) when an allocation fails.
        PipelineError::Model(ModelError::Candle(CandleError::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        )))
    }

    /// A fake forward: per sequence, its length and the sum of its ids (logits) and its ids
    /// (pooled); fails with OOM above `limit` tokens and records the sizes it was called with.
    fn fake(
        limit: usize,
        calls: &mut Vec<usize>,
    ) -> impl FnMut(&PackedBatch) -> Result<Vec<TaskBatchOutput>, PipelineError> + '_ {
        move |b: &PackedBatch| {
            calls.push(b.num_tokens());
            if b.num_tokens() > limit {
                return Err(oom());
            }
            let rows: Vec<&[u32]> = (0..b.num_sequences())
                .map(|i| &b.input_ids[b.range(i)])
                .collect();
            Ok(vec![
                TaskBatchOutput::Logits(
                    rows.iter()
                        .map(|r| vec![r.len() as f32, r.iter().sum::<u32>() as f32])
                        .collect(),
                ),
                TaskBatchOutput::Pooled(
                    rows.iter()
                        .map(|r| r.iter().map(|&x| x as f32).collect())
                        .collect(),
                ),
            ])
        }
    }

    fn batch(lengths: &[usize]) -> PackedBatch {
        let mut next = 0u32;
        let seqs: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&l| {
                (0..l)
                    .map(|_| {
                        next += 1;
                        next
                    })
                    .collect()
            })
            .collect();
        PackedBatch::from_sequences(&seqs)
    }

    #[test]
    fn oom_batches_are_split_and_give_the_unsplit_result_in_order() {
        let b = batch(&[5, 9, 1, 30, 7, 7, 12, 3, 2, 20]);
        let mut calls = Vec::new();
        let want = OomSplitter::new("test".into())
            .run(&b, &mut fake(usize::MAX, &mut calls))
            .unwrap();
        for limit in [95, 60, 40, 30] {
            let mut calls = Vec::new();
            let mut splitter = OomSplitter::new("test".into());
            let got = splitter.run(&b, &mut fake(limit, &mut calls)).unwrap();
            assert_eq!(got, want, "limit {limit}");
            assert!(splitter.splits() > 0, "limit {limit}");
            assert!(
                calls.iter().any(|&c| c > limit),
                "limit {limit}: never failed"
            );
        }
    }

    #[test]
    fn a_single_sequence_that_does_not_fit_is_a_clear_error() {
        let b = batch(&[5, 50, 5]);
        let mut calls = Vec::new();
        let err = OomSplitter::new("cuda:1".into())
            .run(&b, &mut fake(20, &mut calls))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cuda:1: out of memory on a single sequence of 50 tokens"),
            "{err}"
        );
    }

    #[test]
    fn other_errors_are_not_retried() {
        let b = batch(&[5, 6]);
        let mut calls = 0;
        let err = OomSplitter::new("cpu".into())
            .run(
                &b,
                &mut |_b: &PackedBatch| -> Result<Vec<TaskBatchOutput>, _> {
                    calls += 1;
                    Err(PipelineError::Run(
                        "token id 99999 is outside the vocabulary".into(),
                    ))
                },
            )
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(!is_out_of_memory(&err));
        assert!(is_out_of_memory(&oom()));
        let cublas = PipelineError::Candle(CandleError::Msg("CUBLAS_STATUS_ALLOC_FAILED".into()));
        assert!(is_out_of_memory(&cublas));
    }

    #[test]
    fn the_size_that_ran_out_is_split_before_trying_next_time() {
        let b = batch(&[10, 10, 10, 10]);
        let mut calls = Vec::new();
        let mut splitter = OomSplitter::new("test".into());
        splitter.run(&b, &mut fake(25, &mut calls)).unwrap();
        assert_eq!(calls, [40, 20, 20]);
        calls.clear();
        // Same size again: no failing attempt at 40 tokens first.
        splitter.run(&b, &mut fake(25, &mut calls)).unwrap();
        assert_eq!(calls, [20, 20]);
    }

    /// The one-shot commands' outputs (one value per sequence) rejoin in sequence order.
    #[test]
    fn per_sequence_outputs_are_rejoined_in_order() {
        let lens = [5, 9, 1, 30, 7, 7, 12, 3, 2, 20];
        let b = batch(&lens);
        let mut attempts = Vec::new();
        let mut splitter = OomSplitter::new("test".into());
        let PerSequence(got) = splitter
            .run(&b, &mut |part: &PackedBatch| {
                attempts.push(part.num_tokens());
                if part.num_tokens() > 40 {
                    return Err(oom());
                }
                // Each sequence's length, as a head would give one value per sequence.
                Ok(PerSequence(
                    (0..part.num_sequences())
                        .map(|i| part.range(i).len())
                        .collect::<Vec<_>>(),
                ))
            })
            .unwrap();
        assert_eq!(got, lens);
        assert!(splitter.splits() >= 2, "attempts {attempts:?}");
    }

    #[test]
    fn split_points_balance_tokens() {
        assert_eq!(split_point(&batch(&[1, 1])), 1);
        assert_eq!(split_point(&batch(&[10, 1, 1, 1])), 1);
        assert_eq!(split_point(&batch(&[1, 1, 1, 10])), 3);
        assert_eq!(split_point(&batch(&[4, 4, 4, 4])), 2);
    }

    /// The real engine on the CPU: a split batch gives the unsplit batch's outputs.
    #[test]
    fn real_model_outputs_survive_splitting() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../sample_data/models/moderation");
        let files = mbpipe_model::ModelFiles::from_dir(&dir).unwrap();
        let model = mbpipe_model::ModernBert::load(
            &files,
            &mbpipe_model::Device::Cpu,
            mbpipe_model::DType::F32,
        )
        .unwrap();
        let seqs: Vec<Vec<u32>> = [7usize, 30, 3, 64, 12, 12, 5]
            .iter()
            .enumerate()
            .map(|(s, &l)| {
                (0..l as u32)
                    .map(|i| 1 + (i * 37 + s as u32 * 101) % 8000)
                    .collect()
            })
            .collect();
        let b = PackedBatch::from_sequences(&seqs);
        let forward = |limit: usize| {
            let model = &model;
            move |b: &PackedBatch| -> Result<Vec<TaskBatchOutput>, PipelineError> {
                if b.num_tokens() > limit {
                    return Err(oom());
                }
                let hidden = model.encode(b)?;
                Ok(vec![
                    TaskBatchOutput::Logits(model.classify(&hidden, b)?.to_vec2()?),
                    TaskBatchOutput::Pooled(
                        model
                            .pool(&hidden, b, mbpipe_model::Pooling::Mean)?
                            .to_vec2()?,
                    ),
                ])
            }
        };
        let want = OomSplitter::new("cpu".into())
            .run(&b, &mut forward(usize::MAX))
            .unwrap();
        let got = OomSplitter::new("cpu".into())
            .run(&b, &mut forward(70))
            .unwrap();
        let flat = |o: &[TaskBatchOutput]| -> Vec<Vec<f32>> {
            o.iter()
                .flat_map(|t| match t {
                    TaskBatchOutput::Logits(v) | TaskBatchOutput::Pooled(v) => v.clone(),
                    _ => unreachable!(),
                })
                .collect()
        };
        let (got, want) = (flat(&got), flat(&want));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len());
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
