//! Nightly-job reliability end to end: kills at any moment, interrupts, changed inputs, shards.
//!
//! Outputs are compared row by row in part-name order: ids, labels and strings exactly, floats
//! within 1e-5 (a resumed run packs different rows together, which may change the last bits of a
//! float; the model's own tolerance against the reference is 1e-4).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use crate::util::{fixture, mbpipe, ok, stderr, Fixture};

const FLOAT_TOL: f64 = 1e-5;

/// A few thousand rows of varied length over two JSONL files and a Parquet file with several
/// row groups.
pub(crate) fn write_corpus(dir: &Path, rows: usize) {
    let words = [
        "the", "night", "job", "reads", "every", "row", "once", "and", "writes", "it", "back",
        "with", "scores", "models", "tokens", "river", "quiet", "loud", "great", "awful",
    ];
    let text = |i: usize| -> String {
        let n = 3 + (i * 7919) % 37;
        (0..n)
            .map(|k| words[(i * 31 + k * 17 + k * k) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let third = rows / 3;
    for (name, range) in [("a.jsonl", 0..third), ("b.jsonl", third..2 * third)] {
        let body: String = range
            .map(|i| serde_json::json!({"id": i, "text": text(i)}).to_string() + "\n")
            .collect();
        std::fs::write(input.join(name), body).unwrap();
    }
    let ids: Vec<i64> = (2 * third..rows).map(|i| i as i64).collect();
    let texts: Vec<String> = (2 * third..rows).map(text).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(97))
        .build();
    let f = std::fs::File::create(input.join("c.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

pub(crate) fn write_pipeline(fx: &Fixture, dir: &Path, out: &str, part_rows: usize) {
    let toml = format!(
        r#"[input]
path = "input/*"
text = "text"

[output]
path = "{out}"
part_rows = {part_rows}

[[tasks]]
name = "sentiment"
kind = "classify"
model = "{cls}"

[[tasks]]
name = "emb"
kind = "embed"
model = "{mlm}"
"#,
        cls = fx.model("classifier"),
        mlm = fx.model("mlm"),
    );
    std::fs::write(dir.join(format!("{out}.toml")), toml).unwrap();
}

pub(crate) fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mbpipe"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mbpipe")
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The visible part files of an output folder, in name order.
pub(crate) fn part_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    names
}

/// Every row of an output folder as JSON, reading parts in name order as any reader would.
pub(crate) fn rows_of(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    for name in part_names(dir) {
        let f = std::fs::File::open(dir.join(name)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write(&batch.unwrap()).unwrap();
            w.finish().unwrap();
            let v: Value = serde_json::from_slice(&w.into_inner()).unwrap();
            rows.extend(v.as_array().unwrap().iter().cloned());
        }
    }
    rows
}

fn assert_same_value(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= FLOAT_TOL, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: length");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_same_value(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: fields"
            );
            for (k, v) in x {
                assert_same_value(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Same rows in the same order with the same values.
pub(crate) fn assert_same_output(got: &Path, want: &Path) {
    let (g, w) = (rows_of(got), rows_of(want));
    assert_eq!(g.len(), w.len(), "row count of {}", got.display());
    for (i, (g, w)) in g.iter().zip(&w).enumerate() {
        assert_same_value(g, w, &format!("row {i}"));
    }
}

pub(crate) fn manifest(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn killed_at_any_moment_then_resumed_equals_an_uninterrupted_run() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(dir, 3000);
    write_pipeline(&fx, dir, "clean", 200);
    write_pipeline(&fx, dir, "crashy", 200);

    ok(mbpipe(dir, &["run", "clean.toml"]));

    // SIGKILL at several moments: during model load, then once the journal holds 1, 3 and 6
    // more committed parts than before the run (so a kill always lands after a commit, however
    // fast the machine or the build is). Each rerun continues from what the killed one committed.
    let journal = dir.join("crashy/_progress.jsonl");
    let committed = || {
        std::fs::read_to_string(&journal)
            .map(|j| j.lines().filter(|l| l.starts_with("{\"part\"")).count())
            .unwrap_or(0)
    };
    let mut resumed = 0;
    for more_parts in [0, 1, 3, 6] {
        let before = committed();
        let mut child = spawn(dir, &["run", "crashy.toml"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        if more_parts == 0 {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            while committed() < before + more_parts
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // A run that ended while the loop waited was reaped by `try_wait`: its pid may be gone
        // (or another process's), so it gets no signal.
        if child.try_wait().unwrap().is_none() {
            signal(&child, "-KILL");
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("resuming:") {
            resumed += 1;
        }
        if out.status.success() {
            break; // finished before the kill
        }
        assert!(
            !dir.join("crashy/_SUCCESS").exists(),
            "a killed run must not look complete"
        );
    }
    assert!(resumed >= 1, "no kill landed after a committed part");
    let o = mbpipe(dir, &["run", "crashy.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("crashy/_SUCCESS").exists());
    assert!(!dir.join("crashy/_progress.jsonl").exists());
    assert_same_output(&dir.join("crashy"), &dir.join("clean"));

    // The manifest accounts for every input row exactly once, in contiguous ranges per file.
    let m = manifest(&dir.join("crashy"), "_manifest.json");
    assert_eq!(m["rows"], 3000);
    assert_eq!(m["rejected"], 0);
    assert_eq!(
        m["pipeline"].as_str().unwrap(),
        std::fs::read_to_string(dir.join("crashy.toml")).unwrap()
    );
    assert_eq!(m["models"][0]["task"], "sentiment");
    assert_eq!(m["models"][1]["model"], fx.model("mlm"));
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(
        parts
            .iter()
            .map(|p| p["file"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        part_names(&dir.join("crashy"))
    );
    let mut next_row = std::collections::BTreeMap::<String, u64>::new();
    for p in parts {
        let at = next_row
            .entry(p["input"].as_str().unwrap().into())
            .or_default();
        assert_eq!(
            p["first_row"].as_u64().unwrap(),
            *at,
            "gap or overlap at {p}"
        );
        *at += p["input_rows"].as_u64().unwrap();
    }
    assert_eq!(next_row.values().sum::<u64>(), 3000);
    let clean = manifest(&dir.join("clean"), "_manifest.json");
    assert_eq!(m["tokens"], clean["tokens"]);
    assert!(clean["tokens"].as_u64().unwrap() > 3000);
    assert_eq!(
        m["inputs"],
        serde_json::json!(["input/a.jsonl", "input/b.jsonl", "input/c.parquet"])
    );
}

#[test]
fn sigint_commits_finished_parts_and_the_rerun_resumes() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(dir, 2400);
    write_pipeline(&fx, dir, "clean", 150);
    write_pipeline(&fx, dir, "out", 150);
    ok(mbpipe(dir, &["run", "clean.toml"]));

    let child = spawn(dir, &["run", "out.toml"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("out/part-00000.parquet").exists() {
        assert!(Instant::now() < deadline, "no part was committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "-INT");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    if o.status.success() {
        eprintln!("SKIPPED the interrupt checks: the run finished before SIGINT arrived");
    } else {
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("interrupted:") && err.contains("run the same command again to resume"),
            "{err}"
        );
        assert!(!dir.join("out/_SUCCESS").exists());
        assert!(!part_names(&dir.join("out")).is_empty());
        // No hidden temp files stay behind after a clean stop.
        let hidden: Vec<_> = std::fs::read_dir(dir.join("out"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        // The stop is announced at once with the rows it commits, and those are what is on disk.
        let committed: u64 = err
            .split("stopping: finishing the current batch, committing ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no stopping line in:\n{err}"));
        assert!(
            err.contains(&format!("interrupted: {committed} rows are committed")),
            "{err}"
        );
        assert_eq!(rows_of(&dir.join("out")).len() as u64, committed);

        // A committed part damaged on disk is refused, never resumed over.
        let first = dir.join("out/part-00000.parquet");
        let bytes = std::fs::read(&first).unwrap();
        std::fs::write(&first, &bytes[..bytes.len() / 2]).unwrap();
        let o = mbpipe(dir, &["run", "out.toml"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("part-00000.parquet is")
                && stderr(&o).contains("use --overwrite to start over"),
            "{}",
            stderr(&o)
        );
        assert!(!dir.join("out/_SUCCESS").exists());
        std::fs::write(&first, &bytes).unwrap();

        // A different dtype would compute different values: refused, saying what changed.
        let o = mbpipe(dir, &["run", "out.toml", "--dtype", "bf16"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("--dtype (was f32, now bf16)"),
            "{}",
            stderr(&o)
        );
    }
    let o = mbpipe(dir, &["run", "out.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_output(&dir.join("out"), &dir.join("clean"));
    // Running a finished output again does nothing and says so.
    let again = mbpipe(dir, &["run", "out.toml"]);
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_changed_input_is_refused_on_resume_and_overwrite_starts_over() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(dir, 600);
    write_pipeline(&fx, dir, "out", 50);
    let child = spawn(dir, &["run", "out.toml"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    // Committed means journaled: wait for the journal's first part line.
    let journal = dir.join("out/_progress.jsonl");
    while !std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"part\":")) {
        assert!(Instant::now() < deadline, "no part was committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child, "-KILL");
    let _ = child.wait_with_output();
    if dir.join("out/_SUCCESS").exists() {
        eprintln!("SKIPPED: the run finished before the kill");
        return;
    }
    let mut a = std::fs::read_to_string(dir.join("input/a.jsonl")).unwrap();
    a.push_str("{\"id\":-1,\"text\":\"one more\"}\n");
    std::fs::write(dir.join("input/a.jsonl"), a).unwrap();
    let o = mbpipe(dir, &["run", "out.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("input input/a.jsonl was modified")
            && stderr(&o).contains("--overwrite"),
        "{}",
        stderr(&o)
    );
    let o = mbpipe(dir, &["run", "out.toml", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows_of(&dir.join("out")).len(), 601);
}

#[test]
fn shards_run_concurrently_into_one_folder_equal_the_single_run() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(dir, 900);
    write_pipeline(&fx, dir, "single", 100);
    write_pipeline(&fx, dir, "sharded", 100);
    ok(mbpipe(dir, &["run", "single.toml"]));

    // Three shards at once, as an Indexed Job would start them; one finds its index itself.
    let mut children: Vec<Child> = ["0/3", "1/3"]
        .iter()
        .map(|s| spawn(dir, &["run", "sharded.toml", "--shard", s]))
        .collect();
    children.push(
        Command::new(env!("CARGO_BIN_EXE_mbpipe"))
            .args(["run", "sharded.toml", "--shard", "auto/3"])
            .current_dir(dir)
            .env("JOB_COMPLETION_INDEX", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = dir.join("sharded");
    let mut shard_rows = 0;
    for i in 0..3 {
        assert!(out.join(format!("_SUCCESS.shard-{i}-of-3")).exists());
        let m = manifest(&out, &format!("_manifest.shard-{i}-of-3.json"));
        assert_eq!(m["shard"], format!("{i}/3"));
        let rows = m["rows"].as_u64().unwrap();
        assert!(rows > 0, "shard {i} is empty");
        shard_rows += rows;
    }
    assert_eq!(shard_rows, 900);
    assert_same_output(&out, &dir.join("single"));
    let o = mbpipe(
        dir,
        &[
            "sql",
            "--table",
            "s=sharded",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM s",
        ],
    );
    assert!(ok(o).contains("900"));
}

/// A tmpfs of a given size, unmounted on drop; `None` where mounting is not permitted.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_clearly_without_a_complete_looking_output_and_resumes() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(dir, 1500);
    write_pipeline(&fx, dir, "clean", 100);
    ok(mbpipe(dir, &["run", "clean.toml"]));
    let Some(disk) = SmallDisk::mount(&dir.join("disk"), "120k") else {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    };
    let toml = std::fs::read_to_string(dir.join("clean.toml"))
        .unwrap()
        .replace("path = \"clean\"", "path = \"disk/out\"");
    std::fs::write(dir.join("full.toml"), toml).unwrap();
    let o = mbpipe(dir, &["run", "full.toml"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let out = dir.join("disk/out");
    assert!(!out.join("_SUCCESS").exists());
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    // Space freed: the same command resumes and completes the same output.
    disk.grow("64m");
    let o = mbpipe(dir, &["run", "full.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_output(&out, &dir.join("clean"));
}
