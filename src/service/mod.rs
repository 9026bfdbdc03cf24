//! The service layer: one module per aggregate. Every transaction, lock and version check
//! lives here; callers (GraphQL, CLI) only parse input and map errors.

pub mod access;
pub mod assets;
pub mod backpack;
pub mod builtin;
pub mod changes;
pub mod coalesce;
pub mod credential;
pub mod editor;
pub mod editor_page;
pub mod export;
pub mod history;
pub mod idempotency;
pub mod identity;
pub mod imports;
pub mod jobs;
pub mod lease;
pub mod maintenance;
pub mod oidc;
pub mod pacing;
pub mod projects;
pub mod reads;
pub mod return_to;
pub mod sb3;
pub mod secrets;
pub mod sessions;
pub mod sharing;
pub mod subscriptions;
pub mod upstream;
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
    /// OpenID Connect sign-in, when configured (`ATELIER_OIDC_ISSUER`, …).
    pub oidc: Option<std::sync::Arc<oidc::Oidc>>,
    /// This process's background job workers (exports).
    pub jobs: std::sync::Arc<jobs::JobRunner>,
    /// This process's live subscriptions, under their caps.
    pub subscriptions: std::sync::Arc<subscriptions::Subscriptions>,
    /// Editing sessions and project tokens: lifetimes, and the public URL of their hosts.
    pub editor: editor::EditorSettings,
    /// Project versions committed (heard here, and on PostgreSQL from every process).
    pub project_changes: std::sync::Arc<changes::ProjectChanges>,
    /// The upstream asset host missing assets are pulled from (`ATELIER_ASSET_UPSTREAM`).
    pub upstream: Option<std::sync::Arc<upstream::Upstream>>,
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
        let jobs = std::sync::Arc::new(jobs::JobRunner::new(
            2,
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(2),
        ));
        Services {
            db,
            blobs,
            limits,
            jobs,
            tokens: std::sync::Arc::new(tokens),
            pacer: Default::default(),
            project_reads: Default::default(),
            oidc: None,
            subscriptions: Default::default(),
            editor: Default::default(),
            project_changes: Default::default(),
            upstream: None,
        }
    }
}

impl Services {
    /// The process's one PostgreSQL listener and who hears on it: the token cache (authority
    /// changes, see `identity`) and job subscriptions (job changes, see `jobs`).
    pub fn listener(&self) -> crate::db::listen::Listener {
        use std::sync::Arc;
        crate::db::listen::Listener::default()
            .subscribe(
                identity::AUTH_CHANNEL,
                Arc::new(identity::AuthSubscriber(self.tokens.clone())),
            )
            .subscribe(
                jobs::CHANNEL,
                Arc::new(jobs::JobSubscriber(self.jobs.clone())),
            )
            .subscribe(
                changes::CHANNEL,
                Arc::new(changes::ProjectChangeSubscriber(
                    self.project_changes.clone(),
                )),
            )
    }

    /// The same services with these job workers (the server's configured ones).
    pub fn with_jobs(self, jobs: jobs::JobRunner) -> Services {
        Services {
            jobs: std::sync::Arc::new(jobs),
            ..self
        }
    }
}

/// Now, truncated to microseconds so a value reads back equal from both backends.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
