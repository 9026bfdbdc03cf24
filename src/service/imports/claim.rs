//! The claim protocol on `import_runs`: claim (or take over) the run of (source, hash),
//! renew a claimer's leases, mark a run failed, and read back a run whose write may have
//! committed.

use std::time::Duration;

use entity::import_run;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::claimer::claimer_is_dead;
use crate::{
    error::{AppError, AppResult},
    service::{Services, now},
};
/// The outcome of claiming one file.
#[derive(Debug)]
pub(super) enum Claim {
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
pub(super) async fn claim(
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

pub(super) async fn find_run(
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
pub(super) fn placeholders(backend: DbBackend, sql: &str) -> String {
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
pub(super) async fn renew(svc: &Services, claimer: &str, lease: Duration) -> AppResult<u64> {
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
pub(super) async fn mark_failed(svc: &Services, run_id: i64, claimer: &str, reason: &str) {
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

/// After a failed write of one run: the run may have committed anyway (a COMMIT whose reply
/// was lost), and then it is imported, not failed.
pub(super) async fn completed_project(svc: &Services, run_id: i64, claimer: &str) -> Option<i64> {
    let run = import_run::Entity::find_by_id(run_id)
        .one(svc.db.conn())
        .await
        .ok()??;
    (run.status == "completed" && run.claimed_by.as_deref() == Some(claimer))
        .then_some(run.project_id)
        .flatten()
}
