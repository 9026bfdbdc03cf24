//! What the server is compared with, measured in the same run on the same machine: `pgbench`
//! against the same PostgreSQL (reads, distinct-row writes, one hot row), and `md5sum` +
//! `sha256sum` over the same bytes an upload carries.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::Command;

use crate::{
    error::{Context, Result, bail},
    postgres::{self, TempDatabase},
};

/// `pgbench -i -s 10`: 1M accounts, larger than shared_buffers' hot set yet quick to build.
const SCALE: u32 = 10;

/// Bytes each hashing tool reads per measurement (see [`hash_throughput`]).
const HASH_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// The contended-write script: one row, locked, read and bumped, as `updateProject` does.
const HOT_ROW_SCRIPT: &str = "BEGIN;\n\
    SELECT abalance FROM pgbench_accounts WHERE aid = 1 FOR UPDATE;\n\
    UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1;\n\
    COMMIT;\n";

/// The pgbench transaction a scenario is compared with.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// `-S`: one primary-key SELECT.
    SelectOnly,
    /// `-N`: UPDATE one random account, SELECT it, INSERT into history.
    SimpleUpdate,
    /// [`HOT_ROW_SCRIPT`].
    HotRow,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::SelectOnly => "pgbench -S",
            Workload::SimpleUpdate => "pgbench -N",
            Workload::HotRow => "pgbench hot row",
        }
    }
}

/// One pgbench measurement.
#[derive(Clone, Debug)]
pub struct PgbenchResult {
    pub tps: f64,
    /// May be fewer than the scenario's clients when PostgreSQL has no spare connections.
    pub clients: u32,
}

/// pgbench tables in a database of their own, dropped with this value.
pub struct Pgbench {
    db: TempDatabase,
    script: PathBuf,
}

impl Pgbench {
    /// Creates `atelier_pgbench_<random>` and fills it with `pgbench -i`.
    pub async fn init(scratch: &Path) -> Result<Pgbench> {
        let db = TempDatabase::create("atelier_pgbench").await?;
        let script = scratch.join("hot_row.sql");
        tokio::fs::write(&script, HOT_ROW_SCRIPT)
            .await
            .context("writing the hot-row pgbench script")?;
        let scale = SCALE.to_string();
        run_pgbench(
            &["-i", "-q", "-s", &scale, db.name()],
            Duration::from_secs(300),
        )
        .await
        .context("pgbench -i")?;
        Ok(Pgbench { db, script })
    }

    /// Runs `workload` with up to `clients` connections for `duration`.
    pub async fn run(
        &self,
        workload: Workload,
        clients: u32,
        duration: Duration,
    ) -> Result<PgbenchResult> {
        let clients = clients.min(postgres::spare_connections().await?).max(2);
        let secs = duration.as_secs().max(1).to_string();
        let clients_arg = clients.to_string();
        let mut args = vec!["-M", "prepared", "-c", &clients_arg, "-j", "2", "-T", &secs];
        let script = self.script.to_string_lossy();
        match workload {
            Workload::SelectOnly => args.push("-S"),
            Workload::SimpleUpdate => args.push("-N"),
            Workload::HotRow => args.extend(["-f", &script]),
        }
        args.push(self.db.name());
        let stdout = run_pgbench(&args, duration + Duration::from_secs(120))
            .await
            .context(workload.label())?;
        let tps =
            parse_tps(&stdout).context(format_args!("no tps line in pgbench output:\n{stdout}"))?;
        Ok(PgbenchResult { tps, clients })
    }
}

async fn run_pgbench(args: &[&str], limit: Duration) -> Result<String> {
    let child = Command::new("pgbench")
        .args([
            "-h",
            postgres::HOST,
            "-p",
            postgres::PORT,
            "-U",
            postgres::USER,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting pgbench (is it installed?)")?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .context("pgbench did not finish in time")?
        .context("waiting for pgbench")?;
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `tps = …` figure, preferring the one without connection set-up time (pgbench ≤ 13
/// printed two lines; later ones print one).
fn parse_tps(output: &str) -> Option<f64> {
    let tps_lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tps = "))
        .collect();
    let line = tps_lines
        .iter()
        .find(|l| l.contains("without initial connection") || l.contains("excluding"))
        .or(tps_lines.first())?;
    line["tps = ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Hashing throughput of `md5sum` then `sha256sum` over one file, in bytes per second: the
/// server computes both digests of an upload in one pass, so their times add up. A small file
/// is named several times on one command line (at least [`HASH_MIN_BYTES`] in all), so that
/// process start-up does not pass for hashing time.
pub async fn hash_throughput(file: &Path) -> Result<f64> {
    let size = tokio::fs::metadata(file)
        .await
        .context(format_args!("reading {}", file.display()))?
        .len()
        .max(1);
    let repeat = HASH_MIN_BYTES.div_ceil(size) as usize;
    let files = vec![file; repeat];
    // Warm the page cache so neither tool pays for the first read.
    time_tool("md5sum", &files[..1]).await?;
    let md5 = time_tool("md5sum", &files).await?;
    let sha = time_tool("sha256sum", &files).await?;
    Ok((size * repeat as u64) as f64 / (md5 + sha).as_secs_f64())
}

async fn time_tool(tool: &str, files: &[&Path]) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(tool)
        .args(files)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context(format_args!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} failed: {status}");
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn parses_current_pgbench_output() {
        let out = "latency average = 2.982 ms\ninitial connection time = 289.703 ms\n\
                   tps = 21463.038427 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(21463.038427));
    }

    #[test]
    fn parses_old_pgbench_output() {
        let out = "tps = 100.5 (including connections establishing)\n\
                   tps = 120.25 (excluding connections establishing)\n";
        assert_eq!(parse_tps(out), Some(120.25));
    }

    #[test]
    fn no_tps_line() {
        assert_eq!(parse_tps("pgbench: error\n"), None);
    }
}
