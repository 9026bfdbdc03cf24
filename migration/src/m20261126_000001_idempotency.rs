//! Idempotency keys: a mutation request's key, its fingerprint and its recorded answer, and
//! the effects (one per mutation field) written in the same transaction as the mutation.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    UserId,
    IdemKey,
    Fingerprint,
    State,
    Holder,
    LeaseUntil,
    Status,
    Response,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyEffects {
    Table,
    UserId,
    IdemKey,
    Path,
    Outcome,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(big_integer(IdempotencyKeys::UserId))
                    .col(string_len(IdempotencyKeys::IdemKey, 255))
                    .col(string_len(IdempotencyKeys::Fingerprint, 64))
                    .col(string_len(IdempotencyKeys::State, 16))
                    .col(string_len_null(IdempotencyKeys::Holder, 64))
                    .col(timestamp_with_time_zone(IdempotencyKeys::LeaseUntil))
                    .col(integer_null(IdempotencyKeys::Status))
                    .col(text_null(IdempotencyKeys::Response))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::UserId)
                            .col(IdempotencyKeys::IdemKey),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(IdempotencyKeys::Table, IdempotencyKeys::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_created_at_idx")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreatedAt)
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyEffects::Table)
                    .col(big_integer(IdempotencyEffects::UserId))
                    .col(string_len(IdempotencyEffects::IdemKey, 255))
                    .col(string_len(IdempotencyEffects::Path, 255))
                    .col(text(IdempotencyEffects::Outcome))
                    .col(timestamp_with_time_zone(IdempotencyEffects::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyEffects::UserId)
                            .col(IdempotencyEffects::IdemKey)
                            .col(IdempotencyEffects::Path),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(IdempotencyEffects::Table, IdempotencyEffects::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotency_effects_created_at_idx")
                    .table(IdempotencyEffects::Table)
                    .col(IdempotencyEffects::CreatedAt)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyEffects::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).take())
            .await
    }
}
