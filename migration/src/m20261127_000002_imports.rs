//! Import runs become claims with a lease: who holds a pending run (`claimed_by`), until
//! when (`lease_until`, renewed while the import works), and the project a completed run
//! created (`project_id`; set to NULL when that project is deleted, so a later import of the
//! same content creates it again).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ImportRuns {
    Table,
    ClaimedBy,
    LeaseUntil,
    ProjectId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(ImportRuns::Table)
                    .add_column(string_null(ImportRuns::ClaimedBy))
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ImportRuns::Table)
                    .add_column(timestamp_with_time_zone_null(ImportRuns::LeaseUntil))
                    .take(),
            )
            .await?;
        // A foreign key added with the column, in SQL both backends accept (SeaQuery cannot
        // add a foreign key to an existing SQLite table).
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE import_runs ADD COLUMN project_id BIGINT NULL \
                 REFERENCES projects (id) ON DELETE SET NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ImportRuns::ProjectId,
            ImportRuns::LeaseUntil,
            ImportRuns::ClaimedBy,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ImportRuns::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
