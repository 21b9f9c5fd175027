//! Whether an output folder is complete: `_SUCCESS`, or with shards every `_SUCCESS.shard-I-of-N`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::TableSource;

/// A warning for each table that is an mbpipe output folder whose run did not finish (no
/// `_SUCCESS`, or a shard without its `_SUCCESS.shard-I-of-N`): its rows may be incomplete.
pub fn incomplete_outputs(tables: &[TableSource]) -> Vec<String> {
    tables
        .iter()
        .filter_map(|t| {
            let missing = missing_markers(&t.path)?;
            Some(format!(
                "table `{}`: {} is incomplete ({missing}): its run is still going, failed or was \
                 interrupted, so rows may be missing",
                t.name,
                t.path.display()
            ))
        })
        .collect()
}

/// The names in a local folder or under a prefix in a bucket; `None` when it cannot be listed.
fn folder_names(dir: &Path) -> Option<Vec<String>> {
    if let Some(url) = dir.to_str().filter(|u| mbpipe_store::is_url(u)) {
        let listed = mbpipe_store::Remote::parse(url.trim_end_matches('/'))
            .and_then(|r| r.list_dir())
            .ok()?;
        return Some(listed.into_iter().map(|e| e.name).collect());
    }
    Some(
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

/// What marks `dir` as unfinished, or `None` when it is complete or not an mbpipe output.
fn missing_markers(dir: &Path) -> Option<String> {
    let names = folder_names(dir)?;
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("_SUCCESS") {
        return None;
    }
    let mbpipe = names.iter().any(|n| {
        n.starts_with("part-")
            || ["_manifest", "_progress", "_lock", "_rejects"]
                .iter()
                .any(|p| n.starts_with(p))
    });
    if !mbpipe {
        return None;
    }
    // Shard counts named by `_X.shard-I-of-N...` files.
    let counts: BTreeSet<usize> = names
        .iter()
        .filter_map(|n| {
            let rest = &n[n.find(".shard-")? + ".shard-".len()..];
            let (_, n) = rest.split_once("-of-")?;
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    let sharded_parts = names
        .iter()
        .any(|n| n.strip_prefix("part-").is_some_and(|r| r.contains('-')));
    match counts.len() {
        0 if sharded_parts => Some("no _SUCCESS.shard-I-of-N for any shard".into()),
        0 => Some("no _SUCCESS".into()),
        1 => {
            let n = *counts.first()?;
            let missing: Vec<String> = (0..n)
                .filter(|i| !has(&format!("_SUCCESS.shard-{i}-of-{n}")))
                .map(|i| i.to_string())
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "no _SUCCESS.shard-I-of-{n} for shard {} of {n}",
                    missing.join(", ")
                )
            })
        }
        _ => Some(format!(
            "it mixes runs of {} shards",
            counts
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        dir
    }

    #[test]
    fn unfinished_outputs_are_named() {
        let m = |names: &[&str]| missing_markers(folder(names).path());
        assert_eq!(m(&["part-00000.parquet", "_SUCCESS"]), None);
        assert_eq!(
            m(&["part-00000.parquet", "_progress.jsonl"]).as_deref(),
            Some("no _SUCCESS")
        );
        // Not an mbpipe output: nothing to say.
        assert_eq!(m(&["data.parquet"]), None);
        let shards = [
            "part-00000-00000.parquet",
            "_SUCCESS.shard-0-of-3",
            "_SUCCESS.shard-2-of-3",
        ];
        assert_eq!(
            m(&shards).as_deref(),
            Some("no _SUCCESS.shard-I-of-3 for shard 1 of 3")
        );
        assert_eq!(m(&["_SUCCESS.shard-0-of-2", "_SUCCESS.shard-1-of-2"]), None);
        let unfinished = folder(&["part-00000.parquet"]);
        let t = TableSource {
            name: "c".into(),
            path: unfinished.path().to_path_buf(),
        };
        let w = incomplete_outputs(&[t]);
        assert!(w[0].starts_with("table `c`: ") && w[0].contains("rows may be missing"));
    }
}
