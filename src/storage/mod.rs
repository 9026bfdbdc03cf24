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

mod gc;
mod recovery;
mod stage;
mod staging;

pub use gc::{GcCandidates, hash_file};
pub use recovery::{Census, Orphans, RecoveryReport};
pub use stage::{Hasher, SNIFF_BYTES, StageError, StagedUpload, StagingWriter};

pub use staging::Kind as StagedKind;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

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

    /// Puts a staged file in place of the published blob of its key, whatever is there: for a
    /// published blob that no longer hashes to its key (the staged bytes do, being hashed
    /// while written). Readers see the old file or the new one, never a mix (rename).
    pub async fn replace(&self, mut staged: StagedBlob) -> io::Result<()> {
        let target = self.blob_path(&staged.key);
        let path = std::mem::take(&mut staged.path);
        tokio::task::spawn_blocking(move || {
            let dir = target.parent().expect("blob path has a shard dir");
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&path, &target)?;
            sync_dir(dir)
        })
        .await
        .map_err(io::Error::other)?
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

    /// Reads a project content blob: gzip-compressed ([`BlobStore::stage_content`]) or, if
    /// written before content was compressed, the plain JSON (which never starts with gzip's
    /// magic bytes: JSON text starts with `{`, `[` or whitespace).
    pub async fn read_content(&self, key: &str) -> io::Result<Vec<u8>> {
        let bytes = self.read(key).await?;
        decode_content(bytes)
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
}

/// What an injected failure does: `enospc` fakes a full disk, `crash` kills the process on the
/// spot (no destructors run, like `kill -9`), anything else is a plain I/O error.
/// The JSON a content blob's bytes hold (see [`BlobStore::read_content`]).
pub fn decode_content(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

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

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
