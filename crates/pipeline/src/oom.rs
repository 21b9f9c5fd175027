//! The out-of-memory split: a batch that runs out of device memory is cut in two by sequences
//! and each half retried, recursively, with the outputs put back together in sequence order; a
//! single sequence that still does not fit is an error naming the device and its length.
//!
//! Batches are compared by an estimate of their peak memory from their sequence lengths
//! (`ModernBert::memory_estimate`), not by their token count: without FlashAttention-2 the
//! attention grows with the square of the longest sequence, so one long document that runs out
//! must not shrink every later batch of short texts.

use mbpipe_model::PackedBatch;

use crate::error::PipelineError;
use crate::tasks::TaskBatchOutput;

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

/// A batch's estimated peak device memory in bytes (`ModernBert::memory_estimate`).
pub type MemoryEstimate<'a> = dyn Fn(&PackedBatch) -> u64 + 'a;

/// Runs batches through a forward pass, splitting those that run out of device memory.
///
/// A batch that fails with out-of-memory is cut in two between sequences (near half its tokens)
/// and each half is run the same way, recursively; the outputs are concatenated in sequence
/// order, so the result is the unsplit batch's. A single sequence that does not fit is an error.
/// The smallest memory estimate that ran out is remembered: later batches estimated at least as
/// large are split before trying, instead of failing again first. Device-agnostic: the forward
/// and the estimate are closures, so the logic is tested on the CPU with an injected failure.
pub struct OomSplitter {
    device: String,
    /// Smallest memory estimate (bytes) that ran out of memory so far.
    limit: Option<u64>,
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

    /// The learned limit: the smallest memory estimate that ran out so far.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Runs `forward` on `batch`, splitting on out-of-memory; `estimate` gives a batch's peak
    /// memory. One output per task, one row per sequence, in sequence order.
    pub fn run<O, F>(
        &mut self,
        batch: &PackedBatch,
        estimate: &MemoryEstimate<'_>,
        forward: &mut F,
    ) -> Result<O, PipelineError>
    where
        O: SplitOutput,
        F: FnMut(&PackedBatch) -> Result<O, PipelineError>,
    {
        let (sequences, tokens) = (batch.num_sequences(), batch.num_tokens());
        let bytes = estimate(batch);
        if sequences > 1 && self.limit.is_some_and(|limit| bytes >= limit) {
            return self.split(batch, estimate, forward);
        }
        match forward(batch) {
            Err(e) if is_out_of_memory(&e) => {
                self.limit = Some(self.limit.map_or(bytes, |l| l.min(bytes)));
                if sequences <= 1 {
                    return Err(PipelineError::OutOfMemory(format!(
                        "{}: out of memory on a single sequence of {tokens} tokens, which cannot be \
                         split further; lower the task's max_length or use a device with more \
                         memory ({e})",
                        self.device
                    )));
                }
                if self.splits == 0 {
                    eprintln!(
                        "mbpipe: {}: out of memory on a batch of {tokens} tokens ({sequences} \
                         sequences, longest {}; estimated {:.1} GiB); splitting it and batches \
                         estimated as large from now on (a lower --max-batch-tokens avoids the \
                         retries)",
                        self.device,
                        batch.max_len(),
                        bytes as f64 / (1u64 << 30) as f64
                    );
                }
                self.split(batch, estimate, forward)
            }
            other => other,
        }
    }

    fn split<O, F>(
        &mut self,
        batch: &PackedBatch,
        estimate: &MemoryEstimate<'_>,
        forward: &mut F,
    ) -> Result<O, PipelineError>
    where
        O: SplitOutput,
        F: FnMut(&PackedBatch) -> Result<O, PipelineError>,
    {
        self.splits += 1;
        let (left, right) = batch.split_at(split_point(batch));
        let mut out = self.run(&left, estimate, forward)?;
        out.join(self.run(&right, estimate, forward)?)?;
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
            return Err(PipelineError::Bug(
                "the halves of a split batch gave different numbers of task outputs".into(),
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

    /// The estimate of the old splitter: the token count.
    fn tokens(b: &PackedBatch) -> u64 {
        b.num_tokens() as u64
    }

    /// An estimate like the padded attention's: the sum of squared lengths.
    fn squares(b: &PackedBatch) -> u64 {
        (0..b.num_sequences())
            .map(|i| (b.range(i).len() as u64).pow(2))
            .sum()
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
            .run(&b, &tokens, &mut fake(usize::MAX, &mut calls))
            .unwrap();
        for limit in [95, 60, 40, 30] {
            let mut calls = Vec::new();
            let mut splitter = OomSplitter::new("test".into());
            let got = splitter
                .run(&b, &tokens, &mut fake(limit, &mut calls))
                .unwrap();
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
            .run(&b, &tokens, &mut fake(20, &mut calls))
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
                &tokens,
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
        splitter
            .run(&b, &tokens, &mut fake(25, &mut calls))
            .unwrap();
        assert_eq!(calls, [40, 20, 20]);
        calls.clear();
        // Same size again: no failing attempt at 40 tokens first.
        splitter
            .run(&b, &tokens, &mut fake(25, &mut calls))
            .unwrap();
        assert_eq!(calls, [20, 20]);
    }

    /// Regression: the limit was a token count, so one long document that ran out of memory
    /// split every later batch of as many short texts, which fit easily. Now the limit is in
    /// the estimate's terms (here the padded attention's sum of squared lengths).
    #[test]
    fn a_long_document_that_runs_out_does_not_split_later_short_batches() {
        // Memory as the estimate says: runs out above 7,000 "bytes".
        let fails_above = |b: &PackedBatch| -> Result<PerSequence<usize>, PipelineError> {
            if squares(b) > 7000 {
                return Err(oom());
            }
            Ok(PerSequence(vec![0; b.num_sequences()]))
        };
        let mut splitter = OomSplitter::new("test".into());
        let long = batch(&[80, 30, 4]); // 114 tokens, estimate 7,316: runs out
        splitter.run(&long, &squares, &mut { fails_above }).unwrap();
        assert_eq!(splitter.limit(), Some(7316));
        // 114 tokens of short texts (estimate 1,116): run whole, not split first.
        let short = batch(&[10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 4]);
        let mut attempts = Vec::new();
        let PerSequence(out) = splitter
            .run(&short, &squares, &mut |b: &PackedBatch| {
                attempts.push(b.num_tokens());
                Ok(PerSequence(vec![0; b.num_sequences()]))
            })
            .unwrap();
        assert_eq!(out.len(), 12);
        assert_eq!(attempts, [114]);
        // Fewer tokens but a larger estimate (8,101) than the limit: split before trying.
        let mut attempts = Vec::new();
        splitter
            .run(&batch(&[90, 1]), &squares, &mut |b: &PackedBatch| {
                attempts.push(b.num_tokens());
                Ok(PerSequence(vec![0; b.num_sequences()]))
            })
            .unwrap();
        assert_eq!(attempts, [90, 1]);
        // The old token-count limit split the short batch.
        let mut by_tokens = OomSplitter::new("test".into());
        by_tokens.run(&long, &tokens, &mut { fails_above }).unwrap();
        let mut attempts = Vec::new();
        by_tokens
            .run(&short, &tokens, &mut |b: &PackedBatch| {
                attempts.push(b.num_tokens());
                Ok(PerSequence(vec![0; b.num_sequences()]))
            })
            .unwrap();
        assert!(attempts.len() > 1, "{attempts:?}");
    }

    /// The one-shot commands' outputs (one value per sequence) rejoin in sequence order.
    #[test]
    fn per_sequence_outputs_are_rejoined_in_order() {
        let lens = [5, 9, 1, 30, 7, 7, 12, 3, 2, 20];
        let b = batch(&lens);
        let mut attempts = Vec::new();
        let mut splitter = OomSplitter::new("test".into());
        let PerSequence(got) = splitter
            .run(&b, &tokens, &mut |part: &PackedBatch| {
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
            .run(&b, &|b| model.memory_estimate(b), &mut forward(usize::MAX))
            .unwrap();
        let got = OomSplitter::new("cpu".into())
            .run(&b, &|b| model.memory_estimate(b), &mut forward(70))
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
