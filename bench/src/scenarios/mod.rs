//! The scenarios (R1 … S1), what they share — the running server, tokens, seeded data, the
//! baselines — and the measuring wrapper that reads the server's counters and RSS around a
//! load run.

mod memory;
mod reads;
mod startup;
mod uploads;
mod writes;

use std::{collections::HashMap, fmt, path::Path, str::FromStr, sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::{
    baseline::{PgbenchResult, Workload},
    client::Api,
    error::{Context, Error, Result},
    load::{self, LoadResult, Phases, Worker},
    report::{Backend, Row},
    rss::RssSampler,
    server::{self, Server, Store, Workspace},
};

pub use startup::s1;

/// A scenario id, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    R1,
    R2,
    W1,
    W2,
    U1,
    U2,
    M1,
    S1,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::R1,
        Scenario::R2,
        Scenario::W1,
        Scenario::W2,
        Scenario::U1,
        Scenario::U2,
        Scenario::M1,
        Scenario::S1,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Scenario::R1 => "R1",
            Scenario::R2 => "R2",
            Scenario::W1 => "W1",
            Scenario::W2 => "W2",
            Scenario::U1 => "U1",
            Scenario::U2 => "U2",
            Scenario::M1 => "M1",
            Scenario::S1 => "S1",
        }
    }

    /// The pgbench workload and client count this scenario is compared with, if any.
    pub fn pgbench_baseline(self) -> Option<(Workload, u32)> {
        match self {
            Scenario::R1 => Some((Workload::SelectOnly, reads::R1_CLIENTS as u32)),
            Scenario::W1 => Some((Workload::SimpleUpdate, writes::W1_CLIENTS as u32)),
            Scenario::W2 => Some((Workload::HotRow, writes::W2_CLIENTS as u32)),
            _ => None,
        }
    }

    /// Runs one scenario against the context's server.
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
        match self {
            Scenario::R1 => reads::r1(ctx).await,
            Scenario::R2 => reads::r2(ctx).await,
            Scenario::W1 => writes::w1(ctx).await,
            Scenario::W2 => writes::w2(ctx).await,
            Scenario::U1 => uploads::u1(ctx).await,
            Scenario::U2 => uploads::u2(ctx).await,
            Scenario::M1 => memory::m1(ctx).await,
            // S1 starts servers of its own: see `s1`.
            Scenario::S1 => Ok(Vec::new()),
        }
    }
}

impl FromStr for Scenario {
    type Err = Error;

    fn from_str(s: &str) -> Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.id().eq_ignore_ascii_case(s))
            .context(format_args!(
                "unknown scenario {s:?} (expected all, R1, R2, W1, W2, U1, U2, M1 or S1)"
            ))
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Full or quick: how long each timed phase lasts and how much is seeded.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub phases: Phases,
    pub pgbench: Duration,
    /// Projects seeded for R1 and M1.
    pub read_projects: usize,
    /// Server starts S1 takes the median of.
    pub starts: usize,
}

impl Profile {
    pub fn new(quick: bool) -> Profile {
        if quick {
            Profile {
                phases: Phases {
                    warmup: Duration::from_secs(1),
                    measure: Duration::from_secs(3),
                },
                pgbench: Duration::from_secs(3),
                read_projects: 300,
                starts: 3,
            }
        } else {
            Profile {
                phases: Phases {
                    warmup: Duration::from_secs(2),
                    measure: Duration::from_secs(10),
                },
                pgbench: Duration::from_secs(10),
                read_projects: 1000,
                starts: 7,
            }
        }
    }

    /// Shorter phases for secondary measurements (M1's load, R2's two page sizes).
    pub fn short_phases(&self) -> Phases {
        Phases {
            warmup: self.phases.warmup / 2,
            measure: self.phases.measure / 2,
        }
    }
}

/// pgbench figures measured before the PostgreSQL server started; `Err` holds why one is
/// missing.
#[derive(Default)]
pub struct PgBaselines {
    pub select_only: Option<Result<PgbenchResult, String>>,
    pub simple_update: Option<Result<PgbenchResult, String>>,
    pub hot_row: Option<Result<PgbenchResult, String>>,
}

impl PgBaselines {
    pub fn slot(&mut self, workload: Workload) -> &mut Option<Result<PgbenchResult, String>> {
        match workload {
            Workload::SelectOnly => &mut self.select_only,
            Workload::SimpleUpdate => &mut self.simple_update,
            Workload::HotRow => &mut self.hot_row,
        }
    }
}

/// Baselines shared by both backends' runs.
#[derive(Default)]
pub struct Baselines {
    pub pg: PgBaselines,
    /// md5sum + sha256sum throughput by payload size, bytes/s.
    pub hash: HashMap<u64, f64>,
}

/// Everything a scenario needs about the server it measures.
pub struct Ctx<'a> {
    pub backend: Backend,
    pub profile: Profile,
    pub ws: &'a Workspace,
    pub store: &'a Store,
    pub server: &'a Server,
    pub api: Api,
    pub scratch: &'a Path,
    pub baselines: &'a mut Baselines,
    /// RSS a moment after the server became ready, before any load.
    pub idle_rss: u64,
    tokens: HashMap<String, String>,
    read_ids: Option<Arc<[String]>>,
}

/// A load run with the server-side view of it.
pub struct Measured {
    pub load: LoadResult,
    pub peak_rss: u64,
    pub stmts_per_req: f64,
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Backend,
        profile: Profile,
        ws: &'a Workspace,
        store: &'a Store,
        server: &'a Server,
        api: Api,
        scratch: &'a Path,
        baselines: &'a mut Baselines,
        idle_rss: u64,
    ) -> Ctx<'a> {
        Ctx {
            backend,
            profile,
            ws,
            store,
            server,
            api,
            scratch,
            baselines,
            idle_rss,
            tokens: HashMap::new(),
            read_ids: None,
        }
    }

    /// A token for `user` (created with the server's CLI on first use).
    pub async fn token(&mut self, user: &str, role: &str) -> Result<String> {
        if let Some(token) = self.tokens.get(user) {
            return Ok(token.clone());
        }
        let token = server::create_token(self.ws, self.store, user, role).await?;
        self.tokens.insert(user.to_owned(), token.clone());
        Ok(token)
    }

    /// The ids of the projects R1 and M1 read, seeded on first use across four owners.
    pub async fn read_ids(&mut self) -> Result<Arc<[String]>> {
        if let Some(ids) = &self.read_ids {
            return Ok(Arc::clone(ids));
        }
        let mut owners = Vec::new();
        for i in 0..4 {
            owners.push(self.token(&format!("reader-owner-{i}"), "student").await?);
        }
        let ids: Arc<[String]> = seed_projects(
            &self.api,
            &owners,
            self.profile.read_projects,
            json!({"targets": []}),
        )
        .await?
        .into();
        self.read_ids = Some(Arc::clone(&ids));
        Ok(ids)
    }

    /// Runs `workers` while sampling the server's RSS and counting its SQL statements.
    pub async fn measure<W: Worker>(&self, workers: Vec<W>, phases: Phases) -> Result<Measured> {
        let before = self.api.counters().await?;
        let rss = RssSampler::start(self.server.pid());
        let load = load::run(workers, phases).await?;
        let peak_rss = rss.finish();
        let after = self.api.counters().await?;
        // The first /metrics request is counted by the second read, not by itself.
        let requests = after.requests.saturating_sub(before.requests + 1);
        let statements = after.statements.saturating_sub(before.statements);
        Ok(Measured {
            load,
            peak_rss,
            stmts_per_req: statements as f64 / requests.max(1) as f64,
        })
    }

    /// A row filled with the load figures of `m`; the caller adds value, baseline and verdict.
    pub fn load_row(&self, id: &'static str, case: impl Into<String>, m: &Measured) -> Row {
        let mut row = Row::new(self.backend, id, case);
        row.p50 = m.load.latencies.quantile(0.50);
        row.p99 = m.load.latencies.quantile(0.99);
        row.errors = Some(m.load.errors.total());
        row.peak_rss = Some(m.peak_rss);
        row.stmts_per_req = Some(m.stmts_per_req);
        row.notes.extend(m.load.errors.summary());
        row
    }
}

const CREATE_PROJECT: &str = "mutation($title: String!, $content: JSON!) { \
    createProject(input: {title: $title, content: $content}) { id version } }";

/// Creates `count` projects with `content`, round-robin over the `owners`' tokens; returns
/// their ids in creation order.
pub async fn seed_projects(
    api: &Api,
    owners: &[String],
    count: usize,
    content: Value,
) -> Result<Vec<String>> {
    futures::stream::iter(0..count)
        .map(|i| {
            let token = &owners[i % owners.len()];
            let variables = json!({ "title": format!("seed {i}"), "content": content });
            async move {
                let data = api
                    .graphql(token, CREATE_PROJECT, variables)
                    .await
                    .context("seeding projects")?;
                data["createProject"]["id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("createProject returned no id")
            }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// `value / baseline` when there is a baseline.
fn ratio(value: f64, baseline: &Option<Result<PgbenchResult, String>>) -> Option<f64> {
    match baseline {
        Some(Ok(b)) if b.tps > 0.0 => Some(value / b.tps),
        _ => None,
    }
}

/// Puts the pgbench baseline `label` and the ratio of `value` to it on `row` (or a note on why
/// there is none); returns the ratio.
pub fn compare_with_pgbench(
    row: &mut Row,
    label: &str,
    baseline: &Option<Result<PgbenchResult, String>>,
    value: f64,
) -> Option<f64> {
    let (text, missing) = describe_baseline(label, baseline);
    row.baseline = text;
    row.notes.extend(missing);
    row.ratio = ratio(value, baseline);
    row.ratio
}

/// `"21463 tps (pgbench -S, 64 clients)"`, or why there is none.
fn describe_baseline(
    label: &str,
    baseline: &Option<Result<PgbenchResult, String>>,
) -> (Option<String>, Option<String>) {
    match baseline {
        Some(Ok(b)) => (
            Some(format!("{:.0} tps ({label}, {} clients)", b.tps, b.clients)),
            None,
        ),
        Some(Err(e)) => (None, Some(format!("no baseline: {label} failed: {e}"))),
        None => (None, Some(format!("no baseline: {label} was not run"))),
    }
}
