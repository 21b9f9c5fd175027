//! Row ranges and shards: reading part of a file, cutting the input into shards, and counting
//! rows without reading a file twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::tests::{batches, opts, texts, write};
use crate::*;

/// `{"id":i,"text":"t{i}"}` for each id, one per line.
fn id_lines(ids: std::ops::Range<i64>) -> String {
    ids.map(|i| format!("{{\"id\":{i},\"text\":\"t{i}\"}}\n"))
        .collect()
}

/// A Parquet file of `ids` in row groups of `group` rows.
fn id_parquet(dir: &Path, name: &str, ids: std::ops::Range<i64>, group: usize) -> PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let texts: Vec<String> = ids.clone().map(|i| format!("t{i}")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from_iter_values(texts)),
        ],
    )
    .unwrap();
    let path = dir.join(name);
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema,
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

/// (file index, first row, ids) of every batch read from `files`.
fn read_ids(files: Vec<InputFile>, schema: arrow::datatypes::SchemaRef) -> Vec<(u64, Vec<i64>)> {
    open_source(files, schema, opts(OnError::Fail))
        .unwrap()
        .map(|item| match item.unwrap() {
            SourceItem::Batch(b) => (
                b.first_row,
                b.batch
                    .column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
            ),
            SourceItem::Rejected(r) => panic!("unexpected rejection {r:?}"),
        })
        .collect()
}

#[test]
fn row_range_of_jsonl_skips_rows_unparsed_and_keeps_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // Row 1 is broken JSON: outside the range it is never parsed, so it is no error.
    let text = "{\"id\":0,\"text\":\"a\"}\n{broken\n\n{\"id\":2,\"text\":\"c\"}\n{\"id\":3,\"text\":\"d\"}\n{\"id\":4,\"text\":\"e\"}\n";
    let p = write(dir.path(), "a.jsonl", text.as_bytes());
    let mut file = expand_inputs(p.to_str().unwrap()).unwrap().remove(0);
    file.rows = Some(2..4);
    let schema = unified_schema(std::slice::from_ref(&file)).unwrap();
    let items: Vec<_> = open_source(vec![file], schema, opts(OnError::Fail))
        .unwrap()
        .collect();
    let b = batches(&items);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(b[0].first_row, 2);
    assert_eq!(b[0].lines.as_deref(), Some(&[4u64, 5][..]));
    assert_eq!(texts(b[0]), [Some("c".into()), Some("d".into())]);
}

#[test]
fn row_range_of_parquet_reads_exactly_those_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = id_parquet(dir.path(), "a.parquet", 0..10, 4);
    let mut file = expand_inputs(p.to_str().unwrap()).unwrap().remove(0);
    file.rows = Some(3..9);
    let schema = unified_schema(std::slice::from_ref(&file)).unwrap();
    let got = read_ids(vec![file], schema);
    assert_eq!(got, [(3, vec![3, 4, 5, 6, 7, 8])]);
}

#[test]
fn shards_partition_the_input_in_order_at_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.jsonl", id_lines(0..7).as_bytes());
    id_parquet(dir.path(), "b.parquet", 7..17, 4);
    write(dir.path(), "c.jsonl", b"");
    write(dir.path(), "d.jsonl", id_lines(17..20).as_bytes());
    let files = expand_inputs(dir.path().to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    for n in 1..=6 {
        let mut all = Vec::new();
        for i in 0..n {
            let part = shard_files(&files, i, n).unwrap();
            for f in &part {
                if f.format == InputFormat::Parquet {
                    // Parquet shards start and end on row-group boundaries (groups of 4 rows).
                    let r = f.rows.clone().unwrap_or(0..10);
                    assert!(r.start % 4 == 0 && (r.end % 4 == 0 || r.end == 10), "{r:?}");
                }
            }
            all.extend(
                read_ids(part, schema.clone())
                    .into_iter()
                    .flat_map(|(_, ids)| ids),
            );
        }
        assert_eq!(all, (0..20).collect::<Vec<i64>>(), "{n} shards");
    }
}

#[test]
fn a_json_lines_file_is_read_once_for_its_schema_and_its_row_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "a.jsonl", id_lines(0..7).as_bytes());
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    unified_schema(&files).unwrap();
    // Inference counted the rows; shards and the ETA reuse that count, even from copies.
    std::fs::remove_file(&p).unwrap();
    assert_eq!(count_file_rows(&files[0]).unwrap(), 7);
    assert_eq!(shard_files(&files, 1, 2).unwrap()[0].rows, Some(3..7));
    // A file no inference has seen is counted by reading it.
    let q = write(dir.path(), "b.jsonl", id_lines(0..5).as_bytes());
    let fresh = expand_inputs(q.to_str().unwrap()).unwrap();
    assert_eq!(count_file_rows(&fresh[0]).unwrap(), 5);
}
