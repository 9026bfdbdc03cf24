//! An editing session of the Scratch editor: its token (only the SHA-256 is stored) alone
//! authorizes one project for one user, for as long as the credential it was opened with
//! (`parent_kind` = `session` or `api_token`, `parent_hash` = that credential's SHA-256) holds.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "editor_sessions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub token_hash: String,
    pub project_id: i64,
    pub user_id: i64,
    pub parent_kind: String,
    pub parent_hash: String,
    /// Whether the user could write the project when the session was opened (checked again on
    /// every request).
    pub can_write: bool,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub last_used_at: DateTimeUtc,
    /// The version this session last served or saved: the compare-and-set base of its next
    /// save. NULL until its first load.
    pub base_version: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
