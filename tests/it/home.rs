//! The classroom home page at `/` (`src/http/home/`): served with a strict policy, only this
//! server's files, the editor bundle's root paths left alone; and the page itself in Debian's
//! headless Chromium (`tests/editor-browser/home.mjs`, playwright-core, no request
//! interception), signed in through its own link and the fake OpenID Provider: create, open in
//! the editor, share, remix, a change made elsewhere (VERSION_CONFLICT in words), rename,
//! history with its diff summary, restore, "Keep mine" on a conflicted save, delete, a
//! classmate's shared project remixed, unshare, sign out; axe-core at each stage (no serious or
//! critical violation). Screenshots in `target/home-screenshots/<backend>/`.
//!
//! The browser test needs Node (`cfg(atelier_node_tests)`), Chromium (`/usr/bin/chromium` or
//! `ATELIER_TEST_CHROMIUM`), the package (`npm ci --prefix tests/editor-browser`, with
//! `axe-core`) and the editor (`ATELIER_TEST_EDITOR_DIR`). With `CI=true` a missing one fails
//! it; elsewhere it says SKIPPED.

use std::{path::PathBuf, process::Command, sync::Mutex, time::Instant};

use atelier_testkit::oidc::{Browser, FakeProvider};
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, empty_project},
};

both_backends!(
    home_page_is_served_with_a_strict_policy_and_only_local_files,
    home_page_leaves_the_editor_bundle_paths_alone,
);

const HOME_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/home");

/// Every file of the page as it is in the repository: (name, bytes).
fn source_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(HOME_DIR)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn content_type_of(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        other => panic!("a home page file of an unexpected kind: {name} ({other:?})"),
    }
}

fn header<'r>(r: &'r reqwest::Response, name: &str) -> &'r str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn assert_strict_csp(csp: &str) {
    for part in [
        "default-src 'self'",
        "script-src 'self';",
        "style-src 'self';",
        "connect-src 'self';",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part:?} missing from {csp}");
    }
    for loose in [
        "unsafe-eval",
        "unsafe-inline",
        "http:",
        "https:",
        "*",
        "data: blob:",
    ] {
        assert!(!csp.contains(loose), "{loose:?} in {csp}");
    }
}

async fn home_page_is_served_with_a_strict_policy_and_only_local_files(s: TestServer) {
    let base = &s.base_url;
    let http = reqwest::Client::new();
    let files = source_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"index.html") && names.contains(&"app.js"),
        "{names:?}"
    );

    // `/` is the page, as it is in the repository.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_strict_csp(header(&r, "content-security-policy"));
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let page = r.text().await.unwrap();
    let index = &files.iter().find(|(n, _)| n == "index.html").unwrap().1;
    assert_eq!(page.as_bytes(), index.as_slice());

    // No inline script, handler or style on the page: its scripts are files.
    let lower = page.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/home/"), "an inline script: {tag}");
        assert!(lower[at..].contains("></script>"), "{tag}");
    }
    assert!(!lower.contains(" style="), "an inline style attribute");
    assert!(
        !regex_like_handler(&lower),
        "an inline event handler attribute"
    );

    let all_text: String = files
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (name, bytes) in &files {
        // Served byte for byte, with its type and the same policy.
        let r = http
            .get(format!("{base}/home/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/home/{name}: is it in FILES (home.rs)?");
        assert_eq!(header(&r, "content-type"), content_type_of(name), "{name}");
        assert_strict_csp(header(&r, "content-security-policy"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        let etag = header(&r, "etag").to_owned();
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            bytes.as_slice(),
            "{name}"
        );
        // Revalidated: an unchanged file is a 304.
        let again = http
            .get(format!("{base}/home/{name}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}");

        // Nothing from elsewhere: no URL with a scheme in any file (an SVG's namespace is a
        // name, never fetched).
        let text =
            String::from_utf8_lossy(bytes).replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
            assert!(!text.contains(scheme), "{name} names {scheme}…");
        }
        assert!(!text.contains("eval("), "{name} evaluates code");
        assert!(!text.contains("new Function"), "{name} evaluates code");

        // Every file is used: the page loads it or a module imports it.
        if name != "index.html" {
            assert!(
                all_text.contains(&format!("/home/{name}\""))
                    || all_text.contains(&format!("'./{name}'")),
                "{name} is served but nothing loads it"
            );
        }
    }
    // Every data call is to /graphql (and the sign-out to /auth/logout), same origin.
    let app =
        String::from_utf8_lossy(&files.iter().find(|(n, _)| n == "app.js").unwrap().1).into_owned();
    let api =
        String::from_utf8_lossy(&files.iter().find(|(n, _)| n == "api.js").unwrap().1).into_owned();
    assert!(api.contains("fetch('/graphql'") && api.contains("credentials: 'same-origin'"));
    let fetches: Vec<&str> = app
        .match_indices("fetch(")
        .map(|(i, _)| &app[i..i + 20])
        .collect();
    assert_eq!(fetches, ["fetch('/auth/logout'"], "{fetches:?}");
    assert!(app.contains("/auth/login?return_to=/"));

    // Gzip when asked, with its own validator.
    let r = http
        .get(format!("{base}/home/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), "gzip");
    assert!(header(&r, "etag").ends_with("-gzip\""));

    // Anything else under /home/ is not found; HEAD works.
    for path in ["/home/nope.js", "/home/..%2Fhome.rs", "/home/"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = http.head(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The API the page calls works with what the page sends: an empty project is accepted.
    let ada = s.user("ada").await;
    ada.create_project("from the page's shape", empty_project())
        .await;
}

/// ` on…=` attributes (onclick and the like) in lower-cased HTML.
fn regex_like_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    })
}

async fn home_page_leaves_the_editor_bundle_paths_alone(mut s: TestServer) {
    // A stand-in for the editor package: its bundle, a chunk, a static file, a library file,
    // a top-level .hex.
    let pkg = tempfile::tempdir().unwrap();
    let dist = pkg.path().join("dist");
    for (path, body) in [
        ("scratch-gui-standalone.js", "/* the bundle */"),
        ("chunks/a.js", "/* chunk */"),
        ("static/b.css", "/* static */"),
        ("libraries/c.json", "{}"),
        ("d.hex", "hex"),
    ] {
        let p = dist.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    s.set_env("ATELIER_EDITOR_DIR", &pkg.path().to_string_lossy());
    s.restart();
    let base = &s.base_url;
    for (path, body) in [
        ("/scratch-gui-standalone.js", "/* the bundle */"),
        ("/chunks/a.js", "/* chunk */"),
        ("/static/b.css", "/* static */"),
        ("/libraries/c.json", "{}"),
        ("/d.hex", "hex"),
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), body, "{path}");
    }
    // The page's files are not at the root, and the root's files are not the page's.
    for path in ["/app.js", "/home.css", "/index.html", "/home"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_strict_csp(header(&r, "content-security-policy"));
    assert!(r.text().await.unwrap().contains("/home/app.js"));
    let r = reqwest::get(format!("{base}/home/app.js")).await.unwrap();
    assert_eq!(r.status(), 200);
    // GraphiQL is still at /graphql.
    let r = reqwest::get(format!("{base}/graphql")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("GraphiQL"));
}

// ---- the page in a browser ----

mod in_a_browser {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_node_tests),
        ignore = "needs Node.js, Chromium and the editor package"
    )]
    async fn sqlite() {
        super::in_a_browser(crate::harness::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(all(atelier_node_tests, atelier_pg_tests)),
        ignore = "needs Node.js, Chromium, the editor package and TEST_DATABASE_URL"
    )]
    async fn postgres() {
        super::in_a_browser(crate::harness::Backend::Postgres).await;
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/editor-browser")
}

fn screenshot_dir(backend: Backend) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("home-screenshots").join(match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    })
}

/// Chromium, the editor package and the Node package (with axe-core), or why not: then fail
/// in CI, skip elsewhere. Installs the Node package from its lockfile outside CI.
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
        let m = package_dir().join("node_modules");
        m.join("playwright-core/package.json").is_file() && m.join("axe-core/axe.min.js").is_file()
    };
    if !installed() {
        if ci() {
            missing.push(
                "tests/editor-browser/node_modules with axe-core (`npm ci --prefix tests/editor-browser`)"
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

/// One browser at a time (the editor browser test has its own lock; both use the two cores).
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLASS: &str = "Class 7B";
const SHARED_TITLE: &str = "Bob's maze";

const PROJECT: &str = "query($id: ID!) { project(id: $id) {
  id title version owner { displayName } sharedWith { name } remixedFrom { id }
  content
  versions(first: 20) { nodes { version title via } }
  conflicts(first: 5) { nodes { id baseVersion resolvedVersion } } } }";

async fn in_a_browser(backend: Backend) {
    let test = "home::in_a_browser";
    let Some((chromium, editor)) = prerequisites(test) else {
        return;
    };
    let started = Instant::now();
    let provider = FakeProvider::start().await;
    // Ada's class comes from the provider's groups claim.
    provider.set_user("ada", "Ada", json!([{"id": "7b", "name": CLASS}]));
    let mut env = provider.env();
    env.push(("ATELIER_EDITOR_DIR".into(), editor.to_string_lossy().into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = TestServer::start_with(backend, &env).await;
    let base = s.base_url.clone();

    // A first sign-in makes Ada and her class; a classmate joins it through the CLI and shares
    // a project with it.
    let pre = Browser::default();
    pre.sign_in(&base, "ada").await;
    let ada_pre = Client::new(s.graphql_url(), pre.session());
    let groups = ada_pre.data("{ groups { id name } }", json!({})).await;
    let class = groups["groups"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(groups["groups"][0]["name"], CLASS);
    let bob = s.user("bob").await;
    assert!(s.cli(&["group", "add-member", &class, "bob"]).0);
    let bobs = bob.create_project(SHARED_TITLE, empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.data(
        "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }",
        json!({"id": bobs, "g": [class]}),
    )
    .await;
    let admin = s.user_with_role("root", "admin").await;

    let shots = screenshot_dir(backend);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "chromium": chromium,
        "base": base,
        "provider": provider.issuer,
        "user": "ada",
        "className": CLASS,
        "sharedTitle": SHARED_TITLE,
        "axe": package_dir().join("node_modules/axe-core/axe.min.js"),
        "screenshots": shots,
        "timeoutMs": 30000,
    });
    let browser_started;
    let out = {
        let _one = BROWSER.lock().await;
        browser_started = Instant::now();
        let mut cmd = Command::new("node");
        cmd.arg(package_dir().join("home.mjs"))
            .env("HOME_BROWSER", cfg.to_string());
        tokio::task::spawn_blocking(move || cmd.output().expect("node runs home.mjs"))
            .await
            .unwrap()
    };
    let browser_secs = browser_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{test} ({backend:?}): the browser run failed (screenshots in {}):\n{stderr}\n{stdout}\nserver log:\n{}",
        shots.display(),
        tail(&s.server_log(), 40)
    );
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("result "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));

    // The page ran under its policy without a refusal or a script error, and axe found no
    // serious or critical violation at any stage.
    assert_eq!(result["cspViolations"], json!([]), "{result}");
    assert_eq!(result["pageErrors"], json!([]), "{result}");
    assert_eq!(result["serious"], json!([]), "{result}");
    let words: Vec<&str> = result["conflictMessage"]
        .as_str()
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        words,
        [
            "This project was changed elsewhere — reload to see the latest.",
            "Reload"
        ]
    );
    assert_eq!(result["versionsShown"], 3);
    let diff = result["diffText"].as_str().unwrap();
    for line in [
        "added: Cat; removed: none",
        "added: costume1 (Cat), costume2 (Cat); removed: none",
        "added: Meow (Cat); removed: none",
        "3 added, 0 removed (Cat: +3)",
    ] {
        assert!(
            diff.contains(line),
            "{line:?} not in the diff summary:\n{diff}"
        );
    }

    // What the page did, as the server has it.
    let id = result["projectId"].as_str().unwrap();
    let p = admin.data(PROJECT, json!({"id": id})).await["project"].clone();
    assert_eq!(p["owner"]["displayName"], "Ada");
    assert_eq!(p["version"], 6, "{p}");
    assert_eq!(p["title"], "Star game, tab B");
    assert_eq!(p["sharedWith"], json!([]), "unshared at the end");
    let vias: Vec<(i64, &str, &str)> = p["versions"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["title"].as_str().unwrap(),
                v["via"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        vias,
        [
            (6, "Star game, tab B", "RESTORE"),
            (5, "Star game, tab B", "GRAPHQL"),
            (4, "Star game", "RESTORE"),
            (3, "Star game deluxe", "GRAPHQL"),
            (2, "Star game", "GRAPHQL"),
            (1, "Star game", "GRAPHQL"),
        ]
    );
    let conflicts = &p["conflicts"]["nodes"];
    assert_eq!(conflicts[0]["id"], result["conflictId"]);
    assert_eq!(conflicts[0]["baseVersion"], 4);
    assert_eq!(conflicts[0]["resolvedVersion"], 6);
    // "Keep mine" kept the late save's content: the stage and its late cat.
    let names: Vec<&str> = p["content"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["Stage", "Late cat"]);
    // The remix was deleted; the classmate's project was remixed into Ada's.
    let remix = admin.data(PROJECT, json!({"id": result["remixId"]})).await;
    assert_eq!(remix["project"], Value::Null, "the remix was deleted");
    let r = admin
        .data(PROJECT, json!({"id": result["sharedRemixId"]}))
        .await["project"]
        .clone();
    assert_eq!(r["owner"]["displayName"], "Ada");
    assert_eq!(r["remixedFrom"]["id"], json!(bobs));
    assert_eq!(r["title"], format!("{SHARED_TITLE} (remix)"));

    for shot in [
        "01-signed-out",
        "01b-skip-link-focused",
        "02-created",
        "03-editor",
        "04-changed-elsewhere",
        "05-history-diff",
        "06-conflicted-save",
        "07-kept",
        "08-confirm-delete",
        "09-shared-remixed",
        "10a-signed-out-elsewhere",
        "10-signed-out-again",
    ] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot}");
    }
    let axe: Vec<String> = result["axe"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(stage, v)| {
            let ids: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| format!("{} ({})", x["id"].as_str().unwrap_or("?"), x["impact"]))
                .collect();
            format!(
                "{stage}: {}",
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            )
        })
        .collect();
    eprintln!(
        "{test} ({backend:?}): passed in {:.1} s (browser {browser_secs:.1} s); axe violations: {}; screenshots in {}",
        started.elapsed().as_secs_f64(),
        axe.join("; "),
        shots.display()
    );
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
