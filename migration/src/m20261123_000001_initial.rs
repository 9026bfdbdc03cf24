//! The whole initial data model, so later work adds logic rather than schema churn.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Provider,
    Subject,
    DisplayName,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    UserId,
    TokenHash,
    Name,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    TokenHash,
    AccessToken,
    RefreshToken,
    ExpiresAt,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Groups {
    Table,
    Id,
    Provider,
    ExternalId,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum GroupMembers {
    Table,
    GroupId,
    UserId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    OwnerId,
    Title,
    ContentKey,
    ContentSize,
    RemixedFrom,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ProjectShares {
    Table,
    ProjectId,
    GroupId,
    SharedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Assets {
    Table,
    Id,
    Md5,
    AssetType,
    Sha256,
    Size,
    ContentType,
    DataFormat,
    BlobKey,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ProjectAssets {
    Table,
    ProjectId,
    AssetId,
}

#[derive(DeriveIden)]
enum BackpackItems {
    Table,
    Id,
    OwnerId,
    Name,
    Kind,
    BodyKey,
    ThumbnailKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ImportRuns {
    Table,
    Id,
    Source,
    ContentHash,
    Status,
    Attempts,
    Error,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    SubjectId,
    SubjectVersion,
    Status,
    Result,
    Error,
    CreatedAt,
    UpdatedAt,
}

fn fk(
    from_table: impl IntoIden,
    from_col: impl IntoIden,
    to_table: impl IntoIden,
    to_col: impl IntoIden,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from_table, from_col)
        .to(to_table, to_col)
        .on_delete(on_delete)
        .on_update(ForeignKeyAction::Cascade)
        .take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(string(Users::Provider))
                    .col(string(Users::Subject))
                    .col(string(Users::DisplayName))
                    .col(string(Users::Role).default("student"))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("users_provider_subject_key")
                    .table(Users::Table)
                    .col(Users::Provider)
                    .col(Users::Subject)
                    .unique()
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .col(big_pk_auto(ApiTokens::Id))
                    .col(big_integer(ApiTokens::UserId))
                    .col(string_uniq(ApiTokens::TokenHash))
                    .col(string(ApiTokens::Name).default(""))
                    .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::ExpiresAt))
                    .foreign_key(&mut fk(
                        ApiTokens::Table,
                        ApiTokens::UserId,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_tokens_user_id_idx")
                    .table(ApiTokens::Table)
                    .col(ApiTokens::UserId)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(big_pk_auto(Sessions::Id))
                    .col(big_integer(Sessions::UserId))
                    .col(string_uniq(Sessions::TokenHash))
                    .col(text_null(Sessions::AccessToken))
                    .col(text_null(Sessions::RefreshToken))
                    .col(timestamp_with_time_zone_null(Sessions::ExpiresAt))
                    .col(integer(Sessions::Version).default(1))
                    .col(timestamp_with_time_zone(Sessions::CreatedAt))
                    .col(timestamp_with_time_zone(Sessions::UpdatedAt))
                    .foreign_key(&mut fk(
                        Sessions::Table,
                        Sessions::UserId,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sessions_user_id_idx")
                    .table(Sessions::Table)
                    .col(Sessions::UserId)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Groups::Table)
                    .col(big_pk_auto(Groups::Id))
                    .col(string(Groups::Provider))
                    .col(string(Groups::ExternalId))
                    .col(string(Groups::Name))
                    .col(timestamp_with_time_zone(Groups::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("groups_provider_external_id_key")
                    .table(Groups::Table)
                    .col(Groups::Provider)
                    .col(Groups::ExternalId)
                    .unique()
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(GroupMembers::Table)
                    .col(big_integer(GroupMembers::GroupId))
                    .col(big_integer(GroupMembers::UserId))
                    .col(timestamp_with_time_zone(GroupMembers::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(GroupMembers::GroupId)
                            .col(GroupMembers::UserId),
                    )
                    .foreign_key(&mut fk(
                        GroupMembers::Table,
                        GroupMembers::GroupId,
                        Groups::Table,
                        Groups::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        GroupMembers::Table,
                        GroupMembers::UserId,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("group_members_user_id_idx")
                    .table(GroupMembers::Table)
                    .col(GroupMembers::UserId)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .col(big_pk_auto(Projects::Id))
                    .col(big_integer(Projects::OwnerId))
                    .col(string(Projects::Title))
                    .col(string(Projects::ContentKey))
                    .col(big_integer(Projects::ContentSize))
                    .col(big_integer_null(Projects::RemixedFrom))
                    .col(integer(Projects::Version).default(1))
                    .col(timestamp_with_time_zone(Projects::CreatedAt))
                    .col(timestamp_with_time_zone(Projects::UpdatedAt))
                    .foreign_key(&mut fk(
                        Projects::Table,
                        Projects::OwnerId,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    // A remix outlives its source; it just loses the link.
                    .foreign_key(&mut fk(
                        Projects::Table,
                        Projects::RemixedFrom,
                        Projects::Table,
                        Projects::Id,
                        ForeignKeyAction::SetNull,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("projects_owner_id_idx")
                    .table(Projects::Table)
                    .col(Projects::OwnerId)
                    .col(Projects::Id)
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("projects_remixed_from_idx")
                    .table(Projects::Table)
                    .col(Projects::RemixedFrom)
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("projects_content_key_idx")
                    .table(Projects::Table)
                    .col(Projects::ContentKey)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProjectShares::Table)
                    .col(big_integer(ProjectShares::ProjectId))
                    .col(big_integer(ProjectShares::GroupId))
                    .col(big_integer(ProjectShares::SharedBy))
                    .col(timestamp_with_time_zone(ProjectShares::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(ProjectShares::ProjectId)
                            .col(ProjectShares::GroupId),
                    )
                    .foreign_key(&mut fk(
                        ProjectShares::Table,
                        ProjectShares::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        ProjectShares::Table,
                        ProjectShares::GroupId,
                        Groups::Table,
                        Groups::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        ProjectShares::Table,
                        ProjectShares::SharedBy,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("project_shares_group_id_idx")
                    .table(ProjectShares::Table)
                    .col(ProjectShares::GroupId)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Assets::Table)
                    .col(big_pk_auto(Assets::Id))
                    .col(string_len(Assets::Md5, 32))
                    .col(string(Assets::AssetType))
                    .col(string_len(Assets::Sha256, 64))
                    .col(big_integer(Assets::Size))
                    .col(string(Assets::ContentType))
                    .col(string(Assets::DataFormat))
                    .col(string(Assets::BlobKey))
                    .col(big_integer_null(Assets::CreatedBy))
                    .col(timestamp_with_time_zone(Assets::CreatedAt))
                    // Assets are shared by every project that uses them: they outlive their uploader.
                    .foreign_key(&mut fk(
                        Assets::Table,
                        Assets::CreatedBy,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::SetNull,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("assets_md5_asset_type_key")
                    .table(Assets::Table)
                    .col(Assets::Md5)
                    .col(Assets::AssetType)
                    .unique()
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("assets_blob_key_idx")
                    .table(Assets::Table)
                    .col(Assets::BlobKey)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProjectAssets::Table)
                    .col(big_integer(ProjectAssets::ProjectId))
                    .col(big_integer(ProjectAssets::AssetId))
                    .primary_key(
                        Index::create()
                            .col(ProjectAssets::ProjectId)
                            .col(ProjectAssets::AssetId),
                    )
                    .foreign_key(&mut fk(
                        ProjectAssets::Table,
                        ProjectAssets::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    // An asset a saved project references can never be deleted (I3).
                    .foreign_key(&mut fk(
                        ProjectAssets::Table,
                        ProjectAssets::AssetId,
                        Assets::Table,
                        Assets::Id,
                        ForeignKeyAction::Restrict,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("project_assets_asset_id_idx")
                    .table(ProjectAssets::Table)
                    .col(ProjectAssets::AssetId)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(BackpackItems::Table)
                    .col(big_pk_auto(BackpackItems::Id))
                    .col(big_integer(BackpackItems::OwnerId))
                    .col(string(BackpackItems::Name))
                    .col(string(BackpackItems::Kind))
                    .col(string(BackpackItems::BodyKey))
                    .col(string_null(BackpackItems::ThumbnailKey))
                    .col(timestamp_with_time_zone(BackpackItems::CreatedAt))
                    .foreign_key(&mut fk(
                        BackpackItems::Table,
                        BackpackItems::OwnerId,
                        Users::Table,
                        Users::Id,
                        ForeignKeyAction::Cascade,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("backpack_items_owner_id_idx")
                    .table(BackpackItems::Table)
                    .col(BackpackItems::OwnerId)
                    .col(BackpackItems::Id)
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ImportRuns::Table)
                    .col(big_pk_auto(ImportRuns::Id))
                    .col(string(ImportRuns::Source))
                    .col(string(ImportRuns::ContentHash))
                    .col(string(ImportRuns::Status).default("pending"))
                    .col(integer(ImportRuns::Attempts).default(0))
                    .col(text_null(ImportRuns::Error))
                    .col(timestamp_with_time_zone(ImportRuns::CreatedAt))
                    .col(timestamp_with_time_zone(ImportRuns::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("import_runs_source_content_hash_key")
                    .table(ImportRuns::Table)
                    .col(ImportRuns::Source)
                    .col(ImportRuns::ContentHash)
                    .unique()
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(big_pk_auto(Jobs::Id))
                    .col(string(Jobs::Kind))
                    .col(big_integer(Jobs::SubjectId))
                    .col(integer(Jobs::SubjectVersion))
                    .col(string(Jobs::Status).default("pending"))
                    .col(text_null(Jobs::Result))
                    .col(text_null(Jobs::Error))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .take(),
            )
            .await?;
        // "At most one live job per (kind, subject, version)": a failed job must not block a
        // retry, so the uniqueness is a partial index (both backends support it).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX jobs_live_subject_key ON jobs (kind, subject_id, subject_version) \
                 WHERE status <> 'failed'",
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Children before parents, so foreign keys never block the drop.
        for table in [
            Jobs::Table.into_iden(),
            ImportRuns::Table.into_iden(),
            BackpackItems::Table.into_iden(),
            ProjectAssets::Table.into_iden(),
            Assets::Table.into_iden(),
            ProjectShares::Table.into_iden(),
            Projects::Table.into_iden(),
            GroupMembers::Table.into_iden(),
            Groups::Table.into_iden(),
            Sessions::Table.into_iden(),
            ApiTokens::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).take())
                .await?;
        }
        Ok(())
    }
}
