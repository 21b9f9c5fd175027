//! Bad input, end to end: each case's exit code and the exact message that names its cause, and
//! the inputs that look odd but are not errors.

use std::path::Path;

use crate::util::{fixture, mbpipe, ok, stderr, Fixture};

/// Writes `NAME.toml` reading `input` with one classify task; `extra` goes into `[input]`.
fn pipeline(fx: &Fixture, dir: &Path, name: &str, input: &str, extra: &str, model: Option<&str>) {
    let model = model.map_or_else(|| fx.model("classifier"), str::to_string);
    let toml = format!(
        "[input]\npath = \"{input}\"\ntext = \"text\"\n{extra}\n\n[output]\npath = \"out-{name}\"\n\n[[tasks]]\nname = \"t\"\nkind = \"classify\"\nmodel = \"{model}\"\n"
    );
    std::fs::write(dir.join(format!("{name}.toml")), toml).unwrap();
}

/// Runs `NAME.toml`; asserts the exit code and that stderr holds every expected fragment.
fn expect(dir: &Path, name: &str, code: i32, fragments: &[&str]) -> String {
    let o = mbpipe(dir, &["run", &format!("{name}.toml")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{name}: {err}");
    for f in fragments {
        assert!(err.contains(f), "{name}: `{f}` missing from:\n{err}");
    }
    assert!(!err.contains("panicked"), "{name}: {err}");
    err
}

#[test]
fn bad_rows_fail_naming_file_line_and_reason() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "json",
            b"{\"text\":\"ok\"}\n{\"text\": broken}\n",
            "json.jsonl:2: invalid JSON: expected value at column 10",
        ),
        (
            "utf8",
            b"{\"text\":\"ok\"}\n\n{\"text\":\"\xff\xfe\"}\n",
            "utf8.jsonl:3: invalid UTF-8 at byte 10 of the line",
        ),
        (
            "object",
            b"{\"text\":\"ok\"}\n{\"text\":{\"a\":1}}\n",
            "object.jsonl:2: field `text` must be a string or null, found an object",
        ),
        (
            "number",
            b"{\"text\":\"ok\"}\r\n{\"text\":5}\r\n",
            "number.jsonl:2: field `text` must be a string or null, found a number",
        ),
        (
            "array",
            b"[1, 2]\n",
            "array.jsonl:1: expected a JSON object, found an array",
        ),
    ];
    for (name, bytes, message) in cases {
        std::fs::write(d.join(format!("{name}.jsonl")), bytes).unwrap();
        pipeline(&fx, d, name, &format!("{name}.jsonl"), "", None);
        expect(d, name, 1, &[message]);
        assert!(!d.join(format!("out-{name}/_SUCCESS")).exists());
    }
}

#[test]
fn skip_policy_logs_rejects_counts_them_and_exits_3() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("mixed.jsonl"),
        "{\"text\":\"good one\"}\n{\"text\":5}\n{nope\n{\"text\":\"good two\"}\n",
    )
    .unwrap();
    pipeline(&fx, d, "mixed", "mixed.jsonl", "on_error = \"skip\"", None);
    expect(
        d,
        "mixed",
        3,
        &["2 rows", "(2 rejected, see _rejects.jsonl)"],
    );
    let rejects: Vec<serde_json::Value> =
        std::fs::read_to_string(d.join("out-mixed/_rejects.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["file"], "mixed.jsonl");
    assert_eq!(
        (rejects[0]["line"].as_u64(), rejects[1]["line"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(
        rejects[0]["reason"],
        "field `text` must be a string or null, found a number"
    );
    assert!(rejects[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON"));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out-mixed/_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        (m["rows"].as_u64(), m["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(d.join("out-mixed/_SUCCESS").exists());
}

/// The part files of an output folder (none when it does not exist).
fn part_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("part-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_run_failing_on_its_first_row_commits_no_empty_part() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("first.jsonl"), "{nope\n{\"text\":\"fine\"}\n").unwrap();
    pipeline(&fx, d, "first", "first.jsonl", "", None);
    expect(d, "first", 1, &["first.jsonl:1: invalid JSON"]);
    assert_eq!(part_files(&d.join("out-first")), Vec::<String>::new());
}

#[test]
fn skipped_rows_do_not_cut_parts() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 2,000 rows, every 20th bad: 100 rejects.
    let body: String = (0..2000)
        .map(|i| {
            if i % 20 == 7 {
                format!("{{\"id\":{i},\"text\":{i}}}\n")
            } else {
                format!("{{\"id\":{i},\"text\":\"row {i} reads well\"}}\n")
            }
        })
        .collect();
    std::fs::write(d.join("many.jsonl"), body).unwrap();
    pipeline(&fx, d, "many", "many.jsonl", "on_error = \"skip\"", None);
    expect(d, "many", 3, &["1900 rows", "(100 rejected"]);
    let out = d.join("out-many");
    assert_eq!(part_files(&out), ["part-00000.parquet"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_manifest.json")).unwrap())
            .unwrap();
    // The part covers the whole input, rejected rows included, so a resume starts after it.
    let p = &m["parts"][0];
    assert_eq!(
        (
            p["first_row"].as_u64(),
            p["input_rows"].as_u64(),
            p["rows"].as_u64()
        ),
        (Some(0), Some(2000), Some(1900))
    );
    assert_eq!(m["rejected"], 100);
}

#[test]
fn broken_files_and_pipelines_name_their_cause() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ok.jsonl"), "{\"text\":\"fine\"}\n").unwrap();
    std::fs::write(d.join("body.jsonl"), "{\"body\":\"fine\"}\n").unwrap();

    // A Parquet file cut short.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/comments.parquet");
    let bytes = std::fs::read(sample).unwrap();
    std::fs::write(d.join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    pipeline(&fx, d, "cut", "cut.parquet", "", None);
    expect(
        d,
        "cut",
        1,
        &["invalid Parquet file cut.parquet", "Corrupt footer"],
    );

    // A model directory whose weights file is truncated.
    let model = d.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fx.model("classifier")).unwrap().flatten() {
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let w = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("model.safetensors"), &w[..w.len() / 3]).unwrap();
    pipeline(&fx, d, "weights", "ok.jsonl", "", Some("model"));
    expect(
        d,
        "weights",
        2,
        &["cannot read weights `model/model.safetensors` (corrupt or truncated safetensors file?)"],
    );

    // The text column is missing; a template names a missing column.
    pipeline(&fx, d, "column", "body.jsonl", "", None);
    expect(
        d,
        "column",
        2,
        &["[input] text uses column `text`, which the input does not have (columns: body)"],
    );
    let toml = std::fs::read_to_string(d.join("column.toml"))
        .unwrap()
        .replace("text = \"text\"", "text = \"{title}: {body}\"");
    std::fs::write(d.join("template.toml"), toml).unwrap();
    expect(
        d,
        "template",
        2,
        &["[input] text uses column `title`, which the input does not have"],
    );

    // An unknown key and a wrong type, with the TOML line.
    let base = std::fs::read_to_string(d.join("column.toml")).unwrap();
    std::fs::write(
        d.join("unknown.toml"),
        base.replace("text = \"text\"", "text = \"text\"\ncolour = \"red\""),
    )
    .unwrap();
    expect(
        d,
        "unknown",
        2,
        &[
            "unknown.toml: TOML parse error at line 4",
            "unknown field `colour`",
        ],
    );
    std::fs::write(
        d.join("wrong.toml"),
        format!("{base}max_length = \"long\"\n"),
    )
    .unwrap();
    expect(
        d,
        "wrong",
        2,
        &[
            "wrong.toml: TOML parse error at line 13",
            "invalid type: string \"long\", expected usize",
        ],
    );
}

#[test]
fn odd_but_valid_inputs_are_not_errors() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // An empty input: success with zero rows, and a readable (empty) table.
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    pipeline(&fx, d, "empty", "empty.jsonl", "", None);
    expect(d, "empty", 0, &["0 rows"]);
    let sql = ok(mbpipe(
        d,
        &[
            "sql",
            "--table",
            "e=out-empty",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM e",
        ],
    ));
    assert_eq!(sql.lines().nth(1), Some("0"), "{sql}");

    // A 100 MB text: cut by bytes before tokenizing, then truncated and flagged; a null text
    // gives null outputs; BOM, CRLF and blank lines are fine.
    let huge = "word ".repeat(20_000_000);
    let body = format!(
        "\u{feff}{}\r\n\r\n{}\r\n{}\r\n",
        serde_json::json!({"id": 0, "text": huge}),
        serde_json::json!({"id": 1, "text": null}),
        serde_json::json!({"id": 2, "text": "short"}),
    );
    drop(huge);
    std::fs::write(d.join("odd.jsonl"), body).unwrap();
    pipeline(&fx, d, "odd", "odd.jsonl", "", None);
    expect(d, "odd", 0, &["3 rows"]);
    let sql = ok(mbpipe(
        d,
        &[
            "sql",
            "--table",
            "o=out-odd",
            "--format",
            "csv",
            "SELECT id, t_truncated, t_label IS NULL AS no_label FROM o ORDER BY id",
        ],
    ));
    let lines: Vec<&str> = sql.lines().skip(1).collect();
    assert_eq!(lines, ["0,true,false", "1,,true", "2,false,false"], "{sql}");
}

/// Copies the fixture classifier into `dir/name`, for breaking one of its files.
fn model_copy(fx: &Fixture, dir: &Path, name: &str) -> std::path::PathBuf {
    let model = dir.join(name);
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fx.model("classifier")).unwrap().flatten() {
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    model
}

#[test]
fn invalid_model_files_and_input_specs_exit_2_not_1() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ok.jsonl"), "{\"text\":\"fine\"}\n").unwrap();

    // A malformed tokenizer.json.
    let model = model_copy(&fx, d, "bad-tokenizer");
    std::fs::write(model.join("tokenizer.json"), "{\"version\": \"1.0\", ").unwrap();
    pipeline(&fx, d, "tokenizer", "ok.jsonl", "", Some("bad-tokenizer"));
    expect(
        d,
        "tokenizer",
        2,
        &["cannot load tokenizer `bad-tokenizer/tokenizer.json`"],
    );

    // Integer weights.
    let model = model_copy(&fx, d, "int-weights");
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let name = "model.final_norm.weight";
    let t = tensors[name].to_dtype(candle_core::DType::I64).unwrap();
    tensors.insert(name.to_string(), t);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    pipeline(&fx, d, "int", "ok.jsonl", "", Some("int-weights"));
    expect(
        d,
        "int",
        2,
        &["tensor `model.final_norm.weight` has dtype I64; the engine needs floating-point weights"],
    );

    // No input file matches.
    pipeline(&fx, d, "nomatch", "missing-*.jsonl", "", None);
    expect(d, "nomatch", 2, &["no input files match `missing-*.jsonl`"]);
    let o = mbpipe(d, &["validate", "nomatch.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn max_length_without_room_for_text_fails_validate() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ok.jsonl"), "{\"text\":\"fine\"}\n").unwrap();
    pipeline(&fx, d, "short", "ok.jsonl", "", None);
    let toml = std::fs::read_to_string(d.join("short.toml")).unwrap() + "max_length = 2\n";
    std::fs::write(d.join("short.toml"), toml).unwrap();
    let o = mbpipe(d, &["validate", "short.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "task `t`: max_length 2 leaves no room for text (the tokenizer adds 2 special tokens)"
        ),
        "{}",
        stderr(&o)
    );
    // A zero-shot template that fills max_length by itself fails too.
    let zs = format!(
        "[input]\npath = \"ok.jsonl\"\n[output]\npath = \"o\"\n[[tasks]]\nname = \"z\"\nkind = \"zero_shot\"\nmodel = \"{}\"\nmax_length = 8\ntemplate = \"{{text}} Overall, it was a [MASK] experience.\"\nlabels = {{ a = \"bad\", b = \"great\" }}\n",
        fx.model("mlm")
    );
    std::fs::write(d.join("zs.toml"), zs).unwrap();
    let o = mbpipe(d, &["validate", "zs.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("task `z`: the prompt template alone is"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn broken_symlinks_and_non_utf8_names_in_an_input_folder_are_reported() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), "{\"text\":\"fine\"}\n").unwrap();
    std::os::unix::fs::symlink(d.join("gone.jsonl"), d.join("in/b.jsonl")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"c\xff.jsonl");
    std::fs::write(d.join("in").join(odd), "{\"text\":\"x\"}\n").unwrap();
    pipeline(&fx, d, "folder", "in", "", None);
    let o = mbpipe(d, &["validate", "folder.toml"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("b.jsonl: a symbolic link whose target does not exist"),
        "{err}"
    );
    assert!(err.contains("its file name is not valid UTF-8"), "{err}");
}
