//! The unit of work that crosses from the pipeline into the model: a packed, padding-free batch.

use std::ops::Range;

/// Token ids of several sequences laid end to end, with positions restarting at 0 per sequence.
///
/// ```
/// use mbpipe_model::PackedBatch;
/// let batch = PackedBatch::from_sequences(&[vec![1, 2, 3], vec![4, 5]]);
/// assert_eq!(batch.position_ids, [0, 1, 2, 0, 1]);
/// assert_eq!(batch.cu_seqlens, [0, 3, 5]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// All token ids, sequence after sequence.
    pub input_ids: Vec<u32>,
    /// Position of each token within its own sequence.
    pub position_ids: Vec<u32>,
    /// Sequence `i` spans `cu_seqlens[i]..cu_seqlens[i + 1]`.
    pub cu_seqlens: Vec<usize>,
}

impl PackedBatch {
    /// Packs sequences in the order given.
    pub fn from_sequences<S: AsRef<[u32]>>(sequences: &[S]) -> Self {
        let total: usize = sequences.iter().map(|s| s.as_ref().len()).sum();
        let mut batch = PackedBatch {
            input_ids: Vec::with_capacity(total),
            position_ids: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(sequences.len() + 1),
        };
        batch.cu_seqlens.push(0);
        for s in sequences {
            batch.push(s.as_ref());
        }
        batch
    }

    /// Appends one sequence.
    pub fn push(&mut self, ids: &[u32]) {
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        self.input_ids.extend_from_slice(ids);
        self.position_ids.extend(0..ids.len() as u32);
        self.cu_seqlens.push(self.input_ids.len());
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Number of tokens (no padding, so every one is real).
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Token range of sequence `i`.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.cu_seqlens[i]..self.cu_seqlens[i + 1]
    }

    /// The sequences' lengths, ascending.
    pub fn sorted_lengths(&self) -> Vec<usize> {
        let mut lengths: Vec<usize> = self.cu_seqlens.windows(2).map(|w| w[1] - w[0]).collect();
        lengths.sort_unstable();
        lengths
    }

    /// Sequences `0..at` and `at..` as two batches (the OOM split of the worker pool).
    ///
    /// ```
    /// use mbpipe_model::PackedBatch;
    /// let batch = PackedBatch::from_sequences(&[vec![1, 2, 3], vec![4, 5], vec![6]]);
    /// let (a, b) = batch.split_at(1);
    /// assert_eq!(a, PackedBatch::from_sequences(&[vec![1, 2, 3]]));
    /// assert_eq!(b, PackedBatch::from_sequences(&[vec![4, 5], vec![6]]));
    /// ```
    pub fn split_at(&self, at: usize) -> (PackedBatch, PackedBatch) {
        let n = self.num_sequences();
        assert!(at <= n, "split_at({at}) of a batch of {n} sequences");
        let part = |seqs: std::ops::Range<usize>| {
            let mut b = PackedBatch::default();
            b.cu_seqlens.push(0);
            for i in seqs {
                b.push(&self.input_ids[self.range(i)]);
            }
            b
        };
        (part(0..at), part(at..n))
    }

    /// Longest sequence.
    pub fn max_len(&self) -> usize {
        (0..self.num_sequences())
            .map(|i| self.range(i).len())
            .max()
            .unwrap_or(0)
    }
}
