//! Passthrough values are never changed silently: JSON-lines types cover every line, numbers
//! keep their exact value or make their row an error, and a file that changes while it is read
//! stops the read.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};

use crate::*;

/// Reads a JSON-lines text through the unified schema; every item of the stream.
fn read(dir: &Path, name: &str, text: &str, on_error: OnError) -> Vec<Result<SourceItem, IoError>> {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    let opts = SourceOptions {
        on_error,
        ..SourceOptions::default()
    };
    open_source(files, schema, opts).unwrap().collect()
}

/// The batches of a stream that must have no errors or rejections.
fn clean(items: Vec<Result<SourceItem, IoError>>) -> Vec<SourceBatch> {
    items
        .into_iter()
        .map(|i| match i {
            Ok(SourceItem::Batch(b)) => b,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn a_key_first_seen_at_line_1201_is_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = "{\"id\":1}\n".repeat(1200);
    text.push_str("{\"id\":2,\"late\":\"kept\"}\n");
    let b = clean(read(dir.path(), "a.jsonl", &text, OnError::Fail));
    let last = b.last().unwrap();
    let col = last.batch.column_by_name("late").expect("column `late`");
    let i = last.batch.num_rows() - 1;
    assert_eq!(col.as_string::<i32>().value(i), "kept");
}

#[test]
fn a_float_in_an_integer_column_is_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = "{\"n\":1}\n".repeat(1200);
    text.push_str("{\"n\":1.5}\n");
    let b = clean(read(dir.path(), "a.jsonl", &text, OnError::Fail));
    let last = b.last().unwrap();
    let n = last.batch.column_by_name("n").unwrap();
    assert_eq!(n.data_type(), &DataType::Float64);
    let i = last.batch.num_rows() - 1;
    assert_eq!(n.as_primitive::<Float64Type>().value(i), 1.5);
}

#[test]
fn an_integer_above_2_63_keeps_every_id_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [
        9007199254740993u64,
        9223372036854775808,
        18446744073709551615,
    ];
    let text: String = ids.iter().map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let b = clean(read(dir.path(), "a.jsonl", &text, OnError::Fail));
    let col = b[0].batch.column(0).as_primitive::<UInt64Type>();
    assert_eq!(col.values().to_vec(), ids);
    // Negative ids beside ones above 2^63: an exact decimal, not a rounded Float64.
    let b = clean(read(
        dir.path(),
        "b.jsonl",
        "{\"id\":-9007199254740993}\n{\"id\":18446744073709551615}\n",
        OnError::Fail,
    ));
    let col = b[0].batch.column(0);
    assert_eq!(col.data_type(), &DataType::Decimal128(20, 0));
    let shown: Vec<String> = (0..2)
        .map(|i| arrow::util::display::array_value_to_string(col, i).unwrap())
        .collect();
    assert_eq!(shown, ["-9007199254740993", "18446744073709551615"]);
}

#[test]
fn a_string_after_an_integer_rejects_the_string_not_the_valid_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let items = read(
        dir.path(),
        "a.jsonl",
        "{\"id\":1}\n{\"id\":\"two\"}\n",
        OnError::Skip,
    );
    let mut kept = Vec::new();
    let mut rejected = Vec::new();
    for item in items {
        match item.unwrap() {
            SourceItem::Batch(b) => kept.extend(
                b.batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
            ),
            SourceItem::Rejected(r) => rejected.push(r),
        }
    }
    assert_eq!(kept, [1]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].line, Some(2));
    assert!(
        rejected[0]
            .reason
            .contains("column `id`: expected an integer from -2^63 to 2^63-1 (Int64), found the string \"two\""),
        "{}",
        rejected[0].reason
    );
}

#[test]
fn an_integer_that_float64_cannot_hold_is_a_row_error() {
    let dir = tempfile::tempdir().unwrap();
    let items = read(
        dir.path(),
        "a.jsonl",
        "{\"x\":0.5}\n{\"x\":9007199254740993}\n",
        OnError::Fail,
    );
    let err = items.into_iter().find_map(Result::err).unwrap().to_string();
    assert!(
        err.contains("a.jsonl:2: column `x`: expected a number that Float64 holds exactly (Float64), found 9007199254740993"),
        "{err}"
    );
}

#[test]
fn integers_beyond_64_bits_are_read_exactly_not_rounded() {
    use arrow::datatypes::Decimal128Type;

    let dir = tempfile::tempdir().unwrap();
    // serde_json alone reads both big ids as the same f64, 18446744073709551616.
    let text = "{\"id\":1}\n{\"id\":18446744073709551617}\n{\"id\":18446744073709551619}\n{\"id\":-99999999999999999999999999999999999999}\n";
    let b = clean(read(dir.path(), "a.jsonl", text, OnError::Fail));
    let ids: Vec<i128> = b
        .iter()
        .flat_map(|b| {
            let col = b.batch.column_by_name("id").unwrap();
            assert_eq!(col.data_type(), &DataType::Decimal128(38, 0));
            col.as_primitive::<Decimal128Type>().values().to_vec()
        })
        .collect();
    assert_eq!(
        ids,
        [
            1,
            18446744073709551617,
            18446744073709551619,
            -99999999999999999999999999999999999999
        ]
    );
}

#[test]
fn integers_no_exact_type_holds_are_row_errors_naming_line_and_value() {
    let dir = tempfile::tempdir().unwrap();
    // 39 digits: beyond Decimal128(38, 0), the widest exact integer type.
    let huge = "1".repeat(39);
    let items = read(
        dir.path(),
        "a.jsonl",
        &format!("{{\"id\":1}}\n{{\"id\":{huge}}}\n"),
        OnError::Fail,
    );
    let err = items.into_iter().find_map(Result::err).unwrap().to_string();
    assert!(
        err.contains(&format!("a.jsonl:2: column `id`: expected an integer of at most 38 digits (Decimal128(38, 0)), found {huge}")),
        "{err}"
    );
    // In a Float64 column an integer literal must come back digit for digit, also nested.
    let items = read(
        dir.path(),
        "b.jsonl",
        "{\"x\":0.5,\"v\":{\"y\":[0.5]}}\n{\"x\":18446744073709551616,\"v\":{\"y\":[1,18446744073709551617]}}\n",
        OnError::Fail,
    );
    let err = items.into_iter().find_map(Result::err).unwrap().to_string();
    assert!(
        err.contains("b.jsonl:2: column `v.y[1]`: expected a number that Float64 holds exactly (Float64), found 18446744073709551617"),
        "{err}"
    );
}

#[test]
fn integers_from_parquet_that_float64_cannot_hold_are_row_errors() {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;

    let dir = tempfile::tempdir().unwrap();
    // One file makes `x` Float64; the Parquet file's Int64 values must survive the cast.
    std::fs::write(dir.path().join("a.jsonl"), "{\"x\":0.5}\n").unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(vec![3, 9007199254740993, 4]))],
    )
    .unwrap();
    let mut w = PartWriter::create(dir.path(), 0, schema, OutputFormat::Parquet).unwrap();
    w.write(&batch).unwrap();
    let part = w.finish().unwrap();
    std::fs::rename(part, dir.path().join("b.parquet")).unwrap();
    let files = expand_inputs(dir.path().to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    let opts = SourceOptions {
        on_error: OnError::Skip,
        ..SourceOptions::default()
    };
    let mut values = Vec::new();
    let mut rejected = Vec::new();
    for item in open_source(files, schema, opts).unwrap() {
        match item.unwrap() {
            SourceItem::Batch(b) => values.extend(
                b.batch
                    .column(0)
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten(),
            ),
            SourceItem::Rejected(r) => rejected.push(r),
        }
    }
    assert_eq!(values, [0.5, 3.0, 4.0]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].row, Some(1));
    assert!(
        rejected[0]
            .reason
            .contains("found 9007199254740993 (Int64 in this file)"),
        "{}",
        rejected[0].reason
    );
}

#[test]
fn an_input_that_grows_after_it_was_listed_is_not_read_past_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jsonl");
    std::fs::write(&p, "{\"text\":\"a\"}\n").unwrap();
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    // Appended after the run listed (and fingerprinted) the file.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"text\":\"b\"}\n").unwrap();
    drop(f);
    let items: Vec<_> = open_source(files.clone(), schema, SourceOptions::default())
        .unwrap()
        .collect();
    let err = items.into_iter().find_map(Result::err).expect("an error");
    assert!(matches!(err, IoError::Changed { .. }), "{err}");
    assert!(
        err.to_string().contains(
            "changed while mbpipe was reading it (13 bytes when the run started, 26 now)"
        ),
        "{err}"
    );
    // The row count is the listed file's (inference counted it before the append); a count
    // that has to read the file now fails the same way.
    assert_eq!(count_file_rows(&files[0]).unwrap(), 1);
    let relisted = InputFile {
        snapshot: files[0].snapshot,
        ..InputFile::new(p.clone(), files[0].format)
    };
    assert!(count_file_rows(&relisted).is_err());
}

#[test]
fn an_input_that_grows_while_it_is_read_stops_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jsonl");
    std::fs::write(&p, "{\"text\":\"a\"}\n".repeat(4)).unwrap();
    let files = expand_inputs(p.to_str().unwrap()).unwrap();
    let schema = unified_schema(&files).unwrap();
    let opts = SourceOptions {
        batch_rows: 1,
        ..SourceOptions::default()
    };
    let mut source = open_source(files, schema, opts).unwrap();
    let first = source.next().unwrap().unwrap();
    assert!(matches!(first, SourceItem::Batch(_)));
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"text\":\"extra\"}\n").unwrap();
    drop(f);
    let rest: Vec<_> = source.collect();
    let rows = rest
        .iter()
        .filter(|i| matches!(i, Ok(SourceItem::Batch(_))))
        .count();
    // The 4 rows of the snapshot at most, never the appended one, then the error.
    assert!(rows <= 3, "{rows}");
    assert!(
        matches!(rest.last(), Some(Err(IoError::Changed { .. }))),
        "{rest:?}"
    );
}
