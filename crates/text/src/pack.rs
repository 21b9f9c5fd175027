//! Length-sorted packing: sequences of similar length go together, batches are cut by a token
//! budget, and nothing is padded.

use mbpipe_model::PackedBatch;

/// One packed batch and, for each of its sequences, the key the caller gave it.
#[derive(Debug, Clone)]
pub struct Packed<K> {
    /// Caller keys, in the batch's sequence order.
    pub keys: Vec<K>,
    /// The token stream.
    pub batch: PackedBatch,
}

/// Sorts sequences by length (longest first, ties in input order) and cuts batches of at most
/// `max_batch_tokens` tokens; a sequence longer than the budget gets a batch of its own.
pub fn pack_by_length<'a, K, I>(sequences: I, max_batch_tokens: usize) -> Vec<Packed<K>>
where
    I: IntoIterator<Item = (K, &'a [u32])>,
{
    let mut items: Vec<(K, &[u32])> = sequences.into_iter().collect();
    // Stable sort keeps input order among equal lengths, so packing is deterministic.
    items.sort_by_key(|item| std::cmp::Reverse(item.1.len()));
    let mut out = Vec::new();
    let mut current = Packed {
        keys: Vec::new(),
        batch: PackedBatch::default(),
    };
    for (key, ids) in items {
        if !current.keys.is_empty() && current.batch.num_tokens() + ids.len() > max_batch_tokens {
            out.push(std::mem::replace(
                &mut current,
                Packed {
                    keys: Vec::new(),
                    batch: PackedBatch::default(),
                },
            ));
        }
        current.keys.push(key);
        current.batch.push(ids);
    }
    if !current.keys.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_every_sequence_once_within_budget() {
        let seqs: Vec<Vec<u32>> = (0..50).map(|i| vec![7; 1 + (i * 37) % 23]).collect();
        let packed = pack_by_length(seqs.iter().enumerate().map(|(i, s)| (i, s.as_slice())), 40);
        let mut seen: Vec<usize> = packed.iter().flat_map(|p| p.keys.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        for p in &packed {
            assert!(p.batch.num_tokens() <= 40 || p.keys.len() == 1);
            for (j, &k) in p.keys.iter().enumerate() {
                assert_eq!(p.batch.range(j).len(), seqs[k].len());
            }
        }
    }

    #[test]
    fn oversized_sequence_gets_its_own_batch() {
        let long = vec![1u32; 100];
        let short = vec![2u32; 3];
        let packed = pack_by_length([(0, long.as_slice()), (1, short.as_slice())], 10);
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[0].keys, vec![0]);
    }
}
