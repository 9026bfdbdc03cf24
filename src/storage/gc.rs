//! What gc and fsck need of published blobs: hashing them, listing them by age, and setting
//! one aside while the database decides whether it may go.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{BlobStore, Hasher, ignore_not_found, staging::sync_dir};

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
        fail::fail_point!("storage::blob_delete", |arg| Err(super::injected(
            "storage::blob_delete",
            arg
        )));
        ignore_not_found(std::fs::remove_file(aside))
    }
}
