//! The Scratch editor's credentials, and its save.
//!
//! - **Editing sessions** (`openEditor`): a token that alone authorizes one project for one
//!   user under `/scratch/sessions/{token}/…`, for editors on another site, where the session
//!   cookie is never sent. That project is the one it was opened for, or the last one the
//!   editor created through it ([`follow_created_project`]). Stored hashed (`editor_sessions`), so any process serves it. It
//!   expires ([`EditorSettings::session_ttl`] after its last use; the renewal is written at
//!   most once per [`RENEW_EVERY`]), and it holds only as long as the credential it was opened
//!   with: every use authenticates that credential again, through the same cached lookups as a
//!   new request (`identity::authenticate_hashed`, `sessions::authenticate_hashed`), so a
//!   logout or a revocation ends it in every process, and the project's access rule is asked
//!   again each time.
//! - **Project tokens** (`projectToken`): a short-lived read-only token for one project, the
//!   only token a URL (`?token=`) may carry. Stored hashed (`project_tokens`); at use the
//!   viewer must still be allowed to read the project.
//!
//! Each kind of token has its own prefix ([`EDITOR_SESSION_PREFIX`], [`PROJECT_TOKEN_PREFIX`];
//! API tokens are `atl_…`, sessions `ses_…`), so a route can tell which one it was given and
//! refuse the others before any lookup.

use std::{sync::Arc, time::Duration};

use base64::Engine;
use chrono::{DateTime, Utc};
use entity::{editor_session, project, project_token};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    domain::{ProjectContent, ProjectId, Role, Title, UserId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services, access, credential::Credential, history, identity, now, projects, sessions,
        sharing,
    },
};

/// Editing-session tokens start with this.
pub const EDITOR_SESSION_PREFIX: &str = "eds_";
/// Project tokens start with this.
pub const PROJECT_TOKEN_PREFIX: &str = "ptk_";
/// A session's expiry is pushed forward by a use at most this often: renewing on every
/// request would turn each asset GET of an open editor into a write.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Lifetimes and the URL the editor's hosts are built from.
#[derive(Clone, Debug)]
pub struct EditorSettings {
    /// `ATELIER_EDITOR_SESSION_TTL_SECS`: an editing session ends this long after its last use.
    pub session_ttl: Duration,
    /// `ATELIER_PROJECT_TOKEN_TTL_SECS`: a project token ends this long after it was minted.
    pub project_token_ttl: Duration,
    /// The server's public URL, without a trailing slash.
    pub public_url: String,
}

impl Default for EditorSettings {
    fn default() -> Self {
        EditorSettings {
            session_ttl: Duration::from_secs(12 * 3600),
            project_token_ttl: Duration::from_secs(300),
            public_url: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

/// A minted project token.
#[derive(Clone, Debug)]
pub struct ProjectToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// An opened editing session: the token and the hosts the editor is mounted with.
#[derive(Clone, Debug)]
pub struct EditorSessionGrant {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// `<public url>/scratch/sessions/{token}/projects`
    pub project_host: String,
    /// `<public url>/scratch/sessions/{token}/assets`
    pub asset_host: String,
}

/// What an editing token authorizes now.
#[derive(Clone, Copy, Debug)]
pub struct EditorGrant {
    /// The editing session's row (its compare-and-set base lives there).
    pub session: i64,
    pub viewer: Viewer,
    pub project: ProjectId,
    /// The viewer may save the project and upload assets (asked again on every request).
    pub can_write: bool,
}

/// Which kind of credential a token is, by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    EditorSession,
    ProjectToken,
    Session,
    /// Anything else: an API token, or garbage (the lookup tells).
    Api,
}

/// The kind of `token`, by its prefix (no lookup).
pub fn token_kind(token: &str) -> TokenKind {
    if token.starts_with(EDITOR_SESSION_PREFIX) {
        TokenKind::EditorSession
    } else if token.starts_with(PROJECT_TOKEN_PREFIX) {
        TokenKind::ProjectToken
    } else if token.starts_with(sessions::SESSION_PREFIX) {
        TokenKind::Session
    } else {
        TokenKind::Api
    }
}

fn mint(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn after(d: Duration) -> DateTime<Utc> {
    now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365))
}

/// The project, and what `viewer` may do with it; invisible is `NOT_FOUND`.
async fn visible_project(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
) -> AppResult<(project::Model, access::ProjectAccess)> {
    let p = project::Entity::find_by_id(id.0)
        .one(svc.db.conn())
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let a = access::project(svc.db.conn(), Some(viewer), &p).await?;
    if !a.can_read() {
        return Err(AppError::NotFound("project"));
    }
    Ok((p, a))
}

/// `projectToken(id)`: a read-only token for one project the viewer may read, valid for
/// [`EditorSettings::project_token_ttl`].
pub async fn project_token(
    svc: &Services,
    viewer: &Viewer,
    project: ProjectId,
) -> AppResult<ProjectToken> {
    let viewer = *viewer;
    visible_project(svc, viewer, project).await?;
    let token = mint(PROJECT_TOKEN_PREFIX);
    let hash = identity::hash_token(&token);
    let expires_at = after(svc.editor.project_token_ttl);
    svc.db
        .write(|txn| {
            let hash = hash.clone();
            Box::pin(async move {
                // Expired tokens are useless: each mint takes the dead ones away, so the
                // table holds about one token lifetime's worth of rows.
                project_token::Entity::delete_many()
                    .filter(project_token::Column::ExpiresAt.lt(now()))
                    .exec(txn)
                    .await?;
                project_token::ActiveModel {
                    token_hash: Set(hash),
                    project_id: Set(project.0),
                    user_id: Set(viewer.id.0),
                    created_at: Set(now()),
                    expires_at: Set(expires_at),
                    ..Default::default()
                }
                .insert(txn)
                .await?;
                Ok(())
            })
        })
        .await?;
    tracing::info!(project.id = %project, user.id = %viewer.id, "project_token_minted");
    Ok(ProjectToken { token, expires_at })
}

/// The viewer a project token stands for, for reading `project` only. Another kind of token,
/// an unknown or expired one is `UNAUTHENTICATED`; a token of another project `FORBIDDEN`.
/// Whether the viewer may still read the project is the caller's read to decide (as for any
/// viewer).
pub async fn authenticate_project_token(
    svc: &Services,
    token: &str,
    project: ProjectId,
) -> AppResult<Viewer> {
    if token_kind(token) != TokenKind::ProjectToken {
        return Err(AppError::Unauthenticated);
    }
    let row = project_token::Entity::find()
        .filter(project_token::Column::TokenHash.eq(identity::hash_token(token)))
        .one(svc.db.conn())
        .await?
        .filter(|r| r.expires_at > Utc::now())
        .ok_or(AppError::Unauthenticated)?;
    if row.project_id != project.0 {
        return Err(AppError::Forbidden(
            "this project token is for another project".to_owned(),
        ));
    }
    let user = identity::user(svc, UserId(row.user_id))
        .await?
        .ok_or(AppError::Unauthenticated)?;
    Ok(Viewer {
        id: UserId(user.id),
        role: Role::from_db(&user.role),
    })
}

/// The kind and hash an editing session keeps of the credential it was opened with.
fn parent_of(credential: &Credential) -> AppResult<(&'static str, String)> {
    match credential {
        Credential::Anonymous => Err(AppError::Unauthenticated),
        Credential::Bearer(t) | Credential::Cookie(t) => match token_kind(t) {
            TokenKind::Session => Ok(("session", identity::hash_token(t))),
            TokenKind::Api if matches!(credential, Credential::Bearer(_)) => {
                Ok(("api_token", identity::hash_token(t)))
            }
            // An editing or project token never opens another session.
            _ => Err(AppError::Unauthenticated),
        },
    }
}

/// `openEditor(projectId)`: an editing session of `project` for `viewer`, who signed in with
/// `credential` (the session ends when that credential does). Saving through it needs the
/// right to change the project, asked on every request.
pub async fn open_session(
    svc: &Services,
    viewer: &Viewer,
    credential: &Credential,
    project: ProjectId,
) -> AppResult<EditorSessionGrant> {
    let (parent_kind, parent_hash) = parent_of(credential)?;
    // The credential must be the viewer's, now.
    if credential.viewer(svc).await? != Some(*viewer) {
        return Err(AppError::Unauthenticated);
    }
    let viewer = *viewer;
    let (opened_at, access) = visible_project(svc, viewer, project).await?;
    let token = mint(EDITOR_SESSION_PREFIX);
    let hash = identity::hash_token(&token);
    let expires_at = after(svc.editor.session_ttl);
    let can_write = access == access::ProjectAccess::Write;
    svc.db
        .write(|txn| {
            let (hash, parent_hash) = (hash.clone(), parent_hash.clone());
            Box::pin(async move {
                // Sessions that ran out are taken away as new ones open.
                editor_session::Entity::delete_many()
                    .filter(editor_session::Column::ExpiresAt.lt(now()))
                    .exec(txn)
                    .await?;
                let at = now();
                editor_session::ActiveModel {
                    token_hash: Set(hash),
                    project_id: Set(project.0),
                    user_id: Set(viewer.id.0),
                    parent_kind: Set(parent_kind.to_owned()),
                    parent_hash: Set(parent_hash),
                    can_write: Set(can_write),
                    created_at: Set(at),
                    expires_at: Set(expires_at),
                    last_used_at: Set(at),
                    // Until its first load, the session stands on the version it was opened at.
                    base_version: Set(Some(opened_at.version)),
                    ..Default::default()
                }
                .insert(txn)
                .await?;
                Ok(())
            })
        })
        .await?;
    tracing::info!(project.id = %project, user.id = %viewer.id, can_write, "editor_session_opened");
    let base = format!("{}/scratch/sessions/{token}", svc.editor.public_url);
    Ok(EditorSessionGrant {
        project_host: format!("{base}/projects"),
        asset_host: format!("{base}/assets"),
        token,
        expires_at,
    })
}

/// What an editing token authorizes now, decided as a new request would be: the session
/// exists and has not expired, the credential it was opened with still holds (and is still
/// the same user), and the project is still visible to that user. Anything else is
/// `UNAUTHENTICATED` (an invisible project `NOT_FOUND`). A use renews the session.
pub async fn authenticate_editing_token(svc: &Services, token: &str) -> AppResult<EditorGrant> {
    if token_kind(token) != TokenKind::EditorSession {
        return Err(AppError::Unauthenticated);
    }
    let s = editor_session::Entity::find()
        .filter(editor_session::Column::TokenHash.eq(identity::hash_token(token)))
        .one(svc.db.conn())
        .await?
        .filter(|s| s.expires_at > Utc::now())
        .ok_or(AppError::Unauthenticated)?;
    let viewer = match s.parent_kind.as_str() {
        "session" => sessions::authenticate_hashed(svc, &s.parent_hash).await?,
        "api_token" => identity::authenticate_hashed(svc, s.parent_hash.clone()).await?,
        _ => return Err(AppError::Unauthenticated),
    };
    if viewer.id.0 != s.user_id {
        return Err(AppError::Unauthenticated);
    }
    let project = ProjectId(s.project_id);
    let (_, access) = visible_project(svc, viewer, project).await?;
    if Utc::now() - s.last_used_at >= chrono::Duration::from_std(RENEW_EVERY).unwrap_or_default() {
        renew(svc, s.id).await;
    }
    Ok(EditorGrant {
        session: s.id,
        viewer,
        project,
        can_write: access == access::ProjectAccess::Write,
    })
}

/// After the editor made a project through an editing session (File > New, "Save as a
/// copy", a remix), the session follows it: the editor goes on with the new project (its
/// next save is a PUT of the new id, the old one it no longer edits), so the token now
/// authorizes that one project instead. The new project is the viewer's own, made by this
/// very request, so the session can write it. Nothing else changes (user, parent credential,
/// expiry).
pub async fn follow_created_project(
    svc: &Services,
    token: &str,
    created: ProjectId,
) -> AppResult<()> {
    let hash = identity::hash_token(token);
    svc.db
        .write_one(|conn| {
            let hash = hash.clone();
            Box::pin(async move {
                editor_session::Entity::update_many()
                    .col_expr(editor_session::Column::ProjectId, Expr::value(created.0))
                    .col_expr(editor_session::Column::CanWrite, Expr::value(true))
                    // A project just made is at version 1: the base of the session's next save.
                    .col_expr(editor_session::Column::BaseVersion, Expr::value(1))
                    .filter(editor_session::Column::TokenHash.eq(hash))
                    .exec(conn)
                    .await?;
                Ok(())
            })
        })
        .await?;
    tracing::info!(project.id = %created, "editor_session_follows_created_project");
    Ok(())
}

/// Pushes a session's expiry forward. A renewal that fails only costs the session some of its
/// remaining life: the request goes on.
async fn renew(svc: &Services, id: i64) {
    let (at, until) = (now(), after(svc.editor.session_ttl));
    let renewed = svc
        .db
        .write_one(|conn| {
            Box::pin(async move {
                editor_session::Entity::update_many()
                    .col_expr(editor_session::Column::LastUsedAt, Expr::value(at))
                    .col_expr(editor_session::Column::ExpiresAt, Expr::value(until))
                    .filter(editor_session::Column::Id.eq(id))
                    .exec(conn)
                    .await?;
                Ok(())
            })
        })
        .await;
    if let Err(e) = renewed {
        tracing::info!(editor_session.id = id, error = %e, "editor_session_renewal_failed");
    }
}

/// Records that an editing session served `version` of its project: the base its next save
/// is compared against. Written only when it changes (an editor reloading the same version
/// costs no write).
pub async fn served(svc: &Services, session: i64, version: i32) -> AppResult<()> {
    svc.db
        .write_one(|conn| {
            Box::pin(async move {
                editor_session::Entity::update_many()
                    .col_expr(editor_session::Column::BaseVersion, Expr::value(version))
                    .filter(editor_session::Column::Id.eq(session))
                    .filter(
                        sea_orm::Condition::any()
                            .add(editor_session::Column::BaseVersion.is_null())
                            .add(editor_session::Column::BaseVersion.ne(version)),
                    )
                    .exec(conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// What a save did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Saved {
    Version(project::Model),
    /// Refused: the session's base was stale. Kept as conflicted save `conflict`.
    Conflicted {
        current: i32,
        conflict: i64,
    },
}

/// The editor's save (`PUT …/projects/{id}`): every save that lands is a version. The row is
/// locked before the access check, so concurrent saves of one project queue up and each
/// raises the version by exactly one. Content is validated as `updateProject`'s (size, depth,
/// asset references).
///
/// - On the plain route (`session` = None) the editor sends no version: the last writer wins.
/// - Through an editing session it is a compare-and-set from the version that session last
///   served or saved (its base, in the database): a stale save is not a version but a
///   conflicted save, kept with its content, and answered `VERSION_CONFLICT` with the
///   conflict's id. A saved one moves the session's base to the new version.
pub async fn save(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    content: ProjectContent,
    session: Option<i64>,
) -> AppResult<project::Model> {
    let staged = projects::stage_content(svc, &content).await?;
    let (key, size) = (staged.key.clone(), staged.size as i64);
    let refs = Arc::new(content.asset_refs);
    let saved = super::write::commit(svc, vec![staged], None, |txn| {
        let (refs, key) = (refs.clone(), key.clone());
        Box::pin(async move {
            // FOR UPDATE (IMMEDIATE on SQLite): the next save of this project waits here.
            let current = project::Entity::find_by_id(id.0)
                .lock_exclusive()
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("project"))?;
            access::project(txn, Some(viewer), &current)
                .await?
                .require_write("change")?;
            if let Some(session) = session {
                let base = editor_session::Entity::find_by_id(session)
                    .one(txn)
                    .await?
                    .ok_or(AppError::Unauthenticated)?
                    .base_version;
                if let Some(base) = base
                    && base != current.version
                {
                    // Its asset references must hold like a version's: a conflicted save
                    // can be made current later.
                    projects::resolve_assets(txn, &refs).await?;
                    let conflict =
                        history::keep_conflict(txn, &current, session, base, &key, size, viewer.id)
                            .await?;
                    return Ok(Saved::Conflicted {
                        current: current.version,
                        conflict,
                    });
                }
            }
            let updated = project::Entity::update_many()
                .col_expr(
                    project::Column::Version,
                    Expr::col(project::Column::Version).add(1),
                )
                .col_expr(project::Column::UpdatedAt, Expr::value(now()))
                .col_expr(project::Column::ContentKey, Expr::value(key))
                .col_expr(project::Column::ContentSize, Expr::value(size))
                .filter(project::Column::Id.eq(id.0))
                .exec_with_returning(txn)
                .await?
                .into_iter()
                .next()
                .ok_or(AppError::NotFound("project"))?;
            // Inside the transaction: MISSING_ASSETS rolls the whole save back.
            projects::relink_assets(txn, id, &refs).await?;
            history::record(txn, &updated, Some(viewer.id), history::Via::Editor).await?;
            if let Some(session) = session {
                editor_session::Entity::update_many()
                    .col_expr(
                        editor_session::Column::BaseVersion,
                        Expr::value(updated.version),
                    )
                    .filter(editor_session::Column::Id.eq(session))
                    .exec(txn)
                    .await?;
            }
            Ok(Saved::Version(updated))
        })
    })
    .await?;
    match saved {
        Saved::Version(saved) => {
            svc.project_changes.changed(saved.id);
            tracing::info!(
                project.id = saved.id,
                project.version = saved.version,
                "project_saved_by_editor"
            );
            Ok(saved)
        }
        Saved::Conflicted { current, conflict } => {
            tracing::info!(
                project.id = %id,
                project.version = current,
                conflict.id = conflict,
                "editor_save_conflicted"
            );
            Err(AppError::SaveConflicted {
                current,
                conflict_id: conflict,
            })
        }
    }
}

/// The editor's "new project" (`POST /scratch/projects/`): a project of the viewer's with the
/// posted content, titled `title` (default "Untitled").
pub async fn create(
    svc: &Services,
    viewer: Viewer,
    title: Option<Title>,
    content: ProjectContent,
) -> AppResult<project::Model> {
    let title = match title {
        Some(t) => t,
        None => Title::parse("Untitled")?,
    };
    projects::create(svc, viewer, title, content, history::Via::Editor, None).await
}

/// The editor's "save as a copy" / remix (`POST /scratch/projects/?is_copy=1&original_id=…`):
/// a new project of the viewer's at version 1 with `remixed_from` = the original (which the
/// viewer must be able to read). With posted content (the editor's current state) the copy
/// holds that, in the same transaction; without, the original's (the existing copy service).
pub async fn copy(
    svc: &Services,
    viewer: Viewer,
    original: ProjectId,
    title: Option<Title>,
    content: Option<ProjectContent>,
) -> AppResult<project::Model> {
    let Some(content) = content else {
        return sharing::copy(svc, viewer, original, title, None).await;
    };
    let staged = projects::stage_content(svc, &content).await?;
    let (key, size) = (staged.key.clone(), staged.size as i64);
    let refs = Arc::new(content.asset_refs);
    let title = title.map(Title::into_inner);
    let copy = super::write::commit(svc, vec![staged], None, |txn| {
        let (refs, key, title) = (refs.clone(), key.clone(), title.clone());
        Box::pin(async move {
            // FOR SHARE: the original cannot go away until the copy points at it.
            let source = project::Entity::find_by_id(original.0)
                .lock_shared()
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("project"))?;
            if !access::project(txn, Some(viewer), &source)
                .await?
                .can_read()
            {
                return Err(AppError::NotFound("project"));
            }
            let asset_ids = projects::resolve_assets(txn, &refs).await?;
            let copy = projects::new_row(
                viewer,
                title.unwrap_or_else(|| source.title.clone()),
                key,
                size,
                Some(source.id),
            )
            .insert(txn)
            .await?;
            projects::link_assets(txn, ProjectId(copy.id), &asset_ids).await?;
            history::record(txn, &copy, Some(viewer.id), history::Via::Copy).await?;
            Ok(copy)
        })
    })
    .await?;
    tracing::info!(project.id = copy.id, project.remixed_from = %original, user.id = %viewer.id, "project_copied_by_editor");
    Ok(copy)
}

/// Project ids are positive: anything else in an editor URL is not found, never a lookup.
pub fn parse_project_id(raw: &str) -> AppResult<ProjectId> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(ProjectId)
        .ok_or(AppError::NotFound("project"))
}

/// What an editing session stands on now: what Atelier's editor page asks to tell "changed
/// elsewhere" from "my save was refused" (the page cannot see the editor's own requests).
#[derive(Clone, Debug)]
pub struct SessionState {
    /// The project the session edits now (the one it was opened for, or the one it followed).
    pub project: project::Model,
    /// The version the session's next save is compared with: the one it last loaded or saved.
    /// Only this session moves it, in the transaction of its own load or save, so a current
    /// version above it was saved by someone else (another tab, another person).
    pub base_version: Option<i32>,
    /// The session's newest refused save of that project (by when it was last sent), if any.
    /// Only for who may write the project (history is theirs).
    pub last_conflict: Option<entity::project_conflict::Model>,
}

/// The state of the editing session `token` for `viewer`: `None` when the token is not a live
/// editing session of that viewer (unknown, expired, ended with its credential, another
/// user's) or its project is no longer visible. A use renews the session, as any other.
pub async fn session_state(
    svc: &Services,
    viewer: Viewer,
    token: &str,
) -> AppResult<Option<SessionState>> {
    let grant = match authenticate_editing_token(svc, token).await {
        Ok(g) => g,
        Err(AppError::Unauthenticated | AppError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if grant.viewer.id != viewer.id {
        return Ok(None);
    }
    let Some(session) = editor_session::Entity::find_by_id(grant.session)
        .one(svc.db.conn())
        .await?
    else {
        return Ok(None);
    };
    let Some(project) = projects::get(svc, Some(viewer), grant.project).await? else {
        return Ok(None);
    };
    let last_conflict = if grant.can_write {
        use entity::project_conflict;
        use sea_orm::QueryOrder;
        project_conflict::Entity::find()
            .filter(project_conflict::Column::SessionId.eq(session.id))
            .filter(project_conflict::Column::ProjectId.eq(project.id))
            .order_by_desc(project_conflict::Column::SavedAt)
            .order_by_desc(project_conflict::Column::Id)
            .one(svc.db.conn())
            .await?
    } else {
        None
    };
    Ok(Some(SessionState {
        project,
        base_version: session.base_version,
        last_conflict,
    }))
}
