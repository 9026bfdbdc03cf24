//! Backpack items record their media type and their size (body plus thumbnail, for the
//! per-user quota).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum BackpackItems {
    Table,
    Mime,
    Size,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(BackpackItems::Table)
                    .add_column(string(BackpackItems::Mime).default(""))
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(BackpackItems::Table)
                    .add_column(big_integer(BackpackItems::Size).default(0))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [BackpackItems::Size, BackpackItems::Mime] {
            manager
                .alter_table(
                    Table::alter()
                        .table(BackpackItems::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
