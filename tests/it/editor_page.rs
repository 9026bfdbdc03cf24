//! Atelier's own editor page (`/projects/{id}/editor`) and the editor bundle's reserved root
//! paths, with a small stand-in package (the real one is 150 MB; the files served are bytes
//! the test chose).

use serde_json::{Value, json};

use crate::harness::{Client, TestServer, empty_project};

crate::both_backends!(
    editor_page_without_package,
    editor_page_with_package,
    editor_page_serves_the_real_package,
);

const SHARE: &str =
    "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }";

/// A package directory: `dist/` with the files the bundle fetches from the root.
fn fake_package() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    for (path, bytes) in [
        ("scratch-gui-standalone.js", &b"/* gui */"[..]),
        ("extension-worker.js", b"/* worker */"),
        ("0123abcd.hex", b":00000001FF"),
        ("chunks/540.e07bd.js", b"/* chunk */"),
        ("static/assets/a1b2.svg", b"<svg/>"),
        ("libraries/sprites.json", b"[]"),
        (".hidden", b"secret"),
    ] {
        let file = dist.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    std::fs::write(dir.path().join("package.json"), b"{}").unwrap();
    dir
}

async fn get(s: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let req = reqwest::Client::new().get(format!("{}{path}", s.base_url));
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    req.send().await.unwrap()
}

/// The mount data the page embeds.
fn mount_of(page: &str) -> Value {
    let start = page
        .find(r#"<script id="atelier-editor" type="application/json">"#)
        .expect("mount data")
        + r#"<script id="atelier-editor" type="application/json">"#.len();
    let end = start + page[start..].find("</script>").unwrap();
    serde_json::from_str(&page[start..end]).unwrap()
}

async fn editor_page_without_package(s: TestServer) {
    let token = s.token_for("wanda", "student").await;
    let r = get(&s, "/projects/1/editor", Some(&token)).await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("scripts/install-editor.sh"), "{body}");
    assert!(body.contains("ATELIER_EDITOR_DIR"), "{body}");
    // The reserved paths are there but serve nothing.
    for path in [
        "/chunks/a.js",
        "/static/a.svg",
        "/extension-worker.js",
        "/libraries/sprites.json",
    ] {
        assert_eq!(get(&s, path, None).await.status(), 404, "{path}");
    }
}

async fn editor_page_with_package(mut s: TestServer) {
    let owner_token = s.token_for("olga", "student").await;
    let reader_token = s.token_for("rita", "student").await;
    let outsider_token = s.token_for("otis", "student").await;
    let owner = Client::new(s.graphql_url(), Some(owner_token.clone()));
    let id = owner.create_project("Olga's <cat>", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    for m in ["olga", "rita"] {
        assert!(s.cli(&["group", "add-member", &group, m]).0);
    }
    owner.data(SHARE, json!({ "id": id, "g": [group] })).await;

    let package = fake_package();
    s.set_env("ATELIER_EDITOR_DIR", package.path().to_str().unwrap());
    s.restart();

    // The bundle's files, from the package, with their types and caching.
    for (path, bytes, ctype, cache) in [
        (
            "/scratch-gui-standalone.js",
            &b"/* gui */"[..],
            "text/javascript; charset=utf-8",
            "public, max-age=3600",
        ),
        (
            "/extension-worker.js",
            b"/* worker */",
            "text/javascript; charset=utf-8",
            "public, max-age=3600",
        ),
        (
            "/0123abcd.hex",
            b":00000001FF",
            "application/octet-stream",
            "public, max-age=31536000, immutable",
        ),
        (
            "/chunks/540.e07bd.js",
            b"/* chunk */",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "/static/assets/a1b2.svg",
            b"<svg/>",
            "image/svg+xml",
            "public, max-age=31536000, immutable",
        ),
        (
            "/libraries/sprites.json",
            b"[]",
            "application/json",
            "public, max-age=3600",
        ),
    ] {
        let r = get(&s, path, None).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ctype, "{path}");
        assert_eq!(r.headers()["cache-control"], cache, "{path}");
        assert_eq!(&r.bytes().await.unwrap()[..], bytes, "{path}");
    }
    // Nothing outside dist/, no hidden file, no directory, nothing absent.
    for path in [
        "/.hidden",
        "/package.json",
        "/chunks/..%2F..%2Fpackage.json",
        "/static/../package.json",
        "/chunks/",
        "/static/assets",
        "/chunks/nope.js",
        "/nope.hex",
    ] {
        let status = get(&s, path, None).await.status();
        assert_eq!(status, 404, "{path}");
    }
    // The routes of the API are not shadowed by the root files.
    assert_eq!(get(&s, "/healthz", None).await.status(), 200);

    // Anonymous: a sign-in page; a project the viewer may not see: not found.
    let r = get(&s, &format!("/projects/{id}/editor"), None).await;
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("/auth/login?return_to=/projects/{id}/editor")),
        "{body}"
    );
    assert_eq!(
        get(&s, &format!("/projects/{id}/editor"), Some(&outsider_token))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&s, "/projects/999999/editor", Some(&owner_token))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&s, "/projects/abc/editor", Some(&owner_token))
            .await
            .status(),
        404
    );
    assert_eq!(s.count("editor_sessions").await, 0);

    // The owner may save; the reader sees it read-only.
    let base = s.base_url.clone();
    for (token, user, can_save) in [(&owner_token, "olga", true), (&reader_token, "rita", false)] {
        let r = get(&s, &format!("/projects/{id}/editor"), Some(token)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("script-src 'self' 'unsafe-eval' 'sha256-"),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        let page = r.text().await.unwrap();
        assert!(page.contains(r#"<base href="/">"#));
        // In <body>: the bundle reads document.body as it loads (React error #200 from <head>).
        let bundle_at = page
            .find(r#"<script src="/scratch-gui-standalone.js"></script>"#)
            .expect("the bundle's script");
        assert!(bundle_at > page.find("<body>").unwrap(), "{page}");
        assert!(
            page.contains("<title>Olga&#39;s &lt;cat&gt; · Atelier editor</title>"),
            "{page}"
        );
        assert!(!page.contains("<cat>"));
        let mount = mount_of(&page);
        let token = mount["backpackToken"].as_str().unwrap().to_owned();
        let props = &mount["props"];
        let hosts = format!("{base}/scratch/sessions/{token}");
        assert_eq!(
            props,
            &json!({
                "projectId": id,
                "projectHost": format!("{hosts}/projects"),
                "assetHost": format!("{hosts}/assets"),
                "backpackHost": format!("{base}/scratch/backpack"),
                "backpackVisible": true,
                "canSave": can_save,
                "canCreateNew": true,
                "canCreateCopy": true,
                "canRemix": !can_save,
            })
        );
        let user_id: i64 = s
            .scalar(&format!("SELECT id FROM users WHERE subject = '{user}'"))
            .await;
        assert_eq!(mount["username"], user_id.to_string());
        // The session the page opened serves the project to the editor's cookie-less GET.
        let r = get(
            &s,
            &format!("/scratch/sessions/{token}/projects/{id}"),
            None,
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), empty_project());
    }
    assert_eq!(s.count("editor_sessions").await, 2);
}

/// The installed package (`ATELIER_TEST_EDITOR_DIR`, set by `.ci/run` after
/// `scripts/install-editor.sh`). With `CI=true` it must be there; elsewhere its absence skips
/// the test, loudly.
fn real_package() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("ATELIER_TEST_EDITOR_DIR").map(std::path::PathBuf::from);
    let ok = dir
        .as_ref()
        .is_some_and(|d| d.join("dist/scratch-gui-standalone.js").is_file());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        ok || !ci,
        "ATELIER_TEST_EDITOR_DIR does not hold the editor package: CI must run \
         `bash scripts/install-editor.sh DIR` and export it (.ci/run does)"
    );
    if !ok {
        eprintln!(
            "SKIPPED editor_page_serves_the_real_package: set ATELIER_TEST_EDITOR_DIR to an \
             editor installed by scripts/install-editor.sh"
        );
    }
    dir.filter(|_| ok)
}

/// Every file the real bundle fetches from the root is served, byte for byte, from its
/// package: the bundle, its worker, the micro:bit firmware, the libraries, a chunk and a
/// static asset.
async fn editor_page_serves_the_real_package(mut s: TestServer) {
    let Some(dir) = real_package() else { return };
    s.set_env("ATELIER_EDITOR_DIR", dir.to_str().unwrap());
    s.restart();
    let dist = dir.join("dist");
    let first_in = |sub: &str, ext: &str| -> String {
        let mut names: Vec<String> = std::fs::read_dir(dist.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(ext))
            .collect();
        names.sort();
        let name = names.first().cloned().expect("a file");
        if sub.is_empty() {
            name
        } else {
            format!("{sub}/{name}")
        }
    };
    let mut paths = vec![
        "scratch-gui-standalone.js".to_owned(),
        "extension-worker.js".to_owned(),
        "libraries/sprites.json".to_owned(),
        "libraries/costumes.json".to_owned(),
        "libraries/backdrops.json".to_owned(),
        "libraries/sounds.json".to_owned(),
        first_in("", ".hex"),
        first_in("chunks", ".js"),
        first_in("static/assets", ".svg"),
    ];
    paths.dedup();
    for path in paths {
        let r = get(&s, &format!("/{path}"), None).await;
        assert_eq!(r.status(), 200, "{path}");
        let bytes = r.bytes().await.unwrap();
        assert_eq!(
            bytes.len(),
            std::fs::metadata(dist.join(&path)).unwrap().len() as usize,
            "{path}"
        );
        assert!(
            bytes[..] == std::fs::read(dist.join(&path)).unwrap()[..],
            "{path}"
        );
    }
    // The page's policy allows the inline script of the bundle's Paper.js sandbox frame (a
    // srcdoc document inherits it) by its hash, besides the page's own.
    let token = s.token_for("pia", "student").await;
    let owner = Client::new(s.graphql_url(), Some(token.clone()));
    let id = owner.create_project("p", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&s, &format!("/projects/{id}/editor"), Some(&token)).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");

    // The bundle loads its chunks from the root, as the reserved paths assume.
    let gui = std::fs::read_to_string(dist.join("scratch-gui-standalone.js")).unwrap();
    assert!(
        gui.contains("chunks/"),
        "the bundle names its chunks under /chunks/"
    );
}
