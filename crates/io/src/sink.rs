//! Output: part files written hidden and renamed atomically, the rejects log, atomic small files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{IoError, Rejection};

/// Name of the rejected-rows log inside the output folder.
pub const REJECTS_FILE: &str = "_rejects.jsonl";

/// Row groups are cut at this size so a part holding wide columns (embeddings) never buffers
/// more than this in memory.
const MAX_ROW_GROUP_BYTES: usize = 128 * 1024 * 1024;

/// Format of output part files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Apache Parquet, ZSTD-compressed (`.parquet`).
    Parquet,
    /// Arrow IPC file format (`.arrow`).
    ArrowIpc,
}

impl OutputFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::ArrowIpc => "arrow",
        }
    }
}

/// `part-00000.parquet`: zero-padded to 5+ digits so names sort in input order.
pub fn part_file_name(index: u64, format: OutputFormat) -> String {
    format!("part-{index:05}.{}", format.extension())
}

/// The hidden name a file has while being written: `.NAME.tmp`, beside it.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Syncs the file, renames it into place and syncs the directory so the rename is durable.
fn commit(file: File, tmp: &Path, dest: &Path) -> Result<(), IoError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IoError::Write { path, source }
    };
    file.sync_all().map_err(write_err(tmp))?;
    drop(file);
    std::fs::rename(tmp, dest).map_err(write_err(dest))?;
    sync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(write_err(dest))
}

/// fsync a directory (Unix only; elsewhere renames are as durable as the OS makes them).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a hidden temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(|source| IoError::Open {
        path: tmp.clone(),
        source,
    })?;
    file.write_all(bytes).map_err(|source| IoError::Write {
        path: tmp.clone(),
        source,
    })?;
    commit(file, &tmp, path)
}

/// The encoder inside a [`PartWriter`].
enum Encoder {
    Parquet(ArrowWriter<File>),
    Ipc(FileWriter<File>),
}

/// Writes one part file under a hidden temp name; [`PartWriter::finish`] renames it into place.
/// Dropping it unfinished deletes the temp file.
pub struct PartWriter {
    encoder: Option<Encoder>,
    tmp: PathBuf,
    dest: PathBuf,
    rows: u64,
}

impl PartWriter {
    /// Starts `dir/.part-NNNNN.EXT.tmp`.
    pub fn create(
        dir: &Path,
        index: u64,
        schema: SchemaRef,
        format: OutputFormat,
    ) -> Result<Self, IoError> {
        Self::create_named(dir, &part_file_name(index, format), schema, format)
    }

    /// Starts `dir/.NAME.tmp`, renamed to `dir/NAME` by [`PartWriter::finish`].
    pub fn create_named(
        dir: &Path,
        name: &str,
        schema: SchemaRef,
        format: OutputFormat,
    ) -> Result<Self, IoError> {
        let dest = dir.join(name);
        let tmp = temp_path(&dest);
        let file = File::create(&tmp).map_err(|source| IoError::Open {
            path: tmp.clone(),
            source,
        })?;
        let encoder = match format {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(ParquetCompression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_bytes(Some(MAX_ROW_GROUP_BYTES))
                    .build();
                let w = ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| {
                    IoError::ParquetWrite {
                        path: tmp.clone(),
                        source,
                    }
                })?;
                Encoder::Parquet(w)
            }
            OutputFormat::ArrowIpc => {
                let w = FileWriter::try_new(file, &schema).map_err(|source| IoError::Arrow {
                    path: tmp.clone(),
                    context: "cannot start an Arrow IPC file".into(),
                    source,
                })?;
                Encoder::Ipc(w)
            }
        };
        Ok(Self {
            encoder: Some(encoder),
            tmp,
            dest,
            rows: 0,
        })
    }

    /// Appends a batch (which must have the schema given to `create`).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), IoError> {
        let tmp = &self.tmp;
        match self.encoder.as_mut() {
            Some(Encoder::Parquet(w)) => {
                w.write(batch).map_err(|source| IoError::ParquetWrite {
                    path: tmp.clone(),
                    source,
                })?
            }
            Some(Encoder::Ipc(w)) => w.write(batch).map_err(|source| IoError::Arrow {
                path: tmp.clone(),
                context: "cannot write a batch".into(),
                source,
            })?,
            None => unreachable!("PartWriter used after finish; this is a bug"),
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the file, syncs it and renames it to its final name, which is returned.
    pub fn finish(mut self) -> Result<PathBuf, IoError> {
        let file = match self.encoder.take() {
            Some(Encoder::Parquet(w)) => match w.into_inner() {
                Ok(file) => file,
                Err(source) => {
                    let _ = std::fs::remove_file(&self.tmp);
                    return Err(IoError::ParquetWrite {
                        path: self.tmp.clone(),
                        source,
                    });
                }
            },
            Some(Encoder::Ipc(mut w)) => match w.finish().and_then(|()| w.into_inner()) {
                Ok(file) => file,
                Err(source) => {
                    let _ = std::fs::remove_file(&self.tmp);
                    return Err(IoError::Arrow {
                        path: self.tmp.clone(),
                        context: "cannot finish the Arrow IPC file".into(),
                        source,
                    });
                }
            },
            None => unreachable!("PartWriter finished twice; this is a bug"),
        };
        commit(file, &self.tmp, &self.dest).inspect_err(|_| {
            // Disk full or the like: the half-written temp file would only be litter.
            let _ = std::fs::remove_file(&self.tmp);
        })?;
        Ok(self.dest.clone())
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        // Unfinished (error or cancellation): the hidden temp file would only be litter.
        if self.encoder.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Appends rejected rows to `_rejects.jsonl`, one `{"file","line","row","reason"}` per line.
pub struct RejectsWriter {
    path: PathBuf,
    file: File,
    count: u64,
}

impl RejectsWriter {
    /// Opens (creating or appending to) `dir/_rejects.jsonl`.
    pub fn create(dir: &Path) -> Result<Self, IoError> {
        Self::create_named(dir, REJECTS_FILE)
    }

    /// Opens (creating or appending to) `dir/NAME`, e.g. a shard's own rejects log.
    pub fn create_named(dir: &Path, name: &str) -> Result<Self, IoError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| IoError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            file,
            count: 0,
        })
    }

    /// Appends one rejection; written straight to the file, so it survives a crash after.
    pub fn write(&mut self, rejection: &Rejection) -> Result<(), IoError> {
        let record = serde_json::json!({
            "file": rejection.path.to_string_lossy(),
            "line": rejection.line,
            "row": rejection.row,
            "reason": rejection.reason,
        });
        let mut line = record.to_string();
        line.push('\n');
        // One write call per record, so concurrent appenders never interleave within a line.
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| IoError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.count += 1;
        Ok(())
    }

    /// Rejections written by this writer.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
