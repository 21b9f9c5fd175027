//! End-to-end tests: files on disk through expand/schema/source, and the sinks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::*;

pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(crate) fn opts(on_error: OnError) -> SourceOptions {
    SourceOptions {
        on_error,
        string_columns: vec!["text".into()],
        ..SourceOptions::default()
    }
}

/// Reads everything a spec names, with the unified schema.
fn read_all(spec: &str, opts: SourceOptions) -> Vec<Result<SourceItem, IoError>> {
    let files = expand_inputs(spec).unwrap();
    let schema = unified_schema(&files).unwrap();
    open_source(files, schema, opts).unwrap().collect()
}

pub(crate) fn batches(items: &[Result<SourceItem, IoError>]) -> Vec<&SourceBatch> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(SourceItem::Batch(b)) => Some(b),
            _ => None,
        })
        .collect()
}

fn rejections(items: &[Result<SourceItem, IoError>]) -> Vec<&Rejection> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(SourceItem::Rejected(r)) => Some(r),
            _ => None,
        })
        .collect()
}

pub(crate) fn texts(b: &SourceBatch) -> Vec<Option<String>> {
    let col = b.batch.column_by_name("text").unwrap().as_string::<i32>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
        .collect()
}

#[test]
fn bom_crlf_and_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "a.jsonl",
        b"\xEF\xBB\xBF{\"text\":\"one\"}\r\n\r\n  \t\r\n{\"text\":\"two\"}\r\n\n{\"id\":3}",
    );
    let items = read_all(p.to_str().unwrap(), opts(OnError::Fail));
    let b = batches(&items);
    assert_eq!(b.len(), 1);
    assert_eq!(texts(b[0]), [Some("one".into()), Some("two".into()), None]);
    assert_eq!(b[0].lines.as_deref(), Some(&[1, 4, 6][..]));
    assert_eq!(
        b[0].origin(2),
        RowOrigin {
            file: 0,
            row: 2,
            line: Some(6)
        }
    );
}

#[test]
fn malformed_line_fails_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..15 {
        text.push_str(&format!("{{\"text\":\"row {i}\"}}\n"));
    }
    text.push('\n'); // line 16 is blank: line numbers keep counting
    text.push_str("{\"text\": \"x\" \"id\": 1}\n{\"text\":\"after\"}\n");
    let p = write(dir.path(), "comments.jsonl", text.as_bytes());
    let items = read_all(p.to_str().unwrap(), opts(OnError::Fail));
    // The good rows before the bad line come first, then the error ends the stream.
    assert_eq!(items.len(), 2);
    assert_eq!(batches(&items)[0].batch.num_rows(), 15);
    let err = items[1].as_ref().unwrap_err();
    assert!(matches!(
        err,
        IoError::Row {
            line: Some(17),
            row: Some(15),
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.ends_with("comments.jsonl:17: invalid JSON: expected `,` or `}` at column 14"),
        "{msg}"
    );
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "u.jsonl",
        b"{\"text\":\"ok\"}\n{\"text\":\"\xc3\x28\"}\n",
    );
    let items = read_all(p.to_str().unwrap(), opts(OnError::Fail));
    let msg = items.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(msg.contains("u.jsonl:2: invalid UTF-8"), "{msg}");

    let items = read_all(p.to_str().unwrap(), opts(OnError::Skip));
    assert_eq!(rejections(&items)[0].line, Some(2));
    assert_eq!(batches(&items)[0].batch.num_rows(), 1);
}

#[test]
fn non_string_text_is_rejected_with_skip_and_fails_with_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.jsonl",
        b"{\"text\":\"a\"}\n{\"text\":{\"x\":1}}\n{\"text\":\"b\"}\n{\"text\":42}\n[1]\n{\"text\":\"c\"}\n",
    );
    let spec = p.to_str().unwrap();
    let items = read_all(spec, opts(OnError::Skip));
    let rej = rejections(&items);
    let got: Vec<_> = rej.iter().map(|r| (r.line, r.row)).collect();
    assert_eq!(
        got,
        [(Some(2), Some(1)), (Some(4), Some(3)), (Some(5), Some(4))]
    );
    assert!(rej[0]
        .reason
        .contains("must be a string or null, found an object"));
    assert!(rej[1].reason.contains("found a number"));
    assert!(rej[2].reason.contains("expected a JSON object"));
    assert_eq!(rej[0].path, p);
    // Batches stay contiguous in file rows: they are cut at each rejected row.
    let b = batches(&items);
    let spans: Vec<_> = b
        .iter()
        .map(|b| (b.first_row, b.batch.num_rows()))
        .collect();
    assert_eq!(spans, [(0, 1), (2, 1), (5, 1)]);
    assert_eq!(texts(b[2]), [Some("c".into())]);

    let items = read_all(spec, opts(OnError::Fail));
    assert_eq!(items.len(), 2);
    let err = items[1].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("t.jsonl:2: field `text` must be a string or null"),
        "{err}"
    );
}

#[test]
fn value_that_does_not_fit_the_schema_is_a_row_error() {
    let dir = tempfile::tempdir().unwrap();
    // 1001 integers outvote one string: line 1002 does not fit the Int64 column.
    let mut text = String::new();
    for i in 0..1001 {
        text.push_str(&format!("{{\"id\":{i},\"text\":\"t\"}}\n"));
    }
    text.push_str("{\"id\":\"abc\",\"text\":\"bad\"}\n{\"id\":7,\"text\":\"last\"}\n");
    let p = write(dir.path(), "s.jsonl", text.as_bytes());
    let mut o = opts(OnError::Skip);
    o.batch_rows = 500;
    let items = read_all(p.to_str().unwrap(), o);
    let rej = rejections(&items);
    assert_eq!(rej.len(), 1);
    assert_eq!((rej[0].line, rej[0].row), (Some(1002), Some(1001)));
    assert!(
        rej[0]
            .reason
            .contains("column `id`: expected an integer from -2^63 to 2^63-1 (Int64), found the string \"abc\""),
        "{}",
        rej[0].reason
    );
    let b = batches(&items);
    let total: usize = b.iter().map(|b| b.batch.num_rows()).sum();
    assert_eq!(total, 1002);
    let last = b.last().unwrap();
    assert_eq!(last.first_row, 1002);
    assert_eq!(last.batch.column(0).as_primitive::<Int64Type>().value(0), 7);
}

#[test]
fn batches_respect_batch_rows() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..5).map(|i| format!("{{\"text\":\"{i}\"}}\n")).collect();
    let p = write(dir.path(), "b.ndjson", text.as_bytes());
    let mut o = opts(OnError::Fail);
    o.batch_rows = 2;
    let items = read_all(p.to_str().unwrap(), o);
    let spans: Vec<_> = batches(&items)
        .iter()
        .map(|b| (b.first_row, b.batch.num_rows()))
        .collect();
    assert_eq!(spans, [(0, 2), (2, 2), (4, 1)]);
}

#[test]
fn gzip_and_zstd_files() {
    let dir = tempfile::tempdir().unwrap();
    // Two gzip members back to back, as `cat a.gz b.gz` makes.
    let mut gz = Vec::new();
    for part in ["{\"text\":\"g1\"}\n", "{\"text\":\"g2\"}\n"] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(part.as_bytes()).unwrap();
        gz.extend(e.finish().unwrap());
    }
    write(dir.path(), "a.jsonl.gz", &gz);
    let zst = zstd::encode_all(&b"{\"text\":\"z1\"}\r\n{\"text\":\"z2\"}"[..], 3).unwrap();
    write(dir.path(), "b.jsonl.zst", &zst);
    let items = read_all(dir.path().to_str().unwrap(), opts(OnError::Fail));
    let b = batches(&items);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].file, b[1].file), (0, 1));
    assert_eq!(texts(b[0]), [Some("g1".into()), Some("g2".into())]);
    assert_eq!(texts(b[1]), [Some("z1".into()), Some("z2".into())]);
}

#[test]
fn corrupt_gzip_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.jsonl.gz",
        b"\x1f\x8b\x08\x00garbage-not-deflate",
    );
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let err = unified_schema(&files).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl.gz"), "{err}");
}

fn sample_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")])),
        ],
    )
    .unwrap()
}

#[test]
fn parquet_round_trip_through_part_writer() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample_batch();
    let mut w = PartWriter::create(dir.path(), 0, batch.schema(), OutputFormat::Parquet).unwrap();
    w.write(&batch).unwrap();
    w.write(&batch.slice(0, 1)).unwrap();
    assert_eq!(w.rows(), 4);
    let path = w.finish().unwrap();
    assert_eq!(path, dir.path().join("part-00000.parquet"));

    let mut o = opts(OnError::Fail);
    o.batch_rows = 3;
    let items = read_all(dir.path().to_str().unwrap(), o);
    let b = batches(&items);
    let spans: Vec<_> = b
        .iter()
        .map(|b| (b.first_row, b.batch.num_rows()))
        .collect();
    assert_eq!(spans, [(0, 3), (3, 1)]);
    assert!(b[0].lines.is_none());
    assert_eq!(
        b[0].batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .values(),
        &[1, 2, 3]
    );
    assert_eq!(texts(b[0]), [Some("a".into()), None, Some("ccc".into())]);
}

/// `batch` written as a Parquet file and read back with `text` limited to 2 bytes, skipping.
fn read_with_a_2_byte_limit(batch: &RecordBatch) -> Vec<Result<SourceItem, IoError>> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = PartWriter::create(dir.path(), 0, batch.schema(), OutputFormat::Parquet).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    let mut o = opts(OnError::Skip);
    o.max_text_bytes = Some(2);
    read_all(dir.path().to_str().unwrap(), o)
}

#[test]
fn parquet_long_text_is_rejected_by_row() {
    let items = read_with_a_2_byte_limit(&sample_batch());
    let rej = rejections(&items);
    assert_eq!((rej[0].line, rej[0].row), (None, Some(2)));
    assert!(rej[0].reason.contains("3 bytes"));
    let spans: Vec<_> = batches(&items)
        .iter()
        .map(|b| (b.first_row, b.batch.num_rows()))
        .collect();
    assert_eq!(spans, [(0, 2)]);
}

/// Dictionary-encoded strings (pandas categoricals) are text like any other: accepted as a text
/// column, passed through with their type, and held to the same size limit.
#[test]
fn dictionary_encoded_text_is_read_and_checked_like_plain_text() {
    use arrow::array::DictionaryArray;
    use arrow::datatypes::Int32Type;

    let text: DictionaryArray<Int32Type> = vec![Some("a"), None, Some("ccc")].into_iter().collect();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "text",
        text.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(text)]).unwrap();
    let items = read_with_a_2_byte_limit(&batch);
    let rej = rejections(&items);
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].row, Some(2));
    assert!(rej[0].reason.contains("3 bytes"), "{}", rej[0].reason);
    let b = batches(&items);
    assert_eq!(b[0].batch.num_rows(), 2);
    assert!(matches!(
        b[0].batch.column(0).data_type(),
        DataType::Dictionary(..)
    ));
}

#[test]
fn arrow_ipc_part_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample_batch();
    let mut w = PartWriter::create(dir.path(), 12, batch.schema(), OutputFormat::ArrowIpc).unwrap();
    w.write(&batch).unwrap();
    let path = w.finish().unwrap();
    assert_eq!(path.file_name().unwrap(), "part-00012.arrow");
    let r =
        arrow::ipc::reader::FileReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
    let back: Vec<_> = r.map(|b| b.unwrap()).collect();
    assert_eq!(back, [batch]);
}

#[test]
fn truncated_parquet_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample_batch();
    let mut w = PartWriter::create(dir.path(), 0, batch.schema(), OutputFormat::Parquet).unwrap();
    w.write(&batch).unwrap();
    let good = std::fs::read(w.finish().unwrap()).unwrap();
    let p = write(dir.path(), "cut.parquet", &good[..good.len() / 2]);
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let err = unified_schema(&files).unwrap_err().to_string();
    assert!(err.contains("cut.parquet"), "{err}");
    let schema = sample_batch().schema();
    let mut source = open_source(files, schema, SourceOptions::default()).unwrap();
    let err = source.next().unwrap().unwrap_err().to_string();
    assert!(err.contains("cut.parquet"), "{err}");
    assert!(source.next().is_none());
}

#[test]
fn mixed_parquet_and_jsonl_share_one_schema() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample_batch();
    let mut w = PartWriter::create(dir.path(), 0, batch.schema(), OutputFormat::Parquet).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    write(dir.path(), "x.jsonl", b"{\"id\":10,\"lang\":\"en\"}\n");
    let items = read_all(dir.path().to_str().unwrap(), opts(OnError::Fail));
    let b = batches(&items);
    let schema = b[0].batch.schema();
    let cols: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone()))
        .collect();
    // Int32 (Parquet) and Int64 (JSON) widen to Int64; columns missing from a file are null.
    assert_eq!(
        cols,
        [
            ("id", DataType::Int64),
            ("text", DataType::Utf8),
            ("lang", DataType::Utf8)
        ]
    );
    assert_eq!(b[0].batch.column(2).null_count(), 3);
    assert_eq!(texts(b[1]), [None]);
    assert_eq!(
        b[1].batch.column(0).as_primitive::<Int64Type>().value(0),
        10
    );
}

#[test]
fn empty_files_yield_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.jsonl", b"");
    write(dir.path(), "b.jsonl", b"\n \r\n\n");
    write(dir.path(), "c.parquet", b"");
    let files = expand_inputs(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(files.len(), 3);
    let schema = unified_schema(&files).unwrap();
    assert!(schema.fields().is_empty());
    let items: Vec<_> = open_source(files, schema, SourceOptions::default())
        .unwrap()
        .collect();
    assert!(items.is_empty());
}

#[test]
fn string_columns_are_checked_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "n.jsonl",
        b"{\"text\":null,\"n\":1}\n{\"n\":2}\n",
    );
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    assert_eq!(
        schema.field_with_name("text").unwrap().data_type(),
        &DataType::Null
    );
    let source = open_source(files.clone(), schema.clone(), opts(OnError::Fail)).unwrap();
    assert_eq!(
        source.schema().field_with_name("text").unwrap().data_type(),
        &DataType::Utf8
    );
    let rows: usize = source
        .map(|i| match i.unwrap() {
            SourceItem::Batch(b) => b.batch.num_rows(),
            SourceItem::Rejected(_) => 0,
        })
        .sum();
    assert_eq!(rows, 2);

    let mut o = opts(OnError::Fail);
    o.string_columns = vec!["body".into()];
    let err = open_source(files.clone(), schema.clone(), o).err().unwrap();
    assert!(err.to_string().contains("column `body` not found"), "{err}");
    let mut o = opts(OnError::Fail);
    o.string_columns = vec!["n".into()];
    assert!(matches!(
        open_source(files, schema, o),
        Err(IoError::ColumnType { .. })
    ));
}

#[test]
fn part_file_is_hidden_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample_batch();
    let mut w = PartWriter::create(dir.path(), 3, batch.schema(), OutputFormat::Parquet).unwrap();
    w.write(&batch).unwrap();
    assert!(dir.path().join(".part-00003.parquet.tmp").exists());
    assert!(!dir.path().join("part-00003.parquet").exists());
    // Readers of the folder do not see the in-progress part.
    assert!(matches!(
        expand_inputs(dir.path().to_str().unwrap()),
        Err(IoError::NoMatch { .. })
    ));
    w.finish().unwrap();
    assert!(!dir.path().join(".part-00003.parquet.tmp").exists());
    assert!(dir.path().join("part-00003.parquet").exists());

    // An abandoned writer leaves nothing behind.
    let w = PartWriter::create(dir.path(), 4, batch.schema(), OutputFormat::Parquet).unwrap();
    drop(w);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["part-00003.parquet"]);
}

#[test]
fn part_names_sort_in_order() {
    assert_eq!(
        part_file_name(0, OutputFormat::Parquet),
        "part-00000.parquet"
    );
    assert_eq!(
        part_file_name(42, OutputFormat::ArrowIpc),
        "part-00042.arrow"
    );
    assert_eq!(
        part_file_name(123456, OutputFormat::Parquet),
        "part-123456.parquet"
    );
}

#[test]
fn rejects_log_appends_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = Rejection {
        path: PathBuf::from("in/a.jsonl"),
        line: Some(3),
        row: Some(2),
        reason: "invalid JSON".into(),
    };
    let mut w = RejectsWriter::create(dir.path()).unwrap();
    w.write(&r).unwrap();
    assert_eq!(w.count(), 1);
    drop(w);
    let mut w = RejectsWriter::create(dir.path()).unwrap();
    w.write(&Rejection {
        line: None,
        ..r.clone()
    })
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join("_rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        serde_json::json!({"file": "in/a.jsonl", "line": 3, "row": 2, "reason": "invalid JSON"})
    );
    assert_eq!(lines[1]["line"], serde_json::Value::Null);
}

#[test]
fn write_atomic_replaces_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("_manifest.json");
    write_atomic(&p, b"{\"v\":1}").unwrap();
    write_atomic(&p, b"{\"v\":2}").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"{\"v\":2}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["_manifest.json"]);
}

#[test]
fn source_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Source>();
    assert_send::<PartWriter>();
    assert_send::<RejectsWriter>();
}
