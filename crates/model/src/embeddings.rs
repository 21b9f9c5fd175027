//! The token-embedding table, read in place from the checkpoint where it can be.
//!
//! ModernBERT-base's table is 50,368 × 768 f32: 155 MB, a quarter of the checkpoint, of which
//! a corpus reads a few thousand rows. Copying it out at load wrote 38,000 fresh pages, about
//! 100 ms of CPU on the development VMs: a third of a short run's start-up. On the CPU, where
//! the table is stored and used as f32, it stays a read-only mapping of its bytes in the file:
//! the rows a batch reads come from the page cache, and the process holds no copy.

use std::fs::File;
use std::path::Path;

use candle_core::{Device, Tensor};
use memmap2::{Mmap, MmapOptions};

use crate::error::{ModelError, Result};

/// The table the encoder looks token ids up in.
pub(crate) enum TokenEmbeddings {
    /// Loaded as a tensor on the engine's device, in its dtype (GPUs, other dtypes, a table
    /// that cannot be read in place).
    Loaded(Tensor),
    /// Read in place from the checkpoint (CPU, stored and used as f32).
    Mapped(MappedTable),
}

impl TokenEmbeddings {
    /// The rows of `ids` (each already checked against the vocabulary) as `[ids, hidden]`;
    /// `ids_tensor` is `ids` on the engine's device, for the loaded table.
    pub(crate) fn select(&self, ids: &[u32], ids_tensor: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbeddings::Loaded(table) => Ok(table.index_select(ids_tensor, 0)?),
            TokenEmbeddings::Mapped(table) => {
                let rows = table.gather(ids);
                Ok(Tensor::from_vec(
                    rows,
                    (ids.len(), table.cols),
                    &Device::Cpu,
                )?)
            }
        }
    }

    /// The whole table as a tensor (the MLM decoder's tied weight): a copy of a mapped one.
    pub(crate) fn tensor(&self) -> Result<Tensor> {
        match self {
            TokenEmbeddings::Loaded(table) => Ok(table.clone()),
            TokenEmbeddings::Mapped(table) => Ok(Tensor::from_slice(
                table.values(),
                (table.rows, table.cols),
                &Device::Cpu,
            )?),
        }
    }
}

/// A `[rows, cols]` little-endian f32 matrix mapped read-only from a file.
///
/// Like every memory-mapped loader (candle's, safetensors', llama.cpp's), it reads the file as
/// it is: a checkpoint written over in place during a run (rather than replaced by a new file,
/// as the Hub's downloads and `save_pretrained` to a new folder do) changes or cuts the rows
/// under it.
pub(crate) struct MappedTable {
    map: Mmap,
    rows: usize,
    cols: usize,
}

impl MappedTable {
    /// Maps `rows × cols` f32s at byte `offset` of `file` (at `path`); `None` where the values
    /// would not be 4-byte aligned in memory (the mapping starts on a page, so at the file
    /// offset's alignment), for the caller to load them instead.
    pub(crate) fn map(
        file: &File,
        path: &Path,
        offset: u64,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Self>> {
        if cfg!(target_endian = "big") || !offset.is_multiple_of(4) {
            return Ok(None);
        }
        let len = rows * cols * 4;
        // SAFETY: read-only; see the type's comment for a file changed under the mapping.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.map_err(|e| {
            ModelError::Weights {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(Some(MappedTable { map, rows, cols }))
    }

    fn values(&self) -> &[f32] {
        // SAFETY: f32 has no invalid bit patterns; `map` refused an offset that would leave
        // the values misaligned, so the prefix is empty and `values` holds them all.
        let (prefix, values, _) = unsafe { self.map.align_to::<f32>() };
        debug_assert!(prefix.is_empty() && values.len() == self.rows * self.cols);
        values
    }

    /// The rows of `ids`, one after another.
    fn gather(&self, ids: &[u32]) -> Vec<f32> {
        let values = self.values();
        let mut rows = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let start = id as usize * self.cols;
            rows.extend_from_slice(&values[start..start + self.cols]);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose values would sit off a 4-byte boundary is left to the loading path, not
    /// read misaligned.
    #[test]
    fn a_misaligned_table_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        std::fs::write(&path, vec![0u8; 64]).unwrap();
        let file = File::open(&path).unwrap();
        assert!(MappedTable::map(&file, &path, 2, 2, 3).unwrap().is_none());
        let aligned = MappedTable::map(&file, &path, 8, 2, 3).unwrap().unwrap();
        assert_eq!(aligned.gather(&[1, 0]), vec![0.0; 6]);
    }
}
