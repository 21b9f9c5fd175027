//! What decides a run's values (pipeline, dtype, model files, input files), recorded in the
//! journal so that a resume can tell whether anything changed.

use std::path::Path;
use std::time::UNIX_EPOCH;

use mbpipe_io::InputFile;
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;

/// A file's identity for change detection: path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The path as given.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch, where the filesystem has one.
    pub modified_ns: Option<u64>,
}

impl FileStamp {
    /// An input file's stamp, from the snapshot taken when it was listed (a local file or an
    /// object); stats it when there is none.
    pub fn of_input(file: &InputFile) -> Result<Self, PipelineError> {
        let snapshot = match file.snapshot {
            Some(s) => s,
            None => mbpipe_io::Snapshot::of(&file.path)?,
        };
        Ok(Self {
            path: file.path.display().to_string(),
            bytes: snapshot.bytes,
            modified_ns: snapshot
                .modified
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64),
        })
    }

    /// Stats `path`.
    pub fn of(path: &Path) -> Result<Self, PipelineError> {
        let meta =
            std::fs::metadata(path).map_err(|e| PipelineError::file("stat", path.display(), e))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        Ok(Self {
            path: path.display().to_string(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

/// A task's model files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStamp {
    /// Task name.
    pub task: String,
    /// Model reference as written.
    pub model: String,
    /// Hub revision resolved, if any.
    pub revision: Option<String>,
    /// config.json, tokenizer.json and the weights.
    pub files: Vec<FileStamp>,
}

/// Everything that decides the values a run writes. A resume needs it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The pipeline file's text.
    pub pipeline: String,
    /// `--dtype`.
    pub dtype: String,
    /// Models by task.
    pub models: Vec<ModelStamp>,
    /// Every input file of the run (all shards), in order.
    pub inputs: Vec<FileStamp>,
}

/// Whether two pipeline files say the same thing: compared as parsed TOML, so comments, blank
/// lines, key order and quoting do not block a resume (raw text when either does not parse).
fn same_pipeline(a: &str, b: &str) -> bool {
    match (a.parse::<toml::Table>(), b.parse::<toml::Table>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Fingerprint {
    /// What differs between the committed run (`self`) and now, in words.
    pub fn changes(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if !same_pipeline(&self.pipeline, &now.pipeline) {
            out.push("the pipeline file's content".to_string());
        }
        if self.dtype != now.dtype {
            out.push(format!("--dtype (was {}, now {})", self.dtype, now.dtype));
        }
        if self.models.len() != now.models.len() {
            out.push("the tasks".to_string());
        } else {
            for (a, b) in self.models.iter().zip(&now.models) {
                if a != b {
                    out.push(format!("the model of task `{}` ({})", b.task, b.model));
                }
            }
        }
        let was: Vec<&str> = self.inputs.iter().map(|f| f.path.as_str()).collect();
        let is: Vec<&str> = now.inputs.iter().map(|f| f.path.as_str()).collect();
        for p in is.iter().filter(|p| !was.contains(p)) {
            out.push(format!("input {p} is new"));
        }
        for p in was.iter().filter(|p| !is.contains(p)) {
            out.push(format!("input {p} is gone"));
        }
        for a in &self.inputs {
            if let Some(b) = now.inputs.iter().find(|b| b.path == a.path) {
                if a != b {
                    out.push(format!(
                        "input {} was modified ({} bytes before, {} now)",
                        a.path, a.bytes, b.bytes
                    ));
                }
            }
        }
        out
    }
}
