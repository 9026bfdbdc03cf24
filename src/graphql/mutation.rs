//! Mutation resolvers.

use async_graphql::{Context, ID, InputObject, Json, Object};

use super::{require_viewer, services, types::Project};
use crate::{
    domain::{ProjectContent, ProjectId, Title},
    error::GqlResultExt,
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

#[Object]
impl MutationRoot {
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
        let project = service::projects::create(svc, viewer, title, content)
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
        let project =
            service::projects::update(svc, viewer, id, input.expected_version, title, content)
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
        let id = service::projects::delete(services(ctx), viewer, id, input.expected_version)
            .await
            .gql()?;
        Ok(ID(id.to_string()))
    }
}
