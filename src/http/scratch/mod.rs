//! The Scratch editor's wire: `/scratch/projects/…` and `/scratch/assets/…`, and the same
//! routes under `/scratch/sessions/{token}/…`, where an editing token alone authorizes one
//! project (see `service::editor`). Every success the editor reads is exactly 200 with a JSON
//! body; every error is 4xx JSON `{"status":"error","code":…,"message":…}` ([`error_response`]).
//!
//! Who calls: on the plain routes the session cookie (a write needs an allowed `Origin`, which
//! browsers send on every PUT and POST) or `Authorization: Bearer`; a project load also takes
//! `?token=`, only a project token. On the session routes the token in the path, nothing else
//! (cookies and `Authorization` are ignored there).

mod assets;
pub mod backpack;
mod projects;

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use super::{AppState, auth};
use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{self, credential::Credential, editor::EditorGrant},
};

/// An error in the editor's shape: the code's status, `{"status":"error","code","message"}`
/// plus the code's details (`missing` for MISSING_ASSETS, `field`, `limit`, …).
pub fn error_response(err: &AppError) -> Response {
    let server_error = crate::graphql::request_error(err);
    let mut body = serde_json::json!({
        "status": "error",
        "code": err.code().as_str(),
        "message": server_error.message,
    });
    if let Ok(serde_json::Value::Object(ext)) = serde_json::to_value(&server_error.extensions)
        && let Some(obj) = body.as_object_mut()
    {
        for (k, v) in ext {
            obj.entry(k).or_insert(v);
        }
    }
    let status = super::error::status(err);
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A 200 JSON answer.
fn ok(body: serde_json::Value) -> Response {
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The plain routes (under the server's CORS policy).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/scratch/projects/{id}",
            get(projects::get).put(projects::put),
        )
        .route("/scratch/projects/", post(projects::create))
        .route("/scratch/projects", post(projects::create))
        .route(
            "/scratch/assets/internalapi/asset/{name}/get/",
            get(super::assets::get),
        )
        .route("/scratch/assets/{name}", post(assets::post))
}

/// The editing-session routes. Authorized by the token in the path alone, so any page that
/// holds it may call them: CORS mirrors the caller's origin (no cookie is ever read here).
pub fn session_routes() -> Router<AppState> {
    use axum::http::Method;
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::HEAD, Method::PUT, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route(
            "/scratch/sessions/{token}/projects/{id}",
            get(projects::session_get).put(projects::session_put),
        )
        .route(
            "/scratch/sessions/{token}/projects/",
            post(projects::session_create),
        )
        .route(
            "/scratch/sessions/{token}/assets/internalapi/asset/{name}/get/",
            get(assets::session_get),
        )
        .route(
            "/scratch/sessions/{token}/assets/{name}",
            post(assets::session_post),
        )
        .layer(cors)
}

/// Who a plain-route request acts for, and whether its credential was the cookie.
struct Plain {
    viewer: Option<Viewer>,
    by_cookie: bool,
}

async fn plain_caller(state: &AppState, headers: &HeaderMap) -> AppResult<Plain> {
    let credential = auth::credential(headers)?;
    let by_cookie = matches!(credential, Credential::Cookie(_));
    if let Credential::Bearer(t) | Credential::Cookie(t) = &credential {
        use service::editor::{TokenKind, token_kind};
        // Editing and project tokens belong to their own routes.
        if matches!(
            token_kind(t),
            TokenKind::EditorSession | TokenKind::ProjectToken
        ) {
            return Err(AppError::Unauthenticated);
        }
    }
    Ok(Plain {
        viewer: credential.viewer(&state.services).await?,
        by_cookie,
    })
}

/// A write on a plain route: a signed-in viewer, and for the cookie an `Origin` that is ours
/// or allowed (a cross-site page must not write with the user's cookie).
async fn writer(state: &AppState, headers: &HeaderMap) -> AppResult<Viewer> {
    let caller = plain_caller(state, headers).await?;
    let viewer = caller.viewer.ok_or(AppError::Unauthenticated)?;
    if caller.by_cookie {
        if headers.get(header::ORIGIN).is_none() {
            return Err(AppError::Forbidden(
                "a write authenticated by the session cookie needs an Origin header".to_owned(),
            ));
        }
        auth::check_origin(&state.web, headers)?;
    }
    Ok(viewer)
}

/// What an editing token authorizes for `project` (another project of the same user is
/// FORBIDDEN: the token is for one project only).
async fn session_grant(
    state: &AppState,
    token: &str,
    project: Option<ProjectId>,
) -> AppResult<EditorGrant> {
    let grant = service::editor::authenticate_editing_token(&state.services, token).await?;
    if let Some(p) = project
        && p != grant.project
    {
        return Err(AppError::Forbidden(
            "this editing session is for another project".to_owned(),
        ));
    }
    Ok(grant)
}

/// The grant, when it may write.
fn require_write(grant: &EditorGrant) -> AppResult<()> {
    if grant.can_write {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "this editing session may read this project, not change it".to_owned(),
        ))
    }
}

/// A request path fit for a log line: the token of `/scratch/sessions/{token}/…` and any
/// `token=` query value are replaced by `***`.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    let mut out = match path.strip_prefix("/scratch/sessions/") {
        Some(rest) => match rest.split_once('/') {
            Some((_, tail)) => format!("/scratch/sessions/***/{tail}"),
            None => "/scratch/sessions/***".to_owned(),
        },
        None => path.to_owned(),
    };
    if let Some(q) = uri.query() {
        let q: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("token") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&q.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redacted_uri;

    #[test]
    fn redacts_tokens() {
        let uri = "/scratch/sessions/eds_abc/projects/1?token=ptk_x&a=1"
            .parse()
            .unwrap();
        assert_eq!(
            redacted_uri(&uri),
            "/scratch/sessions/***/projects/1?token=***&a=1"
        );
        let uri = "/scratch/projects/1?token=ptk_x".parse().unwrap();
        assert_eq!(redacted_uri(&uri), "/scratch/projects/1?token=***");
        let uri = "/graphql".parse().unwrap();
        assert_eq!(redacted_uri(&uri), "/graphql");
    }
}
