//! A reusable piece (sprite, costume, sound, script) in a user's backpack.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "backpack_items")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub owner_id: i64,
    pub name: String,
    pub kind: String,
    pub body_key: String,
    pub thumbnail_key: Option<String>,
    pub created_at: DateTimeUtc,
    /// Media type of the body, as checked against its bytes.
    pub mime: String,
    /// Bytes of body and thumbnail together (what the quota counts).
    pub size: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
