//! `GET /backpack/{id}/{body|thumbnail}`: a backpack item's bytes, for its owner (and admins;
//! the rule is `access::backpack_items`). Anyone else, and an absent item, gets 404: a
//! backpack is private.

use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{AppState, error, extractor::Caller};
use crate::{
    domain::AssetKind,
    error::AppError,
    service::{self, assets::sniff},
};

/// Items can hold SVG: keep anything in them inert.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// `GET /backpack/{id}/{body|thumbnail}`: the part's bytes, privately cacheable for ever
/// (items never change; a new item gets a new id).
pub async fn get(
    State(state): State<AppState>,
    Path((id, part)): Path<(String, String)>,
    caller: Result<Caller, AppError>,
) -> Response {
    // A bad credential or a failed lookup as well: nothing here says more than "sign in".
    let Ok(Caller(viewer)) = caller else {
        return (StatusCode::UNAUTHORIZED, "sign in to fetch backpack items").into_response();
    };
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::NOT_FOUND, "no such item").into_response();
    };
    let item = match service::backpack::get(&state.services, viewer, id).await {
        Ok(Some(item)) => item,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such item").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "backpack lookup failed");
            return (error::status(&e), "lookup failed; retry").into_response();
        }
    };
    let key = match part.as_str() {
        "body" => Some(item.body_key.clone()),
        "thumbnail" => item.thumbnail_key.clone(),
        _ => None,
    };
    let Some(key) = key else {
        return (StatusCode::NOT_FOUND, "no such part").into_response();
    };
    let bytes = match state.services.blobs.read(&key).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, blob.key = %key, "backpack blob unreadable");
            return (StatusCode::SERVICE_UNAVAILABLE, "storage error; retry").into_response();
        }
    };
    let content_type = if part == "body" {
        item.mime.clone()
    } else {
        sniff(AssetKind::ImageBitmap, &bytes)
            .map_or("application/octet-stream", |f| f.content_type)
            .to_owned()
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type.as_str()),
        (
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CSP),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    resp
}
