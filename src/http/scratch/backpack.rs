//! `/scratch/backpack`: the backpack as the stock Scratch editor speaks it
//! (`LegacyBackpackStorage`, mounted with `backpackHost = <public url>/scratch/backpack`).
//!
//! - `GET /scratch/backpack/{userId}?limit=&offset=` → `[item…]`, newest first;
//! - `POST /scratch/backpack/{userId}` (`{type, mime, name, body, thumbnail}`, body and
//!   thumbnail base64) → the saved item;
//! - `DELETE /scratch/backpack/{userId}/{itemId}` → `{"status":"ok"}`;
//! - `GET /scratch/backpack/{md5}.{ext}` → the asset with that md5, exactly as
//!   `/assets/{md5}.{ext}`. The editor builds `<host>/<item.body>` and
//!   `<host>/<item.thumbnail>` (an `<img>`, no `x-token`) and adds a backpacked costume or
//!   sound to a project by `item.body` as an md5ext, loading it here. So a save publishes the
//!   thumbnail and a costume's or sound's body as assets (`service::backpack::publish_parts`)
//!   and the item names them `<md5>.<ext>`. As on Scratch, knowing the md5 is the capability:
//!   assets are content-addressed and served under the server's asset policy
//!   (`ATELIER_ASSET_ACCESS`), never by backpack owner;
//! - `GET /scratch/backpack/{itemId}/{body|thumbnail}` → a part that is not an asset (a
//!   sprite's `.sprite3` or a script's JSON: `item.body` is `"<id>/body"`), for its owner and
//!   admins as `/backpack/{id}/{part}` (by `x-token`, or the session cookie the editor's
//!   same-origin `fetch` sends).
//!
//! Who calls is the `x-token` header (see [`viewer_of`]); only the owner or an admin reaches a
//! backpack (`access::act_on_backpack_of`). A stranger's backpack is `FORBIDDEN` and nothing
//! changes. Saves go through `service::backpack::save`: quota, type checks, staging and the
//! one transaction hold as for GraphQL.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use base64::Engine;
use entity::backpack_item;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error_response;
use crate::{
    domain::{DataFormat, Md5, UserId, Viewer},
    error::{AppError, AppResult},
    http::{AppState, assets, extractor::MaybeCaller, headers::IfNoneMatch},
    service::{
        self,
        backpack::{ItemKind, NewItem},
        credential::Credential,
        editor::TokenKind,
    },
    storage::{SNIFF_BYTES, StagedUpload},
};

/// The header the editor authenticates backpack calls with.
const X_TOKEN: &str = "x-token";
/// Items per page when the editor names no `limit`, and the most it may ask for.
const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 50;

/// The one place a backpack request's credential becomes a viewer: the `x-token` header, a
/// session token (`ses_…`), an API token, or an editing-session token (the editor's page
/// hands the stock editor the session it was opened on; the backpack is that viewer's own).
/// A project token is read-only access to one project and never opens a backpack. Absent,
/// malformed, unknown or ended is `UNAUTHENTICATED`. (New kinds of token are resolved here.)
pub async fn viewer_of(state: &AppState, headers: &HeaderMap) -> AppResult<Viewer> {
    let token = headers
        .get(X_TOKEN)
        .ok_or(AppError::Unauthenticated)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthenticated)?;
    match service::editor::token_kind(token) {
        TokenKind::EditorSession => {
            return service::editor::authenticate_editing_token(&state.services, token)
                .await
                .map(|grant| grant.viewer);
        }
        TokenKind::ProjectToken => return Err(AppError::Unauthenticated),
        TokenKind::Session | TokenKind::Api => {}
    }
    Credential::Bearer(token.to_owned())
        .viewer(&state.services)
        .await?
        .ok_or(AppError::Unauthenticated)
}

/// `GET /scratch/backpack/{segment}`: an md5ext is an asset, anything else a user's backpack.
pub async fn get(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    if_none_match: IfNoneMatch,
    headers: HeaderMap,
) -> Response {
    if is_md5ext(&segment) {
        return assets::get(State(state), Path(segment), if_none_match, headers).await;
    }
    match list(&state, &segment, &params, &headers).await {
        Ok(items) => Json(Value::Array(items)).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn list(
    state: &AppState,
    owner: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> AppResult<Vec<Value>> {
    let viewer = owner_viewer(state, owner, headers).await?;
    let limit = number(params, "limit", DEFAULT_LIMIT)?;
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::bad_input(
            "limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let offset = number(params, "offset", 0)?;
    let rows = service::backpack::list_at(&state.services, viewer, limit, offset).await?;
    let names = service::backpack::asset_names(&state.services, &rows).await?;
    Ok(rows.iter().map(|i| item_json(i, &names)).collect())
}

/// The body of `POST /scratch/backpack/{userId}`.
#[derive(Deserialize)]
struct SaveRequest {
    #[serde(rename = "type")]
    kind: String,
    mime: String,
    name: String,
    body: String,
    thumbnail: String,
}

/// `POST /scratch/backpack/{userId}`: saves an item; answers it as the list does.
pub async fn post(
    State(state): State<AppState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match save(&state, &owner, &headers, body).await {
        Ok(item) => Json(item).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn save(state: &AppState, owner: &str, headers: &HeaderMap, body: Body) -> AppResult<Value> {
    let viewer = owner_viewer(state, owner, headers).await?;
    let limit = state.max_request_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| AppError::PayloadTooLarge {
            what: "backpack item",
            limit: limit as u64,
        })?;
    let req: SaveRequest = serde_json::from_slice(&bytes).map_err(|e| {
        AppError::bad_input(
            "body",
            format!("expected {{type, mime, name, body, thumbnail}}: {e}"),
        )
    })?;
    let kind = ItemKind::from_name(&req.kind).ok_or_else(|| {
        AppError::bad_input("type", "type must be costume, sound, sprite or script")
    })?;
    let body = Arc::new(decode(&req.body, "body")?);
    let thumbnail = Arc::new(decode(&req.thumbnail, "thumbnail")?);
    let item = NewItem {
        name: req.name,
        kind,
        mime: req.mime,
        body: stage(state, &body).await?,
        thumbnail: stage(state, &thumbnail).await?,
    };
    let saved = service::backpack::save(&state.services, viewer, item, None).await?;
    // The item is whole already; its parts' md5ext names are an addition. If publishing
    // fails the item answers with its own part URLs (`<id>/body`) instead.
    let published = async {
        let (body, thumbnail) = (stage(state, &body).await?, stage(state, &thumbnail).await?);
        service::backpack::publish_parts(&state.services, viewer, kind, body, thumbnail).await
    };
    if let Err(e) = published.await {
        tracing::warn!(error = %e, backpack.item = saved.id, "backpack parts not published as assets");
    }
    let names = service::backpack::asset_names(&state.services, std::slice::from_ref(&saved))
        .await
        .unwrap_or_default();
    Ok(item_json(&saved, &names))
}

/// `DELETE /scratch/backpack/{userId}/{itemId}` → `{"status":"ok"}`.
pub async fn delete(
    State(state): State<AppState>,
    Path((owner, item)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let deleted = async {
        let viewer = owner_viewer(&state, &owner, &headers).await?;
        let id = item
            .parse::<i64>()
            .map_err(|_| AppError::NotFound("backpack item"))?;
        service::backpack::delete_own(&state.services, viewer, id, None).await
    };
    match deleted.await {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `GET /scratch/backpack/{itemId}/{body|thumbnail}`: the URLs the editor builds from an
/// item's `body` and `thumbnail`. Images carry no `x-token`, so the session cookie (or a
/// bearer token) counts here as on `/backpack/{id}/{part}`, whose handler answers.
pub async fn part(
    State(state): State<AppState>,
    Path((item, part)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let caller = if headers.contains_key(X_TOKEN) {
        viewer_of(&state, &headers).await
    } else {
        MaybeCaller::of(&state, &headers)
            .await
            .and_then(|c| c.viewer.ok_or(AppError::Unauthenticated))
    };
    crate::http::backpack::get(
        State(state),
        Path((item, part)),
        caller.map(crate::http::extractor::Caller),
    )
    .await
}

/// The caller, acting on the backpack of the user the path names.
async fn owner_viewer(state: &AppState, owner: &str, headers: &HeaderMap) -> AppResult<Viewer> {
    let viewer = viewer_of(state, headers).await?;
    let owner = UserId::parse(owner, "userId")?;
    service::access::act_on_backpack_of(viewer, owner)
}

/// An item as the editor reads it; it builds `<host>/<body>` and `<host>/<thumbnail>`, and
/// adds a costume or sound to a project by its `body` as an md5ext. So a part published as an
/// asset is named `<md5>.<ext>` (served by the md5ext fallback without credentials); any other
/// (a sprite's or script's body) is `<id>/<part>`, served to the owner by [`part`].
fn item_json(item: &backpack_item::Model, names: &HashMap<String, String>) -> Value {
    let name = |key: Option<&String>, part: &str| {
        key.and_then(|k| names.get(k))
            .cloned()
            .unwrap_or_else(|| format!("{}/{part}", item.id))
    };
    json!({
        "id": item.id.to_string(),
        "type": item.kind,
        "mime": item.mime,
        "name": item.name,
        "body": name(Some(&item.body_key), "body"),
        "thumbnail": name(item.thumbnail_key.as_ref(), "thumbnail"),
        "size": item.size,
        "createdAt": item.created_at.to_rfc3339(),
    })
}

/// 32 hex digits, a dot and an extension Atelier knows: the asset fallback.
fn is_md5ext(segment: &str) -> bool {
    segment.split_once('.').is_some_and(|(md5, ext)| {
        md5.len() == 32
            && md5.bytes().all(|b| b.is_ascii_hexdigit())
            && Md5::parse(md5).is_some()
            && DataFormat::from_extension(ext).is_some()
    })
}

fn number(params: &HashMap<String, String>, name: &'static str, default: u64) -> AppResult<u64> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| AppError::bad_input(name, format!("{name} must be a whole number"))),
    }
}

fn decode(b64: &str, field: &'static str) -> AppResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| AppError::bad_input(field, format!("{field} is not valid base64")))
}

/// Stages decoded bytes as an upload (its head kept for the type check).
async fn stage(state: &AppState, bytes: &Arc<Vec<u8>>) -> AppResult<StagedUpload> {
    let head = bytes[..bytes.len().min(SNIFF_BYTES)].to_vec();
    let blob = state.services.blobs.stage_bytes(Arc::clone(bytes)).await?;
    Ok(StagedUpload { blob, head })
}
