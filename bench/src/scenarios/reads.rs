//! R1 (one project by id, random ids) and R2 (a page of projects with their owner, assets and
//! groups: the N+1 check).

use std::{sync::Arc, time::Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;

use super::{Ctx, compare_with_pgbench, seed_projects};
use crate::{
    client::{Api, CallError, Credential, UploadFile},
    error::{Context, Result},
    load::{Outcome, Worker},
    payload,
    report::{Backend, Row, rate},
};

pub(super) const R1_CLIENTS: usize = 64;
const R2_CLIENTS: usize = 32;
const R2_PAGE_SIZES: [usize; 2] = [10, 100];
/// Assets every R2 project's costumes reference.
const R2_ASSETS: u64 = 4;
/// R1 must reach this share of `pgbench -S`.
const R1_TARGET: f64 = 0.5;
const R2_MAX_STATEMENTS: f64 = 5.0;

const PROJECT_QUERY: &str = "query($id: ID!) { project(id: $id) { id title version } }";
const PROJECTS_QUERY: &str = "query($n: Int!) { projects(first: $n) { \
    edges { node { id owner { id } assets { md5 } sharedWith { id } } } \
    pageInfo { hasNextPage endCursor } } }";

/// Reads random projects by id.
pub struct ProjectReader {
    api: Api,
    credential: Credential,
    ids: Arc<[String]>,
    rng: SmallRng,
}

/// `clients` readers of `ids` with one bearer token, each with its own random sequence.
pub fn project_readers(
    api: &Api,
    token: &str,
    ids: &Arc<[String]>,
    clients: usize,
) -> Vec<ProjectReader> {
    project_readers_as(api, &[Credential::Bearer(token.into())], ids, clients)
}

/// `clients` readers of `ids`, client `i` calling as `credentials[i % len]`; client `i`
/// reads the same random sequence whatever its credential.
pub fn project_readers_as(
    api: &Api,
    credentials: &[Credential],
    ids: &Arc<[String]>,
    clients: usize,
) -> Vec<ProjectReader> {
    (0..clients)
        .map(|i| ProjectReader {
            api: api.clone(),
            credential: credentials[i % credentials.len()].clone(),
            ids: Arc::clone(ids),
            rng: SmallRng::seed_from_u64(i as u64),
        })
        .collect()
}

impl Worker for ProjectReader {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let id = &self.ids[self.rng.random_range(0..self.ids.len())];
        let data = self
            .api
            .graphql_as(&self.credential, PROJECT_QUERY, json!({ "id": id }))
            .await?;
        if data["project"]["id"].as_str() != Some(id) {
            return Err(CallError::Malformed(format!("project {id} not returned")));
        }
        Ok(Outcome::Done { units: 1 })
    }
}

/// R1: `project(id)` by random id, 64 clients, against `pgbench -S`.
pub async fn r1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let ids = ctx.read_ids().await?;
    let admin = ctx.token("bench-admin", "admin").await?;
    let readers = project_readers(&ctx.api, &admin, &ids, R1_CLIENTS);
    let m = ctx.measure(readers, ctx.profile.phases).await?;

    let mut row = ctx.load_row("R1", format!("project(id), {R1_CLIENTS} clients"), &m);
    let rps = m.load.ops_per_sec();
    row.value = rate(rps, "req/s");
    let errors_ok = m.load.errors.total() == 0;
    match ctx.backend {
        Backend::Postgres => {
            let ratio =
                compare_with_pgbench(&mut row, "pgbench -S", &ctx.baselines.pg.select_only, rps);
            row.target = format!("≥ {R1_TARGET} × pgbench -S, 0 errors");
            row.met = errors_ok && ratio.is_some_and(|r| r >= R1_TARGET);
        }
        Backend::Sqlite => {
            row.target = "0 errors".into();
            row.met = errors_ok;
        }
    }
    Ok(vec![row])
}

/// Lists the first `n` projects with their relations.
struct ProjectLister {
    api: Api,
    token: Arc<str>,
    n: usize,
}

impl Worker for ProjectLister {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let data = self
            .api
            .graphql(&self.token, PROJECTS_QUERY, json!({ "n": self.n }))
            .await?;
        let edges = data["projects"]["edges"].as_array().map_or(0, Vec::len);
        if edges != self.n {
            return Err(CallError::Malformed(format!(
                "expected {} edges, got {edges}",
                self.n
            )));
        }
        Ok(Outcome::Done { units: 1 })
    }
}

/// R2: `projects(first: N)` with owner, assets and groups, N = 10 and 100: the statements
/// per request must not grow with N.
pub async fn r2(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token = ctx.token("r2-lister", "student").await?;
    let mut costumes = Vec::new();
    for tag in 0..R2_ASSETS {
        let svg = payload::svg(tag);
        let file = UploadFile {
            name: "costume.svg",
            mime: "image/svg+xml",
            len: svg.len() as u64,
        };
        let asset = ctx
            .api
            .upload(&token, "IMAGE_VECTOR", file, svg.into())
            .await
            .context("uploading R2's costume assets")?;
        let md5 = asset["asset"]["md5"]
            .as_str()
            .context("uploadAsset returned no md5")?;
        costumes.push(json!({ "md5ext": format!("{md5}.svg") }));
    }
    let content = json!({ "targets": [{ "costumes": costumes, "sounds": [] }] });
    let most = R2_PAGE_SIZES.iter().copied().max().unwrap_or_default();
    seed_projects(&ctx.api, std::slice::from_ref(&token), most, content).await?;

    let token: Arc<str> = token.into();
    let mut rows: Vec<Row> = Vec::new();
    for n in R2_PAGE_SIZES {
        let listers = (0..R2_CLIENTS)
            .map(|_| ProjectLister {
                api: ctx.api.clone(),
                token: Arc::clone(&token),
                n,
            })
            .collect();
        let m = ctx.measure(listers, ctx.profile.short_phases()).await?;
        let mut row = ctx.load_row(
            "R2",
            format!("projects(first: {n}) + owner, assets, sharedWith, {R2_CLIENTS} clients"),
            &m,
        );
        row.value = rate(m.load.ops_per_sec(), "req/s");
        let same_as_first = rows
            .first()
            .and_then(|first| first.stmts_per_req)
            .is_none_or(|s| (s - m.stmts_per_req).abs() < 0.05);
        row.target = format!("≤ {R2_MAX_STATEMENTS} stmts/req, same for every N, 0 errors");
        row.met =
            m.load.errors.total() == 0 && m.stmts_per_req <= R2_MAX_STATEMENTS && same_as_first;
        if !same_as_first {
            row.notes
                .push("statements per request differ between page sizes".into());
        }
        rows.push(row);
    }
    Ok(rows)
}
