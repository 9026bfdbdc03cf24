//! Background jobs: `.sb3` exports claimed once per (kind, project, version) and built by a
//! bounded pool of workers ("claim before expensive work").
//!
//! - **Claim.** `exportProject` inserts a `pending` row with `ON CONFLICT … DO NOTHING` on the
//!   partial unique index `jobs_live_subject_key` (live = not failed), then reads the live row:
//!   every racer, in any process, answers the same job. A failed job is not live, so the next
//!   request claims anew. The row records the blob key of the claimed version's content:
//!   blobs are immutable, so the bundle is of that version even if the project changes before
//!   a worker gets to it.
//! - **Take.** A worker takes a job by compare-and-set (`pending`, or `running` with an expired
//!   lease → `running` with a lease and a fresh per-run token: the protocol of
//!   `service::lease`, as for import runs and idempotency keys); only the worker whose UPDATE
//!   changed the row builds. It renews the lease while building; its READY (or FAILED) update
//!   is guarded by its token, so a worker that lost its lease can never overwrite the outcome
//!   of the one that replaced it.
//! - **Recovery.** A periodic sweep in every server process takes pending jobs nobody runs and
//!   running jobs whose lease expired (their worker died, e.g. kill -9). A job whose workers died
//!   [`MAX_ATTEMPTS`] times is failed for good.
//! - **Changes.** Every status change notifies channel [`CHANNEL`] (PostgreSQL, in the changing
//!   transaction; every process hears it on its one listener, `db::listen`, through
//!   [`JobSubscriber`]) and this process's broadcast; `jobChanged` subscribers re-read the row
//!   on a notification or a slow poll, so a lost notification delays an event but never
//!   loses it.
//!
//! Files: [`claim`] (claiming and reading jobs), [`queue`] (the compare-and-set steps on rows),
//! [`worker`] (running a job in this process, the sweep loop), [`runner`] (this process's
//! workers and broadcast), [`watch`] (`jobChanged`).

mod claim;
mod queue;
mod runner;
pub(crate) mod watch;
mod worker;

use std::time::Duration;

pub use claim::{Bundle, bundle, export_project, get, visible};
pub use queue::sweep;
pub use runner::{JobRunner, JobSubscriber};
pub use watch::watch;
pub use worker::{kick, sweep_forever};

/// `jobs.kind` of an `.sb3` export.
pub const KIND_EXPORT_SB3: &str = "export_sb3";
/// PostgreSQL channel of job status changes; the payload is the job id.
pub const CHANNEL: &str = "atelier_jobs";
/// Workers that died holding a job this many times make it FAILED instead of taken again.
pub const MAX_ATTEMPTS: i32 = 3;
/// A pending job younger than this is left to the process that claimed it.
const PENDING_GRACE: Duration = Duration::from_secs(1);

// A job's lifecycle is a `LeaseStatus`: pending → running → completed (READY) | failed.
pub use entity::lease::LeaseStatus;
