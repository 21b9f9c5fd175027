//! The output folder before a run writes to it: not an input, holding only mbpipe's files of
//! one layout, and locked for this run (or shard).

use std::path::{Component, Path, PathBuf};

use mbpipe_io::{InputFile, OutputDir};

use crate::error::PipelineError;
use crate::lock::{self, OutputLock};
use crate::names::{claim, OutputNames};

/// A checked output folder, locked for this run until dropped.
#[derive(Debug)]
pub struct OutputFolder {
    /// The folder's entries when it was locked (mbpipe's files only).
    pub entries: Vec<String>,
    _lock: OutputLock,
}

/// Checks `dir` as the output of a run reading `inputs` (from `spec`), reading only: not a file,
/// not an input, holding only mbpipe's files of this run's layout. Returns its entries (none
/// when it does not exist yet).
pub fn inspect(
    dir: &OutputDir,
    names: OutputNames,
    spec: &str,
    inputs: &[InputFile],
) -> Result<Vec<String>, PipelineError> {
    if let Some(path) = dir.local() {
        if path.exists() && !path.is_dir() {
            return Err(PipelineError::Invalid(format!(
                "[output] path {} exists and is not a directory; the output is a folder of part files",
                path.display()
            )));
        }
    }
    check_placement(dir, spec, inputs)?;
    let entries = dir.list()?;
    check_foreign(dir, &entries)?;
    check_layout(dir, names, &entries)?;
    Ok(entries)
}

/// [`inspect`]s `dir`, creates it, locks it and checks it again under the lock. Changes nothing
/// else.
pub fn open(
    dir: &OutputDir,
    names: OutputNames,
    spec: &str,
    inputs: &[InputFile],
) -> Result<OutputFolder, PipelineError> {
    inspect(dir, names, spec, inputs)?;
    dir.create()?;
    let lock = lock::acquire(dir, &names.lock())?;
    // Listed again under the lock: a run of another layout may have started meanwhile (its lock
    // file tells).
    let entries = dir.list()?;
    check_foreign(dir, &entries)?;
    check_layout(dir, names, &entries)?;
    Ok(OutputFolder {
        entries,
        _lock: lock,
    })
}

/// Refuses a folder holding anything mbpipe does not write.
fn check_foreign(dir: &OutputDir, entries: &[String]) -> Result<(), PipelineError> {
    // `.nfsXXXX` are NFS's stand-ins for deleted files still open; they vanish on their own.
    let foreign: Vec<&String> = entries
        .iter()
        .filter(|n| claim(n).is_none() && !n.starts_with(".nfs"))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = foreign.iter().take(5).map(|s| s.as_str()).collect();
    let more = match foreign.len() - shown.len() {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Err(PipelineError::Invalid(format!(
        "output folder {} holds files mbpipe did not write ({}{more}); mbpipe writes only into a \
         new or empty folder or one holding its own output, and never deletes other files: \
         choose another [output] path",
        dir,
        shown.join(", ")
    )))
}

/// Refuses a folder holding another layout's files (unsharded vs N shards).
fn check_layout(
    dir: &OutputDir,
    names: OutputNames,
    entries: &[String],
) -> Result<(), PipelineError> {
    let other = entries
        .iter()
        .filter_map(|n| claim(n).map(|c| (n, c)))
        .find(|(_, c)| !names.same_layout(*c));
    let Some((name, c)) = other else {
        return Ok(());
    };
    Err(PipelineError::Invalid(format!(
        "output folder {} holds the output of {} ({name}), and this run is {}; a folder holds \
         one layout (unsharded, or N shards), so mixing them would count rows twice. Use the \
         same sharding as the files there, or another [output] path",
        dir,
        c.describe(),
        names.describe()
    )))
}

/// The first of the part files a run writes into the folder `out` (ending in `/`) that the input
/// glob `spec` matches: the next run would read the output as input. `None` for a plain path
/// or when no part file matches.
fn read_back(spec: &str, out: &str) -> Option<String> {
    if !spec.contains(['*', '?', '[']) {
        return None;
    }
    let pattern = glob::Pattern::new(spec.trim_end_matches('/')).ok()?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    [
        "part-00000.parquet",
        "part-00000.arrow",
        "part-00000-00000.parquet",
    ]
    .into_iter()
    .map(|name| format!("{out}{name}"))
    .find(|part| pattern.matches_with(part, options))
}

/// Refuses an output folder that is, contains or lies inside an input path.
fn check_placement(dir: &OutputDir, spec: &str, inputs: &[InputFile]) -> Result<(), PipelineError> {
    let refuse = |what: String| {
        Err(PipelineError::Invalid(format!(
            "[output] path {dir} {what}; mbpipe would write among its own inputs. Choose an output \
             folder outside the input"
        )))
    };
    let Some(dir) = dir.local() else {
        // In a bucket, keys are compared as text: an input key under the output prefix (or the
        // output under an input's key) is the same overlap.
        let out = format!("{}/", dir.remote().map(|r| r.url()).unwrap_or_default());
        for f in inputs {
            let input = f.path.display().to_string();
            if input.starts_with(&out) || out.starts_with(&format!("{input}/")) {
                return refuse(format!("contains the input file {input}"));
            }
        }
        let spec_dir = format!("{}/", spec.trim_end_matches('/'));
        if !spec.contains(['*', '?', '['])
            && (out.starts_with(&spec_dir) || spec_dir.starts_with(&out))
        {
            return refuse(format!("overlaps the input folder {spec}"));
        }
        if let Some(part) = read_back(spec, &out) {
            return refuse(format!(
                "would be read back as input ({spec} matches {part})"
            ));
        }
        return Ok(());
    };
    let out = resolve(dir)?;
    let pattern = if Path::new(spec).is_absolute() {
        spec.to_string()
    } else {
        let cwd = resolve(Path::new("."))?;
        format!("{}/{spec}", glob::Pattern::escape(&cwd.to_string_lossy()))
    };
    if let Some(part) = read_back(&pattern, &format!("{}/", out.display())) {
        return refuse(format!(
            "would be read back as input ({spec} matches {part})"
        ));
    }
    let spec_path = Path::new(spec);
    if spec_path.is_dir() {
        let input_dir = resolve(spec_path)?;
        if out == input_dir {
            return refuse(format!("is the input folder {spec}"));
        }
        if out.starts_with(&input_dir) {
            return refuse(format!("lies inside the input folder {spec}"));
        }
        if input_dir.starts_with(&out) {
            return refuse(format!("contains the input folder {spec}"));
        }
    }
    for f in inputs {
        if mbpipe_store::is_url(&f.path.display().to_string()) {
            continue;
        }
        let file = resolve(&f.path)?;
        if file == out || file.starts_with(&out) {
            return refuse(format!("contains the input file {}", f.path.display()));
        }
        if out.starts_with(&file) {
            return refuse(format!("lies inside the input {}", f.path.display()));
        }
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved, for the part that exists; the rest (a folder to
/// be created) is appended with `.` and `..` applied.
fn resolve(path: &Path) -> Result<PathBuf, PipelineError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| PipelineError::file("read", "the current directory", e))?
            .join(path)
    };
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(r) = base.canonicalize() {
            break r;
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            // `..` at the end, or the root: no further to go.
            _ => break base.to_path_buf(),
        }
    };
    let mut out = resolved;
    for part in rest.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => out.push(part),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(path: &Path) -> InputFile {
        InputFile::new(
            path.to_path_buf(),
            mbpipe_io::InputFormat::JsonLines {
                compression: mbpipe_io::Compression::None,
            },
        )
    }

    #[test]
    fn output_overlapping_an_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("in/sub")).unwrap();
        std::fs::write(d.join("in/a.jsonl"), "{}\n").unwrap();
        let spec = d.join("in").display().to_string();
        let inputs = [jsonl(&d.join("in/a.jsonl"))];
        let check = |out: &Path, spec: &str| {
            check_placement(&OutputDir::Local(out.to_path_buf()), spec, &inputs)
        };
        let err = |out: &Path, spec: &str| check(out, spec).unwrap_err().to_string();
        assert!(err(&d.join("in"), &spec).contains("is the input folder"));
        assert!(err(&d.join("in/sub/../out"), &spec).contains("lies inside the input folder"));
        assert!(err(d, &spec).contains("contains the input folder"));
        let glob = format!("{}/in/*.jsonl", d.display());
        assert!(err(&d.join("in"), &glob).contains("contains the input file"));
        assert!(err(&d.join("in/./"), &glob).contains("contains the input file"));
        // Beside the input is fine, also when the glob's folder holds it.
        check(&d.join("out"), &spec).unwrap();
        check(&d.join("in/sub/new"), &glob).unwrap();
        // A recursive glob would read the part files back as input on the next run; one of
        // another extension leaves them alone.
        let recursive = format!("{}/in/**/*", d.display());
        assert!(err(&d.join("in/sub/new"), &recursive).contains("would be read back as input"));
        check(&d.join("in/sub/new"), &format!("{recursive}.jsonl")).unwrap();
    }

    #[test]
    fn foreign_files_and_other_layouts_are_refused() {
        let dir = &OutputDir::Local(PathBuf::from("out"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_foreign(dir, &names(&["part-00000.parquet", "_SUCCESS", ".nfs0001"])).unwrap();
        let err = check_foreign(dir, &names(&["_SUCCESS", "notes.txt", "data.csv"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(data.csv, notes.txt)") || err.contains("(notes.txt, data.csv)"));
        let plain = OutputNames { shard: None };
        let s0 = OutputNames {
            shard: Some((0, 2)),
        };
        let unsharded = names(&["part-00000.parquet", "_manifest.json"]);
        check_layout(dir, plain, &unsharded).unwrap();
        let err = check_layout(dir, s0, &unsharded).unwrap_err().to_string();
        assert!(
            err.contains("an unsharded run (part-00000.parquet)") && err.contains("shard 0/2"),
            "{err}"
        );
        let three = names(&["_lock.shard-1-of-3"]);
        let err = check_layout(dir, s0, &three).unwrap_err().to_string();
        assert!(err.contains("a run in 3 shards"), "{err}");
        check_layout(
            dir,
            s0,
            &names(&["part-00001-00000.parquet", "_SUCCESS.shard-1-of-2"]),
        )
        .unwrap();
    }
}
