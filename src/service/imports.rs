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

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use entity::{asset, import_run, project};
use futures::StreamExt;
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};
use sha2::{Digest, Sha256};

use crate::{
    domain::{AssetKind, ProjectId, Title, UserId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services, now,
        sb3::{Sb3, Sb3Limits, read_sb3},
    },
    storage::{StagedBlob, StagedUpload},
};

/// How long a claim is good for without renewal. The CLI renews its claims while it works;
/// an upload request holds its claim only for the few seconds it takes.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How long `importProject` waits for a concurrent import of the same bytes to finish.
const UPLOAD_WAIT: Duration = Duration::from_secs(15);

/// The source of `atelier import --owner` runs.
pub fn cli_source(owner: UserId) -> String {
    format!("cli:{}", owner.0)
}

/// The source of `importProject` runs.
pub fn upload_source(user: UserId) -> String {
    format!("upload:{}", user.0)
}

/// A new claimer identity: `host:pid:uuid`. The host and pid let another import on the same
/// host see that the claimer died (kill -9) and take its claims at once, without waiting for
/// the lease to pass.
pub fn new_claimer() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().replace(':', "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_owned())
    })
}

/// Whether `claimer` names a process of this host that no longer runs (or is a zombie).
/// Conservative: anything unknown is treated as alive, and then only the lease frees it.
fn claimer_is_dead(claimer: &str) -> bool {
    let mut parts = claimer.splitn(3, ':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != hostname() || pid == std::process::id() || !cfg!(target_os = "linux") {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        // `pid (comm) S …`: the state follows the last parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// The outcome of claiming one file.
#[derive(Debug)]
enum Claim {
    /// Ours to import: the run's id.
    Claimed(i64),
    /// Imported before: the project it created.
    Completed(i64),
    /// Another live import holds it.
    Held,
    /// This claimer holds it already: the same bytes twice in one import (two copies of a
    /// file); the other copy is imported.
    OwnAlready,
}

/// Claims the run of (source, hash) for `claimer` until `lease` from now (see module docs).
async fn claim(
    svc: &Services,
    source: &str,
    hash: &str,
    claimer: &str,
    lease: Duration,
) -> AppResult<Claim> {
    // Read first: a re-run over files imported before is then reads only (no write lock on
    // SQLite, no row lock on PostgreSQL). The statement below decides everything else.
    if let Some(run) = find_run(svc, source, hash).await?
        && run.status == "completed"
        && let Some(project) = run.project_id
    {
        return Ok(Claim::Completed(project));
    }
    for _ in 0..5 {
        let at = now();
        let until = at + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
        let backend = svc.db.backend();
        let sql = placeholders(
            backend,
            "INSERT INTO import_runs \
               (source, content_hash, status, attempts, claimed_by, lease_until, created_at, updated_at) \
             VALUES (?, ?, 'pending', 1, ?, ?, ?, ?) \
             ON CONFLICT (source, content_hash) DO UPDATE SET \
               status = 'pending', attempts = import_runs.attempts + 1, \
               claimed_by = excluded.claimed_by, lease_until = excluded.lease_until, \
               error = NULL, project_id = NULL, updated_at = excluded.updated_at \
             WHERE import_runs.status = 'failed' \
                OR (import_runs.status = 'pending' \
                    AND (import_runs.lease_until IS NULL OR import_runs.lease_until < ?)) \
                OR (import_runs.status = 'completed' AND import_runs.project_id IS NULL) \
             RETURNING id",
        );
        let values: Vec<sea_orm::Value> = vec![
            source.into(),
            hash.into(),
            claimer.into(),
            until.into(),
            at.into(),
            at.into(),
            at.into(),
        ];
        let claimed = svc
            .db
            .write_one(|conn| {
                let stmt = Statement::from_sql_and_values(backend, sql.clone(), values.clone());
                Box::pin(async move {
                    match conn.query_one_raw(stmt).await? {
                        Some(row) => Ok(Some(row.try_get::<i64>("", "id")?)),
                        None => Ok(None),
                    }
                })
            })
            .await?;
        if let Some(id) = claimed {
            tracing::debug!(import_run.id = id, "import_run_claimed");
            return Ok(Claim::Claimed(id));
        }
        let Some(run) = find_run(svc, source, hash).await? else {
            continue;
        };
        match (run.status.as_str(), run.project_id, run.claimed_by) {
            ("completed", Some(project), _) => return Ok(Claim::Completed(project)),
            ("pending", _, Some(holder)) if claimer_is_dead(&holder) => {
                // Compare-and-set on the dead holder: of several importers noticing, one wins.
                let taken = import_run::Entity::update_many()
                    .col_expr(import_run::Column::ClaimedBy, Expr::value(claimer))
                    .col_expr(import_run::Column::LeaseUntil, Expr::value(until))
                    .col_expr(
                        import_run::Column::Attempts,
                        Expr::col(import_run::Column::Attempts).add(1),
                    )
                    .col_expr(import_run::Column::UpdatedAt, Expr::value(at))
                    .filter(import_run::Column::Id.eq(run.id))
                    .filter(import_run::Column::Status.eq("pending"))
                    .filter(import_run::Column::ClaimedBy.eq(holder.as_str()))
                    .exec(svc.db.conn())
                    .await?;
                if taken.rows_affected == 1 {
                    tracing::info!(import_run.id = run.id, import_run.dead_claimer = %holder, "import_run_taken_from_dead_claimer");
                    return Ok(Claim::Claimed(run.id));
                }
            }
            ("pending", _, Some(holder)) if holder == claimer => return Ok(Claim::OwnAlready),
            ("pending", _, _) => return Ok(Claim::Held),
            // Changed between our statement and the read (failed, or its project deleted):
            // claim again.
            _ => {}
        }
    }
    Err(AppError::Unavailable(
        "the import claim keeps changing; retry".to_owned(),
    ))
}

async fn find_run(
    svc: &Services,
    source: &str,
    hash: &str,
) -> AppResult<Option<import_run::Model>> {
    Ok(import_run::Entity::find()
        .filter(import_run::Column::Source.eq(source))
        .filter(import_run::Column::ContentHash.eq(hash))
        .one(svc.db.conn())
        .await?)
}

/// `?` placeholders as the backend wants them.
fn placeholders(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Keeps every pending claim of `claimer` alive for another `lease`.
async fn renew(svc: &Services, claimer: &str, lease: Duration) -> AppResult<u64> {
    let until = now() + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
    Ok(import_run::Entity::update_many()
        .col_expr(import_run::Column::LeaseUntil, Expr::value(until))
        .filter(import_run::Column::ClaimedBy.eq(claimer))
        .filter(import_run::Column::Status.eq("pending"))
        .exec(svc.db.conn())
        .await?
        .rows_affected)
}

/// Marks our claim failed with the reason, so a later import may claim it anew. A run that
/// is no longer ours (or already completed) is left alone.
async fn mark_failed(svc: &Services, run_id: i64, claimer: &str, reason: &str) {
    let result = import_run::Entity::update_many()
        .col_expr(import_run::Column::Status, Expr::value("failed"))
        .col_expr(import_run::Column::Error, Expr::value(reason))
        .col_expr(
            import_run::Column::LeaseUntil,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(import_run::Column::UpdatedAt, Expr::value(now()))
        .filter(import_run::Column::Id.eq(run_id))
        .filter(import_run::Column::Status.eq("pending"))
        .filter(import_run::Column::ClaimedBy.eq(claimer))
        .exec(svc.db.conn())
        .await;
    if let Err(e) = result {
        // The lease runs out and the run is claimable again anyway.
        tracing::warn!(import_run.id = run_id, error = %e, "import_run_mark_failed_failed");
    }
}

/// What the write transaction needs of one validated file (cheap to clone: it may run more
/// than once).
#[derive(Clone)]
struct Plan {
    run_id: i64,
    title: String,
    content_key: String,
    content_size: i64,
    refs: Arc<Vec<crate::domain::AssetRef>>,
    /// Assets of the file not stored yet when it was validated (their blobs are staged).
    new_assets: Vec<NewAsset>,
}

#[derive(Clone)]
struct NewAsset {
    md5: String,
    kind: AssetKind,
    format: crate::domain::DataFormat,
    sha256: String,
    size: i64,
}

/// A validated, claimed file with its blobs staged, ready to be written.
struct Prepared {
    index: usize,
    plan: Plan,
    staged: Vec<StagedBlob>,
    sb3: Arc<Sb3>,
}

/// Validates `bytes` as an `.sb3` and stages its content and the assets not stored yet.
async fn prepare_file(
    svc: &Services,
    bytes: Arc<Vec<u8>>,
    run_id: i64,
    title: String,
) -> AppResult<(Plan, Vec<StagedBlob>, Arc<Sb3>)> {
    let limits = Sb3Limits::from(&svc.limits);
    let sb3 = Arc::new(
        tokio::task::spawn_blocking(move || read_sb3(&bytes, &limits))
            .await
            .map_err(AppError::internal)??,
    );
    let stored = stored_assets(svc, &sb3).await?;
    let mut new_assets = Vec::new();
    let mut to_stage = vec![sb3.content.bytes.clone()];
    for a in &sb3.assets {
        let kind = a.format.kind();
        if stored.get(&(a.md5.as_str().to_owned(), kind)) == Some(&a.sha256) {
            continue;
        }
        new_assets.push(NewAsset {
            md5: a.md5.as_str().to_owned(),
            kind,
            format: a.format,
            sha256: a.sha256.clone(),
            size: a.bytes.len() as i64,
        });
        to_stage.push(a.bytes.clone());
    }
    let staged = futures::future::try_join_all(
        to_stage
            .into_iter()
            .map(|bytes| svc.blobs.stage_bytes(bytes)),
    )
    .await?;
    let plan = Plan {
        run_id,
        title,
        content_key: staged[0].key.clone(),
        content_size: staged[0].size as i64,
        refs: Arc::new(sb3.content.asset_refs.clone()),
        new_assets,
    };
    Ok((plan, staged, sb3))
}

/// Stages the blobs of a plan again (for a retry after its batch failed and dropped them).
async fn restage(svc: &Services, plan: &Plan, sb3: &Sb3) -> AppResult<Vec<StagedBlob>> {
    let mut bytes = vec![sb3.content.bytes.clone()];
    for new in &plan.new_assets {
        if let Some(a) = sb3.assets.iter().find(|a| a.sha256 == new.sha256) {
            bytes.push(a.bytes.clone());
        }
    }
    Ok(futures::future::try_join_all(bytes.into_iter().map(|b| svc.blobs.stage_bytes(b))).await?)
}

/// The (md5, kind) → sha256 of the file's assets that are stored already.
async fn stored_assets(
    svc: &Services,
    sb3: &Sb3,
) -> AppResult<HashMap<(String, AssetKind), String>> {
    let mut out = HashMap::new();
    for chunk in sb3.assets.chunks(200) {
        let mut any = Condition::any();
        for a in chunk {
            any = any.add(
                Condition::all()
                    .add(asset::Column::Md5.eq(a.md5.as_str()))
                    .add(asset::Column::AssetType.eq(a.format.kind().as_str())),
            );
        }
        let rows: Vec<(String, String, String)> = asset::Entity::find()
            .select_only()
            .column(asset::Column::Md5)
            .column(asset::Column::AssetType)
            .column(asset::Column::Sha256)
            .filter(any)
            .into_tuple()
            .all(svc.db.conn())
            .await?;
        for (md5, kind, sha256) in rows {
            if let Some(kind) = AssetKind::from_db(&kind) {
                out.insert((md5, kind), sha256);
            }
        }
    }
    Ok(out)
}

/// Writes one file inside the transaction: its new assets (get-or-create: another import
/// may store the same asset at the same time), its project, the project's asset links, and
/// the completion of its run, conditional on the claim still being ours.
async fn write_one(
    txn: &DatabaseTransaction,
    owner: Viewer,
    claimer: &str,
    plan: &Plan,
) -> AppResult<i64> {
    for new in &plan.new_assets {
        let (winner, _) = crate::db::get_or_create(
            txn,
            asset::ActiveModel {
                md5: Set(new.md5.clone()),
                asset_type: Set(new.kind.as_str().to_owned()),
                sha256: Set(new.sha256.clone()),
                size: Set(new.size),
                content_type: Set(new.format.content_type().to_owned()),
                data_format: Set(new.format.extension().to_owned()),
                blob_key: Set(new.sha256.clone()),
                created_by: Set(Some(owner.id.0)),
                created_at: Set(now()),
                ..Default::default()
            },
            [asset::Column::Md5, asset::Column::AssetType],
            asset::Entity::find()
                .filter(asset::Column::Md5.eq(new.md5.as_str()))
                .filter(asset::Column::AssetType.eq(new.kind.as_str())),
        )
        .await?;
        if winner.sha256 != new.sha256 {
            return Err(AppError::Conflict(format!(
                "a different {} asset with md5 {} is already stored",
                new.kind.as_str(),
                new.md5
            )));
        }
    }
    // MISSING_ASSETS when a reference is neither in the file nor stored.
    let asset_ids = super::projects::resolve_assets(txn, &plan.refs).await?;
    let project = super::projects::new_row(
        owner,
        plan.title.clone(),
        plan.content_key.clone(),
        plan.content_size,
        None,
    )
    .insert(txn)
    .await?;
    super::projects::link_assets(txn, ProjectId(project.id), &asset_ids).await?;
    let completed = import_run::Entity::update_many()
        .col_expr(import_run::Column::Status, Expr::value("completed"))
        .col_expr(import_run::Column::ProjectId, Expr::value(project.id))
        .col_expr(
            import_run::Column::LeaseUntil,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(import_run::Column::UpdatedAt, Expr::value(now()))
        .filter(import_run::Column::Id.eq(plan.run_id))
        .filter(import_run::Column::Status.eq("pending"))
        .filter(import_run::Column::ClaimedBy.eq(claimer))
        .exec(txn)
        .await?;
    if completed.rows_affected != 1 {
        return Err(AppError::Conflict(
            "the claim on this import was lost (its lease passed and another import took it)"
                .to_owned(),
        ));
    }
    Ok(project.id)
}

/// Writes several files in one transaction; their staged blobs are published after it.
async fn write_plans(
    svc: &Services,
    owner: Viewer,
    claimer: &str,
    plans: Vec<Plan>,
    staged: Vec<StagedBlob>,
) -> AppResult<Vec<i64>> {
    let plans = Arc::new(plans);
    let claimer: Arc<str> = claimer.into();
    super::write::commit(svc, staged, None, |txn| {
        let (plans, claimer) = (plans.clone(), claimer.clone());
        Box::pin(async move {
            let mut ids = Vec::with_capacity(plans.len());
            for plan in plans.iter() {
                ids.push(write_one(txn, owner, &claimer, plan).await?);
            }
            Ok(ids)
        })
    })
    .await
}

/// After a failed write of one run: the run may have committed anyway (a COMMIT whose reply
/// was lost), and then it is imported, not failed.
async fn completed_project(svc: &Services, run_id: i64, claimer: &str) -> Option<i64> {
    let run = import_run::Entity::find_by_id(run_id)
        .one(svc.db.conn())
        .await
        .ok()??;
    (run.status == "completed" && run.claimed_by.as_deref() == Some(claimer))
        .then_some(run.project_id)
        .flatten()
}

/// Imports one uploaded `.sb3` for `viewer` (`importProject`): idempotent per (user, sha256
/// of the file). A concurrent upload of the same bytes waits for the first one's project;
/// a file imported before answers its project (or imports again if it was deleted).
pub async fn import_upload(
    svc: &Services,
    viewer: Viewer,
    upload: StagedUpload,
    title: Option<Title>,
) -> AppResult<project::Model> {
    let sha256 = upload.blob.sha256.clone();
    let bytes = Arc::new(
        tokio::fs::read(upload.blob.path())
            .await
            .map_err(|e| AppError::Unavailable(format!("reading the upload failed: {e}")))?,
    );
    // The upload itself is not stored: only what the import makes of it.
    drop(upload);
    let source = upload_source(viewer.id);
    let claimer = new_claimer();
    let started = std::time::Instant::now();
    loop {
        match claim(svc, &source, &sha256, &claimer, DEFAULT_LEASE).await? {
            Claim::Completed(id) => {
                if let Some(p) = project::Entity::find_by_id(id).one(svc.db.conn()).await? {
                    tracing::info!(project.id = id, user.id = %viewer.id, "import_upload_already_imported");
                    return Ok(p);
                }
                // Deleted just now: the next claim imports it again.
            }
            // (A claimer per request: `OwnAlready` cannot happen here.)
            Claim::Held | Claim::OwnAlready if started.elapsed() < UPLOAD_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Claim::Held | Claim::OwnAlready => {
                return Err(AppError::Unavailable(
                    "an import of the same file is still in progress; retry shortly".to_owned(),
                ));
            }
            Claim::Claimed(run_id) => {
                // Bounds the memory of concurrent imports: an upload may decompress to the
                // content limit plus ten asset limits.
                let _slot = upload_slots().acquire().await.map_err(AppError::internal)?;
                let title = title
                    .clone()
                    .map(Title::into_inner)
                    .unwrap_or_else(|| "Imported project".to_owned());
                let result = async {
                    let (plan, staged, _) = prepare_file(svc, bytes.clone(), run_id, title).await?;
                    let ids = write_plans(svc, viewer, &claimer, vec![plan], staged).await?;
                    Ok::<i64, AppError>(ids[0])
                }
                .await;
                let id = match result {
                    Ok(id) => id,
                    Err(e) => {
                        if let Some(id) = completed_project(svc, run_id, &claimer).await {
                            id
                        } else {
                            mark_failed(svc, run_id, &claimer, &reason(&e)).await;
                            tracing::info!(import_run.id = run_id, code = %e.code(), error = %e, "import_upload_failed");
                            return Err(e);
                        }
                    }
                };
                tracing::info!(project.id = id, user.id = %viewer.id, import_run.id = run_id, "project_imported");
                return project::Entity::find_by_id(id)
                    .one(svc.db.conn())
                    .await?
                    .ok_or(AppError::NotFound("project"));
            }
        }
    }
}

/// Uploads unpacked at once in this process: one per CPU.
fn upload_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )
    })
}

/// `CODE: message`, as a run's `error` and the CLI report show it.
fn reason(e: &AppError) -> String {
    format!("{}: {e}", e.code())
}

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

fn failed_report(path: &Path, e: &AppError) -> FileReport {
    FileReport {
        path: path.display().to_string(),
        status: FileStatus::Failed,
        project_id: None,
        code: Some(e.code().to_string()),
        reason: Some(e.to_string()),
    }
}

fn report(path: &Path, status: FileStatus, project_id: Option<i64>) -> FileReport {
    FileReport {
        path: path.display().to_string(),
        status,
        project_id,
        code: None,
        reason: None,
    }
}

/// A project's title from its file name.
fn title_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| {
            let t: String = s.chars().take(Title::MAX_CHARS).collect();
            Title::parse(&t).ok()
        })
        .map(Title::into_inner)
        .unwrap_or_else(|| "Untitled".to_owned())
}

/// One file after the concurrent stage: either done (skipped, taken, failed) or ready to
/// be written.
enum Step {
    Done(usize, FileReport),
    Ready(Prepared),
}

/// Reads, hashes, claims and validates one file (the concurrent stage).
async fn prepare_path(
    svc: Services,
    owner: Viewer,
    claimer: Arc<str>,
    lease: Duration,
    index: usize,
    path: PathBuf,
) -> Step {
    let limits = Sb3Limits::from(&svc.limits);
    let fail = |e: AppError| Step::Done(index, failed_report(&path, &e));
    // A zip holds at most its decompressed total plus headers: anything bigger is refused
    // before it is read.
    let max_file = limits.max_total_bytes + 64 * 1024 * limits.max_entries as u64;
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() > max_file => {
            return fail(AppError::PayloadTooLarge {
                what: "the .sb3 file",
                limit: max_file,
            });
        }
        Ok(_) => {}
        Err(e) => return fail(AppError::bad_input("path", format!("cannot read: {e}"))),
    }
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::read(&path).map(|b| {
                let hash = hex::encode(Sha256::digest(&b));
                (Arc::new(b), hash)
            })
        })
        .await
    };
    let (bytes, hash) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(AppError::bad_input("path", format!("cannot read: {e}"))),
        Err(e) => return fail(AppError::internal(e)),
    };
    let run_id = match claim(&svc, &cli_source(owner.id), &hash, &claimer, lease).await {
        Ok(Claim::Claimed(id)) => id,
        Ok(Claim::Completed(project)) => {
            return Step::Done(index, report(&path, FileStatus::Skipped, Some(project)));
        }
        Ok(Claim::Held) => return Step::Done(index, report(&path, FileStatus::Taken, None)),
        Ok(Claim::OwnAlready) => {
            let mut r = report(&path, FileStatus::Skipped, None);
            r.reason = Some("the same bytes as another file of this import".to_owned());
            return Step::Done(index, r);
        }
        Err(e) => return fail(e),
    };
    match prepare_file(&svc, bytes, run_id, title_of(&path)).await {
        Ok((plan, staged, sb3)) => Step::Ready(Prepared {
            index,
            plan,
            staged,
            sb3,
        }),
        Err(e) => {
            mark_failed(&svc, run_id, &claimer, &reason(&e)).await;
            fail(e)
        }
    }
}

/// A re-run's shortcut: the files (by index) imported for `source` before, with their
/// projects. Every file is hashed (streamed, concurrently; the bytes are not kept) and the
/// completed runs are looked up a few hundred hashes per statement, so a directory imported
/// already costs a read of each file and a handful of queries, not a round trip per file.
/// Anything not found here (or any error) takes the normal path, which decides for itself.
async fn already_imported(
    svc: &Services,
    source: &str,
    paths: &Arc<Vec<PathBuf>>,
    concurrency: usize,
) -> HashMap<usize, i64> {
    let hashes: Vec<(usize, String)> = futures::stream::iter(0..paths.len())
        .map(|i| {
            let path = paths[i].clone();
            async move {
                let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                    let mut file = std::fs::File::open(&path)?;
                    let mut hasher = Sha256::new();
                    std::io::copy(&mut file, &mut hasher)?;
                    Ok(hex::encode(hasher.finalize()))
                })
                .await;
                match hashed {
                    Ok(Ok(hash)) => Some((i, hash)),
                    _ => None,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|h| async move { h })
        .collect()
        .await;
    let mut found: HashMap<String, i64> = HashMap::new();
    for chunk in hashes.chunks(500) {
        let rows: Result<Vec<(String, Option<i64>)>, _> = import_run::Entity::find()
            .select_only()
            .column(import_run::Column::ContentHash)
            .column(import_run::Column::ProjectId)
            .filter(import_run::Column::Source.eq(source))
            .filter(import_run::Column::Status.eq("completed"))
            .filter(import_run::Column::ProjectId.is_not_null())
            .filter(import_run::Column::ContentHash.is_in(chunk.iter().map(|(_, h)| h.clone())))
            .into_tuple()
            .all(svc.db.conn())
            .await;
        match rows {
            Ok(rows) => found.extend(rows.into_iter().filter_map(|(h, p)| Some((h, p?)))),
            Err(e) => {
                tracing::debug!(error = %e, "import_precheck_failed");
                return HashMap::new();
            }
        }
    }
    hashes
        .into_iter()
        .filter_map(|(i, h)| found.get(&h).map(|p| (i, *p)))
        .collect()
}

/// `atelier import`: imports `files` for `owner` (see the module docs). `on_file` is told
/// of each file as it is decided (the progress bar).
pub async fn import_files(
    svc: &Services,
    owner: Viewer,
    files: Vec<PathBuf>,
    opts: ImportOptions,
    on_file: impl Fn(&FileReport),
) -> AppResult<ImportSummary> {
    let claimer: Arc<str> = new_claimer().into();
    let batch_size = opts.batch.max(1);
    let lease = opts.lease.max(Duration::from_secs(1));
    tracing::info!(import.files = files.len(), import.claimer = %claimer, "import_started");
    let renewer = {
        let (svc, claimer) = (svc.clone(), claimer.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = renew(&svc, &claimer, lease).await {
                    tracing::warn!(error = %e, "import_lease_renewal_failed");
                }
            }
        })
    };
    let paths: Arc<Vec<PathBuf>> = Arc::new(files);
    let mut reports: Vec<Option<FileReport>> = vec![None; paths.len()];
    let done_before = already_imported(svc, &cli_source(owner.id), &paths, opts.concurrency).await;
    // Bounded: at most `concurrency` files in the concurrent stage and two batches waiting.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Step>(batch_size * 2);
    let producer = {
        let (svc, claimer, paths) = (svc.clone(), claimer.clone(), paths.clone());
        tokio::spawn(async move {
            let mut steps = futures::stream::iter(0..paths.len())
                .map(|i| {
                    let skipped = done_before.get(&i).map(|project| {
                        Step::Done(i, report(&paths[i], FileStatus::Skipped, Some(*project)))
                    });
                    let task = prepare_path(
                        svc.clone(),
                        owner,
                        claimer.clone(),
                        lease,
                        i,
                        paths[i].clone(),
                    );
                    async move {
                        match skipped {
                            Some(step) => Ok(step),
                            None => tokio::spawn(task).await,
                        }
                    }
                })
                .buffer_unordered(opts.concurrency.max(1));
            while let Some(step) = steps.next().await {
                let step = match step {
                    Ok(step) => step,
                    Err(e) => {
                        tracing::error!(error = %e, "import_task_panicked");
                        continue;
                    }
                };
                if tx.send(step).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut batch: Vec<Prepared> = Vec::with_capacity(batch_size);
    let record = |index: usize, r: FileReport, reports: &mut Vec<Option<FileReport>>| {
        on_file(&r);
        reports[index] = Some(r);
    };
    loop {
        let step = rx.recv().await;
        let flush = match &step {
            None => !batch.is_empty(),
            Some(_) => false,
        };
        match step {
            Some(Step::Done(i, r)) => record(i, r, &mut reports),
            Some(Step::Ready(p)) => batch.push(p),
            None if !flush => break,
            None => {}
        }
        if batch.len() >= batch_size || flush {
            for (i, r) in
                write_batch(svc, owner, &claimer, std::mem::take(&mut batch), &paths).await
            {
                record(i, r, &mut reports);
            }
        }
    }
    let _ = producer.await;
    renewer.abort();
    let mut summary = ImportSummary::default();
    for (i, r) in reports.into_iter().enumerate() {
        // A file whose task panicked is reported, never silently dropped.
        let r = r.unwrap_or_else(|| {
            failed_report(
                &paths[i],
                &AppError::internal("the import of this file crashed"),
            )
        });
        match r.status {
            FileStatus::Imported => summary.imported += 1,
            FileStatus::Skipped => summary.skipped += 1,
            FileStatus::Taken => summary.taken += 1,
            FileStatus::Failed => summary.failed += 1,
        }
        summary.files.push(r);
    }
    tracing::info!(
        import.imported = summary.imported,
        import.skipped = summary.skipped,
        import.taken = summary.taken,
        import.failed = summary.failed,
        "import_finished"
    );
    Ok(summary)
}

/// Writes a batch in one transaction; if it fails, each file on its own, so one bad file
/// fails alone.
async fn write_batch(
    svc: &Services,
    owner: Viewer,
    claimer: &str,
    batch: Vec<Prepared>,
    paths: &[PathBuf],
) -> Vec<(usize, FileReport)> {
    // Tests: `imports::before_batch=return(300)` holds each batch before it is written, so
    // that a kill -9 catches the import half way.
    crate::failpoints::hold("imports::before_batch").await;
    let mut out = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    let mut staged = Vec::new();
    let mut plans = Vec::with_capacity(batch.len());
    for p in batch {
        plans.push(p.plan.clone());
        staged.extend(p.staged);
        items.push((p.index, p.plan, p.sb3));
    }
    let n = plans.len();
    let first = write_plans(svc, owner, claimer, plans, staged).await;
    match first {
        Ok(ids) => {
            tracing::info!(import.batch = n, "import_batch_written");
            for ((index, _, _), id) in items.iter().zip(ids) {
                out.push((
                    *index,
                    report(&paths[*index], FileStatus::Imported, Some(id)),
                ));
            }
            return out;
        }
        Err(e) => {
            tracing::info!(import.batch = n, error = %e, "import_batch_failed_retrying_one_by_one")
        }
    }
    // The batch's staged blobs are gone with it (or kept pending for the database to decide,
    // and then the run is found completed below): stage each file's again.
    for (index, plan, sb3) in items {
        let path = &paths[index];
        let result = async {
            let staged = restage(svc, &plan, &sb3).await?;
            write_plans(svc, owner, claimer, vec![plan.clone()], staged).await
        }
        .await;
        let r = match result {
            Ok(ids) => report(path, FileStatus::Imported, Some(ids[0])),
            Err(e) => match completed_project(svc, plan.run_id, claimer).await {
                Some(id) => report(path, FileStatus::Imported, Some(id)),
                None => {
                    mark_failed(svc, plan.run_id, claimer, &reason(&e)).await;
                    tracing::info!(import_run.id = plan.run_id, path = %path.display(), code = %e.code(), error = %e, "import_file_failed");
                    failed_report(path, &e)
                }
            },
        };
        out.push((index, r));
    }
    out
}

/// The local user `--owner` names (created if absent, as `token create` does), as the viewer
/// the projects are created for.
pub async fn local_owner(svc: &Services, name: &str) -> AppResult<Viewer> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::bad_input("owner", "owner must not be empty"));
    }
    let user = svc
        .db
        .write(|txn| {
            let name = name.clone();
            Box::pin(async move {
                super::identity::get_or_create_user(
                    txn,
                    super::identity::LOCAL_PROVIDER,
                    &name,
                    &name,
                    None,
                )
                .await
            })
        })
        .await?;
    Ok(Viewer {
        id: UserId(user.id),
        role: crate::domain::Role::from_db(&user.role),
    })
}
