//! Test harness: starts the real `atelier` binary on a random port against a fresh data dir,
//! and for PostgreSQL a fresh database (created from `TEST_DATABASE_URL`, dropped afterwards).

#![allow(dead_code)] // helpers used by some scenarios only

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_atelier");

/// The release binary for tests that must drive it (crash tests), built by `.ci/run` before
/// `cargo test`; falls back to the test build, saying so.
pub fn release_bin() -> String {
    let release = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/atelier");
    let fresh = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (fresh(release), fresh(BIN)) {
        (Some(r), Some(d)) if r >= d => release.to_owned(),
        _ => {
            eprintln!(
                "!!! target/release/atelier missing or older than the test build: using {BIN} (run `cargo build --release` first)"
            );
            BIN.to_owned()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario (an `async fn(TestServer)` in the calling module) on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let server = $crate::harness::TestServer::start($crate::harness::Backend::Sqlite).await;
                super::$name(server.expect("sqlite always runs")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(server) = $crate::harness::TestServer::start($crate::harness::Backend::Postgres).await {
                    super::$name(server).await;
                }
            }
        }
    )*};
}

/// A fresh PostgreSQL database, dropped (forcibly) when this value is dropped.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Creates a database, or returns None (loudly) when PostgreSQL tests are not configured.
    /// With `CI=true` a missing or unreachable PostgreSQL fails the test instead.
    pub async fn create() -> Option<PgDatabase> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
            assert!(
                !ci,
                "CI=true but TEST_DATABASE_URL is not set: PostgreSQL tests must run in CI"
            );
            eprintln!(
                "!!! SKIPPED PostgreSQL variant: set TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres to run it"
            );
            return None;
        };
        let name = format!("atelier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL is unreachable: {e}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_DATABASE_URL must end in /<database>"),
        };
        Some(PgDatabase {
            url,
            admin_url,
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await: do it on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A running `atelier serve`.
pub struct TestServer {
    pub backend: Backend,
    pub base_url: String,
    pub root: tempfile::TempDir,
    child: Option<Child>,
    pub pg: Option<PgDatabase>,
    /// The database of another `TestServer` this one shares (see `start_sibling`).
    shared_database_url: Option<String>,
    extra_env: Vec<(String, String)>,
    /// The binary to run (the test build unless a test picks the release build).
    pub bin: String,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, &[]).await
    }

    /// Starts with extra environment (e.g. limits).
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Option<TestServer> {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await?),
        };
        Some(Self::start_on(backend, pg, env))
    }

    /// Starts on a given database (PostgreSQL tests that need the name before the start).
    pub fn start_on(backend: Backend, pg: Option<PgDatabase>, env: &[(&str, &str)]) -> TestServer {
        let mut server = TestServer {
            backend,
            base_url: String::new(),
            root: tempfile::tempdir().expect("tempdir"),
            child: None,
            pg,
            shared_database_url: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bin: BIN.to_owned(),
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A second `atelier serve` process on this server's database (PostgreSQL: many processes
    /// share one database), with a data dir of its own and this one's extra environment. The
    /// database belongs to `self`: keep `self` alive while the sibling runs.
    pub fn start_sibling(&self) -> TestServer {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "only PostgreSQL serves many processes"
        );
        let mut server = TestServer {
            backend: self.backend,
            base_url: String::new(),
            root: tempfile::tempdir().expect("tempdir"),
            child: None,
            pg: None,
            shared_database_url: Some(self.database_url()),
            extra_env: self.extra_env.clone(),
            bin: self.bin.clone(),
        };
        server.spawn();
        server
    }

    pub fn database_url(&self) -> String {
        if let Some(url) = &self.shared_database_url {
            return url.clone();
        }
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir().join("atelier.db").display()
            ),
        }
    }

    /// A command for the `atelier` binary pointed at this server's data.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("ATELIER_DATA_DIR", self.data_dir())
            .env("DATABASE_URL", self.database_url())
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("ATELIER_LISTEN");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&mut self) {
        // The default SQLite database lives here even when a test moves ATELIER_DATA_DIR.
        std::fs::create_dir_all(self.data_dir()).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("server.log"))
            .expect("server log");
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::from(log)
            })
            .spawn()
            .expect("spawn atelier serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url);
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(self.root.path().join("server.log"))
                    .unwrap_or_default();
                panic!("server did not start; log:\n{log}")
            });
        self.base_url = url;
        self.child = Some(child);
    }

    /// Restarts the server on the same data (new port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts again after a kill or crash (the old process is reaped first).
    pub fn start_again(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Restarts with fault injection (`FAILPOINTS`, see the `fail` crate's syntax).
    pub fn restart_with_failpoints(&mut self, failpoints: &str) {
        self.stop();
        self.set_env("FAILPOINTS", failpoints);
        self.start_again();
    }

    /// Sets (or replaces) an environment variable for later starts and CLI runs.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    pub fn remove_env(&mut self, key: &str) {
        self.extra_env.retain(|(k, _)| k != key);
    }

    /// Runs `atelier <args>` on this server's data; (exit ok, stdout, stderr).
    pub fn cli_full(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.command();
        cmd.env_remove("FAILPOINTS");
        let out = cmd.args(args).output().expect("run atelier");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `atelier <args>` on this server's data; (exit ok, stdout).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = self.command();
        cmd.env_remove("FAILPOINTS");
        let out = cmd.args(args).output().expect("run atelier");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server running")
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base_url)
    }

    /// A client without a token.
    pub fn anonymous(&self) -> Client {
        Client::new(self.graphql_url(), None)
    }

    /// Runs `atelier token create` and returns a client for that user.
    pub fn user(&self, name: &str) -> Client {
        self.user_with_role(name, "student")
    }

    pub fn user_with_role(&self, name: &str, role: &str) -> Client {
        let out = self
            .command()
            .args(["token", "create", "--user", name, "--role", role])
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Client::new(self.graphql_url(), Some(token))
    }

    /// Opens a direct database connection (for exact row counts).
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(self.database_url())
            .await
            .expect("connect to test database")
    }

    pub async fn count(&self, table: &str) -> i64 {
        let db = self.db().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        let _ = db.close().await;
        n
    }

    /// Published blob files.
    /// A counter from `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} is not exported"))
            .parse()
            .unwrap()
    }

    pub fn blob_files(&self) -> Vec<PathBuf> {
        walk(&self.data_dir().join("blobs"))
    }

    /// Files left in staging.
    pub fn staging_files(&self) -> Vec<PathBuf> {
        walk(&self.data_dir().join("staging"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A GraphQL client over real HTTP.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
}

impl Client {
    pub fn new(url: String, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            url,
            token,
        }
    }

    pub fn request(&self) -> reqwest::RequestBuilder {
        let req = self.http.post(&self.url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The whole response body.
    pub async fn raw(&self, query: &str, variables: Value) -> (reqwest::StatusCode, Value) {
        let resp = self
            .request()
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        (status, body)
    }

    /// `data`, asserting there are no errors.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self.raw(query, variables).await;
        assert!(
            body.get("errors").is_none() && status.is_success(),
            "unexpected errors ({status}): {body:#}"
        );
        body["data"].clone()
    }

    /// The first error, asserting there is one.
    pub async fn error(&self, query: &str, variables: Value) -> Value {
        let (_, body) = self.raw(query, variables).await;
        body["errors"][0]
            .clone()
            .as_object()
            .cloned()
            .map(Value::Object)
            .unwrap_or_else(|| panic!("expected an error, got {body:#}"))
    }

    pub async fn create_project(&self, title: &str, content: Value) -> Value {
        self.data(
            "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id title version } }",
            json!({ "t": title, "c": content }),
        )
        .await["createProject"]
            .clone()
    }
}

/// The smallest valid Scratch 3 project.
pub fn empty_project() -> Value {
    json!({ "targets": [], "meta": { "semver": "3.0.0" } })
}

/// The error's `extensions.code`.
pub fn code(err: &Value) -> &str {
    err["extensions"]["code"].as_str().unwrap_or("<none>")
}

pub const UPLOAD: &str = "mutation($f: Upload!, $t: AssetType!, $m: String) { uploadAsset(input: {file: $f, assetType: $t, md5: $m}) { created asset { id md5 assetType sha256 size contentType url } } }";

impl Client {
    /// The multipart form of an upload, per the GraphQL multipart request spec.
    pub fn upload_form(
        bytes: Vec<u8>,
        asset_type: &str,
        md5: Option<&str>,
    ) -> reqwest::multipart::Form {
        let operations =
            json!({ "query": UPLOAD, "variables": { "f": null, "t": asset_type, "m": md5 } });
        reqwest::multipart::Form::new()
            .text("operations", operations.to_string())
            .text("map", json!({ "0": ["variables.f"] }).to_string())
            .part(
                "0",
                reqwest::multipart::Part::bytes(bytes).file_name("asset.bin"),
            )
    }

    /// Uploads bytes; returns (status, body).
    pub async fn upload_raw(
        &self,
        bytes: Vec<u8>,
        asset_type: &str,
        md5: Option<&str>,
    ) -> (reqwest::StatusCode, Value) {
        let form = Self::upload_form(bytes, asset_type, md5);
        let resp = self
            .request()
            .multipart(form)
            .send()
            .await
            .expect("upload request");
        let status = resp.status();
        (status, resp.json().await.expect("JSON body"))
    }

    /// Uploads and asserts success: the `uploadAsset` payload.
    pub async fn upload(&self, bytes: Vec<u8>, asset_type: &str) -> Value {
        let (status, body) = self.upload_raw(bytes, asset_type, None).await;
        assert!(
            status.is_success() && body.get("errors").is_none(),
            "upload failed ({status}): {body:#}"
        );
        body["data"]["uploadAsset"].clone()
    }
}

/// A small valid SVG whose bytes vary with `n`.
pub fn svg(n: usize) -> Vec<u8> {
    format!("<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{n}\" height=\"1\"><rect/></svg>").into_bytes()
}

/// PNG magic plus `n`-dependent filler.
pub fn png(n: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend(format!("filler-{n}").bytes());
    b
}

/// A RIFF/WAVE header plus `n`-dependent filler.
pub fn wav(n: usize) -> Vec<u8> {
    let mut b = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
    b.extend(format!("pcm-{n}").bytes());
    b
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}
