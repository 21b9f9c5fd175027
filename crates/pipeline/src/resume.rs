//! Crash-safe progress: a journal of committed parts, so a rerun after a crash or an interrupt
//! resumes where the last committed part ended.
//!
//! The journal (`_progress.jsonl`, per shard `_progress.shard-I-of-N.jsonl`) starts with the
//! run's fingerprint (pipeline text, dtype, model files, input files) and gets one line per part
//! (its file, size, rows and input range), appended and synced after the part's atomic rename. A
//! part on disk numbered after the journal's last (killed between the rename and the append) is
//! removed on resume and computed again. A resume first checks that the journal is contiguous and
//! every committed part is on disk as recorded; a damaged folder is an error, never resumed.
//!
//! Nothing is changed before the whole run is checked: [`plan`] decides (reading only) what to
//! keep and what to delete, [`start`] does it once the models are loaded and every check passed.

use std::fs::{File, OpenOptions};
use std::io::Write;

use mbpipe_io::{InputFile, OutputDir};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::names::OutputNames;
use crate::output::PartRecord;

mod fingerprint;
pub use fingerprint::{FileStamp, Fingerprint, ModelStamp};

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Fingerprint(Fingerprint),
    Part { seq: u64, part: PartRecord },
}

/// Appends committed parts to the journal, durably: appended and synced on a local disk,
/// written whole again in a bucket (objects cannot be appended to; a journal is small).
#[derive(Debug)]
pub struct Journal {
    dir: OutputDir,
    name: String,
    text: String,
    file: Option<File>,
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
        let mut line = serde_json::to_string(entry)?;
        line.push('\n');
        let Some(file) = self.file.as_mut() else {
            self.text.push_str(&line);
            return Ok(self.dir.write_atomic(&self.name, self.text.as_bytes())?);
        };
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| PipelineError::file("write", self.dir.show(&self.name), e))
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

/// What starting the run will do to its output folder, decided and checked before any change.
#[derive(Debug)]
pub struct Plan {
    dir: OutputDir,
    names: OutputNames,
    fingerprint: Fingerprint,
    /// The committed parts kept, and where reading restarts.
    pub resumed: Resumed,
    /// This run's files to delete: uncommitted leftovers, or everything of this run's with
    /// `--overwrite`.
    remove: Vec<String>,
}

/// Decides, reading only, how a run starts in `dir` (whose entries, all mbpipe's, are
/// `entries`): with `overwrite`, from scratch, deleting only this run's (shard's) own files; else
/// resuming a previous unfinished run with the same fingerprint, after checking that its journal
/// is contiguous and its parts are intact. Refuses a changed fingerprint, a damaged folder and
/// part files that no journal or manifest accounts for.
pub fn plan(
    dir: &OutputDir,
    names: OutputNames,
    entries: &[String],
    fingerprint: &Fingerprint,
    overwrite: bool,
) -> Result<Plan, PipelineError> {
    let has = |name: &str| entries.iter().any(|e| e == name);
    let parts: Vec<(&String, u64)> = entries
        .iter()
        .filter_map(|n| names.part_seq(n).map(|seq| (n, seq)))
        .collect();
    let temps = entries.iter().filter(|n| names.owns_temp(n)).cloned();
    let journal_path = dir.show(&names.journal());
    let mut plan = Plan {
        dir: dir.clone(),
        names,
        fingerprint: fingerprint.clone(),
        resumed: Resumed::default(),
        remove: temps.collect(),
    };
    if overwrite {
        // Without a journal (whose run numbered every part of this shard), only the parts the
        // manifest lists are known to be mbpipe's.
        if !has(&names.journal()) {
            let listed = manifest_parts(dir, names)?;
            if let Some(stray) = parts.iter().map(|(n, _)| *n).find(|n| !listed.contains(*n)) {
                return Err(PipelineError::Invalid(format!(
                    "{} holds {stray}, which neither a progress journal nor a manifest of {} \
                     lists, so mbpipe cannot tell that it wrote it (--overwrite deletes only \
                     files it wrote); move it away or choose another [output] path",
                    dir,
                    names.describe()
                )));
            }
        }
        plan.remove.extend(parts.iter().map(|(n, _)| n.to_string()));
        plan.remove
            .extend(names.own_metadata().into_iter().filter(|n| has(n)));
        return Ok(plan);
    }
    if !has(&names.journal()) {
        if let Some((stray, _)) = parts.first() {
            return Err(PipelineError::Invalid(format!(
                "{dir} already holds part files ({stray}) but no progress journal to resume from; use --overwrite to start over"
            )));
        }
        return Ok(plan);
    }
    let Some((old, resumed)) = read_journal(dir, names)? else {
        // Killed before its first line: nothing was committed.
        plan.remove.extend(parts.iter().map(|(n, _)| n.to_string()));
        return Ok(plan);
    };
    let changes = old.changes(fingerprint);
    // Nothing committed yet means nothing to be inconsistent with: start over quietly.
    if !changes.is_empty() && !resumed.parts.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{dir} holds an unfinished run that cannot be resumed: since it started, {} changed. Use --overwrite to start over",
            changes.join("; ")
        )));
    }
    check_contiguous(&journal_path, &resumed, fingerprint)?;
    for p in &resumed.parts {
        check_part(dir, p, &journal_path)?;
    }
    // Contiguous from 0, so every part numbered below `next_seq` is listed; those after it were
    // renamed into place but never journaled.
    plan.remove.extend(
        parts
            .iter()
            .filter(|(_, seq)| *seq >= resumed.next_seq)
            .map(|(n, _)| n.to_string()),
    );
    plan.resumed = resumed;
    Ok(plan)
}

/// Carries out `plan` once every check of the run passed: deletes what it names, keeps the
/// rejections before the resume point and opens the journal.
pub fn start(plan: Plan) -> Result<(Journal, Resumed), PipelineError> {
    let Plan {
        dir,
        names,
        fingerprint,
        mut resumed,
        remove,
    } = plan;
    for name in &remove {
        dir.remove(name)?;
    }
    let name = names.journal();
    resumed.rejected = trim_rejects(&dir, &names.rejects(), &resumed, &fingerprint)?;
    dir.stage_log(&names.rejects())?;
    let journal = if resumed.parts.is_empty() {
        let file = match dir.local() {
            Some(local) => {
                let path = local.join(&name);
                Some(
                    File::create(&path)
                        .map_err(|e| PipelineError::file("create", path.display(), e))?,
                )
            }
            None => None,
        };
        let mut j = Journal {
            dir: dir.clone(),
            name,
            text: String::new(),
            file,
        };
        j.write_entry(&Entry::Fingerprint(fingerprint))?;
        j
    } else {
        // Rewrite the journal whole: drops a line torn by a crash mid-append.
        let mut lines = vec![Entry::Fingerprint(fingerprint)];
        for (i, p) in resumed.parts.iter().enumerate() {
            lines.push(Entry::Part {
                seq: i as u64,
                part: p.clone(),
            });
        }
        let text: String = lines
            .iter()
            .map(|e| serde_json::to_string(e).map(|s| s + "\n"))
            .collect::<Result<_, _>>()?;
        dir.write_atomic(&name, text.as_bytes())?;
        let file = match dir.local() {
            Some(local) => {
                let path = local.join(&name);
                Some(
                    OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(|e| PipelineError::file("open", path.display(), e))?,
                )
            }
            None => None,
        };
        Journal {
            dir: dir.clone(),
            name,
            text,
            file,
        }
    };
    Ok((journal, resumed))
}

/// Checks, before `_SUCCESS` is written, that every part of the run is on disk as recorded.
pub fn verify(
    dir: &OutputDir,
    parts: &[PartRecord],
    names: OutputNames,
) -> Result<(), PipelineError> {
    let journal = dir.show(&names.journal());
    parts.iter().try_for_each(|p| check_part(dir, p, &journal))
}

/// Removes the journal once the manifest and success marker are written.
pub fn finish(dir: &OutputDir, names: OutputNames) {
    let _ = dir.remove(&names.journal());
}

/// The part files a manifest of this run lists (none when there is no readable manifest).
fn manifest_parts(dir: &OutputDir, names: OutputNames) -> Result<Vec<String>, PipelineError> {
    #[derive(Deserialize)]
    struct Parts {
        parts: Vec<PartRecord>,
    }
    Ok(dir
        .read_string(&names.manifest())?
        .and_then(|t| serde_json::from_str::<Parts>(&t).ok())
        .map_or_else(Vec::new, |m| m.parts.into_iter().map(|p| p.file).collect()))
}

/// The words every "cannot resume" error ends with.
const START_OVER: &str = "the output cannot be resumed safely; use --overwrite to start over";

/// Refuses a journal whose parts are not numbered 0, 1, 2, ... with the names this run gives
/// them, or whose input ranges leave a gap or overlap within a file or go back to an earlier file.
fn check_contiguous(
    path: &str,
    resumed: &Resumed,
    fingerprint: &Fingerprint,
) -> Result<(), PipelineError> {
    let order = |input: &str| fingerprint.inputs.iter().position(|f| f.path == input);
    for pair in resumed.parts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let end = a.first_row + a.input_rows;
        let broken = if a.input == b.input {
            (b.first_row != end).then(|| {
                format!(
                    "part {} starts at row {} of {} but the part before it ({}) ends at row {end}",
                    b.file, b.first_row, b.input, a.file
                )
            })
        } else {
            let backwards = matches!(
                (order(&a.input), order(&b.input)),
                (Some(x), Some(y)) if y <= x
            );
            backwards.then(|| {
                format!(
                    "part {} reads {} after part {} read {}, out of input order",
                    b.file, b.input, a.file, a.input
                )
            })
        };
        if let Some(why) = broken {
            return Err(PipelineError::Resume(format!(
                "{path} is not contiguous: {why}; {START_OVER}"
            )));
        }
    }
    Ok(())
}

/// Checks that a committed part exists with the size (and, for Parquet, the rows) recorded.
fn check_part(dir: &OutputDir, p: &PartRecord, journal: &str) -> Result<(), PipelineError> {
    let path = dir.show(&p.file);
    let damaged = |what: String| {
        Err(PipelineError::Resume(format!(
            "committed part {path} {what} ({journal} records it); {START_OVER}"
        )))
    };
    let len = match dir.size(&p.file) {
        Ok(Some(len)) => len,
        Ok(None) => return damaged("is missing".into()),
        Err(e) => return damaged(format!("cannot be read: {e}")),
    };
    if let Some(bytes) = p.bytes.filter(|&b| b != len) {
        return damaged(format!(
            "is {len} bytes but was {bytes} when committed: it was truncated or changed since"
        ));
    }
    if p.file.ends_with(".parquet") {
        match dir.parquet_rows(&p.file) {
            Err(e) => return damaged(format!("cannot be read as Parquet: {e}")),
            Ok(n) if n != p.rows => {
                return damaged(format!("holds {n} rows but {} were committed", p.rows))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Reads a journal: its fingerprint and committed parts, checking that the parts are numbered
/// 0, 1, 2, ... with this run's names. A torn last line is ignored; `None` when not even the
/// fingerprint line was written.
fn read_journal(
    dir: &OutputDir,
    names: OutputNames,
) -> Result<Option<(Fingerprint, Resumed)>, PipelineError> {
    let path = dir.show(&names.journal());
    let text = dir
        .read_string(&names.journal())?
        .ok_or_else(|| PipelineError::Resume(format!("cannot read {path}: it is gone")))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut fingerprint = None;
    let mut resumed = Resumed::default();
    for (i, line) in lines.iter().enumerate() {
        let entry = match serde_json::from_str::<Entry>(line) {
            Ok(e) => e,
            // Only the last line can be torn by a crash; anything else is damage.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(PipelineError::Resume(format!(
                    "{} line {} is damaged ({e}); {START_OVER}",
                    path,
                    i + 1
                )))
            }
        };
        match entry {
            Entry::Fingerprint(f) if i == 0 => fingerprint = Some(f),
            Entry::Fingerprint(_) => {
                return Err(PipelineError::Resume(format!(
                    "{} line {} repeats the fingerprint; {START_OVER}",
                    path,
                    i + 1
                )))
            }
            Entry::Part { seq, part } => {
                let want = resumed.parts.len() as u64;
                if seq != want || names.part_seq(&part.file) != Some(seq) {
                    return Err(PipelineError::Resume(format!(
                        "{} is not contiguous: line {} records part {seq} ({}) where part {want} \
                         was expected (a line is missing or was changed); {START_OVER}",
                        path,
                        i + 1,
                        part.file
                    )));
                }
                resumed.next_seq = seq + 1;
                resumed.parts.push(part);
            }
        }
    }
    match fingerprint {
        Some(f) => Ok(Some((f, resumed))),
        None if resumed.parts.is_empty() => Ok(None),
        None => Err(PipelineError::Resume(format!(
            "{} has no fingerprint line; {START_OVER}",
            path
        ))),
    }
}

/// Keeps only the rejections before the resume point (the rest will be met again); returns how
/// many were kept.
fn trim_rejects(
    dir: &OutputDir,
    name: &str,
    resumed: &Resumed,
    fingerprint: &Fingerprint,
) -> Result<u64, PipelineError> {
    let Some(text) = dir.read_string(name)? else {
        return Ok(0);
    };
    let order = |file: &str| fingerprint.inputs.iter().position(|f| f.path == file);
    let cut = resumed
        .position()
        .and_then(|(file, row)| order(file).map(|i| (i, row)));
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
        dir.remove(name)?;
    } else {
        dir.write_atomic(name, kept.as_bytes())?;
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
            PipelineError::Resume(format!(
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
mod tests;
