//! A claim on one import of one source's content; unique by (source, content_hash).
use sea_orm::entity::prelude::*;

use crate::lease::LeaseStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "import_runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub source: String,
    pub content_hash: String,
    /// Running (claimed, under a lease) → completed | failed.
    pub status: LeaseStatus,
    pub attempts: i32,
    pub error: Option<String>,
    /// Who holds a running run: `host:pid:uuid` of the importing process.
    pub claimed_by: Option<String>,
    /// A running run whose lease has passed was abandoned: it may be claimed again.
    pub lease_until: Option<DateTimeUtc>,
    /// The project a completed run created (NULL once that project is deleted).
    pub project_id: Option<i64>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
