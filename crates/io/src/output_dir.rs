//! Where a run writes: a local folder, or a prefix in a bucket. The pipeline's folder rules
//! (listing, the journal, manifests, parts, the lock) go through this one type.
//!
//! A part file is always encoded into a local file first ([`OutputDir::staging`]); committing
//! it ([`OutputDir::publish`]) is the atomic rename on a local disk, and one put (or a completed
//! multipart upload) under its final key in a bucket: a half-written part is never listed.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mbpipe_store::Remote;

use crate::remote::RemoteChunks;
use crate::IoError;

/// An output folder: local, or a prefix in object storage.
#[derive(Debug, Clone)]
pub enum OutputDir {
    /// A local directory.
    Local(PathBuf),
    /// A prefix in a bucket, with a local directory where parts are encoded before upload.
    Remote {
        /// The prefix.
        remote: Remote,
        /// Local scratch space for parts being written and the rejects log.
        staging: Arc<StagingDir>,
    },
}

impl fmt::Display for OutputDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputDir::Local(p) => write!(f, "{}", p.display()),
            OutputDir::Remote { remote, .. } => f.write_str(&remote.url()),
        }
    }
}

impl OutputDir {
    /// The output at `path`: an object storage URL or a local directory.
    pub fn new(path: &Path) -> Result<Self, IoError> {
        let Some(url) = path.to_str().filter(|s| mbpipe_store::is_url(s)) else {
            return Ok(OutputDir::Local(path.to_path_buf()));
        };
        let remote = Remote::parse(url.trim_end_matches('/'))?;
        let staging = StagingDir::create(&std::env::temp_dir())?;
        Ok(OutputDir::Remote {
            remote,
            staging: Arc::new(staging),
        })
    }

    /// The local directory, for a local output.
    pub fn local(&self) -> Option<&Path> {
        match self {
            OutputDir::Local(p) => Some(p),
            OutputDir::Remote { .. } => None,
        }
    }

    /// The prefix, for an output in a bucket.
    pub fn remote(&self) -> Option<&Remote> {
        match self {
            OutputDir::Local(_) => None,
            OutputDir::Remote { remote, .. } => Some(remote),
        }
    }

    /// Where `name` is shown in messages: a path or a URL.
    pub fn show(&self, name: &str) -> String {
        match self {
            OutputDir::Local(p) => p.join(name).display().to_string(),
            OutputDir::Remote { remote, .. } => remote.join(name).url(),
        }
    }

    /// The local directory part files are encoded in before [`OutputDir::publish`].
    pub fn staging(&self) -> &Path {
        match self {
            OutputDir::Local(p) => p,
            OutputDir::Remote { staging, .. } => &staging.path,
        }
    }

    /// Creates the folder (a prefix needs no creating).
    pub fn create(&self) -> Result<(), IoError> {
        match self {
            OutputDir::Local(p) => std::fs::create_dir_all(p).map_err(|source| IoError::Open {
                path: p.clone(),
                source,
            }),
            OutputDir::Remote { .. } => Ok(()),
        }
    }

    /// The names in the folder, sorted (none when it does not exist yet).
    pub fn list(&self) -> Result<Vec<String>, IoError> {
        match self {
            OutputDir::Local(dir) => {
                let open_err = |source| IoError::Open {
                    path: dir.clone(),
                    source,
                };
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(open_err(e)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    names.push(
                        entry
                            .map_err(open_err)?
                            .file_name()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
                names.sort();
                Ok(names)
            }
            OutputDir::Remote { remote, .. } => {
                Ok(remote.list_dir()?.into_iter().map(|e| e.name).collect())
            }
        }
    }

    /// The size of `name`, `None` when there is no such file.
    pub fn size(&self, name: &str) -> Result<Option<u64>, IoError> {
        match self {
            OutputDir::Local(dir) => match std::fs::metadata(dir.join(name)) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(IoError::Open {
                    path: dir.join(name),
                    source,
                }),
            },
            OutputDir::Remote { remote, .. } => Ok(remote.join(name).head()?.map(|e| e.size)),
        }
    }

    /// Age of `name` in seconds since its last modification, `None` when there is none.
    pub fn age_seconds(&self, name: &str) -> Result<Option<u64>, IoError> {
        let now = std::time::SystemTime::now();
        match self {
            OutputDir::Local(dir) => Ok(std::fs::metadata(dir.join(name))
                .and_then(|m| m.modified())
                .ok()
                .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs()))),
            OutputDir::Remote { remote, .. } => Ok(remote.join(name).head()?.map(|e| {
                let now_ms = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                (now_ms - e.modified_ms).max(0) as u64 / 1000
            })),
        }
    }

    /// The text of `name`, `None` when there is no such file.
    pub fn read_string(&self, name: &str) -> Result<Option<String>, IoError> {
        let bytes = match self {
            OutputDir::Local(dir) => match std::fs::read(dir.join(name)) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(IoError::Open {
                        path: dir.join(name),
                        source,
                    })
                }
            },
            OutputDir::Remote { remote, .. } => match remote.join(name).read_all()? {
                Some(b) => b.to_vec(),
                None => return Ok(None),
            },
        };
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Writes `name` whole and atomically: readers see the old content or the new, never part.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), IoError> {
        match self {
            OutputDir::Local(dir) => crate::write_atomic(&dir.join(name), bytes),
            OutputDir::Remote { remote, .. } => Ok(remote.join(name).put(bytes.to_vec())?),
        }
    }

    /// Writes `name` only when there is no file of that name: `Ok(false)` when there is one.
    pub fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool, IoError> {
        match self {
            OutputDir::Local(dir) => {
                let path = dir.join(name);
                let mut file = match File::options().write(true).create_new(true).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                    Err(source) => return Err(IoError::Open { path, source }),
                };
                file.write_all(bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(|source| IoError::Write { path, source })?;
                Ok(true)
            }
            OutputDir::Remote { remote, .. } => Ok(remote.join(name).put_new(bytes.to_vec())?),
        }
    }

    /// Deletes `name`; no error when there is none.
    pub fn remove(&self, name: &str) -> Result<(), IoError> {
        match self {
            OutputDir::Local(dir) => match std::fs::remove_file(dir.join(name)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(IoError::Write {
                    path: dir.join(name),
                    source,
                }),
            },
            OutputDir::Remote { remote, .. } => {
                // The marker of a multipart upload a killed run left incomplete: abort the upload
                // (invisible, but stored and billed until aborted), then remove the marker.
                if let Some(part) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
                    let marker = remote.join(name).read_all()?.unwrap_or_default();
                    let text = String::from_utf8_lossy(&marker);
                    if let Some(id) = text.strip_prefix(mbpipe_store::MULTIPART_MARK) {
                        remote.join(part).abort_upload(id.trim())?;
                    }
                }
                Ok(remote.join(name).delete()?)
            }
        }
    }

    /// Commits `name`, finished in [`OutputDir::staging`]: a local part is already in place
    /// (renamed by its writer); in a bucket it is uploaded under its final key and the local
    /// copy removed. A multipart upload's id is kept meanwhile in the hidden `.NAME.tmp`, which
    /// [`OutputDir::remove`] aborts when a killed run left it.
    pub fn publish(&self, name: &str) -> Result<(), IoError> {
        if let OutputDir::Remote { remote, staging } = self {
            let local = staging.path.join(name);
            remote
                .join(name)
                .upload(&local, &remote.join(&format!(".{name}.tmp")))?;
            let _ = std::fs::remove_file(local);
        }
        Ok(())
    }

    /// Uploads the complete lines of the log `name` kept in [`OutputDir::staging`] (a bucket's
    /// rejects log, appended locally); nothing to do for a local folder.
    pub fn publish_log(&self, name: &str) -> Result<(), IoError> {
        let OutputDir::Remote { remote, staging } = self else {
            return Ok(());
        };
        let local = staging.path.join(name);
        let mut bytes = match std::fs::read(&local) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(IoError::Open {
                    path: local,
                    source,
                })
            }
        };
        // A line being appended right now goes up with the next upload.
        bytes.truncate(bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
        Ok(remote.join(name).put(bytes)?)
    }

    /// Copies the bucket's `name` into [`OutputDir::staging`], so a log appended there continues
    /// it; nothing to do for a local folder.
    pub fn stage_log(&self, name: &str) -> Result<(), IoError> {
        let OutputDir::Remote { remote, staging } = self else {
            return Ok(());
        };
        if let Some(bytes) = remote.join(name).read_all()? {
            let local = staging.path.join(name);
            std::fs::write(&local, bytes).map_err(|source| IoError::Write {
                path: local,
                source,
            })?;
        }
        Ok(())
    }

    /// The row count in the footer of the Parquet file `name`.
    pub fn parquet_rows(&self, name: &str) -> Result<u64, String> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let rows = match self {
            OutputDir::Local(dir) => {
                let f = File::open(dir.join(name)).map_err(|e| e.to_string())?;
                SerializedFileReader::new(f).map(|r| r.metadata().file_metadata().num_rows())
            }
            OutputDir::Remote { remote, .. } => {
                let object = remote.join(name);
                let len = object
                    .head()
                    .map_err(|e| e.to_string())?
                    .ok_or("no such object")?
                    .size;
                SerializedFileReader::new(RemoteChunks::new(object, len))
                    .map(|r| r.metadata().file_metadata().num_rows())
            }
        };
        rows.map(|n| n as u64).map_err(|e| e.to_string())
    }
}

/// Names of staging directories: `mbpipe-staging-` and a random suffix.
const STAGING_PREFIX: &str = "mbpipe-staging-";
/// The file in a staging directory that its run keeps locked until it exits.
const STAGING_LOCK: &str = ".lock";

/// The local directory where a run with its output in a bucket encodes parts before uploading
/// them; removed when dropped. Its run holds an exclusive lock on its `.lock` file for as long
/// as the process lives, so a later run tells a directory that a killed run left behind (lock
/// free: the kernel released it with the process) from one in use, and removes it
/// ([`StagingDir::create`]); nightly jobs that get killed do not fill the disk with parts.
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
    _lock: File,
}

impl StagingDir {
    /// A new staging directory under `parent`, after removing the ones under it whose runs are
    /// gone (see [`remove_abandoned_staging`]).
    pub fn create(parent: &Path) -> Result<Self, IoError> {
        let removed = remove_abandoned_staging(parent);
        if removed > 0 {
            tracing::info!(
                "removed {removed} staging folder(s) that killed runs left under {}",
                parent.display()
            );
        }
        let open_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IoError::Open { path, source }
        };
        // Made and locked under a name the removal ignores, then renamed: no run ever sees an
        // unlocked staging directory that a live run is about to lock.
        let fresh = tempfile::Builder::new()
            .prefix(".mbpipe-new-staging-")
            .tempdir_in(parent)
            .map_err(open_err(parent))?;
        let lock_path = fresh.path().join(STAGING_LOCK);
        let lock = File::create(&lock_path).map_err(open_err(&lock_path))?;
        lock.lock().map_err(open_err(&lock_path))?;
        let suffix = fresh.path().file_name().map_or_else(Default::default, |n| {
            n.to_string_lossy()
                .trim_start_matches(".mbpipe-new-staging-")
                .to_string()
        });
        let path = parent.join(format!("{STAGING_PREFIX}{suffix}"));
        std::fs::rename(fresh.path(), &path).map_err(open_err(&path))?;
        let _moved = fresh.keep();
        Ok(StagingDir { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the staging directories under `parent` whose runs are gone, however they ended
/// (`kill -9`, out of memory, a lost node): a directory is removed only when this process can
/// take the lock on its `.lock` file, which a live run holds. Anything not named like a staging
/// directory, and staging directories without a `.lock` (made before runs locked them), are
/// left alone. Returns how many were removed.
pub fn remove_abandoned_staging(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STAGING_PREFIX))
        {
            continue;
        }
        let dir = entry.path();
        let Ok(lock) = File::open(dir.join(STAGING_LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_folders_of_ended_runs_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let live = StagingDir::create(tmp.path()).unwrap();
        std::fs::write(live.path().join("part-00000.parquet"), b"live").unwrap();
        assert!(live.path().starts_with(tmp.path()));
        assert!(live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX));

        // What a killed run leaves: its folder and `.lock`, with no process holding the lock.
        let abandoned = tmp.path().join(format!("{STAGING_PREFIX}killed"));
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join(STAGING_LOCK), b"").unwrap();
        std::fs::write(abandoned.join("part-00007.parquet"), b"half").unwrap();
        // Not ours to judge: no lock file (an older run), or not a staging folder at all.
        let unlocked = tmp.path().join(format!("{STAGING_PREFIX}old"));
        std::fs::create_dir(&unlocked).unwrap();
        let foreign = tmp.path().join("someone-else");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join(STAGING_LOCK), b"").unwrap();

        let second = StagingDir::create(tmp.path()).unwrap();
        assert!(!abandoned.exists(), "the killed run's folder is removed");
        assert!(
            live.path().join("part-00000.parquet").exists(),
            "a live run's folder is kept"
        );
        assert!(unlocked.exists() && foreign.join(STAGING_LOCK).exists());
        assert_ne!(second.path(), live.path());
        assert_eq!(
            remove_abandoned_staging(tmp.path()),
            0,
            "both live runs hold their locks"
        );

        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "a run removes its own folder when it ends");
    }
}
