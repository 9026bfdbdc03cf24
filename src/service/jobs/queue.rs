//! The queue's compare-and-set steps on `jobs` rows: take, renew, finish, abandon, and the
//! sweep's search for jobs nobody runs. Every status change is announced.

use std::sync::atomic::Ordering::Relaxed;

use entity::job;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::{CHANNEL, MAX_ATTEMPTS, PENDING_GRACE, Status, worker::kick};
use crate::{
    error::{AppError, AppResult},
    service::{Services, now},
};

pub(super) const LEASE_LOST: &str = "the job's lease was lost to another worker";

pub(super) fn is_lease_lost(e: &AppError) -> bool {
    matches!(e, AppError::Conflict(m) if m == LEASE_LOST)
}

/// The compare-and-set that makes one worker the builder.
pub(super) async fn take(svc: &Services, id: i64, token: &str) -> AppResult<Option<job::Model>> {
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
pub(super) async fn keep_lease(svc: &Services, id: i64, token: &str) -> AppError {
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
pub(super) async fn finish_ready(
    svc: &Services,
    id: i64,
    token: &str,
    staged: crate::storage::StagedBlob,
) -> AppResult<()> {
    let (key, size) = (staged.key.clone(), staged.size as i64);
    crate::service::write::commit(svc, vec![staged], None, |txn| {
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
pub(super) async fn finish_failed(svc: &Services, id: i64, token: &str, why: &AppError) {
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
pub(super) async fn announce<C: ConnectionTrait>(conn: &C, id: i64) -> AppResult<()> {
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
pub(super) async fn abandon(svc: &Services, job: &job::Model) -> AppResult<()> {
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
