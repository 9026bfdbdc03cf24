//! Schema migrations. Every schema change is a new migration; existing ones are never edited
//! once released.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_initial;
mod m20261126_000001_idempotency;
mod m20261126_000002_backpack;
mod m20261127_000001_sessions;
mod m20261127_000002_imports;
mod m20261127_000003_jobs;
mod m20261207_000001_lease_states;
mod m20261207_000002_editor_sessions;
mod m20261207_000003_history;

pub use m20261207_000001_lease_states::RETIRED_EXPORT;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261126_000001_idempotency::Migration),
            Box::new(m20261126_000002_backpack::Migration),
            Box::new(m20261127_000001_sessions::Migration),
            Box::new(m20261127_000002_imports::Migration),
            Box::new(m20261127_000003_jobs::Migration),
            Box::new(m20261207_000001_lease_states::Migration),
            Box::new(m20261207_000002_editor_sessions::Migration),
            Box::new(m20261207_000003_history::Migration),
        ]
    }
}
