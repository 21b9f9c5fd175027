//! `--dtype int8` through `mbpipe run`: the accuracy gate of the CPU int8 path. With the trained
//! models in `sample_data/models`, macro-F1 on the held-out test splits of their data sets within
//! 0.5 points of f32 and at least 99% of labels equal to f32's; on the transformers fixture,
//! every mean embedding within cosine 0.99 of the reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;

use crate::pipeline::{pipeline_toml, read_output, write_inputs};
use crate::util::{fixture, mbpipe, ok, shared_dir};

/// Macro-F1 within this many points (of 100) of f32's.
const MACRO_F1_POINTS: f64 = 0.5;
/// At least this share of labels equal to f32's.
const SAME_LABELS: f64 = 0.99;
/// Mean embeddings at least this cosine to the reference.
const EMBEDDING_COSINE: f32 = 0.99;

/// `../shared/datasets`, or `None` with a message saying why the test skips.
fn datasets() -> Option<PathBuf> {
    let dir = shared_dir().join("datasets");
    if !dir.join("davidson_hate_offensive/test.jsonl").is_file() {
        eprintln!(
            "SKIPPED: held-out sets not found under {} (set MBPIPE_SHARED to the shared/ folder)",
            dir.display()
        );
        return None;
    }
    Some(dir)
}

/// The test split of `set` as (text, gold label) rows, gold from `field` where it is one of
/// `labels` (GoEmotions' mixed and ambiguous rows are dropped, as in training).
fn held_out(dir: &Path, set: &str, field: &str, labels: &[&str]) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(set).join("test.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let gold = v[field].as_str()?;
            labels
                .contains(&gold)
                .then(|| (v["text"].as_str().unwrap().to_string(), gold.to_string()))
        })
        .collect()
}

/// Runs classifier `model` over `rows` at `dtype`; the labels in input order.
fn labels(work: &Path, model: &str, rows: &[(String, String)], dtype: &str) -> Vec<String> {
    let input = work.join("input.jsonl");
    if !input.exists() {
        let lines: Vec<String> = rows
            .iter()
            .map(|(text, _)| serde_json::json!({ "text": text }).to_string())
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(model);
    let toml = format!(
        "[input]\npath = \"input.jsonl\"\ntext = \"text\"\n[output]\npath = \"out-{dtype}\"\n\
         [[tasks]]\nname = \"c\"\nkind = \"classify\"\nmodel = \"{}\"\nmax_length = 128\n",
        model.display()
    );
    std::fs::write(work.join(format!("{dtype}.toml")), toml).unwrap();
    ok(mbpipe(
        work,
        &["run", &format!("{dtype}.toml"), "--dtype", dtype],
    ));
    let out = read_output(&work.join(format!("out-{dtype}")));
    let labels = out.column_by_name("c_label").unwrap().as_string::<i32>();
    assert_eq!(labels.len(), rows.len(), "every row written");
    (0..labels.len())
        .map(|i| labels.value(i).to_string())
        .collect()
}

/// Unweighted mean over `classes` of F1 (in points).
fn macro_f1(predicted: &[String], gold: &[&str], classes: &[&str]) -> f64 {
    let mut sum = 0.0;
    for class in classes {
        let count = |p: &dyn Fn(usize) -> bool| (0..gold.len()).filter(|&i| p(i)).count() as f64;
        let tp = count(&|i| predicted[i] == *class && gold[i] == *class);
        let fp = count(&|i| predicted[i] == *class && gold[i] != *class);
        let fn_ = count(&|i| predicted[i] != *class && gold[i] == *class);
        sum += if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        };
    }
    100.0 * sum / classes.len() as f64
}

fn check_gate(set: &str, field: &str, model: &str, classes: &[&str]) {
    let Some(dir) = datasets() else { return };
    let rows = held_out(&dir, set, field, classes);
    assert!(rows.len() > 1000, "{set}: {} rows", rows.len());
    let work = tempfile::tempdir().unwrap();
    let f32_labels = labels(work.path(), model, &rows, "f32");
    let int8_labels = labels(work.path(), model, &rows, "int8");
    let gold: Vec<&str> = rows.iter().map(|(_, g)| g.as_str()).collect();
    let (f1_f32, f1_int8) = (
        macro_f1(&f32_labels, &gold, classes),
        macro_f1(&int8_labels, &gold, classes),
    );
    let same = f32_labels
        .iter()
        .zip(&int8_labels)
        .filter(|(a, b)| a == b)
        .count();
    let same = same as f64 / rows.len() as f64;
    eprintln!(
        "{model} on {set} test ({} rows): macro-F1 f32 {f1_f32:.2}, int8 {f1_int8:.2}; \
         {:.2}% of labels equal",
        rows.len(),
        100.0 * same
    );
    assert!(
        (f1_int8 - f1_f32).abs() <= MACRO_F1_POINTS,
        "{model}: macro-F1 int8 {f1_int8:.2} vs f32 {f1_f32:.2}"
    );
    assert!(
        same >= SAME_LABELS,
        "{model}: {:.2}% of labels equal",
        100.0 * same
    );
}

#[test]
fn int8_moderation_keeps_macro_f1_and_labels_on_the_held_out_set() {
    check_gate(
        "davidson_hate_offensive",
        "label",
        "moderation",
        &["hate_speech", "offensive_language", "neither"],
    );
}

#[test]
fn int8_sentiment_keeps_macro_f1_and_labels_on_the_held_out_set() {
    check_gate(
        "goemotions",
        "sentiment",
        "sentiment",
        &["negative", "neutral", "positive"],
    );
}

/// The fixture's texts through an int8 run: each mean embedding within [`EMBEDDING_COSINE`] of
/// what transformers computes in f32, and the null rows still null.
#[test]
fn int8_embeddings_stay_within_the_cosine_gate_on_the_fixture() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rows = write_inputs(&fx, tmp.path());
    std::fs::write(tmp.path().join("p.toml"), pipeline_toml(&fx, "")).unwrap();
    ok(mbpipe(tmp.path(), &["run", "p.toml", "--dtype", "int8"]));
    let out = read_output(&tmp.path().join("out"));
    let emb = out
        .column_by_name("emb_embedding")
        .unwrap()
        .as_fixed_size_list();
    let mut cosines = HashMap::new();
    let mut i = 0;
    for (row, text) in rows.iter().enumerate() {
        if text.is_none() {
            assert!(emb.is_null(row));
            continue;
        }
        let got: Vec<f32> = emb
            .value(row)
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        let want = fx.vec(&format!("mean.{i}")).unwrap();
        let dot: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        cosines.insert(i, dot / (norm(&got) * norm(&want)));
        i += 1;
    }
    let worst = cosines.values().copied().fold(1f32, f32::min);
    eprintln!("int8 mean embeddings on the fixture: lowest cosine {worst:.5}");
    for (i, c) in cosines {
        assert!(c >= EMBEDDING_COSINE, "text {i}: cosine {c}");
    }
}
