//! Mutation resolvers.

use async_graphql::{Context, ID, InputObject, Json, Object};

use super::{
    effect, require_viewer, services,
    types::{Asset, AssetType, Project, UploadRef},
};
use crate::{
    domain::{Md5, ProjectContent, ProjectId, Title},
    error::{AppError, GqlResultExt},
    http::Uploads,
    service,
};

pub struct MutationRoot;

#[derive(InputObject)]
pub struct CreateProjectInput {
    pub title: String,
    /// Scratch 3 project JSON: an object with a `targets` array.
    pub content: Json<serde_json::Value>,
}

#[derive(InputObject)]
pub struct UpdateProjectInput {
    pub id: ID,
    /// The version the client last saw; a different current version is a VERSION_CONFLICT.
    pub expected_version: i32,
    pub title: Option<String>,
    pub content: Option<Json<serde_json::Value>>,
}

#[derive(InputObject)]
pub struct DeleteProjectInput {
    pub id: ID,
    /// If given, delete only while the project is still at this version.
    pub expected_version: Option<i32>,
}

#[derive(InputObject)]
pub struct UploadAssetInput {
    /// The file part (multipart request).
    pub file: UploadRef,
    pub asset_type: AssetType,
    /// If given, the md5 the client computed; a mismatch is CHECKSUM_MISMATCH.
    pub md5: Option<String>,
}

/// The stored asset, and whether this upload created it (false: identical bytes were stored).
#[derive(async_graphql::SimpleObject)]
pub struct UploadAssetPayload {
    pub asset: Asset,
    pub created: bool,
}

#[Object]
impl MutationRoot {
    /// Stores a media asset (deduplicated by md5 and type).
    async fn upload_asset(
        &self,
        ctx: &Context<'_>,
        input: UploadAssetInput,
    ) -> async_graphql::Result<UploadAssetPayload> {
        let viewer = require_viewer(ctx).gql()?;
        let claimed = input
            .md5
            .map(|m| {
                Md5::parse(&m)
                    .ok_or_else(|| AppError::bad_input("md5", "md5 must be 32 hex digits"))
            })
            .transpose()
            .gql()?;
        let upload = ctx
            .data_opt::<std::sync::Arc<Uploads>>()
            .and_then(|u| u.take(&input.file.0))
            .ok_or_else(|| {
                AppError::bad_input(
                    "file",
                    "no file part for this upload (use a multipart request)",
                )
            })
            .gql()?;
        let (asset, created) = service::assets::upload(
            services(ctx),
            viewer,
            upload,
            input.asset_type.into(),
            claimed,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(UploadAssetPayload {
            asset: Asset(asset),
            created,
        })
    }

    /// Creates a project owned by the viewer.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        input: CreateProjectInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx);
        let title = Title::parse(&input.title).gql()?;
        let content = ProjectContent::parse(input.content.0, svc.limits.max_content_bytes).gql()?;
        let project = service::projects::create(svc, viewer, title, content, effect(ctx).as_ref())
            .await
            .gql()?;
        Ok(Project(project))
    }

    /// Changes title and/or content if `expectedVersion` is still current.
    async fn update_project(
        &self,
        ctx: &Context<'_>,
        input: UpdateProjectInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx);
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let title = input.title.as_deref().map(Title::parse).transpose().gql()?;
        let content = input
            .content
            .map(|c| ProjectContent::parse(c.0, svc.limits.max_content_bytes))
            .transpose()
            .gql()?;
        let project = service::projects::update(
            svc,
            viewer,
            id,
            input.expected_version,
            title,
            content,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }

    /// Deletes a project; returns its id.
    async fn delete_project(
        &self,
        ctx: &Context<'_>,
        input: DeleteProjectInput,
    ) -> async_graphql::Result<ID> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let id = service::projects::delete(
            services(ctx),
            viewer,
            id,
            input.expected_version,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(ID(id.to_string()))
    }
}
