//! Result rows, their Markdown tables, the one-line verdicts, and the facts about the run
//! (date, commit, machine) that make a table comparable with another.

use std::{fmt, fmt::Write, time::Duration};

/// Which database the server ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        })
    }
}

/// One measured case of a scenario (R2 has one row per page size, M1 one per phase, …).
#[derive(Clone, Debug)]
pub struct Row {
    pub backend: Backend,
    pub id: &'static str,
    pub case: String,
    /// The headline figure with its unit (`"8123 req/s"`, `"23.1 MB"`).
    pub value: String,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub errors: Option<u64>,
    pub peak_rss: Option<u64>,
    pub stmts_per_req: Option<f64>,
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: bool,
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(backend: Backend, id: &'static str, case: impl Into<String>) -> Row {
        Row {
            backend,
            id,
            case: case.into(),
            value: "–".into(),
            p50: None,
            p99: None,
            errors: None,
            peak_rss: None,
            stmts_per_req: None,
            baseline: None,
            ratio: None,
            target: String::new(),
            met: false,
            notes: Vec::new(),
        }
    }

    /// A row for a scenario that could not be run at all.
    pub fn failed(backend: Backend, id: &'static str, error: impl fmt::Display) -> Row {
        let mut row = Row::new(backend, id, "(did not run)");
        row.target = "runs".into();
        row.notes.push(format!("error: {error}"));
        row
    }
}

/// A Markdown table of `rows`.
pub fn table<'a>(rows: impl IntoIterator<Item = &'a Row>) -> String {
    let mut out = String::from(
        "| id | backend | case | value | p50 | p99 | errors | peak RSS | stmts/req | baseline | ratio | target | met |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.backend,
            r.case,
            r.value,
            opt(r.p50.map(ms)),
            opt(r.p99.map(ms)),
            opt(r.errors.map(|e| e.to_string())),
            opt(r.peak_rss.map(mb)),
            opt(r.stmts_per_req.map(|s| format!("{s:.2}"))),
            opt(r.baseline.clone()),
            opt(r.ratio.map(|x| format!("{x:.2}"))),
            r.target,
            if r.met { "met" } else { "**not met**" },
        );
    }
    out
}

/// One line per row: verdict and notes.
pub fn verdicts<'a>(rows: impl IntoIterator<Item = &'a Row>) -> String {
    let mut out = String::new();
    for r in rows {
        let verdict = if r.met { "met" } else { "NOT MET" };
        let _ = write!(
            out,
            "- {} {} {}: {verdict} ({})",
            r.id, r.backend, r.case, r.target
        );
        if !r.notes.is_empty() {
            let _ = write!(out, " — {}", r.notes.join("; "));
        }
        out.push('\n');
    }
    out
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Bytes as decimal megabytes.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A rate with a sensible number of digits.
pub fn rate(value: f64, unit: &str) -> String {
    if value >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// When, what and where: the header of a results file.
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub cores: usize,
    pub memory: String,
}

impl RunInfo {
    /// Best effort: a fact that cannot be read is shown as "unknown".
    pub fn collect() -> RunInfo {
        let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"]);
        let commit = match (commit, dirty) {
            (Some(c), Some(d)) if !d.is_empty() => format!("{c} (plus uncommitted changes)"),
            (Some(c), _) => c,
            (None, _) => "unknown".into(),
        };
        RunInfo {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: mem_total().unwrap_or_else(|| "unknown".into()),
        }
    }
}

impl fmt::Display for RunInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "date {}, commit {}, {} cores, {} memory",
            self.date, self.commit, self.cores, self.memory
        )
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn mem_total() -> Option<String> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(format!("{:.0} GiB", kib / (1024.0 * 1024.0)))
}
