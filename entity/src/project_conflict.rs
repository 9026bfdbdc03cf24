//! A conflicted save: an editing session's save whose base version was no longer current.
//! Not a version; kept so that it can be looked at and made current ("keep mine").
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "project_conflicts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub project_id: i64,
    /// The editing session that sent it (NULL once that session is gone).
    pub session_id: Option<i64>,
    /// The version the session had loaded (or last saved) when it sent this save.
    pub base_version: i32,
    pub title: String,
    pub content_key: String,
    pub content_size: i64,
    pub saved_by: Option<i64>,
    pub saved_at: DateTimeUtc,
    /// The version it became through `resolveConflict`, if it did.
    pub resolved_version: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
