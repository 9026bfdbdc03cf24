//! A running `atelier serve` on a fresh data dir (and, for PostgreSQL, a fresh database):
//! its lifecycle, other processes on the same data, the CLI, and direct looks at its
//! database, metrics and files.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use atelier::service::builtin::BUILTINS;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use super::{BIN, Backend, PgDatabase};

/// A running `atelier serve`.
pub struct TestServer {
    pub backend: Backend,
    pub base_url: String,
    pub root: tempfile::TempDir,
    pub(super) child: Option<Child>,
    pub pg: Option<PgDatabase>,
    /// The database of another `TestServer` this one shares (see `start_other_host`).
    shared_database_url: Option<String>,
    pub(super) extra_env: Vec<(String, String)>,
    /// The binary to run (the test build unless a test picks the release build).
    pub bin: String,
    /// Whether dropping this server checks the invariants on its data (see [`Self::check_invariants`]).
    pub(super) check_on_drop: bool,
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

    /// A second `atelier serve` as if on another host: this server's database (PostgreSQL:
    /// many processes share one database) but a data dir of its own, and this one's extra
    /// environment. The database belongs to `self`: keep `self` alive while the other runs.
    /// (For a second process on the same data dir too, see [`Self::second_process`].)
    pub fn start_other_host(&self) -> TestServer {
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

    pub(super) fn spawn(&mut self) {
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

    /// A second `atelier serve` process on this host: this server's data dir and database,
    /// plus `env`. The first server checks the invariants of the shared data when it is
    /// dropped; the second does not. (For another host, see [`Self::start_other_host`].)
    pub fn second_process(&self, env: &[(&str, &str)]) -> TestServer {
        let (dir, url) = (self.data_dir().display().to_string(), self.database_url());
        let mut all = vec![
            ("ATELIER_DATA_DIR", dir.as_str()),
            ("DATABASE_URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let mut second = TestServer::start_on(self.backend, None, &all);
        second.check_on_drop = false;
        second
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
    pub(super) fn stop_within(&mut self, grace: Duration) {
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

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server running")
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base_url)
    }

    /// Opens a direct database connection (for exact row counts).
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(self.database_url())
            .await
            .expect("connect to test database")
    }

    /// The first column of the one row `sql` returns, read directly from the database.
    pub async fn scalar<T: sea_orm::TryGetable>(&self, sql: &str) -> T {
        let db = self.db().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: no row"));
        let value = row
            .try_get_by_index(0)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = db.close().await;
        value
    }

    /// Rows of `table`, which may go on with a `WHERE`.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A counter from `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} is not exported"))
            .parse()
            .unwrap()
    }

    /// Published blob files, the built-in assets' left out (every data dir has those).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        walk(&self.storage_dir().join("blobs"))
            .into_iter()
            .filter(|p| {
                !BUILTINS
                    .iter()
                    .any(|b| p.file_name().is_some_and(|n| n == b.sha256))
            })
            .collect()
    }

    /// Asset rows, the built-in assets' left out.
    pub async fn count_assets(&self) -> i64 {
        let keys: Vec<String> = BUILTINS.iter().map(|b| format!("'{}'", b.sha256)).collect();
        self.count(&format!(
            "assets WHERE blob_key NOT IN ({})",
            keys.join(",")
        ))
        .await
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
