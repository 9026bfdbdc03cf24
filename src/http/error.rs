//! How an [`AppError`] becomes an HTTP response when it stops a request before (or instead of)
//! a GraphQL execution: the status its code maps to, and a body in GraphQL's error shape so a
//! client reads every failure the same way. Errors during execution travel inside a 200
//! response instead (see `graphql.rs`). The plain-HTTP routes (assets, exports, backpack,
//! GraphiQL) answer short text bodies with [`plain`].

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::AppError;

/// The HTTP status of an error's code (`Code::http_status`).
pub fn status(e: &AppError) -> StatusCode {
    StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `{"data": null, "errors": [{message, extensions: {code, …}}]}` with the code's status; a
/// 401 names the scheme it wants (`WWW-Authenticate: Bearer`).
impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = status(&self);
        let server_error = crate::graphql::request_error(&self);
        let body = serde_json::json!({ "data": null, "errors": [server_error] });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A short text answer (errors of the plain-HTTP routes), never sniffed as anything else.
pub fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        msg.into(),
    )
        .into_response()
}
