//! `GET /assets/{md5}.{ext}`: asset bytes like a CDN serves them: strong ETag (the sha256),
//! immutable caching, single Range requests, and headers that keep SVG script inert.

use std::io::SeekFrom;

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    AppState,
    error::{self, plain},
    extractor::MaybeCaller,
    headers::IfNoneMatch,
};
use crate::{
    config::AssetAccess,
    domain::{DataFormat, Md5},
    service,
};

/// SVGs can carry script: never let an asset run anything or load anything.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// `GET /assets/{md5}.{ext}` (HEAD too).
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    if_none_match: IfNoneMatch,
    headers: HeaderMap,
) -> Response {
    serve(&state, &name, if_none_match, &headers, false).await
}

/// [`get`] for a caller already known to be signed in (an editing session's route): a miss
/// it pulls from the upstream is not counted against the anonymous budget.
pub async fn get_signed_in(
    state: &AppState,
    name: &str,
    if_none_match: IfNoneMatch,
    headers: &HeaderMap,
) -> Response {
    serve(state, name, if_none_match, headers, true).await
}

async fn serve(
    state: &AppState,
    name: &str,
    if_none_match: IfNoneMatch,
    headers: &HeaderMap,
    signed_in: bool,
) -> Response {
    let Some((md5, ext)) = name.split_once('.') else {
        return plain(StatusCode::BAD_REQUEST, "expected /assets/<md5>.<ext>");
    };
    let Some(md5) = Md5::parse(md5).filter(|_| md5.bytes().all(|b| b.is_ascii_hexdigit())) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "the asset name must be 32 hex digits and an extension",
        );
    };
    if !ext.bytes().all(|b| b.is_ascii_alphanumeric()) || ext.is_empty() || ext.len() > 8 {
        return plain(StatusCode::BAD_REQUEST, "malformed extension");
    }
    // Known formats and their aliases (`.jpeg` serves the JPEG stored as `jpg`).
    let Some(format) = DataFormat::from_extension(ext) else {
        return plain(StatusCode::NOT_FOUND, "no such asset");
    };
    // Only the `authenticated` policy needs to know who is asking.
    let viewer = match state.services.limits.asset_access {
        AssetAccess::Public => None,
        AssetAccess::Authenticated => MaybeCaller::of(state, headers)
            .await
            .ok()
            .and_then(|c| c.viewer),
    };
    if service::access::require_asset_reader(state.services.limits.asset_access, viewer).is_err() {
        return plain(StatusCode::UNAUTHORIZED, "sign in to fetch assets");
    }
    let asset = match service::assets::find_by_md5ext(&state.services, &md5, format).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            match pull_through(state, headers, &md5, format, signed_in || viewer.is_some()).await {
                Some(a) => a,
                None => return plain(StatusCode::NOT_FOUND, "no such asset"),
            }
        }
        Err(e) => {
            let status = error::status(&e);
            tracing::warn!(error = %e, "asset lookup failed");
            return plain(status, "asset lookup failed; retry");
        }
    };
    let etag = format!("\"{}\"", asset.sha256);
    let size = asset.size as u64;
    let mut resp_headers = HeaderMap::new();
    let set = |h: &mut HeaderMap, k, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut resp_headers, header::CONTENT_TYPE, &asset.content_type);
    set(&mut resp_headers, header::ETAG, &etag);
    set(
        &mut resp_headers,
        header::CACHE_CONTROL,
        "public, max-age=31536000, immutable",
    );
    set(&mut resp_headers, header::ACCEPT_RANGES, "bytes");
    set(&mut resp_headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut resp_headers, header::CONTENT_SECURITY_POLICY, CSP);

    if if_none_match.matches(&etag) {
        return (StatusCode::NOT_MODIFIED, resp_headers).into_response();
    }

    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, size));
    // If-Range with a different validator means: send the whole thing.
    let range = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(validator) if validator != etag => None,
        _ => range,
    };
    let (status, start, len) = match range {
        None | Some(Range::Ignore) => (StatusCode::OK, 0, size),
        Some(Range::Unsatisfiable) => {
            set(
                &mut resp_headers,
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return (StatusCode::RANGE_NOT_SATISFIABLE, resp_headers).into_response();
        }
        Some(Range::Bytes(start, end)) => {
            set(
                &mut resp_headers,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{size}"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    let file = match open_at(state, &asset.blob_key, start).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(asset.id = asset.id, blob.key = %asset.blob_key, error = %e, "asset blob unreadable");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "asset temporarily unavailable",
            );
        }
    };
    set(&mut resp_headers, header::CONTENT_LENGTH, &len.to_string());
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        64 * 1024,
    ));
    (status, resp_headers, body).into_response()
}

/// A miss, pulled from the upstream asset host if one is configured: the asset if it is
/// stored now. Anonymous callers' fetches are rate-bounded (see `service::upstream`).
async fn pull_through(
    state: &AppState,
    headers: &HeaderMap,
    md5: &Md5,
    format: DataFormat,
    signed_in: bool,
) -> Option<entity::asset::Model> {
    use service::upstream::{Outcome, Trigger};
    state.services.upstream.as_ref()?;
    // Who asks matters only now, on a miss with an upstream: a hit never looks the caller up.
    let signed_in = signed_in
        || MaybeCaller::of(state, headers)
            .await
            .is_ok_and(|c| c.viewer.is_some());
    let trigger = if signed_in {
        Trigger::SignedInGet
    } else {
        Trigger::AnonymousGet
    };
    match service::upstream::pull(&state.services, md5, format, trigger).await {
        Outcome::Stored => service::assets::find_by_md5ext(&state.services, md5, format)
            .await
            .ok()
            .flatten(),
        _ => None,
    }
}

async fn open_at(state: &AppState, key: &str, start: u64) -> std::io::Result<tokio::fs::File> {
    let path = state.services.blobs.blob_path(key);
    let mut file = match tokio::fs::File::open(&path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Committed a moment ago and not yet published (or its publish failed).
            state.services.blobs.ensure_published(key).await?;
            tokio::fs::File::open(&path).await?
        }
        other => other?,
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    Ok(file)
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Inclusive byte range.
    Bytes(u64, u64),
    Unsatisfiable,
    /// Multiple ranges or a syntax we do not serve: answer with the whole body (RFC 9110).
    Ignore,
}

fn parse_range(header: &str, size: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Range::Ignore;
    };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        // bytes=-N: the last N bytes.
        (None, Some(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                Range::Unsatisfiable
            } else {
                Range::Bytes(size.saturating_sub(n), size - 1)
            }
        }
        (Some(start), None) if b.is_empty() => {
            if start >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(start, size - 1)
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(start, end.min(size - 1))
            }
        }
        _ => Range::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::{Range, parse_range};

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Range::Bytes(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Range::Bytes(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Ignore);
        assert_eq!(parse_range("bytes=9-2", 100), Range::Ignore);
        assert_eq!(parse_range("items=0-1", 100), Range::Ignore);
    }
}
