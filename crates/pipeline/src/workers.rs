//! One worker per device, each with its own model replicas, fed from one bounded queue: a batch
//! goes to whichever worker is free.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mbpipe_model::PackedBatch;

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

/// The pool.
pub struct WorkerPool {
    jobs: Option<SyncSender<(Job, SyncSender<JobResult>)>>,
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts one thread per replica set (one per device).
    pub fn start(replicas: Vec<Vec<LoadedModel>>, tasks: Arc<Vec<BoundTask>>) -> Self {
        let (tx, rx) = sync_channel::<(Job, SyncSender<JobResult>)>(replicas.len() * 2);
        let rx = Arc::new(Mutex::new(rx));
        let handles = replicas
            .into_iter()
            .enumerate()
            .map(|(n, models)| {
                let rx = Arc::clone(&rx);
                let tasks = Arc::clone(&tasks);
                std::thread::Builder::new()
                    .name(format!("mbpipe-worker-{n}"))
                    .spawn(move || worker_loop(&models, &tasks, &rx))
                    .expect("cannot spawn a worker thread")
            })
            .collect();
        WorkerPool {
            jobs: Some(tx),
            handles,
        }
    }

    /// Runs jobs on the pool; results come back in `tag` order of completion, collected here.
    pub fn run_all(
        &self,
        jobs: Vec<Job>,
    ) -> Result<Vec<(usize, Vec<TaskBatchOutput>)>, PipelineError> {
        let n = jobs.len();
        let (reply_tx, reply_rx) = sync_channel::<JobResult>(n.max(1));
        let sender = self.jobs.as_ref().expect("pool is running, this is a bug");
        // Feed from a helper thread so results can be drained while the bounded queue is full.
        let results = std::thread::scope(|s| {
            s.spawn(|| {
                for job in jobs {
                    if sender.send((job, reply_tx.clone())).is_err() {
                        break;
                    }
                }
                drop(reply_tx);
            });
            let mut out = Vec::with_capacity(n);
            for (tag, result) in reply_rx.iter() {
                out.push((tag, result));
            }
            out
        });
        if results.len() != n {
            return Err(PipelineError::Run(
                "a worker stopped before finishing its batches".into(),
            ));
        }
        results
            .into_iter()
            .map(|(tag, r)| r.map(|o| (tag, o)))
            .collect()
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

type Queue = Mutex<Receiver<(Job, SyncSender<JobResult>)>>;

fn worker_loop(models: &[LoadedModel], tasks: &[BoundTask], rx: &Queue) {
    loop {
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok((job, reply))) = next else { return };
        let result = run_job(models, tasks, &job);
        if reply.send((job.tag, result)).is_err() {
            return;
        }
    }
}

fn run_job(
    models: &[LoadedModel],
    tasks: &[BoundTask],
    job: &Job,
) -> Result<Vec<TaskBatchOutput>, PipelineError> {
    let model = &models[job.model];
    let hidden = model.model.encode(&job.batch)?;
    let group: Vec<&BoundTask> = job.tasks.iter().map(|&i| &tasks[i]).collect();
    run_heads(model, &group, &hidden, &job.batch)
}
