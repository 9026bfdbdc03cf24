//! What Atelier's own editor page (`GET /projects/{id}/editor`) mounts the stock editor with:
//! an editing session of the project for the signed-in viewer, and whether that viewer may
//! save it. The page talks to the session's routes only, so the editor's cookie-less project
//! GET works and no cookie or API token ever reaches page script.

use entity::project;
use sea_orm::EntityTrait;

use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services, access,
        credential::Credential,
        editor::{self, EditorSessionGrant},
    },
};

/// The editor's mount for one viewer and project.
#[derive(Debug)]
pub struct EditorMount {
    /// The project's title (the page's title; the editor reads its own from the content).
    pub title: String,
    /// May save the project (`canSave`); read-only otherwise.
    pub can_write: bool,
    /// The editing session the editor talks through (its hosts, and the backpack token).
    pub session: EditorSessionGrant,
}

/// Opens an editing session of `project` for `viewer` (signed in with `credential`). A
/// project the viewer cannot see is `NOT_FOUND`, as everywhere.
pub async fn mount(
    svc: &Services,
    viewer: &Viewer,
    credential: &Credential,
    project: ProjectId,
) -> AppResult<EditorMount> {
    let p = project::Entity::find_by_id(project.0)
        .one(svc.db.conn())
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let a = access::project(svc.db.conn(), Some(*viewer), &p).await?;
    if !a.can_read() {
        return Err(AppError::NotFound("project"));
    }
    let session = editor::open_session(svc, viewer, credential, project).await?;
    Ok(EditorMount {
        title: p.title,
        can_write: a == access::ProjectAccess::Write,
        session,
    })
}
