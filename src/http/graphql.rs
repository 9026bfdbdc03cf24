//! `POST /graphql`: authenticates, reads the body within the size limit, executes, and makes
//! sure every error a client sees carries an `extensions.code`.

use async_graphql::{BatchRequest, BatchResponse, ErrorExtensions, ServerError};
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::{domain::Viewer, error::AppError, graphql::with_request_data, service};

/// `POST /graphql`: JSON, or a multipart upload per the GraphQL multipart request spec.
pub async fn post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let viewer = match authenticate(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return error_response(status_for(&e), &e),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if let Ok(boundary) = multer::parse_boundary(content_type) {
        // Every upload needs a viewer: refuse before a byte of the body is read, so that an
        // anonymous client cannot make us stage up to MAX_FILES × the asset limit to disk.
        if viewer.is_none() {
            return error_response(StatusCode::UNAUTHORIZED, &AppError::Unauthenticated);
        }
        return match super::upload::receive(&state, boundary, body).await {
            Ok((batch, uploads)) => execute(&state, viewer, batch.data(uploads)).await,
            Err(e) => error_response(status_for(&e), &e),
        };
    }
    let bytes = match axum::body::to_bytes(body, state.max_request_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let e = AppError::PayloadTooLarge {
                what: "request body",
                limit: state.max_request_bytes as u64,
            };
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, &e);
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let e = AppError::BadUserInput {
                message: format!("the body is not a GraphQL request: {e}"),
                field: None,
            };
            return error_response(StatusCode::BAD_REQUEST, &e);
        }
    };
    execute(&state, viewer, batch).await
}

async fn execute(state: &AppState, viewer: Option<Viewer>, mut batch: BatchRequest) -> Response {
    state.documents.prepare_batch(&mut batch);
    let fresh = |r| with_request_data(&state.services, viewer, r);
    let batch = match batch {
        BatchRequest::Single(r) => BatchRequest::Single(fresh(r)),
        BatchRequest::Batch(rs) => BatchRequest::Batch(rs.into_iter().map(fresh).collect()),
    };
    let response = match state.schema.execute_batch(batch).await {
        BatchResponse::Single(r) => BatchResponse::Single(with_codes(r)),
        BatchResponse::Batch(rs) => BatchResponse::Batch(rs.into_iter().map(with_codes).collect()),
    };
    let body = match serde_json::to_vec(&response) {
        Ok(b) => b,
        Err(e) => {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, &AppError::internal(e));
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Parse and validation errors come from async-graphql without a code: they are the client's.
fn with_codes(mut r: async_graphql::Response) -> async_graphql::Response {
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

pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Viewer>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthenticated)?;
    service::identity::authenticate(&state.services, token)
        .await
        .map(Some)
}

pub(super) fn status_for(e: &AppError) -> StatusCode {
    match e.code() {
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "PAYLOAD_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A GraphQL-shaped error body for failures before execution.
pub(super) fn error_response(status: StatusCode, e: &AppError) -> Response {
    let err = e.extend();
    let server_error = ServerError {
        message: err.message,
        source: None,
        locations: Vec::new(),
        path: Vec::new(),
        extensions: err.extensions,
    };
    let body = serde_json::json!({ "data": null, "errors": [server_error] });
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}
