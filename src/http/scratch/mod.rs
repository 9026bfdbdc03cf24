//! The stock Scratch editor's wire (`/scratch/...`): the routes scratch-gui calls, in the
//! shapes it reads (every success exactly HTTP 200 with JSON, errors as
//! `{"status":"error","code":…,"message":…}`).

pub mod backpack;

use axum::{
    Json,
    response::{IntoResponse, Response},
};

use super::error;
use crate::error::AppError;

/// An error in the editor wire's shape: the status of its code and
/// `{"status":"error","code":"<CODE>","message":"…"}`.
pub fn error_response(err: &AppError) -> Response {
    let status = error::status(err);
    if status.is_server_error() {
        tracing::warn!(error = %err, "scratch wire request failed");
    }
    let body = serde_json::json!({
        "status": "error",
        "code": err.code().as_str(),
        "message": err.to_string(),
    });
    (status, Json(body)).into_response()
}
