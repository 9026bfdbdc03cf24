//! `importProject`: one uploaded `.sb3` becomes a project of the viewer's.

use async_graphql::{Context, Object};

use super::{
    assets::{UploadRef, take_upload},
    errors::GqlResultExt,
    projects::Project,
    require_viewer, services,
};
use crate::{domain::Title, service};

#[derive(Default)]
pub struct ImportsMutation;

#[Object]
impl ImportsMutation {
    /// Imports a Scratch 3 project file (`.sb3`, a multipart upload) as a new project of the
    /// viewer's. Idempotent per (viewer, file bytes): uploading the same file again, even
    /// concurrently, answers the same project (a new one if that project was deleted).
    /// Without `title` the project is called "Imported project".
    async fn import_project(
        &self,
        ctx: &Context<'_>,
        file: UploadRef,
        title: Option<String>,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let title = title.as_deref().map(Title::parse).transpose().gql()?;
        let upload = take_upload(ctx, &file, "file").gql()?;
        let project = service::imports::import_upload(services(ctx).gql()?, viewer, upload, title)
            .await
            .gql()?;
        Ok(Project(project))
    }
}
