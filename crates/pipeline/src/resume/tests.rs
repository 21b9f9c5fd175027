//! Unit tests of the journal: resume, damage, overwrite.

use std::path::{Path, PathBuf};

use mbpipe_io::OutputFormat;

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

/// The folder's names, as the output folder check lists them.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn local(dir: &Path) -> OutputDir {
    OutputDir::Local(dir.to_path_buf())
}

fn open(
    dir: &Path,
    names: OutputNames,
    fp: &Fingerprint,
    overwrite: bool,
) -> Result<(Journal, Resumed), PipelineError> {
    start(plan(&local(dir), names, &entries(dir), fp, overwrite)?)
}

/// Part `seq` (an Arrow name, so its content need not be Parquet) covering rows
/// `seq * 10 .. seq * 10 + 10` of a.jsonl, written to `dir` and journaled.
fn commit(dir: &Path, j: &mut Journal, names: OutputNames, seq: u64) -> PartRecord {
    let file = names.part(seq, OutputFormat::ArrowIpc);
    std::fs::write(dir.join(&file), b"0123456789").unwrap();
    let part = PartRecord {
        file,
        input: "a.jsonl".into(),
        first_row: seq * 10,
        input_rows: 10,
        rows: 10,
        tokens: 40,
        bytes: Some(10),
    };
    j.append(seq, &part).unwrap();
    part
}

#[test]
fn journal_round_trip_drops_uncommitted_parts_and_late_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = OutputNames { shard: None };
    let fp = fingerprint();
    let (mut j, r) = open(d, names, &fp, false).unwrap();
    assert!(r.parts.is_empty());
    let parts: Vec<PartRecord> = (0..2).map(|seq| commit(d, &mut j, names, seq)).collect();
    drop(j);
    // Killed after renaming part 2 but before journaling it; a temp file of part 3; and a
    // half-written journal line.
    std::fs::write(d.join("part-00002.arrow"), b"x").unwrap();
    std::fs::write(d.join(".part-00003.arrow.tmp"), b"x").unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(d.join(names.journal()))
        .unwrap();
    f.write_all(b"{\"part\":{\"seq\":2,").unwrap();
    std::fs::write(
        d.join(names.rejects()),
        "{\"file\":\"a.jsonl\",\"row\":5,\"reason\":\"x\"}\n{\"file\":\"a.jsonl\",\"row\":25,\"reason\":\"y\"}\n",
    )
    .unwrap();

    let mut changed = fp.clone();
    changed.inputs[0].bytes = 99;
    let err = plan(&local(d), names, &entries(d), &changed, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input a.jsonl was modified"), "{err}");

    // Planning changes nothing; starting removes the leftovers.
    let p = plan(&local(d), names, &entries(d), &fp, false).unwrap();
    assert!(d.join("part-00002.arrow").exists());
    let (_, r) = start(p).unwrap();
    assert_eq!(r.parts, parts);
    assert_eq!(r.next_seq, 2);
    assert_eq!(r.position(), Some(("a.jsonl", 20)));
    assert_eq!(r.rejected, 1);
    assert!(!d.join("part-00002.arrow").exists());
    assert!(!d.join(".part-00003.arrow.tmp").exists());
    let rejects = std::fs::read_to_string(d.join(names.rejects())).unwrap();
    assert!(rejects.contains("\"row\":5") && !rejects.contains("\"row\":25"));
}

/// A journal of three committed parts, then `damage` applied; the resume error.
fn resume_after(damage: impl Fn(&Path, OutputNames)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = OutputNames { shard: None };
    let fp = fingerprint();
    let (mut j, _) = open(d, names, &fp, false).unwrap();
    for seq in 0..3 {
        commit(d, &mut j, names, seq);
    }
    drop(j);
    damage(d, names);
    let err = plan(&local(d), names, &entries(d), &fp, false)
        .unwrap_err()
        .to_string();
    // Nothing was deleted by the refused resume.
    for seq in [0, 2] {
        assert!(d.join(names.part(seq, OutputFormat::ArrowIpc)).exists());
    }
    err
}

#[test]
fn a_deleted_middle_journal_line_is_refused_not_resumed() {
    let err = resume_after(|d, names| {
        let path = d.join(names.journal());
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":1")).collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    });
    assert!(
        err.contains("is not contiguous")
            && err.contains("records part 2")
            && err.contains("--overwrite"),
        "{err}"
    );
}

#[test]
fn a_truncated_or_missing_committed_part_is_refused() {
    let err = resume_after(|d, names| {
        let f = File::options()
            .write(true)
            .open(d.join(names.part(1, OutputFormat::ArrowIpc)))
            .unwrap();
        f.set_len(4).unwrap();
    });
    assert!(
        err.contains("part-00001.arrow is 4 bytes but was 10 when committed")
            && err.contains("--overwrite"),
        "{err}"
    );
    let err = resume_after(|d, names| {
        std::fs::remove_file(d.join(names.part(1, OutputFormat::ArrowIpc))).unwrap();
    });
    assert!(err.contains("part-00001.arrow is missing"), "{err}");
}

#[test]
fn overwrite_deletes_only_this_shards_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s0 = OutputNames {
        shard: Some((0, 2)),
    };
    let s1 = OutputNames {
        shard: Some((1, 2)),
    };
    let fp = fingerprint();
    for names in [s0, s1] {
        let (mut j, _) = open(d, names, &fp, false).unwrap();
        commit(d, &mut j, names, 0);
        std::fs::write(d.join(names.success()), b"").unwrap();
    }
    let (_, r) = open(d, s1, &fp, true).unwrap();
    assert!(r.parts.is_empty());
    assert_eq!(
        entries(d),
        [
            "_SUCCESS.shard-0-of-2",
            "_progress.shard-0-of-2.jsonl",
            "_progress.shard-1-of-2.jsonl",
            "part-00000-00000.arrow",
        ]
    );

    // A part no journal or manifest lists is not known to be mbpipe's: not deleted.
    std::fs::remove_file(d.join(s1.journal())).unwrap();
    std::fs::write(d.join("part-00001-00004.arrow"), b"x").unwrap();
    let err = plan(&local(d), s1, &entries(d), &fp, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("part-00001-00004.arrow, which neither"),
        "{err}"
    );
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
            bytes: None,
        }],
        next_seq: 1,
        rejected: 0,
    };
    let rest = remaining_inputs(vec![f("a.jsonl"), f("b.jsonl"), f("c.jsonl")], &resumed).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].rows, Some(7..u64::MAX));
    assert_eq!(rest[1].rows, None);
}
