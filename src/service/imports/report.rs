//! What `atelier import` reports: its options, each file's outcome and the summary, and the
//! files a list of paths names.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{domain::Title, error::AppError};

/// How the CLI runs an import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Files read, hashed, unzipped and validated at once.
    pub concurrency: usize,
    /// Files written per transaction.
    pub batch: usize,
    pub lease: Duration,
}

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// A project was created.
    Imported,
    /// Imported before (by this or an earlier run): its project is reported.
    Skipped,
    /// Another live import holds the claim on it.
    Taken,
    Failed,
}

/// One file of an import, as reported.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    pub path: String,
    pub status: FileStatus,
    pub project_id: Option<i64>,
    /// The error code of a failure (`BAD_USER_INPUT`, `CHECKSUM_MISMATCH`, …).
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// The outcome of `atelier import`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    pub imported: usize,
    pub skipped: usize,
    pub taken: usize,
    pub failed: usize,
    pub files: Vec<FileReport>,
}

/// The `.sb3` files named by `paths`: files as given, directories searched recursively for
/// `*.sb3`; sorted, each once. A path that does not exist is reported failed.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<FileReport>) {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&path, out)?;
            } else if kind.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("sb3"))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    for p in paths {
        let found = if p.is_dir() {
            walk(p, &mut files)
        } else if p.is_file() {
            files.push(p.clone());
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or directory",
            ))
        };
        if let Err(e) = found {
            missing.push(failed_report(
                p,
                &AppError::bad_input("path", format!("cannot read {}: {e}", p.display())),
            ));
        }
    }
    files.sort();
    files.dedup();
    (files, missing)
}

pub(super) fn failed_report(path: &Path, e: &AppError) -> FileReport {
    FileReport {
        path: path.display().to_string(),
        status: FileStatus::Failed,
        project_id: None,
        code: Some(e.code().to_string()),
        reason: Some(e.to_string()),
    }
}

pub(super) fn report(path: &Path, status: FileStatus, project_id: Option<i64>) -> FileReport {
    FileReport {
        path: path.display().to_string(),
        status,
        project_id,
        code: None,
        reason: None,
    }
}

/// A project's title from its file name.
pub(super) fn title_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| {
            let t: String = s.chars().take(Title::MAX_CHARS).collect();
            Title::parse(&t).ok()
        })
        .map(Title::into_inner)
        .unwrap_or_else(|| "Untitled".to_owned())
}
