//! Table sources: parsing `NAME=PATH` and registering the path with DataFusion.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::SqlError;

/// A table to register before running a query: `NAME=PATH` on the command line.
///
/// `PATH` is an mbpipe output directory (its `*.parquet` or `*.arrow` part files), a single
/// `.parquet` or `.arrow` file, a `.jsonl` / `.ndjson` file, a directory of files of one of
/// these formats, or a glob (`out/*.parquet`) matching files of one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// Name the query uses for the table; case-insensitive, like any unquoted SQL identifier.
    pub name: String,
    /// Where the rows are.
    pub path: PathBuf,
}

impl FromStr for TableSource {
    type Err = SqlError;

    fn from_str(spec: &str) -> Result<Self, SqlError> {
        let bad = |reason| SqlError::TableSpec {
            spec: spec.to_owned(),
            reason,
        };
        let (name, path) = spec.split_once('=').ok_or_else(|| bad("found no `=`"))?;
        if name.is_empty() {
            return Err(bad("found an empty NAME"));
        }
        if path.is_empty() {
            return Err(bad("found an empty PATH"));
        }
        check_name(name)?;
        Ok(TableSource {
            name: name.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

impl fmt::Display for TableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.path.display())
    }
}

/// Accepts plain identifiers only, so the name needs no quoting in SQL.
pub(crate) fn check_name(name: &str) -> Result<(), SqlError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(SqlError::TableName {
            name: name.to_owned(),
        })
    }
}

/// How the files of one table are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parquet,
    Arrow,
    Json,
}

impl Kind {
    /// The kind of a data file, by its extension (case-insensitive).
    fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Kind::Parquet),
            "arrow" => Some(Kind::Arrow),
            "jsonl" | "ndjson" => Some(Kind::Json),
            _ => None,
        }
    }

    fn format(self) -> Arc<dyn FileFormat> {
        match self {
            Kind::Parquet => Arc::new(ParquetFormat::default()),
            Kind::Arrow => Arc::new(ArrowFormat),
            Kind::Json => Arc::new(JsonFormat::default().with_newline_delimited(true)),
        }
    }
}

/// Registers `source` in `ctx` under its lower-cased name.
pub(crate) async fn register(ctx: &SessionContext, source: &TableSource) -> Result<(), SqlError> {
    // Also checked here: a `TableSource` may be built without `FromStr`.
    check_name(&source.name)?;
    let register_err = |e: DataFusionError| SqlError::Register {
        table: source.name.clone(),
        path: source.path.clone(),
        source: e,
    };
    let (kind, urls) = match source.path.to_str().filter(|p| mbpipe_store::is_url(p)) {
        Some(url) => remote_files(ctx, source, url)?,
        None => {
            let (kind, files) = data_files(source)?;
            let urls = files
                .iter()
                .map(|file| file_url(source, file))
                .collect::<Result<Vec<_>, _>>()?;
            (kind, urls)
        }
    };
    // Every file is named explicitly, so the extension filter only has to let them through.
    let options = ListingOptions::new(kind.format()).with_file_extension("");
    let state = ctx.state();
    let mut schemas = Vec::with_capacity(urls.len());
    for url in &urls {
        let schema = options
            .infer_schema(&state, url)
            .await
            .map_err(register_err)?;
        schemas.push(Arc::unwrap_or_clone(schema));
    }
    let schema = Schema::try_merge(schemas)
        .map_err(|e| register_err(DataFusionError::ArrowError(Box::new(e), None)))?;

    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(Arc::new(schema));
    let table = ListingTable::try_new(config).map_err(register_err)?;
    ctx.register_table(
        TableReference::bare(source.name.to_ascii_lowercase()),
        Arc::new(table),
    )
    .map_err(register_err)?;
    Ok(())
}

/// The objects behind a table in object storage (an object, a prefix or a glob over keys),
/// sorted by name; registers the bucket's store with DataFusion.
fn remote_files(
    ctx: &SessionContext,
    source: &TableSource,
    url: &str,
) -> Result<(Kind, Vec<ListingTableUrl>), SqlError> {
    let unsupported = |reason: String| SqlError::Unsupported {
        table: source.name.clone(),
        path: source.path.clone(),
        reason,
    };
    let store_err = |e: mbpipe_store::StoreError| unsupported(e.to_string());
    let entries = match mbpipe_store::expand(url).map_err(store_err)? {
        mbpipe_store::Expanded::Object(object) => vec![object],
        mbpipe_store::Expanded::Listed(entries) => entries,
    };
    let files: Vec<(Kind, PathBuf)> = entries
        .into_iter()
        .filter(|e| !is_hidden(e.url.rsplit('/').next().unwrap_or("")))
        .filter_map(|e| {
            let path = PathBuf::from(e.url);
            Kind::of(&path).map(|k| (k, path))
        })
        .collect();
    let (kind, files) = one_kind(files).map_err(|why| unsupported(format!("{why} at {url}")))?;
    let remote = mbpipe_store::Remote::parse(url).map_err(store_err)?;
    let (root, store) = remote.store();
    let root_url = url::Url::parse(root).map_err(|e| unsupported(e.to_string()))?;
    ctx.runtime_env().register_object_store(&root_url, store);
    let urls = files
        .iter()
        .map(|f| {
            ListingTableUrl::parse(f.to_string_lossy()).map_err(|e| SqlError::Register {
                table: source.name.clone(),
                path: f.clone(),
                source: e,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kind, urls))
}

/// The files behind a table, sorted by name, and how to read them.
fn data_files(source: &TableSource) -> Result<(Kind, Vec<PathBuf>), SqlError> {
    let path = &source.path;
    let unsupported = |reason: String| SqlError::Unsupported {
        table: source.name.clone(),
        path: path.clone(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        // A path that exists is literal, whatever its characters; one that does not may be a glob.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path.to_string_lossy().contains(['*', '?', '[']) =>
        {
            return glob_files(source)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SqlError::MissingPath {
                table: source.name.clone(),
                path: path.clone(),
            })
        }
        Err(e) => {
            return Err(SqlError::Io {
                table: source.name.clone(),
                path: path.clone(),
                source: e,
            })
        }
    };

    let io_err = |e| SqlError::Io {
        table: source.name.clone(),
        path: path.clone(),
        source: e,
    };
    // Object store paths may not contain `.` or `..`. Only the directory is resolved, not
    // the part files, so a symlinked part keeps its place in name order.
    let resolved = std::fs::canonicalize(path).map_err(io_err)?;

    if !meta.is_dir() {
        return match Kind::of(path) {
            Some(kind) => Ok((kind, vec![resolved])),
            None => Err(unsupported(
                "expected an output directory or a .parquet, .arrow, .jsonl or .ndjson file"
                    .to_owned(),
            )),
        };
    }

    let mut files = Vec::new();
    for entry in std::fs::read_dir(&resolved).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if is_hidden(&entry.file_name().to_string_lossy()) || entry.path().is_dir() {
            continue;
        }
        // Manifests, logs and anything else an output directory may hold are not rows.
        if let Some(kind) = Kind::of(Path::new(&entry.file_name())) {
            files.push((kind, entry.path()));
        }
    }
    one_kind(files).map_err(|why| {
        unsupported(format!(
            "{why} in this directory (names starting with `_` or `.` are skipped); to read some \
             of them, give a glob such as {}/*.parquet",
            path.display()
        ))
    })
}

/// The files a glob matches (hidden names skipped), which must all be of one format.
fn glob_files(source: &TableSource) -> Result<(Kind, Vec<PathBuf>), SqlError> {
    let path = &source.path;
    let unsupported = |reason: String| SqlError::Unsupported {
        table: source.name.clone(),
        path: path.clone(),
        reason,
    };
    let pattern = path.to_string_lossy();
    let matches = glob::glob(&pattern).map_err(|e| unsupported(format!("invalid glob: {e}")))?;
    let mut files = Vec::new();
    for m in matches {
        let m = m.map_err(|e| SqlError::Io {
            table: source.name.clone(),
            path: e.path().to_path_buf(),
            source: e.into(),
        })?;
        let hidden = m
            .file_name()
            .is_some_and(|n| is_hidden(&n.to_string_lossy()));
        if hidden || m.is_dir() {
            continue;
        }
        let kind = Kind::of(&m).ok_or_else(|| {
            unsupported(format!(
                "the glob matches {}, which is not a .parquet, .arrow, .jsonl or .ndjson file",
                m.display()
            ))
        })?;
        let resolved = std::fs::canonicalize(&m).map_err(|e| SqlError::Io {
            table: source.name.clone(),
            path: m.clone(),
            source: e,
        })?;
        files.push((kind, resolved));
    }
    one_kind(files).map_err(|why| unsupported(format!("{why} matching the glob")))
}

/// Files sorted by name (part files are numbered: name order is write order), all of one kind;
/// otherwise why not.
fn one_kind(mut files: Vec<(Kind, PathBuf)>) -> Result<(Kind, Vec<PathBuf>), String> {
    let Some(&(kind, _)) = files.first() else {
        return Err("expected .parquet, .arrow, .jsonl or .ndjson files, found none".to_owned());
    };
    if files.iter().any(|(k, _)| *k != kind) {
        let count = |k: Kind| files.iter().filter(|(x, _)| *x == k).count();
        let found: Vec<String> = [
            (Kind::Parquet, ".parquet"),
            (Kind::Arrow, ".arrow"),
            (Kind::Json, ".jsonl/.ndjson"),
        ]
        .into_iter()
        .filter(|(k, _)| count(*k) > 0)
        .map(|(k, ext)| format!("{} {ext}", count(k)))
        .collect();
        return Err(format!(
            "expected files of one format, found {} files",
            found.join(" and ")
        ));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok((kind, files.into_iter().map(|(_, f)| f).collect()))
}

/// Names starting with `_` or `.` are metadata or unfinished writes (`_manifest.json`,
/// `.part-00003.parquet.tmp`), never rows.
fn is_hidden(file_name: &str) -> bool {
    file_name.starts_with('_') || file_name.starts_with('.')
}

/// A `file://` URL for one resolved (absolute, no `..`) file, built directly so that `*`, `?` or `[` in a path are not
/// taken for a glob.
fn file_url(source: &TableSource, file: &Path) -> Result<ListingTableUrl, SqlError> {
    let url = url::Url::from_file_path(file).map_err(|()| SqlError::Unsupported {
        table: source.name.clone(),
        path: file.to_owned(),
        reason: "expected a path that can be written as a file:// URL".to_owned(),
    })?;
    ListingTableUrl::try_new(url, None).map_err(|e| SqlError::Register {
        table: source.name.clone(),
        path: file.to_owned(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_path() {
        let t: TableSource = "out=runs/tox=1".parse().unwrap();
        assert_eq!(t.name, "out");
        assert_eq!(t.path, PathBuf::from("runs/tox=1"));
        assert_eq!(t.to_string(), "out=runs/tox=1");
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in ["out", "=x", "out=", ""] {
            let err = spec.parse::<TableSource>().unwrap_err();
            assert!(matches!(err, SqlError::TableSpec { .. }), "{spec}: {err}");
            assert!(err.to_string().contains("expected NAME=PATH"), "{err}");
        }
    }

    #[test]
    fn rejects_names_that_are_not_identifiers() {
        for name in ["1out", "my-table", "a b", "naïve", "t.x"] {
            let err = format!("{name}=x").parse::<TableSource>().unwrap_err();
            assert!(matches!(err, SqlError::TableName { .. }), "{name}: {err}");
        }
        for name in ["out", "_t", "Out2", "a_b_3"] {
            assert!(check_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn hidden_names() {
        assert!(is_hidden("_manifest.json"));
        assert!(is_hidden(".part-00003.parquet.tmp"));
        assert!(!is_hidden("part-00003.parquet"));
    }

    #[test]
    fn kinds_by_extension() {
        assert_eq!(Kind::of(Path::new("a/b.parquet")), Some(Kind::Parquet));
        assert_eq!(Kind::of(Path::new("b.PARQUET")), Some(Kind::Parquet));
        assert_eq!(Kind::of(Path::new("b.arrow")), Some(Kind::Arrow));
        assert_eq!(Kind::of(Path::new("b.jsonl")), Some(Kind::Json));
        assert_eq!(Kind::of(Path::new("b.ndjson")), Some(Kind::Json));
        assert_eq!(Kind::of(Path::new("b.json")), None);
        assert_eq!(Kind::of(Path::new("b.parquet.tmp")), None);
    }
}
