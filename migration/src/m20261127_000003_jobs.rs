//! Export jobs get what a background worker needs: who asked, the content blob of the claimed
//! version, a lease (so a worker that died is replaced), an attempt count, and the bundle.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    RequestedBy,
    SourceKey,
    LeaseUntil,
    ClaimedBy,
    Attempts,
    BundleKey,
    BundleSize,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            big_integer_null(Jobs::RequestedBy),
            string_null(Jobs::SourceKey),
            timestamp_with_time_zone_null(Jobs::LeaseUntil),
            string_null(Jobs::ClaimedBy),
            integer(Jobs::Attempts).default(0).take(),
            string_null(Jobs::BundleKey),
            big_integer_null(Jobs::BundleSize),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .add_column(&mut column)
                        .take(),
                )
                .await?;
        }
        // The sweep looks for jobs nobody runs: pending ones, and running ones whose lease ran out.
        manager
            .create_index(
                Index::create()
                    .name("jobs_status_lease_idx")
                    .table(Jobs::Table)
                    .col(Alias::new("status"))
                    .col(Jobs::LeaseUntil)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("jobs_status_lease_idx")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Jobs::BundleSize,
            Jobs::BundleKey,
            Jobs::Attempts,
            Jobs::ClaimedBy,
            Jobs::LeaseUntil,
            Jobs::SourceKey,
            Jobs::RequestedBy,
        ] {
            manager
                .alter_table(Table::alter().table(Jobs::Table).drop_column(column).take())
                .await?;
        }
        Ok(())
    }
}
