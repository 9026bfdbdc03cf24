//! The server under test: building it with cargo, starting `atelier serve` on port 0 with a
//! fresh store, waiting until it is ready, creating tokens with its CLI, and stopping it.
//! A started server is killed when its [`Server`] is dropped, so an error or ctrl-c never
//! leaves one behind.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use reqwest::StatusCode;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};

use crate::{
    client::Api,
    error::{Context, Error, Result, bail},
};

/// Pool size for 64–100 clients: enough connections to keep both cores busy, well under
/// PostgreSQL's `max_connections` (100 here) which other sessions share.
const DB_MAX_CONNECTIONS: &str = "40";
/// 256 MiB: the 50 MiB and 200 MiB uploads must be accepted (the default is 10 MiB).
const MAX_ASSET_BYTES: &str = "268435456";
/// Startup includes migrations; PostgreSQL on a busy machine can take a while.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const LISTENING: &str = "Atelier is listening on ";

/// Where the workspace and its release binary are.
pub struct Workspace {
    root: PathBuf,
    bin: PathBuf,
}

impl Workspace {
    /// The workspace this harness was built in.
    pub fn locate() -> Workspace {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest).to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Workspace {
            bin: target.join("release").join("atelier"),
            root,
        }
    }

    /// `cargo build --release -p atelier --bin atelier` (cheap when up to date).
    pub async fn build_server(&self) -> Result<()> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut child = Command::new(cargo)
            .args(["build", "--release", "-p", "atelier", "--bin", "atelier"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            // Its own process group, so that an interrupted build can be stopped whole:
            // killing cargo alone would leave its rustc processes running.
            .process_group(0)
            .spawn()
            .context("running cargo")?;
        let mut group = ProcessGroup {
            pgid: child.id().and_then(|pid| i32::try_from(pid).ok()),
        };
        let status = child.wait().await.context("waiting for cargo")?;
        group.disarm();
        if !status.success() {
            bail!("cargo build of the server failed ({status})");
        }
        Ok(())
    }

    fn command(&self, store: &Store) -> Command {
        let mut cmd = Command::new(&self.bin);
        store.apply(&mut cmd);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }
}

/// Where a server keeps its data: a data dir, and PostgreSQL or SQLite inside the data dir.
#[derive(Clone, Debug)]
pub struct Store {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// More environment for `serve` only (the fake OpenID Provider's settings), not for the
    /// CLI commands run against the store.
    pub serve_env: Vec<(String, String)>,
}

impl Store {
    fn apply(&self, cmd: &mut Command) {
        cmd.env("ATELIER_DATA_DIR", &self.data_dir)
            .env("ATELIER_DB_MAX_CONNECTIONS", DB_MAX_CONNECTIONS)
            .env("ATELIER_MAX_ASSET_BYTES", MAX_ASSET_BYTES)
            // B1 saves for minutes into one backpack: the quota is not what it measures.
            .env("ATELIER_BACKPACK_MAX_ITEMS", "100000000")
            .env("ATELIER_BACKPACK_MAX_BYTES", "1000000000000")
            .env("RUST_LOG", "warn")
            // Settings from the developer's shell must not change what is measured.
            .env_remove("ATELIER_LISTEN")
            .env_remove("ATELIER_LOG_FORMAT");
        match &self.database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
    }
}

/// A running `atelier serve`.
pub struct Server {
    child: Child,
    pid: u32,
    base: String,
    log: PathBuf,
    drain: JoinHandle<()>,
}

impl Server {
    /// Starts `atelier serve --listen 127.0.0.1:0` and returns once it prints its address.
    /// Its stderr (the log) goes to `log`.
    pub async fn start(ws: &Workspace, store: &Store, log: &Path) -> Result<Server> {
        let log_file = std::fs::File::create(log)
            .context(format_args!("creating the server log {}", log.display()))?;
        let mut child = ws
            .command(store)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(store.serve_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context(format_args!("starting {}", ws.bin.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(LISTENING) {
                    return Ok(rest.split_whitespace().next().map(str::to_owned));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let base = match address {
            Ok(Ok(Some(base))) => base,
            Ok(Ok(None)) => bail!("the server exited before listening; log:\n{}", tail(log)),
            Ok(Err(e)) => bail!("reading the server's stdout: {e}"),
            Err(_) => bail!("the server did not listen within {START_TIMEOUT:?}"),
        };
        Ok(Server {
            child,
            pid,
            base,
            log: log.to_owned(),
            drain: tokio::spawn(drain(lines)),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls `GET /readyz` until it answers 200; returns how long that took.
    pub async fn wait_ready(&self, api: &Api, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Ok((StatusCode::OK, _)) = api.get("/readyz").await {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("/readyz not 200 after {limit:?}; log:\n{}", tail(&self.log));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited in time.
    pub async fn stop(mut self) -> Result<()> {
        self.drain.abort();
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        signal::kill(pid, signal::Signal::SIGTERM).context("signalling the server")?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for the server")?;
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                Err(Error::msg(format!(
                    "the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it"
                )))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.drain.abort();
        // Also covered by kill_on_drop; explicit so the intent is visible.
        let _ = self.child.start_kill();
    }
}

/// Terminates a whole process group when dropped, unless disarmed once its leader exited.
struct ProcessGroup {
    pgid: Option<i32>,
}

impl ProcessGroup {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = signal::killpg(Pid::from_raw(pgid), signal::Signal::SIGTERM);
        }
    }
}

/// Keeps reading the server's stdout so it never blocks on a full pipe.
async fn drain(mut lines: tokio::io::Lines<BufReader<ChildStdout>>) {
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// `atelier ARGS…` against `store`; returns what it printed.
pub async fn cli(ws: &Workspace, store: &Store, args: &[&str]) -> Result<String> {
    let out = ws
        .command(store)
        .args(args)
        .output()
        .await
        .context(format!("running `atelier {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`atelier {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `atelier token create --user NAME --role ROLE` against `store`; returns the token.
pub async fn create_token(ws: &Workspace, store: &Store, user: &str, role: &str) -> Result<String> {
    let out = ws
        .command(store)
        .args(["token", "create", "--user", user, "--role", role])
        .output()
        .await
        .context("running `atelier token create`")?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || token.is_empty() {
        bail!(
            "`atelier token create --user {user}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(token)
}

/// The end of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}
