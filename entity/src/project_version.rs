//! One committed version of a project: what its title and content were, who saved it, when,
//! and through which path (`via`: `graphql`, `editor`, `copy`, `import`, `restore`).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "project_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub project_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: i32,
    pub title: String,
    /// Blob key of this version's content (the SHA-256 of its JSON).
    pub content_key: String,
    pub content_size: i64,
    /// Who saved it; NULL for the first entry of a project that existed before history.
    pub saved_by: Option<i64>,
    pub saved_at: DateTimeUtc,
    pub via: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
