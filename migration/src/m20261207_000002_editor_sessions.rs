//! Editing sessions (the Scratch editor's routes under `/scratch/sessions/{token}/…`) and
//! project tokens (the read-only `?token=` of a project load). Both store only the SHA-256 of
//! their token. An editing session remembers the credential it was opened with (its kind and
//! that credential's own hash), so that logging out or revoking that credential ends it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EditorSessions {
    Table,
    Id,
    TokenHash,
    ProjectId,
    UserId,
    ParentKind,
    ParentHash,
    CanWrite,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum ProjectTokens {
    Table,
    Id,
    TokenHash,
    ProjectId,
    UserId,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

fn cascade(
    from: (impl IntoIden, impl IntoIden),
    to: (impl IntoIden, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Cascade)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EditorSessions::Table)
                    .col(big_pk_auto(EditorSessions::Id))
                    .col(string_uniq(EditorSessions::TokenHash))
                    .col(big_integer(EditorSessions::ProjectId))
                    .col(big_integer(EditorSessions::UserId))
                    .col(string(EditorSessions::ParentKind))
                    .col(string(EditorSessions::ParentHash))
                    .col(boolean(EditorSessions::CanWrite))
                    .col(timestamp_with_time_zone(EditorSessions::CreatedAt))
                    .col(timestamp_with_time_zone(EditorSessions::ExpiresAt))
                    .col(timestamp_with_time_zone(EditorSessions::LastUsedAt))
                    .foreign_key(&mut cascade(
                        (EditorSessions::Table, EditorSessions::ProjectId),
                        (Projects::Table, Projects::Id),
                    ))
                    .foreign_key(&mut cascade(
                        (EditorSessions::Table, EditorSessions::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .take(),
            )
            .await?;
        // Ending every editing session of a credential at once (logout, revocation sweeps).
        manager
            .create_index(
                Index::create()
                    .name("idx_editor_sessions_parent")
                    .table(EditorSessions::Table)
                    .col(EditorSessions::ParentHash)
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProjectTokens::Table)
                    .col(big_pk_auto(ProjectTokens::Id))
                    .col(string_uniq(ProjectTokens::TokenHash))
                    .col(big_integer(ProjectTokens::ProjectId))
                    .col(big_integer(ProjectTokens::UserId))
                    .col(timestamp_with_time_zone(ProjectTokens::CreatedAt))
                    .col(timestamp_with_time_zone(ProjectTokens::ExpiresAt))
                    .foreign_key(&mut cascade(
                        (ProjectTokens::Table, ProjectTokens::ProjectId),
                        (Projects::Table, Projects::Id),
                    ))
                    .foreign_key(&mut cascade(
                        (ProjectTokens::Table, ProjectTokens::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProjectTokens::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(EditorSessions::Table).take())
            .await
    }
}
