//! A blocking `Read` over an object's body, streamed a few chunks at a time.

use std::io::Read;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::{runtime, Remote, StoreError};

/// Chunks buffered ahead of the reader: the body streams, it is never held whole.
const CHUNKS_AHEAD: usize = 4;

/// Reads an object from its start; errors carry the object's URL.
pub struct ObjectReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
    chunk: Bytes,
}

impl ObjectReader {
    pub(crate) fn start(remote: Remote, limit: Option<u64>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        if limit == Some(0) {
            // An empty range is not a valid ranged request; an empty body needs none.
            return Self {
                rx,
                chunk: Bytes::new(),
            };
        }
        runtime().spawn(async move {
            let opts = GetOptions {
                range: limit.map(|n| GetRange::Bounded(0..n)),
                ..Default::default()
            };
            let store: &dyn ObjectStore = remote.store.as_ref();
            let mut body = match store.get_opts(&remote.key, opts).await {
                Ok(r) => r.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(remote.err(e))).await;
                    return;
                }
            };
            while let Some(chunk) = body.next().await {
                let failed = chunk.is_err();
                // The reader went away (dropped early): stop downloading.
                if tx.send(chunk.map_err(|e| remote.err(e))).await.is_err() || failed {
                    return;
                }
            }
        });
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
