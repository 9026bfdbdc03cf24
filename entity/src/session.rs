//! A browser session created by an OpenID Connect sign-in. Only the SHA-256 of the session
//! token is stored; the provider's tokens are kept (encrypted) so they can be refreshed, and
//! `version` counts refreshes.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    #[sea_orm(unique)]
    pub token_hash: String,
    /// The provider's access token, encrypted with the server's secret key.
    pub access_token: Option<String>,
    /// The provider's refresh token, encrypted with the server's secret key.
    pub refresh_token: Option<String>,
    /// When the provider's access token expires: the first request after it refreshes it.
    pub expires_at: Option<DateTimeUtc>,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The issuer that signed the user in.
    pub provider: String,
    /// Set when the session ended (logout, or the provider refused a refresh): the user must
    /// sign in again.
    pub ended_at: Option<DateTimeUtc>,
    pub end_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
