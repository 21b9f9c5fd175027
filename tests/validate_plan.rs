//! `mbpipe validate` builds the same plan as `mbpipe run` with the same flags: every check a run
//! makes before its first row fails `validate` the same way (same exit code, same message), and
//! `validate` changes nothing on disk.

use std::path::Path;

use crate::util::{fixture, mbpipe, ok, stderr};

/// A pipeline over `in/a.jsonl` (3 rows) into `out`, one classify task `c`; `extra_input` goes
/// into `[input]`, `extra_output` into `[output]`.
fn setup(dir: &Path, model: &str, extra_input: &str, extra_output: &str) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let rows: String = (0..3)
        .map(|i| format!("{{\"id\":{i},\"text\":\"row {i}\"}}\n"))
        .collect();
    std::fs::write(dir.join("in/a.jsonl"), rows).unwrap();
    let toml = format!(
        "[input]\npath = \"in/a.jsonl\"\n{extra_input}\n[output]\npath = \"out\"\n{extra_output}\n\
         [[tasks]]\nname = \"c\"\nkind = \"classify\"\nmodel = \"{model}\"\n"
    );
    std::fs::write(dir.join("p.toml"), toml).unwrap();
}

/// Every file under `dir`, for "changed nothing" checks.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// `validate` then `run`, each with `flags`: both must fail with exit code 2 and a message
/// containing `needle`, and `validate` must leave every file as it was.
fn both_refuse(dir: &Path, flags: &[&str], needle: &str) {
    let before = listing(dir);
    for cmd in ["validate", "run"] {
        let args: Vec<&str> = [cmd, "p.toml"]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        let o = mbpipe(dir, &args);
        assert_eq!(o.status.code(), Some(2), "{cmd} {flags:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{cmd} {flags:?}: expected {needle:?} in: {}",
            stderr(&o)
        );
        if cmd == "validate" {
            assert_eq!(listing(dir), before, "validate changed files");
        }
    }
}

#[test]
fn validate_refuses_whatever_run_refuses_before_its_first_row() {
    let Some(fx) = fixture() else { return };
    let model = fx.model("classifier");
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], &'a str, fn(&Path));
    let cases: &[Case] = &[
        // (what, [input] extra, flags, needle, folder set-up)
        (
            "a bad --shard",
            "",
            &["--shard", "2/2"],
            "shard index 2 must be below 2",
            |_| {},
        ),
        (
            "an output path that is a file",
            "",
            &[],
            "is not a directory",
            |d| std::fs::write(d.join("out"), "x").unwrap(),
        ),
        (
            "an output folder with foreign files",
            "",
            &[],
            "did not write",
            |d| {
                std::fs::create_dir_all(d.join("out")).unwrap();
                std::fs::write(d.join("out/notes.txt"), "mine").unwrap();
            },
        ),
        ("another shard layout", "", &[], "one layout", |d| {
            std::fs::create_dir_all(d.join("out")).unwrap();
            std::fs::write(d.join("out/_SUCCESS.shard-0-of-2"), "").unwrap();
        }),
        ("parts without their journal", "", &[], "--overwrite", |d| {
            std::fs::create_dir_all(d.join("out")).unwrap();
            std::fs::write(d.join("out/part-00000.parquet"), "x").unwrap();
        }),
        (
            "a keep naming a missing column",
            "keep = [\"nope\"]",
            &[],
            "keep names column `nope`",
            |_| {},
        ),
        (
            "a task column clashing with an input column",
            "query = \"SELECT id, text, 1 AS c_label FROM input\"",
            &[],
            "would clash",
            |_| {},
        ),
    ];
    for (what, extra_input, flags, needle, prepare) in cases {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path(), &model, extra_input, "");
        prepare(tmp.path());
        eprintln!("case: {what}");
        both_refuse(tmp.path(), flags, needle);
    }
}

#[test]
fn an_output_folder_an_input_glob_would_read_back_is_refused() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), &fx.model("classifier"), "", "");
    let toml = std::fs::read_to_string(tmp.path().join("p.toml"))
        .unwrap()
        .replace("path = \"in/a.jsonl\"", "path = \"in/**/*\"")
        .replace("path = \"out\"", "path = \"in/out\"");
    std::fs::write(tmp.path().join("p.toml"), toml).unwrap();
    both_refuse(
        tmp.path(),
        &[],
        "would be read back as input (in/**/* matches",
    );
    assert!(!tmp.path().join("in/out").exists());
}

#[test]
fn validate_refuses_a_device_the_build_cannot_run() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), &fx.model("classifier"), "", "");
    let o = mbpipe(tmp.path(), &["validate", "p.toml", "--device", "cuda:0"]);
    if o.status.success() {
        eprintln!("SKIPPED: this build runs on a GPU, so --device cuda:0 is not refused");
        return;
    }
    both_refuse(tmp.path(), &["--device", "cuda:0"], "device cuda:0");
}

#[test]
fn validate_reports_the_plan_and_run_follows_it() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d, &fx.model("classifier"), "", "");
    let report = ok(mbpipe(d, &["validate", "p.toml", "--shard", "1/2"]));
    for line in [
        "ok: input `in/a.jsonl`: 1 file(s) (1 in shard 1/2)",
        "ok: input columns: id Int64, text Utf8",
        "a new output",
        "ok: task `c` on",
        "ok: output columns: id, text, c_label, c_score",
    ] {
        assert!(report.contains(line), "expected {line:?} in:\n{report}");
    }
    assert!(
        !d.join("out").exists(),
        "validate created the output folder"
    );
    ok(mbpipe(d, &["run", "p.toml", "--shard", "1/2"]));
    let report = ok(mbpipe(d, &["validate", "p.toml", "--shard", "1/2"]));
    assert!(report.contains("complete ("), "{report}");
    // Empty input: a run of zero rows succeeds, and so does validate (it used to refuse it).
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d, &fx.model("classifier"), "", "");
    std::fs::write(d.join("in/a.jsonl"), "").unwrap();
    let report = ok(mbpipe(d, &["validate", "p.toml"]));
    assert!(report.contains("ok: input columns: text Utf8"), "{report}");
    ok(mbpipe(d, &["run", "p.toml"]));
    assert!(d.join("out/_SUCCESS").exists());
}

/// `validate` names each task's precision: the run's `--dtype`, or the task's `quantize`.
#[test]
fn validate_reports_each_tasks_precision() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d, &fx.model("classifier"), "", "");
    let toml = std::fs::read_to_string(d.join("p.toml")).unwrap();
    let quantized = format!(
        "\n[[tasks]]\nname = \"q\"\nkind = \"classify\"\nmodel = \"{}\"\nquantize = \"int8\"\n",
        fx.model("classifier")
    );
    std::fs::write(d.join("p.toml"), toml + &quantized).unwrap();
    let report = ok(mbpipe(d, &["validate", "p.toml", "--dtype", "f32"]));
    let task_line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("ok: task `{name}` on")))
            .unwrap_or_else(|| panic!("no line for task {name} in:\n{report}"))
            .to_string()
    };
    assert!(task_line("c").contains("(cpu, f32;"), "{report}");
    assert!(task_line("q").contains("(cpu, int8;"), "{report}");
}

/// A folder held by a running mbpipe (another host's fresh lock here) refuses `validate` as it
/// refuses `run`, with the same message and exit code, touching nothing; a stale lock is
/// reported as one the run would take over.
#[test]
fn validate_refuses_a_folder_another_run_holds_and_reports_a_stale_lock() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d, &fx.model("classifier"), "", "");
    std::fs::create_dir_all(d.join("out")).unwrap();
    let lock = d.join("out/_lock");
    std::fs::write(
        &lock,
        r#"{"pid":4242,"host":"another-host","started":1700000000,"process_start":null}"#,
    )
    .unwrap();
    let before = listing(d);
    for cmd in ["validate", "run"] {
        let o = mbpipe(d, &[cmd, "p.toml"]);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is in use by another mbpipe run (pid 4242 on host another-host"),
            "{cmd}: {}",
            stderr(&o)
        );
        assert_eq!(listing(d), before, "{cmd} changed files");
    }
    // Not refreshed for 20 minutes: stale; validate says the run would take it over.
    let touched = std::process::Command::new("touch")
        .args(["-d", "20 minutes ago"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(touched.success());
    let report = ok(mbpipe(d, &["validate", "p.toml"]));
    assert!(
        report.contains(
            "note: the stale lock out/_lock would be taken over: not refreshed for 20 minutes"
        ),
        "{report}"
    );
    assert!(lock.exists(), "validate removed the lock");
}
