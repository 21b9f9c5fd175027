//! The output folder's rules end to end: `--overwrite` deletes only what mbpipe wrote, after
//! every check; a folder is never an input; one run (per shard) at a time; one layout per folder;
//! `mbpipe sql` says when a folder is unfinished.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::reliability::{signal, spawn, write_corpus, write_pipeline};
use crate::util::{fixture, mbpipe, ok, stderr};

/// Every file under `dir` (recursively) with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let name = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

/// Runs mbpipe and asserts the exit code and that stderr holds every fragment.
fn refused(dir: &Path, args: &[&str], code: i32, fragments: &[&str]) {
    let o = mbpipe(dir, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    for f in fragments {
        assert!(err.contains(f), "{args:?}: `{f}` missing from:\n{err}");
    }
}

/// `FROM.toml` with its output path set to `out` (and `extra` added to `[input]`), as `TO.toml`.
fn variant(dir: &Path, from: &str, to: &str, out: &str, extra: &str) {
    let toml = std::fs::read_to_string(dir.join(format!("{from}.toml")))
        .unwrap()
        .replace(&format!("path = \"{from}\""), &format!("path = \"{out}\""))
        .replace("text = \"text\"", &format!("text = \"text\"\n{extra}"));
    std::fs::write(dir.join(format!("{to}.toml")), toml).unwrap();
}

#[test]
fn overwrite_never_deletes_files_mbpipe_did_not_write() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 30);
    write_pipeline(&fx, d, "out", 50);
    std::fs::write(d.join("notes.txt"), "mine").unwrap();

    // `path = "."`: the folder holding the inputs, the pipeline and the user's files.
    variant(d, "out", "dot", ".", "");
    let before = snapshot(d);
    refused(
        d,
        &["run", "dot.toml", "--overwrite"],
        2,
        &["contains the input file input/a.jsonl"],
    );
    assert_eq!(snapshot(d), before);

    // Inputs elsewhere, but the folder holds a file of the user's.
    std::fs::create_dir(d.join("out")).unwrap();
    std::fs::write(d.join("out/keep.csv"), "a,b\n").unwrap();
    refused(
        d,
        &["run", "out.toml", "--overwrite"],
        2,
        &["out holds files mbpipe did not write (keep.csv)"],
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out/keep.csv")).unwrap(),
        "a,b\n"
    );
    assert_eq!(snapshot(d).len(), before.len() + 1);
}

#[test]
fn an_output_folder_that_is_or_lies_inside_the_input_is_refused() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 30);
    write_pipeline(&fx, d, "out", 50);
    let toml = std::fs::read_to_string(d.join("out.toml"))
        .unwrap()
        .replace("path = \"input/*\"", "path = \"input\"");
    std::fs::write(d.join("out.toml"), toml).unwrap();
    variant(d, "out", "same", "input", "");
    variant(d, "out", "inside", "input/scored", "");
    let before = snapshot(d);
    refused(
        d,
        &["run", "same.toml", "--overwrite"],
        2,
        &["input is the input folder input"],
    );
    refused(
        d,
        &["run", "inside.toml"],
        2,
        &["lies inside the input folder input"],
    );
    assert_eq!(snapshot(d), before);
}

#[test]
fn overwrite_with_a_failing_check_keeps_the_finished_output() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 60);
    write_pipeline(&fx, d, "out", 50);
    ok(mbpipe(d, &["run", "out.toml"]));
    let finished = snapshot(&d.join("out"));
    assert!(finished.contains_key("_SUCCESS"));

    let o = mbpipe(d, &["run", "out.toml", "--overwrite", "--device", "cuda:0"]);
    if o.status.success() {
        eprintln!("SKIPPED the --device check: this build runs on a GPU");
    } else {
        assert!(stderr(&o).contains("cuda:0"), "{}", stderr(&o));
        assert_eq!(snapshot(&d.join("out")), finished);
    }
    variant(d, "out", "keep", "out", "keep = [\"nope\"]");
    refused(
        d,
        &["run", "keep.toml", "--overwrite"],
        2,
        &["keep names column `nope`"],
    );
    assert_eq!(snapshot(&d.join("out")), finished);
}

#[test]
fn overwriting_one_shard_keeps_the_other_shards_parts() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 120);
    write_pipeline(&fx, d, "sh", 40);
    let count = [
        "sql",
        "--table",
        "s=sh",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM s",
    ];

    ok(mbpipe(d, &["run", "sh.toml", "--shard", "0/2"]));
    // Half the shards done: the query runs, and says the output is incomplete.
    let o = mbpipe(d, &count);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("no _SUCCESS.shard-I-of-2 for shard 1 of 2"),
        "{}",
        stderr(&o)
    );

    ok(mbpipe(d, &["run", "sh.toml", "--shard", "1/2"]));
    let shard0 = |s: BTreeMap<String, (u64, SystemTime)>| {
        s.into_iter()
            .filter(|(n, _)| n.starts_with("part-00000-") || n.contains("shard-0-of-2"))
            .collect::<BTreeMap<_, _>>()
    };
    let before = shard0(snapshot(&d.join("sh")));
    assert!(before.len() >= 3, "{before:?}");
    ok(mbpipe(
        d,
        &["run", "sh.toml", "--shard", "1/2", "--overwrite"],
    ));
    assert_eq!(shard0(snapshot(&d.join("sh"))), before);
    let o = mbpipe(d, &count);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert!(ok(o).contains("120"));
}

#[test]
fn a_folder_holds_one_layout() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 30);
    write_pipeline(&fx, d, "out", 50);
    write_pipeline(&fx, d, "sh", 50);
    ok(mbpipe(d, &["run", "out.toml"]));
    refused(
        d,
        &["run", "out.toml", "--shard", "0/2", "--overwrite"],
        2,
        &[
            "holds the output of an unsharded run",
            "this run is shard 0/2",
        ],
    );
    ok(mbpipe(d, &["run", "sh.toml", "--shard", "0/2"]));
    refused(
        d,
        &["run", "sh.toml"],
        2,
        &["holds the output of a run in 2 shards"],
    );
    refused(
        d,
        &["run", "sh.toml", "--shard", "1/3"],
        2,
        &["holds the output of a run in 2 shards", "shard 1/3"],
    );

    // A folder whose run did not finish: `mbpipe sql` still reads it, with a warning.
    std::fs::remove_file(d.join("out/_SUCCESS")).unwrap();
    let o = mbpipe(d, &["sql", "--table", "o=out", "SELECT count(*) FROM o"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: table `o`: out is incomplete (no _SUCCESS)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_second_run_is_refused_while_the_first_holds_the_folder_and_a_stale_lock_is_taken_over() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d, 300);
    write_pipeline(&fx, d, "out", 50);
    let lock = d.join("out/_lock");

    // Catch the first run holding its lock and freeze it there, so it is alive but idle.
    let mut first = spawn(d, &["run", "out.toml"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lock.exists() {
        if first.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = first.kill();
            let _ = first.wait();
            eprintln!("SKIPPED: the first run finished before its lock was seen");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(&first, "-STOP");
    if !lock.exists() {
        signal(&first, "-KILL");
        let _ = first.wait();
        eprintln!("SKIPPED: the first run finished before it was stopped");
        return;
    }
    let pid = first.id().to_string();
    refused(
        d,
        &["run", "out.toml"],
        1,
        &[
            "output folder out is in use by another mbpipe run",
            &format!("pid {pid} on host "),
        ],
    );

    // Killed: its lock stays behind, and the next run on this host takes it over.
    signal(&first, "-KILL");
    let _ = first.wait();
    assert!(lock.exists());
    let held: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    let o = mbpipe(d, &["run", "out.toml"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("taking over the stale lock")
            && err.contains(&format!("process {pid} is gone")),
        "{err}"
    );
    assert!(!lock.exists(), "a finished run releases its lock");

    // A lock from another host cannot be checked: refused while fresh, taken over when old.
    let mut remote = held;
    remote["host"] = "elsewhere.example".into();
    std::fs::write(&lock, remote.to_string()).unwrap();
    refused(d, &["run", "out.toml"], 1, &["on host elsewhere.example"]);
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let o = mbpipe(d, &["run", "out.toml"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("not refreshed for 60 minutes"), "{err}");
}
