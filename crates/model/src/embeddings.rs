//! The token-embedding table, read from the checkpoint a row at a time as tokens first appear.
//!
//! ModernBERT-base's table is 50,368 × 768 f32: 155 MB, a quarter of the checkpoint, of which a
//! corpus reads a few thousand rows. Copying it out at load wrote 38,000 fresh pages, about
//! 100 ms of CPU on the development VMs (a third of a short run's start-up), and held 150 MB.
//! On the CPU, where the table is stored and used as f32, each row is read from the file the
//! first time a batch holds its token, into a table whose untouched pages cost nothing.
//!
//! Reading during the run must not mix two models. The file stays open, so a model replaced by
//! a new file (as Hub downloads and `save_pretrained` to a new folder do) is read as loaded; one
//! written over in place is caught: the file's length and modification time are taken at load
//! and checked after every read, and a change stops the run with an error naming the file,
//! before any row computed from it is written.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// The table the encoder looks token ids up in.
pub(crate) enum TokenEmbeddings {
    /// Loaded as a tensor on the engine's device, in its dtype (GPUs, other dtypes).
    Loaded(Tensor),
    /// Read from the checkpoint on demand (CPU, stored and used as f32).
    OnDemand(FileTable),
}

impl TokenEmbeddings {
    /// The rows of `ids` (each already checked against the vocabulary) as `[ids, hidden]`;
    /// `ids_tensor` is `ids` on the engine's device, for the loaded table.
    pub(crate) fn select(&self, ids: &[u32], ids_tensor: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbeddings::Loaded(table) => Ok(table.index_select(ids_tensor, 0)?),
            TokenEmbeddings::OnDemand(table) => {
                let rows = table.gather(ids)?;
                Ok(Tensor::from_vec(
                    rows,
                    (ids.len(), table.cols),
                    &Device::Cpu,
                )?)
            }
        }
    }

    /// The whole table as a tensor, read at once if it was read on demand.
    pub(crate) fn tensor(&self) -> Result<Tensor> {
        match self {
            TokenEmbeddings::Loaded(table) => Ok(table.clone()),
            TokenEmbeddings::OnDemand(table) => {
                let mut values = vec![0f32; table.rows * table.cols];
                table.read_into(0, &mut values)?;
                table.check_unchanged()?;
                Ok(Tensor::from_vec(
                    values,
                    (table.rows, table.cols),
                    &Device::Cpu,
                )?)
            }
        }
    }
}

/// A `[rows, cols]` little-endian f32 matrix in a file, read a row at a time on first use.
pub(crate) struct FileTable {
    file: File,
    path: PathBuf,
    /// Where row 0 starts in the file.
    offset: u64,
    rows: usize,
    cols: usize,
    /// The file as it was at load.
    identity: FileIdentity,
    read: Mutex<ReadRows>,
}

/// The rows read so far (zeros elsewhere: pages no row was read into are never touched).
struct ReadRows {
    values: Vec<f32>,
    present: Vec<bool>,
}

/// What a write to a file changes: its length and modification time. (Not its change time,
/// which also moves when a new file is renamed over its name: the safe way to replace a model.)
#[derive(Debug, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileIdentity {
    fn of(meta: &Metadata) -> Self {
        FileIdentity {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// What differs in `now`, for the error message.
    fn change_to(&self, now: &FileIdentity) -> String {
        if self.len != now.len {
            format!("{} bytes at load, {} now", self.len, now.len)
        } else {
            "modified since load, same length".to_string()
        }
    }
}

impl FileTable {
    /// The `rows × cols` f32s at byte `offset` of `file` (at `path`), none read yet; `None` on
    /// a big-endian machine or a platform without positioned reads, for the caller to load
    /// them instead.
    pub(crate) fn open(
        file: File,
        path: &Path,
        offset: u64,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Self>> {
        if cfg!(target_endian = "big") || cfg!(not(unix)) {
            return Ok(None);
        }
        let meta = file.metadata().map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Some(FileTable {
            identity: FileIdentity::of(&meta),
            file,
            path: path.to_path_buf(),
            offset,
            rows,
            cols,
            read: Mutex::new(ReadRows {
                // Zeroed by `calloc`: fresh pages, touched only where rows are read.
                values: vec![0.0; rows * cols],
                present: vec![false; rows],
            }),
        }))
    }

    /// The rows of `ids`, one after another.
    fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let read = self.read_rows(ids)?;
        let mut rows = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let start = id as usize * self.cols;
            rows.extend_from_slice(&read.values[start..start + self.cols]);
        }
        Ok(rows)
    }

    /// The table with every row of `ids` read: each run of consecutive missing rows in one
    /// read, then the file checked against its identity at load.
    fn read_rows(&self, ids: &[u32]) -> Result<MutexGuard<'_, ReadRows>> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<usize> = ids
            .iter()
            .map(|&id| id as usize)
            .filter(|&id| !read.present[id])
            .collect();
        if missing.is_empty() {
            return Ok(read);
        }
        missing.sort_unstable();
        missing.dedup();
        for run in missing.chunk_by(|a, b| a + 1 == *b) {
            let (first, count) = (run[0], run.len());
            self.read_into(
                first,
                &mut read.values[first * self.cols..(first + count) * self.cols],
            )?;
        }
        self.check_unchanged()?;
        for &id in &missing {
            read.present[id] = true;
        }
        Ok(read)
    }

    /// Reads rows from `first` on into `values` (whole rows).
    fn read_into(&self, first: usize, values: &mut [f32]) -> Result<()> {
        // SAFETY: any 4 bytes are an f32; the slice's bytes are exactly its values'.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), values.len() * 4)
        };
        let at = self.offset + (first * self.cols * 4) as u64;
        read_exact_at(&self.file, bytes, at).map_err(|source| self.io_error(source))
    }

    /// An error unless the file's length and modification time are still those at load.
    fn check_unchanged(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(|e| self.io_error(e))?;
        let now = FileIdentity::of(&meta);
        if now != self.identity {
            return Err(ModelError::ChangedDuringRun {
                path: self.path.clone(),
                change: self.identity.change_to(&now),
            });
        }
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, bytes: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, bytes, offset)
}

#[cfg(not(unix))]
fn read_exact_at(_: &File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    unreachable!("FileTable::open refuses platforms without positioned reads")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 3 rows × 2 f32s after a 4-byte header, as a table.
    fn table(dir: &Path) -> (PathBuf, FileTable) {
        let path = dir.join("table.bin");
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut bytes = vec![9u8; 4];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        let table = FileTable::open(file, &path, 4, 3, 2).unwrap().unwrap();
        (path, table)
    }

    /// Rows come back in the order asked, repeated ones too, and only the rows asked for are
    /// read.
    #[test]
    fn rows_are_read_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let (_, table) = table(dir.path());
        assert_eq!(
            table.gather(&[2, 0, 2]).unwrap(),
            [5.0, 6.0, 1.0, 2.0, 5.0, 6.0]
        );
        let read = table.read.lock().unwrap();
        assert_eq!(read.present, [true, false, true]);
        assert_eq!(read.values[2..4], [0.0, 0.0], "row 1 was never read");
    }

    /// A file written over in place after load stops the next read with an error naming it
    /// (rows read before stay as read); one replaced by a new file under the same name is
    /// still read as loaded, through the open handle.
    #[test]
    fn a_file_written_over_stops_the_reads_and_a_replaced_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, table) = table(dir.path());
        assert_eq!(table.gather(&[0]).unwrap(), [1.0, 2.0]);
        let fresh = dir.path().join("new.bin");
        std::fs::write(&fresh, vec![0u8; 28]).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        assert_eq!(table.gather(&[1, 0]).unwrap(), [3.0, 4.0, 1.0, 2.0]);

        let (path, table) = self::table(dir.path());
        assert_eq!(table.gather(&[0]).unwrap(), [1.0, 2.0]);
        // A longer file: what a copy over the old one leaves midway.
        std::fs::write(&path, vec![0u8; 40]).unwrap();
        let err = table.gather(&[1]).unwrap_err().to_string();
        assert!(
            err.contains("table.bin") && err.contains("28 bytes at load, 40 now"),
            "{err}"
        );
        // The same length, written later (file times move in steps of a few milliseconds).
        let (path, table) = self::table(dir.path());
        assert_eq!(table.gather(&[0]).unwrap(), [1.0, 2.0]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&path, vec![0u8; 28]).unwrap();
        let err = table.gather(&[1]).unwrap_err().to_string();
        assert!(err.contains("modified since load, same length"), "{err}");
        // Cut short: the read itself fails, naming the file.
        std::fs::write(&path, vec![0u8; 8]).unwrap();
        let err = table.gather(&[2]).unwrap_err().to_string();
        assert!(err.contains("table.bin"), "{err}");
    }
}
