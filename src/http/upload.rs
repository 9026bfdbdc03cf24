//! The GraphQL multipart request spec, streamed: `operations` and `map` are read first, then
//! each file part goes straight into blob staging (hashed on the way, size-limited while
//! streaming). Resolvers find the staged files in the request's [`Uploads`] (a GraphQL-layer
//! type: this module fills it, the transport above passes it on).
//!
//! The whole body, every part and every byte of it (headers and boundaries included), counts
//! against `--max-request-bytes`; each file part must be named in `map` and may come once.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_graphql::BatchRequest;
use axum::body::Body;
use serde_json::Value;

use super::AppState;
use crate::{error::AppError, graphql::Uploads, storage::StageError};

/// Most file parts one request may carry.
const MAX_FILES: usize = 16;
/// `operations` and `map` are small JSON documents.
const MAX_JSON_PART: u64 = 1024 * 1024;
/// After a file over the limit, the rest of the body is read and discarded (up to this much)
/// so the client can read the error instead of a reset connection.
const MAX_DRAIN: u64 = 256 * 1024 * 1024;

/// Reads a multipart GraphQL request, staging its files; over `--max-request-bytes` in all
/// is `PAYLOAD_TOO_LARGE`.
pub async fn receive(
    state: &AppState,
    boundary: String,
    body: Body,
) -> Result<(BatchRequest, Arc<Uploads>), AppError> {
    let limit = state.max_request_bytes as u64;
    let over = Arc::new(AtomicBool::new(false));
    let counted = bounded(body, limit, over.clone());
    let result = receive_parts(state, boundary, counted).await;
    // Past the limit the body stream fails, and whatever part was being read reports that
    // failure in its own words: the limit is the cause.
    if over.load(Ordering::Relaxed) {
        return Err(AppError::PayloadTooLarge {
            what: "request body",
            limit,
        });
    }
    result
}

/// The body as a stream that fails once more than `limit` bytes have arrived (and says so in
/// `over`).
fn bounded(
    body: Body,
    limit: u64,
    over: Arc<AtomicBool>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    use futures::StreamExt;
    let mut seen = 0u64;
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "the request body exceeds {limit} bytes"
            )));
        }
        Ok(chunk)
    })
}

async fn receive_parts(
    state: &AppState,
    boundary: String,
    body: impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
) -> Result<(BatchRequest, Arc<Uploads>), AppError> {
    let mut multipart = multer::Multipart::new(body, boundary);
    let bad = |msg: String| AppError::BadUserInput {
        message: msg,
        field: None,
    };
    let mut operations: Option<Value> = None;
    let mut map: Option<HashMap<String, Vec<String>>> = None;
    let uploads = Uploads::default();
    let asset_limit = state.services.limits.max_asset_bytes;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "operations" | "map" => {
                let seen = if name == "operations" {
                    operations.is_some()
                } else {
                    map.is_some()
                };
                if seen {
                    return Err(bad(format!("the `{name}` part appears twice")));
                }
                let text = read_small(&mut field).await?;
                if name == "operations" {
                    operations = Some(
                        serde_json::from_str(&text)
                            .map_err(|e| bad(format!("`operations` is not JSON: {e}")))?,
                    );
                } else {
                    map =
                        Some(serde_json::from_str(&text).map_err(|e| {
                            bad(format!("`map` is not a JSON object of paths: {e}"))
                        })?);
                }
            }
            _ => {
                let Some(map) = &map else {
                    return Err(bad(
                        "file parts must come after `operations` and `map`".into()
                    ));
                };
                if !map.contains_key(&name) {
                    return Err(bad(format!("file part {name:?} is not in `map`")));
                }
                if uploads.contains(&name) {
                    return Err(bad(format!("file part {name:?} appears twice")));
                }
                if uploads.len() >= MAX_FILES {
                    return Err(bad(format!("at most {MAX_FILES} files per request")));
                }
                match state
                    .services
                    .blobs
                    .stage_stream(&mut field, asset_limit)
                    .await
                {
                    Ok(staged) => {
                        uploads.insert(name, staged);
                    }
                    Err(StageError::TooLarge { limit }) => {
                        drain(&mut field, &mut multipart).await;
                        return Err(AppError::PayloadTooLarge {
                            what: "asset",
                            limit,
                        });
                    }
                    Err(StageError::Body(e)) => {
                        tracing::info!(error = %e, "upload_body_failed");
                        return Err(bad(format!("the upload was cut off: {e}")));
                    }
                    Err(StageError::Io(e)) => return Err(e.into()),
                }
            }
        }
    }
    let (Some(mut operations), Some(map)) = (operations, map) else {
        return Err(bad(
            "a multipart request needs `operations` and `map` parts".into(),
        ));
    };
    for (key, paths) in &map {
        for path in paths {
            set_path(&mut operations, path, Value::String(key.clone())).ok_or_else(|| {
                bad(format!(
                    "`map` path {path:?} does not exist in `operations`"
                ))
            })?;
        }
    }
    let batch: BatchRequest = serde_json::from_value(operations)
        .map_err(|e| bad(format!("`operations` is not a GraphQL request: {e}")))?;
    Ok((batch, Arc::new(uploads)))
}

async fn read_small(field: &mut multer::Field<'_>) -> Result<String, AppError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| AppError::BadUserInput {
        message: format!("malformed multipart body: {e}"),
        field: None,
    })? {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > MAX_JSON_PART {
            return Err(AppError::PayloadTooLarge {
                what: "multipart JSON part",
                limit: MAX_JSON_PART,
            });
        }
    }
    String::from_utf8(buf).map_err(|_| AppError::BadUserInput {
        message: "multipart JSON part is not UTF-8".into(),
        field: None,
    })
}

async fn drain(field: &mut multer::Field<'_>, multipart: &mut multer::Multipart<'_>) {
    let mut drained = 0u64;
    while let Ok(Some(chunk)) = field.chunk().await {
        drained += chunk.len() as u64;
        if drained > MAX_DRAIN {
            return;
        }
    }
    while let Ok(Some(mut next)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = next.chunk().await {
            drained += chunk.len() as u64;
            if drained > MAX_DRAIN {
                return;
            }
        }
    }
}

/// Sets the value at a dotted path like `variables.input.file` or `0.variables.files.1`.
fn set_path(root: &mut Value, path: &str, value: Value) -> Option<()> {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        let slot = match cur {
            Value::Object(map) => map.get_mut(part)?,
            Value::Array(items) => items.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
        if last {
            *slot = value;
            return Some(());
        }
        cur = slot;
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::set_path;

    #[test]
    fn sets_paths() {
        let mut v = json!({ "variables": { "input": { "file": null }, "files": [null, null] } });
        set_path(&mut v, "variables.input.file", json!("0")).unwrap();
        set_path(&mut v, "variables.files.1", json!("1")).unwrap();
        assert_eq!(v["variables"]["input"]["file"], "0");
        assert_eq!(v["variables"]["files"][1], "1");
        assert!(set_path(&mut v, "variables.nope.file", json!("x")).is_none());
        assert!(set_path(&mut v, "variables.files.7", json!("x")).is_none());
    }
}
