//! `GET /exports/{jobId}.sb3`: a READY export's bundle, for whoever may read its project now.

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    error::{self, plain},
    extractor::Caller,
    headers::IfNoneMatch,
};
use crate::{error::AppError, service};

/// The media type Scratch registers for `.sb3` files.
const SB3_TYPE: &str = "application/x.scratch.sb3";

/// `GET /exports/{jobId}.sb3`: streams the bundle; 304 when the client holds it already.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    caller: Result<Caller, AppError>,
    if_none_match: IfNoneMatch,
) -> Response {
    let Some(id) = name
        .strip_suffix(".sb3")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
    else {
        return plain(StatusCode::NOT_FOUND, "no such export");
    };
    let viewer = match caller {
        Ok(Caller(v)) => Some(v),
        Err(AppError::Unauthenticated) => {
            let mut resp = plain(
                StatusCode::UNAUTHORIZED,
                "sign in to download exports".to_owned(),
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        Err(e) => return plain(error::status(&e), e.public_message()),
    };
    let bundle = match service::jobs::bundle(&state.services, viewer, id).await {
        Ok(b) => b,
        Err(e @ AppError::NotFound(_)) => return plain(StatusCode::NOT_FOUND, e.public_message()),
        Err(e @ AppError::Conflict(_)) => return plain(StatusCode::CONFLICT, e.public_message()),
        Err(e) => {
            tracing::warn!(job.id = id, error = %e, "export_download_failed");
            return plain(error::status(&e), e.public_message());
        }
    };
    let etag = format!("\"{}\"", bundle.key);
    let mut out = HeaderMap::new();
    let mut set = |k, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            out.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, SB3_TYPE);
    set(header::ETAG, &etag);
    // Revalidated every time: access to the project may have been withdrawn since.
    set(header::CACHE_CONTROL, "private, no-cache");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CONTENT_DISPOSITION,
        &format!(
            "attachment; filename=\"{}.sb3\"",
            file_name(&bundle.project.title)
        ),
    );
    if if_none_match.matches(&etag) {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    let file = match open(&state, &bundle.key).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(job.id = id, blob.key = %bundle.key, error = %e, "export_bundle_unreadable");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the export is temporarily unavailable; retry".to_owned(),
            );
        }
    };
    set(header::CONTENT_LENGTH, &bundle.size.to_string());
    tracing::info!(
        job.id = id,
        project.id = bundle.job.subject_id,
        "export_downloaded"
    );
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    (StatusCode::OK, out, body).into_response()
}

async fn open(state: &AppState, key: &str) -> std::io::Result<tokio::fs::File> {
    let path = state.services.blobs.blob_path(key);
    match tokio::fs::File::open(&path).await {
        // Committed a moment ago and not yet published (or its publish failed).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            state.services.blobs.ensure_published(key).await?;
            tokio::fs::File::open(&path).await
        }
        other => other,
    }
}

/// The project title as a safe ASCII file name (quotes, slashes and control characters could
/// break the header or a download path).
fn file_name(title: &str) -> String {
    let name: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let name = name.trim().trim_start_matches('.').to_owned();
    if name.is_empty() {
        "project".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_are_safe() {
        assert_eq!(super::file_name("My Game"), "My Game");
        assert_eq!(super::file_name("a\"b/c\\d\r\n"), "a_b_c_d__");
        assert_eq!(super::file_name("..."), "project");
        assert_eq!(super::file_name("Été"), "_t_");
    }
}
