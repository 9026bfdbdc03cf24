//! `GET|PUT /scratch/projects/{id}` and `POST /scratch/projects/` (create, copy, remix), on
//! the plain routes and under `/scratch/sessions/{token}/…`.

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::Response,
};
use serde::Deserialize;

use super::{AppState, error_response, ok};
use crate::{
    domain::{ProjectContent, ProjectId, Title, Viewer},
    error::{AppError, AppResult},
    service::{
        self,
        editor::{TokenKind, parse_project_id, token_kind},
    },
};

#[derive(Deserialize)]
pub struct LoadParams {
    token: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct CreateParams {
    is_copy: Option<String>,
    is_remix: Option<String>,
    original_id: Option<String>,
    title: Option<String>,
}

fn answer(r: AppResult<serde_json::Value>) -> Response {
    match r {
        Ok(body) => ok(body),
        Err(e) => error_response(&e),
    }
}

/// `GET /scratch/projects/{id}[?token=T]`: the project JSON. `T` may only be a project token.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<LoadParams>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let id = parse_project_id(&id)?;
            let viewer = match p.token.as_deref() {
                Some(t) if token_kind(t) == TokenKind::ProjectToken => {
                    Some(service::editor::authenticate_project_token(&state.services, t, id).await?)
                }
                Some(_) => {
                    return Err(AppError::bad_input(
                        "token",
                        "?token= takes only a project token (projectToken), never a session \
                         or API token",
                    ));
                }
                None => super::plain_caller(&state, &headers).await?.viewer,
            };
            Ok(load(&state, viewer, id).await?.0)
        }
        .await,
    )
}

/// The project's JSON, and the version it is.
async fn load(
    state: &AppState,
    viewer: Option<Viewer>,
    id: ProjectId,
) -> AppResult<(serde_json::Value, i32)> {
    let project = service::projects::get(&state.services, viewer, id)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let json = service::projects::content(&state.services, &project).await?;
    Ok((json, project.version))
}

/// The body, as project content (bounded before parsing).
async fn content(state: &AppState, body: Body) -> AppResult<ProjectContent> {
    let limit = state.services.limits.max_content_bytes;
    // JSON from the editor is compact; allow for escaping and whitespace before `parse`
    // measures the serialized content.
    let read_limit = (limit.saturating_mul(2)).min(state.max_request_bytes as u64) as usize;
    let bytes =
        axum::body::to_bytes(body, read_limit)
            .await
            .map_err(|_| AppError::PayloadTooLarge {
                what: "project",
                limit,
            })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| AppError::bad_input("content", format!("the body is not JSON: {e}")))?;
    ProjectContent::parse(value, limit)
}

async fn save(
    state: &AppState,
    viewer: Viewer,
    id: ProjectId,
    body: Body,
    session: Option<i64>,
) -> AppResult<serde_json::Value> {
    let content = content(state, body).await?;
    let saved = service::editor::save(&state.services, viewer, id, content, session).await?;
    Ok(serde_json::json!({
        "status": "ok",
        "content-name": saved.id.to_string(),
        "version": saved.version,
    }))
}

/// `PUT /scratch/projects/{id}`: saves the whole project (last writer wins; a version).
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let id = parse_project_id(&id)?;
            let viewer = super::writer(&state, &headers).await?;
            save(&state, viewer, id, body, None).await
        }
        .await,
    )
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Creates (or, with `original_id` and `is_copy`/`is_remix`, copies) for `viewer`. `only`
/// limits a copy's original to one project (an editing session's). Returns the answer and
/// the new project.
async fn create_for(
    state: &AppState,
    viewer: Viewer,
    p: CreateParams,
    body: Body,
    only: Option<ProjectId>,
) -> AppResult<(serde_json::Value, ProjectId)> {
    let title = match p.title.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Some(Title::parse(t)?),
        _ => None,
    };
    let copying = flag(&p.is_copy) || flag(&p.is_remix);
    let bytes_empty;
    let content = {
        let limit = state.services.limits.max_content_bytes;
        let read_limit = (limit.saturating_mul(2)).min(state.max_request_bytes as u64) as usize;
        let bytes = axum::body::to_bytes(body, read_limit).await.map_err(|_| {
            AppError::PayloadTooLarge {
                what: "project",
                limit,
            }
        })?;
        bytes_empty = bytes.iter().all(u8::is_ascii_whitespace);
        if bytes_empty {
            None
        } else {
            let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                AppError::bad_input("content", format!("the body is not JSON: {e}"))
            })?;
            Some(ProjectContent::parse(value, limit)?)
        }
    };
    let project = if copying {
        let original = p
            .original_id
            .as_deref()
            .ok_or_else(|| AppError::bad_input("original_id", "a copy needs original_id"))?;
        let original = ProjectId::parse(original, "original_id")?;
        if only.is_some_and(|o| o != original) {
            return Err(AppError::Forbidden(
                "this editing session is for another project".to_owned(),
            ));
        }
        service::editor::copy(&state.services, viewer, original, title, content).await?
    } else {
        let content =
            content.ok_or_else(|| AppError::bad_input("content", "post the new project's JSON"))?;
        service::editor::create(&state.services, viewer, title, content).await?
    };
    Ok((
        serde_json::json!({
            "status": "ok",
            "content-name": project.id.to_string(),
            "content-title": project.title,
        }),
        ProjectId(project.id),
    ))
}

/// `POST /scratch/projects/[?is_copy=1|is_remix=1&original_id=&title=]`.
pub async fn create(
    State(state): State<AppState>,
    params: Result<Query<CreateParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let Ok(Query(p)) = params else {
                return Err(AppError::bad_input("query", "unreadable query parameters"));
            };
            let viewer = super::writer(&state, &headers).await?;
            Ok(create_for(&state, viewer, p, body, None).await?.0)
        }
        .await,
    )
}

/// `GET /scratch/sessions/{token}/projects/{id}`.
pub async fn session_get(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let id = parse_project_id(&id)?;
            let grant = super::session_grant(&state, &token, Some(id)).await?;
            let (json, version) = load(&state, Some(grant.viewer), id).await?;
            // The base of this session's next save: the version it now holds.
            service::editor::served(&state.services, grant.session, version).await?;
            Ok(json)
        }
        .await,
    )
}

/// `PUT /scratch/sessions/{token}/projects/{id}`.
pub async fn session_put(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    body: Body,
) -> Response {
    answer(
        async {
            let id = parse_project_id(&id)?;
            let grant = super::session_grant(&state, &token, Some(id)).await?;
            super::require_write(&grant)?;
            save(&state, grant.viewer, id, body, Some(grant.session)).await
        }
        .await,
    )
}

/// `POST /scratch/sessions/{token}/projects/[?is_copy=1&original_id=…]`: a new project of
/// the session's user (File > New) or a copy of the session's project (never of another),
/// which the session then follows (`service::editor::follow_created_project`): the editor
/// goes on editing the new project through the same hosts.
pub async fn session_create(
    State(state): State<AppState>,
    Path(token): Path<String>,
    params: Result<Query<CreateParams>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    answer(
        async {
            let Ok(Query(p)) = params else {
                return Err(AppError::bad_input("query", "unreadable query parameters"));
            };
            let grant = super::session_grant(&state, &token, None).await?;
            let (answer, created) =
                create_for(&state, grant.viewer, p, body, Some(grant.project)).await?;
            service::editor::follow_created_project(&state.services, &token, created).await?;
            Ok(answer)
        }
        .await,
    )
}
