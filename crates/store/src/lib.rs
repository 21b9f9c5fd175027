//! Object storage for mbpipe: `s3://`, `gs://` and `az://` URLs, credentials and endpoints
//! from the environment (as `object_store`'s builders read them), and blocking operations for
//! the pipeline's reader and writer threads.
//!
//! Every operation runs on one small runtime of this crate's own and the caller waits on a
//! channel, so these functions may be called from any thread, inside another Tokio runtime too.
//! Transient failures (timeouts, 5xx, throttling) are retried with backoff by `object_store`;
//! what is left is a [`StoreError`] naming the URL and the cause.
//!
//! ```no_run
//! let dir = mbpipe_store::Remote::parse("s3://corpus/comments")?;
//! for entry in dir.list_dir()? {
//!     println!("{} ({} bytes)", entry.name, entry.size);
//! }
//! # Ok::<(), mbpipe_store::StoreError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod reader;

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{
    multipart::MultipartStore, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

pub use error::{ErrorKind, StoreError};
pub use object_store::ObjectStore as DynObjectStore;
pub use reader::ObjectReader;

/// What a multipart upload marker holds before the upload id.
pub const MULTIPART_MARK: &str = "multipart upload ";

/// Why uploading parts failed.
enum UploadError {
    Store(object_store::Error),
    Local(std::io::Error),
}

/// URL schemes read and written through `object_store`.
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Objects above this size are uploaded in parts (multipart upload), others in one put;
/// `MBPIPE_STORE_MULTIPART_BYTES` changes the threshold.
const SINGLE_PUT_BYTES: u64 = 16 << 20;
/// The size of each part of a multipart upload (S3 wants at least 5 MiB but for the last).
const UPLOAD_PART_BYTES: usize = 16 << 20;

fn multipart_threshold() -> u64 {
    std::env::var("MBPIPE_STORE_MULTIPART_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SINGLE_PUT_BYTES)
}

/// True when `spec` is an object storage URL (`s3://`, `gs://`, `az://`, ...).
pub fn is_url(spec: &str) -> bool {
    spec.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// The local path of a `file://` URL (`file:///data/x` is `/data/x`); `None` for anything else.
pub fn file_url_path(spec: &str) -> Option<&str> {
    spec.strip_prefix("file://")
}

/// The runtime every store operation runs on: one worker thread, as the work is waiting on the
/// network (each allocating thread costs glibc a malloc arena: a second worker measured ~5 MiB
/// more peak RSS on a 90 MiB run).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mbpipe-store")
            .enable_all()
            .build()
            .expect("cannot start the object storage runtime")
    })
}

/// Runs `fut` on the store runtime and waits for it; callable from any thread.
fn wait<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("an object storage task panicked; this is a bug")
}

/// How long transient failures are retried before an operation fails:
/// `MBPIPE_STORE_RETRY_SECONDS`, default 180.
fn retry_config() -> RetryConfig {
    let seconds = std::env::var("MBPIPE_STORE_RETRY_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(180);
    RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(seconds),
        ..Default::default()
    }
}

/// A bucket's client, as the two traits mbpipe uses.
#[derive(Clone)]
struct Client {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
}

fn client<S: ObjectStore + MultipartStore>(s: S) -> Client {
    let s = Arc::new(s);
    Client {
        store: s.clone(),
        multipart: s,
    }
}

/// Builds the client for `root` (`scheme://bucket`) from the environment.
fn build(root: &str) -> Result<Client, StoreError> {
    let scheme = root.split_once("://").map_or("", |(s, _)| s);
    let built = match scheme {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(root)
                .with_retry(retry_config());
            // An S3-compatible server on plain http (MinIO, a test server) is what the user
            // configured; object_store refuses http unless told.
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default();
            if endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            b.build().map(client)
        }
        "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_url(root)
            .with_retry(retry_config())
            .build()
            .map(client),
        _ => object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_url(root)
            .with_retry(retry_config())
            .build()
            .map(client),
    };
    built.map_err(|e| StoreError::from_store(root, e))
}

/// The client for `root`, built once per process and shared (one connection pool per bucket).
fn client_for(root: &str) -> Result<Client, StoreError> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Client>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(root) {
        return Ok(c.clone());
    }
    let c = build(root)?;
    clients.insert(root.to_string(), c.clone());
    Ok(c)
}

/// What an object storage spec names.
#[derive(Debug)]
pub enum Expanded {
    /// One object, named in full.
    Object(Entry),
    /// The objects listed under a prefix or matching a glob, sorted by URL.
    Listed(Vec<Entry>),
}

/// The objects `spec` names: one object (`s3://b/k.parquet`), the objects directly under a
/// prefix (`s3://b/dir`, `s3://b/dir/`: not in sub-prefixes), or the objects whose URL matches
/// a glob (`s3://b/dir/*.parquet`, listed under the glob's literal part; `*` stays within one
/// `/` segment).
pub fn expand(spec: &str) -> Result<Expanded, StoreError> {
    let trimmed = spec.trim_end_matches('/');
    let glob_base = trimmed
        .find(['*', '?', '['])
        .and_then(|i| trimmed[..i].rfind('/'))
        .map(|j| &trimmed[..j]);
    if let Some(base) = glob_base {
        let pattern = glob::Pattern::new(trimmed)
            .map_err(|e| StoreError::invalid(spec, format!("invalid glob: {e}")))?;
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let listed = Remote::parse(base)?.list_all()?;
        return Ok(Expanded::Listed(
            listed
                .into_iter()
                .filter(|e| pattern.matches_with(&e.url, options))
                .collect(),
        ));
    }
    let remote = Remote::parse(trimmed)?;
    if !spec.ends_with('/') && !remote.name().is_empty() {
        if let Some(object) = remote.head()? {
            return Ok(Expanded::Object(object));
        }
    }
    Ok(Expanded::Listed(remote.list_dir()?))
}

/// An object or a prefix ("folder") in a bucket, with the bucket's store.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    /// `scheme://bucket`.
    root: String,
    key: Key,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name relative to the listed prefix.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Its version tag, where the store has one.
    pub e_tag: Option<String>,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

impl Remote {
    /// Parses `scheme://bucket/key`. The store is built from the environment (credentials,
    /// region, endpoint) the first time a bucket is used.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| StoreError::invalid(url, e.to_string()))?;
        let bucket = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| StoreError::invalid(url, "the URL names no bucket".into()))?;
        let root = format!("{}://{bucket}", parsed.scheme());
        let key = Key::from_url_path(parsed.path())
            .map_err(|e| StoreError::invalid(url, e.to_string()))?;
        let Client { store, multipart } = client_for(&root)?;
        Ok(Self {
            store,
            multipart,
            root,
            key,
        })
    }

    /// The URL, e.g. `s3://bucket/key`.
    pub fn url(&self) -> String {
        if self.key.as_ref().is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.key)
        }
    }

    /// `scheme://bucket`, and the store serving it (for DataFusion's object store registry).
    pub fn store(&self) -> (&str, Arc<dyn ObjectStore>) {
        (&self.root, self.store.clone())
    }

    /// The object `name` under this prefix.
    pub fn join(&self, name: &str) -> Remote {
        let key = name
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.key.clone(), |k, part| k.clone().join(part));
        Remote {
            key,
            ..self.clone()
        }
    }

    /// The last segment of the key.
    pub fn name(&self) -> &str {
        self.key.filename().unwrap_or("")
    }

    fn err(&self, e: object_store::Error) -> StoreError {
        StoreError::from_store(&self.url(), e)
    }

    /// Objects directly under this prefix (not in sub-prefixes), sorted by name.
    pub fn list_dir(&self) -> Result<Vec<Entry>, StoreError> {
        let (store, key, me) = (self.store.clone(), self.key.clone(), self.clone());
        let listed = wait(async move { store.list_with_delimiter(Some(&key)).await })
            .map_err(|e| me.err(e))?;
        let mut out: Vec<Entry> = listed.objects.into_iter().map(|m| self.entry(m)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every object under this prefix, sub-prefixes included, sorted by name.
    pub fn list_all(&self) -> Result<Vec<Entry>, StoreError> {
        let (store, key, me) = (self.store.clone(), self.key.clone(), self.clone());
        let listed: Vec<_> = wait(async move { store.list(Some(&key)).try_collect().await })
            .map_err(|e| me.err(e))?;
        let mut out: Vec<Entry> = listed.into_iter().map(|m| self.entry(m)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn entry(&self, m: object_store::ObjectMeta) -> Entry {
        let full = m.location.as_ref();
        let prefix = self.key.as_ref();
        let name = full
            .strip_prefix(prefix)
            .map(|n| n.trim_start_matches('/'))
            .unwrap_or(full)
            .to_string();
        Entry {
            name,
            url: format!("{}/{}", self.root, full),
            size: m.size,
            e_tag: m.e_tag,
            modified_ms: m.last_modified.timestamp_millis(),
        }
    }

    /// The object's size and version, `None` when there is no such object.
    pub fn head(&self) -> Result<Option<Entry>, StoreError> {
        let (store, key) = (self.store.clone(), self.key.clone());
        match wait(async move { store.head(&key).await }) {
            Ok(m) => Ok(Some(Entry {
                name: self.name().to_string(),
                url: self.url(),
                size: m.size,
                e_tag: m.e_tag,
                modified_ms: m.last_modified.timestamp_millis(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Bytes `range` of the object.
    pub fn get_range(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let (store, key) = (self.store.clone(), self.key.clone());
        wait(async move { store.get_range(&key, range).await }).map_err(|e| self.err(e))
    }

    /// The whole object (small objects: journals, manifests), `None` when there is none.
    pub fn read_all(&self) -> Result<Option<Bytes>, StoreError> {
        let (store, key) = (self.store.clone(), self.key.clone());
        match wait(async move { store.get(&key).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Streams the object from its start (a few chunks buffered at a time), its first `limit`
    /// bytes when given.
    pub fn reader(&self, limit: Option<u64>) -> ObjectReader {
        ObjectReader::start(self.clone(), limit)
    }

    /// Writes the object whole, replacing any object of that name.
    pub fn put(&self, bytes: impl Into<Bytes>) -> Result<(), StoreError> {
        let (store, key) = (self.store.clone(), self.key.clone());
        let payload = PutPayload::from(bytes.into());
        wait(async move { store.put(&key, payload).await.map(|_| ()) }).map_err(|e| self.err(e))
    }

    /// Writes the object only if there is none of that name (the store's conditional put):
    /// `Ok(false)` when one exists.
    pub fn put_new(&self, bytes: impl Into<Bytes>) -> Result<bool, StoreError> {
        let (store, key) = (self.store.clone(), self.key.clone());
        let payload = PutPayload::from(bytes.into());
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match wait(async move { store.put_opts(&key, payload, opts).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Uploads the local file `path` as this object. It becomes visible only when complete:
    /// one put, or above 16 MiB a multipart upload of 16 MiB parts that is completed last. A
    /// multipart upload's id is first written to `marker`, so that one left incomplete by a
    /// killed process can be aborted later ([`Remote::abort_upload`]); the marker is deleted
    /// once the upload is completed or aborted.
    pub fn upload(&self, path: &std::path::Path, marker: &Remote) -> Result<(), StoreError> {
        let local_err = |e: std::io::Error| {
            StoreError::local(&self.url(), format!("cannot read {}: {e}", path.display()))
        };
        let mut file = std::fs::File::open(path).map_err(local_err)?;
        let size = file.metadata().map_err(local_err)?.len();
        if size <= multipart_threshold() {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(local_err)?;
            return self.put(bytes);
        }
        let (mp, key) = (self.multipart.clone(), self.key.clone());
        let id = wait(async move { mp.create_multipart(&key).await }).map_err(|e| self.err(e))?;
        marker.put(format!("{MULTIPART_MARK}{id}"))?;
        let result = self.upload_parts(&mut file, &id).map_err(|e| match e {
            UploadError::Store(e) => self.err(e),
            UploadError::Local(e) => local_err(e),
        });
        if result.is_err() {
            let _ = self.abort_upload(&id);
        }
        marker.delete()?;
        result
    }

    /// Sends `file` as the parts of upload `id`, one part in memory at a time, and completes it.
    fn upload_parts(&self, file: &mut std::fs::File, id: &str) -> Result<(), UploadError> {
        let mut parts = Vec::new();
        loop {
            let mut chunk = Vec::with_capacity(UPLOAD_PART_BYTES);
            file.by_ref()
                .take(UPLOAD_PART_BYTES as u64)
                .read_to_end(&mut chunk)
                .map_err(UploadError::Local)?;
            if chunk.is_empty() && !parts.is_empty() {
                break;
            }
            let (mp, key, id) = (self.multipart.clone(), self.key.clone(), id.to_string());
            let index = parts.len();
            let last = chunk.len() < UPLOAD_PART_BYTES;
            let part =
                wait(async move { mp.put_part(&key, &id, index, PutPayload::from(chunk)).await })
                    .map_err(UploadError::Store)?;
            parts.push(part);
            if last {
                break;
            }
        }
        let (mp, key, id) = (self.multipart.clone(), self.key.clone(), id.to_string());
        wait(async move { mp.complete_multipart(&key, &id, parts).await })
            .map(|_| ())
            .map_err(UploadError::Store)
    }

    /// Aborts multipart upload `id` of this object (one a killed run left incomplete); no error
    /// when it is already gone.
    pub fn abort_upload(&self, id: &str) -> Result<(), StoreError> {
        let (mp, key, id) = (self.multipart.clone(), self.key.clone(), id.to_string());
        match wait(async move { mp.abort_multipart(&key, &id).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Deletes the object; no error when there is none.
    pub fn delete(&self) -> Result<(), StoreError> {
        let (store, key) = (self.store.clone(), self.key.clone());
        match wait(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        for url in [
            "s3://b/k",
            "S3://b",
            "gs://b/x/*.parquet",
            "az://c/p",
            "abfss://c@a/p",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in [
            "/data/x.parquet",
            "data/s3:/x",
            "file:///data",
            "http://host/x",
            "s3",
        ] {
            assert!(!is_url(path), "{path}");
        }
        assert_eq!(file_url_path("file:///data/x"), Some("/data/x"));
        assert_eq!(file_url_path("/data/x"), None);
    }
}
