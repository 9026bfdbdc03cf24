//! What one mutation field of an idempotent request did, written in the same transaction as
//! the mutation itself: a retry finds it exactly when the mutation committed.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_effects")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idem_key: String,
    /// The field's place in the request: `<operation index>.<response key>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub path: String,
    /// The service's result, as JSON: what a replay returns.
    pub outcome: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
