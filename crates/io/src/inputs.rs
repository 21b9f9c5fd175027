//! Turning an input spec (file, directory or glob) into a sorted list of typed files.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use parquet::file::reader::{ChunkReader, Length};

use crate::remote::{remote_of, RemoteChunks};
use crate::IoError;

/// Compression of a JSON lines file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain text.
    None,
    /// gzip (`.gz`), possibly multi-member.
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

/// The format of one input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Apache Parquet.
    Parquet,
    /// JSON lines (`.jsonl` / `.ndjson`), one object per line.
    JsonLines {
        /// How the file is compressed.
        compression: Compression,
    },
}

/// One input file and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Where the file is.
    pub path: PathBuf,
    /// How to read it.
    pub format: InputFormat,
    /// Only these rows (0-based row indices of the file; JSON lines count non-blank lines);
    /// `None` reads the whole file. Shards and resumed runs read part of a file.
    pub rows: Option<Range<u64>>,
    /// Size and modification time when the file was listed (`None` if it could not be
    /// stat'ed): reads never go past that size and fail if the file changed.
    pub snapshot: Option<Snapshot>,
    /// The whole file's row count, once a pass over it has counted them.
    pub(crate) row_count: RowCount,
}

/// A file's row count, kept by the first pass that reads every line (schema inference does) and
/// shared by the copies that shards and resumes make, so a JSON lines file is not read again
/// just to count its rows. Not part of a file's identity: equality ignores it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowCount(Arc<OnceLock<u64>>);

impl RowCount {
    /// Records the count a pass found (the first one recorded stays).
    pub(crate) fn record(&self, rows: u64) {
        let _ = self.0.set(rows);
    }

    /// The recorded count, or `count()`'s, recorded for next time.
    pub(crate) fn get_or_count<E>(&self, count: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        if let Some(&rows) = self.0.get() {
            return Ok(rows);
        }
        let rows = count()?;
        self.record(rows);
        Ok(rows)
    }
}

impl PartialEq for RowCount {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RowCount {}

/// A file's size and modification time at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, where the filesystem has one.
    pub modified: Option<SystemTime>,
}

impl Snapshot {
    /// Stats `path` (a local path or an object storage URL) now.
    pub fn of(path: &Path) -> Result<Self, IoError> {
        if let Some(remote) = remote_of(path)? {
            return crate::remote::snapshot(&remote);
        }
        let meta = std::fs::metadata(path).map_err(|source| IoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            bytes: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// An object's size and last modification (milliseconds since the Unix epoch).
    pub(crate) fn from_remote(bytes: u64, modified_ms: i64) -> Self {
        let modified = u64::try_from(modified_ms)
            .ok()
            .map(|ms| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        Self { bytes, modified }
    }

    /// Fails (naming the file) if `path` no longer has this size and modification time.
    pub(crate) fn check(&self, path: &Path) -> Result<(), IoError> {
        self.compare(&Snapshot::of(path)?, path)
    }

    /// Fails (naming the file) if `now`, taken of `path`, differs from this snapshot.
    fn compare(&self, now: &Snapshot, path: &Path) -> Result<(), IoError> {
        let detail = if now.bytes != self.bytes {
            format!(
                "{} bytes when the run started, {} now",
                self.bytes, now.bytes
            )
        } else if now.modified != self.modified {
            "its modification time changed".to_string()
        } else {
            return Ok(());
        };
        Err(IoError::Changed {
            path: path.to_path_buf(),
            detail,
        })
    }
}

/// Opens an input as a stream: checks it still matches `snapshot`, and limits reads to the
/// snapshot's size so bytes appended meanwhile are never read.
pub(crate) fn open_input(
    path: &Path,
    snapshot: Option<Snapshot>,
) -> Result<Box<dyn Read + Send>, IoError> {
    if let Some(s) = snapshot {
        s.check(path)?;
    }
    if let Some(remote) = remote_of(path)? {
        return Ok(Box::new(remote.reader(snapshot.map(|s| s.bytes))));
    }
    let file = File::open(path).map_err(|source| IoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(file.take(snapshot.map_or(u64::MAX, |s| s.bytes))))
}

/// An input read by ranges (Parquet): a local file, or an object fetched range by range.
pub(crate) enum InputChunks {
    Local(File),
    Remote(RemoteChunks),
}

/// Opens an input for ranged reads, checked against `snapshot`; `None` when it is empty.
pub(crate) fn open_chunks(
    path: &Path,
    snapshot: Option<Snapshot>,
) -> Result<Option<InputChunks>, IoError> {
    // One stat (or HEAD request) both checks the snapshot and gives the size.
    let now = Snapshot::of(path)?;
    if let Some(s) = snapshot {
        s.compare(&now, path)?;
    }
    if now.bytes == 0 {
        return Ok(None);
    }
    if let Some(remote) = remote_of(path)? {
        return Ok(Some(InputChunks::Remote(RemoteChunks::new(
            remote, now.bytes,
        ))));
    }
    let file = File::open(path).map_err(|source| IoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(InputChunks::Local(file)))
}

impl Length for InputChunks {
    fn len(&self) -> u64 {
        match self {
            InputChunks::Local(f) => f.len(),
            InputChunks::Remote(r) => r.len(),
        }
    }
}

impl ChunkReader for InputChunks {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            InputChunks::Local(f) => Box::new(f.get_read(start)?),
            InputChunks::Remote(r) => Box::new(r.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self {
            InputChunks::Local(f) => f.get_bytes(start, length),
            InputChunks::Remote(r) => r.get_bytes(start, length),
        }
    }
}

impl InputFile {
    /// The whole file at `path`, as it is now (see [`InputFile::snapshot`]).
    pub fn new(path: PathBuf, format: InputFormat) -> Self {
        let snapshot = Snapshot::of(&path).ok();
        Self {
            snapshot,
            ..Self::new_unchecked(path, format)
        }
    }

    /// The whole file at `path`, without a snapshot.
    pub(crate) fn new_unchecked(path: PathBuf, format: InputFormat) -> Self {
        Self {
            path,
            format,
            rows: None,
            snapshot: None,
            row_count: RowCount::default(),
        }
    }

    /// The first row this file is read from.
    pub fn first_row(&self) -> u64 {
        self.rows.as_ref().map_or(0, |r| r.start)
    }
}

/// Detects the format from the file name, or `None` when the extension is unknown.
pub fn detect_format(path: &Path) -> Option<InputFormat> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        Some(InputFormat::JsonLines { compression })
    } else if stem.ends_with(".parquet") && compression == Compression::None {
        // Parquet compresses internally; a `.parquet.gz` is not something readers accept.
        Some(InputFormat::Parquet)
    } else {
        None
    }
}

/// True for names that readers of an output folder treat as hidden (in-progress or metadata).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.as_encoded_bytes().first().copied())
        .is_some_and(|b| b == b'.' || b == b'_')
}

/// [`is_hidden`] for a name.
pub(crate) fn is_hidden_name(name: &str) -> bool {
    name.starts_with(['.', '_'])
}

/// A file, a directory (its files with known extensions, non-recursive, hidden `_`/`.` names
/// skipped), or a glob; sorted by path. Errors (naming the spec) when nothing matches, or when an
/// explicitly named file has an unknown extension.
pub fn expand_inputs(spec: &str) -> Result<Vec<InputFile>, IoError> {
    let path = Path::new(spec);
    let mut files = if mbpipe_store::is_url(spec) {
        crate::remote::expand(spec)?
    } else if path.is_dir() {
        list_dir(path)?
    } else if path.is_file() {
        // An explicit file is read even if hidden: the user named it.
        let format = detect_format(path).ok_or_else(|| IoError::UnknownExtension {
            path: path.to_path_buf(),
        })?;
        vec![InputFile::new(path.to_path_buf(), format)]
    } else if spec.contains(['*', '?', '[']) {
        expand_glob(spec)?
    } else {
        Vec::new()
    };
    if files.is_empty() {
        return Err(IoError::NoMatch {
            spec: spec.to_string(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The readable, visible files directly inside `dir`.
fn list_dir(dir: &Path) -> Result<Vec<InputFile>, IoError> {
    let open_err = |source| IoError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(open_err)? {
        let path = entry.map_err(open_err)?.path();
        if let Some(file) = visible_input(path) {
            files.push(file);
        }
    }
    Ok(files)
}

/// The readable, visible files matching a glob.
fn expand_glob(spec: &str) -> Result<Vec<InputFile>, IoError> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(spec, options).map_err(|source| IoError::Glob {
        spec: spec.to_string(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in paths {
        // An unreadable directory along the way is an error, not silently fewer inputs.
        let path = entry.map_err(|e| IoError::Open {
            path: e.path().to_path_buf(),
            source: e.into(),
        })?;
        if let Some(file) = visible_input(path) {
            files.push(file);
        }
    }
    Ok(files)
}

/// `Some` for a regular, non-hidden file with a known extension; other visible files are
/// skipped with a warning, so a stray `.csv` in an input folder is not silently ignored.
fn visible_input(path: PathBuf) -> Option<InputFile> {
    if is_hidden(&path) {
        return None;
    }
    if !path.is_file() {
        // A dangling link is most likely an input that went missing: say so.
        if path.symlink_metadata().is_ok_and(|m| m.is_symlink()) && !path.exists() {
            tracing::warn!(
                "skipping input {}: a symbolic link whose target does not exist",
                path.display()
            );
        }
        return None;
    }
    if path.file_name().is_some_and(|n| n.to_str().is_none()) {
        tracing::warn!(
            "skipping input {}: its file name is not valid UTF-8 (rename it to read it)",
            path.display()
        );
        return None;
    }
    let format = known_format(&path)?;
    Some(InputFile::new(path, format))
}

/// The format of a listed file, or `None` with a warning naming it: a stray `.csv` in an input
/// folder or prefix is skipped, never silently.
pub(crate) fn known_format(path: &Path) -> Option<InputFormat> {
    let format = detect_format(path);
    if format.is_none() {
        tracing::warn!(
            "skipping input {}: not .parquet, .jsonl or .ndjson (optionally .gz/.zst)",
            path.display()
        );
    }
    format
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"").unwrap();
    }

    fn names(files: &[InputFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn detects_formats() {
        let f = |n: &str| detect_format(Path::new(n));
        assert_eq!(f("a.parquet"), Some(InputFormat::Parquet));
        assert_eq!(
            f("a.JSONL.gz"),
            Some(InputFormat::JsonLines {
                compression: Compression::Gzip
            })
        );
        assert_eq!(
            f("a.ndjson.zst"),
            Some(InputFormat::JsonLines {
                compression: Compression::Zstd
            })
        );
        assert_eq!(f("a.json"), None);
        assert_eq!(f("a.parquet.gz"), None);
        assert_eq!(f("a.csv"), None);
    }

    #[test]
    fn directory_is_sorted_non_recursive_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "b.jsonl",
            "a.parquet",
            "c.ndjson.gz",
            "_rejects.jsonl",
            ".part-00000.parquet.tmp",
            ".x.jsonl",
            "notes.txt",
        ] {
            touch(dir.path(), n);
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        touch(&dir.path().join("sub"), "d.jsonl");
        let files = expand_inputs(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(names(&files), ["a.parquet", "b.jsonl", "c.ndjson.gz"]);
        assert_eq!(files[0].format, InputFormat::Parquet);
    }

    #[test]
    fn glob_is_sorted_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["z.jsonl", "m.jsonl", "_x.jsonl", ".y.jsonl", "a.parquet"] {
            touch(dir.path(), n);
        }
        let spec = format!("{}/*.jsonl", dir.path().display());
        assert_eq!(
            names(&expand_inputs(&spec).unwrap()),
            ["m.jsonl", "z.jsonl"]
        );
    }

    #[test]
    fn errors_name_the_spec_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = format!("{}/*.parquet", dir.path().display());
        let err = expand_inputs(&spec).unwrap_err().to_string();
        assert!(err.contains(&spec), "{err}");
        let missing = format!("{}/nope.jsonl", dir.path().display());
        assert!(expand_inputs(&missing)
            .unwrap_err()
            .to_string()
            .contains(&missing));
        touch(dir.path(), "data.csv");
        let csv = format!("{}/data.csv", dir.path().display());
        let err = expand_inputs(&csv).unwrap_err();
        assert!(matches!(err, IoError::UnknownExtension { .. }));
        assert!(err.to_string().contains("data.csv"));
        // A directory with only unknown files is "no match", not an empty success.
        let err = expand_inputs(dir.path().to_str().unwrap()).unwrap_err();
        assert!(matches!(err, IoError::NoMatch { .. }));
    }
}
