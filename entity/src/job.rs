//! Slow work (exports) claimed once per (kind, subject_id, subject_version).
use sea_orm::entity::prelude::*;

use crate::lease::LeaseStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `export_sb3`.
    pub kind: String,
    /// The project exported.
    pub subject_id: i64,
    /// The project's version when the job was claimed: what the bundle contains.
    pub subject_version: i32,
    /// Pending → running → completed (the bundle is ready) | failed.
    pub status: LeaseStatus,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The user whose request claimed the job.
    pub requested_by: Option<i64>,
    /// Blob key of the project's content at `subject_version` (blobs are immutable).
    pub source_key: Option<String>,
    /// While `running`: the worker holds the job until then, and renews it while it builds.
    pub lease_until: Option<DateTimeUtc>,
    /// While `running`: which worker (process) holds the lease.
    pub claimed_by: Option<String>,
    /// How many times a worker took the job.
    pub attempts: i32,
    /// When `ready`: the bundle's blob key (its SHA-256, hex) and size.
    pub bundle_key: Option<String>,
    pub bundle_size: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
