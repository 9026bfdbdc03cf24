//! W1 (each client updates its own project) and W2 (100 clients read-modify-write one
//! project with optimistic concurrency: no update may be lost).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};

use serde_json::{Value, json};

use super::{Ctx, compare_with_pgbench, seed_projects};
use crate::{
    client::{Api, CallError},
    error::{Context, Result},
    load::{Outcome, Worker},
    report::{Backend, Row, rate},
};

pub(super) const W1_CLIENTS: usize = 64;
pub(super) const W2_CLIENTS: usize = 100;
const W1_TARGET: f64 = 0.5;
const W2_TARGET: f64 = 0.7;
/// W2's retry pauses after a conflict (see [`HotRowIncrementer::backoff`]).
const BACKOFF_BASE: Duration = Duration::from_millis(1);
const BACKOFF_CAP: Duration = Duration::from_millis(100);

const UPDATE_TITLE: &str = "mutation($id: ID!, $v: Int!, $title: String!) { \
    updateProject(input: {id: $id, expectedVersion: $v, title: $title}) { id version } }";
const READ_PROJECT: &str = "query($id: ID!) { project(id: $id) { id title version } }";

/// Updates its own project's title, tracking the version client-side.
struct OwnProjectWriter {
    api: Api,
    token: Arc<str>,
    id: String,
    version: i64,
}

impl Worker for OwnProjectWriter {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let variables =
            json!({ "id": self.id, "v": self.version, "title": format!("w1 {}", self.version) });
        match self.api.graphql(&self.token, UPDATE_TITLE, variables).await {
            Ok(data) => {
                self.version = version_of(&data["updateProject"])?;
                Ok(Outcome::Done { units: 1 })
            }
            Err(e) => {
                // Nobody else writes this project, so a conflict is a server bug: count it,
                // and carry on from the version the server reports.
                if let CallError::GraphQl { extensions, .. } = &e
                    && let Some(v) = extensions["currentVersion"].as_i64()
                {
                    self.version = v;
                }
                Err(e)
            }
        }
    }
}

fn version_of(project: &Value) -> Result<i64, CallError> {
    project["version"]
        .as_i64()
        .ok_or_else(|| CallError::Malformed("no version in the project".into()))
}

/// W1: `updateProject` on distinct projects, 64 clients, against `pgbench -N`.
pub async fn w1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token = ctx.token("w1-writer", "student").await?;
    let ids = seed_projects(
        &ctx.api,
        std::slice::from_ref(&token),
        W1_CLIENTS,
        json!({ "targets": [] }),
    )
    .await?;
    let token: Arc<str> = token.into();
    let writers = ids
        .into_iter()
        .map(|id| OwnProjectWriter {
            api: ctx.api.clone(),
            token: Arc::clone(&token),
            id,
            version: 1,
        })
        .collect();
    let m = ctx.measure(writers, ctx.profile.phases).await?;

    let mut row = ctx.load_row(
        "W1",
        format!("updateProject, own project, {W1_CLIENTS} clients"),
        &m,
    );
    let rps = m.load.ops_per_sec();
    row.value = rate(rps, "req/s");
    let errors_ok = m.load.errors.total() == 0;
    match ctx.backend {
        Backend::Postgres => {
            let ratio =
                compare_with_pgbench(&mut row, "pgbench -N", &ctx.baselines.pg.simple_update, rps);
            row.target = format!("≥ {W1_TARGET} × pgbench -N, 0 errors");
            row.met = errors_ok && ratio.is_some_and(|r| r >= W1_TARGET);
        }
        Backend::Sqlite => {
            row.target = "0 errors".into();
            row.met = errors_ok;
        }
    }
    Ok(vec![row])
}

/// Counts shared by all W2 clients.
#[derive(Default)]
struct HotCounters {
    /// Updates the server acknowledged (whenever they happened, warm-up included).
    acked: AtomicU64,
    conflicts: AtomicU64,
}

/// Reads the hot project, then writes `counter + 1` with the version it read; on
/// VERSION_CONFLICT tries again (at once, or after a random, growing pause as a client of an
/// optimistic-concurrency API should) until the run is over.
struct HotRowIncrementer {
    api: Api,
    token: Arc<str>,
    id: Arc<str>,
    counters: Arc<HotCounters>,
    retry: Retry,
    rng: SmallRng,
}

/// How a W2 client retries after a VERSION_CONFLICT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Re-read at once.
    Immediate,
    /// Re-read after [`HotRowIncrementer::backoff`].
    Backoff,
    /// Re-read after the `retryAfterMs` the server puts on the conflict (its place in the
    /// server's queue for the row).
    Paced,
    /// One client and nobody to conflict with: the ceiling for any retry policy, since a
    /// read-then-compare-and-set cycle cannot overlap another one that succeeds.
    Alone,
}

impl HotRowIncrementer {
    /// Full jitter: uniform in [0, min(cap, base · 2^conflicts)).
    fn backoff(&mut self, conflicts: u32) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << conflicts.min(16))
            .min(BACKOFF_CAP);
        ceiling.mul_f64(self.rng.random::<f64>())
    }
}

impl Worker for HotRowIncrementer {
    async fn step(&mut self, deadline: Instant) -> Result<Outcome, CallError> {
        // Checked before each read, never between a sent update and its answer: an update
        // whose answer we did not wait for would look lost.
        let mut conflicts = 0;
        while Instant::now() < deadline {
            let data = self
                .api
                .graphql(&self.token, READ_PROJECT, json!({ "id": &*self.id }))
                .await?;
            let project = &data["project"];
            let version = version_of(project)?;
            let counter: u64 = project["title"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| CallError::Malformed("the title is not a counter".into()))?;
            let variables =
                json!({ "id": &*self.id, "v": version, "title": (counter + 1).to_string() });
            match self.api.graphql(&self.token, UPDATE_TITLE, variables).await {
                Ok(_) => {
                    self.counters.acked.fetch_add(1, Relaxed);
                    return Ok(Outcome::Done { units: 1 });
                }
                Err(e) if e.has_code("VERSION_CONFLICT") => {
                    self.counters.conflicts.fetch_add(1, Relaxed);
                    let pause = match self.retry {
                        Retry::Immediate | Retry::Alone => None,
                        Retry::Backoff => Some(self.backoff(conflicts)),
                        Retry::Paced => Some(match retry_after(&e) {
                            Some(wait) => wait,
                            None => self.backoff(conflicts),
                        }),
                    };
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                    conflicts += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Outcome::Stopped)
    }
}

/// W2: 100 clients increment one project's counter; every acknowledged update must show in
/// the final counter and version. Compared with pgbench's `SELECT … FOR UPDATE` + `UPDATE`.
/// The server's advice on a VERSION_CONFLICT.
fn retry_after(e: &CallError) -> Option<Duration> {
    match e {
        CallError::GraphQl { extensions, .. } => extensions["retryAfterMs"]
            .as_u64()
            .map(Duration::from_millis),
        _ => None,
    }
}

/// Run four times: clients that retry at once, clients that back off, clients that wait as
/// long as the server says, and one client alone (the most commits/s that any way of retrying
/// could reach).
pub async fn w2(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for retry in [Retry::Immediate, Retry::Backoff, Retry::Paced, Retry::Alone] {
        rows.push(w2_once(ctx, retry).await?);
    }
    Ok(rows)
}

async fn w2_once(ctx: &mut Ctx<'_>, retry: Retry) -> Result<Row> {
    let token = ctx.token("w2-writer", "student").await?;
    let data = ctx
        .api
        .graphql(
            &token,
            super::CREATE_PROJECT,
            json!({ "title": "0", "content": { "targets": [] } }),
        )
        .await
        .context("creating W2's project")?;
    let id: Arc<str> = data["createProject"]["id"]
        .as_str()
        .context("createProject returned no id")?
        .into();
    let initial_version = data["createProject"]["version"].as_u64().unwrap_or(1);

    let token: Arc<str> = token.into();
    let counters = Arc::new(HotCounters::default());
    let clients = match retry {
        Retry::Alone => 1,
        Retry::Immediate | Retry::Backoff | Retry::Paced => W2_CLIENTS,
    };
    let workers = (0..clients)
        .map(|i| HotRowIncrementer {
            api: ctx.api.clone(),
            token: Arc::clone(&token),
            id: Arc::clone(&id),
            counters: Arc::clone(&counters),
            retry,
            rng: SmallRng::seed_from_u64(i as u64),
        })
        .collect();
    let m = ctx.measure(workers, ctx.profile.phases).await?;

    let data = ctx
        .api
        .graphql(&token, READ_PROJECT, json!({ "id": &*id }))
        .await
        .context("reading W2's project afterwards")?;
    let final_counter: u64 = data["project"]["title"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .context("W2's project title is not a counter")?;
    let final_version = data["project"]["version"]
        .as_u64()
        .context("W2's project has no version")?;
    let acked = counters.acked.load(Relaxed);
    let conflicts = counters.conflicts.load(Relaxed);
    let consistent =
        final_counter == acked && final_version.checked_sub(initial_version) == Some(acked);
    let lost = acked.abs_diff(final_counter);

    let mut row = ctx.load_row(
        "W2",
        format!(
            "read + updateProject, one project, {}",
            match retry {
                Retry::Immediate => format!("{W2_CLIENTS} clients, immediate retry"),
                Retry::Backoff => format!("{W2_CLIENTS} clients, retry with jittered backoff"),
                Retry::Paced =>
                    format!("{W2_CLIENTS} clients, retry after the server's retryAfterMs"),
                Retry::Alone => "1 client, no contention (ceiling for any retry policy)".into(),
            }
        ),
        &m,
    );
    let cps = m.load.ops_per_sec();
    row.value = rate(cps, "commits/s");
    row.notes.push(format!(
        "{acked} acknowledged, final counter {final_counter}, version {final_version}, \
         {lost} lost, {conflicts} conflicts ({:.1} per commit)",
        conflicts as f64 / acked.max(1) as f64
    ));
    let errors_ok = m.load.errors.total() == 0;
    match ctx.backend {
        Backend::Postgres => {
            let ratio =
                compare_with_pgbench(&mut row, "pgbench hot row", &ctx.baselines.pg.hot_row, cps);
            if retry == Retry::Alone {
                // Not the scenario itself: the bound it is judged against.
                row.target = "0 lost updates, 0 errors (reference)".into();
                row.met = consistent && errors_ok;
            } else {
                row.target = format!("0 lost updates, ≥ {W2_TARGET} × pgbench hot row, 0 errors");
                row.met = consistent && errors_ok && ratio.is_some_and(|r| r >= W2_TARGET);
            }
        }
        Backend::Sqlite => {
            row.target = "0 lost updates, 0 errors".into();
            row.met = consistent && errors_ok;
        }
    }
    Ok(row)
}
