//! Deterministic shards: the input's rows, in input order, cut into `n` contiguous ranges of
//! about equal size. Parquet files are cut only at row-group boundaries; JSON lines at any line.
//!
//! Every shard computes the same cuts from the same files, so the shards never overlap and their
//! union is the whole input; because each shard is one contiguous range, part files named by
//! shard then sequence sort into input order.

use std::ops::Range;

use crate::inputs::{InputFile, InputFormat};
use crate::jsonl::count_rows;
use crate::parquet_source::row_group_rows;
use crate::IoError;

/// Where a file may be cut, and how many rows it has.
struct FileLayout {
    rows: u64,
    /// Row indices where a cut may fall; `None` means anywhere.
    cuts: Option<Vec<u64>>,
}

fn layout(file: &InputFile) -> Result<FileLayout, IoError> {
    match file.format {
        InputFormat::Parquet => {
            let groups = row_group_rows(&file.path, file.snapshot)?;
            let mut cuts = vec![0];
            for g in &groups {
                cuts.push(cuts.last().copied().unwrap_or(0) + g);
            }
            Ok(FileLayout {
                rows: *cuts.last().unwrap_or(&0),
                cuts: Some(cuts),
            })
        }
        InputFormat::JsonLines { compression } => Ok(FileLayout {
            rows: file
                .row_count
                .get_or_count(|| count_rows(&file.path, compression, file.snapshot))?,
            cuts: None,
        }),
    }
}

/// How many rows `file` holds within its row range: Parquet from the footer, JSON lines by
/// reading the file once (unless schema inference already counted them).
pub fn count_file_rows(file: &InputFile) -> Result<u64, IoError> {
    let total = layout(file)?.rows;
    Ok(match &file.rows {
        None => total,
        Some(r) => r.end.min(total).saturating_sub(r.start),
    })
}

/// The part of `files` that shard `index` of `count` reads: each file with the row range that
/// falls in the shard (files outside it are left out). JSON lines row counts come from schema
/// inference when it ran on these files, else from one read; Parquet needs only footers.
pub fn shard_files(
    files: &[InputFile],
    index: usize,
    count: usize,
) -> Result<Vec<InputFile>, IoError> {
    assert!(index < count, "shard index checked by the caller");
    let layouts: Vec<FileLayout> = files.iter().map(layout).collect::<Result<_, _>>()?;
    let total: u64 = layouts.iter().map(|l| l.rows).sum();
    let start = snap(&layouts, share(total, index, count));
    let end = snap(&layouts, share(total, index + 1, count));
    let mut out = Vec::new();
    let mut offset = 0u64;
    for (file, l) in files.iter().zip(&layouts) {
        let file_range = offset..offset + l.rows;
        offset += l.rows;
        let from = start.max(file_range.start);
        let to = end.min(file_range.end);
        if from < to {
            let rows: Range<u64> = from - file_range.start..to - file_range.start;
            let whole = rows.start == 0 && rows.end == l.rows;
            out.push(InputFile {
                rows: (!whole).then_some(rows),
                ..file.clone()
            });
        }
    }
    Ok(out)
}

/// The global row where shard `k` of `n` starts before snapping: `total * k / n`.
fn share(total: u64, k: usize, n: usize) -> u64 {
    (total as u128 * k as u128 / n as u128) as u64
}

/// Moves a global row position forward to the nearest allowed cut.
fn snap(layouts: &[FileLayout], position: u64) -> u64 {
    let mut offset = 0u64;
    for l in layouts {
        if position < offset + l.rows {
            let local = position - offset;
            return match &l.cuts {
                None => position,
                Some(cuts) => offset + cuts.iter().copied().find(|&c| c >= local).unwrap_or(l.rows),
            };
        }
        offset += l.rows;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts(spec: &[(u64, Option<Vec<u64>>)]) -> Vec<FileLayout> {
        spec.iter()
            .map(|(rows, cuts)| FileLayout {
                rows: *rows,
                cuts: cuts.clone(),
            })
            .collect()
    }

    #[test]
    fn snapping_respects_row_groups_and_is_monotone() {
        // A JSON lines file of 10 rows, then a Parquet file of row groups 0..4, 4..8.
        let l = layouts(&[(10, None), (8, Some(vec![0, 4, 8]))]);
        assert_eq!(snap(&l, 3), 3);
        assert_eq!(snap(&l, 10), 10);
        assert_eq!(snap(&l, 11), 14);
        assert_eq!(snap(&l, 15), 18);
        assert_eq!(snap(&l, 18), 18);
        let mut last = 0;
        for p in 0..=18 {
            let s = snap(&l, p);
            assert!(s >= last && s >= p);
            last = s;
        }
    }

    #[test]
    fn shares_cover_everything_once() {
        for total in [0u64, 1, 7, 100, 1001] {
            for n in 1..6 {
                assert_eq!(share(total, 0, n), 0);
                assert_eq!(share(total, n, n), total);
                for k in 0..n {
                    assert!(share(total, k, n) <= share(total, k + 1, n));
                }
            }
        }
    }
}
