//! Content-addressed blob store on the local filesystem, with staged writes.
//!
//! Protocol (see docs/storage.md): bytes are written to `staging/<uuid>.part` while hashed,
//! fsynced, then renamed to `staging/<sha256>.<uuid>.ready`. The database transaction that
//! references the key commits; only then is the staged file renamed into `blobs/`. A failed
//! transaction drops the [`StagedBlob`], which deletes the staged file: nothing visible was
//! ever created, so a rollback can never remove a blob that a committed row references.
//! A crash between commit and publish leaves a `.ready` file that startup recovery publishes
//! when the database references its key, and deletes otherwise.

use std::{
    collections::HashSet,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use md5::Md5;
use sha2::{Digest, Sha256};

/// Where blobs live: `<data-dir>/blobs` and `<data-dir>/staging`.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<Dirs>,
}

#[derive(Debug)]
struct Dirs {
    blobs: PathBuf,
    staging: PathBuf,
}

/// A fully written, fsynced file waiting for its transaction to commit.
/// Dropping it without [`BlobStore::publish`] deletes it.
#[derive(Debug)]
pub struct StagedBlob {
    path: PathBuf,
    pub key: String,
    pub md5: String,
    pub sha256: String,
    pub size: u64,
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(blob.key = %self.key, "staged_blob_discarded"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(blob.key = %self.key, error = %e, "removing a staged blob failed")
                }
            }
        }
    }
}

/// What startup recovery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub published: usize,
    pub removed: usize,
}

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
    /// Opens (creating if needed) the blob and staging directories under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<BlobStore> {
        let blobs = data_dir.join("blobs");
        let staging = data_dir.join("staging");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&staging)?;
        Ok(BlobStore {
            inner: Arc::new(Dirs { blobs, staging }),
        })
    }

    pub fn staging_dir(&self) -> &Path {
        &self.inner.staging
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.inner.blobs
    }

    /// `blobs/<first two hex digits>/<sha256>`: keeps directories small.
    pub fn blob_path(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("xx");
        self.inner.blobs.join(shard).join(key)
    }

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

    /// Starts a staged write; feed it with [`StagingWriter::write`].
    pub fn begin_staging(&self) -> io::Result<StagingWriter> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = self.inner.staging.join(format!("{id}.part"));
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

    /// Makes a staged blob visible. Call only after the transaction referencing it committed.
    /// Publishing bytes that are already there is harmless: the key is their hash.
    pub async fn publish(&self, staged: StagedBlob) -> io::Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.publish_blocking(staged))
            .await
            .map_err(io::Error::other)?
    }

    fn publish_blocking(&self, mut staged: StagedBlob) -> io::Result<()> {
        let target = self.blob_path(&staged.key);
        let path = std::mem::take(&mut staged.path);
        if target.exists() {
            std::fs::remove_file(&path)?;
            return Ok(());
        }
        let dir = target.parent().expect("blob path has a shard dir");
        std::fs::create_dir_all(dir)?;
        std::fs::rename(&path, &target)?;
        sync_dir(dir)?;
        tracing::debug!(blob.key = %staged.key, blob.size = staged.size, "blob_published");
        Ok(())
    }

    /// Reads a whole blob. A row can be visible a moment before its blob is published (commit
    /// comes first), so a missing blob is retried briefly before it is reported.
    pub async fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let path = self.blob_path(key);
        let mut delay = Duration::from_millis(5);
        for _ in 0..8 {
            match tokio::fs::read(&path).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        tokio::fs::read(&path).await
    }

    /// Startup recovery: publishes staged files whose key the database references (their
    /// transaction committed, the process died before publishing) and removes the rest.
    pub fn recover(&self, referenced: &HashSet<String>) -> io::Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        for entry in std::fs::read_dir(&self.inner.staging)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name
                .strip_suffix(".ready")
                .and_then(|rest| rest.split('.').next())
                .map(str::to_owned);
            match key {
                Some(key) if referenced.contains(&key) => {
                    let staged = StagedBlob {
                        path,
                        key,
                        md5: String::new(),
                        sha256: String::new(),
                        size: 0,
                    };
                    self.publish_blocking(staged)?;
                    report.published += 1;
                }
                _ => {
                    std::fs::remove_file(&path)?;
                    report.removed += 1;
                }
            }
        }
        sync_dir(&self.inner.staging)?;
        Ok(report)
    }

    /// Files currently in staging (fsck reports them; a clean start leaves none).
    pub fn staging_files(&self) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(&self.inner.staging)?
            .map(|e| e.map(|e| e.path()))
            .collect()
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
        let file = self.file.take().expect("finish called once");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let hasher = std::mem::take(&mut self.hasher);
        let (md5, sha256, size) = hasher.finish();
        let ready = self
            .store
            .inner
            .staging
            .join(format!("{sha256}.{}.ready", self.id));
        std::fs::rename(&self.path, &ready)?;
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(16);
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
