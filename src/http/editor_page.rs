//! Atelier's own editor page, `GET /projects/{id}/editor`, and the editor bundle's files.
//!
//! The page mounts the stock Scratch editor (the installed `@scratch/scratch-gui-standalone`
//! package, `ATELIER_EDITOR_DIR`) on an editing session of the project for the signed-in
//! viewer: the session's hosts need no cookie (the editor's project GET sends none) and its
//! token is the backpack's `x-token`, handed to the editor in the URL fragment, never in a
//! request. The bundle fetches its files from the root (`__webpack_require__.p = "/"`), so
//! `/chunks/…`, `/static/…`, `/libraries/…` and the files at the top of `dist/`
//! (`/scratch-gui-standalone.js`, `/extension-worker.js`, `/*.hex`) are reserved for it.

use std::{
    path::{Component, Path, PathBuf},
    sync::LazyLock,
};

use axum::{
    Router,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use sha2::Digest;

use crate::{
    error::AppError,
    http::{AppState, auth},
    service,
};

const TEMPLATE: &str = include_str!("editor_page.html");
const SCRIPT: &str = include_str!("editor_page.js");

/// The install command the page shows when the package is missing.
pub const INSTALL_HINT: &str = "bash scripts/install-editor.sh /var/cache/atelier/editor, then \
     start Atelier with ATELIER_EDITOR_DIR=/var/cache/atelier/editor (or --editor-dir)";

/// The page's policy. The editor compiles code at run time ('unsafe-eval') and injects its
/// styles; its library thumbnails come from Scratch's asset CDN; the only inline script is
/// ours, allowed by its hash.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    format!(
        "default-src 'self'; script-src 'self' 'unsafe-eval' 'sha256-{hash}'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: \
         https://cdn.assets.scratch.mit.edu; media-src 'self' data: blob:; font-src 'self' \
         data:; connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; \
         base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
    )
});

/// The page and the bundle's reserved paths.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{id}/editor", get(page))
        .route("/chunks/{*path}", get(chunks))
        .route("/static/{*path}", get(statics))
        .route("/libraries/{*path}", get(libraries))
        .route("/{file}", get(root_file))
}

/// `GET /projects/{id}/editor`.
async fn page(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if installed(&state).is_none() {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The editor is not installed",
            &format!("This Atelier serves no Scratch editor yet. To add it: {INSTALL_HINT}."),
        );
    }
    let credential = match auth::credential(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let viewer = match credential.viewer(&state.services).await {
        Ok(Some(v)) => v,
        Ok(None) | Err(AppError::Unauthenticated) => {
            let login = format!("/auth/login?return_to=/projects/{}/editor", url_safe(&id));
            return message(
                StatusCode::UNAUTHORIZED,
                "Sign in to open the editor",
                &format!(
                    "<a href=\"{}\">Sign in</a> to open this project in the editor.",
                    html(&login)
                ),
            );
        }
        Err(e) => return e.into_response(),
    };
    let mount = match service::editor::parse_project_id(&id) {
        Ok(project) => {
            service::editor_page::mount(&state.services, &viewer, &credential, project).await
        }
        Err(e) => Err(e),
    };
    let mount = match mount {
        Ok(m) => m,
        Err(AppError::NotFound(_)) => {
            return message(
                StatusCode::NOT_FOUND,
                "Project not found",
                "There is no such project, or you may not see it.",
            );
        }
        Err(e) => return e.into_response(),
    };
    let public = &state.web.public_url;
    let props = serde_json::json!({
        "projectId": id,
        "projectHost": mount.session.project_host,
        "assetHost": mount.session.asset_host,
        "backpackHost": format!("{public}/scratch/backpack"),
        "backpackVisible": true,
        "canSave": mount.can_write,
        "canCreateNew": true,
        "canCreateCopy": true,
        "canRemix": !mount.can_write,
    });
    let data = serde_json::json!({
        "props": props,
        "username": viewer.id.0.to_string(),
        "backpackToken": mount.session.token,
    });
    let body = TEMPLATE
        .replace("{{title}}", &html(&mount.title))
        .replace("{{props}}", &script_json(&data))
        .replace("{{script}}", SCRIPT);
    let mut res = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

/// `dist/` when the package is really there.
fn installed(state: &AppState) -> Option<&Path> {
    let dist = state.editor_dist.as_deref()?;
    dist.join("scratch-gui-standalone.js")
        .is_file()
        .then_some(dist.as_path())
}

async fn chunks(State(state): State<AppState>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&state, "chunks", &path, true).await
}

async fn statics(State(state): State<AppState>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&state, "static", &path, true).await
}

async fn libraries(State(state): State<AppState>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&state, "libraries", &path, false).await
}

/// A file at the top of `dist/`; every other top-level path is not found here.
async fn root_file(State(state): State<AppState>, UrlPath(file): UrlPath<String>) -> Response {
    // The `.hex` files are named by their content's hash.
    let immutable = file.ends_with(".hex");
    serve(&state, "", &file, immutable).await
}

/// Serves `dist/<dir>/<path>`, refusing anything that leaves it. Files under hashed names
/// are cached for a year; the others are revalidated hourly.
async fn serve(state: &AppState, dir: &str, path: &str, immutable: bool) -> Response {
    let not_found = || AppError::NotFound("file").into_response();
    let Some(dist) = installed(state) else {
        return not_found();
    };
    let rel = Path::new(path);
    if path.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')))
    {
        return not_found();
    }
    let file: PathBuf = dist.join(dir).join(rel);
    let bytes = match tokio::fs::metadata(&file).await {
        Ok(m) if m.is_file() => match tokio::fs::read(&file).await {
            Ok(b) => b,
            Err(_) => return not_found(),
        },
        _ => return not_found(),
    };
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=3600"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response()
}

/// The types the bundle's files have.
fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "js" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "cur" => "image/x-icon",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A small page of its own for every answer that is not the editor.
fn message(status: StatusCode, title: &str, body_html: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{body_html}</p></body></html>\n",
        t = html(title)
    );
    let mut res = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    res
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// JSON safe inside a `<script>` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Keeps only what a project id may hold in the sign-in link.
fn url_safe(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}
