//! Property tests (fuzzing) of the JSON lines reader: whatever the bytes, it never panics, and
//! with `on_error = skip` every non-blank line is accounted for exactly once, as a row or as a
//! rejection. Cases proptest finds are kept in `proptest-regressions/` and replayed first.

use mbpipe_io::{expand_inputs, open_source, unified_schema, OnError, SourceItem, SourceOptions};
use proptest::prelude::*;

/// One line: a valid object, a wrong-typed one, another JSON value, broken JSON, raw bytes, or
/// whitespace.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9 ,.!?é漢🙂\\\\\"]{0,40}".prop_map(|t| serde_json::json!({"text": t, "n": 1})
            .to_string()
            .into_bytes()),
        any::<i64>().prop_map(|n| format!("{{\"text\":{n}}}").into_bytes()),
        Just(b"{\"text\":null}".to_vec()),
        Just(b"{\"text\":{\"a\":[1,2]}}".to_vec()),
        Just(b"{\"n\":\"str\",\"text\":\"x\"}".to_vec()),
        Just(b"[1,2,3]".to_vec()),
        Just(b"\"just a string\"".to_vec()),
        "[{}\\[\\]\":,a-z0-9 ]{0,30}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..30)
            .prop_map(|b| b.into_iter().filter(|&c| c != b'\n').collect()),
        Just(b"   \t".to_vec()),
        Just(Vec::new()),
    ]
}

fn file() -> impl Strategy<Value = (Vec<Vec<u8>>, bool, bool)> {
    (
        proptest::collection::vec(line(), 0..40),
        any::<bool>(),
        any::<bool>(),
    )
}

fn is_blank(l: &[u8]) -> bool {
    l.iter().all(u8::is_ascii_whitespace)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn jsonl_reader_never_panics_and_loses_no_line((lines, crlf, bom) in file()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let mut bytes = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
        for l in &lines {
            bytes.extend_from_slice(l);
            bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        std::fs::write(&path, &bytes).unwrap();
        let files = expand_inputs(path.to_str().unwrap()).unwrap();
        // Schema inference may refuse the file (with an error); it must not panic.
        let Ok(schema) = unified_schema(&files) else { return Ok(()) };
        if schema.field_with_name("text").is_err() {
            return Ok(());
        }
        let opts = SourceOptions {
            on_error: OnError::Skip,
            string_columns: vec!["text".into()],
            batch_rows: 7,
            ..SourceOptions::default()
        };
        let Ok(source) = open_source(files.clone(), schema.clone(), opts.clone()) else {
            return Ok(());
        };
        let mut seen = 0u64;
        for item in source {
            match item {
                Ok(SourceItem::Batch(b)) => seen += b.batch.num_rows() as u64,
                Ok(SourceItem::Rejected(r)) => {
                    prop_assert!(r.line.is_some() && !r.reason.is_empty());
                    seen += 1;
                }
                // Only I/O failures end a skip-policy stream, and a temp file has none.
                Err(e) => prop_assert!(false, "unexpected error: {e}"),
            }
        }
        // Blank lines are not rows (a BOM before a blank first line changes nothing).
        let rows = lines.iter().filter(|l| !is_blank(l)).count() as u64;
        prop_assert_eq!(seen, rows);

        // The fail policy stops at the first bad line or reads everything, never panicking.
        let fail = SourceOptions { on_error: OnError::Fail, ..opts };
        for item in open_source(files, schema, fail).unwrap() {
            if item.is_err() {
                break;
            }
        }
    }
}
