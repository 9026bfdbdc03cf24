//! The service layer: one module per aggregate. Every transaction, lock and version check
//! lives here; callers (GraphQL, CLI) only parse input and map errors.

pub mod access;
pub mod assets;
pub mod backpack;
pub mod coalesce;
pub mod idempotency;
pub mod identity;
pub mod imports;
pub mod maintenance;
pub mod pacing;
pub mod projects;
pub mod sb3;
pub mod sharing;
pub mod write;

use crate::{config::Limits, db::Db, storage::BlobStore};

/// What every service function needs: the database, the blob store and the limits.
#[derive(Clone)]
pub struct Services {
    pub db: Db,
    pub blobs: BlobStore,
    pub limits: Limits,
    pub tokens: std::sync::Arc<identity::TokenCache>,
    pub pacer: std::sync::Arc<pacing::Pacer>,
    pub project_reads: std::sync::Arc<coalesce::ProjectReads>,
}

impl Services {
    pub fn new(db: Db, blobs: BlobStore, limits: Limits) -> Services {
        // PostgreSQL: trusted while the listener hears every change (see `identity`);
        // SQLite: validated by the epoch file in the data dir on every lookup.
        let tokens = match db.backend() {
            sea_orm::DbBackend::Sqlite => {
                let data_dir = blobs.blobs_dir().parent().unwrap_or(blobs.blobs_dir());
                identity::TokenCache::with_epoch_file(data_dir)
            }
            _ => identity::TokenCache::default(),
        };
        Services {
            db,
            blobs,
            limits,
            tokens: std::sync::Arc::new(tokens),
            pacer: Default::default(),
            project_reads: Default::default(),
        }
    }
}

/// Now, truncated to microseconds so a value reads back equal from both backends.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
