//! `mbpipe run` end to end on the reference fixture models.
//! Tolerance: 1e-4 absolute on every score, probability and embedding value (f32).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::util::{assert_close, fixture, mbpipe, mbpipe_with_env, ok, softmax, stderr, Fixture};

const TOL: f32 = 1e-4;

/// Splits the fixture texts (plus a null text) over two JSONL files and one Parquet file.
pub(crate) fn write_inputs(fx: &Fixture, dir: &Path) -> Vec<Option<String>> {
    let mut rows: Vec<Option<String>> = fx.texts.iter().cloned().map(Some).collect();
    rows.insert(4, None);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    let line = |id: usize, t: &Option<String>| {
        serde_json::json!({"id": id, "lang": "en", "text": t}).to_string() + "\n"
    };
    let a: String = rows[..5]
        .iter()
        .enumerate()
        .map(|(i, t)| line(i, t))
        .collect();
    // BOM, CRLF line ends and a blank line are all fine.
    let b: String = rows[5..10]
        .iter()
        .enumerate()
        .map(|(i, t)| line(i + 5, t).replace('\n', "\r\n"))
        .collect();
    std::fs::write(dir.join("input/a.jsonl"), a).unwrap();
    std::fs::write(dir.join("input/b.jsonl"), format!("\u{feff}{b}\r\n")).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("lang", DataType::Utf8, true),
        Field::new("text", DataType::Utf8, true),
    ]));
    let rest = &rows[10..];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(
                (10..10 + rest.len() as i64).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec!["en"; rest.len()])),
            Arc::new(rest.iter().map(|t| t.as_deref()).collect::<StringArray>()),
        ],
    )
    .unwrap();
    let f = std::fs::File::create(dir.join("input/c.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    rows
}

pub(crate) fn pipeline_toml(fx: &Fixture, extra: &str) -> String {
    format!(
        r#"
[input]
path = "input/*"
text = "text"

[output]
path = "out"

[[tasks]]
name = "sentiment"
kind = "classify"
model = "{cls}"
weights = {{ negative = -1.0, neutral = 0.0, positive = 1.0 }}

[[tasks]]
name = "emb"
kind = "embed"
model = "{mlm}"
pooling = "mean"
normalize = false

[[tasks]]
name = "first"
kind = "embed"
model = "{mlm}"
pooling = "cls"

[[tasks]]
name = "fill"
kind = "fill_mask"
model = "{mlm}"
top_k = 5
{extra}
"#,
        cls = fx.model("classifier"),
        mlm = fx.model("mlm")
    )
}

pub(crate) fn read_output(dir: &Path) -> RecordBatch {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    let mut batches = Vec::new();
    for p in parts {
        let f = std::fs::File::open(p).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(r.map(|b| b.unwrap()));
    }
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Every row of `b` (the fixture pipeline's output for the input `rows`) in input order, each
/// value within [`TOL`] of what transformers computes (the null text's columns null).
fn assert_values_match_the_reference(fx: &Fixture, rows: &[Option<String>], b: &RecordBatch) {
    let ids = b
        .column_by_name("id")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    let texts = b.column_by_name("text").unwrap().as_string::<i32>();
    let labels = b
        .column_by_name("sentiment_label")
        .unwrap()
        .as_string::<i32>();
    let score = b
        .column_by_name("sentiment_score")
        .unwrap()
        .as_primitive::<Float32Type>();
    let scores = b.column_by_name("sentiment_scores").unwrap().as_struct();
    let polarity = b
        .column_by_name("sentiment_polarity")
        .unwrap()
        .as_primitive::<Float32Type>();
    let emb = b
        .column_by_name("emb_embedding")
        .unwrap()
        .as_fixed_size_list();
    let first = b
        .column_by_name("first_embedding")
        .unwrap()
        .as_fixed_size_list();
    let fill = b
        .column_by_name("fill_predictions")
        .unwrap()
        .as_list::<i32>();
    let truncated = b.column_by_name("emb_truncated").unwrap().as_boolean();
    let mut fixture_index = 0;
    for (row, text) in rows.iter().enumerate() {
        assert_eq!(ids.value(row), row as i64, "row order");
        let Some(text) = text else {
            assert!(texts.is_null(row));
            for name in [
                "sentiment_label",
                "sentiment_score",
                "sentiment_scores",
                "sentiment_polarity",
                "emb_embedding",
                "fill_predictions",
                "fill_truncated",
            ] {
                assert!(
                    b.column_by_name(name).unwrap().is_null(row),
                    "{name} of the null row"
                );
            }
            continue;
        };
        let i = fixture_index;
        fixture_index += 1;
        assert_eq!(texts.value(row), text);
        let probs = softmax(&fx.vec(&format!("cls_logits.{i}")).unwrap());
        let got: Vec<f32> = (0..3)
            .map(|k| scores.column(k).as_primitive::<Float32Type>().value(row))
            .collect();
        assert_close(&got, &probs, TOL, &format!("text {i} scores"));
        assert_eq!(
            labels.value(row),
            fx.json["texts"][i]["classifier"]["label"].as_str().unwrap()
        );
        let best = probs.iter().copied().fold(0f32, f32::max);
        assert!((score.value(row) - best).abs() < TOL);
        assert!(
            (polarity.value(row) - (probs[2] - probs[0])).abs() < TOL,
            "polarity"
        );
        let e: Vec<f32> = emb
            .value(row)
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        assert_close(
            &e,
            &fx.vec(&format!("mean.{i}")).unwrap(),
            TOL,
            &format!("text {i} mean"),
        );
        let c: Vec<f32> = first
            .value(row)
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        assert_close(
            &c,
            &fx.vec(&format!("cls.{i}")).unwrap(),
            TOL,
            &format!("text {i} cls"),
        );
        assert!(!truncated.value(row));
        let masks = fill.value(row);
        let masks = masks.as_list::<i32>();
        let want = fx.top5(i);
        assert_eq!(masks.len(), want.len(), "text {i}: one list per [MASK]");
        for (m, w) in want.iter().enumerate() {
            let top = masks.value(m);
            let top = top.as_struct();
            let got_ids: Vec<u32> = top
                .column(1)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .values()
                .iter()
                .map(|&x| x as u32)
                .collect();
            assert_eq!(
                got_ids,
                w.iter().map(|x| x.0).collect::<Vec<_>>(),
                "text {i}"
            );
            let got_p: Vec<f32> = top
                .column(2)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec();
            assert_close(
                &got_p,
                &w.iter().map(|x| x.1).collect::<Vec<_>>(),
                TOL,
                &format!("text {i} fill scores"),
            );
        }
    }
}

/// A folder holding the fixture's inputs and `p.toml` (the pipeline of [`pipeline_toml`]), and
/// the input rows' texts.
fn fixture_pipeline(fx: &Fixture) -> (tempfile::TempDir, Vec<Option<String>>) {
    let tmp = tempfile::tempdir().unwrap();
    let rows = write_inputs(fx, tmp.path());
    std::fs::write(tmp.path().join("p.toml"), pipeline_toml(fx, "")).unwrap();
    (tmp, rows)
}

#[test]
fn every_output_value_matches_the_reference_in_input_order() {
    let Some(fx) = fixture() else { return };
    let (tmp, rows) = fixture_pipeline(&fx);
    let o = mbpipe(tmp.path(), &["run", "p.toml", "--max-batch-tokens", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("15 rows"), "summary: {}", stderr(&o));
    let out = tmp.path().join("out");
    assert!(out.join("_SUCCESS").is_file() && out.join("_manifest.json").is_file());
    let b = read_output(&out);
    assert_eq!(b.num_rows(), rows.len());

    // Types of the contract.
    let s = b.schema();
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "lang",
            "text",
            "sentiment_label",
            "sentiment_score",
            "sentiment_scores",
            "sentiment_polarity",
            "sentiment_truncated",
            "emb_embedding",
            "emb_truncated",
            "first_embedding",
            "first_truncated",
            "fill_predictions",
            "fill_truncated"
        ]
    );
    assert_eq!(
        s.field_with_name("sentiment_score").unwrap().data_type(),
        &DataType::Float32
    );
    assert!(
        matches!(s.field_with_name("emb_embedding").unwrap().data_type(), DataType::FixedSizeList(f, 64) if f.data_type() == &DataType::Float32)
    );
    let DataType::Struct(fields) = s.field_with_name("sentiment_scores").unwrap().data_type()
    else {
        panic!("scores not a struct")
    };
    assert_eq!(
        fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        ["negative", "neutral", "positive"]
    );

    assert_values_match_the_reference(&fx, &rows, &b);

    // SQL over the output: an aggregate and a struct field.
    let sql = ok(mbpipe(
        tmp.path(),
        &["sql", "--table", "o=out", "--format", "csv", "SELECT count(*) AS n, count(sentiment_label) AS labelled, sum(CASE WHEN sentiment_scores['positive'] >= 0 THEN 1 ELSE 0 END) AS s FROM o"],
    ));
    assert_eq!(sql.lines().nth(1), Some("15,14,14"), "{sql}");

    // pyarrow reads the folder too (CI installs it; skipped with a message where absent).
    let py = std::process::Command::new("python3")
        .args(["-c", "import sys, pyarrow.dataset as ds; t = ds.dataset(sys.argv[1], format='parquet').to_table(); print(t.num_rows, t.schema.field('emb_embedding').type)", out.to_str().unwrap()])
        .output();
    match py {
        Ok(o) if o.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                "15 fixed_size_list<item: float>[64]"
            );
        }
        _ => eprintln!("SKIPPED pyarrow check: python3 with pyarrow not available"),
    }

    // A second run finds the output complete and does nothing.
    let again = mbpipe(tmp.path(), &["run", "p.toml"]);
    assert!(again.status.success());
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );
}

/// `MBPIPE_AVX512=0` runs every kernel as a CPU with AVX2 alone does, the only way an AVX-512
/// machine's tests reach that path end to end: `validate` names the AVX2 kernels for each
/// precision, and the f32 run's every value stays within [`TOL`] of transformers.
#[test]
fn without_avx512_every_value_still_matches_the_reference() {
    let Some(fx) = fixture() else { return };
    let (tmp, rows) = fixture_pipeline(&fx);
    let no_avx512 = [("MBPIPE_AVX512", "0")];
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    for dtype in ["f32", "bf16", "int8"] {
        let plan = ok(mbpipe_with_env(
            tmp.path(),
            &["validate", "p.toml", "--dtype", dtype],
            &no_avx512,
        ));
        assert!(!plan.contains("AVX-512") && !plan.contains("AMX"), "{plan}");
        if avx2 {
            assert!(plan.contains("f32 GEMM AVX2, attention AVX2"), "{plan}");
        }
    }
    ok(mbpipe_with_env(
        tmp.path(),
        &["run", "p.toml", "--max-batch-tokens", "200"],
        &no_avx512,
    ));
    assert_values_match_the_reference(&fx, &rows, &read_output(&tmp.path().join("out")));
}

#[test]
fn zero_shot_scores_follow_the_masked_lm_reference() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Rendered through the template these are fixture texts 1 and 2 exactly.
    let inputs = [
        "I absolutely love this product!",
        "This is the worst experience I've ever had.",
    ];
    let body: String = inputs
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(tmp.path().join("in.jsonl"), body).unwrap();
    let toml = format!(
        r#"[input]
path = "in.jsonl"
[output]
path = "zs"
[[tasks]]
name = "mood"
kind = "zero_shot"
model = "{}"
template = "{{text}} Overall, it was a [MASK] experience."
labels = {{ negative = "bad", neutral = "okay", positive = "great" }}
weights = {{ negative = -1, positive = 1 }}
"#,
        fx.model("mlm")
    );
    std::fs::write(tmp.path().join("zs.toml"), toml).unwrap();
    ok(mbpipe(tmp.path(), &["validate", "zs.toml"]));
    ok(mbpipe(tmp.path(), &["run", "zs.toml"]));
    let b = read_output(&tmp.path().join("zs"));
    let tok = tokenizers::Tokenizer::from_file(fx.dir.join("tokenizer.json")).unwrap();
    let word_ids: Vec<usize> = [" bad", " okay", " great"]
        .iter()
        .map(|w| tok.encode(*w, false).unwrap().get_ids()[0] as usize)
        .collect();
    let scores = b.column_by_name("mood_scores").unwrap().as_struct();
    for (row, i) in [1usize, 2].iter().enumerate() {
        let logits = fx.vec(&format!("mlm_logits.{i}")).unwrap();
        let want = softmax(&word_ids.iter().map(|&w| logits[w]).collect::<Vec<_>>());
        let got: Vec<f32> = (0..3)
            .map(|k| scores.column(k).as_primitive::<Float32Type>().value(row))
            .collect();
        assert_close(&got, &want, TOL, &format!("zero-shot row {row}"));
        let pol = b
            .column_by_name("mood_polarity")
            .unwrap()
            .as_primitive::<Float32Type>()
            .value(row);
        assert!((pol - (want[2] - want[0])).abs() < TOL);
    }
}

#[test]
fn long_texts_are_truncated_and_flagged_not_dropped() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n{}\n",
        serde_json::json!({"text": "short"}),
        serde_json::json!({"text": "word ".repeat(5000)})
    );
    std::fs::write(tmp.path().join("in.jsonl"), body).unwrap();
    let toml = format!(
        "[input]\npath = \"in.jsonl\"\n[output]\npath = \"o\"\n[[tasks]]\nname = \"c\"\nkind = \"classify\"\nmodel = \"{}\"\nmax_length = 32\n",
        fx.model("classifier")
    );
    std::fs::write(tmp.path().join("t.toml"), toml).unwrap();
    ok(mbpipe(tmp.path(), &["run", "t.toml"]));
    let b = read_output(&tmp.path().join("o"));
    let t = b.column_by_name("c_truncated").unwrap().as_boolean();
    assert_eq!((t.value(0), t.value(1)), (false, true));
    assert!(b.column_by_name("c_label").unwrap().is_valid(1));
}

#[test]
fn invalid_pipelines_exit_with_code_2_and_say_why() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(&fx, tmp.path());
    let cases = [
        (pipeline_toml(&fx, "").replace("top_k = 5", "top_k = 5\ntemplate = \"x\""), "`template` does not apply"),
        (pipeline_toml(&fx, "").replace("text = \"text\"", "text = \"{body}\""), "column `body`"),
        (pipeline_toml(&fx, "").replace("kind = \"classify\"", "kind = \"classify\"\nbogus = 1"), "bogus"),
        (pipeline_toml(&fx, "").replace(&fx.model("classifier"), &fx.model("mlm")), "no sequence-classification head"),
        (
            pipeline_toml(&fx, &format!("[[tasks]]\nname = \"z\"\nkind = \"zero_shot\"\nmodel = \"{}\"\ntemplate = \"{{text}} [MASK]\"\nlabels = {{ a = \"supercalifragilistic\", b = \"ok\" }}\n", fx.model("mlm"))),
            "must be exactly one token",
        ),
    ];
    for (toml, needle) in cases {
        std::fs::write(tmp.path().join("bad.toml"), &toml).unwrap();
        for cmd in ["validate", "run"] {
            let o = mbpipe(tmp.path(), &[cmd, "bad.toml"]);
            assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(needle),
                "{cmd}: expected {needle:?} in: {}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn shipped_pipelines_validate_offline_up_to_the_download() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "pipelines/: {files:?}");
    for f in files {
        let o = mbpipe(root, &["validate", f.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        let out = crate::util::stdout(&o);
        assert!(out.contains("ok: input"), "{}: {out}", f.display());
    }
}

/// `pipelines/moderation.toml` as shipped: offline, on the trained models in
/// `sample_data/models`, over `sample_data/comments*.jsonl`. Every label, score, polarity,
/// truncation flag and embedding value is compared with the reference outputs that
/// `scripts/train/train_models.py` computed with Hugging Face transformers in float32
/// (`sample_data/models/expected/moderation.jsonl`). Tolerance: 1e-4 absolute (`TOL`).
#[test]
fn shipped_moderation_pipeline_matches_transformers_on_the_shipped_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected: Vec<serde_json::Value> =
        std::fs::read_to_string(root.join("sample_data/models/expected/moderation.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    // The shipped file, with its sample_data paths made absolute so the run writes to a temp dir.
    let toml = std::fs::read_to_string(root.join("pipelines/moderation.toml"))
        .unwrap()
        .replace(
            "\"sample_data/",
            &format!("\"{}/sample_data/", root.display()),
        );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("moderation.toml"), toml).unwrap();
    ok(mbpipe(tmp.path(), &["run", "moderation.toml"]));
    let b = read_output(&tmp.path().join("out/moderation"));
    assert_eq!(b.num_rows(), expected.len());

    let col = |name: &str| {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .clone()
    };
    let ids = col("id");
    let ids = ids.as_primitive::<arrow::datatypes::Int64Type>();
    let emb = col("embedding_embedding");
    let emb = emb.as_fixed_size_list();
    let polarity = col("sentiment_polarity");
    let polarity = polarity.as_primitive::<Float32Type>();
    for (row, want) in expected.iter().enumerate() {
        assert_eq!(ids.value(row), want["id"].as_i64().unwrap(), "row order");
        let id = ids.value(row);
        for (task, labels) in [
            (
                "moderation",
                &["hate_speech", "offensive_language", "neither"][..],
            ),
            ("sentiment", &["negative", "neutral", "positive"][..]),
        ] {
            let label = col(&format!("{task}_label"));
            let label = label.as_string::<i32>();
            let score = col(&format!("{task}_score"));
            let score = score.as_primitive::<Float32Type>();
            let scores = col(&format!("{task}_scores"));
            let scores = scores.as_struct();
            let truncated = col(&format!("{task}_truncated"));
            let truncated = truncated.as_boolean();
            let w = &want[task];
            if w.is_null() {
                assert!(
                    label.is_null(row) && scores.is_null(row),
                    "id {id}: {task} of a null text"
                );
                continue;
            }
            assert_eq!(scores.num_columns(), labels.len());
            let got: Vec<f32> = (0..labels.len())
                .map(|k| scores.column(k).as_primitive::<Float32Type>().value(row))
                .collect();
            let probs: Vec<f32> = labels
                .iter()
                .map(|l| w["scores"][*l].as_f64().unwrap() as f32)
                .collect();
            assert_close(&got, &probs, TOL, &format!("id {id}: {task} scores"));
            assert_eq!(
                label.value(row),
                w["label"].as_str().unwrap(),
                "id {id}: {task} label"
            );
            let best = probs.iter().copied().fold(0f32, f32::max);
            assert!(
                (score.value(row) - best).abs() < TOL,
                "id {id}: {task} score"
            );
            assert_eq!(
                truncated.value(row),
                w["truncated"].as_bool().unwrap(),
                "id {id}: {task} truncated"
            );
        }
        if want["embedding"].is_null() {
            assert!(
                emb.is_null(row) && polarity.is_null(row),
                "id {id}: null text"
            );
            continue;
        }
        let p = want["sentiment"]["polarity"].as_f64().unwrap() as f32;
        assert!(
            (polarity.value(row) - p).abs() < TOL,
            "id {id}: polarity {} vs {p}",
            polarity.value(row)
        );
        let e: Vec<f32> = emb
            .value(row)
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        let we: Vec<f32> = want["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_close(&e, &we, TOL, &format!("id {id}: embedding"));
        let t = col("embedding_truncated");
        assert_eq!(
            t.as_boolean().value(row),
            want["embedding_truncated"].as_bool().unwrap()
        );
    }
}

/// Text stored dictionary-encoded (pandas categoricals, Parquet written with the Arrow schema)
/// gives exactly the outputs of the same text stored plain, and passes through as written.
#[test]
fn dictionary_encoded_text_gives_the_plain_texts_outputs() {
    use arrow::array::DictionaryArray;
    use arrow::datatypes::Int32Type;

    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
    let dict: DictionaryArray<Int32Type> = texts.iter().copied().collect();
    let plain = StringArray::from(texts.clone());
    for (name, array) in [
        ("dict", Arc::new(dict) as arrow::array::ArrayRef),
        ("plain", Arc::new(plain)),
    ] {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "text",
            array.data_type().clone(),
            false,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![array]).unwrap();
        let f = std::fs::File::create(tmp.path().join(format!("{name}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let toml = format!(
            "[input]\npath = \"{name}.parquet\"\n[output]\npath = \"out_{name}\"\n[[tasks]]\nname = \"c\"\nkind = \"classify\"\nmodel = \"{}\"\n",
            fx.model("classifier")
        );
        std::fs::write(tmp.path().join(format!("{name}.toml")), toml).unwrap();
        ok(mbpipe(tmp.path(), &["run", &format!("{name}.toml")]));
    }
    let (d, p) = (
        read_output(&tmp.path().join("out_dict")),
        read_output(&tmp.path().join("out_plain")),
    );
    assert!(matches!(
        d.column_by_name("text").unwrap().data_type(),
        DataType::Dictionary(..)
    ));
    for col in ["c_label", "c_score", "c_scores"] {
        assert_eq!(
            d.column_by_name(col).unwrap(),
            p.column_by_name(col).unwrap(),
            "{col}"
        );
    }
}

/// Tasks that feed a model the same text share one encoder pass (the manifest counts the tokens
/// each pass runs): a classifier and an embedding without prefix on one model run it once, and
/// the classifier's columns are those of a run on its own; an embedding with a prefix is
/// another input, another pass.
#[test]
fn tasks_that_feed_a_model_the_same_text_share_one_encoder_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/moderation");
    let comments = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/comments.jsonl");
    let run = |name: &str, tasks: &[&str]| {
        let mut toml = format!(
            "[input]\npath = \"{}\"\n[output]\npath = \"{name}\"\n",
            comments.display()
        );
        for t in tasks {
            toml += &format!("[[tasks]]\nmodel = \"{}\"\n{t}\n", model.display());
        }
        std::fs::write(tmp.path().join(format!("{name}.toml")), toml).unwrap();
        ok(mbpipe(tmp.path(), &["run", &format!("{name}.toml")]));
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(name).join("_manifest.json")).unwrap(),
        )
        .unwrap();
        let tokens = manifest["tokens"].as_u64().unwrap();
        (tokens, read_output(&tmp.path().join(name)))
    };
    let classify = "name = \"mod\"\nkind = \"classify\"";
    let (alone, alone_out) = run("alone", &[classify]);
    let (shared, shared_out) = run("shared", &[classify, "name = \"emb\"\nkind = \"embed\""]);
    assert!(alone > 0);
    assert_eq!(shared, alone, "one encoder pass for both tasks");
    for col in ["mod_label", "mod_score", "mod_scores"] {
        assert_eq!(
            shared_out.column_by_name(col).unwrap(),
            alone_out.column_by_name(col).unwrap(),
            "{col}"
        );
    }
    let (prefixed, _) = run(
        "prefixed",
        &[
            classify,
            "name = \"emb\"\nkind = \"embed\"\nprefix = \"query: \"",
        ],
    );
    assert!(
        prefixed > 2 * alone,
        "{prefixed} tokens: two passes, the second longer"
    );
}
