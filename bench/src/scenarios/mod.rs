//! The scenarios (R1 … S1, ED1, ED2, IMP1) and their table, what they share — the running server, tokens, seeded data, the
//! baselines, the fake OpenID Provider — and the measuring wrapper that reads the server's counters and RSS around a
//! load run.

mod auth;
mod editor;
mod exports;
mod history;
mod imports;
mod memory;
mod reads;
mod sharing;
mod startup;
mod uploads;
mod writes;

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use atelier_testkit::oidc::FakeProvider;
use clap::ValueEnum;
use futures::{StreamExt, TryStreamExt, future::LocalBoxFuture};
use serde_json::{Value, json};

use crate::{
    baseline::{PgbenchResult, Workload},
    client::Api,
    error::{Context, Result},
    load::{self, LoadResult, Phases, Worker},
    report::{Backend, Row},
    rss::RssSampler,
    server::{self, Server, Store, Workspace},
};

/// A scenario id, as given on the command line. Adding a scenario: a variant here and its
/// row in [`TABLE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
#[value(rename_all = "verbatim")]
pub enum Scenario {
    R1,
    R2,
    W1,
    W2,
    ED1,
    ED2,
    H1,
    U1,
    U2,
    C1,
    B1,
    E1,
    A1,
    A2,
    IMP1,
    M1,
    S1,
}

/// One scenario: what runs it and what it is compared with. Rows are in report order.
pub struct Spec {
    pub id: Scenario,
    pub run: Run,
    /// The server signs in through a fake OpenID Provider (started for the run).
    pub needs_provider: bool,
    pub baseline: Baseline,
}

/// A scenario's runner, and which server it measures.
#[derive(Clone, Copy)]
pub enum Run {
    /// On the backend's server, after the pgbench baselines, in table order.
    Server(OnServer),
    /// On the backend's server before any other scenario, while it has served nothing yet
    /// (memory that earlier scenarios' allocations left mapped would count as its own).
    FreshServer(OnServer),
    /// Starts servers of its own, on SQLite only.
    OwnServers(OwnServers),
}

pub type OnServer = for<'a, 'b> fn(&'a mut Ctx<'b>) -> LocalBoxFuture<'a, Result<Vec<Row>>>;
pub type OwnServers =
    for<'a> fn(&'a Workspace, &'a Path, Profile) -> LocalBoxFuture<'a, Result<Vec<Row>>>;

/// What a scenario's figures are compared with.
#[derive(Clone, Copy, Debug)]
pub enum Baseline {
    /// Targets of its own only (absolute or relative to the server's idle state).
    None,
    /// A pgbench workload with this many clients, measured before the PostgreSQL server starts.
    Pgbench(Workload, u32),
    /// `md5sum` + `sha256sum` over the same bytes, measured by the scenario itself.
    Hashing,
}

/// Every scenario, in report order.
pub const TABLE: &[Spec] = &[
    Spec {
        id: Scenario::R1,
        run: Run::Server(|ctx| Box::pin(reads::r1(ctx))),
        needs_provider: false,
        baseline: Baseline::Pgbench(Workload::SelectOnly, reads::R1_CLIENTS as u32),
    },
    Spec {
        id: Scenario::R2,
        run: Run::Server(|ctx| Box::pin(reads::r2(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::W1,
        run: Run::Server(|ctx| Box::pin(writes::w1(ctx))),
        needs_provider: false,
        baseline: Baseline::Pgbench(Workload::SimpleUpdate, writes::W1_CLIENTS as u32),
    },
    Spec {
        id: Scenario::W2,
        run: Run::Server(|ctx| Box::pin(writes::w2(ctx))),
        needs_provider: false,
        baseline: Baseline::Pgbench(Workload::HotRow, writes::W2_CLIENTS as u32),
    },
    Spec {
        id: Scenario::ED1,
        run: Run::Server(|ctx| Box::pin(editor::ed1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::ED2,
        run: Run::Server(|ctx| Box::pin(editor::ed2(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::H1,
        run: Run::Server(|ctx| Box::pin(history::h1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::U1,
        run: Run::Server(|ctx| Box::pin(uploads::u1(ctx))),
        needs_provider: false,
        baseline: Baseline::Hashing,
    },
    Spec {
        id: Scenario::U2,
        run: Run::Server(|ctx| Box::pin(uploads::u2(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::C1,
        run: Run::Server(|ctx| Box::pin(sharing::c1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::B1,
        run: Run::Server(|ctx| Box::pin(sharing::b1(ctx))),
        needs_provider: false,
        baseline: Baseline::Hashing,
    },
    Spec {
        id: Scenario::E1,
        run: Run::Server(|ctx| Box::pin(exports::e1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::A1,
        run: Run::Server(|ctx| Box::pin(auth::a1(ctx))),
        needs_provider: true,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::A2,
        run: Run::Server(|ctx| Box::pin(auth::a2(ctx))),
        needs_provider: true,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::IMP1,
        run: Run::Server(|ctx| Box::pin(imports::imp1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::M1,
        run: Run::FreshServer(|ctx| Box::pin(memory::m1(ctx))),
        needs_provider: false,
        baseline: Baseline::None,
    },
    Spec {
        id: Scenario::S1,
        run: Run::OwnServers(|ws, scratch, profile| {
            Box::pin(startup::s1(ws, scratch, profile.starts))
        }),
        needs_provider: false,
        baseline: Baseline::None,
    },
];

impl Scenario {
    /// This scenario's row in [`TABLE`].
    pub fn spec(self) -> &'static Spec {
        TABLE
            .iter()
            .find(|spec| spec.id == self)
            .unwrap_or_else(|| panic!("scenario {self} has no row in TABLE"))
    }

    /// Its position in the report.
    pub fn order(self) -> usize {
        TABLE
            .iter()
            .position(|spec| spec.id == self)
            .unwrap_or(usize::MAX)
    }

    /// Its name on the command line and in the report (`"R1"`).
    pub fn id(self) -> &'static str {
        // Result rows keep `&'static str` ids; clap lends its names only as long as the
        // `PossibleValue` lives: keep one copy of each for the process.
        static IDS: OnceLock<Vec<(Scenario, &'static str)>> = OnceLock::new();
        IDS.get_or_init(|| {
            Scenario::value_variants()
                .iter()
                .filter_map(|&s| {
                    let name = s.to_possible_value()?.get_name().to_owned();
                    Some((s, &*Box::leak(name.into_boxed_str())))
                })
                .collect()
        })
        .iter()
        .find_map(|&(s, id)| (s == self).then_some(id))
        .unwrap_or("?")
    }

    /// The pgbench workload and client count this scenario is compared with, if any.
    pub fn pgbench_baseline(self) -> Option<(Workload, u32)> {
        match self.spec().baseline {
            Baseline::Pgbench(workload, clients) => Some((workload, clients)),
            Baseline::None | Baseline::Hashing => None,
        }
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
    /// The OpenID Provider the server signs in through, when a selected scenario needs one.
    pub provider: Option<&'a FakeProvider>,
    tokens: HashMap<String, String>,
    read_ids: Option<Arc<[String]>>,
}

/// A load run with the server-side view of it.
pub struct Measured {
    pub load: LoadResult,
    pub peak_rss: u64,
    pub stmts_per_req: f64,
}

impl Measured {
    /// Two measurements of the same workload as one: statements per request weighted by
    /// operations, the higher peak.
    pub fn merge(&mut self, other: Measured) {
        let (a, b) = (self.load.ops as f64, other.load.ops as f64);
        if a + b > 0.0 {
            self.stmts_per_req = (self.stmts_per_req * a + other.stmts_per_req * b) / (a + b);
        }
        self.peak_rss = self.peak_rss.max(other.peak_rss);
        self.load.merge(other.load);
    }
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
        provider: Option<&'a FakeProvider>,
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
            provider,
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

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::{Scenario, TABLE};

    #[test]
    fn every_scenario_has_one_row() {
        for &scenario in Scenario::value_variants() {
            let rows = TABLE.iter().filter(|spec| spec.id == scenario).count();
            assert_eq!(rows, 1, "{scenario:?} has {rows} rows in TABLE");
            assert_eq!(scenario.id(), format!("{scenario:?}"));
        }
        assert_eq!(TABLE.len(), Scenario::value_variants().len());
    }
}
