//! The one vocabulary of leased work: every row that someone claims, holds under a lease and
//! finishes (`jobs`, `import_runs`, `idempotency_keys`) stores its state as one of these.

use sea_orm::entity::prelude::*;

/// The state of a leased row, stored as a string.
///
/// `Pending` → `Running` (held: `holder` and `lease_until` say by whom and until when) →
/// `Completed` | `Failed`. A `Running` row whose lease passed was abandoned: it may be taken.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// Claimed, waiting for a worker to take it (jobs only).
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Held by `holder` until `lease_until`.
    #[sea_orm(string_value = "running")]
    Running,
    /// Done; the outcome is recorded on the row.
    #[sea_orm(string_value = "completed")]
    // Recorded outcomes (idempotency effects) from before the vocabulary was one.
    #[serde(alias = "ready", alias = "complete")]
    Completed,
    /// Given up; the row says why. A new claim may start over.
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl LeaseStatus {
    /// Completed or failed: nothing will change it but a new claim.
    pub fn is_final(self) -> bool {
        matches!(self, LeaseStatus::Completed | LeaseStatus::Failed)
    }
}
