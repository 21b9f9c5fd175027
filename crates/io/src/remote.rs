//! Inputs in object storage: listing a prefix or a glob, and reading objects as streams
//! (JSON lines) or by ranges (Parquet: the footer and the projected column chunks only).

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use mbpipe_store::{Entry, Expanded, Remote};
use parquet::file::reader::{ChunkReader, Length};

use crate::inputs::{detect_format, is_hidden_name, known_format, InputFile, Snapshot};
use crate::InputFormat;
use crate::IoError;

/// The object behind `path` when it is an object storage URL.
pub(crate) fn remote_of(path: &Path) -> Result<Option<Remote>, IoError> {
    match path.to_str().filter(|s| mbpipe_store::is_url(s)) {
        Some(url) => Ok(Some(Remote::parse(url)?)),
        None => Ok(None),
    }
}

/// The size and modification time of an object now.
pub(crate) fn snapshot(remote: &Remote) -> Result<Snapshot, IoError> {
    let entry = remote.head()?.ok_or_else(|| IoError::Open {
        path: PathBuf::from(remote.url()),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
    })?;
    Ok(Snapshot::from_remote(entry.size, entry.modified_ms))
}

/// Expands an object storage spec: one object, a prefix ("folder": its objects with known
/// extensions, not in sub-prefixes, hidden names skipped) or a glob over keys.
pub(crate) fn expand(spec: &str) -> Result<Vec<InputFile>, IoError> {
    Ok(match mbpipe_store::expand(spec)? {
        Expanded::Object(e) => {
            // An explicit object is read even if hidden: the user named it.
            let path = PathBuf::from(&e.url);
            let format = detect_format(&path).ok_or(IoError::UnknownExtension { path })?;
            vec![listed(e, format)]
        }
        Expanded::Listed(entries) => entries
            .into_iter()
            .filter(|e| !is_hidden_name(e.url.rsplit('/').next().unwrap_or("")))
            .filter_map(|e| known_format(Path::new(&e.url)).map(|f| listed(e, f)))
            .collect(),
    })
}

/// The input for a listed object, with the snapshot the listing gave.
fn listed(e: Entry, format: InputFormat) -> InputFile {
    let mut file = InputFile::new_unchecked(PathBuf::from(e.url), format);
    file.snapshot = Some(Snapshot::from_remote(e.size, e.modified_ms));
    file
}

/// An object read by ranged requests, for the Parquet reader: the footer first, then only the
/// column chunks it asks for.
pub(crate) struct RemoteChunks {
    remote: Remote,
    len: u64,
}

/// Bytes fetched per request when the Parquet reader streams from an offset.
const READ_AHEAD: u64 = 1 << 20;

impl RemoteChunks {
    pub(crate) fn new(remote: Remote, len: u64) -> Self {
        Self { remote, len }
    }

    fn fetch(&self, start: u64, end: u64) -> parquet::errors::Result<Bytes> {
        self.remote
            .get_range(start..end.min(self.len))
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

impl Length for RemoteChunks {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for RemoteChunks {
    type T = RangeReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeReader> {
        Ok(RangeReader {
            chunks: RemoteChunks::new(self.remote.clone(), self.len),
            pos: start,
            buf: Bytes::new(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let bytes = self.fetch(start, start + length as u64)?;
        if bytes.len() != length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "{}: expected {length} bytes at {start}, got {}",
                self.remote.url(),
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Reads an object from an offset, a megabyte per request.
pub(crate) struct RangeReader {
    chunks: RemoteChunks,
    pos: u64,
    buf: Bytes,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.chunks.len {
                return Ok(0);
            }
            self.buf = self
                .chunks
                .fetch(self.pos, self.pos + READ_AHEAD)
                .map_err(std::io::Error::other)?;
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}
