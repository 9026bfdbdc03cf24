//! `atelier-bench`: builds and starts the Atelier server in release mode, on a fresh
//! PostgreSQL database and then on a fresh SQLite data dir, drives it with many concurrent
//! HTTP clients, and prints throughput, latency, errors, peak RSS and SQL statements per
//! request next to baselines measured in the same run (`pgbench`, `md5sum` + `sha256sum`).
//!
//! ```sh
//! cargo run --release -p atelier-bench -- all            # everything, under 10 minutes
//! cargo run --release -p atelier-bench -- all --quick    # smoke run, about 2 minutes
//! cargo run --release -p atelier-bench -- R1 W2          # some scenarios
//! ```
//!
//! Everything it creates (servers, temp dirs, `atelier_bench_*` / `atelier_pgbench_*`
//! databases) is removed when it ends, on errors and ctrl-c too. It only talks to 127.0.0.1.

mod baseline;
mod client;
mod error;
mod load;
mod payload;
mod postgres;
mod report;
mod rss;
mod scenarios;
mod server;

use std::{
    collections::BTreeSet,
    fmt::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::OnceLock,
    time::{Duration, Instant},
};

use atelier_testkit::oidc::FakeProvider;
use clap::{Parser, ValueEnum, builder::PossibleValue};

use crate::{
    baseline::Pgbench,
    client::Api,
    error::{Context, Error, Result},
    postgres::TempDatabase,
    report::{Backend, Row, RunInfo},
    scenarios::{Baselines, Ctx, PgBaselines, Profile, Run, Scenario, TABLE},
    server::{Server, Store, Workspace},
};

/// Let the server settle after `/readyz` before taking its idle RSS.
const IDLE_SETTLE: Duration = Duration::from_millis(500);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    name = "atelier-bench",
    about = "Benchmarks the Atelier server against pgbench and coreutils baselines"
)]
struct Args {
    /// `all`, or scenario ids.
    #[arg(required = true, value_name = "SCENARIO", ignore_case = true)]
    scenarios: Vec<Choice>,

    /// Short phases: a smoke run of about two minutes.
    #[arg(long)]
    quick: bool,

    /// Run on one backend only (scenarios that start servers of their own, S1, are always
    /// SQLite).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,

    /// Also write the summary (Markdown) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// A scenario on the command line, or `all`: the possible values come from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    All,
    One(Scenario),
}

impl ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        static CHOICES: OnceLock<Vec<Choice>> = OnceLock::new();
        CHOICES.get_or_init(|| {
            std::iter::once(Choice::All)
                .chain(TABLE.iter().map(|spec| Choice::One(spec.id)))
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Choice::All => Some(PossibleValue::new("all")),
            Choice::One(scenario) => scenario.to_possible_value(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Postgres,
    Sqlite,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Dropping `run` on ctrl-c drops its guards: servers are killed, temp dirs removed and
    // databases dropped before this returns.
    let outcome = tokio::select! {
        outcome = run(&args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(Error::msg("interrupted (cleaned up)")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atelier-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let selected = selection(&args.scenarios);
    let profile = Profile::new(args.quick);
    let backends: Vec<Backend> = [Backend::Postgres, Backend::Sqlite]
        .into_iter()
        .filter(|b| match args.backend {
            None => true,
            Some(BackendArg::Postgres) => *b == Backend::Postgres,
            Some(BackendArg::Sqlite) => *b == Backend::Sqlite,
        })
        .collect();

    let ws = Workspace::locate();
    eprintln!("atelier-bench: building the server (cargo build --release -p atelier)");
    ws.build_server().await?;
    let scratch = tempfile::Builder::new()
        .prefix("atelier-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let info = RunInfo::collect();
    let started = Instant::now();

    let mut on_server: Vec<Scenario> = selected
        .iter()
        .copied()
        .filter(|s| !matches!(s.spec().run, Run::OwnServers(_)))
        .collect();
    // Table order, but the scenarios that want a server that has served nothing yet first.
    on_server.sort_by_key(|s| (!matches!(s.spec().run, Run::FreshServer(_)), s.order()));
    let mut baselines = Baselines::default();
    let mut rows = Vec::new();
    if !on_server.is_empty() {
        for &backend in &backends {
            eprintln!("atelier-bench: == {backend}");
            let run = run_backend(
                backend,
                &on_server,
                profile,
                &ws,
                scratch.path(),
                &mut baselines,
            );
            match run.await {
                Ok(backend_rows) => rows.extend(backend_rows),
                Err(e) => {
                    eprintln!("atelier-bench: {backend}: {e}");
                    rows.push(Row::failed(backend, "–", e));
                }
            }
        }
    }
    for &scenario in &selected {
        let Run::OwnServers(own) = scenario.spec().run else {
            continue;
        };
        if !backends.contains(&Backend::Sqlite) {
            continue;
        }
        eprintln!("atelier-bench: -- {scenario} on SQLite");
        let own_rows = own(&ws, scratch.path(), profile)
            .await
            .unwrap_or_else(|e| vec![Row::failed(Backend::Sqlite, scenario.id(), e)]);
        println!("\n### {scenario} on SQLite\n\n{}", report::table(&own_rows));
        rows.extend(own_rows);
    }

    let summary = summary(&info, args.quick, started.elapsed(), &rows);
    println!("\n{summary}");
    if let Some(out) = &args.out {
        std::fs::write(out, &summary).context(format_args!("writing {}", out.display()))?;
    }
    Ok(())
}

fn selection(choices: &[Choice]) -> BTreeSet<Scenario> {
    if choices.contains(&Choice::All) {
        return TABLE.iter().map(|spec| spec.id).collect();
    }
    choices
        .iter()
        .filter_map(|c| match c {
            Choice::One(scenario) => Some(*scenario),
            Choice::All => None,
        })
        .collect()
}

/// Baselines first, then one server on a fresh store for all of `scenarios`.
async fn run_backend(
    backend: Backend,
    scenarios: &[Scenario],
    profile: Profile,
    ws: &Workspace,
    scratch: &Path,
    baselines: &mut Baselines,
) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{backend}-"))
        .tempdir_in(scratch)
        .context("creating a temp dir")?;
    // pgbench runs before the server starts, so that neither holds connections the other
    // needs (PostgreSQL allows 100 here, shared with other sessions).
    let mut database = match backend {
        Backend::Postgres => {
            baselines.pg = pg_baselines(scenarios, profile, dir.path()).await;
            Some(TempDatabase::create("atelier_bench").await?)
        }
        Backend::Sqlite => None,
    };
    // Only runs that sign in start a provider, so that the other scenarios measure the
    // server as it runs without one.
    let provider = if scenarios.iter().any(|s| s.spec().needs_provider) {
        Some(FakeProvider::start().await)
    } else {
        None
    };
    let store = Store {
        data_dir: dir.path().join("data"),
        database_url: database.as_ref().map(TempDatabase::url),
        serve_env: provider.as_ref().map(FakeProvider::env).unwrap_or_default(),
    };
    let log = dir.path().join("server.log");
    let server = Server::start(ws, &store, &log).await?;
    let api = Api::new(server.base())?;
    server.wait_ready(&api, READY_TIMEOUT).await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_rss = rss::current(server.pid())?;

    let mut rows = Vec::new();
    let mut ctx = Ctx::new(
        backend,
        profile,
        ws,
        &store,
        &server,
        api,
        dir.path(),
        baselines,
        idle_rss,
        provider.as_ref(),
    );
    for &scenario in scenarios {
        eprintln!("atelier-bench: -- {scenario} on {backend}");
        let began = Instant::now();
        let (Run::Server(run) | Run::FreshServer(run)) = scenario.spec().run else {
            continue;
        };
        let scenario_rows = run(&mut ctx)
            .await
            .unwrap_or_else(|e| vec![Row::failed(backend, scenario.id(), e)]);
        println!(
            "\n### {scenario} on {backend} ({:.0} s)\n\n{}",
            began.elapsed().as_secs_f64(),
            report::table(&scenario_rows)
        );
        rows.extend(scenario_rows);
    }
    drop(ctx);

    if let Err(e) = server.stop().await {
        eprintln!("atelier-bench: warning: {e}");
    }
    report_server_log(backend, &log);
    if let Some(db) = database.as_mut() {
        db.drop_now()?;
    }
    Ok(rows)
}

/// The pgbench figures the selected scenarios compare with, each in its own fresh database.
async fn pg_baselines(scenarios: &[Scenario], profile: Profile, scratch: &Path) -> PgBaselines {
    let wanted: Vec<_> = scenarios
        .iter()
        .filter_map(|s| s.pgbench_baseline())
        .collect();
    let mut out = PgBaselines::default();
    if wanted.is_empty() {
        return out;
    }
    eprintln!("atelier-bench: -- pgbench baselines");
    let pgbench = match Pgbench::init(scratch).await {
        Ok(p) => p,
        Err(e) => {
            for (workload, _) in wanted {
                *out.slot(workload) = Some(Err(e.to_string()));
            }
            return out;
        }
    };
    for (workload, clients) in wanted {
        let result = pgbench
            .run(workload, clients, profile.pgbench)
            .await
            .map_err(|e| e.to_string());
        match &result {
            Ok(r) => eprintln!(
                "atelier-bench:    {}: {:.0} tps, {} clients",
                workload.label(),
                r.tps,
                r.clients
            ),
            Err(e) => eprintln!("atelier-bench:    {}: {e}", workload.label()),
        }
        *out.slot(workload) = Some(result);
    }
    out
}

/// Warnings the server logged: the temp dir (and its log) is about to go.
fn report_server_log(backend: Backend, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return;
    }
    eprintln!(
        "atelier-bench: the {backend} server logged {} line(s) at warn or above; the first:",
        lines.len()
    );
    for line in lines.iter().take(5) {
        eprintln!("    {line}");
    }
}

fn summary(info: &RunInfo, quick: bool, took: Duration, rows: &[Row]) -> String {
    // Backend, then table order (M1 ran first).
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| {
        (
            r.backend != Backend::Postgres,
            TABLE.iter().position(|spec| spec.id.id() == r.id),
        )
    });
    let mut out = format!(
        "## Atelier benchmark ({})\n\n{info}; took {:.0} s. The machine is shared: absolute \
         figures are noisy, the ratios to baselines measured in the same run matter.\n",
        if quick { "quick" } else { "full" },
        took.as_secs_f64()
    );
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let of_backend: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|r| r.backend == backend)
            .collect();
        if !of_backend.is_empty() {
            let _ = write!(out, "\n### {backend}\n\n{}", report::table(of_backend));
        }
    }
    let met = rows.iter().filter(|r| r.met).count();
    let _ = write!(
        out,
        "\n### Targets: {met} of {} met\n\n{}",
        rows.len(),
        report::verdicts(rows.iter().copied())
    );
    out
}
