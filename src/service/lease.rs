//! The one lease protocol of every row that is claimed, held and finished: export jobs,
//! import runs and idempotency keys. A row is held by one holder (a random per-run id) until
//! its `lease_until`; every step is a compare-and-set on the state and the holder, so of two
//! racers exactly one wins, and a holder that lost its lease (it passed, and someone else
//! took the row) can never overwrite the new holder's work.
//!
//! - **claim**: `Pending`, or `Running` with a passed lease → `Running`, held by us.
//! - **keep**: move our lease on while we work; 0 rows means it was lost.
//! - **release**: end our lease now (someone else may take the row at once).
//! - **expire**: the condition of a row whose holder is gone (the sweeps look for it).
//! - **finish**: `Completed` or `Failed`, only while we still hold it.
//!
//! Each table names its columns through [`Leased`]; what else a step writes (an attempt
//! count, an outcome) the caller adds to the returned statement.

use chrono::{DateTime, Utc};
use entity::{idempotency_key, import_run, job};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, UpdateMany,
    sea_query::{Expr, IntoCondition},
};

pub use entity::lease::LeaseStatus;

/// A table whose rows are leased: which columns hold the state, the holder and the lease.
pub trait Leased: EntityTrait {
    const STATUS: Self::Column;
    const HOLDER: Self::Column;
    const LEASE_UNTIL: Self::Column;
    /// Whether the lease column may be NULL (then a finished row has none).
    const LEASE_NULLABLE: bool;
}

impl Leased for job::Entity {
    const STATUS: job::Column = job::Column::Status;
    const HOLDER: job::Column = job::Column::ClaimedBy;
    const LEASE_UNTIL: job::Column = job::Column::LeaseUntil;
    const LEASE_NULLABLE: bool = true;
}

impl Leased for import_run::Entity {
    const STATUS: import_run::Column = import_run::Column::Status;
    const HOLDER: import_run::Column = import_run::Column::ClaimedBy;
    const LEASE_UNTIL: import_run::Column = import_run::Column::LeaseUntil;
    const LEASE_NULLABLE: bool = true;
}

impl Leased for idempotency_key::Entity {
    const STATUS: idempotency_key::Column = idempotency_key::Column::State;
    const HOLDER: idempotency_key::Column = idempotency_key::Column::Holder;
    const LEASE_UNTIL: idempotency_key::Column = idempotency_key::Column::LeaseUntil;
    const LEASE_NULLABLE: bool = false;
}

/// What a holder learns when it tries to keep or finish a row it no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Still ours: the step was applied.
    Yes,
    /// Lost (the lease passed and someone else took the row): nothing was changed.
    Lost,
}

impl Held {
    /// From the rows a compare-and-set changed.
    pub fn from_rows(rows: u64) -> Held {
        if rows > 0 { Held::Yes } else { Held::Lost }
    }
}

/// Rows held by `holder`.
pub fn held_by<E: Leased>(holder: &str) -> Condition {
    Condition::all()
        .add(E::STATUS.eq(LeaseStatus::Running))
        .add(E::HOLDER.eq(holder))
}

/// Rows whose holder is gone: running, and the lease passed (or was never set).
pub fn expired<E: Leased>(at: DateTime<Utc>) -> Condition {
    let passed = Condition::any().add(E::LEASE_UNTIL.lt(at));
    let passed = if E::LEASE_NULLABLE {
        passed.add(E::LEASE_UNTIL.is_null())
    } else {
        passed
    };
    Condition::all()
        .add(E::STATUS.eq(LeaseStatus::Running))
        .add(passed)
}

/// Rows anyone may claim now: pending, or expired.
pub fn claimable<E: Leased>(at: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(E::STATUS.eq(LeaseStatus::Pending))
        .add(expired::<E>(at))
}

/// Claims the rows `which` (add [`claimable`], or a compare-and-set on the previous holder)
/// for `holder` until `until`.
pub fn claim<E: Leased>(
    which: impl IntoCondition,
    holder: &str,
    until: DateTime<Utc>,
) -> UpdateMany<E> {
    E::update_many()
        .col_expr(E::STATUS, Expr::value(LeaseStatus::Running))
        .col_expr(E::HOLDER, Expr::value(holder))
        .col_expr(E::LEASE_UNTIL, Expr::value(until))
        .filter(which)
}

/// Moves the lease of the rows `which` that `holder` holds on to `until` (keep). No row
/// changed means the lease was lost ([`Held::from_rows`]).
pub fn keep<E: Leased>(
    which: impl IntoCondition,
    holder: &str,
    until: DateTime<Utc>,
) -> UpdateMany<E> {
    E::update_many()
        .col_expr(E::LEASE_UNTIL, Expr::value(until))
        .filter(held_by::<E>(holder))
        .filter(which)
}

/// Ends `holder`'s lease on the rows `which` at `at`, so anyone may claim them at once.
pub fn release<E: Leased>(
    which: impl IntoCondition,
    holder: &str,
    at: DateTime<Utc>,
) -> UpdateMany<E> {
    E::update_many()
        .col_expr(E::LEASE_UNTIL, Expr::value(at))
        .filter(held_by::<E>(holder))
        .filter(which)
}

/// Finishes the rows `which` that `holder` holds as `status` (completed or failed); a
/// nullable lease is cleared. The caller adds the outcome's columns.
pub fn finish<E: Leased>(
    which: impl IntoCondition,
    holder: &str,
    status: LeaseStatus,
) -> UpdateMany<E> {
    finish_unless_taken(E::update_many().filter(held_by::<E>(holder)), which, status)
}

/// [`finish`] for rows whose holder is gone (the sweep gives up on them): `which` must pin
/// the holder and lease seen, so a row taken meanwhile is left alone.
pub fn finish_expired<E: Leased>(
    which: impl IntoCondition,
    at: DateTime<Utc>,
    status: LeaseStatus,
) -> UpdateMany<E> {
    finish_unless_taken(E::update_many().filter(expired::<E>(at)), which, status)
}

fn finish_unless_taken<E: Leased>(
    update: UpdateMany<E>,
    which: impl IntoCondition,
    status: LeaseStatus,
) -> UpdateMany<E> {
    debug_assert!(status.is_final());
    let update = update
        .col_expr(E::STATUS, Expr::value(status))
        .filter(which);
    if E::LEASE_NULLABLE {
        update.col_expr(E::LEASE_UNTIL, Expr::value(Option::<DateTime<Utc>>::None))
    } else {
        update
    }
}

/// The lease as a `chrono` duration (for `now() + lease`).
pub fn span(lease: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}
