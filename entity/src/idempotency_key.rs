//! A mutation request's `Idempotency-Key`, per user: who is executing it (a lease), and once
//! it is done, the answer every repeat gets.
use sea_orm::entity::prelude::*;

use crate::lease::LeaseStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idem_key: String,
    /// SHA-256 of the request (query, operation, variables, uploaded bytes).
    pub fingerprint: String,
    /// Running (an execution holds the lease) → completed (the answer is recorded).
    pub state: LeaseStatus,
    /// The execution holding the lease (a random id), while `running`.
    pub holder: Option<String>,
    pub lease_until: DateTimeUtc,
    /// HTTP status and body of the recorded answer, once `complete`.
    pub status: Option<i32>,
    pub response: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
