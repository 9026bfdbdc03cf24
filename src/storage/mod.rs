//! Content-addressed blob store on the local filesystem, with staged writes.
//!
//! Protocol (see docs/storage.md): bytes are written to `staging/<pid>/<uuid>.part` while
//! hashed, fsynced, then renamed to `staging/<pid>/<sha256>.<uuid>.ready`. The database
//! transaction that references the key commits; only then is the staged file renamed into
//! `blobs/`. A transaction that certainly failed drops the [`StagedBlob`], which deletes the
//! staged file: nothing visible was ever created, so a rollback can never remove a blob that a
//! committed row references. A commit whose outcome is unknown (lost reply, dropped future)
//! keeps the file as `.pending`: the database decides later (published when a row references
//! the key, deleted when none does). Each process stages in its own locked directory (see
//! [`staging`]), so recovery never touches another live process's writes.

mod staging;

pub use staging::Kind as StagedKind;

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
    /// `staging/`: one directory per process below it.
    staging_root: PathBuf,
    /// This process's own staging directory, locked for its lifetime.
    own: staging::OwnDir,
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
            let removed = (|| {
                fail::fail_point!("storage::blob_delete", |arg| Err(injected(
                    "storage::blob_delete",
                    arg
                )));
                std::fs::remove_file(&self.path)
            })();
            // A file that cannot be removed stays in staging: invisible, and startup recovery
            // removes it.
            match removed {
                Ok(()) => tracing::debug!(blob.key = %self.key, "staged_blob_discarded"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(blob.key = %self.key, error = %e, "removing a staged blob failed")
                }
            }
        }
    }
}

impl StagedBlob {
    /// The staged file (to read it back, e.g. an uploaded `.sb3` before it is unpacked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transaction's COMMIT was sent and its outcome is unknown: keep the file, renamed
    /// `.pending`, for the database to decide (see [`BlobStore::settle`]). Never deletes it.
    pub fn keep_pending(mut self) {
        let path = std::mem::take(&mut self.path);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let pending = path.with_file_name(name.replace(".ready", ".pending"));
        match std::fs::rename(&path, &pending) {
            Ok(()) => {
                // The grace before an unreferenced `.pending` file may go counts from now.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&pending)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                tracing::warn!(blob.key = %self.key, "staged_blob_outcome_unknown_kept")
            }
            // Still `.ready` in our own directory: the sweep treats it like `.pending` once no
            // request owns it, which is only after this process is gone.
            Err(e) => {
                tracing::error!(blob.key = %self.key, error = %e, "keeping a pending blob failed")
            }
        }
    }
}

/// What recovery or a sweep did with staged files that no live request owns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub published: usize,
    pub removed: usize,
    /// `.pending` files of this process whose key no row references yet, younger than the
    /// grace period: their commit may still land.
    pub kept_pending: usize,
}

/// Staged files that belong to no live request, with the locks of the dead directories they
/// are in (held until [`BlobStore::settle`] is done with them).
pub struct Orphans {
    dead_dirs: Vec<(PathBuf, std::fs::File)>,
    files: Vec<Orphan>,
}

struct Orphan {
    path: PathBuf,
    key: Option<String>,
    /// A `.pending` file of this (live) process: deleted only past the grace period.
    own_pending: bool,
}

impl Orphans {
    /// The blob keys the orphans carry: ask the database which of them a row references.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.files.iter().filter_map(|f| f.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Staging as fsck sees it.
#[derive(Debug, Default)]
pub struct Census {
    /// Files no live process owns: what recovery would settle.
    pub stale: Vec<PathBuf>,
    /// Complete staged copies in live processes' directories, by key: a committed row whose
    /// blob is only here is a publish in flight, not a violation.
    pub in_flight: std::collections::HashMap<String, PathBuf>,
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
    /// Opens (creating if needed) the blob and staging directories under `data_dir`, and
    /// claims this process's own staging directory.
    pub fn open(data_dir: &Path) -> io::Result<BlobStore> {
        let blobs = data_dir.join("blobs");
        let staging_root = data_dir.join("staging");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&staging_root)?;
        let own = staging::claim(&staging_root)?;
        tracing::debug!(staging.dir = %own.path.display(), "staging_dir_claimed");
        Ok(BlobStore {
            inner: Arc::new(Dirs {
                blobs,
                staging_root,
                own,
            }),
        })
    }

    /// This process's own staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.inner.own.path
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

    /// Makes a staged blob visible. Call only after the transaction referencing it committed.
    /// Publishing bytes that are already there is harmless: the key is their hash.
    pub async fn publish(&self, staged: StagedBlob) -> io::Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.publish_blocking(staged))
            .await
            .map_err(io::Error::other)?
    }

    /// Publishes a blob whose transaction committed, never failing the request: the write is
    /// durable either way (fsynced staged file + committed row). If publishing fails, the staged
    /// file stays and the next reader of the key ([`BlobStore::read`]) or startup recovery
    /// publishes it.
    #[allow(unused_mut)] // mutated only when failpoints are compiled in
    pub async fn publish_committed(&self, mut staged: StagedBlob) {
        fail::fail_point!("storage::after_commit", |arg| {
            // Leave the staged file where it is, as a crash here would.
            let _ = injected("storage::after_commit", arg);
            staged.path = PathBuf::new();
        });
        let key = staged.key.clone();
        if let Err(e) = self.publish(staged).await {
            tracing::error!(blob.key = %key, error = %e, "blob_publish_failed_after_commit");
        }
    }

    fn publish_blocking(&self, mut staged: StagedBlob) -> io::Result<()> {
        let target = self.blob_path(&staged.key);
        let path = std::mem::take(&mut staged.path);
        if target.exists() {
            // Same key, same bytes. (A reader may already have published our file for us.)
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let dir = target.parent().expect("blob path has a shard dir");
        self.ensure_shard(dir)?;
        let renamed = (|| {
            fail::fail_point!("storage::publish", |arg| Err(injected(
                "storage::publish",
                arg
            )));
            std::fs::rename(&path, &target)
        })();
        match renamed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && target.exists() => return Ok(()),
            Err(e) => {
                // Keep the staged file for the reader-side heal / recovery.
                return Err(e);
            }
        }
        sync_dir(dir)?;
        tracing::debug!(blob.key = %staged.key, blob.size = staged.size, "blob_published");
        Ok(())
    }

    /// Publishes a committed key's staged file if its blob is missing (a publish that failed,
    /// has not happened yet, or waits as `.pending` after a commit of unknown outcome). Only
    /// called for keys a committed row references, so the bytes are needed whatever the staged
    /// file's own transaction does: it may come from any process's directory.
    pub fn heal(&self, key: &str) -> io::Result<bool> {
        let target = self.blob_path(key);
        if target.exists() {
            return Ok(true);
        }
        let prefix = format!("{key}.");
        let mut dirs = vec![self.inner.staging_root.clone()];
        for entry in std::fs::read_dir(&self.inner.staging_root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        for dir in dirs {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let complete = matches!(
                    staging::classify(&entry.path()),
                    Some((StagedKind::Ready | StagedKind::Pending | StagedKind::Gc, _))
                );
                if !(complete && name.starts_with(&prefix)) {
                    continue;
                }
                let shard = target.parent().expect("blob path has a shard dir");
                self.ensure_shard(shard)?;
                match std::fs::rename(entry.path(), &target) {
                    Ok(()) => {
                        sync_dir(shard)?;
                        tracing::warn!(blob.key = key, "blob_healed_from_staging");
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(target.exists())
    }

    /// Creates a shard directory, fsyncing `blobs/` when it is new so the directory entry
    /// survives a power cut along with the blob renamed into it.
    fn ensure_shard(&self, shard: &Path) -> io::Result<()> {
        if shard.is_dir() {
            return Ok(());
        }
        match std::fs::create_dir(shard) {
            Ok(()) => sync_dir(&self.inner.blobs),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole blob. A row can be visible a moment before its blob is published (commit
    /// comes first), so a missing blob is retried briefly before it is reported.
    pub async fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let path = self.blob_path(key);
        match tokio::fs::read(&path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_published(key).await?;
                tokio::fs::read(&path).await
            }
            other => other,
        }
    }

    /// For a key a committed row references: waits briefly for its publish, then publishes it
    /// from staging if that is where it still is.
    pub async fn ensure_published(&self, key: &str) -> io::Result<()> {
        let mut delay = Duration::from_millis(2);
        for _ in 0..5 {
            let store = self.clone();
            let k = key.to_owned();
            let healed = tokio::task::spawn_blocking(move || store.heal(&k))
                .await
                .map_err(io::Error::other)??;
            if healed {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(())
    }

    /// Staged files that no live request owns: every file in the directories of processes
    /// that are gone (their locks are taken and held), files directly under `staging/` (the
    /// layout before per-process directories), and, with `own_pending`, this process's
    /// `.pending` files. Another live process's directory is never listed.
    pub fn orphans(&self, own_pending: bool) -> io::Result<Orphans> {
        let mut out = Orphans {
            dead_dirs: Vec::new(),
            files: Vec::new(),
        };
        let mut add = |path: PathBuf, own: bool| {
            let (kind, key) = staging::classify(&path).unwrap_or((StagedKind::Part, None));
            if own && kind != StagedKind::Pending {
                return;
            }
            out.files.push(Orphan {
                path,
                key,
                own_pending: own,
            });
        };
        for entry in std::fs::read_dir(&self.inner.staging_root)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                add(entry.path(), false);
            }
        }
        for dir in staging::dirs(&self.inner.staging_root, &self.inner.own.path)? {
            match dir.holder {
                staging::Holder::Live => {}
                staging::Holder::Own if own_pending => {
                    for f in staging::files(&dir.path)? {
                        add(f, true);
                    }
                }
                staging::Holder::Own => {}
                staging::Holder::Dead(lock) => {
                    for f in staging::files(&dir.path)? {
                        add(f, false);
                    }
                    out.dead_dirs.push((dir.path, lock));
                }
            }
        }
        Ok(out)
    }

    /// Decides orphans by what the database says: a file whose key `referenced` contains is
    /// published (its transaction committed); any other is deleted, except this process's own
    /// `.pending` files younger than `pending_grace` (a commit still on the wire may land).
    /// Dead processes' directories are removed once empty.
    pub fn settle(
        &self,
        orphans: Orphans,
        referenced: &HashSet<String>,
        pending_grace: Duration,
    ) -> io::Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let now = std::time::SystemTime::now();
        for file in orphans.files {
            match file.key {
                Some(key) if referenced.contains(&key) => {
                    let staged = StagedBlob {
                        path: file.path,
                        key,
                        md5: String::new(),
                        sha256: String::new(),
                        size: 0,
                    };
                    match self.publish_blocking(staged) {
                        Ok(()) => report.published += 1,
                        // A reader healed it meanwhile.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    if file.own_pending {
                        let age = std::fs::metadata(&file.path)
                            .and_then(|m| m.modified())
                            .map(|t| now.duration_since(t).unwrap_or_default())
                            .unwrap_or_default();
                        if age < pending_grace {
                            report.kept_pending += 1;
                            continue;
                        }
                    }
                    ignore_not_found(std::fs::remove_file(&file.path))?;
                    report.removed += 1;
                }
            }
        }
        for (dir, _lock) in orphans.dead_dirs {
            // Not empty: a file appeared that we did not list; the next sweep gets it.
            if std::fs::remove_dir(&dir).is_ok() {
                tracing::debug!(staging.dir = %dir.display(), "dead_staging_dir_removed");
            }
        }
        sync_dir(&self.inner.staging_root)?;
        sync_dir(&self.inner.own.path)?;
        Ok(report)
    }

    /// Staging for fsck: stale files (no live owner) and live processes' complete staged
    /// copies by key. Takes no lock beyond the moment of checking one.
    pub fn census(&self) -> io::Result<Census> {
        let mut census = Census::default();
        for entry in std::fs::read_dir(&self.inner.staging_root)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                census.stale.push(entry.path());
            }
        }
        for dir in staging::dirs(&self.inner.staging_root, &self.inner.own.path)? {
            let live = !matches!(dir.holder, staging::Holder::Dead(_));
            for f in staging::files(&dir.path)? {
                if !live {
                    census.stale.push(f);
                    continue;
                }
                if let Some((StagedKind::Ready | StagedKind::Pending | StagedKind::Gc, Some(key))) =
                    staging::classify(&f)
                {
                    census.in_flight.insert(key, f);
                }
            }
        }
        census.stale.sort();
        Ok(census)
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
        fail::fail_point!("storage::stage_write", |arg| Err(injected(
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
        let file = self.file.take().expect("finish called once");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        fail::fail_point!("storage::stage_fsync", |arg| Err(injected(
            "storage::stage_fsync",
            arg
        )));
        file.sync_all()?;
        drop(file);
        let hasher = std::mem::take(&mut self.hasher);
        let (md5, sha256, size) = hasher.finish();
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

/// What an injected failure does: `enospc` fakes a full disk, `crash` kills the process on the
/// spot (no destructors run, like `kill -9`), anything else is a plain I/O error.
pub fn injected(point: &str, arg: Option<String>) -> io::Error {
    match arg.as_deref() {
        Some("enospc") => io::Error::from_raw_os_error(28),
        Some("crash") => {
            eprintln!("failpoint {point}: crashing");
            std::process::abort()
        }
        _ => io::Error::other(format!("injected failure at {point}")),
    }
}

use staging::sync_dir;

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

/// Blobs split by age, for gc.
#[derive(Debug, Default)]
pub struct GcCandidates {
    /// (key, size) of blobs older than the grace period.
    pub old: Vec<(String, u64)>,
    pub young: usize,
}

impl BlobStore {
    /// md5, sha256 and size of a published blob, streaming.
    pub fn hash_blob(&self, key: &str) -> io::Result<(String, String, u64)> {
        hash_file(&self.blob_path(key))
    }
}

/// md5, sha256 and size of a file, streaming.
pub fn hash_file(path: &Path) -> io::Result<(String, String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

impl BlobStore {
    /// Every published blob, split by whether its mtime is older than `grace`.
    pub fn blobs_older_than(&self, grace: Duration) -> io::Result<GcCandidates> {
        let mut out = GcCandidates::default();
        let now = std::time::SystemTime::now();
        for shard in std::fs::read_dir(&self.inner.blobs)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let meta = entry.metadata()?;
                let age = now.duration_since(meta.modified()?).unwrap_or_default();
                if age >= grace {
                    out.old
                        .push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
                } else {
                    out.young += 1;
                }
            }
        }
        Ok(out)
    }

    /// Moves a blob out of sight into staging (`<key>.<uuid>.gc`); None if it is already gone.
    pub fn set_aside(&self, key: &str) -> io::Result<Option<PathBuf>> {
        let aside = self
            .inner
            .own
            .path
            .join(format!("{key}.{}.gc", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(self.blob_path(key), &aside) {
            Ok(()) => Ok(Some(aside)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Undoes [`BlobStore::set_aside`] (a writer referenced the key meanwhile).
    pub fn put_back(&self, key: &str, aside: &Path) -> io::Result<()> {
        let target = self.blob_path(key);
        // A reader may have healed the key from our aside file already.
        let result = if target.exists() {
            std::fs::remove_file(aside)
        } else {
            std::fs::rename(aside, &target)
                .and_then(|()| sync_dir(target.parent().expect("shard dir")))
        };
        ignore_not_found(result)
    }

    pub fn delete_aside(&self, aside: &Path) -> io::Result<()> {
        fail::fail_point!("storage::blob_delete", |arg| Err(injected(
            "storage::blob_delete",
            arg
        )));
        ignore_not_found(std::fs::remove_file(aside))
    }
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
