//! Test servers on 127.0.0.1 for the object storage tests: a moto S3 server (started on a free
//! port, killed on drop) with a client of the test's own, and a TCP proxy that can be cut.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A moto S3 server on 127.0.0.1, killed on drop.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) endpoint: String,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl S3Server {
    /// Starts a server, or `None` (with a message) where `moto_server` is not installed.
    pub(crate) fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra environment for moto.
    pub(crate) fn start_with(env: &[(&str, &str)]) -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "SKIPPED: moto_server cannot be started ({e}); `pip install 'moto[server]'` \
                     (.ci/run does) to run the object storage tests"
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            rt,
        })
    }

    /// The environment mbpipe reads the server and credentials from.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("MBPIPE_STORE_RETRY_SECONDS", "3".into()),
        ]
    }

    pub(crate) fn store(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// Creates `bucket` (S3's CreateBucket is a PUT on the bucket's path), retrying while the
    /// server is still starting.
    pub(crate) fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let port = self.endpoint.rsplit(':').next().unwrap();
        let mut last = String::new();
        for _ in 0..50 {
            let attempt = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))?;
                write!(
                    s,
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            })();
            match attempt {
                Ok(reply) if reply.starts_with("HTTP/1.1 200") => return,
                Ok(reply) => last = reply,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot create bucket {bucket}: {last}");
    }

    /// Uploads the files of local `dir` under `prefix`.
    pub(crate) fn upload_dir(&self, bucket: &str, dir: &Path, prefix: &str) {
        let store = self.store(bucket);
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let key = Key::from(format!("{prefix}/{}", entry.file_name().to_string_lossy()));
            let bytes = std::fs::read(entry.path()).unwrap();
            self.rt
                .block_on(store.put(&key, PutPayload::from(bytes)))
                .unwrap();
        }
    }

    /// Names (relative to `prefix`) and sizes of the objects under it.
    pub(crate) fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let store = self.store(bucket);
        let prefix = Key::from(prefix);
        let metas: Vec<_> = self
            .rt
            .block_on(store.list(Some(&prefix)).try_collect())
            .unwrap();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| {
                let name = m.location.as_ref()[prefix.as_ref().len() + 1..].to_string();
                (name, m.size)
            })
            .collect();
        out.sort();
        out
    }

    pub(crate) fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let store = self.store(bucket);
        let r = self.rt.block_on(async {
            match store.get(&Key::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        });
        r
    }

    /// Copies the objects under `prefix` into a new local folder.
    pub(crate) fn download(&self, bucket: &str, prefix: &str, to: &Path) -> PathBuf {
        std::fs::create_dir_all(to).unwrap();
        for (name, _) in self.list(bucket, prefix) {
            let bytes = self.get(bucket, &format!("{prefix}/{name}")).unwrap();
            std::fs::write(to.join(name), bytes).unwrap();
        }
        to.to_path_buf()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 in front of the S3 server that can be cut (every connection
/// closed, new ones closed at once) and restored: a server that goes away and comes back.
pub(crate) struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut guard = open2.lock().unwrap();
                for s in [&client, &server] {
                    guard.push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, open }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
