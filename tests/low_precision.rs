//! `--dtype int8` and `--dtype bf16` through `mbpipe run`: the accuracy gates of the CPU's lower
//! precisions. With the trained models in `sample_data/models`, macro-F1 on the held-out test
//! splits of their data sets within 0.5 points of f32 and at least 99% of labels equal to f32's
//! (on an AMX CPU bf16 runs every product there on the tiles, the attention's included: the
//! models' heads are 64 wide, the fixture's 16 are not); on the transformers fixture, every
//! int8 mean embedding within cosine 0.99 of the reference. A task's `quantize = "int8"` is held
//! to the same gates: in a run at another dtype it writes exactly what `--dtype int8` writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use arrow::record_batch::RecordBatch;

use crate::pipeline::{pipeline_toml, read_output, write_inputs};
use crate::util::{fixture, mbpipe, mbpipe_with_env, ok, shared_dir, Fixture};

/// Macro-F1 within this many points (of 100) of f32's.
const MACRO_F1_POINTS: f64 = 0.5;
/// At least this share of labels equal to f32's.
const SAME_LABELS: f64 = 0.99;
/// Rows of a held-out set that check a task's `quantize` against `--dtype int8`.
const QUANTIZE_CHECK_ROWS: usize = 96;
/// Mean embeddings at least this cosine to the reference.
const EMBEDDING_COSINE: f32 = 0.99;

/// The switches that make a CPU with VNNI, AVX-512 or AMX run int8 on the AVX2 kernel (7-bit
/// weights and activations), as a CPU with AVX2 alone does, where it would pick another one;
/// `None` where the run's own int8 already is the AVX2 kernel's (or the CPU has no AVX2).
fn avx2_kernel_switches() -> Option<[(&'static str, &'static str); 2]> {
    use mbpipe_model::int8_gemm::Int8Kernel;
    let other = !matches!(Int8Kernel::detect(), Some(Int8Kernel::Avx2) | None);
    other.then_some([("MBPIPE_VNNI", "0"), ("MBPIPE_AVX512", "0")])
}

/// A run's name: `base`, then each of the variables `vars` it runs with.
fn run_name(base: String, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(base, |run, (name, value)| format!("{run}-{name}-{value}"))
}

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

/// Runs classifier `model` over `rows` at `dtype` as task `c`, and when `quantized`, a second
/// time as task `q` with `quantize = "int8"`; the output, every row checked written.
fn classify(
    work: &Path,
    model: &str,
    rows: &[(String, String)],
    dtype: &str,
    quantized: bool,
) -> RecordBatch {
    classify_with_env(work, model, rows, (dtype, quantized), &[])
}

/// [`classify`] with the variables `vars` set (the run's folder named after them).
fn classify_with_env(
    work: &Path,
    model: &str,
    rows: &[(String, String)],
    (dtype, quantized): (&str, bool),
    vars: &[(&str, &str)],
) -> RecordBatch {
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
    let task = |name: &str, extra: &str| {
        format!(
            "[[tasks]]\nname = \"{name}\"\nkind = \"classify\"\nmodel = \"{}\"\nmax_length = 128\n{extra}",
            model.display()
        )
    };
    let base = if quantized {
        format!("{dtype}-mixed")
    } else {
        dtype.to_string()
    };
    let run = run_name(base, vars);
    let mut toml = format!(
        "[input]\npath = \"input.jsonl\"\ntext = \"text\"\n[output]\npath = \"out-{run}\"\n{}",
        task("c", "")
    );
    if quantized {
        toml += &task("q", "quantize = \"int8\"\n");
    }
    std::fs::write(work.join(format!("{run}.toml")), toml).unwrap();
    ok(mbpipe_with_env(
        work,
        &["run", &format!("{run}.toml"), "--dtype", dtype],
        vars,
    ));
    let out = read_output(&work.join(format!("out-{run}")));
    assert_eq!(out.num_rows(), rows.len(), "every row written");
    out
}

/// Task `task`'s labels in input order.
fn labels(out: &RecordBatch, task: &str) -> Vec<String> {
    let labels = out
        .column_by_name(&format!("{task}_label"))
        .unwrap()
        .as_string::<i32>();
    (0..labels.len())
        .map(|i| labels.value(i).to_string())
        .collect()
}

/// Asserts that every column of task `task` in `out` equals the same column of task `like`
/// in `reference`, value for value.
fn assert_same_task_columns(out: &RecordBatch, task: &str, reference: &RecordBatch, like: &str) {
    let prefix = format!("{like}_");
    let mut compared = 0;
    for field in reference.schema().fields() {
        let Some(suffix) = field.name().strip_prefix(&prefix) else {
            continue;
        };
        let name = format!("{task}_{suffix}");
        let got = out
            .column_by_name(&name)
            .unwrap_or_else(|| panic!("no column {name}"));
        assert_eq!(
            got.to_data(),
            reference.column_by_name(field.name()).unwrap().to_data(),
            "{name} differs from {}",
            field.name()
        );
        compared += 1;
    }
    assert!(compared >= 2, "compared {compared} columns");
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
    let f32_out = classify(work.path(), model, &rows, "f32", false);
    let int8_out = classify(work.path(), model, &rows, "int8", false);
    let bf16_out = classify(work.path(), model, &rows, "bf16", false);
    // Where this CPU runs int8 on another kernel, the AVX2 kernel's 7-bit quantization too.
    let avx2_out = avx2_kernel_switches()
        .map(|vars| classify_with_env(work.path(), model, &rows, ("int8", false), &vars));
    // The same gate through a task's `quantize`: in an f32 run, the quantized copy of the
    // classifier writes what `--dtype int8` writes, on these models' 64-wide heads (the
    // fixture's test covers 16-wide ones). The first rows suffice, both runs on the same input
    // (the same batches: on AMX tiles a row's last bits depend on its place in a block).
    let few = &rows[..QUANTIZE_CHECK_ROWS];
    let sub = work.path().join("quantize");
    std::fs::create_dir(&sub).unwrap();
    let mixed = classify(&sub, model, few, "f32", true);
    assert_same_task_columns(&mixed, "q", &classify(&sub, model, few, "int8", false), "c");
    let f32_labels = labels(&f32_out, "c");
    let gold: Vec<&str> = rows.iter().map(|(_, g)| g.as_str()).collect();
    let f1_f32 = macro_f1(&f32_labels, &gold, classes);
    let runs = [("int8", &int8_out), ("bf16", &bf16_out)];
    let avx2_run = avx2_out
        .as_ref()
        .map(|out| ("int8 on the AVX2 kernel", out));
    for (dtype, out) in runs.into_iter().chain(avx2_run) {
        let low = labels(out, "c");
        let f1 = macro_f1(&low, &gold, classes);
        let same = f32_labels.iter().zip(&low).filter(|(a, b)| a == b).count();
        let same = same as f64 / rows.len() as f64;
        eprintln!(
            "{model} on {set} test ({} rows): macro-F1 f32 {f1_f32:.2}, {dtype} {f1:.2}; \
             {:.2}% of labels equal",
            rows.len(),
            100.0 * same
        );
        assert!(
            (f1 - f1_f32).abs() <= MACRO_F1_POINTS,
            "{model}: macro-F1 {dtype} {f1:.2} vs f32 {f1_f32:.2}"
        );
        assert!(
            same >= SAME_LABELS,
            "{model} {dtype}: {:.2}% of labels equal",
            100.0 * same
        );
    }
}

#[test]
fn int8_and_bf16_moderation_keep_macro_f1_and_labels_on_the_held_out_set() {
    check_gate(
        "davidson_hate_offensive",
        "label",
        "moderation",
        &["hate_speech", "offensive_language", "neither"],
    );
}

#[test]
fn int8_and_bf16_sentiment_keep_macro_f1_and_labels_on_the_held_out_set() {
    check_gate(
        "goemotions",
        "sentiment",
        "sentiment",
        &["negative", "neutral", "positive"],
    );
}

/// Rows of the held-out moderation set embedded by the shipped `base` model in each precision.
const EMBEDDING_ROWS: usize = 400;

/// The shipped `base` model's mean embeddings (64-wide heads, where int8 runs the attention's
/// QKᵀ in int8 on 512-bit VNNI; the fixture's heads are 16 wide) of held-out texts through an
/// int8 run: each within [`EMBEDDING_COSINE`] of the f32 run's.
#[test]
fn int8_embeddings_of_the_shipped_model_stay_within_the_cosine_gate() {
    let Some(dir) = datasets() else { return };
    let classes = ["hate_speech", "offensive_language", "neither"];
    let rows = held_out(&dir, "davidson_hate_offensive", "label", &classes);
    let work = tempfile::tempdir().unwrap();
    let lines: Vec<String> = rows[..EMBEDDING_ROWS]
        .iter()
        .map(|(text, _)| serde_json::json!({ "text": text }).to_string())
        .collect();
    std::fs::write(work.path().join("input.jsonl"), lines.join("\n")).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/base");
    let embed = |dtype: &str, vars: &[(&str, &str)]| {
        let run = run_name(dtype.to_string(), vars);
        let toml = format!(
            "[input]\npath = \"input.jsonl\"\ntext = \"text\"\n[output]\npath = \"out-{run}\"\n\
             [[tasks]]\nname = \"e\"\nkind = \"embed\"\nmodel = \"{}\"\npooling = \"mean\"\n\
             normalize = false\nmax_length = 128\n",
            model.display()
        );
        std::fs::write(work.path().join(format!("{run}.toml")), toml).unwrap();
        ok(mbpipe_with_env(
            work.path(),
            &["run", &format!("{run}.toml"), "--dtype", dtype],
            vars,
        ));
        let out = read_output(&work.path().join(format!("out-{run}")));
        assert_eq!(out.num_rows(), EMBEDDING_ROWS, "every row written");
        let emb = out
            .column_by_name("e_embedding")
            .unwrap()
            .as_fixed_size_list();
        (0..EMBEDDING_ROWS)
            .map(|row| {
                emb.value(row)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec()
            })
            .collect::<Vec<_>>()
    };
    let f32_rows = embed("f32", &[]);
    let mut runs = vec![("int8", embed("int8", &[]))];
    // Where this CPU runs int8 on another kernel, the AVX2 kernel's 7-bit quantization too.
    if let Some(vars) = avx2_kernel_switches() {
        runs.push(("int8 on the AVX2 kernel", embed("int8", &vars)));
    }
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (run, int8_rows) in runs {
        let cosines: Vec<f32> = f32_rows
            .iter()
            .zip(&int8_rows)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b)))
            .collect();
        let worst = cosines.iter().copied().fold(1f32, f32::min);
        eprintln!(
            "{run} mean embeddings of `base` on {EMBEDDING_ROWS} held-out texts: lowest cosine \
             to f32 {worst:.5}"
        );
        for (row, c) in cosines.iter().enumerate() {
            assert!(*c >= EMBEDDING_COSINE, "{run}, row {row}: cosine {c}");
        }
    }
}

/// The `emb_embedding` of each row of `out` whose text in `rows` is not null, in order (the
/// fixture's `mean.{i}` numbering); the null rows' are checked null.
fn mean_embeddings(out: &RecordBatch, rows: &[Option<String>]) -> Vec<Vec<f32>> {
    let emb = out
        .column_by_name("emb_embedding")
        .unwrap()
        .as_fixed_size_list();
    let mut texts = Vec::new();
    for (row, text) in rows.iter().enumerate() {
        if text.is_none() {
            assert!(emb.is_null(row), "row {row}: no text, yet an embedding");
            continue;
        }
        texts.push(
            emb.value(row)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec(),
        );
    }
    texts
}

/// The fixture's inputs and pipeline written to `dir` and run with `--dtype int8` (output in
/// `dir/out`): the input rows and the output.
fn fixture_pipeline_in_int8(fx: &Fixture, dir: &Path) -> (Vec<Option<String>>, RecordBatch) {
    let rows = write_inputs(fx, dir);
    std::fs::write(dir.join("int8.toml"), pipeline_toml(fx, "")).unwrap();
    ok(mbpipe(dir, &["run", "int8.toml", "--dtype", "int8"]));
    (rows, read_output(&dir.join("out")))
}

/// The fixture's texts through an int8 run: each mean embedding within [`EMBEDDING_COSINE`] of
/// what transformers computes in f32, and the null rows still null.
#[test]
fn int8_embeddings_stay_within_the_cosine_gate_on_the_fixture() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rows, out) = fixture_pipeline_in_int8(&fx, tmp.path());
    let mut cosines = HashMap::new();
    for (i, got) in mean_embeddings(&out, &rows).into_iter().enumerate() {
        let want = fx.vec(&format!("mean.{i}")).unwrap();
        let dot: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        cosines.insert(i, dot / (norm(&got) * norm(&want)));
    }
    let worst = cosines.values().copied().fold(1f32, f32::min);
    eprintln!("int8 mean embeddings on the fixture: lowest cosine {worst:.5}");
    for (i, c) in cosines {
        assert!(c >= EMBEDDING_COSINE, "text {i}: cosine {c}");
    }
}

/// Tasks with `quantize = "int8"` in an f32 run: each writes exactly what its f32 twin writes in
/// a `--dtype int8` run (so the gates above hold for it), the plain tasks beside it keep f32's
/// values (within the fixture tolerance of transformers, 1e-4), and the manifest records each
/// task's precision.
#[test]
fn quantized_tasks_in_an_f32_run_write_what_an_int8_run_writes() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rows, int8_out) = fixture_pipeline_in_int8(&fx, tmp.path());
    let quantized = format!(
        "[[tasks]]\nname = \"embq\"\nkind = \"embed\"\nmodel = \"{mlm}\"\npooling = \"mean\"\n\
         normalize = false\nquantize = \"int8\"\n\n[[tasks]]\nname = \"sentimentq\"\n\
         kind = \"classify\"\nmodel = \"{cls}\"\nquantize = \"int8\"\n\
         weights = {{ negative = -1.0, neutral = 0.0, positive = 1.0 }}\n",
        mlm = fx.model("mlm"),
        cls = fx.model("classifier")
    );
    let mixed = pipeline_toml(&fx, &quantized).replace("path = \"out\"", "path = \"mixed\"");
    std::fs::write(tmp.path().join("mixed.toml"), mixed).unwrap();
    ok(mbpipe(tmp.path(), &["run", "mixed.toml", "--dtype", "f32"]));
    let out = read_output(&tmp.path().join("mixed"));
    assert_same_task_columns(&out, "embq", &int8_out, "emb");
    assert_same_task_columns(&out, "sentimentq", &int8_out, "sentiment");

    for (i, got) in mean_embeddings(&out, &rows).into_iter().enumerate() {
        let want = fx.vec(&format!("mean.{i}")).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "text {i}: f32 embedding off by {worst}");
    }

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("mixed/_manifest.json")).unwrap())
            .unwrap();
    let dtypes: Vec<(String, String)> = manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("task"), s("dtype"))
        })
        .collect();
    let dtype_of = |task: &str| &dtypes.iter().find(|(t, _)| t == task).unwrap().1;
    assert_eq!(dtype_of("emb"), "f32");
    assert_eq!(dtype_of("fill"), "f32");
    assert_eq!(dtype_of("embq"), "int8");
    assert_eq!(dtype_of("sentimentq"), "int8");
}
