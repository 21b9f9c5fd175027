//! JSON lines: line splitting with exact line numbers, per-row validation, schema inference and
//! batch decoding with arrow-json.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder};
use arrow::record_batch::RecordBatch;
use serde_json::value::RawValue;

use crate::inputs::{open_input, Snapshot};
use crate::json_literal::{self, Json};
use crate::source::{row_problem, SourceBatch, SourceItem, SourceOptions};
use crate::{Compression, IoError};

/// Opens a JSON lines file, decompressing as a stream, reading no more than its snapshot's size.
fn open_reader(
    path: &Path,
    compression: Compression,
    snapshot: Option<Snapshot>,
) -> Result<Box<dyn BufRead + Send>, IoError> {
    let raw = BufReader::new(open_input(path, snapshot)?);
    Ok(match compression {
        Compression::None => Box::new(raw),
        // Multi-member: concatenated .gz files (as `cat a.gz b.gz` makes) are valid gzip.
        Compression::Gzip => Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(raw))),
        Compression::Zstd => {
            let dec = zstd::Decoder::with_buffer(raw).map_err(|source| IoError::Read {
                path: path.to_path_buf(),
                line: None,
                source,
            })?;
            Box::new(BufReader::new(dec))
        }
    })
}

/// A non-blank line: its 1-based number and its text, or why it is not valid UTF-8.
pub(crate) type Line<'a> = (u64, Result<&'a str, String>);

/// The number of rows (non-blank lines) of a JSON lines file, read as a stream.
pub(crate) fn count_rows(
    path: &Path,
    compression: Compression,
    snapshot: Option<Snapshot>,
) -> Result<u64, IoError> {
    let mut lines = LineReader::open(path, compression, snapshot)?;
    let mut rows = 0;
    while lines.next_line()?.is_some() {
        rows += 1;
    }
    Ok(rows)
}

/// Splits a stream into non-blank lines, keeping physical line numbers.
pub(crate) struct LineReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    line: u64,
    /// Checked again at the end: a file rewritten in place while it was read is an error.
    snapshot: Option<Snapshot>,
}

impl LineReader {
    /// Opens `path` for line reading.
    pub(crate) fn open(
        path: &Path,
        compression: Compression,
        snapshot: Option<Snapshot>,
    ) -> Result<Self, IoError> {
        let mut r = Self::new(
            path.to_path_buf(),
            open_reader(path, compression, snapshot)?,
        );
        r.snapshot = snapshot;
        Ok(r)
    }

    /// Wraps an already open stream.
    fn new(path: PathBuf, reader: Box<dyn BufRead + Send>) -> Self {
        Self {
            path,
            reader,
            buf: Vec::new(),
            line: 0,
            snapshot: None,
        }
    }

    /// The next non-blank line: its 1-based number and its text, or why it is not valid UTF-8.
    pub(crate) fn next_line(&mut self) -> Result<Option<Line<'_>>, IoError> {
        // Find the line's byte range first; borrowing `buf` for the result only after the loop
        // keeps the borrow checker happy.
        let (start, end) = loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| IoError::Read {
                    path: self.path.clone(),
                    line: Some(self.line),
                    source,
                })?;
            if n == 0 {
                if let Some(s) = self.snapshot {
                    s.check(&self.path)?;
                }
                return Ok(None);
            }
            self.line += 1;
            let mut end = self.buf.len();
            if self.buf[..end].ends_with(b"\n") {
                end -= 1;
            }
            if self.buf[..end].ends_with(b"\r") {
                end -= 1;
            }
            let start = if self.line == 1 && self.buf[..end].starts_with(b"\xEF\xBB\xBF") {
                3
            } else {
                0
            };
            if !self.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                break (start, end);
            }
        };
        let text = std::str::from_utf8(&self.buf[start..end])
            .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1));
        Ok(Some((self.line, text)))
    }
}

/// "invalid JSON: <serde message> at column N" (the line is always 1 within one line).
fn json_reason(err: &serde_json::Error) -> String {
    let msg = err.to_string();
    let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
    format!("invalid JSON: {msg} at column {}", err.column())
}

/// Parses one line as a JSON object (members in file order, values as written), or says why it
/// is not one.
fn parse_object(text: &str) -> Result<Vec<(String, &RawValue)>, String> {
    json_literal::object(text).map_err(|e| match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => format!(
            "expected a JSON object, found {}",
            Json::of(raw).map_or("a value", |j| j.kind())
        ),
        Err(_) => json_reason(&e),
    })
}

/// Checks a line against the row rules that arrow-json does not enforce: text columns are
/// strings within the size limit, and every value fits its column's type exactly (arrow-json
/// would truncate 1.5 to 1 in an Int64 column or round a large integer in a Float64 one).
fn validate(text: &str, opts: &SourceOptions, schema: &Schema) -> Result<(), String> {
    let members = parse_object(text)?;
    let member = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    for col in &opts.string_columns {
        let Some(raw) = member(col) else { continue };
        match Json::of(raw) {
            Some(Json::Null) => {}
            Some(Json::Str(s)) => {
                let len = serde_json::from_str::<Cow<str>>(s.get()).map_or(0, |s| s.len());
                if let Some(max) = opts.max_text_bytes.filter(|&max| len > max) {
                    return Err(format!(
                        "field `{col}` is {len} bytes, more than the limit of {max}"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "field `{col}` must be a string or null, found {}",
                    other.map_or("a value", |j| j.kind())
                ))
            }
        }
    }
    // Keys outside the schema are columns the caller left out (inference covers every line).
    for (key, raw) in &members {
        let Ok(field) = schema.field_with_name(key) else {
            continue;
        };
        if let Some(m) = misfit(raw, field.data_type()) {
            return Err(format!(
                "column `{key}{}`: expected {} ({}), found {}",
                m.path,
                m.expected,
                m.data_type,
                shown(m.value)
            ));
        }
    }
    Ok(())
}

/// A value, maybe nested in a column's value, that does not fit its type exactly.
struct Misfit<'a> {
    /// Where inside the column's value: `""`, `[2]`, `.x[0]`.
    path: String,
    /// What the type needs, in words.
    expected: String,
    data_type: DataType,
    value: &'a RawValue,
}

/// The first value in `raw` (itself or one nested in it) that does not fit `t` exactly; `None`
/// when all fit (or when arrow-json's own checks cover the type).
fn misfit<'a>(raw: &'a RawValue, t: &DataType) -> Option<Misfit<'a>> {
    let json = Json::of(raw)?;
    let int = |lo: i128, hi: i128| matches!(json, Json::Int(i) if (lo..=hi).contains(&i));
    let expected: String = match (t, &json) {
        (_, Json::Null) => return None,
        (DataType::Null, _) => "null (the column is null in every line)".into(),
        (DataType::Boolean, Json::Bool) => return None,
        (DataType::Boolean, _) => "a boolean".into(),
        (DataType::Int64, _) if int(i64::MIN.into(), i64::MAX.into()) => return None,
        (DataType::Int64, _) => "an integer from -2^63 to 2^63-1".into(),
        (DataType::UInt64, _) if int(0, u64::MAX.into()) => return None,
        (DataType::UInt64, _) => "an integer from 0 to 2^64-1".into(),
        (DataType::Decimal128(p, 0), _) => {
            let limit = json_literal::decimal_limit(*p);
            if int(1 - limit, limit - 1) {
                return None;
            }
            format!("an integer of at most {p} digits")
        }
        (DataType::Float64, Json::Int(_) | Json::HugeInt | Json::Float) => {
            let integer = !matches!(json, Json::Float);
            if json_literal::fits_f64(raw.get().trim(), integer) {
                return None;
            }
            "a number that Float64 holds exactly".into()
        }
        (DataType::Float64, _) => "a number that Float64 holds exactly".into(),
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Json::Str(_)) => return None,
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, _) => "a string".into(),
        (DataType::List(item) | DataType::LargeList(item), Json::List(items)) => {
            return items.iter().enumerate().find_map(|(i, v)| {
                misfit(v, item.data_type()).map(|m| Misfit {
                    path: format!("[{i}]{}", m.path),
                    ..m
                })
            })
        }
        (DataType::List(_) | DataType::LargeList(_), _) => "an array".into(),
        (DataType::Struct(fields), Json::Object(members)) => {
            return members.iter().find_map(|(k, v)| {
                let field = fields.iter().find(|f| f.name() == k)?;
                misfit(v, field.data_type()).map(|m| Misfit {
                    path: format!(".{k}{}", m.path),
                    ..m
                })
            })
        }
        (DataType::Struct(_), _) => "an object".into(),
        _ => return None,
    };
    Some(Misfit {
        path: String::new(),
        expected,
        data_type: t.clone(),
        value: raw,
    })
}

/// A value as shown in a row error: numbers and booleans as written (long ones cut), short
/// strings quoted, anything else by kind.
fn shown(raw: &RawValue) -> String {
    let text = raw.get().trim();
    match Json::of(raw) {
        Some(Json::Str(_)) if text.len() <= 42 => format!("the string {text}"),
        Some(Json::Bool | Json::Int(_) | Json::HugeInt | Json::Float) if text.len() <= 60 => {
            text.to_string()
        }
        Some(Json::Bool | Json::Int(_) | Json::HugeInt | Json::Float) => {
            format!("a number of {} characters", text.len())
        }
        other => other.map_or("a value", |j| j.kind()).into(),
    }
}

/// Streams one JSON lines file as batches of validated rows.
pub(crate) struct JsonlReader {
    file: usize,
    path: PathBuf,
    lines: LineReader,
    schema: SchemaRef,
    opts: Arc<SourceOptions>,
    decoder: Decoder,
    /// Rows seen so far (valid or not), i.e. the next row index.
    next_row: u64,
    /// Pending rows' bytes, newline-separated, and each row's byte range and line.
    buf: Vec<u8>,
    pending: Vec<(Range<usize>, u64)>,
    /// Row index of the first pending row; pending rows are always contiguous.
    pending_first_row: u64,
    /// The rows to read; the others are counted but not parsed.
    rows: Range<u64>,
}

impl JsonlReader {
    /// Opens file number `file` for reading `rows` (all when `None`) into `schema`.
    pub(crate) fn open(
        file: usize,
        path: &Path,
        compression: Compression,
        rows: Option<Range<u64>>,
        snapshot: Option<Snapshot>,
        schema: SchemaRef,
        opts: Arc<SourceOptions>,
    ) -> Result<Self, IoError> {
        let decoder = build_decoder(path, &schema, opts.batch_rows)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            lines: LineReader::open(path, compression, snapshot)?,
            schema,
            opts,
            decoder,
            next_row: 0,
            buf: Vec::new(),
            pending: Vec::new(),
            pending_first_row: 0,
            rows: rows.unwrap_or(0..u64::MAX),
        })
    }

    /// Reads until a batch is full, a row is bad or the file ends, pushing items to `out`.
    /// Returns false at the end of the file.
    pub(crate) fn fill(
        &mut self,
        out: &mut VecDeque<Result<SourceItem, IoError>>,
    ) -> Result<bool, IoError> {
        loop {
            if self.next_row >= self.rows.end {
                self.flush(out)?;
                return Ok(false);
            }
            let Some((line, text)) = self.lines.next_line()? else {
                self.flush(out)?;
                return Ok(false);
            };
            let row = self.next_row;
            self.next_row += 1;
            if row < self.rows.start {
                continue;
            }
            match text.and_then(|t| validate(t, &self.opts, &self.schema).map(|()| t)) {
                Ok(text) => {
                    if self.pending.is_empty() {
                        self.pending_first_row = row;
                    }
                    let start = self.buf.len();
                    self.buf.extend_from_slice(text.as_bytes());
                    self.pending.push((start..self.buf.len(), line));
                    self.buf.push(b'\n');
                    if self.pending.len() >= self.opts.batch_rows {
                        self.flush(out)?;
                        return Ok(true);
                    }
                }
                Err(reason) => {
                    // Batches never span a bad row, so their rows stay contiguous.
                    self.flush(out)?;
                    out.push_back(self.problem(line, row, reason));
                    return Ok(true);
                }
            }
        }
    }

    /// A row error or rejection for this file.
    fn problem(&self, line: u64, row: u64, reason: String) -> Result<SourceItem, IoError> {
        row_problem(
            self.opts.on_error,
            &self.path,
            Some(line),
            Some(row),
            reason,
        )
    }

    /// Decodes the pending rows into batches, isolating rows that do not fit the schema.
    fn flush(&mut self, out: &mut VecDeque<Result<SourceItem, IoError>>) -> Result<(), IoError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let first_row = self.pending_first_row;
        let whole = decode(&mut self.decoder, &self.buf);
        match whole {
            Ok(batch) => out.push_back(Ok(SourceItem::Batch(SourceBatch {
                file: self.file,
                first_row,
                lines: Some(pending.iter().map(|(_, l)| *l).collect()),
                batch,
            }))),
            Err(_) => {
                // A failed decode leaves the decoder mid-row; start afresh, then find the culprits.
                self.decoder = build_decoder(&self.path, &self.schema, self.opts.batch_rows)?;
                self.decode_row_by_row(&pending, first_row, out)?;
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Slow path: decodes each row alone, grouping runs of good rows into batches.
    fn decode_row_by_row(
        &self,
        pending: &[(Range<usize>, u64)],
        first_row: u64,
        out: &mut VecDeque<Result<SourceItem, IoError>>,
    ) -> Result<(), IoError> {
        let mut run: Vec<RecordBatch> = Vec::new();
        let mut run_lines: Vec<u64> = Vec::new();
        let mut run_start = first_row;
        for (i, (range, line)) in pending.iter().enumerate() {
            let row = first_row + i as u64;
            let mut decoder = build_decoder(&self.path, &self.schema, 1)?;
            match decode(&mut decoder, &self.buf[range.clone()]) {
                Ok(batch) => {
                    if run.is_empty() {
                        run_start = row;
                    }
                    run.push(batch);
                    run_lines.push(*line);
                }
                Err(e) => {
                    self.push_run(&mut run, &mut run_lines, run_start, out)?;
                    let reason = format!("value does not fit the schema: {e}");
                    out.push_back(self.problem(*line, row, reason));
                }
            }
        }
        self.push_run(&mut run, &mut run_lines, run_start, out)
    }

    /// Concatenates a run of single-row batches into one item.
    fn push_run(
        &self,
        run: &mut Vec<RecordBatch>,
        lines: &mut Vec<u64>,
        first_row: u64,
        out: &mut VecDeque<Result<SourceItem, IoError>>,
    ) -> Result<(), IoError> {
        if run.is_empty() {
            return Ok(());
        }
        let batch = arrow::compute::concat_batches(&self.schema, run.iter()).map_err(|source| {
            IoError::Arrow {
                path: self.path.clone(),
                context: "cannot assemble a batch".into(),
                source,
            }
        })?;
        run.clear();
        out.push_back(Ok(SourceItem::Batch(SourceBatch {
            file: self.file,
            first_row,
            lines: Some(std::mem::take(lines)),
            batch,
        })));
        Ok(())
    }
}

/// An arrow-json decoder for `schema` that takes up to `rows` rows per flush.
fn build_decoder(path: &Path, schema: &SchemaRef, rows: usize) -> Result<Decoder, IoError> {
    // One spare row of capacity so the final newline is always consumed in one call.
    ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.saturating_add(1))
        .build_decoder()
        .map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            context: "cannot build a JSON decoder for the schema".into(),
            source,
        })
}

/// Feeds already-validated JSON text to `decoder` and takes the batch out.
fn decode(decoder: &mut Decoder, bytes: &[u8]) -> Result<RecordBatch, ArrowError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = decoder.decode(rest)?;
        if n == 0 {
            return Err(ArrowError::JsonError("decoder made no progress".into()));
        }
        rest = &rest[n..];
    }
    decoder
        .flush()?
        .ok_or_else(|| ArrowError::JsonError("no rows decoded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(bytes: &[u8]) -> Vec<(u64, Result<String, String>)> {
        let mut r = LineReader::new(
            PathBuf::from("t.jsonl"),
            Box::new(std::io::Cursor::new(bytes.to_vec())),
        );
        let mut out = Vec::new();
        while let Some((n, t)) = r.next_line().unwrap() {
            out.push((n, t.map(str::to_string)));
        }
        out
    }

    #[test]
    fn bom_crlf_and_blank_lines_keep_physical_numbers() {
        let got = lines_of(b"\xEF\xBB\xBF{\"a\":1}\r\n\r\n   \n{\"a\":2}\r\n\n{\"a\":3}");
        let want = vec![
            (1, Ok("{\"a\":1}".to_string())),
            (4, Ok("{\"a\":2}".to_string())),
            (6, Ok("{\"a\":3}".to_string())),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn invalid_utf8_is_reported_per_line() {
        let got = lines_of(b"{\"a\":1}\n{\"a\":\"\xff\"}\n");
        assert_eq!(got[0].1.as_deref(), Ok("{\"a\":1}"));
        assert_eq!(got[1].0, 2);
        let err = got[1].1.clone().unwrap_err();
        assert!(err.contains("invalid UTF-8 at byte 7"), "{err}");
    }

    #[test]
    fn json_reasons_are_specific() {
        let opts = SourceOptions {
            string_columns: vec!["text".into()],
            max_text_bytes: Some(5),
            ..SourceOptions::default()
        };
        let schema = Schema::new(vec![arrow::datatypes::Field::new(
            "text",
            DataType::Utf8,
            true,
        )]);
        let r = |t: &str| validate(t, &opts, &schema).unwrap_err();
        assert_eq!(
            r("{\"a\":1 \"b\":2}"),
            "invalid JSON: expected `,` or `}` at column 8"
        );
        assert_eq!(r("[1,2]"), "expected a JSON object, found an array");
        assert_eq!(
            r("{\"text\":{}}"),
            "field `text` must be a string or null, found an object"
        );
        assert_eq!(
            r("{\"text\":\"toolong\"}"),
            "field `text` is 7 bytes, more than the limit of 5"
        );
        assert!(validate("{\"text\":null}", &opts, &schema).is_ok());
        assert!(validate("{\"other\":1}", &opts, &schema).is_ok());
    }
}
