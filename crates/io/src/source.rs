//! The input stream: batches file after file, with row origins and bad-row handling.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::jsonl::JsonlReader;
use crate::parquet_source::ParquetReader;
use crate::{InputFile, InputFormat, IoError};

/// What to do with a bad input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop: the row is returned as `Err(IoError::Row)` and the stream ends.
    #[default]
    Fail,
    /// Yield it as [`SourceItem::Rejected`] and go on.
    Skip,
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOrigin {
    /// Index into the files slice given to [`open_source`].
    pub file: usize,
    /// 0-based row index in that file (JSON lines: counting every non-blank line, bad ones too).
    pub row: u64,
    /// 1-based physical line number, for JSON lines.
    pub line: Option<u64>,
}

/// A bad input row that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The file it is in.
    pub path: PathBuf,
    /// 1-based line number, for JSON lines.
    pub line: Option<u64>,
    /// 0-based row index in the file.
    pub row: Option<u64>,
    /// What is wrong with it.
    pub reason: String,
}

/// Rows from one file, contiguous: row `i` of the batch is row `first_row + i` of the file.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// Index into the files slice.
    pub file: usize,
    /// File row index of the batch's first row.
    pub first_row: u64,
    /// Per row, its 1-based line number (JSON lines only).
    pub lines: Option<Vec<u64>>,
    /// The rows, in the unified schema.
    pub batch: RecordBatch,
}

impl SourceBatch {
    /// Where row `i` of this batch came from.
    pub fn origin(&self, i: usize) -> RowOrigin {
        RowOrigin {
            file: self.file,
            row: self.first_row + i as u64,
            line: self.lines.as_ref().and_then(|l| l.get(i).copied()),
        }
    }
}

/// One item of the input stream.
#[derive(Debug, Clone)]
pub enum SourceItem {
    /// Good rows.
    Batch(SourceBatch),
    /// A skipped bad row (only with [`OnError::Skip`]).
    Rejected(Rejection),
}

/// How to read the inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    /// Most rows per batch (0 is taken as 1).
    pub batch_rows: usize,
    /// What to do with bad rows.
    pub on_error: OnError,
    /// Columns that must be string or null in every row; they must exist in the schema.
    pub string_columns: Vec<String>,
    /// Rows whose `string_columns` values exceed this many bytes are bad rows.
    pub max_text_bytes: Option<usize>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            batch_rows: 1024,
            on_error: OnError::Fail,
            string_columns: Vec::new(),
            max_text_bytes: None,
        }
    }
}

/// A bad row as the stream item `on_error` asks for.
pub(crate) fn row_problem(
    on_error: OnError,
    path: &Path,
    line: Option<u64>,
    row: Option<u64>,
    reason: String,
) -> Result<SourceItem, IoError> {
    let path = path.to_path_buf();
    match on_error {
        OnError::Fail => Err(IoError::Row {
            path,
            line,
            row,
            reason,
        }),
        OnError::Skip => Ok(SourceItem::Rejected(Rejection {
            path,
            line,
            row,
            reason,
        })),
    }
}

/// The reader of the file being read.
enum FileReader {
    Jsonl(JsonlReader),
    Parquet(ParquetReader),
}

/// Streams the input files in order; see [`open_source`].
pub struct Source {
    files: Vec<InputFile>,
    schema: SchemaRef,
    opts: Arc<SourceOptions>,
    next_file: usize,
    current: Option<FileReader>,
    queue: VecDeque<Result<SourceItem, IoError>>,
    done: bool,
}

impl Source {
    /// The schema of every batch: the given schema, with `string_columns` that were all-null
    /// (type Null) turned into Utf8.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Opens the next file or reads more of the current one into the queue.
    fn step(&mut self) -> Result<(), IoError> {
        let reader = match &mut self.current {
            Some(r) => r,
            None => {
                let Some(file) = self.files.get(self.next_file) else {
                    self.done = true;
                    return Ok(());
                };
                let index = self.next_file;
                self.next_file += 1;
                let (schema, opts) = (self.schema.clone(), self.opts.clone());
                self.current.insert(match file.format {
                    InputFormat::Parquet => FileReader::Parquet(ParquetReader::open(
                        index,
                        &file.path,
                        file.rows.clone(),
                        file.snapshot,
                        schema,
                        opts,
                    )?),
                    InputFormat::JsonLines { compression } => FileReader::Jsonl(JsonlReader::open(
                        index,
                        &file.path,
                        compression,
                        file.rows.clone(),
                        file.snapshot,
                        schema,
                        opts,
                    )?),
                })
            }
        };
        let more = match reader {
            FileReader::Jsonl(r) => r.fill(&mut self.queue)?,
            FileReader::Parquet(r) => r.fill(&mut self.queue)?,
        };
        if !more {
            self.current = None;
        }
        Ok(())
    }
}

impl Iterator for Source {
    type Item = Result<SourceItem, IoError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                if item.is_err() {
                    // The first error ends the stream; nothing after it is trustworthy.
                    self.done = true;
                    self.queue.clear();
                    self.current = None;
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.step() {
                self.done = true;
                self.current = None;
                return Some(Err(e));
            }
        }
    }
}

/// Streams batches file after file, in order; each batch comes from one file with rows in file
/// order. Memory stays bounded: files are read a batch at a time.
pub fn open_source(
    files: Vec<InputFile>,
    schema: SchemaRef,
    mut opts: SourceOptions,
) -> Result<Source, IoError> {
    opts.batch_rows = opts.batch_rows.max(1);
    let schema = check_string_columns(&schema, &opts.string_columns)?;
    Ok(Source {
        files,
        schema,
        opts: Arc::new(opts),
        next_file: 0,
        current: None,
        queue: VecDeque::new(),
        done: false,
    })
}

/// Checks that each string column exists with a string type; an all-null column becomes Utf8.
/// Strings in any of Arrow's layouts, dictionary-encoded too.
pub(crate) fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

fn check_string_columns(schema: &SchemaRef, columns: &[String]) -> Result<SchemaRef, IoError> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for col in columns {
        let Some(field) = fields.iter_mut().find(|f| f.name() == col) else {
            let available: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(IoError::MissingColumn {
                column: col.clone(),
                available: available.join(", "),
            });
        };
        match field.data_type() {
            t if is_string(t) => {}
            // JSON inference calls a column that was null in every sampled line Null.
            DataType::Null => *field = Field::new(col, DataType::Utf8, true),
            other => {
                return Err(IoError::ColumnType {
                    column: col.clone(),
                    expected: "a string column".into(),
                    found: other.clone(),
                })
            }
        }
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}
