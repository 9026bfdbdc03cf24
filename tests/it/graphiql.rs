//! GraphiQL: offline (only this server's URLs), its vendored files served byte for byte under
//! versioned URLs, gzip when the client asks for it, identity otherwise, ETag and 304.

use std::{collections::BTreeSet, io::Read};

use sha2::{Digest, Sha256};

use crate::{both_backends, harness::TestServer};

both_backends!(
    graphiql_page_loads_only_local_files,
    graphiql_files_are_gzipped_when_asked_and_revalidated
);

const VENDOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/graphiql");

/// The files the page loads: name, bytes on disk, content type.
fn page_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let vendored = |name| std::fs::read(format!("{VENDOR}/{name}")).unwrap();
    let js = "text/javascript; charset=utf-8";
    vec![
        (
            "graphiql.min.css",
            vendored("graphiql.min.css"),
            "text/css; charset=utf-8",
        ),
        (
            "react.production.min.js",
            vendored("react.production.min.js"),
            js,
        ),
        (
            "react-dom.production.min.js",
            vendored("react-dom.production.min.js"),
            js,
        ),
        ("graphiql.min.js", vendored("graphiql.min.js"), js),
        (
            "init.js",
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/http/graphiql/init.js"
            ))
            .unwrap(),
            js,
        ),
    ]
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A GET with the given `Accept-Encoding` and `If-None-Match` (reqwest sends neither by itself:
/// its gzip feature is off).
async fn get(url: &str, accept: Option<&str>, if_none_match: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    if let Some(t) = if_none_match {
        req = req.header("if-none-match", t);
    }
    req.send().await.unwrap()
}

fn header<'r>(resp: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The `src` and `href` URLs of the page.
fn page_urls(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1))
        .map(|part| part.split('"').next().unwrap().to_owned())
        .collect()
}

async fn graphiql_page_loads_only_local_files(s: TestServer) {
    let page = get(&s.graphql_url(), None, None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(
        header(&page, "content-type"),
        Some("text/html; charset=utf-8")
    );
    // Scripts only from this server and no inline script: the page's one script is a file.
    let csp = header(&page, "content-security-policy").unwrap().to_owned();
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap();
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script>"), "inline script: {html}");

    // Exactly the vendored files and init.js, each under /graphiql/<its sha256's first 16 hex
    // digits>/<name>, and each answered with its bytes as vendored.
    let urls = page_urls(&html);
    let files = page_files();
    assert_eq!(urls.len(), files.len(), "{urls:?}");
    let mut seen = BTreeSet::new();
    for url in &urls {
        assert!(url.starts_with("/graphiql/"), "not a local file: {url}");
        let (name, bytes, content_type) = files
            .iter()
            .find(|(name, ..)| url.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("unknown file {url}"));
        assert_eq!(
            *url,
            format!("/graphiql/{}/{name}", &sha256(bytes)[..16]),
            "the URL is versioned by the content"
        );
        seen.insert(*name);
        let resp = get(&format!("{}{url}", s.base_url), None, None).await;
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(header(&resp, "content-type"), Some(*content_type), "{url}");
        assert_eq!(header(&resp, "content-encoding"), None, "{url}");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            bytes.as_slice(),
            "{url}"
        );
    }
    assert_eq!(seen.len(), files.len(), "every file once: {urls:?}");

    // Other builds' URLs, unknown files and the old unversioned URLs are not found.
    let tag = &sha256(&files[3].1)[..16];
    for path in [
        "/graphiql/0123456789abcdef/graphiql.min.js".to_owned(),
        format!("/graphiql/{tag}/nope.js"),
        format!("/graphiql/{tag}/index.html"),
        "/graphiql/graphiql.min.js".to_owned(),
    ] {
        let resp = get(&format!("{}{path}", s.base_url), None, None).await;
        assert_eq!(resp.status(), 404, "{path}");
    }
}

async fn graphiql_files_are_gzipped_when_asked_and_revalidated(s: TestServer) {
    let page = get(&s.graphql_url(), None, None).await;
    let page_etag = header(&page, "etag").unwrap().to_owned();
    let html = page.text().await.unwrap();
    // The page itself, then each file.
    let mut targets = vec![(
        s.graphql_url(),
        html.clone().into_bytes(),
        "no-cache".to_owned(),
    )];
    let files = page_files();
    for url in page_urls(&html) {
        let (_, bytes, _) = files
            .iter()
            .find(|(name, ..)| url.ends_with(&format!("/{name}")))
            .unwrap()
            .clone();
        targets.push((
            format!("{}{url}", s.base_url),
            bytes,
            "public, max-age=31536000, immutable".to_owned(),
        ));
    }
    let mut identity_total = 0;
    let mut gzip_total = 0;
    for (url, bytes, cache_control) in &targets {
        // Identity: no Accept-Encoding, gzip refused, or only codings the server does not use.
        let mut identity_etag = None;
        for accept in [None, Some("gzip;q=0, identity"), Some("br, zstd")] {
            let resp = get(url, accept, None).await;
            assert_eq!(resp.status(), 200, "{url} {accept:?}");
            assert_eq!(header(&resp, "content-encoding"), None, "{url} {accept:?}");
            assert_eq!(header(&resp, "vary"), Some("accept-encoding"), "{url}");
            assert_eq!(
                header(&resp, "cache-control"),
                Some(cache_control.as_str()),
                "{url}"
            );
            let etag = header(&resp, "etag").unwrap().to_owned();
            assert_eq!(
                etag,
                format!("\"{}\"", sha256(bytes)),
                "{url}: a strong tag"
            );
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                bytes.as_slice(),
                "{url}"
            );
            identity_etag = Some(etag);
        }
        let identity_etag = identity_etag.unwrap();
        if url == &s.graphql_url() {
            assert_eq!(identity_etag, page_etag);
        }

        // gzip, however the client spells its acceptance.
        let mut gzip_etag = None;
        for accept in ["gzip", "gzip, deflate, br, zstd", "br;q=1, GZIP;q=0.5", "*"] {
            let resp = get(url, Some(accept), None).await;
            assert_eq!(resp.status(), 200, "{url} {accept}");
            assert_eq!(
                header(&resp, "content-encoding"),
                Some("gzip"),
                "{url} {accept}"
            );
            assert_eq!(header(&resp, "vary"), Some("accept-encoding"), "{url}");
            let etag = header(&resp, "etag").unwrap().to_owned();
            assert_ne!(etag, identity_etag, "{url}: one tag per representation");
            assert!(etag.starts_with('"'), "{url}: a strong tag");
            let body = resp.bytes().await.unwrap();
            assert!(body.len() < bytes.len(), "{url}: smaller compressed");
            assert_eq!(gunzip(&body), *bytes, "{url}");
            if accept == "gzip" {
                gzip_total += body.len();
                identity_total += bytes.len();
            }
            gzip_etag = Some(etag);
        }
        let gzip_etag = gzip_etag.unwrap();

        // Revalidation: 304 without a body for the representation the client holds, the whole
        // answer for the other one.
        for (accept, tag) in [
            (None, identity_etag.clone()),
            (None, format!("W/{identity_etag}")),
            (None, format!("\"other\", {identity_etag}")),
            (Some("gzip"), gzip_etag.clone()),
            (Some("gzip"), "*".to_owned()),
        ] {
            let resp = get(url, accept, Some(&tag)).await;
            assert_eq!(resp.status(), 304, "{url} {accept:?} {tag}");
            let expected = if accept.is_some() {
                &gzip_etag
            } else {
                &identity_etag
            };
            assert_eq!(header(&resp, "etag"), Some(expected.as_str()), "{url}");
            assert_eq!(header(&resp, "cache-control"), Some(cache_control.as_str()));
            assert!(resp.bytes().await.unwrap().is_empty());
        }
        for (accept, tag, encoding) in [
            (Some("gzip"), &identity_etag, Some("gzip")),
            (None, &gzip_etag, None),
        ] {
            let resp = get(url, accept, Some(tag)).await;
            assert_eq!(resp.status(), 200, "{url} {accept:?} {tag}");
            assert_eq!(header(&resp, "content-encoding"), encoding, "{url}");
        }
    }
    // The page and its files together, as a browser that takes gzip receives them (bodies only).
    // Less than half, though not much less: the stylesheet embeds fonts, already compressed.
    println!("GraphiQL page: {identity_total} bytes, {gzip_total} gzip-compressed");
    assert!(
        gzip_total * 2 < identity_total,
        "{gzip_total} of {identity_total}"
    );
}

/// `vendor/graphiql/README.md` records the sha256 of every vendored file, and the files match.
#[test]
fn vendored_graphiql_files_match_their_recorded_sha256() {
    let readme = std::fs::read_to_string(format!("{VENDOR}/README.md")).unwrap();
    let recorded: Vec<(String, String)> = readme
        .lines()
        .filter_map(|line| {
            let name = line.strip_prefix("| `")?.split('`').next()?.to_owned();
            let sha = line
                .split('`')
                .find(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))?
                .to_owned();
            Some((name, sha))
        })
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(VENDOR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "README.md" && n != "fetch.sh")
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = recorded.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        names, on_disk,
        "the README lists exactly the vendored files"
    );
    for (name, sha) in &recorded {
        let bytes = std::fs::read(format!("{VENDOR}/{name}")).unwrap();
        assert_eq!(sha256(&bytes), *sha, "{name}");
    }
    // The production builds, and no pointer to a source map that is not shipped.
    for name in ["graphiql.min.js", "graphiql.min.css"] {
        let text = std::fs::read_to_string(format!("{VENDOR}/{name}")).unwrap();
        assert!(!text.contains("sourceMappingURL"), "{name}");
        assert!(!text.contains("webpackBootstrap"), "{name}");
    }
}
