//! The Scratch editor's credentials: `projectToken(id)` (a short-lived read-only token for
//! the `?token=` of a project load) and `openEditor(projectId)` (an editing session for an
//! editor on another site). See `service::editor`.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{
    RequestCredential, authority, errors::GqlResultExt, history::ProjectConflict,
    projects::Project, require_viewer, services, viewer,
};
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

/// Where an editing session stands (see `editorSession`).
pub struct EditorSessionState(service::editor::SessionState);

#[Object]
impl EditorSessionState {
    /// The project the session edits now: the one it was opened for, or the one the editor
    /// made through it (File > New, a copy) and went on with.
    async fn project(&self) -> Project {
        Project(self.0.project.clone())
    }

    /// The version the session's next save is compared with: the one it last loaded or saved.
    /// Only the session itself moves it, so a current `project.version` above it was saved
    /// elsewhere (another tab, another person) and the session's next save will be refused.
    async fn base_version(&self) -> Option<i32> {
        self.0.base_version
    }

    /// The session's most recently sent save that was refused (its base was stale) and kept
    /// as a conflicted save, if any; `resolvedVersion` says whether it was made current since.
    async fn last_conflict(&self) -> Option<ProjectConflict> {
        self.0.last_conflict.clone().map(ProjectConflict)
    }
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

    /// Where an editing session of the viewer's stands (its token, as `openEditor` or the
    /// editor page gave it): null unless it is a live session of the viewer's on a project
    /// the viewer may still read. Atelier's editor page asks this to tell a change made
    /// elsewhere from its own refused save. A use renews the session.
    async fn editor_session(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<Option<EditorSessionState>> {
        let Some(viewer) = viewer(ctx) else {
            return Ok(None);
        };
        let state = service::editor::session_state(services(ctx).gql()?, viewer, &token)
            .await
            .gql()?;
        Ok(state.map(EditorSessionState))
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
