//! The quick commands against the reference fixture.
//! Tolerance: 1e-4 absolute on probabilities, logits and embeddings (f32).

use crate::util::{assert_close, fixture, mbpipe, ok, softmax, stderr, Fixture};

const TOL: f32 = 1e-4;

fn texts_file(dir: &std::path::Path, texts: &[String]) -> std::path::PathBuf {
    let p = dir.join("texts.jsonl");
    let body: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(&p, body).unwrap();
    p
}

/// `mbpipe classify --json` over `input`, one JSON object per line.
fn classify_json(
    fx: &Fixture,
    dir: &std::path::Path,
    input: &std::path::Path,
) -> Vec<serde_json::Value> {
    let out = ok(mbpipe(
        dir,
        &[
            "classify",
            "--model",
            &fx.model("classifier"),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
    ));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One `classify --json` line against the reference for fixture text `i`: label, logits (keyed
/// by label, like scores) and scores.
fn check_classify_line(fx: &Fixture, line: &serde_json::Value, i: usize, at: &str) {
    const LABELS: [&str; 3] = ["negative", "neutral", "positive"];
    let want_logits = fx.vec(&format!("cls_logits.{i}")).unwrap();
    let logits: Vec<f32> = LABELS
        .iter()
        .map(|l| line["logits"][l].as_f64().unwrap() as f32)
        .collect();
    assert_close(&logits, &want_logits, TOL, &format!("{at} logits"));
    let probs = softmax(&want_logits);
    for (k, label) in LABELS.iter().enumerate() {
        let p = line["scores"][label].as_f64().unwrap() as f32;
        assert!(
            (p - probs[k]).abs() < TOL,
            "{at} {label}: {p} vs {}",
            probs[k]
        );
    }
    assert_eq!(
        line["label"], fx.json["texts"][i]["classifier"]["label"],
        "{at}"
    );
}

#[test]
fn classify_file_matches_reference_in_order() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = texts_file(tmp.path(), &fx.texts);
    let lines = classify_json(&fx, tmp.path(), &input);
    assert_eq!(lines.len(), fx.texts.len());
    for (i, line) in lines.iter().enumerate() {
        check_classify_line(&fx, line, i, &format!("text {i}"));
    }
}

#[test]
fn fill_mask_top5_matches_reference() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = texts_file(tmp.path(), &fx.texts);
    let out = ok(mbpipe(
        tmp.path(),
        &[
            "fill-mask",
            "--model",
            &fx.model("mlm"),
            "--input",
            input.to_str().unwrap(),
            "--json",
            "--top-k",
            "5",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let want = fx.top5(i);
        let got = line["predictions"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "text {i}: one list per [MASK]");
        for (g, w) in got.iter().zip(&want) {
            let ids: Vec<u32> = g
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["token_id"].as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, w.iter().map(|x| x.0).collect::<Vec<_>>(), "text {i}");
            let scores: Vec<f32> = g
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["score"].as_f64().unwrap() as f32)
                .collect();
            assert_close(
                &scores,
                &w.iter().map(|x| x.1).collect::<Vec<_>>(),
                TOL,
                &format!("text {i} scores"),
            );
        }
    }
}

#[test]
fn embed_one_text_matches_reference_mean_and_cls() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (pooling, key) in [("mean", "mean"), ("cls", "cls")] {
        let out = ok(mbpipe(
            tmp.path(),
            &[
                "embed",
                "--model",
                &fx.model("mlm"),
                "--pooling",
                pooling,
                "--json",
                &fx.texts[6],
            ],
        ));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let got: Vec<f32> = serde_json::from_value(v["embedding"].clone()).unwrap();
        assert_close(&got, &fx.vec(&format!("{key}.6")).unwrap(), TOL, pooling);
    }
    let out = ok(mbpipe(
        tmp.path(),
        &[
            "embed",
            "--model",
            &fx.model("mlm"),
            "--normalize",
            "--json",
            &fx.texts[6],
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let got: Vec<f32> = serde_json::from_value(v["embedding"].clone()).unwrap();
    let mean = fx.vec("mean.6").unwrap();
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert_close(
        &got,
        &mean.iter().map(|x| x / norm).collect::<Vec<_>>(),
        TOL,
        "normalized",
    );
}

#[test]
fn bad_input_line_is_named() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.jsonl"),
        "{\"text\": \"ok\"}\n{\"text\": 5}\n",
    )
    .unwrap();
    let o = mbpipe(
        tmp.path(),
        &[
            "classify",
            "--model",
            &fx.model("classifier"),
            "--input",
            "bad.jsonl",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bad.jsonl:2: field `text` must be a string or null, found a number"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_model_directory_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = mbpipe(
        tmp.path(),
        &["classify", "--model", "./no/such/model", "hello"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/model"), "{}", stderr(&o));
}

#[test]
fn classify_input_parquet_says_input_takes_json_lines() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/comments.parquet");
    let o = mbpipe(
        tmp.path(),
        &[
            "classify",
            "--model",
            &fx.model("classifier"),
            "--input",
            sample.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--input takes JSON lines"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("UTF-8"), "{}", stderr(&o));
}

#[test]
fn a_null_text_in_input_gets_null_outputs_as_in_pipelines() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.jsonl"),
        format!(
            "{}\n{{\"text\": null}}\n{}\n",
            serde_json::json!({ "text": fx.texts[1] }),
            serde_json::json!({ "text": fx.texts[2] })
        ),
    )
    .unwrap();
    let out = ok(mbpipe(
        tmp.path(),
        &[
            "classify",
            "--model",
            &fx.model("classifier"),
            "--input",
            "t.jsonl",
            "--json",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1]["label"].is_null() && lines[1]["logits"].is_null());
    for (line, i) in [(&lines[0], 1), (&lines[2], 2)] {
        assert_eq!(line["label"], fx.json["texts"][i]["classifier"]["label"]);
    }
}

/// A gzip'd --input longer than one window (2,048 rows) streams through the pipelines' reader:
/// every row comes out once, in input order, each equal to the reference for its text.
#[test]
fn compressed_input_longer_than_a_window_streams_in_order() {
    use std::io::Write;

    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let n = fx.texts.len();
    let rows = 2 * 2048 + 7;
    let path = tmp.path().join("many.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    for i in 0..rows {
        writeln!(gz, "{}", serde_json::json!({ "text": fx.texts[i % n] })).unwrap();
    }
    gz.finish().unwrap();
    let lines = classify_json(&fx, tmp.path(), &path);
    assert_eq!(lines.len(), rows);
    for (i, line) in lines.iter().enumerate() {
        check_classify_line(&fx, line, i % n, &format!("row {i}"));
    }
}
