//! Object storage end to end, against a real S3 server on loopback (`moto_server`, started and
//! stopped by each test on a free port of 127.0.0.1; nothing else is contacted). The bucket is
//! read and written by the test through `object_store` directly, independently of mbpipe.
//!
//! Outputs are compared with a local run of the same pipeline on the same input, row by row
//! (`reliability::assert_same_output`: exact for ids and strings, 1e-5 for floats).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use crate::reliability::{assert_same_output, write_corpus, write_pipeline};
use crate::s3_server::{Proxy, S3Server};
use crate::util::{fixture, ok, stderr, stdout};

/// The fixture and a fresh S3 server with a temporary folder, or `None` (with a message) where
/// either is missing.
fn setup() -> Option<(S3Server, tempfile::TempDir)> {
    fixture()?;
    let server = S3Server::start()?;
    Some((server, tempfile::tempdir().unwrap()))
}

/// Starts `c` in the background, stderr captured.
fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mbpipe")
}

fn run_with(server: &S3Server, cwd: &Path, args: &[&str]) -> Output {
    command(server, cwd, args)
        .output()
        .expect("cannot run mbpipe")
}

/// `mbpipe ARGS` in `cwd`, its temporary files (the staging folders of bucket outputs) in
/// `cwd/tmp`.
fn command(server: &S3Server, cwd: &Path, args: &[&str]) -> Command {
    let tmp = cwd.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mbpipe"));
    c.args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .envs(server.env());
    c
}

/// A pipeline reading `input` and writing `output` (the reliability tests' tasks: a classifier
/// and an embedding), saved as `name.toml` in `dir`.
fn pipeline(dir: &Path, name: &str, input: &str, output: &str, part_rows: usize) {
    let fx = fixture().expect("checked by the caller");
    write_pipeline(&fx, dir, name, part_rows);
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("path = \"input/*\"", &format!("path = \"{input}\""))
        .replace(
            &format!("path = \"{name}\""),
            &format!("path = \"{output}\""),
        );
    std::fs::write(path, text).unwrap();
}

/// A local corpus in `dir/input`, the same in `bucket/input/`, and a clean local run of it in
/// `dir/local`.
fn corpus_and_local_run(server: &S3Server, dir: &Path, bucket: &str, rows: usize) {
    server.create_bucket(bucket);
    write_corpus(dir, rows);
    server.upload_dir(bucket, &dir.join("input"), "input");
    pipeline(dir, "local", "input/*", "local", 100);
    ok(run_with(server, dir, &["run", "local.toml"]));
}

#[test]
fn bucket_input_and_output_equal_a_local_run_and_sql_reads_the_bucket() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "corpus", 900);
    pipeline(
        dir,
        "remote",
        "s3://corpus/input/*",
        "s3://corpus/results/run1",
        100,
    );
    let out = run_with(&server, dir, &["run", "remote.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s3://corpus/results/run1"),
        "{}",
        stderr(&out)
    );

    // Only finished objects: parts, the manifest and the marker; no lock, journal or temp file.
    let listed = server.list("corpus", "results/run1");
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"_SUCCESS") && names.contains(&"_manifest.json"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("part-") || *n == "_SUCCESS" || *n == "_manifest.json"),
        "{names:?}"
    );
    let got = server.download("corpus", "results/run1", &dir.join("downloaded"));
    assert_same_output(&got, &dir.join("local"));
    // The manifest records the sizes the objects have.
    let manifest: serde_json::Value =
        serde_json::from_slice(&server.get("corpus", "results/run1/_manifest.json").unwrap())
            .unwrap();
    assert_eq!(manifest["rows"], 900);
    for p in manifest["parts"].as_array().unwrap() {
        let size = listed
            .iter()
            .find(|(n, _)| n == p["file"].as_str().unwrap())
            .map(|(_, s)| *s);
        assert_eq!(size, p["bytes"].as_u64(), "{p}");
    }
    assert_eq!(
        manifest["inputs"][0].as_str(),
        Some("s3://corpus/input/a.jsonl")
    );

    // A second run finds it complete and changes nothing.
    let again = run_with(&server, dir, &["run", "remote.toml"]);
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );

    // mbpipe sql reads the bucket output (the prefix, and a glob) like a local folder.
    let query =
        "SELECT count(*) AS n, sum(CAST(sentiment_label = 'positive' AS INT)) AS pos FROM c";
    let remote_sql = ok(run_with(
        &server,
        dir,
        &["sql", "--table", "c=s3://corpus/results/run1", query],
    ));
    let local_sql = ok(run_with(
        &server,
        dir,
        &["sql", "--table", "c=local", query],
    ));
    assert_eq!(remote_sql, local_sql);
    assert!(remote_sql.contains("900"), "{remote_sql}");
    let glob_sql = ok(run_with(
        &server,
        dir,
        &[
            "sql",
            "--table",
            "c=s3://corpus/results/run1/part-*.parquet",
            query,
        ],
    ));
    assert_eq!(glob_sql, local_sql);
}

#[test]
fn runs_killed_while_writing_to_a_bucket_resume_to_the_clean_output() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "nightly", 1500);
    pipeline(
        dir,
        "remote",
        "s3://nightly/input/",
        "s3://nightly/out",
        100,
    );
    let committed = || {
        server
            .get("nightly", "out/_progress.jsonl")
            .map(|j| {
                String::from_utf8_lossy(&j)
                    .lines()
                    .filter(|l| l.starts_with("{\"part\""))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut resumed = 0;
    for more_parts in [0, 1, 2, 4] {
        let before = committed();
        let mut child = spawn(command(&server, dir, &["run", "remote.toml"]));
        let deadline = Instant::now() + Duration::from_secs(120);
        if more_parts == 0 {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            while committed() < before + more_parts
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        if String::from_utf8_lossy(&out.stderr).contains("resuming:") {
            resumed += 1;
        }
        if out.status.success() {
            break;
        }
        let listed = server.list("nightly", "out");
        assert!(
            !listed.iter().any(|(n, _)| n == "_SUCCESS"),
            "a killed run must not look complete"
        );
        // Every listed part is whole: its Parquet footer reads.
        let local = server.download("nightly", "out", &dir.join(format!("killed-{more_parts}")));
        for (name, _) in listed.iter().filter(|(n, _)| n.starts_with("part-")) {
            let f = std::fs::File::open(local.join(name)).unwrap();
            parquet::file::reader::SerializedFileReader::new(f)
                .unwrap_or_else(|e| panic!("{name} is listed but not a whole Parquet file: {e}"));
        }
    }
    assert!(resumed >= 1, "no kill landed after a committed part");
    let out = run_with(&server, dir, &["run", "remote.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = server.download("nightly", "out", &dir.join("final"));
    assert!(got.join("_SUCCESS").exists());
    assert!(!got.join("_progress.jsonl").exists() && !got.join("_lock").exists());
    assert_same_output(&got, &dir.join("local"));
    // The killed runs' local staging folders (parts encoded, not yet uploaded) are gone too:
    // each later run removed those whose run had died, and the last one its own.
    let left: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the temporary folder: {left:?}");
}

#[test]
fn a_multipart_upload_left_by_a_killed_run_is_aborted_when_the_next_run_starts() {
    use object_store::multipart::MultipartStore;
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "mpart", 300);
    // What a run killed mid-upload leaves: an incomplete upload of a part, and its marker.
    let store = server.store("mpart");
    let key = Key::from("out/part-00000.parquet");
    let id = server.rt.block_on(store.create_multipart(&key)).unwrap();
    let marker = Key::from("out/.part-00000.parquet.tmp");
    server
        .rt
        .block_on(store.put(&marker, format!("multipart upload {id}").into()))
        .unwrap();
    let upload_is_open = || {
        let payload = PutPayload::from(vec![0u8; 16]);
        server
            .rt
            .block_on(store.put_part(&key, &id, 0, payload))
            .is_ok()
    };
    assert!(upload_is_open());

    pipeline(dir, "remote", "s3://mpart/input/*", "s3://mpart/out", 100);
    let out = run_with(&server, dir, &["run", "remote.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!upload_is_open(), "the incomplete upload was not aborted");
    let names: Vec<String> = server
        .list("mpart", "out")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let got = server.download("mpart", "out", &dir.join("got"));
    assert_same_output(&got, &dir.join("local"));
}

#[test]
fn shards_writing_into_one_bucket_prefix_equal_the_unsharded_run() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "shards", 900);
    pipeline(dir, "remote", "s3://shards/input/*", "s3://shards/out", 100);
    let children: Vec<Child> = ["0/2", "1/2"]
        .iter()
        .map(|s| {
            // Every part by multipart upload (one part each), so that path runs too.
            let mut c = command(&server, dir, &["run", "remote.toml", "--shard", s]);
            c.env("MBPIPE_STORE_MULTIPART_BYTES", "1");
            spawn(c)
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = server.download("shards", "out", &dir.join("sharded"));
    assert!(
        got.join("_SUCCESS.shard-0-of-2").exists() && got.join("_SUCCESS.shard-1-of-2").exists()
    );
    assert_same_output(&got, &dir.join("local"));
}

#[test]
fn a_second_run_on_the_same_bucket_output_is_refused_and_the_first_finishes() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "twice", 1500);
    pipeline(dir, "remote", "s3://twice/input/*", "s3://twice/out", 100);
    let first = spawn(command(&server, dir, &["run", "remote.toml"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get("twice", "out/_lock").is_none() {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lease"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = run_with(&server, dir, &["run", "remote.toml"]);
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    if second.status.success() && stderr(&second).contains("already complete") {
        eprintln!("SKIPPED: the first run finished before the second started");
        return;
    }
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("in use by another mbpipe run")
            && stderr(&second).contains("s3://twice/out/_lock"),
        "{}",
        stderr(&second)
    );
    let got = server.download("twice", "out", &dir.join("got"));
    assert_same_output(&got, &dir.join("local"));
}

#[test]
fn rejected_rows_go_to_the_rejects_object_and_the_exit_code_is_3() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    server.create_bucket("rej");
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut body = String::new();
    for i in 0..250 {
        body += &match i % 50 {
            7 => format!("{{\"id\": {i}, \"text\": {{\"nested\": 1}}}}\n"),
            9 => "{not json\n".to_string(),
            _ => format!("{{\"id\": {i}, \"text\": \"row {i} was great\"}}\n"),
        };
    }
    std::fs::write(input.join("mixed.jsonl"), body).unwrap();
    server.upload_dir("rej", &input, "input");
    for (name, input, output) in [
        ("local", "input/mixed.jsonl", "local"),
        ("remote", "s3://rej/input/mixed.jsonl", "s3://rej/out"),
    ] {
        pipeline(dir, name, input, output, 60);
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("text = \"text\"", "text = \"text\"\non_error = \"skip\"");
        std::fs::write(&path, text).unwrap();
        let o = run_with(&server, dir, &["run", &format!("{name}.toml")]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    }
    let got = server.download("rej", "out", &dir.join("got"));
    assert_same_output(&got, &dir.join("local"));
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("_rejects.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (remote, local) = (lines(&got), lines(&dir.join("local")));
    assert_eq!(remote.len(), 10);
    for (r, l) in remote.iter().zip(&local) {
        assert_eq!(r["file"], "s3://rej/input/mixed.jsonl");
        assert_eq!(
            (&r["line"], &r["row"], &r["reason"]),
            (&l["line"], &l["row"], &l["reason"])
        );
    }
}

#[test]
fn a_server_that_goes_away_mid_run_fails_the_run_clearly_and_the_rerun_resumes() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "flaky", 1500);
    pipeline(dir, "remote", "s3://flaky/input/*", "s3://flaky/out", 100);
    let proxy = Proxy::start(&server.endpoint);
    let through_proxy = |c: &mut Command| {
        c.env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("MBPIPE_STORE_RETRY_SECONDS", "2");
    };
    let mut run = command(&server, dir, &["run", "remote.toml"]);
    through_proxy(&mut run);
    let child = spawn(run);
    let committed = || {
        server
            .get("flaky", "out/_progress.jsonl")
            .is_some_and(|j| String::from_utf8_lossy(&j).contains("{\"part\""))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !committed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.set_cut(true);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        eprintln!("SKIPPED: the run finished before the server went away");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s3://flaky/"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(server.get("flaky", "out/_SUCCESS").is_none());

    proxy.set_cut(false);
    let mut rerun = command(&server, dir, &["run", "remote.toml"]);
    through_proxy(&mut rerun);
    let out = rerun.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming:"), "{}", stderr(&out));
    let got = server.download("flaky", "out", &dir.join("got"));
    assert_same_output(&got, &dir.join("local"));
}

#[test]
fn wrong_credentials_are_a_clear_usage_error() {
    if fixture().is_none() {
        return;
    }
    // moto checks credentials after its first request (the bucket's creation): its IAM has no
    // key "test", so every request mbpipe signs with it is refused as S3 refuses a wrong key.
    let Some(server) = S3Server::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    server.create_bucket("locked");
    write_corpus(dir, 30);
    pipeline(dir, "remote", "s3://locked/input/*", "s3://locked/out", 100);
    let o = run_with(&server, dir, &["run", "remote.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("s3://locked/input"), "{err}");
    assert!(
        err.contains("access denied") && err.contains("credentials"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bucket_errors_name_the_url_and_the_cause() {
    let Some((server, tmp)) = setup() else {
        return;
    };
    let dir = tmp.path();
    corpus_and_local_run(&server, dir, "errs", 30);

    // No such bucket (input): a usage error, exit 2, naming the URL.
    pipeline(
        dir,
        "nobucket",
        "s3://no-such-bucket/in/*",
        "s3://errs/out1",
        100,
    );
    let o = run_with(&server, dir, &["run", "nobucket.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("s3://no-such-bucket"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    // No such object: nothing matches, exit 2.
    pipeline(
        dir,
        "nokey",
        "s3://errs/input/missing.jsonl",
        "s3://errs/out2",
        100,
    );
    let o = run_with(&server, dir, &["run", "nokey.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("s3://errs/input/missing.jsonl"),
        "{}",
        stderr(&o)
    );

    // Output into a missing bucket: exit 2 naming it, and nothing written.
    pipeline(dir, "noout", "s3://errs/input/*", "s3://no-such-out/x", 100);
    let o = run_with(&server, dir, &["run", "noout.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("s3://no-such-out"), "{}", stderr(&o));

    // A server that is not there: fails after the retries, naming the URL, not a backtrace.
    let o = command(&server, dir, &["run", "nokey.toml"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("MBPIPE_STORE_RETRY_SECONDS", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("s3://errs/input/missing.jsonl"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}
