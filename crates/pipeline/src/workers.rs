//! One worker per device, each with its own model replicas, fed from one bounded queue: a batch
//! goes to whichever worker is free (a GPU that finishes early takes the next batch; no device
//! waits behind a slower one's backlog).
//!
//! A batch that runs out of device memory is split in two by sequences and each half retried,
//! recursively, with the outputs put back together in sequence order ([`OomSplitter`], in
//! `oom.rs`); a single sequence that still does not fit is an error naming the device and its
//! length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mbpipe_model::{DeviceSpec, PackedBatch};

use crate::engine::LoadedModel;
use crate::error::PipelineError;
use crate::oom::OomSplitter;
use crate::tasks::{rows_read, run_heads, BoundTask, TaskBatchOutput};

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
    /// Attention positions that were padding, and all attention positions, over layers.
    padding: AtomicU64,
    positions: AtomicU64,
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

    /// Adds one forward call's attention padding and positions (see
    /// `ModernBert::attention_padding`).
    pub fn add_padding(&self, (padding, positions): (u64, u64)) {
        self.padding.fetch_add(padding, Ordering::Relaxed);
        self.positions.fetch_add(positions, Ordering::Relaxed);
    }

    /// The fraction of attention positions that were padding, so far (0 when none ran).
    pub fn padding_fraction(&self) -> f64 {
        let positions = self.positions.load(Ordering::Relaxed);
        if positions == 0 {
            return 0.0;
        }
        self.padding.load(Ordering::Relaxed) as f64 / positions as f64
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

/// The outputs of a window's jobs, each with its tag, in order of completion.
pub type TaggedOutputs = Vec<(usize, Vec<TaskBatchOutput>)>;

impl Pending {
    /// Waits for every job (results in order of completion, with tags; the first error is
    /// returned), but gives up (`None`, cancelling the jobs not started) soon after
    /// `stop` is set, so an interrupt waits for the batches on the devices, not the whole window.
    pub fn wait_unless(self, stop: &AtomicBool) -> Result<Option<TaggedOutputs>, PipelineError> {
        let mut out = Vec::with_capacity(self.count);
        while out.len() < self.count {
            match self.replies.recv_timeout(Duration::from_millis(50)) {
                Ok((tag, result)) => out.push((tag, result?)),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PipelineError::Bug(
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
    let estimate = |batch: &PackedBatch| model.model.memory_estimate(batch);
    splitter.run(&job.batch, &estimate, &mut |batch| {
        // The heads copy their results to the host, so on a GPU this includes the whole forward.
        let start = Instant::now();
        // Heads that read one row per sequence (cls pooling, a [MASK]) get those rows alone.
        let pooling = model.model.config().classifier_pooling;
        let out = match rows_read(&group, pooling, batch) {
            Some(rows) => model
                .model
                .encode_rows(batch, rows)
                .map_err(PipelineError::from)
                .and_then(|hidden| run_heads(model, &group, &hidden, batch)),
            None => model
                .model
                .encode(batch)
                .map_err(PipelineError::from)
                .and_then(|hidden| run_heads(model, &group, &hidden, batch)),
        };
        clock.add(start.elapsed());
        if out.is_ok() {
            clock.add_padding(model.model.attention_padding(batch));
        }
        out
    })
}
