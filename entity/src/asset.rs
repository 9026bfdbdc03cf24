//! A content-addressed media asset, unique by (md5, asset_type). Its bytes live in the blob
//! store under `blob_key`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "assets")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub md5: String,
    /// `image_vector`, `image_bitmap` or `sound`.
    pub asset_type: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    /// File extension (Scratch's `dataFormat`): svg, png, jpg, wav, mp3.
    pub data_format: String,
    pub blob_key: String,
    pub created_by: Option<i64>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
