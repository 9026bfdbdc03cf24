//! Writing into staging: the streaming writer that hashes as it writes, and the entry points
//! that stage bytes from memory or from a request body.

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::Arc,
};

use md5::Md5;
use sha2::{Digest, Sha256};

use super::{BlobStore, StagedBlob, staging::sync_dir};

/// Incremental md5 + sha256 + size, computed in one pass over the bytes.
#[derive(Default)]
pub struct Hasher {
    md5: Md5,
    sha256: Sha256,
    size: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// (md5 hex, sha256 hex, size)
    pub fn finish(self) -> (String, String, u64) {
        (
            hex::encode(self.md5.finalize()),
            hex::encode(self.sha256.finalize()),
            self.size,
        )
    }
}

impl BlobStore {
    /// Stages bytes already in memory (project JSON).
    pub async fn stage_bytes(&self, bytes: Arc<Vec<u8>>) -> io::Result<StagedBlob> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = store.begin_staging()?;
            writer.write(&bytes)?;
            writer.finish()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Stages a project's JSON as content: stored gzip-compressed, named (and described) by
    /// the hash and size of the JSON itself, so a key means the same bytes whether its blob
    /// is compressed or not (blobs written before compression stay plain and readable, see
    /// [`BlobStore::read_content`]). Versions of a project differ in small parts, but every
    /// version is a whole blob: compression is what keeps history cheap.
    pub async fn stage_content(&self, json: Arc<Vec<u8>>) -> io::Result<StagedBlob> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut plain = Hasher::default();
            plain.update(&json);
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(json.len() / 4 + 64),
                flate2::Compression::new(6),
            );
            gz.write_all(&json)?;
            let compressed = gz.finish()?;
            let mut writer = store.begin_staging()?;
            writer.write(&compressed)?;
            writer.finish_as(plain)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Starts a staged write; feed it with [`StagingWriter::write`].
    pub fn begin_staging(&self) -> io::Result<StagingWriter> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = self.inner.own.path.join(format!("{id}.part"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(StagingWriter {
            store: self.clone(),
            id,
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            path,
            hasher: Hasher::default(),
        })
    }
}

/// A staged write in progress: hashes while writing, deletes its file if abandoned.
pub struct StagingWriter {
    store: BlobStore,
    id: String,
    file: Option<io::BufWriter<std::fs::File>>,
    path: PathBuf,
    hasher: Hasher,
}

impl StagingWriter {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        fail::fail_point!("storage::stage_write", |arg| Err(super::injected(
            "storage::stage_write",
            arg
        )));
        self.hasher.update(bytes);
        self.file
            .as_mut()
            .expect("writer used after finish")
            .write_all(bytes)
    }

    pub fn size(&self) -> u64 {
        self.hasher.size()
    }

    /// Flushes, fsyncs and names the file after its hash, ready to publish.
    pub fn finish(mut self) -> io::Result<StagedBlob> {
        let hasher = std::mem::take(&mut self.hasher);
        self.finish_as(hasher)
    }

    /// [`Self::finish`], named and described by `named` (the hash of what the written bytes
    /// encode) instead of the written bytes' own hash.
    fn finish_as(mut self, named: Hasher) -> io::Result<StagedBlob> {
        let file = self.file.take().expect("finish called once");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        fail::fail_point!("storage::stage_fsync", |arg| Err(super::injected(
            "storage::stage_fsync",
            arg
        )));
        file.sync_all()?;
        drop(file);
        let (md5, sha256, size) = named.finish();
        let ready = self
            .store
            .inner
            .own
            .path
            .join(format!("{sha256}.{}.ready", self.id));
        std::fs::rename(&self.path, &ready)?;
        // The rename must survive a power cut before the transaction that names the key
        // commits: otherwise a committed row could outlive its bytes.
        sync_dir(&self.store.inner.own.path)?;
        // From here the StagedBlob owns the file.
        self.path = PathBuf::new();
        Ok(StagedBlob {
            path: ready,
            key: sha256.clone(),
            md5,
            sha256,
            size,
        })
    }
}

impl Drop for StagingWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why a streamed staging failed.
#[derive(Debug)]
pub enum StageError {
    /// More than the limit arrived; the staged file is gone.
    TooLarge { limit: u64 },
    /// The client's body stream failed (disconnect, malformed multipart).
    Body(String),
    /// The filesystem failed (disk full, permissions).
    Io(io::Error),
}

/// A streamed upload: the staged blob plus its first bytes, for sniffing the format.
#[derive(Debug)]
pub struct StagedUpload {
    pub blob: StagedBlob,
    pub head: Vec<u8>,
}

/// How many leading bytes of an upload are kept in memory for format detection.
pub const SNIFF_BYTES: usize = 64 * 1024;

enum Chunk {
    Data(bytes::Bytes),
    Done,
}

impl BlobStore {
    /// Streams a body into staging, hashing on the way, with memory bounded by a small channel
    /// of chunks whatever the size. Over `limit` bytes, or on a body error, the partial file is
    /// removed and nothing is staged.
    pub async fn stage_stream<S, E>(
        &self,
        mut body: S,
        limit: u64,
    ) -> Result<StagedUpload, StageError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        // A few chunks in flight keep disk and socket busy; more would only hold memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        let store = self.clone();
        // Disk writes and hashing run on a blocking thread, overlapped with reading the socket.
        let writer = tokio::task::spawn_blocking(move || -> io::Result<Option<StagedBlob>> {
            let mut w = store.begin_staging()?;
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Chunk::Data(bytes) => w.write(&bytes)?,
                    Chunk::Done => return w.finish().map(Some),
                }
            }
            // The sender went away without `Done`: abandoned, `w` deletes its file.
            Ok(None)
        });
        let mut head = Vec::new();
        let mut size = 0u64;
        let outcome: Result<(), StageError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StageError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StageError::TooLarge { limit });
                }
                if head.len() < SNIFF_BYTES {
                    let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    // The writer stopped early: its error is reported below.
                    return Ok(());
                }
            }
            let _ = tx.send(Chunk::Done).await;
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| StageError::Io(io::Error::other(e)))?;
        outcome?;
        match written {
            Ok(Some(blob)) => Ok(StagedUpload { blob, head }),
            Ok(None) => Err(StageError::Body("upload ended early".into())),
            Err(e) => Err(StageError::Io(e)),
        }
    }
}
