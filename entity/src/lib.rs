//! SeaORM entities for Atelier's tables. Data only: all logic lives in the `atelier` crate's
//! service layer. The schema itself is owned by the `migration` crate.

pub mod api_token;
pub mod asset;
pub mod backpack_item;
pub mod editor_session;
pub mod group;
pub mod group_member;
pub mod idempotency_effect;
pub mod idempotency_key;
pub mod import_run;
pub mod job;
pub mod lease;
pub mod oidc_login;
pub mod project;
pub mod project_asset;
pub mod project_conflict;
pub mod project_share;
pub mod project_token;
pub mod project_version;
pub mod session;
pub mod user;
