//! Atelier's own editor page, `GET /projects/{id}/editor`, and the editor bundle's files.
//!
//! The page mounts the stock Scratch editor (the installed `@scratch/scratch-gui-standalone`
//! package, `ATELIER_EDITOR_DIR`) on an editing session of the project for the signed-in
//! viewer: the session's hosts need no cookie (the editor's project GET sends none) and its
//! token is the backpack's `x-token`, handed to the editor in the URL fragment, never in a
//! request. The bundle fetches its files from the root (`__webpack_require__.p = "/"`), so
//! `/chunks/…`, `/static/…`, `/libraries/…` and the files at the top of `dist/`
//! (`/scratch-gui-standalone.js`, `/extension-worker.js`, `/*.hex`) are reserved for it.

use std::path::{Component, Path, PathBuf};

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
/// styles; its library thumbnails come from Scratch's asset CDN; the inline scripts allowed
/// are ours and those of the bundle's own `srcdoc` frames ([`bundle_frame_hashes`]), each by
/// its hash.
fn csp(dist: &Path, public_origin: &str) -> String {
    let ours = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    let mut hashes = format!("'sha256-{ours}'");
    for h in bundle_frame_hashes(dist) {
        hashes.push_str(&format!(" 'sha256-{h}'"));
    }
    // The page's own subscription (`/graphql/ws`): 'self' covers ws: in CSP 3, not in every
    // browser yet.
    let ws = public_origin
        .strip_prefix("http")
        .map(|rest| format!("ws{rest}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self' 'unsafe-eval' {hashes}; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: \
         https://cdn.assets.scratch.mit.edu; media-src 'self' data: blob:; font-src 'self' \
         data:; connect-src 'self' {ws} data: blob:; worker-src 'self' blob:; object-src 'none'; \
         base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
    )
}

/// The SHA-256 (base64) of each inline script in the bundle's `srcdoc` frames: the Paper.js
/// sandbox the paint editor imports costumes through is an iframe whose document is the
/// string `IFRAME_HTML` (15.1.1), with an inline `<script>`. A `srcdoc` document inherits the
/// page's policy, so without its hash the script is refused and the sandbox never answers.
/// Read once from the installed bundle (the package is fixed for the process's life).
fn bundle_frame_hashes(dist: &Path) -> &'static [String] {
    static HASHES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    HASHES.get_or_init(|| {
        let Ok(bundle) = std::fs::read_to_string(dist.join("scratch-gui-standalone.js")) else {
            return Vec::new();
        };
        frame_script_hashes(&bundle)
    })
}

/// See [`bundle_frame_hashes`]: every `IFRAME_HTML:"…"` string literal of `bundle`, decoded,
/// and the hash of each `<script>` body in it.
fn frame_script_hashes(bundle: &str) -> Vec<String> {
    const KEY: &str = "IFRAME_HTML:\"";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(at) = rest.find(KEY) {
        let literal = &rest[at + KEY.len() - 1..];
        // The literal's end: the first unescaped quote.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in literal.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        // A minified double-quoted literal uses JSON's escapes.
        if let Ok(html) = serde_json::from_str::<String>(&literal[..=end]) {
            let mut doc = html.as_str();
            while let Some(open) = doc.find("<script>") {
                let body = &doc[open + "<script>".len()..];
                let Some(close) = body.find("</script>") else {
                    break;
                };
                out.push(
                    base64::engine::general_purpose::STANDARD
                        .encode(sha2::Sha256::digest(&body[..close])),
                );
                doc = &body[close..];
            }
        }
        rest = &literal[end..];
    }
    out
}

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
    let Some(dist) = installed(&state) else {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The editor is not installed",
            &format!("This Atelier serves no Scratch editor yet. To add it: {INSTALL_HINT}."),
        );
    };
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
    if let Ok(v) = HeaderValue::from_str(&csp(dist, &state.web.public_origin)) {
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use sha2::Digest;

    #[test]
    fn hashes_the_inline_scripts_of_the_bundles_frames() {
        let script = "\nwindow.x = \"a\";\n";
        let html =
            format!("<!DOCTYPE html>\n<html><body>\n<script>{script}</script>\n</body></html>");
        let literal = serde_json::to_string(&html).unwrap();
        let bundle = format!("e.exports={{IFRAME_HTML:{literal}}},1(e){{var s=\"IFRAME_HTML:\"}}");
        let want = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
        assert_eq!(super::frame_script_hashes(&bundle), vec![want]);
        assert!(super::frame_script_hashes("no frames here").is_empty());
    }
}
