//! The queue's compare-and-set steps on `jobs` rows, all through the one lease protocol
//! (`service::lease`): take, keep, finish, abandon, and the sweep's search for jobs nobody
//! runs. Every status change is announced.

use std::sync::atomic::Ordering::Relaxed;

use entity::job;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::{CHANNEL, MAX_ATTEMPTS, PENDING_GRACE, worker::kick};
use crate::{
    db::Decision,
    error::{AppError, AppResult},
    service::{
        Services,
        lease::{self, Held, LeaseStatus},
        now,
    },
};

/// The compare-and-set that makes one worker the builder: a pending job, or one whose
/// worker's lease passed, becomes `token`'s.
pub(super) async fn take(svc: &Services, id: i64, token: &str) -> AppResult<Option<job::Model>> {
    let lease = chrono::Duration::from_std(svc.jobs.lease).map_err(AppError::internal)?;
    svc.db
        .write(|txn| {
            let token = token.to_owned();
            Box::pin(async move {
                let at = now();
                let taken = lease::claim::<job::Entity>(
                    Condition::all()
                        .add(job::Column::Id.eq(id))
                        .add(job::Column::Attempts.lt(MAX_ATTEMPTS))
                        .add(lease::claimable::<job::Entity>(at)),
                    &token,
                    at + lease,
                )
                .col_expr(
                    job::Column::Attempts,
                    Expr::col(job::Column::Attempts).add(1),
                )
                .col_expr(job::Column::UpdatedAt, Expr::value(at))
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

/// Keeps the lease while the build runs; returns only when the lease is lost.
pub(super) async fn keep_lease(svc: &Services, id: i64, token: &str) -> Held {
    let every = svc.jobs.lease / 3;
    let lease = lease::span(svc.jobs.lease);
    loop {
        tokio::time::sleep(every).await;
        let kept = svc
            .db
            .write_one(|conn| {
                let token = token.to_owned();
                Box::pin(async move {
                    let kept =
                        lease::keep::<job::Entity>(job::Column::Id.eq(id), &token, now() + lease)
                            .exec(conn)
                            .await?;
                    Ok(Held::from_rows(kept.rows_affected))
                })
            })
            .await;
        match kept {
            Ok(Held::Lost) => return Held::Lost,
            Ok(Held::Yes) => {}
            // The database is away: keep building; the READY update decides whether we still
            // hold the job.
            Err(e) => tracing::warn!(job.id = id, error = %e, "job_lease_renewal_failed"),
        }
    }
}

/// Completed (READY), with the bundle published in the same step (`write::commit`), if this
/// run still holds the job; otherwise nothing is written and the staged bundle is dropped.
pub(super) async fn finish_ready(
    svc: &Services,
    id: i64,
    token: &str,
    staged: crate::storage::StagedBlob,
) -> AppResult<Held> {
    let (key, size) = (staged.key.clone(), staged.size as i64);
    let held = crate::service::write::commit_deciding(svc, vec![staged], None, |txn| {
        let (token, key) = (token.to_owned(), key.clone());
        Box::pin(async move {
            let done = lease::finish::<job::Entity>(
                job::Column::Id.eq(id),
                &token,
                LeaseStatus::Completed,
            )
            .col_expr(job::Column::BundleKey, Expr::value(key))
            .col_expr(job::Column::BundleSize, Expr::value(size))
            .col_expr(job::Column::UpdatedAt, Expr::value(now()))
            .exec(txn)
            .await?;
            match Held::from_rows(done.rows_affected) {
                Held::Lost => Ok(Decision::RollBack(false)),
                Held::Yes => {
                    announce(txn, id).await?;
                    Ok(Decision::Commit(true))
                }
            }
        })
    })
    .await?;
    if !held {
        return Ok(Held::Lost);
    }
    svc.jobs.changed(id);
    Ok(Held::Yes)
}

/// FAILED with the reason, if this run still holds the job. Best effort: if it cannot be
/// recorded, the lease expires and the sweep runs the job again.
pub(super) async fn finish_failed(svc: &Services, id: i64, token: &str, reason: String) {
    svc.jobs.failures.fetch_add(1, Relaxed);
    let marked = svc
        .db
        .write(|txn| {
            let (token, reason) = (token.to_owned(), reason.clone());
            Box::pin(async move {
                let done = lease::finish::<job::Entity>(
                    job::Column::Id.eq(id),
                    &token,
                    LeaseStatus::Failed,
                )
                .col_expr(job::Column::Error, Expr::value(reason))
                .col_expr(job::Column::UpdatedAt, Expr::value(now()))
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
                        .add(job::Column::Status.eq(LeaseStatus::Pending))
                        .add(job::Column::UpdatedAt.lt(at - grace)),
                )
                .add(lease::expired::<job::Entity>(at)),
        )
        .order_by_asc(job::Column::Id)
        .limit(100)
        .all(svc.db.conn())
        .await?;
    for job in &stuck {
        if job.status == LeaseStatus::Running && job.attempts >= MAX_ATTEMPTS {
            abandon(svc, job).await?;
        } else {
            if job.status == LeaseStatus::Running {
                tracing::warn!(job.id = job.id, job.claimed_by = ?job.claimed_by, "job_lease_expired_reclaiming");
            }
            kick(svc, job.id);
        }
    }
    Ok(stuck.len())
}

/// FAILED for a job whose workers kept dying, if its lease is still expired (and still the
/// one the sweep saw: a worker that took it meanwhile keeps it).
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
                let done = lease::finish_expired::<job::Entity>(
                    Condition::all()
                        .add(job::Column::Id.eq(id))
                        .add(job::Column::ClaimedBy.eq(claimed_by)),
                    at,
                    LeaseStatus::Failed,
                )
                .col_expr(job::Column::Error, Expr::value(message))
                .col_expr(job::Column::UpdatedAt, Expr::value(at))
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
