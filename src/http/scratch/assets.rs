//! `POST /scratch/assets/{md5ext}` (the editor's upload: raw bytes, no Content-Type) and the
//! session form of the asset routes. The plain GET is `/assets/{md5ext}`'s own handler.

use axum::{
    body::Body,
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};

use super::{AppState, error_response, ok};
use crate::{
    domain::{DataFormat, Md5, Viewer},
    error::{AppError, AppResult},
    http::headers::IfNoneMatch,
    service,
    storage::StageError,
};

/// `<md5>.<ext>` → the md5 and the format the extension names.
fn parse_name(name: &str) -> AppResult<(Md5, DataFormat)> {
    let bad = || {
        AppError::bad_input(
            "md5ext",
            "expected <md5>.<ext>: 32 hex digits and svg, png, jpg, jpeg, wav or mp3",
        )
    };
    let (md5, ext) = name.rsplit_once('.').ok_or_else(bad)?;
    let md5 = Md5::parse(md5).ok_or_else(bad)?;
    let format = DataFormat::from_extension(&ext.to_ascii_lowercase()).ok_or_else(bad)?;
    Ok((md5, format))
}

async fn upload(
    state: &AppState,
    viewer: Viewer,
    name: &str,
    body: Body,
) -> AppResult<serde_json::Value> {
    let (md5, format) = parse_name(name)?;
    let svc = &state.services;
    let staged = match svc
        .blobs
        .stage_stream(body.into_data_stream(), svc.limits.max_asset_bytes)
        .await
    {
        Ok(s) => s,
        Err(StageError::TooLarge { limit }) => {
            return Err(AppError::PayloadTooLarge {
                what: "asset",
                limit,
            });
        }
        Err(StageError::Body(e)) => {
            return Err(AppError::bad_input(
                "body",
                format!("the upload was cut off: {e}"),
            ));
        }
        Err(StageError::Io(e)) => return Err(e.into()),
    };
    // The name's extension must be what the bytes are: the project will reference them by it.
    match service::assets::sniff(format.kind(), &staged.head) {
        Some(f) if f.extension == format.extension() => {}
        _ => {
            return Err(AppError::bad_input(
                "body",
                format!("the bytes are not a {} file", format.extension()),
            ));
        }
    }
    if staged.blob.md5 != md5.as_str() {
        return Err(AppError::ChecksumMismatch(format!(
            "the bytes hash to md5 {}, not {}",
            staged.blob.md5,
            md5.as_str()
        )));
    }
    service::assets::upload(svc, viewer, staged, format.kind(), Some(md5.clone()), None).await?;
    Ok(serde_json::json!({
        "status": "ok",
        "content-name": format!("{}.{}", md5.as_str(), name.rsplit_once('.').map_or("", |(_, e)| e)),
    }))
}

fn answer(r: AppResult<serde_json::Value>) -> Response {
    match r {
        Ok(body) => ok(body),
        Err(e) => error_response(&e),
    }
}

/// `POST /scratch/assets/{md5ext}`: stores the body as that asset (deduplicated).
pub async fn post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            // Refused before a byte of the body is staged.
            let viewer = super::writer(&state, &headers).await?;
            upload(&state, viewer, &name, body).await
        }
        .await,
    )
}

/// `POST /scratch/sessions/{token}/assets/{md5ext}`: needs a session that may write.
pub async fn session_post(
    State(state): State<AppState>,
    Path((token, name)): Path<(String, String)>,
    body: Body,
) -> Response {
    answer(
        async {
            let grant = super::session_grant(&state, &token, None).await?;
            super::require_write(&grant)?;
            upload(&state, grant.viewer, &name, body).await
        }
        .await,
    )
}

/// `GET|HEAD /scratch/sessions/{token}/assets/internalapi/asset/{md5ext}/get/`: the
/// `/assets/{md5ext}` handler, once the token holds.
pub async fn session_get(
    State(state): State<AppState>,
    Path((token, name)): Path<(String, String)>,
    if_none_match: IfNoneMatch,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = super::session_grant(&state, &token, None).await {
        return error_response(&e);
    }
    crate::http::assets::get_signed_in(&state, &name, if_none_match, &headers).await
}
