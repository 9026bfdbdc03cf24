//! Staged files no live request owns (a crashed process, a commit with an unknown outcome):
//! listing them, settling them by what the database says, and counting them for fsck.

use std::{collections::HashSet, io, path::PathBuf, time::Duration};

use super::{BlobStore, StagedBlob, StagedKind, ignore_not_found, staging, staging::sync_dir};

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

impl BlobStore {
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
