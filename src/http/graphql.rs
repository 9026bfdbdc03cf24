//! `POST /graphql`: authenticates, reads the body within the size limit, executes, and makes
//! sure every error a client sees carries an `extensions.code`.

use async_graphql::{BatchRequest, BatchResponse};
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{AppState, extractor::MaybeCaller};
use crate::{
    domain::Viewer,
    error::{AppError, Code},
    graphql::{IdempotencyScope, Uploads, with_request_data},
    service::idempotency::{self, Begin},
};

/// `POST /graphql`: JSON, or a multipart upload per the GraphQL multipart request spec. A
/// mutation request with an `Idempotency-Key` runs at most once per key (see
/// `service::idempotency`).
pub async fn post(
    State(state): State<AppState>,
    caller: MaybeCaller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let viewer = caller.viewer;
    let key = match headers.get("idempotency-key").map(|v| {
        v.to_str()
            .map_err(|_| AppError::bad_input("Idempotency-Key", "Idempotency-Key must be ASCII"))
            .and_then(idempotency::parse_key)
    }) {
        Some(Err(e)) => return e.into_response(),
        Some(Ok(k)) => Some(k),
        None => None,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let multipart = multer::parse_boundary(content_type);
    if caller.by_cookie
        && let Err(e) = super::auth::check_cross_site(&state.web, &headers, multipart.is_ok())
    {
        return e.into_response();
    }
    let (mut batch, uploads) = if let Ok(boundary) = multipart {
        // Every upload needs a viewer: refuse before a byte of the body is read, so that an
        // anonymous client cannot make us stage up to MAX_FILES × the asset limit to disk.
        if viewer.is_none() {
            return AppError::Unauthenticated.into_response();
        }
        match super::upload::receive(&state, boundary, body).await {
            Ok((batch, uploads)) => (batch, Some(uploads)),
            Err(e) => return e.into_response(),
        }
    } else {
        let bytes = match read_body(body, state.max_request_bytes).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        match serde_json::from_slice::<BatchRequest>(&bytes) {
            Ok(b) => (b, None),
            Err(e) => {
                let e = AppError::BadUserInput {
                    message: format!("the body is not a GraphQL request: {e}"),
                    field: None,
                };
                return e.into_response();
            }
        }
    };
    if let BatchRequest::Batch(operations) = &batch
        && operations.len() > state.max_batch
    {
        // Refused whole, before any of it runs: one response, not an array.
        let e = AppError::LimitExceeded {
            limit: "batch",
            field: None,
            message: format!(
                "a batch may carry at most {} operations; this one has {}",
                state.max_batch,
                operations.len()
            ),
        };
        return e.into_response();
    }
    state.documents.prepare_batch(&mut batch);
    // `openEditor` ties the session it opens to this credential.
    if let Ok(credential) = super::auth::credential(&headers) {
        batch = batch.data(crate::graphql::RequestCredential(std::sync::Arc::new(
            credential,
        )));
    }
    match answer(&state, viewer, batch, uploads, key).await {
        Err(e) => e.into_response(),
        Ok(Answer::Replayed { status, body }) => {
            let mut resp = respond(Executed {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body: body.into_bytes(),
                unavailable: false,
            });
            resp.headers_mut().insert(
                "idempotent-replayed",
                header::HeaderValue::from_static("true"),
            );
            resp
        }
        Ok(Answer::Executed(done)) => respond(done),
    }
}

/// A body over this is not read to its end before the 413: the connection is closed instead.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

/// The whole body, at most `limit` bytes. Past the limit the rest is read and discarded (up
/// to [`MAX_DRAIN`]) before answering 413, so that a client still sending can read the answer
/// instead of a broken pipe.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, AppError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::BadUserInput {
            message: format!("the request body could not be read: {e}"),
            field: None,
        })?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit.saturating_add(MAX_DRAIN) {
            break;
        }
    }
    if seen > limit {
        return Err(AppError::PayloadTooLarge {
            what: "request body",
            limit: limit as u64,
        });
    }
    Ok(buf.freeze())
}

/// What a request got: executed now, or the recorded answer of an earlier execution under
/// the same idempotency key.
pub(super) enum Answer {
    Executed(Executed),
    Replayed { status: u16, body: String },
}

/// Executes a prepared request (its documents looked up in the cache), at most once per
/// idempotency `key` when it runs a mutation for a signed-in viewer (see
/// `service::idempotency`): every transport that runs GraphQL operations comes through here.
/// An error is a refusal before anything ran (a key reused for another request, an outage).
pub(super) async fn answer(
    state: &AppState,
    viewer: Option<Viewer>,
    batch: BatchRequest,
    uploads: Option<std::sync::Arc<Uploads>>,
    key: Option<String>,
) -> Result<Answer, AppError> {
    let (Some(key), Some(user)) = (key, viewer) else {
        return Ok(Answer::Executed(
            execute(state, viewer, batch, uploads, None).await,
        ));
    };
    if !has_mutation(&batch) {
        return Ok(Answer::Executed(
            execute(state, viewer, batch, uploads, None).await,
        ));
    }
    let fingerprint = fingerprint(&batch, uploads.as_deref());
    match idempotency::begin(&state.services, user.id, &key, &fingerprint).await? {
        Begin::Replay { status, body } => Ok(Answer::Replayed { status, body }),
        Begin::Execute(claim) => {
            let scope = (user.id.0, key);
            let done = execute(state, viewer, batch, uploads, Some(scope)).await;
            // An UNAVAILABLE answer may hide a commit whose outcome is unknown: not recorded,
            // so a retry executes again and replays whatever did commit.
            let body = String::from_utf8_lossy(&done.body).into_owned();
            idempotency::finish(*claim, done.status.as_u16(), &body, !done.unavailable).await;
            Ok(Answer::Executed(done))
        }
    }
}

/// An executed request's answer.
pub(super) struct Executed {
    pub(super) status: StatusCode,
    pub(super) body: Vec<u8>,
    /// Some error said UNAVAILABLE: the request may be retried, its outcome is not final.
    pub(super) unavailable: bool,
}

fn respond(done: Executed) -> Response {
    (
        done.status,
        [(header::CONTENT_TYPE, "application/json")],
        done.body,
    )
        .into_response()
}

async fn execute(
    state: &AppState,
    viewer: Option<Viewer>,
    mut batch: BatchRequest,
    uploads: Option<std::sync::Arc<Uploads>>,
    idempotency: Option<(i64, String)>,
) -> Executed {
    if let Some(uploads) = uploads {
        batch = batch.data(uploads);
    }
    let fresh = |(index, r): (usize, async_graphql::Request)| {
        let r = with_request_data(&state.services, viewer, r);
        match &idempotency {
            Some((user_id, key)) => r.data(IdempotencyScope {
                user_id: *user_id,
                key: key.clone(),
                index,
            }),
            None => r,
        }
    };
    let batch = match batch {
        BatchRequest::Single(r) => BatchRequest::Single(fresh((0, r))),
        BatchRequest::Batch(rs) => {
            BatchRequest::Batch(rs.into_iter().enumerate().map(fresh).collect())
        }
    };
    let response = match state.schema.execute_batch(batch).await {
        BatchResponse::Single(r) => BatchResponse::Single(with_codes(r)),
        BatchResponse::Batch(rs) => BatchResponse::Batch(rs.into_iter().map(with_codes).collect()),
    };
    let unavailable = responses(&response).any(|r| {
        r.errors.iter().any(|e| {
            e.extensions
                .as_ref()
                .and_then(|ext| ext.get("code"))
                .is_some_and(|c| *c == async_graphql::Value::from(Code::Unavailable.as_str()))
        })
    });
    match serde_json::to_vec(&response) {
        Ok(body) => Executed {
            status: StatusCode::OK,
            body,
            unavailable,
        },
        Err(e) => {
            let e = AppError::internal(e);
            tracing::error!(error = %e, "serializing a response failed");
            Executed {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: br#"{"data":null,"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}"#.to_vec(),
                unavailable: true,
            }
        }
    }
}

fn responses(r: &BatchResponse) -> Box<dyn Iterator<Item = &async_graphql::Response> + '_> {
    match r {
        BatchResponse::Single(r) => Box::new(std::iter::once(r)),
        BatchResponse::Batch(rs) => Box::new(rs.iter()),
    }
}

fn requests(b: &BatchRequest) -> Box<dyn Iterator<Item = &async_graphql::Request> + '_> {
    match b {
        BatchRequest::Single(r) => Box::new(std::iter::once(r)),
        BatchRequest::Batch(rs) => Box::new(rs.iter()),
    }
}

/// Whether any operation the request will run is a mutation (a key on a query is ignored).
fn has_mutation(batch: &BatchRequest) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    requests(batch).any(|r| {
        let Ok(doc) = async_graphql::parser::parse_query(&r.query) else {
            return false;
        };
        let op = match (&doc.operations, r.operation_name.as_deref()) {
            (DocumentOperations::Single(op), _) => Some(op),
            (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
            (DocumentOperations::Multiple(_), None) => None,
        };
        op.is_some_and(|op| op.node.ty == OperationType::Mutation)
    })
}

/// What makes two requests "the same request": every operation's query, name and variables,
/// and the bytes of every uploaded file.
fn fingerprint(batch: &BatchRequest, uploads: Option<&Uploads>) -> String {
    let operations: Vec<serde_json::Value> = requests(batch)
        .map(|r| {
            serde_json::json!({
                "query": r.query,
                "operationName": r.operation_name,
                "variables": serde_json::to_value(&r.variables).unwrap_or_default(),
            })
        })
        .collect();
    let files = uploads.map(|u| u.fingerprints()).unwrap_or_default();
    idempotency::fingerprint(&serde_json::json!({ "operations": operations, "files": files }))
}

/// Parse and validation errors come from async-graphql without a code: they are the client's.
pub(super) fn with_codes(mut r: async_graphql::Response) -> async_graphql::Response {
    for e in &mut r.errors {
        let has_code = e
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if !has_code {
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
        }
    }
    r
}
