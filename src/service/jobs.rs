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
//!   lease → `running` with a lease and a fresh per-run token); only the worker whose UPDATE
//!   changed the row builds. It renews the lease while building; its READY (or FAILED) update
//!   is guarded by its token, so a worker that lost its lease can never overwrite the outcome
//!   of the one that replaced it.
//! - **Recovery.** A periodic sweep in every server process takes pending jobs nobody runs and
//!   running jobs whose lease expired (their worker died, e.g. kill -9). A job whose workers died
//!   [`MAX_ATTEMPTS`] times is failed for good.
//! - **Changes.** Every status change notifies channel [`CHANNEL`] (PostgreSQL, in the changing
//!   transaction) and this process's broadcast; `jobChanged` subscribers re-read the row on a
//!   notification or a slow poll, so a lost notification delays an event but never loses it.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use entity::{job, project};
use futures::Stream;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use tokio::sync::{Semaphore, broadcast};

use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services, access,
        credential::{self, Authority},
        now,
    },
};

/// `jobs.kind` of an `.sb3` export.
pub const KIND_EXPORT_SB3: &str = "export_sb3";
/// PostgreSQL channel of job status changes; the payload is the job id.
pub const CHANNEL: &str = "atelier_jobs";
/// Workers that died holding a job this many times make it FAILED instead of taken again.
pub const MAX_ATTEMPTS: i32 = 3;
/// A pending job younger than this is left to the process that claimed it.
const PENDING_GRACE: Duration = Duration::from_secs(1);

/// A job's lifecycle: PENDING → RUNNING → READY | FAILED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Ready,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Ready => "ready",
            Status::Failed => "failed",
        }
    }

    /// Unknown stored values read as failed: nothing waits on them.
    pub fn from_db(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "ready" => Status::Ready,
            _ => Status::Failed,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Ready | Status::Failed)
    }
}

/// This process's workers: bounded concurrency, the jobs it is running, and the broadcast of
/// job changes heard here.
pub struct JobRunner {
    permits: Arc<Semaphore>,
    /// Jobs a task of this process is running or about to run (an optimisation: the
    /// compare-and-set take is what guarantees one build).
    in_flight: Mutex<HashSet<i64>>,
    changes: broadcast::Sender<i64>,
    /// Names this process in `claimed_by` (with a per-run suffix).
    worker_id: String,
    lease: Duration,
    /// How often a subscription re-reads its job without a notification.
    poll: Duration,
    builds: AtomicU64,
    failures: AtomicU64,
}

impl JobRunner {
    pub fn new(workers: usize, lease: Duration, poll: Duration) -> JobRunner {
        JobRunner {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            in_flight: Mutex::default(),
            changes: broadcast::channel(1024).0,
            worker_id: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease: lease.max(Duration::from_millis(100)),
            poll,
            builds: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Job ids whose row changed (in this process, or in any process on PostgreSQL).
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    fn changed(&self, id: i64) {
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(id);
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often the sweep looks for jobs nobody runs: well within a lease.
    pub fn sweep_every(&self) -> Duration {
        (self.lease / 2).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// Counters for `/metrics`.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP atelier_export_builds_total Export bundles this process started building (after taking the job).\n\
             # TYPE atelier_export_builds_total counter\n\
             atelier_export_builds_total {}\n\
             # HELP atelier_export_failures_total Export builds of this process that ended FAILED.\n\
             # TYPE atelier_export_failures_total counter\n\
             atelier_export_failures_total {}\n",
            self.builds.load(Relaxed),
            self.failures.load(Relaxed)
        )
    }
}

/// Claims the export of the project's current version for `viewer` (who must be able to read
/// it; otherwise NOT_FOUND) and makes sure a worker runs it. Every concurrent request for one
/// version answers the same job.
pub async fn export_project(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
) -> AppResult<job::Model> {
    let (job, created) = svc.db.write(|txn| Box::pin(claim(txn, viewer, id))).await?;
    if created {
        tracing::info!(job.id = job.id, project.id = %id, project.version = job.subject_version, user.id = %viewer.id, "export_claimed");
    } else {
        tracing::debug!(job.id = job.id, project.id = %id, job.status = %job.status, "export_claim_joined");
    }
    if runnable(&job) {
        kick(svc, job.id);
    }
    Ok(job)
}

async fn claim<C: ConnectionTrait>(
    txn: &C,
    viewer: Viewer,
    id: ProjectId,
) -> AppResult<(job::Model, bool)> {
    // FOR SHARE: the version (and its content key) cannot change until the claim commits, so
    // the row never names content that an update already replaced (and gc may collect).
    let project = project::Entity::find_by_id(id.0)
        .lock_shared()
        .one(txn)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    if !access::project(txn, Some(viewer), &project)
        .await?
        .can_read()
    {
        return Err(AppError::NotFound("project"));
    }
    // The winner may fail between our insert and our read (then it is not live any more and
    // the next insert wins): a few rounds at most.
    for _ in 0..3 {
        let at = now();
        let inserted = job::Entity::insert(job::ActiveModel {
            kind: Set(KIND_EXPORT_SB3.to_owned()),
            subject_id: Set(project.id),
            subject_version: Set(project.version),
            status: Set(Status::Pending.as_str().to_owned()),
            requested_by: Set(Some(viewer.id.0)),
            source_key: Set(Some(project.content_key.clone())),
            attempts: Set(0),
            created_at: Set(at),
            updated_at: Set(at),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::columns([
                job::Column::Kind,
                job::Column::SubjectId,
                job::Column::SubjectVersion,
            ])
            // The partial index's own predicate, as a literal: both backends infer the index
            // from it (a bound parameter could not prove the implication on PostgreSQL).
            .target_and_where(Expr::cust("status <> 'failed'"))
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec_without_returning(txn)
        .await?;
        let created = matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0);
        if let Some(live) = live_job(txn, project.id, project.version).await? {
            return Ok((live, created));
        }
    }
    Err(AppError::Unavailable(
        "the export keeps failing as it is claimed; retry shortly".to_owned(),
    ))
}

async fn live_job<C: ConnectionTrait>(
    conn: &C,
    project_id: i64,
    version: i32,
) -> AppResult<Option<job::Model>> {
    Ok(job::Entity::find()
        .filter(job::Column::Kind.eq(KIND_EXPORT_SB3))
        .filter(job::Column::SubjectId.eq(project_id))
        .filter(job::Column::SubjectVersion.eq(version))
        .filter(job::Column::Status.ne(Status::Failed.as_str()))
        .one(conn)
        .await?)
}

/// Whether a worker should try to take the job now.
fn runnable(job: &job::Model) -> bool {
    match Status::from_db(&job.status) {
        Status::Pending => true,
        Status::Running => job.lease_until.is_none_or(|l| l < now()),
        _ => false,
    }
}

/// The job if the viewer may read its project now (else None: invisible is absent).
pub async fn get(svc: &Services, viewer: Option<Viewer>, id: i64) -> AppResult<Option<job::Model>> {
    Ok(visible(svc, viewer, id).await?.map(|(job, _)| job))
}

/// The job and its project, if the viewer may read the project now.
pub async fn visible(
    svc: &Services,
    viewer: Option<Viewer>,
    id: i64,
) -> AppResult<Option<(job::Model, project::Model)>> {
    if viewer.is_none() {
        return Ok(None);
    }
    let conn = svc.db.conn();
    let Some(job) = job::Entity::find_by_id(id).one(conn).await? else {
        return Ok(None);
    };
    let Some(project) = project::Entity::find_by_id(job.subject_id)
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    if access::project(conn, viewer, &project).await?.can_read() {
        Ok(Some((job, project)))
    } else {
        Ok(None)
    }
}

/// A READY export the viewer may download: the job, its project and the bundle's blob key.
pub struct Bundle {
    pub job: job::Model,
    pub project: project::Model,
    pub key: String,
    pub size: u64,
}

/// The bundle of job `id`: NOT_FOUND if the job is absent or its project invisible to the
/// viewer, CONFLICT if it is not READY (yet, or ever).
pub async fn bundle(svc: &Services, viewer: Option<Viewer>, id: i64) -> AppResult<Bundle> {
    let (job, project) = visible(svc, viewer, id)
        .await?
        .ok_or(AppError::NotFound("export"))?;
    match (Status::from_db(&job.status), job.bundle_key.clone()) {
        (Status::Ready, Some(key)) => Ok(Bundle {
            size: u64::try_from(job.bundle_size.unwrap_or(0)).unwrap_or(0),
            key,
            job,
            project,
        }),
        (Status::Failed, _) => Err(AppError::Conflict(format!(
            "the export failed ({}); export again",
            job.error.as_deref().unwrap_or("no reason recorded")
        ))),
        _ => Err(AppError::Conflict(
            "the export is not ready yet; watch the job and download it once READY".to_owned(),
        )),
    }
}

/// Makes sure a task of this process tries to run job `id` (unless one already does).
pub fn kick(svc: &Services, id: i64) {
    if !svc.jobs.in_flight().insert(id) {
        return;
    }
    let svc = svc.clone();
    tokio::spawn(async move {
        // Forgets the job when the task ends, however it ends.
        struct Done(Services, i64);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.jobs.in_flight().remove(&self.1);
            }
        }
        let _done = Done(svc.clone(), id);
        let Ok(_permit) = svc.jobs.permits.clone().acquire_owned().await else {
            return;
        };
        if let Err(e) = run(&svc, id).await {
            tracing::warn!(job.id = id, error = %e, "job_run_failed");
        }
    });
}

/// Takes job `id` if nobody holds it, builds, and records the outcome.
async fn run(svc: &Services, id: i64) -> AppResult<()> {
    // Tests keep a job PENDING for a while (`return(ms)`), e.g. to subscribe before it runs.
    crate::failpoints::hold("jobs::before_take").await;
    let token = format!(
        "{}/{}",
        svc.jobs.worker_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let Some(job) = take(svc, id, &token).await? else {
        tracing::debug!(job.id = id, "job_taken_elsewhere");
        return Ok(());
    };
    svc.jobs.changed(id);
    svc.jobs.builds.fetch_add(1, Relaxed);
    tracing::info!(
        job.id = id,
        job.attempt = job.attempts,
        project.id = job.subject_id,
        project.version = job.subject_version,
        "export_build_started"
    );
    let built = tokio::select! {
        built = build(svc, &job) => built,
        lost = keep_lease(svc, id, &token) => Err(lost),
    };
    match built {
        Ok(staged) => {
            let (key, size) = (staged.key.clone(), staged.size);
            match finish_ready(svc, id, &token, staged).await {
                Ok(()) => {
                    tracing::info!(job.id = id, blob.key = %key, blob.size = size, "export_ready");
                    Ok(())
                }
                Err(e) if is_lease_lost(&e) => {
                    tracing::warn!(job.id = id, "export_lease_lost_before_ready");
                    Ok(())
                }
                Err(e) => {
                    finish_failed(svc, id, &token, &e).await;
                    Err(e)
                }
            }
        }
        Err(e) if is_lease_lost(&e) => {
            tracing::warn!(job.id = id, "export_lease_lost");
            Ok(())
        }
        Err(e) => {
            finish_failed(svc, id, &token, &e).await;
            Ok(())
        }
    }
}

async fn build(svc: &Services, job: &job::Model) -> AppResult<crate::storage::StagedBlob> {
    // Tests hold a build here (`return(ms)`): to watch RUNNING, or to kill the process mid-build.
    crate::failpoints::hold("export::build_delay").await;
    super::export::build(svc, job).await
}

const LEASE_LOST: &str = "the job's lease was lost to another worker";

fn is_lease_lost(e: &AppError) -> bool {
    matches!(e, AppError::Conflict(m) if m == LEASE_LOST)
}

/// The compare-and-set that makes one worker the builder.
async fn take(svc: &Services, id: i64, token: &str) -> AppResult<Option<job::Model>> {
    let lease = chrono::Duration::from_std(svc.jobs.lease).map_err(AppError::internal)?;
    svc.db
        .write(|txn| {
            let token = token.to_owned();
            Box::pin(async move {
                let at = now();
                let taken = job::Entity::update_many()
                    .col_expr(job::Column::Status, Expr::value(Status::Running.as_str()))
                    .col_expr(job::Column::LeaseUntil, Expr::value(at + lease))
                    .col_expr(job::Column::ClaimedBy, Expr::value(token))
                    .col_expr(
                        job::Column::Attempts,
                        Expr::col(job::Column::Attempts).add(1),
                    )
                    .col_expr(job::Column::UpdatedAt, Expr::value(at))
                    .filter(job::Column::Id.eq(id))
                    .filter(job::Column::Attempts.lt(MAX_ATTEMPTS))
                    .filter(
                        Condition::any()
                            .add(job::Column::Status.eq(Status::Pending.as_str()))
                            .add(
                                Condition::all()
                                    .add(job::Column::Status.eq(Status::Running.as_str()))
                                    .add(job::Column::LeaseUntil.lt(at)),
                            ),
                    )
                    .exec(txn)
                    .await?;
                if taken.rows_affected == 0 {
                    return Ok(None);
                }
                announce(txn, id).await?;
                Ok(job::Entity::find_by_id(id).one(txn).await?)
            })
        })
        .await
}

/// Renews the lease while the build runs; returns only when the lease is lost.
async fn keep_lease(svc: &Services, id: i64, token: &str) -> AppError {
    let every = svc.jobs.lease / 3;
    let lease = chrono::Duration::from_std(svc.jobs.lease).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::time::sleep(every).await;
        let renewed = svc
            .db
            .write_one(|conn| {
                let token = token.to_owned();
                Box::pin(async move {
                    Ok(job::Entity::update_many()
                        .col_expr(job::Column::LeaseUntil, Expr::value(now() + lease))
                        .filter(job::Column::Id.eq(id))
                        .filter(job::Column::Status.eq(Status::Running.as_str()))
                        .filter(job::Column::ClaimedBy.eq(token))
                        .exec(conn)
                        .await?
                        .rows_affected)
                })
            })
            .await;
        match renewed {
            Ok(0) => return AppError::Conflict(LEASE_LOST.to_owned()),
            Ok(_) => {}
            // The database is away: keep building; the READY update decides whether we still
            // hold the job.
            Err(e) => tracing::warn!(job.id = id, error = %e, "job_lease_renewal_failed"),
        }
    }
}

/// READY, with the bundle published in the same step (`write::commit`).
async fn finish_ready(
    svc: &Services,
    id: i64,
    token: &str,
    staged: crate::storage::StagedBlob,
) -> AppResult<()> {
    let (key, size) = (staged.key.clone(), staged.size as i64);
    super::write::commit(svc, vec![staged], None, |txn| {
        let (token, key) = (token.to_owned(), key.clone());
        Box::pin(async move {
            let done = job::Entity::update_many()
                .col_expr(job::Column::Status, Expr::value(Status::Ready.as_str()))
                .col_expr(job::Column::BundleKey, Expr::value(key))
                .col_expr(job::Column::BundleSize, Expr::value(size))
                .col_expr(job::Column::LeaseUntil, Expr::cust("NULL"))
                .col_expr(job::Column::UpdatedAt, Expr::value(now()))
                .filter(job::Column::Id.eq(id))
                .filter(job::Column::Status.eq(Status::Running.as_str()))
                .filter(job::Column::ClaimedBy.eq(token))
                .exec(txn)
                .await?;
            if done.rows_affected == 0 {
                return Err(AppError::Conflict(LEASE_LOST.to_owned()));
            }
            announce(txn, id).await
        })
    })
    .await?;
    svc.jobs.changed(id);
    Ok(())
}

/// FAILED with the reason, if this run still holds the job. Best effort: if it cannot be
/// recorded, the lease expires and the sweep runs the job again.
async fn finish_failed(svc: &Services, id: i64, token: &str, why: &AppError) {
    svc.jobs.failures.fetch_add(1, Relaxed);
    let message = why.public_message();
    tracing::warn!(job.id = id, error = %why, "export_failed");
    let marked = svc
        .db
        .write(|txn| {
            let (token, message) = (token.to_owned(), message.clone());
            Box::pin(async move {
                let done = job::Entity::update_many()
                    .col_expr(job::Column::Status, Expr::value(Status::Failed.as_str()))
                    .col_expr(job::Column::Error, Expr::value(message))
                    .col_expr(job::Column::LeaseUntil, Expr::cust("NULL"))
                    .col_expr(job::Column::UpdatedAt, Expr::value(now()))
                    .filter(job::Column::Id.eq(id))
                    .filter(job::Column::Status.eq(Status::Running.as_str()))
                    .filter(job::Column::ClaimedBy.eq(token))
                    .exec(txn)
                    .await?;
                if done.rows_affected > 0 {
                    announce(txn, id).await?;
                }
                Ok(())
            })
        })
        .await;
    match marked {
        Ok(()) => svc.jobs.changed(id),
        Err(e) => tracing::warn!(job.id = id, error = %e, "export_fail_mark_failed"),
    }
}

/// Tells every process's subscribers that job `id` changed (PostgreSQL: delivered at commit,
/// not at all on rollback). SQLite serves one process: the local broadcast is enough.
async fn announce<C: ConnectionTrait>(conn: &C, id: i64) -> AppResult<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), id.to_string().into()],
        ))
        .await?;
    }
    Ok(())
}

/// One pass of the sweep: runs pending jobs nobody runs and jobs whose worker's lease expired;
/// fails those whose workers died [`MAX_ATTEMPTS`] times. Returns how many it looked at.
pub async fn sweep(svc: &Services) -> AppResult<usize> {
    let at = now();
    let grace = chrono::Duration::from_std(PENDING_GRACE).map_err(AppError::internal)?;
    let stuck = job::Entity::find()
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(job::Column::Status.eq(Status::Pending.as_str()))
                        .add(job::Column::UpdatedAt.lt(at - grace)),
                )
                .add(
                    Condition::all()
                        .add(job::Column::Status.eq(Status::Running.as_str()))
                        .add(job::Column::LeaseUntil.lt(at)),
                ),
        )
        .order_by_asc(job::Column::Id)
        .limit(100)
        .all(svc.db.conn())
        .await?;
    for job in &stuck {
        if Status::from_db(&job.status) == Status::Running && job.attempts >= MAX_ATTEMPTS {
            abandon(svc, job).await?;
        } else {
            if Status::from_db(&job.status) == Status::Running {
                tracing::warn!(job.id = job.id, job.claimed_by = ?job.claimed_by, "job_lease_expired_reclaiming");
            }
            kick(svc, job.id);
        }
    }
    Ok(stuck.len())
}

/// FAILED for a job whose workers kept dying, if its lease is still expired.
async fn abandon(svc: &Services, job: &job::Model) -> AppResult<()> {
    let (id, claimed_by) = (job.id, job.claimed_by.clone());
    let message = format!(
        "the export worker stopped {} times while building; export again",
        job.attempts
    );
    let done = svc
        .db
        .write(|txn| {
            let (claimed_by, message) = (claimed_by.clone(), message.clone());
            Box::pin(async move {
                let at = now();
                let done = job::Entity::update_many()
                    .col_expr(job::Column::Status, Expr::value(Status::Failed.as_str()))
                    .col_expr(job::Column::Error, Expr::value(message))
                    .col_expr(job::Column::LeaseUntil, Expr::cust("NULL"))
                    .col_expr(job::Column::UpdatedAt, Expr::value(at))
                    .filter(job::Column::Id.eq(id))
                    .filter(job::Column::Status.eq(Status::Running.as_str()))
                    .filter(job::Column::ClaimedBy.eq(claimed_by))
                    .filter(job::Column::LeaseUntil.lt(at))
                    .exec(txn)
                    .await?;
                if done.rows_affected > 0 {
                    announce(txn, id).await?;
                }
                Ok(done.rows_affected > 0)
            })
        })
        .await?;
    if done {
        tracing::warn!(job.id = id, "export_abandoned");
        svc.jobs.changed(id);
    }
    Ok(())
}

/// The server's job housekeeping: a sweep now (jobs left by a process that died) and then
/// every `JobRunner::sweep_every`.
pub async fn sweep_forever(svc: Services) {
    let mut tick = tokio::time::interval(svc.jobs.sweep_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&svc).await {
            tracing::warn!(error = %e, "job_sweep_failed");
        }
    }
}

/// PostgreSQL: forwards job notifications of every process to this process's broadcast, on a
/// connection of its own, reconnecting with backoff. Subscribers also poll, so the time this
/// listener is down only delays their events.
pub fn spawn_listener(svc: Services, url: String) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let error = listen_once(&svc, &url).await;
            tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "job_listener_down");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen_once(svc: &Services, url: &str) -> String {
    let mut listener = match super::identity::connect_listener(url, "atelier-job-listener").await {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = listener.listen(CHANNEL).await {
        return e.to_string();
    }
    tracing::info!(channel = CHANNEL, "job_listener_up");
    loop {
        match listener.recv().await {
            Ok(n) => {
                if let Ok(id) = n.payload().parse::<i64>() {
                    svc.jobs.changed(id);
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// `jobChanged`: the job's current state, then one item per status change, in order, ending
/// after READY or FAILED. Subscribed to changes before the first read, so none is missed
/// between; a status that changed twice between two reads shows its latest value only (never
/// an older one after a newer).
///
/// The viewer is asked of `authority` again before every read (each notification, each poll,
/// and each authority change this process hears), so the stream never outlives the right to
/// see the job: it ends with NOT_FOUND when the job's project became invisible to the viewer
/// (unshared, a role lost), and with UNAUTHENTICATED when the credential was revoked or
/// logged out.
pub fn watch(
    svc: Services,
    authority: Authority,
    id: i64,
) -> impl Stream<Item = AppResult<job::Model>> {
    struct Watch {
        svc: Services,
        authority: Authority,
        id: i64,
        rx: broadcast::Receiver<i64>,
        authority_changes: tokio::sync::watch::Receiver<u64>,
        last: Option<Status>,
        /// Who the job was last read for.
        seen_by: Option<Option<Viewer>>,
        done: bool,
    }
    let rx = svc.jobs.subscribe();
    let authority_changes = svc.tokens.changes();
    let start = Watch {
        svc,
        authority,
        id,
        rx,
        authority_changes,
        last: None,
        seen_by: None,
        done: false,
    };
    futures::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            if w.last.is_some() {
                let woke =
                    wait_for_change(&mut w.rx, &mut w.authority_changes, w.id, w.svc.jobs.poll)
                        .await;
                // An authority change elsewhere need not concern this viewer: the job is read
                // again only if the credential resolves to someone else now (another role),
                // or no longer holds.
                if woke == Woke::Authority {
                    match w.authority.viewer(&w.svc).await {
                        Ok(viewer) if w.seen_by == Some(viewer) => continue,
                        Ok(_) => {}
                        Err(e) => {
                            w.done = true;
                            return Some((Err(e), w));
                        }
                    }
                }
            }
            let seen = match w.authority.viewer(&w.svc).await {
                Ok(viewer) => {
                    w.seen_by = Some(viewer);
                    get(&w.svc, viewer, w.id).await
                }
                Err(e) => Err(e),
            };
            match seen {
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
                Ok(None) => {
                    w.done = true;
                    return Some((Err(AppError::NotFound("job")), w));
                }
                Ok(Some(job)) => {
                    let status = Status::from_db(&job.status);
                    if w.last == Some(status) {
                        continue;
                    }
                    w.last = Some(status);
                    w.done = status.is_final();
                    return Some((Ok(job), w));
                }
            }
        }
    })
}

/// Why [`wait_for_change`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woke {
    /// The job may have changed (a notification, lagged notifications, the poll).
    Job,
    /// This process heard of an authority change.
    Authority,
}

/// Returns when job `id` may have changed, or who may see it: a notification for it, missed
/// notifications (lagged), an authority change (after a random moment, see
/// `credential::recheck_delay`), or the poll interval passing.
async fn wait_for_change(
    rx: &mut broadcast::Receiver<i64>,
    authority_changes: &mut tokio::sync::watch::Receiver<u64>,
    id: i64,
    poll: Duration,
) -> Woke {
    let deadline = tokio::time::sleep(poll);
    tokio::pin!(deadline);
    let mut authority_open = true;
    loop {
        tokio::select! {
            () = &mut deadline => return Woke::Job,
            changed = authority_changes.changed(), if authority_open => match changed {
                Ok(()) => {
                    tokio::time::sleep(credential::recheck_delay()).await;
                    // Changes heard meanwhile are answered by the same check.
                    authority_changes.borrow_and_update();
                    return Woke::Authority;
                }
                // The cache is gone (shutting down): only the poll is left.
                Err(_) => authority_open = false,
            },
            heard = rx.recv() => match heard {
                Ok(changed) if changed != id => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Woke::Job,
                Err(broadcast::error::RecvError::Closed) => {
                    deadline.as_mut().await;
                    return Woke::Job;
                }
            },
        }
    }
}
