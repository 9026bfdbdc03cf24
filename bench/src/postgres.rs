//! The local PostgreSQL (127.0.0.1:5432, user `postgres`, trust auth), reached through `psql`:
//! throwaway databases that are dropped when their guard goes out of scope, on errors and
//! ctrl-c included. The harness never touches a database it did not create.

use std::process::Stdio;

use rand::Rng;
use tokio::process::Command;

use crate::error::{Context, Result, bail};

pub const HOST: &str = "127.0.0.1";
pub const PORT: &str = "5432";
pub const USER: &str = "postgres";

/// Connections left for other sessions (the other engineer's tests, `psql` itself).
const CONNECTION_MARGIN: i64 = 8;

/// A database created for this run; dropped (`WITH (FORCE)`) on drop.
pub struct TempDatabase {
    name: String,
    dropped: bool,
}

impl TempDatabase {
    /// Creates `<prefix>_<random hex>`.
    pub async fn create(prefix: &str) -> Result<TempDatabase> {
        let name = format!("{prefix}_{:016x}", rand::rng().random::<u64>());
        psql("postgres", &format!("CREATE DATABASE {name}"))
            .await
            .context(format_args!("creating database {name}"))?;
        Ok(TempDatabase {
            name,
            dropped: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL the server connects with.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@{HOST}:{PORT}/{}", self.name)
    }

    /// Drops the database now, disconnecting whoever still uses it.
    pub fn drop_now(&mut self) -> Result<()> {
        if self.dropped {
            return Ok(());
        }
        self.dropped = true;
        // Synchronous on purpose: this also runs from `Drop` while a runtime is shutting down.
        let out = std::process::Command::new("psql")
            .args(connection_args("postgres"))
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "dropping database {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if let Err(e) = self.drop_now() {
            eprintln!("warning: {e}");
        }
    }
}

fn connection_args(db: &str) -> [&str; 10] {
    ["-h", HOST, "-p", PORT, "-U", USER, "-d", db, "-X", "-qAt"]
}

/// Runs one SQL command in `db` and returns its unaligned output.
pub async fn psql(db: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args(connection_args(db))
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running psql (is the PostgreSQL client installed?)")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// How many more connections this run may open without crowding out other sessions.
pub async fn spare_connections() -> Result<u32> {
    let out = psql(
        "postgres",
        "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity",
    )
    .await
    .context("counting PostgreSQL connections")?;
    let free: i64 = out
        .parse()
        .context(format_args!("unexpected psql output {out:?}"))?;
    Ok((free - CONNECTION_MARGIN).max(1) as u32)
}
