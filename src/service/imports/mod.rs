//! Idempotent `.sb3` imports, from the command line (many files) and from an upload (one).
//!
//! Every file is claimed before any expensive work: an `import_runs` row
//! keyed by (source, sha256 of the file) is inserted or, if it failed or was abandoned (its
//! lease passed, or its claimer is a dead process on this host), taken over, in one
//! `INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING` statement. A completed run is
//! skipped; a run someone else holds is left to them. Files are read, hashed, unzipped and
//! validated concurrently, then written in bounded batches of short transactions;
//! each file's assets, project and the completion of its run commit in one transaction, so
//! a crash can never leave a completed run without its project nor a project whose run a
//! re-run would import again. A failed batch is retried file by file.
//!
//! The source is the identity of whoever imports, not where the file lies: `cli:<owner user
//! id>` for `atelier import --owner`, `upload:<user id>` for `importProject`. A directory
//! copied or moved elsewhere is therefore still recognised, and the same file imported for
//! two owners creates a project for each. A completed run whose project was deleted since is
//! imported again.
//!
//! Files: [`claim`] (the claim protocol on `import_runs`, over `service::lease`), [`claimer`]
//! (who holds a claim, and whether that process died), [`stage`] (validating a file and
//! staging its blobs), [`write`] (the write transaction), [`upload`] (`importProject`),
//! [`cli`] (the `atelier import` pipeline) and [`report`] (what it reports).

mod claim;
mod claimer;
mod cli;
mod report;
mod stage;
mod upload;
mod write;

use std::time::Duration;

use crate::{domain::UserId, error::AppError};

pub use claimer::new_claimer;
pub use cli::{import_files, local_owner};
pub use report::{FileReport, FileStatus, ImportOptions, ImportSummary, collect_files};
pub use upload::import_upload;

/// How long a claim is good for without renewal. The CLI renews its claims while it works;
/// an upload request holds its claim only for the few seconds it takes.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The source of `atelier import --owner` runs.
pub fn cli_source(owner: UserId) -> String {
    format!("cli:{}", owner.0)
}

/// The source of `importProject` runs.
pub fn upload_source(user: UserId) -> String {
    format!("upload:{}", user.0)
}

/// `CODE: message`, as a run's `error` and the CLI report show it.
pub(super) fn reason(e: &AppError) -> String {
    format!("{}: {e}", e.code())
}
