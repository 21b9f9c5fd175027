//! Streaming Parquet input: metadata-only schema reads and batch-at-a-time decoding.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::inputs::{open_chunks, InputChunks, Snapshot};
use crate::schema::conform;
use crate::source::{row_problem, SourceBatch, SourceItem, SourceOptions};
use crate::IoError;

/// Opens a Parquet file's metadata; `None` for a zero-byte file, which holds no rows. The file
/// must still match `snapshot`.
fn open_builder(
    path: &Path,
    snapshot: Option<Snapshot>,
) -> Result<Option<ParquetRecordBatchReaderBuilder<InputChunks>>, IoError> {
    let Some(file) = open_chunks(path, snapshot)? else {
        return Ok(None);
    };
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map(Some)
        .map_err(|source| IoError::Parquet {
            path: path.to_path_buf(),
            source,
        })
}

/// The row count of each row group of a Parquet file (footer only); empty for a zero-byte file.
pub(crate) fn row_group_rows(path: &Path, snapshot: Option<Snapshot>) -> Result<Vec<u64>, IoError> {
    Ok(open_builder(path, snapshot)?.map_or_else(Vec::new, |b| {
        b.metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect()
    }))
}

/// The Arrow schema stored in a Parquet file (footer only, no data read).
pub(crate) fn file_schema(
    path: &Path,
    snapshot: Option<Snapshot>,
) -> Result<Option<SchemaRef>, IoError> {
    Ok(open_builder(path, snapshot)?.map(|b| b.schema().clone()))
}

/// Streams one Parquet file as batches fitted to the unified schema.
pub(crate) struct ParquetReader {
    file: usize,
    path: PathBuf,
    /// Checked again at the end: a file rewritten while it was read is an error.
    snapshot: Option<Snapshot>,
    reader: Option<ParquetRecordBatchReader>,
    schema: SchemaRef,
    opts: Arc<SourceOptions>,
    next_row: u64,
}

impl ParquetReader {
    /// Opens file number `file`, reading only the columns `schema` needs and only `rows`
    /// (all when `None`).
    pub(crate) fn open(
        file: usize,
        path: &Path,
        rows: Option<Range<u64>>,
        snapshot: Option<Snapshot>,
        schema: SchemaRef,
        opts: Arc<SourceOptions>,
    ) -> Result<Self, IoError> {
        let first_row = rows.as_ref().map_or(0, |r| r.start);
        let reader = match open_builder(path, snapshot)? {
            None => None,
            Some(builder) => {
                // Top-level Arrow fields map one-to-one onto Parquet root columns.
                let roots: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| schema.field_with_name(f.name()).is_ok())
                    .map(|(i, _)| i)
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
                let mut builder = builder.with_projection(mask);
                if let Some(r) = &rows {
                    // Offset and limit become a row selection: skipped pages are not decoded.
                    builder = builder
                        .with_offset(r.start as usize)
                        .with_limit(r.end.saturating_sub(r.start) as usize);
                }
                let reader =
                    builder
                        .with_batch_size(opts.batch_rows)
                        .build()
                        .map_err(|source| IoError::Parquet {
                            path: path.to_path_buf(),
                            source,
                        })?;
                Some(reader)
            }
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            snapshot,
            reader,
            schema,
            opts,
            next_row: first_row,
        })
    }

    /// Reads one batch into `out`; returns false at the end of the file.
    pub(crate) fn fill(
        &mut self,
        out: &mut VecDeque<Result<SourceItem, IoError>>,
    ) -> Result<bool, IoError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        let batch = match reader.next() {
            None => {
                if let Some(s) = self.snapshot {
                    s.check(&self.path)?;
                }
                return Ok(false);
            }
            Some(Err(source)) => {
                return Err(IoError::Arrow {
                    path: self.path.clone(),
                    context: format!("cannot decode rows after row {}", self.next_row),
                    source,
                })
            }
            Some(Ok(batch)) => conform(&batch, &self.schema, &self.path)?,
        };
        let (batch, mut bad) = batch;
        let first_row = self.next_row;
        self.next_row += batch.num_rows() as u64;
        bad.extend(oversized_rows(&batch, &self.opts));
        bad.sort_by_key(|(i, _)| *i);
        bad.dedup_by_key(|(i, _)| *i);
        self.push_checked(batch, first_row, bad, out);
        Ok(true)
    }

    /// Pushes the batch, splitting out the `bad` rows (ascending, each once) as row problems.
    fn push_checked(
        &self,
        batch: RecordBatch,
        first_row: u64,
        bad: Vec<(usize, String)>,
        out: &mut VecDeque<Result<SourceItem, IoError>>,
    ) {
        let mut start = 0;
        for (i, reason) in bad {
            if i > start {
                out.push_back(Ok(
                    self.item(batch.slice(start, i - start), first_row + start as u64)
                ));
            }
            let row = first_row + i as u64;
            out.push_back(row_problem(
                self.opts.on_error,
                &self.path,
                None,
                Some(row),
                reason,
            ));
            start = i + 1;
        }
        if start < batch.num_rows() {
            let rest = batch.slice(start, batch.num_rows() - start);
            out.push_back(Ok(self.item(rest, first_row + start as u64)));
        }
    }

    /// Wraps a batch of this file.
    fn item(&self, batch: RecordBatch, first_row: u64) -> SourceItem {
        SourceItem::Batch(SourceBatch {
            file: self.file,
            first_row,
            lines: None,
            batch,
        })
    }
}

/// Rows (ascending, each once) with a string column longer than the limit, and why.
fn oversized_rows(batch: &RecordBatch, opts: &SourceOptions) -> Vec<(usize, String)> {
    let Some(max) = opts.max_text_bytes else {
        return Vec::new();
    };
    let mut bad: Vec<(usize, String)> = Vec::new();
    for col in &opts.string_columns {
        let Some(array) = batch.column_by_name(col) else {
            continue;
        };
        // Dictionary-encoded strings are measured as the strings they stand for.
        let array = match array.data_type() {
            DataType::Dictionary(..) => match arrow::compute::cast(array, &DataType::LargeUtf8) {
                Ok(strings) => strings,
                Err(e) => {
                    let reason = format!("field `{col}`: cannot decode its dictionary ({e})");
                    bad.extend((0..array.len()).map(|i| (i, reason.clone())));
                    continue;
                }
            },
            _ => array.clone(),
        };
        let len = |i: usize| -> usize {
            match array.data_type() {
                DataType::Utf8 => array.as_string::<i32>().value(i).len(),
                DataType::LargeUtf8 => array.as_string::<i64>().value(i).len(),
                DataType::Utf8View => array.as_string_view().value(i).len(),
                _ => 0,
            }
        };
        for i in 0..array.len() {
            if array.is_valid(i) && len(i) > max && !bad.iter().any(|(j, _)| *j == i) {
                let reason = format!(
                    "field `{col}` is {} bytes, more than the limit of {max}",
                    len(i)
                );
                bad.push((i, reason));
            }
        }
    }
    bad.sort_by_key(|(i, _)| *i);
    bad
}
