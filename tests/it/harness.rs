//! Test harness: starts the real `atelier` binary on a random port against a fresh data dir,
//! and for PostgreSQL a fresh database (created from `TEST_DATABASE_URL`, dropped afterwards).
//!
//! Every test proves the storage invariants: dropping a [`TestServer`] stops it cleanly, runs
//! `atelier fsck` on its data and asserts that I1–I3 hold and that no staging file is left
//! once a restart's recovery ran (I4, I7). Tests that break the data on purpose opt out with
//! [`TestServer::skip_invariant_check`].
//!
//! PostgreSQL tests are marked `#[ignore]` unless the build saw `TEST_DATABASE_URL` (or
//! `CI=true`): see `build.rs`. A test that did not run is reported as `ignored`, never `ok`.

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
                super::$name(server).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant")]
            async fn postgres() {
                let server = $crate::harness::TestServer::start($crate::harness::Backend::Postgres).await;
                super::$name(server).await;
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

/// The migrated database every PostgreSQL test database is cloned from. Its name carries a
/// hash of `migration/src` (computed by `build.rs`), so a changed migration gets a new one.
const TEMPLATE: &str = concat!("atelier_test_tpl_", env!("ATELIER_MIGRATIONS_HASH"));
/// The advisory lock under which one process at a time builds the template.
const TEMPLATE_LOCK: i64 = 0x6174_656c_6965_7201;

static TEMPLATE_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// `admin_url` with another database name.
fn database_url_for(admin_url: &str, name: &str) -> String {
    match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL must end in /<database>"),
    }
}

/// Runs a statement that PostgreSQL refuses while another session is still connected to a
/// database it names (55006, e.g. a migrator's backend that is still exiting): retried.
async fn execute_when_free(admin: &DatabaseConnection, sql: &str) {
    for attempt in 0.. {
        match admin.execute_unprepared(sql).await {
            Ok(_) => return,
            Err(e) if attempt < 100 && e.to_string().contains("being accessed by other users") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// Builds the template once per migration set: the first test (of any process) that needs it
/// migrates a scratch database under an advisory lock and renames it into place, so every
/// other test sees either no template or a complete one.
async fn ensure_template(admin_url: &str) {
    TEMPLATE_READY
        .get_or_init(|| build_template(admin_url))
        .await;
}

/// Migrates the template unless it exists. Templates of other migration sets are left alone:
/// test runs of other branches (other migration sets) may be using theirs on the same server.
async fn build_template(admin_url: &str) {
    let mut options = sea_orm::ConnectOptions::new(admin_url.to_owned());
    // One session: the advisory lock belongs to it.
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let admin = Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL is unreachable: {e}"));
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .await
        .expect("take the template lock");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 AS x FROM pg_database WHERE datname = '{TEMPLATE}'"),
        ))
        .await
        .expect("look for the template")
        .is_some();
    if !exists {
        let building = format!("{TEMPLATE}_building");
        // Left over by a run that died while building: nobody else holds the lock.
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop a half-built template");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create the template");
        let db = Database::connect(database_url_for(admin_url, &building))
            .await
            .expect("connect to the template");
        {
            use migration::MigratorTrait;
            migration::Migrator::up(&db, None)
                .await
                .expect("migrate the template");
        }
        let _ = db.close().await;
        execute_when_free(
            &admin,
            &format!("ALTER DATABASE {building} RENAME TO {TEMPLATE}"),
        )
        .await;
    }
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .await
        .expect("release the template lock");
    let _ = admin.close().await;
}

impl PgDatabase {
    /// Creates a migrated database, cloned from the template (migrated once per run).
    /// Only PostgreSQL tests call this, and they are `#[ignore]`d unless the build saw
    /// `TEST_DATABASE_URL` (see `build.rs`): a missing or unreachable PostgreSQL here fails
    /// the test, it never passes without running.
    pub async fn create() -> PgDatabase {
        Self::create_from(true).await
    }

    /// Creates an empty database (for the migrations themselves).
    pub async fn create_empty() -> PgDatabase {
        Self::create_from(false).await
    }

    async fn create_from(migrated: bool) -> PgDatabase {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "TEST_DATABASE_URL is not set, so this PostgreSQL test cannot run{}: set \
                     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres",
                    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                        " (CI=true: PostgreSQL tests must run in CI)"
                    } else {
                        ""
                    }
                )
            });
        if migrated {
            ensure_template(&admin_url).await;
        }
        let name = format!("atelier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL is unreachable: {e}"));
        if migrated {
            // Another run may have dropped the template meanwhile (older harnesses drop the
            // templates of other migration sets): then it is built again.
            for attempt in 0.. {
                let sql = format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}");
                match admin.execute_unprepared(&sql).await {
                    Ok(_) => break,
                    Err(e) if attempt < 100 && e.to_string().contains("does not exist") => {
                        build_template(&admin_url).await
                    }
                    Err(e)
                        if attempt < 100
                            && e.to_string().contains("being accessed by other users") =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
        } else {
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
        }
        let _ = admin.close().await;
        PgDatabase {
            url: database_url_for(&admin_url, &name),
            admin_url,
            name,
        }
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
    /// Whether dropping this server checks the invariants on its data (see [`Self::check_invariants`]).
    check_on_drop: bool,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, &[]).await
    }

    /// Starts with extra environment (e.g. limits).
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> TestServer {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        Self::start_on(backend, pg, env)
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
            check_on_drop: true,
        };
        server.spawn();
        server
    }

    /// This test leaves broken data on purpose: dropping the server does not run fsck.
    pub fn skip_invariant_check(&mut self) {
        self.check_on_drop = false;
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
            // `self` checks the shared database when it drops.
            check_on_drop: false,
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

    /// A second `atelier serve` process on this server's data dir and database. The first
    /// server checks the invariants of the shared data when it is dropped; the sibling does not.
    pub fn sibling(&self, env: &[(&str, &str)]) -> TestServer {
        let (dir, url) = (self.data_dir().display().to_string(), self.database_url());
        let mut all = vec![
            ("ATELIER_DATA_DIR", dir.as_str()),
            ("DATABASE_URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let mut sibling = TestServer::start_on(self.backend, None, &all);
        sibling.check_on_drop = false;
        sibling
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

    /// `atelier fsck` on the live data finds nothing broken.
    pub fn fsck_ok(&self) {
        let (ok, out) = self.cli(&["fsck"]);
        assert!(ok, "fsck found violations:\n{out}");
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

    /// SIGTERM, and SIGKILL if the process has not exited after `grace`.
    fn stop_within(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let started = std::time::Instant::now();
            while matches!(child.try_wait(), Ok(None)) {
                if started.elapsed() > grace {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The invariants every test leaves behind, checked with the server stopped: `atelier
    /// fsck` finds I1–I3 intact, and no staging file remains after a restart's recovery (I7;
    /// with I4 this means no failed write left a file behind). A cleanly stopped server may
    /// leave a `.pending` file (a commit whose outcome it could not learn, docs/storage.md):
    /// fsck reports it as `STAGING` until the next start settles it, so then recovery runs
    /// once (a start and a clean stop) and everything is checked again.
    pub fn check_invariants(&mut self) -> Result<(), String> {
        self.stop_within(Duration::from_secs(20));
        // Directly on the database (a test may have routed the server through a proxy) and
        // without fault injection.
        let direct = |s: &TestServer, cmd: &mut Command| {
            cmd.env_remove("FAILPOINTS");
            if let Some(pg) = &s.pg {
                cmd.env("DATABASE_URL", &pg.url);
            }
        };
        // (exit ok, violation lines, everything it printed)
        let fsck = |s: &TestServer| {
            let mut cmd = s.command();
            direct(s, &mut cmd);
            let out = cmd.arg("fsck").output().expect("run atelier fsck");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<String> = stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
            let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            (out.status.success(), lines, all)
        };
        let (ok, lines, out) = fsck(self);
        if ok && self.staging_files().is_empty() {
            return Ok(());
        }
        let broken: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with("STAGING "))
            .collect();
        if !broken.is_empty() || (!ok && lines.is_empty()) {
            return Err(format!(
                "after the test, `atelier fsck` finds broken invariants:\n{out}"
            ));
        }
        // Only staged files are left: what the next start's recovery must settle.
        let (saved_env, saved_child) = (self.extra_env.clone(), self.child.take());
        self.remove_env("FAILPOINTS");
        if let Some(pg) = &self.pg {
            let url = pg.url.clone();
            self.set_env("DATABASE_URL", &url);
        }
        self.spawn();
        self.stop_within(Duration::from_secs(20));
        (self.extra_env, self.child) = (saved_env, saved_child);
        let (ok, _, after) = fsck(self);
        let left = self.staging_files();
        if !ok || !left.is_empty() {
            return Err(format!(
                "after the test and a restart's recovery, fsck says:\n{after}\nstaging files left: {left:?}\n(before the recovery fsck said:\n{out})"
            ));
        }
        Ok(())
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

    /// A client for the local user `name` (a student, created if absent) with a new token.
    pub async fn user(&self, name: &str) -> Client {
        self.user_with_role(name, "student").await
    }

    pub async fn user_with_role(&self, name: &str, role: &str) -> Client {
        let token = self.token_for(name, role).await;
        Client::new(self.graphql_url(), Some(token))
    }

    /// What `atelier token create --user NAME --role ROLE` does, written directly into the
    /// database (no process per user; cli.rs tests the command itself): the local user (its
    /// role set), and a new token of which only the SHA-256 (hex) is stored.
    pub async fn token_for(&self, name: &str, role: &str) -> String {
        use entity::{api_token, user};
        use sea_orm::{
            ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::OnConflict,
        };
        use sha2::Digest;

        let db = self.db().await;
        let now = chrono::Utc::now();
        user::Entity::insert(user::ActiveModel {
            provider: Set("local".to_owned()),
            subject: Set(name.to_owned()),
            display_name: Set(name.to_owned()),
            role: Set(role.to_owned()),
            created_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::columns([user::Column::Provider, user::Column::Subject])
                .update_column(user::Column::Role)
                .to_owned(),
        )
        .exec_without_returning(&db)
        .await
        .expect("insert user");
        let user_id = user::Entity::find()
            .filter(user::Column::Provider.eq("local"))
            .filter(user::Column::Subject.eq(name))
            .one(&db)
            .await
            .expect("read user")
            .expect("the user row")
            .id;
        if self.backend == Backend::Sqlite {
            // A role may have changed behind the server's back: tell its token cache, as
            // `atelier token create` does (see the server's `auth.epoch`).
            let stamp = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(self.data_dir().join("auth.epoch"), stamp).expect("auth epoch");
        }
        let token = format!("atl_test_{}", uuid::Uuid::new_v4().simple());
        api_token::Entity::insert(api_token::ActiveModel {
            user_id: Set(user_id),
            token_hash: Set(hex::encode(sha2::Sha256::digest(token.as_bytes()))),
            name: Set("test".to_owned()),
            created_at: Set(now),
            expires_at: Set(None),
            ..Default::default()
        })
        .exec_without_returning(&db)
        .await
        .expect("insert token");
        let _ = db.close().await;
        token
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
        walk(&self.storage_dir().join("blobs"))
    }

    /// Files left in staging.
    pub fn staging_files(&self) -> Vec<PathBuf> {
        walk(&self.storage_dir().join("staging"))
    }

    /// Where blobs and staging are: the data dir, unless a test moved `ATELIER_DATA_DIR`.
    pub fn storage_dir(&self) -> PathBuf {
        self.extra_env
            .iter()
            .find(|(k, _)| k == "ATELIER_DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| self.data_dir())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that already failed is not checked (a panic inside a panic aborts).
        if !self.check_on_drop || std::thread::panicking() {
            self.kill();
            return;
        }
        if let Err(report) = self.check_invariants() {
            panic!(
                "{report}\n(a test that breaks the data on purpose calls `skip_invariant_check()`)"
            );
        }
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

    /// The same user, sending `Idempotency-Key: key` with every request.
    pub fn with_key(&self, key: &str) -> KeyedClient {
        KeyedClient {
            client: self.clone(),
            key: key.to_owned(),
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

/// A client whose requests carry an `Idempotency-Key`.
pub struct KeyedClient {
    pub client: Client,
    pub key: String,
}

impl KeyedClient {
    /// (status, whether the answer was a replay, body)
    pub async fn call(&self, query: &str, variables: Value) -> (u16, bool, Value) {
        let resp = self
            .client
            .request()
            .header("Idempotency-Key", &self.key)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        (status, replayed, resp.json().await.expect("JSON body"))
    }

    pub async fn upload(&self, bytes: Vec<u8>, asset_type: &str) -> (u16, bool, Value) {
        let resp = self
            .client
            .request()
            .header("Idempotency-Key", &self.key)
            .multipart(Client::upload_form(bytes, asset_type, None))
            .send()
            .await
            .expect("upload request");
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        (status, replayed, resp.json().await.expect("JSON body"))
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

pub use crate::api::UPLOAD_ASSET as UPLOAD;

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
