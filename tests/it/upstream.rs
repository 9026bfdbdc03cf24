//! Pull-through from an upstream asset host (`ATELIER_ASSET_UPSTREAM`), against a stand-in
//! upstream in the test (an axum server on a random port serving bytes the test chose and
//! counting requests): saves (updateProject, createProject, the editor's PUT) and asset GETs
//! pull a missing asset once and store it like an upload; wrong md5, wrong format, oversized
//! and slow answers are refused in bounded time and remembered; concurrent misses share one
//! fetch; without the setting nothing is fetched.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    api::UPDATE_PROJECT,
    harness::{Backend, Client, TestServer, code, empty_project, md5_hex, png, svg, wav},
};

/// Runs `scenario(server, upstream)` on both backends, the server pulling from a fresh
/// stand-in upstream.
macro_rules! with_upstream {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (s, u) = super::start($crate::harness::Backend::Sqlite).await;
                super::$name(s, u).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant")]
            async fn postgres() {
                let (s, u) = super::start($crate::harness::Backend::Postgres).await;
                super::$name(s, u).await;
            }
        }
    )*};
}

with_upstream!(
    saves_pull_library_assets_through,
    asset_get_misses_pull_through,
    a_wrong_md5_is_not_stored,
    wrong_formats_and_oversized_bodies_are_refused,
    upstream_404s_are_remembered,
    concurrent_misses_share_one_fetch,
    a_slow_upstream_is_missing_in_bounded_time,
);

crate::both_backends!(without_the_setting_nothing_is_fetched);

/// The upstream's fetch timeout in these tests.
const TIMEOUT_MS: u64 = 700;
/// The largest asset the server takes from the upstream in these tests.
const MAX_BYTES: usize = 64 * 1024;

/// What the stand-in answers for one md5ext.
#[derive(Clone)]
enum Answer {
    Bytes(Vec<u8>),
    /// The bytes after a pause.
    Slow(Vec<u8>, Duration),
    /// The bytes as a chunked stream (no Content-Length).
    Chunked(Vec<u8>),
}

#[derive(Clone, Default)]
pub struct Upstream {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    pub url: String,
}

impl Upstream {
    async fn start() -> Upstream {
        let mut up = Upstream::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        up.url = format!("http://{addr}/internalapi/asset/{{md5ext}}/get/");
        let app = axum::Router::new()
            .route("/internalapi/asset/{name}/get/", axum::routing::get(answer))
            .with_state(up.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        up
    }

    /// Serves `bytes` as `name` (`<md5>.<ext>`).
    fn serve(&self, name: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(name.to_owned(), answer);
    }

    /// Serves `bytes` under their own md5 with `ext`; returns the name.
    fn library(&self, bytes: Vec<u8>, ext: &str) -> String {
        let name = format!("{}.{ext}", md5_hex(&bytes));
        self.serve(&name, Answer::Bytes(bytes));
        name
    }

    /// Requests the stand-in got for `name`.
    fn requests(&self, name: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn total_requests(&self) -> usize {
        self.requests.lock().unwrap().values().sum()
    }
}

async fn answer(State(up): State<Upstream>, Path(name): Path<String>) -> Response {
    *up.requests.lock().unwrap().entry(name.clone()).or_default() += 1;
    let answer = up.answers.lock().unwrap().get(&name).cloned();
    match answer {
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
        Some(Answer::Bytes(b)) => b.into_response(),
        Some(Answer::Slow(b, pause)) => {
            tokio::time::sleep(pause).await;
            b.into_response()
        }
        Some(Answer::Chunked(b)) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                b.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
    }
}

async fn start(backend: Backend) -> (TestServer, Upstream) {
    start_with(backend, &[]).await
}

async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> (TestServer, Upstream) {
    let up = Upstream::start().await;
    let (timeout, max) = (TIMEOUT_MS.to_string(), MAX_BYTES.to_string());
    let mut env = vec![
        ("ATELIER_ASSET_UPSTREAM", up.url.as_str()),
        ("ATELIER_ASSET_UPSTREAM_TIMEOUT_MS", timeout.as_str()),
        ("ATELIER_ASSET_UPSTREAM_MAX_BYTES", max.as_str()),
    ];
    env.extend_from_slice(extra);
    let s = TestServer::start_with(backend, &env).await;
    (s, up)
}

/// A project whose one sprite wears `costumes` and plays `sounds` (md5exts).
fn content(costumes: &[&str], sounds: &[&str]) -> Value {
    let costumes: Vec<Value> = costumes
        .iter()
        .map(|m| json!({"name": "c", "md5ext": m}))
        .collect();
    let sounds: Vec<Value> = sounds
        .iter()
        .map(|m| json!({"name": "s", "md5ext": m}))
        .collect();
    json!({
        "targets": [{"isStage": false, "name": "Sprite1", "costumes": costumes, "sounds": sounds}],
        "meta": {"semver": "3.0.0"}
    })
}

/// (status, body) of `GET <path>` without credentials.
async fn get(s: &TestServer, path: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(format!("{}{path}", s.base_url)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// The editor's save: `PUT /scratch/projects/{id}`.
async fn editor_put(s: &TestServer, c: &Client, id: &str, content: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{}/scratch/projects/{id}", s.base_url))
        .bearer_auth(c.token.as_deref().unwrap())
        .header("content-type", "application/json")
        .body(content.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn fetches(s: &TestServer, outcome: &str) -> u64 {
    s.metric(&format!(
        "atelier_asset_upstream_fetches_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

async fn saves_pull_library_assets_through(s: TestServer, up: Upstream) {
    let alice = s.user("alice").await;
    let cat = up.library(svg(1), "svg");
    let meow = up.library(wav(1), "wav");
    let ball = up.library(png(1), "png");

    // updateProject names a costume only the upstream has: the save succeeds.
    let id = alice.create_project("p", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let saved = alice
        .data(
            UPDATE_PROJECT,
            json!({"id": id, "v": 1, "c": content(&[&cat], &[])}),
        )
        .await;
    assert_eq!(saved["updateProject"]["version"], 2);
    assert_eq!(up.requests(&cat), 1);
    let (status, bytes) = get(&s, &format!("/assets/{cat}")).await;
    assert_eq!((status, bytes), (200, svg(1)));
    assert_eq!(s.count_assets().await, 1);
    assert_eq!(s.count("project_assets").await, 1);

    // The editor's PUT: the costume is stored (no new request), the sound is pulled.
    let (status, body) = editor_put(&s, &alice, &id, &content(&[&cat], &[&meow])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!((up.requests(&cat), up.requests(&meow)), (1, 1));
    let (status, bytes) = get(
        &s,
        &format!("/scratch/assets/internalapi/asset/{meow}/get/"),
    )
    .await;
    assert_eq!((status, bytes), (200, wav(1)));

    // createProject, and the editor's new project, pull too; each asset is stored once.
    let created = alice
        .create_project("q", content(&[&cat, &ball], &[&meow]))
        .await;
    assert_eq!(created["version"], 1);
    assert_eq!(up.requests(&ball), 1);
    let resp = reqwest::Client::new()
        .post(format!("{}/scratch/projects/", s.base_url))
        .bearer_auth(alice.token.as_deref().unwrap())
        .body(content(&[&ball], &[&meow]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.total_requests(), 3);
    assert_eq!(s.count_assets().await, 3);
    // Stored like an upload, with no uploader.
    let owned: i64 = s
        .scalar("SELECT COUNT(*) FROM assets WHERE created_by IS NOT NULL")
        .await;
    assert_eq!(owned, 0);
    assert_eq!(fetches(&s, "ok").await, 3);

    // What the upstream does not have is still MISSING_ASSETS, listing only that one.
    let ghost = "00000000000000000000000000000001.wav";
    let e = alice
        .error(
            UPDATE_PROJECT,
            json!({"id": id, "v": 3, "c": content(&[&cat], &[&meow, ghost])}),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(e["extensions"]["missing"], json!([ghost]));
    let (status, body) = editor_put(&s, &alice, &id, &content(&[], &[ghost])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("MISSING_ASSETS"))
    );
    assert_eq!(body["missing"], json!([ghost]), "{body}");
}

async fn asset_get_misses_pull_through(s: TestServer, up: Upstream) {
    let a = up.library(svg(2), "svg");
    let b = up.library(png(2), "png");
    // Anonymous, as the editor's asset worker asks.
    let (status, bytes) = get(&s, &format!("/assets/{a}")).await;
    assert_eq!((status, bytes), (200, svg(2)));
    let (status, bytes) = get(&s, &format!("/scratch/assets/internalapi/asset/{b}/get/")).await;
    assert_eq!((status, bytes), (200, png(2)));
    // The backpack's md5ext fallback is the same handler; served from the store now, without
    // a new request.
    let (status, _) = get(&s, &format!("/scratch/backpack/{a}")).await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(get(&s, &format!("/assets/{a}")).await.0, 200);
    }
    assert_eq!((up.requests(&a), up.requests(&b)), (1, 1));
    assert_eq!(s.count_assets().await, 2);
    // A HEAD of a miss pulls as well.
    let c = up.library(wav(2), "wav");
    let resp = reqwest::Client::new()
        .head(format!("{}/assets/{c}", s.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests(&c), 1);
    assert_eq!(s.count_assets().await, 3);
}

async fn a_wrong_md5_is_not_stored(s: TestServer, up: Upstream) {
    let alice = s.user("alice").await;
    // The upstream answers other bytes than the name's md5 says.
    let name = format!("{}.svg", md5_hex(&svg(3)));
    up.serve(&name, Answer::Bytes(svg(4)));
    let e = alice
        .error(
            "mutation($c: JSON!) { createProject(input: {title: \"x\", content: $c}) { id } }",
            json!({"c": content(&[&name], &[])}),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(e["extensions"]["missing"], json!([name]));
    assert_eq!(up.requests(&name), 1);
    assert_eq!(s.count_assets().await, 0);
    assert_eq!(s.count("projects").await, 0);
    // Remembered: the GET answers 404 without asking again.
    assert_eq!(get(&s, &format!("/assets/{name}")).await.0, 404);
    assert_eq!(up.requests(&name), 1);
    assert_eq!(fetches(&s, "mismatch").await, 1);
    assert!(s.blob_files().is_empty(), "{:?}", s.blob_files());
}

async fn wrong_formats_and_oversized_bodies_are_refused(s: TestServer, up: Upstream) {
    // PNG bytes under their own md5 but named `.svg`: not what the extension names.
    let png_as_svg = format!("{}.svg", md5_hex(&png(5)));
    up.serve(&png_as_svg, Answer::Bytes(png(5)));
    // Too large, with a Content-Length, and streamed without one.
    let mut big = svg(6);
    big.extend(std::iter::repeat_n(b' ', MAX_BYTES));
    let big_name = format!("{}.svg", md5_hex(&big));
    up.serve(&big_name, Answer::Bytes(big.clone()));
    big.push(b'\n');
    let chunked_name = format!("{}.svg", md5_hex(&big));
    up.serve(&chunked_name, Answer::Chunked(big));
    for name in [&png_as_svg, &big_name, &chunked_name] {
        assert_eq!(get(&s, &format!("/assets/{name}")).await.0, 404, "{name}");
        assert_eq!(up.requests(name), 1, "{name}");
    }
    assert_eq!(fetches(&s, "refused").await, 3);
    assert_eq!(s.count_assets().await, 0);
    assert!(s.blob_files().is_empty(), "{:?}", s.blob_files());
    // Exactly at the limit is fine.
    let mut fits = svg(7);
    fits.extend(std::iter::repeat_n(b' ', MAX_BYTES - fits.len()));
    let name = format!("{}.svg", md5_hex(&fits));
    up.serve(&name, Answer::Chunked(fits.clone()));
    let (status, bytes) = get(&s, &format!("/assets/{name}")).await;
    assert_eq!((status, bytes.len()), (200, MAX_BYTES));
}

async fn upstream_404s_are_remembered(s: TestServer, up: Upstream) {
    let name = "0123456789abcdef0123456789abcdef.png";
    assert_eq!(get(&s, &format!("/assets/{name}")).await.0, 404);
    assert_eq!(get(&s, &format!("/assets/{name}")).await.0, 404);
    let alice = s.user("alice").await;
    let e = alice
        .error(
            "mutation($c: JSON!) { createProject(input: {title: \"x\", content: $c}) { id } }",
            json!({"c": content(&[name], &[])}),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(up.requests(name), 1);
    assert_eq!(fetches(&s, "not_found").await, 1);
    assert!(
        s.metric("atelier_asset_upstream_skipped_total{reason=\"negative_cached\"}")
            .await
            >= 2
    );
}

async fn concurrent_misses_share_one_fetch(s: TestServer, up: Upstream) {
    let bytes = svg(8);
    let name = format!("{}.svg", md5_hex(&bytes));
    // Slow enough that every GET arrives while the one fetch is running.
    up.serve(
        &name,
        Answer::Slow(bytes.clone(), Duration::from_millis(300)),
    );
    let gets = (0..20).map(|i| {
        let path = if i % 2 == 0 {
            format!("/assets/{name}")
        } else {
            format!("/scratch/assets/internalapi/asset/{name}/get/")
        };
        let s = &s;
        async move { get(s, &path).await }
    });
    let answers = futures::future::join_all(gets).await;
    for (status, body) in answers {
        assert_eq!((status, body.as_slice()), (200, bytes.as_slice()));
    }
    assert_eq!(up.requests(&name), 1);
    assert_eq!(s.count_assets().await, 1);

    // A save with several missing assets fetches them at once: about one pause (0.5 s), not
    // five in a row (2.5 s).
    let alice = s.user("alice").await;
    let names: Vec<String> = (10..15)
        .map(|n| {
            let b = svg(n);
            let name = format!("{}.svg", md5_hex(&b));
            up.serve(&name, Answer::Slow(b, Duration::from_millis(500)));
            name
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    alice.create_project("many", content(&refs, &[])).await;
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(up.total_requests(), 6);
}

async fn a_slow_upstream_is_missing_in_bounded_time(s: TestServer, up: Upstream) {
    let alice = s.user("alice").await;
    let id = alice.create_project("p", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = |n| {
        let b = wav(n);
        let name = format!("{}.wav", md5_hex(&b));
        up.serve(&name, Answer::Slow(b, Duration::from_secs(10)));
        name
    };
    let (a, b) = (slow(20), slow(21));
    let bound = Duration::from_millis(TIMEOUT_MS * 2 + 1500);

    let t = Instant::now();
    let (status, body) = editor_put(&s, &alice, &id, &content(&[], &[&a])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("MISSING_ASSETS"))
    );
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());

    let t = Instant::now();
    assert_eq!(get(&s, &format!("/assets/{b}")).await.0, 404);
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    assert_eq!(fetches(&s, "error").await, 2);
    // Remembered: asking again costs no wait.
    let t = Instant::now();
    assert_eq!(get(&s, &format!("/assets/{b}")).await.0, 404);
    assert!(
        t.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((up.requests(&a), up.requests(&b)), (1, 1));
    assert_eq!(s.count_assets().await, 0);
}

async fn without_the_setting_nothing_is_fetched(s: TestServer) {
    let up = Upstream::start().await;
    let name = up.library(svg(30), "svg");
    let alice = s.user("alice").await;
    let e = alice
        .error(
            "mutation($c: JSON!) { createProject(input: {title: \"x\", content: $c}) { id } }",
            json!({"c": content(&[&name], &[])}),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(get(&s, &format!("/assets/{name}")).await.0, 404);
    assert_eq!(up.total_requests(), 0);
    assert_eq!(fetches(&s, "ok").await, 0);
}

/// Anonymous GET misses spend a small budget of upstream fetches; signed-in GETs and saves
/// do not.
mod anonymous_gets_are_rate_bounded {
    use super::*;

    async fn run(backend: Backend) {
        let (s, up) = start_with(
            backend,
            &[("ATELIER_ASSET_UPSTREAM_ANONYMOUS_PER_MINUTE", "2")],
        )
        .await;
        let names: Vec<String> = (40..44).map(|n| up.library(svg(n), "svg")).collect();
        assert_eq!(get(&s, &format!("/assets/{}", names[0])).await.0, 200);
        assert_eq!(get(&s, &format!("/assets/{}", names[1])).await.0, 200);
        // The budget is spent: a plain 404, the upstream is not asked.
        assert_eq!(get(&s, &format!("/assets/{}", names[2])).await.0, 404);
        assert_eq!(up.requests(&names[2]), 0);
        assert_eq!(
            s.metric("atelier_asset_upstream_skipped_total{reason=\"rate_limited\"}")
                .await,
            1
        );
        // A signed-in GET and a save are not counted against it.
        let alice = s.user("alice").await;
        let resp = reqwest::Client::new()
            .get(format!("{}/assets/{}", s.base_url, names[2]))
            .bearer_auth(alice.token.as_deref().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        alice
            .create_project("p", content(&[names[3].as_str()], &[]))
            .await;
        assert_eq!(up.total_requests(), 4);
        // Stored now: anyone gets them without a fetch.
        assert_eq!(get(&s, &format!("/assets/{}", names[3])).await.0, 200);
        assert_eq!(up.total_requests(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}

/// A template that is not an http(s) URL with `{md5ext}` stops the server at start with a
/// message naming the setting (checked before the database is opened, so on any backend).
#[test]
fn a_bad_upstream_template_is_a_config_error() {
    for bad in [
        "ftp://assets.example.org/{md5ext}",
        "https://assets.example.org/internalapi/asset/",
        "not a url {md5ext}",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(crate::harness::BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("ATELIER_DATA_DIR", dir.path())
            .env_remove("DATABASE_URL")
            .env("ATELIER_ASSET_UPSTREAM", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ATELIER_ASSET_UPSTREAM"), "{bad}: {stderr}");
    }
}
