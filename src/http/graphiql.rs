//! GraphiQL, served from the binary itself so it works offline (no CDN).
//!
//! The third-party files are GraphiQL's and React's production builds, vendored in
//! `vendor/graphiql/` (its README records package, version and sha256 of each). Each file is
//! served at `/graphiql/{tag}/{file}`, `tag` being the first 16 hex digits of the file's sha256,
//! so a new build changes the URL: the files are cached for a year as immutable, and the page that
//! names them is revalidated on every load instead. Everything is gzip-compressed once, on first
//! use, and kept in memory; a client that does not accept gzip gets the bytes as vendored.

use std::io::Write;

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{error::plain, headers::IfNoneMatch};

/// The page runs only this server's script files (no inline script). `style-src
/// 'unsafe-inline'` is for the page's own `<style>` block; `data:` for the fonts and icons the
/// stylesheet embeds.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:";

/// The URL of every file changes with its content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page names the current files' URLs: a browser asks every time (a 304 when unchanged).
const REVALIDATE: &str = "no-cache";

/// The page, with a `{{file}}` placeholder where each file's URL goes.
const PAGE: &str = include_str!("graphiql/index.html");

const JS: &str = "text/javascript; charset=utf-8";

/// The files the page loads, in the order it loads them.
const FILES: [(&str, &str, &[u8]); 5] = [
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../vendor/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        JS,
        include_bytes!("../../vendor/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        JS,
        include_bytes!("../../vendor/graphiql/react-dom.production.min.js"),
    ),
    (
        "graphiql.min.js",
        JS,
        include_bytes!("../../vendor/graphiql/graphiql.min.js"),
    ),
    // Atelier's own: renders GraphiQL, with the token saved in the browser if there is one.
    ("init.js", JS, include_bytes!("graphiql/init.js")),
];

/// One file as served: its bytes, their gzip encoding, and a strong ETag for each (also the
/// home page's files, `home.rs`).
pub(super) struct Served {
    pub(super) name: &'static str,
    content_type: &'static str,
    /// First 16 hex digits of the sha256 of `identity`: the version in the file's URL.
    tag: String,
    identity: Bytes,
    etag: String,
    /// `None` when gzip would not make it smaller.
    gzip: Option<(Bytes, String)>,
}

impl Served {
    pub(super) fn new(name: &'static str, content_type: &'static str, identity: Bytes) -> Served {
        let sha256 = hex::encode(Sha256::digest(&identity));
        // Writing into a Vec cannot fail; if it ever did, the file is served uncompressed.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        let gzip = encoder
            .write_all(&identity)
            .and_then(|()| encoder.finish())
            .ok()
            .filter(|gz| gz.len() < identity.len())
            // Each representation has its own strong validator (RFC 9110 §8.8.3).
            .map(|gz| (Bytes::from(gz), format!("\"{sha256}-gzip\"")));
        Served {
            name,
            content_type,
            tag: sha256[..16].to_owned(),
            etag: format!("\"{sha256}\""),
            identity,
            gzip,
        }
    }

    /// The response to a GET (or HEAD) carrying `headers`.
    pub(super) fn respond(&self, headers: &HeaderMap, cache_control: &'static str) -> Response {
        let (body, etag, encoding) = match &self.gzip {
            Some((gz, etag)) if accepts_gzip(headers) => (gz, etag, Some("gzip")),
            _ => (&self.identity, &self.etag, None),
        };
        let mut out = HeaderMap::new();
        let mut set = |name: HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(name, v);
            }
        };
        set(header::ETAG, etag);
        set(header::CACHE_CONTROL, cache_control);
        // Caches must keep the gzip and identity answers apart.
        set(header::VARY, "accept-encoding");
        if IfNoneMatch::parse(headers).matches(etag) {
            return (StatusCode::NOT_MODIFIED, out).into_response();
        }
        set(header::CONTENT_TYPE, self.content_type);
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        if let Some(encoding) = encoding {
            set(header::CONTENT_ENCODING, encoding);
        }
        (out, body.clone()).into_response()
    }
}

/// The page and its files, built once.
struct Bundle {
    page: Served,
    files: Vec<Served>,
}

impl Bundle {
    fn build() -> Bundle {
        let files: Vec<Served> = FILES
            .iter()
            .map(|&(name, content_type, bytes)| {
                Served::new(name, content_type, Bytes::from_static(bytes))
            })
            .collect();
        let page = files.iter().fold(PAGE.to_owned(), |page, f| {
            page.replace(
                &format!("{{{{{}}}}}", f.name),
                &format!("/graphiql/{}/{}", f.tag, f.name),
            )
        });
        Bundle {
            page: Served::new("index.html", "text/html; charset=utf-8", Bytes::from(page)),
            files,
        }
    }
}

static BUNDLE: OnceCell<Bundle> = OnceCell::const_new();

async fn bundle() -> &'static Bundle {
    BUNDLE
        .get_or_init(|| async {
            // Hashing and compressing 1.5 MB takes a while: not on an async worker. (The task
            // fails only if the runtime is shutting down; then build here.)
            tokio::task::spawn_blocking(Bundle::build)
                .await
                .unwrap_or_else(|_| Bundle::build())
        })
        .await
}

/// `GET /graphql`: the GraphiQL page.
pub async fn page(headers: HeaderMap) -> Response {
    let mut resp = bundle().await.page.respond(&headers, REVALIDATE);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

/// `GET /graphiql/{tag}/{file}`: the page's scripts and styles.
pub async fn asset(Path((tag, file)): Path<(String, String)>, headers: HeaderMap) -> Response {
    match bundle().await.files.iter().find(|f| f.name == file) {
        Some(f) if f.tag == tag => f.respond(&headers, IMMUTABLE),
        // Another build's file: not this one under its URL, which a cache would keep for a year.
        Some(_) => plain(
            StatusCode::NOT_FOUND,
            "this GraphiQL file is from another build; reload the page",
        ),
        None => plain(StatusCode::NOT_FOUND, "no such GraphiQL file"),
    }
}

/// Whether the client takes gzip (RFC 9110 §12.5.3): named with a non-zero quality, or not
/// named and covered by a non-zero `*`. Anything unparsable counts as a refusal: identity is
/// always understood.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or_default().trim();
            let quality = params
                .map(str::trim)
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            let accepted = quality.is_some_and(|q| q > 0.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(accepted);
            } else if coding == "*" {
                any = Some(accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        accepts_gzip(&headers)
    }

    #[test]
    fn reads_accept_encoding() {
        assert!(accepts(&["gzip, deflate, br, zstd"]));
        assert!(accepts(&["br;q=1.0, GZIP;q=0.5"]));
        assert!(accepts(&["*"]));
        assert!(accepts(&["br", "gzip"]));
        assert!(accepts(&["x-gzip"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["br, deflate"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["gzip;q=0.000, *"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(!accepts(&["gzip;q=high"]));
        assert!(accepts(&["*;q=0.1, br"]));
    }

    #[test]
    fn every_file_is_on_the_page_under_its_versioned_url() {
        let bundle = Bundle::build();
        let page = std::str::from_utf8(&bundle.page.identity).unwrap();
        assert!(!page.contains("{{"), "a placeholder left: {page}");
        for f in &bundle.files {
            assert!(page.contains(&format!("\"/graphiql/{}/{}\"", f.tag, f.name)));
        }
    }
}
