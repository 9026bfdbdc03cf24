//! Version history and conflicted saves.
//!
//! - `project_versions`: one row per committed version of a project (its title, content key
//!   and size, who saved it, when, and through which path), written in the same transaction
//!   as the change. Existing projects get their current version as the first entry.
//! - `project_conflicts`: saves that were refused because their editing session's base was
//!   stale; kept (not versions) so that nothing a student typed is lost. One row per
//!   (session, content): an autosave that retries the same bytes does not pile up.
//! - `editor_sessions.base_version`: the version an editing session last served or saved, the
//!   compare-and-set base of its next save (in the database: any process may serve it).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ProjectVersions {
    Table,
    ProjectId,
    Version,
    Title,
    ContentKey,
    ContentSize,
    SavedBy,
    SavedAt,
    Via,
}

#[derive(DeriveIden)]
enum ProjectConflicts {
    Table,
    Id,
    ProjectId,
    SessionId,
    BaseVersion,
    Title,
    ContentKey,
    ContentSize,
    SavedBy,
    SavedAt,
    ResolvedVersion,
}

#[derive(DeriveIden)]
enum EditorSessions {
    Table,
    Id,
    BaseVersion,
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

fn fk(
    from: (impl IntoIden, impl IntoIden),
    to: (impl IntoIden, impl IntoIden),
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(on_delete)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProjectVersions::Table)
                    .col(big_integer(ProjectVersions::ProjectId))
                    .col(integer(ProjectVersions::Version))
                    .col(string(ProjectVersions::Title))
                    .col(string(ProjectVersions::ContentKey))
                    .col(big_integer(ProjectVersions::ContentSize))
                    .col(big_integer_null(ProjectVersions::SavedBy))
                    .col(timestamp_with_time_zone(ProjectVersions::SavedAt))
                    .col(string(ProjectVersions::Via))
                    .primary_key(
                        Index::create()
                            .col(ProjectVersions::ProjectId)
                            .col(ProjectVersions::Version),
                    )
                    .foreign_key(&mut fk(
                        (ProjectVersions::Table, ProjectVersions::ProjectId),
                        (Projects::Table, Projects::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        (ProjectVersions::Table, ProjectVersions::SavedBy),
                        (Users::Table, Users::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .take(),
            )
            .await?;
        // gc asks "does any version name this blob?" for batches of keys.
        manager
            .create_index(
                Index::create()
                    .name("idx_project_versions_content_key")
                    .table(ProjectVersions::Table)
                    .col(ProjectVersions::ContentKey)
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProjectConflicts::Table)
                    .col(big_pk_auto(ProjectConflicts::Id))
                    .col(big_integer(ProjectConflicts::ProjectId))
                    .col(big_integer_null(ProjectConflicts::SessionId))
                    .col(integer(ProjectConflicts::BaseVersion))
                    .col(string(ProjectConflicts::Title))
                    .col(string(ProjectConflicts::ContentKey))
                    .col(big_integer(ProjectConflicts::ContentSize))
                    .col(big_integer_null(ProjectConflicts::SavedBy))
                    .col(timestamp_with_time_zone(ProjectConflicts::SavedAt))
                    .col(integer_null(ProjectConflicts::ResolvedVersion))
                    .foreign_key(&mut fk(
                        (ProjectConflicts::Table, ProjectConflicts::ProjectId),
                        (Projects::Table, Projects::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        (ProjectConflicts::Table, ProjectConflicts::SessionId),
                        (EditorSessions::Table, EditorSessions::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut fk(
                        (ProjectConflicts::Table, ProjectConflicts::SavedBy),
                        (Users::Table, Users::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .take(),
            )
            .await?;
        // The same content from the same session is one conflict, however often it is retried.
        manager
            .create_index(
                Index::create()
                    .name("idx_project_conflicts_session_content")
                    .table(ProjectConflicts::Table)
                    .col(ProjectConflicts::SessionId)
                    .col(ProjectConflicts::ContentKey)
                    .unique()
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_project_conflicts_project")
                    .table(ProjectConflicts::Table)
                    .col(ProjectConflicts::ProjectId)
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_project_conflicts_content_key")
                    .table(ProjectConflicts::Table)
                    .col(ProjectConflicts::ContentKey)
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(EditorSessions::Table)
                    .add_column(integer_null(EditorSessions::BaseVersion))
                    .take(),
            )
            .await?;
        // Every existing project's current version becomes its first history entry. Who saved
        // it is not known (NULL); the path is recorded as `graphql`.
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO project_versions \
                 (project_id, version, title, content_key, content_size, saved_by, saved_at, via) \
                 SELECT id, version, title, content_key, content_size, NULL, updated_at, 'graphql' \
                 FROM projects",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EditorSessions::Table)
                    .drop_column(EditorSessions::BaseVersion)
                    .take(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ProjectConflicts::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(ProjectVersions::Table).take())
            .await
    }
}
