//! Liveness and readiness.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and the data dir is writable.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    // A database that does not answer within a second is not ready.
    let db = match tokio::time::timeout(std::time::Duration::from_secs(1), state.services.db.ping())
        .await
    {
        Ok(r) => r,
        Err(_) => Err(crate::error::AppError::Unavailable(
            "database ping timed out".into(),
        )),
    };
    let storage = storage_writable(&state).await;
    let ok = db.is_ok() && storage.is_ok();
    if !ok {
        tracing::warn!(db.error = ?db.as_ref().err().map(ToString::to_string), storage.error = ?storage.as_ref().err().map(ToString::to_string), "not ready");
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "unavailable" },
            "database": if db.is_ok() { "ok" } else { "unavailable" },
            "storage": if storage.is_ok() { "ok" } else { "unavailable" },
        })),
    )
}

async fn storage_writable(state: &AppState) -> std::io::Result<()> {
    let dir = state.services.blobs.staging_dir().to_owned();
    tokio::task::spawn_blocking(move || {
        let probe = tempfile::NamedTempFile::with_prefix_in(".readyz-", &dir)?;
        probe.as_file().sync_all()?;
        probe.close()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        {
            let db = &state.services.db;
            let mut text = db.metrics.render();
            text.push_str(&crate::metrics::render_pool(db.pool_state()));
            text.push_str(&state.services.tokens.render_metrics());
            text.push_str(&state.services.jobs.render_metrics());
            text.push_str(&state.services.subscriptions.render_metrics());
            text
        },
    )
}
