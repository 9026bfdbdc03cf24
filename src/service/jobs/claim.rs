//! Claiming an export (once per project version, whoever asks, in any process) and reading
//! jobs and their bundles for a viewer.

use entity::{job, project};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, OnConflict},
};

use super::{KIND_EXPORT_SB3, LeaseStatus, worker::kick};
use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{Services, access, now},
};

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
        tracing::debug!(job.id = job.id, project.id = %id, job.status = ?job.status, "export_claim_joined");
    }
    if runnable(&job) {
        kick(svc, job.id);
    }
    Ok(job)
}

pub(super) async fn claim<C: ConnectionTrait>(
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
            status: Set(LeaseStatus::Pending),
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
            .target_and_where(Expr::cust(format!(
                "status <> '{}'",
                sea_orm::ActiveEnum::to_value(&LeaseStatus::Failed)
            )))
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

pub(super) async fn live_job<C: ConnectionTrait>(
    conn: &C,
    project_id: i64,
    version: i32,
) -> AppResult<Option<job::Model>> {
    Ok(job::Entity::find()
        .filter(job::Column::Kind.eq(KIND_EXPORT_SB3))
        .filter(job::Column::SubjectId.eq(project_id))
        .filter(job::Column::SubjectVersion.eq(version))
        .filter(job::Column::Status.ne(LeaseStatus::Failed))
        .one(conn)
        .await?)
}

/// Whether a worker should try to take the job now.
pub(super) fn runnable(job: &job::Model) -> bool {
    match job.status {
        LeaseStatus::Pending => true,
        LeaseStatus::Running => job.lease_until.is_none_or(|l| l < now()),
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
    match (job.status, job.bundle_key.clone()) {
        (LeaseStatus::Completed, Some(key)) => Ok(Bundle {
            size: u64::try_from(job.bundle_size.unwrap_or(0)).unwrap_or(0),
            key,
            job,
            project,
        }),
        (LeaseStatus::Failed, _) => Err(AppError::Conflict(format!(
            "the export failed ({}); export again",
            job.error.as_deref().unwrap_or("no reason recorded")
        ))),
        _ => Err(AppError::Conflict(
            "the export is not ready yet; watch the job and download it once READY".to_owned(),
        )),
    }
}
