//! Staging directories, one per process: `staging/<pid>/`, held by an exclusive `flock` on the
//! directory for the process's lifetime. A directory whose lock can be taken belongs to a
//! process that is gone; only such directories (and this process's own) are ever cleaned, so
//! a second process starting on the same data dir never touches the first one's writes.

use std::{
    fs::{File, TryLockError},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// This process's staging directory and the lock that keeps it ours.
#[derive(Debug)]
pub(super) struct OwnDir {
    pub path: PathBuf,
    _lock: File,
}

impl Drop for OwnDir {
    fn drop(&mut self) {
        // Only if empty: what is left is for recovery once our lock is gone.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Creates and locks a fresh directory under `root`: `<pid>`, or `<pid>-<n>` when that name
/// is taken (a dead process with the same pid, or another PID namespace on a shared volume).
pub(super) fn claim(root: &Path) -> io::Result<OwnDir> {
    let pid = std::process::id();
    for n in 0..1000u32 {
        let name = if n == 0 {
            pid.to_string()
        } else {
            format!("{pid}-{n}")
        };
        let path = root.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let lock = File::open(&path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // Between create and lock, another process's recovery may have found the directory
        // empty and unlocked and removed it: make sure the locked inode is still at `path`.
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == lock.metadata()?.ino() => {
                sync_dir(root)?;
                return Ok(OwnDir { path, _lock: lock });
            }
            _ => continue,
        }
    }
    Err(io::Error::other("no free staging directory name"))
}

/// Who holds a staging directory.
pub(super) enum Holder {
    /// This process.
    Own,
    /// Another live process: its files are writes in flight.
    Live,
    /// Nobody: its process is gone. The lock is ours while this value lives.
    Dead(File),
}

/// A staging directory and who holds it.
pub(super) struct Dir {
    pub path: PathBuf,
    pub holder: Holder,
}

/// Every per-process directory under `root`, with its holder.
pub(super) fn dirs(root: &Path, own: &Path) -> io::Result<Vec<Dir>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        if path == own {
            out.push(Dir {
                path,
                holder: Holder::Own,
            });
            continue;
        }
        let lock = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let holder = match lock.try_lock() {
            Ok(()) => Holder::Dead(lock),
            Err(TryLockError::WouldBlock) => Holder::Live,
            Err(TryLockError::Error(e)) => return Err(e),
        };
        out.push(Dir { path, holder });
    }
    Ok(out)
}

/// Files directly in `dir` (a staging directory holds no subdirectories).
pub(super) fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// What a staged file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<uuid>.part`: being written.
    Part,
    /// `<key>.<uuid>.ready`: complete, its request still deciding.
    Ready,
    /// `<key>.<uuid>.pending`: its COMMIT was sent and its outcome is unknown to the request;
    /// the database decides (published if a row references the key).
    Pending,
    /// `<key>.<uuid>.gc`: set aside by gc.
    Gc,
}

/// The kind of a staged file and the blob key it carries (none for `.part`).
pub fn classify(path: &Path) -> Option<(Kind, Option<String>)> {
    let name = path.file_name()?.to_str()?;
    let (stem, kind) = if let Some(s) = name.strip_suffix(".ready") {
        (s, Kind::Ready)
    } else if let Some(s) = name.strip_suffix(".pending") {
        (s, Kind::Pending)
    } else if let Some(s) = name.strip_suffix(".gc") {
        (s, Kind::Gc)
    } else if name.ends_with(".part") {
        return Some((Kind::Part, None));
    } else {
        return None;
    };
    let key = stem.split('.').next().filter(|k| !k.is_empty())?;
    Some((kind, Some(key.to_owned())))
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_gets_its_own_directory_and_sees_the_first_as_live() {
        let root = tempfile::tempdir().unwrap();
        let a = claim(root.path()).unwrap();
        let b = claim(root.path()).unwrap();
        assert_ne!(a.path, b.path);
        let seen = dirs(root.path(), &b.path).unwrap();
        assert_eq!(seen.len(), 2);
        for d in &seen {
            if d.path == a.path {
                assert!(matches!(d.holder, Holder::Live));
            } else {
                assert!(matches!(d.holder, Holder::Own));
            }
        }
        let a_path = a.path.clone();
        // A process that dies leaves its files (an empty directory is removed on drop).
        std::fs::write(a_path.join("x.part"), b"x").unwrap();
        drop(a);
        let seen = dirs(root.path(), &b.path).unwrap();
        let a_dir = seen.iter().find(|d| d.path == a_path).unwrap();
        assert!(matches!(a_dir.holder, Holder::Dead(_)));
    }

    #[test]
    fn classifies_names() {
        let k = "ab".repeat(32);
        assert_eq!(
            classify(Path::new(&format!("{k}.u1.ready"))),
            Some((Kind::Ready, Some(k.clone())))
        );
        assert_eq!(
            classify(Path::new(&format!("{k}.u1.pending"))),
            Some((Kind::Pending, Some(k.clone())))
        );
        assert_eq!(
            classify(Path::new(&format!("{k}.u1.gc"))),
            Some((Kind::Gc, Some(k)))
        );
        assert_eq!(classify(Path::new("u1.part")), Some((Kind::Part, None)));
        assert_eq!(classify(Path::new(".readyz-x")), None);
    }
}
