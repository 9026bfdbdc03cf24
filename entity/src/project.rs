//! A project: its Scratch 3 JSON lives in the blob store under `content_key`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "projects")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub owner_id: i64,
    pub title: String,
    /// Blob key of the current content (the SHA-256 of its bytes, hex).
    pub content_key: String,
    pub content_size: i64,
    pub remixed_from: Option<i64>,
    /// Bumped by every change of user-edited state (title, content); compare-and-set target.
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
