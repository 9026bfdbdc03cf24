//! The Scratch editor's credentials: `projectToken(id)` (a short-lived read-only token for
//! the `?token=` of a project load) and `openEditor(projectId)` (an editing session for an
//! editor on another site). See `service::editor`.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{RequestCredential, authority, errors::GqlResultExt, require_viewer, services};
use crate::{
    domain::ProjectId,
    error::AppError,
    service::{self, credential::Authority},
};

/// A read-only token for one project: `GET /scratch/projects/{id}?token=…`.
#[derive(SimpleObject)]
pub struct ProjectToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// An editing session: mount the editor with these hosts; the token alone authorizes that
/// one project (saving only for who may change it). Ends at `expiresAt` unless used (each use
/// renews it), at logout, or when the credential that opened it is revoked.
#[derive(SimpleObject)]
pub struct EditorSession {
    pub token: String,
    /// `<public url>/scratch/sessions/{token}/projects`
    pub project_host: String,
    /// `<public url>/scratch/sessions/{token}/assets`
    pub asset_host: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct EditorQuery;

#[Object]
impl EditorQuery {
    /// A short-lived read-only token for a project the viewer may read (NOT_FOUND otherwise).
    async fn project_token(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ProjectToken> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&id, "id").gql()?;
        let t = service::editor::project_token(services(ctx).gql()?, &viewer, id)
            .await
            .gql()?;
        Ok(ProjectToken {
            token: t.token,
            expires_at: t.expires_at,
        })
    }
}

#[derive(Default)]
pub struct EditorMutation;

#[Object]
impl EditorMutation {
    /// Opens an editing session of a project the viewer may read (NOT_FOUND otherwise).
    async fn open_editor(
        &self,
        ctx: &Context<'_>,
        project_id: ID,
    ) -> async_graphql::Result<EditorSession> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&project_id, "projectId").gql()?;
        // The credential of the request (or of the socket) the session will depend on.
        let credential = match (authority(ctx), ctx.data_opt::<RequestCredential>()) {
            (Authority::Live(c), _) => c,
            (_, Some(c)) => c.0.clone(),
            _ => return Err(AppError::Unauthenticated).gql(),
        };
        let g = service::editor::open_session(services(ctx).gql()?, &viewer, &credential, id)
            .await
            .gql()?;
        Ok(EditorSession {
            token: g.token,
            project_host: g.project_host,
            asset_host: g.asset_host,
            expires_at: g.expires_at,
        })
    }
}
