//! The unmodified Scratch editor (`@scratch/scratch-gui-standalone`, the installed package of
//! `ATELIER_TEST_EDITOR_DIR`) in Debian's headless Chromium, driven by playwright-core
//! (`tests/editor-browser/drive.mjs`; no request interception: Chromium itself answers the CORS
//! preflights), against the real server. Three ways a school mounts it:
//!
//! - `same_site_cookie`: a page on another port of `127.0.0.1` (same site, another origin,
//!   allowed by `ATELIER_CORS_ORIGINS`) mounts the editor on the plain `/scratch/…` routes; the
//!   session cookie of a real sign-in authorizes the writes, a project token the load.
//! - `cross_site_session`: the page is on `localhost` (another site than `127.0.0.1`, so no
//!   cookie is ever sent) and mounts the editor on an editing session from `openEditor`.
//! - `atelier_page`: Atelier's own `/projects/{id}/editor`, signed in by the cookie.
//!
//! Each opens a project made through GraphQL, adds a sprite from an SVG file through "Upload
//! Sprite" (the file chooser), File > Save now, reopens the editor and finds the sprite, then
//! File > New and Save now. The test then checks through GraphQL and HTTP: the version went
//! up, the sprite and its costume are in the content, `/assets/{md5ext}` serves the costume,
//! and the new project is the user's, holding the editor's default project.
//!
//! Screenshots (after load, after adding the sprite, after the save, after reopening, after
//! the new project's save) are kept in `target/editor-browser-screenshots/<scenario>/<backend>/`.
//!
//! Needs Node (`cfg(atelier_node_tests)`), Chromium (`/usr/bin/chromium`, or
//! `ATELIER_TEST_CHROMIUM`), the package (`npm ci --prefix tests/editor-browser`; outside CI
//! the test runs it when missing) and the editor (`ATELIER_TEST_EDITOR_DIR`). With `CI=true`
//! each missing one fails the test; elsewhere the test says SKIPPED and returns.

use std::{path::PathBuf, process::Command, sync::Mutex, time::Instant};

use atelier_testkit::oidc::{Browser, FakeProvider};
use serde_json::{Value, json};

use crate::harness::{Backend, Client, TestServer, md5_hex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    SameSiteCookie,
    CrossSiteSession,
    AtelierPage,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::SameSiteCookie => "same-site-cookie",
            Scenario::CrossSiteSession => "cross-site-session",
            Scenario::AtelierPage => "atelier-page",
        }
    }
}

macro_rules! scenarios {
    ($($name:ident => $scenario:expr),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(atelier_node_tests), ignore = "needs Node.js, Chromium and the editor package")]
            async fn sqlite() {
                super::run(crate::harness::Backend::Sqlite, $scenario).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(
                not(all(atelier_node_tests, atelier_pg_tests)),
                ignore = "needs Node.js, Chromium, the editor package and TEST_DATABASE_URL"
            )]
            async fn postgres() {
                super::run(crate::harness::Backend::Postgres, $scenario).await;
            }
        }
    )*};
}

scenarios!(
    same_site_cookie => super::Scenario::SameSiteCookie,
    cross_site_session => super::Scenario::CrossSiteSession,
    atelier_page => super::Scenario::AtelierPage,
);

const PROJECT: &str = "query($id: ID!) { project(id: $id) { id version content owner { id } } }";
const MINE: &str = "query { viewer { id } projects(first: 50) { edges { node { id } } } }";
const TOKEN: &str = "query($id: ID!) { projectToken(id: $id) { token } }";
const OPEN: &str =
    "mutation($id: ID!) { openEditor(projectId: $id) { token projectHost assetHost } }";

/// The sprite the test adds: its file name is the sprite's name in the editor.
const SPRITE: &str = "atelier-star";
/// The opened project's sprite (the default project's, renamed).
const OPENED_SPRITE: &str = "Atelier Cat";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/editor-browser")
}

/// Where the screenshots go: `<target>/editor-browser-screenshots/<scenario>/<backend>/`.
fn screenshot_dir(scenario: Scenario, backend: Backend) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let backend = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    target
        .join("editor-browser-screenshots")
        .join(scenario.name())
        .join(backend)
}

/// What the run needs: Chromium and the editor package, or why not (then: fail in CI, skip
/// elsewhere). Installs the Node package from its lockfile outside CI.
fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("ATELIER_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let editor = std::env::var_os("ATELIER_TEST_EDITOR_DIR").map(PathBuf::from);
    let mut missing = Vec::new();
    if !chromium.is_file() {
        missing.push(format!(
            "Chromium at {} (`apt-get install -y chromium`, or set ATELIER_TEST_CHROMIUM)",
            chromium.display()
        ));
    }
    if !editor
        .as_ref()
        .is_some_and(|d| d.join("dist/scratch-gui-standalone.js").is_file())
    {
        missing.push(
            "the editor package in ATELIER_TEST_EDITOR_DIR (`bash scripts/install-editor.sh DIR`)"
                .to_owned(),
        );
    }
    let installed = || {
        package_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file()
    };
    if !installed() {
        if ci() {
            missing.push(
                "tests/editor-browser/node_modules (`npm ci --prefix tests/editor-browser`)"
                    .to_owned(),
            );
        } else {
            static INSTALL: Mutex<()> = Mutex::new(());
            let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
            if !installed() {
                let out = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                    .arg(package_dir())
                    .output();
                if !out.as_ref().is_ok_and(|o| o.status.success()) {
                    missing.push(format!(
                        "tests/editor-browser/node_modules: `npm ci --prefix tests/editor-browser` failed: {out:?}"
                    ));
                }
            }
        }
    }
    if missing.is_empty() {
        return Some((chromium, editor.unwrap()));
    }
    let why = missing.join("; ");
    assert!(!ci(), "{test} needs {why} (.ci/run installs them)");
    eprintln!("SKIPPED {test}: missing {why}");
    None
}

/// The project the editor opens: the editor's default project (its assets are built in),
/// its sprite renamed so that the test can tell it from a new project.
fn opened_project() -> Value {
    json!({
        "targets": [
            {
                "isStage": true, "name": "Stage",
                "variables": { "`jEk@4|i[#Fk?(8x)AV.-my variable": ["my variable", 0] },
                "lists": {}, "broadcasts": {}, "blocks": {}, "comments": {}, "currentCostume": 0,
                "costumes": [{
                    "assetId": "cd21514d0531fdffb22204e0ec5ed84a", "name": "backdrop1",
                    "md5ext": "cd21514d0531fdffb22204e0ec5ed84a.svg", "dataFormat": "svg",
                    "rotationCenterX": 240, "rotationCenterY": 180
                }],
                "sounds": [{
                    "assetId": "83a9787d4cb6f3b7632b4ddfebf74367", "name": "pop",
                    "dataFormat": "wav", "format": "", "rate": 11025, "sampleCount": 258,
                    "md5ext": "83a9787d4cb6f3b7632b4ddfebf74367.wav"
                }],
                "volume": 100, "layerOrder": 0, "tempo": 60, "videoTransparency": 50,
                "videoState": "on", "textToSpeechLanguage": null
            },
            {
                "isStage": false, "name": OPENED_SPRITE, "variables": {}, "lists": {},
                "broadcasts": {}, "blocks": {}, "comments": {}, "currentCostume": 0,
                "costumes": [
                    {
                        "assetId": "bcf454acf82e4504149f7ffe07081dbc", "name": "costume1",
                        "bitmapResolution": 1, "md5ext": "bcf454acf82e4504149f7ffe07081dbc.svg",
                        "dataFormat": "svg", "rotationCenterX": 48, "rotationCenterY": 50
                    },
                    {
                        "assetId": "0fb9be3e8397c983338cb71dc84d0b25", "name": "costume2",
                        "bitmapResolution": 1, "md5ext": "0fb9be3e8397c983338cb71dc84d0b25.svg",
                        "dataFormat": "svg", "rotationCenterX": 46, "rotationCenterY": 53
                    }
                ],
                "sounds": [{
                    "assetId": "83c36d806dc92327b9e7049a565c6bff", "name": "Meow",
                    "dataFormat": "wav", "format": "", "rate": 22050, "sampleCount": 18688,
                    "md5ext": "83c36d806dc92327b9e7049a565c6bff.wav"
                }],
                "volume": 100, "layerOrder": 1, "visible": true, "x": 0, "y": 0, "size": 100,
                "direction": 90, "draggable": false, "rotationStyle": "all around"
            }
        ],
        "monitors": [], "extensions": [],
        "meta": { "semver": "3.0.0", "vm": "0.1.0", "agent": "atelier test" }
    })
}

/// The SVG the test uploads: an orange star (its fill is how the test finds it again).
fn star_svg() -> Vec<u8> {
    br##"<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96"><polygon points="48,4 60,36 94,36 66,56 76,90 48,70 20,90 30,56 2,36 36,36" fill="#ff8800" stroke="#7a3d00" stroke-width="3"/></svg>"##.to_vec()
}

/// A static server for the mount page (scenarios on another origin): `dist/` of the package
/// at its root (the bundle fetches `/chunks/…`, `/static/…` from there) and `/mount.html`.
async fn mount_server(dist: PathBuf) -> (u16, tokio::sync::watch::Sender<String>) {
    use axum::{
        Router,
        extract::State,
        http::{StatusCode, Uri, header},
        response::{Html, IntoResponse},
        routing::get,
    };
    let (page_tx, page_rx) = tokio::sync::watch::channel(String::new());
    async fn page(
        State((_, page)): State<(PathBuf, tokio::sync::watch::Receiver<String>)>,
    ) -> Html<String> {
        Html(page.borrow().clone())
    }
    async fn file(
        State((dist, _)): State<(PathBuf, tokio::sync::watch::Receiver<String>)>,
        uri: Uri,
    ) -> axum::response::Response {
        let rel = uri.path().trim_start_matches('/');
        if rel.split('/').any(|c| c.is_empty() || c.starts_with('.')) {
            return StatusCode::NOT_FOUND.into_response();
        }
        let Ok(bytes) = tokio::fs::read(dist.join(rel)).await else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let ext = rel.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        let ctype = match ext {
            "js" => "text/javascript",
            "json" | "map" => "application/json",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            "png" => "image/png",
            "gif" => "image/gif",
            "jpg" | "jpeg" => "image/jpeg",
            "wav" => "audio/wav",
            "mp3" => "audio/mpeg",
            "woff" => "font/woff",
            "woff2" => "font/woff2",
            "ttf" => "font/ttf",
            _ => "application/octet-stream",
        };
        ([(header::CONTENT_TYPE, ctype)], bytes).into_response()
    }
    let app = Router::new()
        .route("/mount.html", get(page))
        .fallback(get(file))
        .with_state((dist, page_rx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, page_tx)
}

/// A page that mounts the stock editor with `props`, as a school's own page would.
fn mount_page(props: &Value) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>A school's editor</title>\
         <style>html, body, #editor {{ height: 100%; margin: 0; }}</style></head>\
         <body><div id=\"editor\"></div><script src=\"/scratch-gui-standalone.js\"></script>\
         <script>var el = document.getElementById('editor'); GUI.setAppElement(el);\
         GUI.createStandaloneRoot(new GUI.EditorState({{locale: 'en'}}), el).render({props});</script>\
         </body></html>\n"
    )
}

/// One browser at a time in this test binary: Chromium and the editor's bundle take both
/// cores, and six at once would only make each slower.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(backend: Backend, scenario: Scenario) {
    let test = format!("editor_browser::{}", scenario.name());
    let Some((chromium, editor)) = prerequisites(&test) else {
        return;
    };
    let started = Instant::now();
    let dist = editor.join("dist");
    let (page_port, page) = mount_server(dist).await;
    let page_origin = match scenario {
        Scenario::CrossSiteSession => format!("http://localhost:{page_port}"),
        _ => format!("http://127.0.0.1:{page_port}"),
    };

    let provider = FakeProvider::start().await;
    provider.set_user("ada", "Ada", json!([]));
    let mut env: Vec<(String, String)> = provider.env();
    env.push(("ATELIER_EDITOR_DIR".into(), editor.to_string_lossy().into()));
    if scenario == Scenario::SameSiteCookie {
        // The same-site page's origin may write with the cookie.
        env.push(("ATELIER_CORS_ORIGINS".into(), page_origin.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = TestServer::start_with(backend, &env).await;
    let base = s.base_url.clone();

    // A real sign-in: the session cookie the browser gets.
    let b = Browser::default();
    b.sign_in(&base, "ada").await;
    let session = b.session().expect("the session cookie");
    let ada = Client::new(s.graphql_url(), Some(session.clone()));
    let id = ada.create_project("Ada's project", opened_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = json!([{
        "name": "atelier_session", "value": session, "url": base,
        "httpOnly": true, "sameSite": "Lax"
    }]);

    let (url, cookies) = match scenario {
        Scenario::SameSiteCookie => {
            let token = ada.data(TOKEN, json!({"id": id})).await["projectToken"]["token"]
                .as_str()
                .unwrap()
                .to_owned();
            page.send_replace(mount_page(&json!({
                "projectHost": format!("{base}/scratch/projects"),
                "assetHost": format!("{base}/scratch/assets"),
                "projectToken": token,
                "projectId": id,
                "canSave": true,
                "canCreateNew": true,
            })));
            (format!("{page_origin}/mount.html"), cookie)
        }
        Scenario::CrossSiteSession => {
            let grant = ada.data(OPEN, json!({"id": id})).await["openEditor"].clone();
            page.send_replace(mount_page(&json!({
                "projectHost": grant["projectHost"],
                "assetHost": grant["assetHost"],
                "projectId": id,
                "canSave": true,
                "canCreateNew": true,
            })));
            (format!("{page_origin}/mount.html"), json!([]))
        }
        Scenario::AtelierPage => (format!("{base}/projects/{id}/editor"), cookie),
    };

    let shots = screenshot_dir(scenario, backend);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let svg_dir = tempfile::tempdir().unwrap();
    let svg_path = svg_dir.path().join(format!("{SPRITE}.svg"));
    std::fs::write(&svg_path, star_svg()).unwrap();
    let cfg = json!({
        "chromium": chromium,
        "url": url,
        "cookies": cookies,
        "svg": svg_path,
        "spriteName": SPRITE,
        "openedSprite": OPENED_SPRITE,
        "screenshots": shots,
        "timeoutMs": 60000,
    });

    let browser_started;
    let out = {
        let _one = BROWSER.lock().await;
        browser_started = Instant::now();
        let mut cmd = Command::new("node");
        cmd.arg(package_dir().join("drive.mjs"))
            .env("EDITOR_BROWSER", cfg.to_string());
        tokio::task::spawn_blocking(move || cmd.output().expect("node runs drive.mjs"))
            .await
            .unwrap()
    };
    let browser_secs = browser_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{test} ({backend:?}): the browser run failed (screenshots in {}):\n{stderr}\nserver log:\n{}",
        shots.display(),
        tail(&s.server_log(), 60)
    );
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("result "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));

    // Every inline script ran (the page's policy allows the bundle's sandbox frame).
    assert_eq!(result["cspViolations"], json!([]), "{result}");

    // The save: version 2, the sprite with its costume, served at /assets/. (File > New
    // saves the project it leaves first, as the editor does whenever it may save: 3.)
    let p = ada.data(PROJECT, json!({"id": id})).await["project"].clone();
    assert_eq!(result["savedVersion"], 2);
    assert_eq!(p["version"], 3, "{result}");
    let targets = p["content"]["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["Stage", OPENED_SPRITE, SPRITE], "{}", p["content"]);
    let sprite = &targets[2];
    let costume = &sprite["costumes"][0];
    let md5ext = costume["md5ext"].as_str().unwrap().to_owned();
    assert_eq!(costume["dataFormat"], "svg");
    let r = reqwest::get(format!("{base}/assets/{md5ext}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "/assets/{md5ext}");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(format!("{}.svg", md5_hex(&bytes)), md5ext);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("#ff8800"), "the uploaded star: {text}");

    // File > New, Save now: a project of Ada's holding the default project.
    let new_id = result["newProjectId"]
        .as_str()
        .expect("newProjectId")
        .to_owned();
    assert_ne!(new_id, id);
    let mine = ada.data(MINE, json!({})).await;
    let viewer = mine["viewer"]["id"].clone();
    let ids: Vec<&str> = mine["projects"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["node"]["id"].as_str())
        .collect();
    assert!(ids.contains(&new_id.as_str()), "{mine}");
    let n = ada.data(PROJECT, json!({"id": new_id})).await["project"].clone();
    assert_eq!(n["owner"]["id"], viewer);
    assert_eq!(n["version"], 2, "created, then saved: {n}");
    assert_eq!(result["newSavedVersion"], 2);
    let summary = |content: &Value| -> Vec<(String, Vec<String>)> {
        content["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let mut md5s: Vec<String> = ["costumes", "sounds"]
                    .iter()
                    .flat_map(|k| t[*k].as_array().cloned().unwrap_or_default())
                    .filter_map(|a| a["md5ext"].as_str().map(str::to_owned))
                    .collect();
                md5s.sort();
                (t["name"].as_str().unwrap_or_default().to_owned(), md5s)
            })
            .collect()
    };
    let mut default = opened_project();
    default["targets"][1]["name"] = json!("Sprite1");
    assert_eq!(
        summary(&n["content"]),
        summary(&default),
        "{}",
        n["content"]
    );

    // The screenshots are there.
    for shot in [
        "01-loaded",
        "02-sprite-added",
        "03-saved",
        "04-reopened",
        "05-new-saved",
    ] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot}");
    }
    eprintln!(
        "{test} ({backend:?}): passed in {:.1} s (browser {browser_secs:.1} s); screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// The stale-tab scenario (`tests/editor-browser/stale-tab.mjs`): two tabs of one browser on
// Atelier's editor page, tab B saves twice, tab A (never reloaded) saves: A's save is refused
// and kept, A's page says so, and "Keep mine" makes it current. Screenshots in
// `target/editor-browser-screenshots/stale-tab/<backend>/` (`postgres-two-processes` when each
// tab is served by its own process).
mod stale_tab {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_node_tests),
        ignore = "needs Node.js, Chromium and the editor package"
    )]
    async fn sqlite() {
        super::stale_tab(crate::harness::Backend::Sqlite, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(all(atelier_node_tests, atelier_pg_tests)),
        ignore = "needs Node.js, Chromium, the editor package and TEST_DATABASE_URL"
    )]
    async fn postgres() {
        super::stale_tab(crate::harness::Backend::Postgres, false).await;
    }

    /// Tab A on one process, tab B on another (one database, one data dir).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(all(atelier_node_tests, atelier_pg_tests)),
        ignore = "needs Node.js, Chromium, the editor package and TEST_DATABASE_URL"
    )]
    async fn postgres_two_processes() {
        super::stale_tab(crate::harness::Backend::Postgres, true).await;
    }
}

const HISTORY: &str = "query($id: ID!) { project(id: $id) { version content
    versions(first: 20) { edges { node { version via savedBy { id } content } } }
    conflicts(first: 20) { edges { node { id baseVersion resolvedVersion savedBy { id } content } } } } }";

/// A sprite's SVG: a square of `fill` (each sprite's costume is its own asset).
fn square_svg(fill: &str) -> Vec<u8> {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="80" height="80" viewBox="0 0 80 80"><rect x="4" y="4" width="72" height="72" rx="10" fill="{fill}" stroke="#222" stroke-width="3"/></svg>"##
    )
    .into_bytes()
}

fn sprite_names(content: &Value) -> Vec<String> {
    content["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn stale_tab(backend: Backend, two_processes: bool) {
    let test = format!(
        "editor_browser::stale_tab{}",
        if two_processes { "::two_processes" } else { "" }
    );
    let Some((chromium, editor)) = prerequisites(&test) else {
        return;
    };
    let started = Instant::now();
    let provider = FakeProvider::start().await;
    provider.set_user("ada", "Ada", json!([]));
    let mut env: Vec<(String, String)> = provider.env();
    env.push(("ATELIER_EDITOR_DIR".into(), editor.to_string_lossy().into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = TestServer::start_with(backend, &env).await;
    // Tab B's process: the same database and data dir (its page, its session's hosts and its
    // socket are its own; the cookie is the browser's, for every port of 127.0.0.1), and the
    // same sign-in settings.
    let other = two_processes.then(|| s.second_process(&env));
    let base = s.base_url.clone();
    let base_b = other.as_ref().map_or(base.clone(), |o| o.base_url.clone());

    let b = Browser::default();
    b.sign_in(&base, "ada").await;
    let session = b.session().expect("the session cookie");
    let ada = Client::new(s.graphql_url(), Some(session.clone()));
    let id = ada.create_project("Ada's project", opened_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = ada.data(MINE, json!({})).await["viewer"]["id"].clone();

    let dir = match (backend, two_processes) {
        (Backend::Sqlite, _) => "sqlite",
        (Backend::Postgres, false) => "postgres",
        (Backend::Postgres, true) => "postgres-two-processes",
    };
    // `<target>/editor-browser-screenshots/stale-tab/<dir>/`
    let shots = screenshot_dir(Scenario::AtelierPage, backend)
        .ancestors()
        .nth(2)
        .unwrap()
        .join("stale-tab")
        .join(dir);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let svgs = tempfile::tempdir().unwrap();
    let sprite = |name: &str, fill: &str| {
        let path = svgs.path().join(format!("{name}.svg"));
        std::fs::write(&path, square_svg(fill)).unwrap();
        json!({"svg": path, "name": name})
    };
    let (b1, b2, mine) = ("b-first", "b-second", "a-mine");
    let cfg = json!({
        "chromium": chromium,
        "urlA": format!("{base}/projects/{id}/editor"),
        "urlB": format!("{base_b}/projects/{id}/editor"),
        "cookies": [{
            "name": "atelier_session", "value": session, "url": base,
            "httpOnly": true, "sameSite": "Lax"
        }],
        "openedSprite": OPENED_SPRITE,
        "b": [sprite(b1, "#2a9d8f"), sprite(b2, "#e76f51")],
        "a": sprite(mine, "#6a4c93"),
        "screenshots": shots,
        "timeoutMs": 60000,
    });

    let browser_started;
    let out = {
        let _one = BROWSER.lock().await;
        browser_started = Instant::now();
        let mut cmd = Command::new("node");
        cmd.arg(package_dir().join("stale-tab.mjs"))
            .env("EDITOR_BROWSER", cfg.to_string());
        tokio::task::spawn_blocking(move || cmd.output().expect("node runs stale-tab.mjs"))
            .await
            .unwrap()
    };
    let browser_secs = browser_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let logs = || {
        let mut l = tail(&s.server_log(), 60);
        if let Some(o) = &other {
            l.push_str("\nsecond process:\n");
            l.push_str(&tail(&o.server_log(), 40));
        }
        l
    };
    assert!(
        out.status.success(),
        "{test} ({backend:?}): the browser run failed (screenshots in {}):\n{stderr}\nserver log:\n{}",
        shots.display(),
        logs()
    );
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("result "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));
    assert_eq!(result["cspViolations"], json!([]), "{result}");
    // Each tab talked to its own process only (its editor's session routes and its page's
    // GraphQL calls).
    for r in result["requests"].as_array().unwrap() {
        let want = if r["page"] == "B" { &base_b } else { &base };
        assert!(
            r["url"].as_str().unwrap().starts_with(want.as_str()),
            "tab {} asked another process: {r}",
            r["page"]
        );
    }

    // B's two saves were versions 2 and 3; B heard nothing of its own saves.
    assert_eq!(result["bSaves"][0]["status"], 200, "{result}");
    assert_eq!(result["bSaves"][0]["body"]["version"], 2, "{result}");
    assert_eq!(result["bSaves"][1]["body"]["version"], 3, "{result}");
    assert_eq!(result["bBannerAfterSaves"], Value::Null, "{result}");
    // A heard of them before it saved, in words, with a button.
    let changed = &result["changed"];
    assert_eq!(changed["state"], "changed", "{result}");
    assert_eq!(changed["role"], "alert");
    assert!(
        changed["text"]
            .as_str()
            .unwrap()
            .contains("This project was changed in another tab or by someone else"),
        "{changed}"
    );
    assert_eq!(changed["buttons"], json!(["Open the latest"]));
    // A's save was refused: not a version, B's version 3 current.
    let put = &result["aPut"];
    assert_eq!(put["status"], 409, "{result}");
    assert_eq!(
        put["saved"], false,
        "the editor says it could not save: {result}"
    );
    assert_eq!(put["body"]["code"], "VERSION_CONFLICT");
    assert_eq!(put["body"]["currentVersion"], 3);
    let conflict_id = put["body"]["conflictId"].as_str().unwrap().to_owned();
    let refused = &result["refused"];
    assert_eq!(refused["state"], "refused", "{result}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("Your save was not applied: the project changed elsewhere"),
        "{refused}"
    );
    assert_eq!(refused["buttons"], json!(["Open the latest", "Keep mine"]));
    // After "Keep mine" the reloaded page shows A's version, and no banner; B hears of it.
    assert_eq!(result["keptBanner"], Value::Null, "{result}");
    assert_eq!(result["bAfter"]["state"], "changed", "{result}");

    // History: 1 created, 2 and 3 B's (with B's sprites), 4 A's kept save (RESTORE); A's
    // refused save is one conflicted save with A's content, made current as version 4.
    let p = ada.data(HISTORY, json!({"id": id})).await["project"].clone();
    assert_eq!(p["version"], 4, "{p:#}");
    let opened = ["Stage".to_owned(), OPENED_SPRITE.to_owned()];
    let with = |extra: &[&str]| -> Vec<String> {
        opened
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    assert_eq!(
        sprite_names(&p["content"]),
        with(&[mine]),
        "A's content is current"
    );
    let versions: Vec<(i64, String, Vec<String>)> = p["versions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = &e["node"];
            assert_eq!(n["savedBy"]["id"], viewer, "{n}");
            (
                n["version"].as_i64().unwrap(),
                n["via"].as_str().unwrap().to_owned(),
                sprite_names(&n["content"]),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (4, "RESTORE".to_owned(), with(&[mine])),
            (3, "EDITOR".to_owned(), with(&[b1, b2])),
            (2, "EDITOR".to_owned(), with(&[b1])),
            (1, "GRAPHQL".to_owned(), with(&[])),
        ],
        "every version, B's included"
    );
    let conflicts = p["conflicts"]["edges"].as_array().unwrap();
    assert_eq!(
        conflicts.len(),
        1,
        "exactly one conflicted save: {conflicts:#?}"
    );
    let c = &conflicts[0]["node"];
    assert_eq!(c["id"], conflict_id.as_str());
    assert_eq!(c["baseVersion"], 1, "A had loaded version 1");
    assert_eq!(c["resolvedVersion"], 4);
    assert_eq!(c["savedBy"]["id"], viewer);
    assert_eq!(sprite_names(&c["content"]), with(&[mine]));
    // A's kept costume is served.
    let md5ext = p["content"]["targets"][2]["costumes"][0]["md5ext"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::get(format!("{base}/assets/{md5ext}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "/assets/{md5ext}");
    assert!(String::from_utf8_lossy(&r.bytes().await.unwrap()).contains("#6a4c93"));

    for shot in [
        "01-a-loaded",
        "02-b-saved-once",
        "03-b-saved-twice",
        "04-a-changed-elsewhere",
        "05-a-save-refused",
        "06-a-refused-banner",
        "07-a-kept",
        "08-b-after",
    ] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot}");
    }
    eprintln!(
        "{test} ({backend:?}): passed in {:.1} s (browser {browser_secs:.1} s; A told of B's \
         change {} ms after B's save); screenshots in {}",
        started.elapsed().as_secs_f64(),
        result["changedAfterMs"],
        shots.display()
    );
    drop(other);
}
