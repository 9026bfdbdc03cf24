//! The classroom home page, `GET /`: plain HTML, CSS and JavaScript modules embedded in the
//! binary (`src/http/home/`), no build step, nothing fetched from elsewhere. Every data call
//! the page makes goes to `/graphql` with the session cookie (see `docs/home-page.md`).
//!
//! The page's files are at `/home/{file}` (the editor bundle's root paths, `/chunks/…`,
//! `/static/…`, `/libraries/…` and the files at the top of its `dist/`, stay its own). They are
//! revalidated on every load (`no-cache` with a strong ETag, gzip when accepted), so a new
//! build is picked up at once and an unchanged file costs a 304.

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};
use bytes::Bytes;

use super::{AppState, error::plain, graphiql::Served};

/// Only this server's own scripts, styles and connections; nothing inline, no `eval`, never
/// framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; font-src 'self'; connect-src 'self'; \
                       object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the page: name, type, bytes. `index.html` is what `/` serves.
const FILES: [(&str, &str, &[u8]); 6] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("home/index.html"),
    ),
    (
        "home.css",
        "text/css; charset=utf-8",
        include_bytes!("home/home.css"),
    ),
    ("app.js", JS, include_bytes!("home/app.js")),
    ("api.js", JS, include_bytes!("home/api.js")),
    ("diff.js", JS, include_bytes!("home/diff.js")),
    ("icon.svg", "image/svg+xml", include_bytes!("home/icon.svg")),
];

static SERVED: std::sync::LazyLock<Vec<Served>> = std::sync::LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, content_type, bytes)| {
            Served::new(name, content_type, Bytes::from_static(bytes))
        })
        .collect()
});

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/home/{file}", get(file))
}

/// `GET /`.
async fn page(headers: HeaderMap) -> Response {
    respond("index.html", &headers)
}

/// `GET /home/{file}`: the page's stylesheet and modules.
async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    respond(&file, &headers)
}

fn respond(name: &str, headers: &HeaderMap) -> Response {
    let Some(f) = SERVED.iter().find(|f| f.name == name) else {
        return plain(StatusCode::NOT_FOUND, "no such file of the home page");
    };
    let mut resp = f.respond(headers, "no-cache");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}
