//! Integration tests: tables built in a temp dir, queried through the public API.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type};
use mbpipe_sql::{query_batches, run_query, OutputFormat, SqlError, TableSource};
use parquet::arrow::ArrowWriter;

/// One part file of a toxicity run: `id`, `label` and a `toxicity_scores` struct.
fn part(ids: &[i64], labels: &[&str], insult: &[f32]) -> RecordBatch {
    let scores = StructArray::from(vec![
        (
            Arc::new(Field::new("insult", DataType::Float32, false)),
            Arc::new(Float32Array::from(insult.to_vec())) as ArrayRef,
        ),
        (
            Arc::new(Field::new("threat", DataType::Float32, false)),
            Arc::new(Float32Array::from(vec![0.0f32; insult.len()])) as ArrayRef,
        ),
    ]);
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        (
            "label",
            Arc::new(StringArray::from(labels.to_vec())) as ArrayRef,
        ),
        ("toxicity_scores", Arc::new(scores) as ArrayRef),
    ])
    .unwrap()
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// An output directory as the pipeline leaves it: two parts, a manifest, an unfinished part.
fn output_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Written out of order, so name order is not creation order.
    write_parquet(
        &dir.path().join("part-00001.parquet"),
        &part(&[4, 5], &["toxic", "ok"], &[0.7, 0.1]),
    );
    write_parquet(
        &dir.path().join("part-00000.parquet"),
        &part(&[1, 2, 3], &["ok", "toxic", "ok"], &[0.05, 0.9, 0.2]),
    );
    std::fs::write(dir.path().join("_manifest.json"), r#"{"parts": 2}"#).unwrap();
    // A part still being written: a valid file that must not be read.
    write_parquet(
        &dir.path().join(".part-00002.parquet.tmp"),
        &part(&[6], &["toxic"], &[0.99]),
    );
    dir
}

fn table(name: &str, path: &Path) -> TableSource {
    format!("{name}={}", path.display()).parse().unwrap()
}

fn i64s(batches: &[RecordBatch], col: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(col).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

fn strings(batches: &[RecordBatch], col: usize) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(col), &DataType::Utf8).unwrap();
        let col = col.as_string::<i32>();
        out.extend((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i).to_owned())));
    }
    out
}

#[tokio::test]
async fn count_reads_only_visible_part_files() {
    let dir = output_dir();
    let batches = query_batches(&[table("out", dir.path())], "SELECT count(*) FROM out")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![5]);
}

#[tokio::test]
async fn group_by_label() {
    let dir = output_dir();
    let batches = query_batches(
        &[table("out", dir.path())],
        "SELECT label, count(*) AS n FROM out GROUP BY label ORDER BY label",
    )
    .await
    .unwrap();
    assert_eq!(
        strings(&batches, 0),
        vec![Some("ok".to_owned()), Some("toxic".to_owned())]
    );
    assert_eq!(i64s(&batches, 1), vec![3, 2]);
}

#[tokio::test]
async fn struct_field_filter() {
    let dir = output_dir();
    let batches = query_batches(
        &[table("t", dir.path())],
        "SELECT id, toxicity_scores['insult'] AS insult FROM t \
         WHERE toxicity_scores['insult'] > 0.5 ORDER BY id",
    )
    .await
    .unwrap();
    assert_eq!(i64s(&batches, 0), vec![2, 4]);
    let insult: Vec<f32> = batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Float32Type>().values().to_vec())
        .collect();
    assert_eq!(insult, vec![0.9, 0.7]);
}

#[tokio::test]
async fn plain_select_keeps_part_order() {
    let dir = output_dir();
    let batches = query_batches(&[table("out", dir.path())], "SELECT id FROM out")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn single_parquet_file() {
    let dir = output_dir();
    let file = dir.path().join("part-00001.parquet");
    let batches = query_batches(&[table("p", &file)], "SELECT id FROM p")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![4, 5]);
}

#[tokio::test]
async fn glob_characters_and_dot_dot_in_paths_are_literal() {
    let dir = output_dir();
    let odd = dir.path().join("run [1]*");
    std::fs::create_dir(&odd).unwrap();
    std::fs::copy(
        dir.path().join("part-00001.parquet"),
        odd.join("part-00000.parquet"),
    )
    .unwrap();
    let via_parent = odd.join("..").join("run [1]*");
    let batches = query_batches(&[table("o", &via_parent)], "SELECT id FROM o")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![4, 5]);
}

#[tokio::test]
async fn arrow_ipc_parts() {
    let dir = tempfile::tempdir().unwrap();
    for (name, batch) in [
        (
            "part-00000.arrow",
            part(&[1, 2], &["ok", "ok"], &[0.1, 0.2]),
        ),
        ("part-00001.arrow", part(&[3], &["toxic"], &[0.8])),
    ] {
        let file = File::create(dir.path().join(name)).unwrap();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &batch.schema()).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
    }
    std::fs::write(dir.path().join("_manifest.json"), "{}").unwrap();
    let batches = query_batches(
        &[table("a", dir.path())],
        "SELECT id FROM a WHERE toxicity_scores['insult'] < 0.5",
    )
    .await
    .unwrap();
    assert_eq!(i64s(&batches, 0), vec![1, 2]);
}

#[tokio::test]
async fn jsonl_table_with_null_text_joined_to_output() {
    let dir = output_dir();
    let jsonl = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    std::fs::write(
        jsonl.path(),
        "{\"id\":1,\"text\":\"hello\"}\n{\"id\":2,\"text\":null}\n{\"id\":4,\"text\":\"\"}\n",
    )
    .unwrap();
    let tables = [table("comments", jsonl.path()), table("out", dir.path())];
    let batches = query_batches(
        &tables,
        "SELECT c.id, c.text, o.label FROM comments c JOIN out o ON c.id = o.id ORDER BY c.id",
    )
    .await
    .unwrap();
    assert_eq!(i64s(&batches, 0), vec![1, 2, 4]);
    assert_eq!(
        strings(&batches, 1),
        vec![Some("hello".to_owned()), None, Some(String::new())]
    );
    assert_eq!(
        strings(&batches, 2),
        vec![
            Some("ok".to_owned()),
            Some("toxic".to_owned()),
            Some("toxic".to_owned())
        ]
    );
}

#[tokio::test]
async fn ndjson_extension_and_case_insensitive_name() {
    let file = tempfile::Builder::new()
        .suffix(".ndjson")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), "{\"a\":1}\n{\"a\":2}\n").unwrap();
    let batches = query_batches(&[table("Rows", file.path())], "SELECT sum(a) FROM rows")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![3]);
}

#[tokio::test]
async fn sample_data_jsonl_and_parquet_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample_data");
    let tables = [
        table("j", &root.join("comments.jsonl")),
        table("p", &root.join("comments.parquet")),
    ];
    let query = "SELECT (SELECT count(*) FROM j) AS nj, (SELECT count(*) FROM p) AS np, \
                 (SELECT count(*) FROM j JOIN p ON j.id = p.id \
                  AND j.text IS NOT DISTINCT FROM p.text) AS same";
    let batches = query_batches(&tables, query).await.unwrap();
    for col in 0..3 {
        assert_eq!(i64s(&batches, col), vec![120], "column {col}");
    }
}

#[tokio::test]
async fn bad_table_spec_is_an_error() {
    let err = "out".parse::<TableSource>().unwrap_err();
    assert!(err.to_string().contains("expected NAME=PATH"), "{err}");
    let err = "my-out=x".parse::<TableSource>().unwrap_err();
    assert!(matches!(err, SqlError::TableName { .. }), "{err}");
    // A struct literal skips `FromStr`; registration checks the name again.
    let bad = TableSource {
        name: "1x".to_owned(),
        path: "x".into(),
    };
    let err = query_batches(&[bad], "SELECT 1").await.unwrap_err();
    assert!(matches!(err, SqlError::TableName { .. }), "{err}");
}

#[tokio::test]
async fn missing_path_names_table_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("x");
    let err = query_batches(&[table("out", &missing)], "SELECT * FROM out")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::MissingPath { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "table `out`: no such file or directory: {}",
            missing.display()
        )
    );
}

#[tokio::test]
async fn unreadable_sources_are_errors() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("_manifest.json"), "{}").unwrap();
    let err = query_batches(&[table("e", empty.path())], "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("found none"), "{err}");

    let csv = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    let err = query_batches(&[table("c", csv.path())], "SELECT 1")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Unsupported { .. }), "{err}");

    let corrupt = tempfile::Builder::new()
        .suffix(".parquet")
        .tempfile()
        .unwrap();
    std::fs::write(corrupt.path(), b"not parquet at all").unwrap();
    let err = query_batches(&[table("bad", corrupt.path())], "SELECT 1")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Register { .. }), "{err}");
    assert!(
        err.to_string().starts_with("table `bad`: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn duplicate_table_names_are_errors() {
    let dir = output_dir();
    let tables = [table("out", dir.path()), table("OUT", dir.path())];
    let err = query_batches(&tables, "SELECT 1").await.unwrap_err();
    assert!(matches!(err, SqlError::DuplicateTable { .. }), "{err}");
}

#[tokio::test]
async fn bad_sql_passes_datafusion_message() {
    let dir = output_dir();
    let tables = [table("out", dir.path())];
    let err = query_batches(&tables, "SELEC id FROM out")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Query(_)), "{err}");
    assert!(err.to_string().contains("SELEC"), "{err}");
    let err = query_batches(&tables, "SELECT nope FROM out")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn writing_statements_are_refused() {
    let dir = output_dir();
    let target = dir.path().join("copy");
    let query = format!("COPY out TO '{}' STORED AS PARQUET", target.display());
    let err = query_batches(&[table("out", dir.path())], &query)
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Query(_)), "{err}");
    assert!(!target.exists());
}

async fn render(query: &str, format: OutputFormat) -> (u64, String) {
    let dir = output_dir();
    let mut out = Vec::new();
    let rows = run_query(&[table("out", dir.path())], query, format, &mut out)
        .await
        .unwrap();
    (rows, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn table_output() {
    let (rows, text) = render(
        "SELECT id, label FROM out WHERE id < 3",
        OutputFormat::Table,
    )
    .await;
    assert_eq!(rows, 2);
    let expected = "\
+----+-------+
| id | label |
+----+-------+
| 1  | ok    |
| 2  | toxic |
+----+-------+
";
    assert_eq!(text, expected);
}

#[tokio::test]
async fn csv_output_writes_structs_as_json() {
    let (rows, text) = render(
        "SELECT id, label, toxicity_scores FROM out WHERE id = 2",
        OutputFormat::Csv,
    )
    .await;
    assert_eq!(rows, 1);
    assert_eq!(
        text,
        "id,label,toxicity_scores\n2,toxic,\"{\"\"insult\"\":0.9,\"\"threat\"\":0.0}\"\n"
    );
}

#[tokio::test]
async fn csv_output_without_rows_keeps_header() {
    let (rows, text) = render("SELECT id, label FROM out WHERE id > 99", OutputFormat::Csv).await;
    assert_eq!(rows, 0);
    assert_eq!(text, "id,label\n");
}

#[tokio::test]
async fn json_output_is_one_object_per_line() {
    let (rows, text) = render("SELECT id, toxicity_scores FROM out", OutputFormat::Json).await;
    assert_eq!(rows, 5);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[1]["id"], 2);
    let insult = lines[1]["toxicity_scores"]["insult"].as_f64().unwrap();
    assert!((insult - 0.9).abs() < 1e-6, "{insult}");
}

#[tokio::test]
async fn a_folder_mixing_formats_is_refused_and_a_glob_picks_one() {
    let dir = output_dir();
    std::fs::write(dir.path().join("raw.jsonl"), "{\"id\":9,\"text\":\"x\"}\n").unwrap();
    let err = query_batches(&[table("o", dir.path())], "SELECT id FROM o")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("found 2 .parquet and 1 .jsonl/.ndjson files") && err.contains("glob"),
        "{err}"
    );
    let parts = dir.path().join("part-*.parquet");
    let batches = query_batches(&[table("o", &parts)], "SELECT id FROM o")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![1, 2, 3, 4, 5]);
    let json = dir.path().join("*.jsonl");
    let batches = query_batches(&[table("j", &json)], "SELECT id FROM j")
        .await
        .unwrap();
    assert_eq!(i64s(&batches, 0), vec![9]);
    let none = dir.path().join("nothing-*.parquet");
    let err = query_batches(&[table("n", &none)], "SELECT 1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("found none matching the glob"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_table_name_lists_the_tables_given() {
    let dir = output_dir();
    let tables = [table("out", dir.path()), table("raw", dir.path())];
    let err = query_batches(&tables, "SELECT * FROM outt")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::UnknownTable { .. }), "{err}");
    assert!(
        err.to_string().contains("outt")
            && err.to_string().contains("the tables given are: out, raw"),
        "{err}"
    );
}
