//! The claim protocol on `import_runs`, through the one lease protocol (`service::lease`):
//! claim (or take over) the run of (source, hash), keep a claimer's leases, mark a run
//! failed, and read back a run whose write may have committed.

use std::time::Duration;

use entity::import_run;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait, OnConflict, Query},
};

use super::claimer::claimer_is_dead;
use crate::{
    error::{AppError, AppResult},
    service::{
        Services,
        lease::{self, LeaseStatus},
        now,
    },
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
        && run.status == LeaseStatus::Completed
        && let Some(project) = run.project_id
    {
        return Ok(Claim::Completed(project));
    }
    for _ in 0..5 {
        let at = now();
        let until = at + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
        let stmt = svc
            .db
            .backend()
            .build(&claim_statement(source, hash, claimer, at, until));
        let claimed = svc
            .db
            .write_one(|conn| {
                let stmt = stmt.clone();
                Box::pin(async move {
                    match sea_orm::ConnectionTrait::query_one_raw(conn, stmt).await? {
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
        match (run.status, run.project_id, run.claimed_by) {
            (LeaseStatus::Completed, Some(project), _) => return Ok(Claim::Completed(project)),
            (LeaseStatus::Running, _, Some(holder)) if claimer_is_dead(&holder) => {
                // Compare-and-set on the dead holder: of several importers noticing, one wins.
                let taken = lease::claim::<import_run::Entity>(
                    Condition::all()
                        .add(import_run::Column::Id.eq(run.id))
                        .add(lease::held_by::<import_run::Entity>(&holder)),
                    claimer,
                    until,
                )
                .col_expr(
                    import_run::Column::Attempts,
                    Expr::col(import_run::Column::Attempts).add(1),
                )
                .col_expr(import_run::Column::UpdatedAt, Expr::value(at))
                .exec(svc.db.conn())
                .await?;
                if taken.rows_affected == 1 {
                    tracing::info!(import_run.id = run.id, import_run.dead_claimer = %holder, "import_run_taken_from_dead_claimer");
                    return Ok(Claim::Claimed(run.id));
                }
            }
            (LeaseStatus::Running, _, Some(holder)) if holder == claimer => {
                return Ok(Claim::OwnAlready);
            }
            (LeaseStatus::Running, _, _) => return Ok(Claim::Held),
            // Changed between our statement and the read (failed, or its project deleted):
            // claim again.
            _ => {}
        }
    }
    Err(AppError::Unavailable(
        "the import claim keeps changing; retry".to_owned(),
    ))
}

/// The one statement that claims a run: inserts it running under our lease, or, when it
/// exists, takes it over if it failed, was abandoned (its lease passed) or completed a project
/// deleted since; `RETURNING id` only when we got it. Built, not written, so the states are
/// the enum's and the placeholders the backend's.
fn claim_statement(
    source: &str,
    hash: &str,
    claimer: &str,
    at: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> sea_orm::sea_query::InsertStatement {
    use import_run::{Column as C, Entity as Runs};
    // Qualified: in the DO UPDATE clause a bare name could mean the proposed row.
    let existing = |c: C| Expr::col((Runs, c));
    let takeable = Condition::any()
        .add(existing(C::Status).eq(LeaseStatus::Failed))
        .add(
            Condition::all()
                .add(existing(C::Status).eq(LeaseStatus::Running))
                .add(
                    Condition::any()
                        .add(existing(C::LeaseUntil).is_null())
                        .add(existing(C::LeaseUntil).lt(at)),
                ),
        )
        .add(
            Condition::all()
                .add(existing(C::Status).eq(LeaseStatus::Completed))
                .add(existing(C::ProjectId).is_null()),
        );
    Query::insert()
        .into_table(Runs)
        .columns([
            C::Source,
            C::ContentHash,
            C::Status,
            C::Attempts,
            C::ClaimedBy,
            C::LeaseUntil,
            C::CreatedAt,
            C::UpdatedAt,
        ])
        .values_panic([
            source.into(),
            hash.into(),
            LeaseStatus::Running.into(),
            1.into(),
            claimer.into(),
            until.into(),
            at.into(),
            at.into(),
        ])
        .on_conflict(
            OnConflict::columns([C::Source, C::ContentHash])
                .value(C::Status, LeaseStatus::Running)
                .value(C::Attempts, existing(C::Attempts).add(1))
                .update_columns([C::ClaimedBy, C::LeaseUntil, C::UpdatedAt])
                .value(C::Error, Expr::value(Option::<String>::None))
                .value(C::ProjectId, Expr::value(Option::<i64>::None))
                .action_and_where(takeable.into())
                .to_owned(),
        )
        .returning_col(C::Id)
        .to_owned()
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

/// Keeps every running claim of `claimer` alive for another `lease`.
pub(super) async fn renew(svc: &Services, claimer: &str, lease: Duration) -> AppResult<u64> {
    let until = now() + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
    Ok(
        lease::keep::<import_run::Entity>(Condition::all(), claimer, until)
            .exec(svc.db.conn())
            .await?
            .rows_affected,
    )
}

/// Marks our claim failed with the reason, so a later import may claim it anew. A run that
/// is no longer ours (or already completed) is left alone.
pub(super) async fn mark_failed(svc: &Services, run_id: i64, claimer: &str, reason: &str) {
    let result = lease::finish::<import_run::Entity>(
        import_run::Column::Id.eq(run_id),
        claimer,
        LeaseStatus::Failed,
    )
    .col_expr(import_run::Column::Error, Expr::value(reason))
    .col_expr(import_run::Column::UpdatedAt, Expr::value(now()))
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
    (run.status == LeaseStatus::Completed && run.claimed_by.as_deref() == Some(claimer))
        .then_some(run.project_id)
        .flatten()
}
