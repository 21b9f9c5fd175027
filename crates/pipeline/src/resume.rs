//! Crash-safe progress: a journal of committed parts, so a rerun after a crash or an interrupt
//! resumes where the last committed part ended.
//!
//! The journal (`_progress.jsonl`, per shard `_progress.shard-I-of-N.jsonl`) starts with the
//! run's fingerprint (pipeline text, dtype, model files, input files) and gets one line per part,
//! appended and synced after the part's atomic rename. A part on disk that the journal does not
//! list (killed between the rename and the append) is removed on resume and computed again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use mbpipe_io::{InputFile, OutputFormat};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::output::PartRecord;

/// Names of one run's files in the output directory: plain, or with a shard suffix.
#[derive(Debug, Clone, Copy)]
pub struct OutputNames {
    /// `(I, N)` for `--shard I/N`.
    pub shard: Option<(usize, usize)>,
}

impl OutputNames {
    fn suffix(&self) -> String {
        self.shard
            .map_or(String::new(), |(i, n)| format!(".shard-{i}-of-{n}"))
    }

    /// The journal of committed parts.
    pub fn journal(&self) -> String {
        format!("_progress{}.jsonl", self.suffix())
    }

    /// The rejected-rows log (shards keep their own, so concurrent shards never share a file).
    pub fn rejects(&self) -> String {
        format!("_rejects{}.jsonl", self.suffix())
    }

    /// The manifest.
    pub fn manifest(&self) -> String {
        format!("_manifest{}.json", self.suffix())
    }

    /// The success marker.
    pub fn success(&self) -> String {
        format!("_SUCCESS{}", self.suffix())
    }

    /// The name prefix of this run's part files.
    fn part_prefix(&self) -> String {
        match self.shard {
            None => "part-".to_string(),
            Some((i, _)) => format!("part-{i:05}-"),
        }
    }

    /// Part `seq` of this run: `part-00007.parquet`, or `part-00002-00007.parquet` for shard 2,
    /// so that the parts of all shards sort by name into input order.
    pub fn part(&self, seq: u64, format: OutputFormat) -> String {
        format!("{}{seq:05}.{}", self.part_prefix(), format.extension())
    }

    /// Whether `name` is one of this run's part files, finished (`part-…`) or not (`.part-….tmp`).
    fn owns_part(&self, name: &str) -> bool {
        let name = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .unwrap_or(name);
        let Some(rest) = name.strip_prefix(&self.part_prefix()) else {
            return false;
        };
        let seq = rest.split('.').next().unwrap_or("");
        !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())
    }
}

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
    /// Stats `path`.
    pub fn of(path: &Path) -> Result<Self, PipelineError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| PipelineError::Run(format!("cannot stat {}: {e}", path.display())))?;
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

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Fingerprint(Fingerprint),
    Part { seq: u64, part: PartRecord },
}

/// Appends committed parts to the journal, durably.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Records that `part` (sequence number `seq`) is committed.
    pub fn append(&mut self, seq: u64, part: &PartRecord) -> Result<(), PipelineError> {
        let entry = Entry::Part {
            seq,
            part: part.clone(),
        };
        self.write_entry(&entry)
    }

    fn write_entry(&mut self, entry: &Entry) -> Result<(), PipelineError> {
        let mut line =
            serde_json::to_string(entry).map_err(|e| PipelineError::Run(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| PipelineError::Run(format!("cannot write {}: {e}", self.path.display())))
    }
}

/// What a previous, unfinished run left that this one keeps.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Committed parts, in order.
    pub parts: Vec<PartRecord>,
    /// The next part sequence number.
    pub next_seq: u64,
    /// Rejected rows before the resume point, kept in the rejects log.
    pub rejected: u64,
}

impl Resumed {
    /// Where reading restarts: the input path and row after the last committed part.
    pub fn position(&self) -> Option<(&str, u64)> {
        // The empty part of a run without inputs names no input: nothing to resume from.
        self.parts
            .last()
            .filter(|p| !p.input.is_empty())
            .map(|p| (p.input.as_str(), p.first_row + p.input_rows))
    }
}

/// Opens the journal for a run: resumes a previous unfinished run with the same fingerprint
/// (removing its uncommitted leftovers), refuses one whose fingerprint differs, and starts a new
/// journal otherwise.
pub fn open(
    dir: &Path,
    names: OutputNames,
    fingerprint: &Fingerprint,
) -> Result<(Journal, Resumed), PipelineError> {
    let path = dir.join(names.journal());
    let resumed = if path.exists() {
        let (old, resumed) = read_journal(&path)?;
        let changes = old.changes(fingerprint);
        // Nothing committed yet means nothing to be inconsistent with: start over quietly.
        if !changes.is_empty() && !resumed.parts.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "{} holds an unfinished run that cannot be resumed: since it started, {} changed. Use --overwrite to start over",
                dir.display(),
                changes.join("; ")
            )));
        }
        Some(resumed)
    } else {
        if let Some(stray) = owned_parts(dir, names)?.into_iter().next() {
            return Err(PipelineError::Invalid(format!(
                "{} already holds part files ({stray}) but no progress journal to resume from; use --overwrite to start over",
                dir.display()
            )));
        }
        None
    };
    let keep: Vec<String> = resumed
        .iter()
        .flat_map(|r| r.parts.iter().map(|p| p.file.clone()))
        .collect();
    for name in owned_parts(dir, names)? {
        if !keep.contains(&name) {
            let p = dir.join(&name);
            std::fs::remove_file(&p).map_err(|e| {
                PipelineError::Run(format!("cannot remove uncommitted {}: {e}", p.display()))
            })?;
        }
    }
    let mut resumed = resumed.unwrap_or_default();
    for p in &resumed.parts {
        if !dir.join(&p.file).is_file() {
            return Err(PipelineError::Run(format!(
                "{} lists committed part {} but it is missing from {}; use --overwrite to start over",
                path.display(),
                p.file,
                dir.display()
            )));
        }
    }
    resumed.rejected = trim_rejects(&dir.join(names.rejects()), &resumed, fingerprint)?;
    let journal = if resumed.parts.is_empty() {
        let mut j = Journal {
            path: path.clone(),
            file: File::create(&path).map_err(|e| {
                PipelineError::Run(format!("cannot create {}: {e}", path.display()))
            })?,
        };
        j.write_entry(&Entry::Fingerprint(fingerprint.clone()))?;
        j
    } else {
        // Rewrite the journal whole: drops a line torn by a crash mid-append.
        let mut lines = vec![Entry::Fingerprint(fingerprint.clone())];
        for (i, p) in resumed.parts.iter().enumerate() {
            lines.push(Entry::Part {
                seq: resumed.next_seq - (resumed.parts.len() - i) as u64,
                part: p.clone(),
            });
        }
        let text: String = lines
            .iter()
            .map(|e| serde_json::to_string(e).map(|s| s + "\n"))
            .collect::<Result<_, _>>()
            .map_err(|e| PipelineError::Run(e.to_string()))?;
        mbpipe_io::write_atomic(&path, text.as_bytes())?;
        Journal {
            path: path.clone(),
            file: OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| PipelineError::Run(format!("cannot open {}: {e}", path.display())))?,
        }
    };
    Ok((journal, resumed))
}

/// Removes the journal once the manifest and success marker are written.
pub fn finish(dir: &Path, names: OutputNames) {
    let _ = std::fs::remove_file(dir.join(names.journal()));
}

/// Reads a journal: its fingerprint and committed parts. A torn last line is ignored.
fn read_journal(path: &Path) -> Result<(Fingerprint, Resumed), PipelineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Run(format!("cannot read {}: {e}", path.display())))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut fingerprint = None;
    let mut resumed = Resumed::default();
    for (i, line) in lines.iter().enumerate() {
        let entry = match serde_json::from_str::<Entry>(line) {
            Ok(e) => e,
            // Only the last line can be torn by a crash; anything else is damage.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(PipelineError::Run(format!(
                    "{} line {} is damaged ({e}); use --overwrite to start over",
                    path.display(),
                    i + 1
                )))
            }
        };
        match entry {
            Entry::Fingerprint(f) => fingerprint = Some(f),
            Entry::Part { seq, part } => {
                resumed.next_seq = seq + 1;
                resumed.parts.push(part);
            }
        }
    }
    let fingerprint = fingerprint.ok_or_else(|| {
        PipelineError::Run(format!(
            "{} has no fingerprint line; use --overwrite to start over",
            path.display()
        ))
    })?;
    Ok((fingerprint, resumed))
}

/// This run's part files in `dir`, finished or not.
fn owned_parts(dir: &Path, names: OutputNames) -> Result<Vec<String>, PipelineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(PipelineError::Run(format!(
                "cannot list {}: {e}",
                dir.display()
            )))
        }
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| names.owns_part(n))
        .collect();
    out.sort();
    Ok(out)
}

/// Keeps only the rejections before the resume point (the rest will be met again); returns how
/// many were kept.
fn trim_rejects(
    path: &Path,
    resumed: &Resumed,
    fingerprint: &Fingerprint,
) -> Result<u64, PipelineError> {
    if !path.exists() {
        return Ok(0);
    }
    let order = |file: &str| fingerprint.inputs.iter().position(|f| f.path == file);
    let cut = resumed
        .position()
        .and_then(|(file, row)| order(file).map(|i| (i, row)));
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Run(format!("cannot read {}: {e}", path.display())))?;
    let mut kept = String::new();
    let mut count = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // torn by a crash; that row is met again
        };
        let at = v["file"].as_str().and_then(order).zip(v["row"].as_u64());
        if matches!((at, cut), (Some(at), Some(cut)) if at < cut) {
            kept.push_str(line);
            kept.push('\n');
            count += 1;
        }
    }
    if count == 0 {
        std::fs::remove_file(path)
            .map_err(|e| PipelineError::Run(format!("cannot remove {}: {e}", path.display())))?;
    } else {
        mbpipe_io::write_atomic(path, kept.as_bytes())?;
    }
    Ok(count)
}

/// The input files left to read after `resumed`: files before the resume point are dropped and
/// the file it falls in starts at its row.
pub fn remaining_inputs(
    files: Vec<InputFile>,
    resumed: &Resumed,
) -> Result<Vec<InputFile>, PipelineError> {
    let Some((input, row)) = resumed.position() else {
        return Ok(files);
    };
    let at = files
        .iter()
        .position(|f| f.path.display().to_string() == input)
        .ok_or_else(|| {
            PipelineError::Run(format!(
                "the committed parts end in {input}, which this run does not read; use --overwrite to start over"
            ))
        })?;
    let mut rest: Vec<InputFile> = files.into_iter().skip(at).collect();
    let first = &mut rest[0];
    let end = first.rows.as_ref().map_or(u64::MAX, |r| r.end);
    if row >= end {
        rest.remove(0);
    } else {
        first.rows = Some(row.max(first.first_row())..end);
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &str, bytes: u64) -> FileStamp {
        FileStamp {
            path: path.into(),
            bytes,
            modified_ns: Some(1),
        }
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            pipeline: "p".into(),
            dtype: "f32".into(),
            models: vec![ModelStamp {
                task: "t".into(),
                model: "m".into(),
                revision: None,
                files: vec![stamp("m/model.safetensors", 10)],
            }],
            inputs: vec![stamp("a.jsonl", 5), stamp("b.jsonl", 6)],
        }
    }

    #[test]
    fn a_comment_only_change_to_the_pipeline_file_does_not_block_resume() {
        let mut a = fingerprint();
        a.pipeline = "[input]\npath = \"a.jsonl\"\n[output]\npath = \"o\"\n".into();
        let mut b = a.clone();
        b.pipeline = format!(
            "# nightly run\n\n{}# done\n",
            a.pipeline.replace("\"o\"", "'o'")
        );
        assert!(a.changes(&b).is_empty(), "{:?}", a.changes(&b));
        b.pipeline = a.pipeline.replace("\"o\"", "\"p\"");
        assert_eq!(a.changes(&b), ["the pipeline file's content"]);
    }

    #[test]
    fn changes_are_named() {
        let a = fingerprint();
        assert!(a.changes(&a).is_empty());
        let mut b = a.clone();
        b.pipeline = "q".into();
        b.dtype = "bf16".into();
        b.models[0].files[0].bytes = 11;
        b.inputs[1].bytes = 7;
        b.inputs.push(stamp("c.jsonl", 1));
        let c = a.changes(&b).join("; ");
        for want in [
            "pipeline file",
            "--dtype (was f32, now bf16)",
            "model of task `t`",
            "input b.jsonl was modified (6 bytes before, 7 now)",
            "input c.jsonl is new",
        ] {
            assert!(c.contains(want), "{want} missing from {c}");
        }
    }

    #[test]
    fn part_names_sort_across_shards_and_are_recognised() {
        let plain = OutputNames { shard: None };
        let s2 = OutputNames {
            shard: Some((2, 10)),
        };
        let s10 = OutputNames {
            shard: Some((10, 11)),
        };
        assert_eq!(plain.part(7, OutputFormat::Parquet), "part-00007.parquet");
        assert_eq!(s2.part(7, OutputFormat::ArrowIpc), "part-00002-00007.arrow");
        assert!(s2.part(99, OutputFormat::Parquet) < s10.part(0, OutputFormat::Parquet));
        assert!(plain.owns_part("part-00007.parquet"));
        assert!(plain.owns_part(".part-00007.parquet.tmp"));
        assert!(!plain.owns_part("part-00002-00007.parquet"));
        assert!(s2.owns_part("part-00002-00007.parquet"));
        assert!(!s2.owns_part("part-00003-00007.parquet"));
        assert!(!plain.owns_part("_manifest.json"));
        assert_eq!(s2.journal(), "_progress.shard-2-of-10.jsonl");
    }

    #[test]
    fn journal_round_trip_drops_uncommitted_parts_and_late_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let names = OutputNames { shard: None };
        let fp = fingerprint();
        let (mut j, r) = open(dir.path(), names, &fp).unwrap();
        assert!(r.parts.is_empty());
        let part = |seq: u64, first_row: u64| PartRecord {
            file: names.part(seq, OutputFormat::Parquet),
            input: "a.jsonl".into(),
            first_row,
            input_rows: 10,
            rows: 10,
            tokens: 40,
        };
        for seq in 0..2 {
            std::fs::write(
                dir.path().join(names.part(seq, OutputFormat::Parquet)),
                b"x",
            )
            .unwrap();
            j.append(seq, &part(seq, seq * 10)).unwrap();
        }
        drop(j);
        // Killed after renaming part 2 but before journaling it; a temp file of part 3; and a
        // half-written journal line.
        std::fs::write(dir.path().join("part-00002.parquet"), b"x").unwrap();
        std::fs::write(dir.path().join(".part-00003.parquet.tmp"), b"x").unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(names.journal()))
            .unwrap();
        f.write_all(b"{\"part\":{\"seq\":2,").unwrap();
        std::fs::write(
            dir.path().join(names.rejects()),
            "{\"file\":\"a.jsonl\",\"row\":5,\"reason\":\"x\"}\n{\"file\":\"a.jsonl\",\"row\":25,\"reason\":\"y\"}\n",
        )
        .unwrap();

        let (_, r) = open(dir.path(), names, &fp).unwrap();
        assert_eq!(r.parts, [part(0, 0), part(1, 10)]);
        assert_eq!(r.next_seq, 2);
        assert_eq!(r.position(), Some(("a.jsonl", 20)));
        assert_eq!(r.rejected, 1);
        assert!(!dir.path().join("part-00002.parquet").exists());
        assert!(!dir.path().join(".part-00003.parquet.tmp").exists());
        let rejects = std::fs::read_to_string(dir.path().join(names.rejects())).unwrap();
        assert!(rejects.contains("\"row\":5") && !rejects.contains("\"row\":25"));

        let mut changed = fp.clone();
        changed.inputs[0].bytes = 99;
        let err = open(dir.path(), names, &changed).unwrap_err().to_string();
        assert!(err.contains("input a.jsonl was modified"), "{err}");
    }

    #[test]
    fn remaining_inputs_start_after_the_last_part() {
        let f = |p: &str| {
            InputFile::new(
                PathBuf::from(p),
                mbpipe_io::InputFormat::JsonLines {
                    compression: mbpipe_io::Compression::None,
                },
            )
        };
        let resumed = Resumed {
            parts: vec![PartRecord {
                file: "part-00000.parquet".into(),
                input: "b.jsonl".into(),
                first_row: 0,
                input_rows: 7,
                rows: 7,
                tokens: 0,
            }],
            next_seq: 1,
            rejected: 0,
        };
        let rest =
            remaining_inputs(vec![f("a.jsonl"), f("b.jsonl"), f("c.jsonl")], &resumed).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].rows, Some(7..u64::MAX));
        assert_eq!(rest[1].rows, None);
    }
}
