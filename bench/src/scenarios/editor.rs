//! ED1 (the Scratch editor's save, `PUT /scratch/projects/{id}` of a 200 KiB project, against
//! `updateProject` of the same content in the same run) and ED2 (a save that brings 20 new
//! assets: the editor's asset POSTs first, then the PUT, timed end to end).

use std::{sync::Arc, time::Instant};

use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{Ctx, Measured, seed_projects};
use crate::{
    client::{Api, CallError},
    error::{Context, Result},
    load::{Outcome, Worker},
    payload::svg,
    report::{Row, rate},
};

const ED1_CLIENTS: usize = 64;
/// The editor's save must keep up with the GraphQL write it stands beside.
const ED1_TARGET: f64 = 0.9;
/// Size of the project JSON both sides of ED1 save.
const ED1_CONTENT_BYTES: usize = 200 * 1024;
const ED2_CLIENTS: usize = 8;
const ED2_ASSETS: usize = 20;

const UPDATE_CONTENT: &str = "mutation($id: ID!, $v: Int!, $c: JSON!) { \
    updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }";

/// A Scratch 3 project of about `bytes` bytes: a stage whose script has as many blocks as
/// that takes, and whose costumes are `costumes` (md5ext references).
fn project(bytes: usize, costumes: &[String]) -> Value {
    let mut blocks = serde_json::Map::new();
    let mut i = 0;
    // Each block serialises to ~150 bytes.
    while i * 150 < bytes {
        blocks.insert(
            format!("block{i:05}"),
            json!({"opcode": "motion_movesteps", "next": null, "parent": null,
                   "inputs": {"STEPS": [1, [4, "10"]]}, "fields": {}, "shadow": false,
                   "topLevel": true, "x": i, "y": 0}),
        );
        i += 1;
    }
    let costumes: Vec<Value> = costumes
        .iter()
        .enumerate()
        .map(|(n, md5ext)| {
            let md5 = md5ext.split('.').next().unwrap_or_default();
            json!({"assetId": md5, "name": format!("costume{n}"), "md5ext": md5ext,
                   "dataFormat": "svg", "rotationCenterX": 1, "rotationCenterY": 1})
        })
        .collect();
    json!({
        "targets": [{"isStage": true, "name": "Stage", "variables": {}, "lists": {},
                     "broadcasts": {}, "blocks": blocks, "comments": {}, "currentCostume": 0,
                     "costumes": costumes, "sounds": [], "volume": 100, "layerOrder": 0}],
        "monitors": [], "extensions": [],
        "meta": {"semver": "3.0.0", "vm": "0.2.0", "agent": "atelier-bench 0"}
    })
}

/// `content` with a save counter in it, so no two saves send the same document.
fn with_counter(content: &Value, n: u64) -> Value {
    let mut c = content.clone();
    c["meta"]["agent"] = json!(format!("atelier-bench {n}"));
    c
}

/// Saves its own project's whole content through `updateProject` (W1's path, with content).
struct GraphqlSaver {
    api: Api,
    token: Arc<str>,
    id: String,
    version: i64,
    content: Arc<Value>,
}

impl Worker for GraphqlSaver {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let c = with_counter(&self.content, self.version as u64);
        let vars = json!({ "id": self.id, "v": self.version, "c": c });
        match self.api.graphql(&self.token, UPDATE_CONTENT, vars).await {
            Ok(data) => {
                self.version = data["updateProject"]["version"]
                    .as_i64()
                    .ok_or_else(|| CallError::Malformed("no version".into()))?;
                Ok(Outcome::Done { units: 1 })
            }
            Err(e) => {
                // Nobody else writes this project: a conflict is a server bug, count it and
                // go on from the version the server names.
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

/// Saves its own project's whole content as the editor does: `PUT /scratch/projects/{id}`,
/// no version (last writer wins).
struct EditorSaver {
    api: Api,
    token: Arc<str>,
    id: String,
    saves: u64,
    content: Arc<Value>,
}

impl Worker for EditorSaver {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        self.saves += 1;
        let body = serde_json::to_vec(&with_counter(&self.content, self.saves))
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        let path = format!("/scratch/projects/{}", self.id);
        self.api.put_json(&self.token, &path, body.into()).await?;
        Ok(Outcome::Done { units: 1 })
    }
}

/// ED1: 64 clients each save their own 200 KiB project, through the editor's PUT and through
/// `updateProject`, alternating GraphQL, PUT, PUT, GraphQL in half phases so that drift on the
/// shared machine favours neither. The GraphQL row is the PUT row's baseline.
pub async fn ed1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token = ctx.token("ed1-writer", "student").await?;
    let content = Arc::new(project(ED1_CONTENT_BYTES, &[]));
    let size = serde_json::to_vec(&*content).map(|v| v.len()).unwrap_or(0);
    let ids = seed_projects(
        &ctx.api,
        std::slice::from_ref(&token),
        ED1_CLIENTS,
        (*content).clone(),
    )
    .await?;
    let token: Arc<str> = token.into();
    // Versions carry over between the GraphQL rounds: the PUT rounds move them on, so each
    // GraphQL round starts from the version the server has.
    let mut versions = vec![1i64; ids.len()];
    let half = ctx.profile.short_phases();
    let mut by_graphql: Option<Measured> = None;
    let mut by_put: Option<Measured> = None;
    for round in 0..4 {
        if round == 0 || round == 3 {
            for (i, id) in ids.iter().enumerate() {
                versions[i] = current_version(&ctx.api, &token, id).await?;
            }
            let workers = ids
                .iter()
                .zip(&versions)
                .map(|(id, v)| GraphqlSaver {
                    api: ctx.api.clone(),
                    token: Arc::clone(&token),
                    id: id.clone(),
                    version: *v,
                    content: Arc::clone(&content),
                })
                .collect();
            let m = ctx.measure(workers, half).await?;
            merge(&mut by_graphql, m);
        } else {
            let workers = ids
                .iter()
                .map(|id| EditorSaver {
                    api: ctx.api.clone(),
                    token: Arc::clone(&token),
                    id: id.clone(),
                    saves: 0,
                    content: Arc::clone(&content),
                })
                .collect();
            let m = ctx.measure(workers, half).await?;
            merge(&mut by_put, m);
        }
    }
    let by_graphql = by_graphql.context("no GraphQL run")?;
    let by_put = by_put.context("no PUT run")?;
    let kib = size / 1024;

    let gql_rps = by_graphql.load.ops_per_sec();
    let mut gql_row = ctx.load_row(
        "ED1",
        format!("updateProject of a {kib} KiB project, own project, {ED1_CLIENTS} clients (W1 with content)"),
        &by_graphql,
    );
    gql_row.value = rate(gql_rps, "req/s");
    gql_row.target = "0 errors (the baseline of the PUT row)".into();
    gql_row.met = by_graphql.load.errors.total() == 0;

    let put_rps = by_put.load.ops_per_sec();
    let mut put_row = ctx.load_row(
        "ED1",
        format!("PUT /scratch/projects/{{id}} of a {kib} KiB project, own project, {ED1_CLIENTS} clients"),
        &by_put,
    );
    put_row.value = rate(put_rps, "req/s");
    put_row.baseline = Some(format!("{gql_rps:.0} req/s (updateProject, same run)"));
    let ratio = (gql_rps > 0.0).then(|| put_rps / gql_rps);
    put_row.ratio = ratio;
    put_row.target = format!("≥ {ED1_TARGET} × updateProject, 0 errors");
    put_row.met = by_put.load.errors.total() == 0 && ratio.is_some_and(|r| r >= ED1_TARGET);
    Ok(vec![gql_row, put_row])
}

fn merge(slot: &mut Option<Measured>, m: Measured) {
    match slot {
        Some(sum) => sum.merge(m),
        None => *slot = Some(m),
    }
}

async fn current_version(api: &Api, token: &str, id: &str) -> Result<i64> {
    let data = api
        .graphql(
            token,
            "query($id: ID!) { project(id: $id) { version } }",
            json!({ "id": id }),
        )
        .await
        .context("reading a project's version")?;
    data["project"]["version"]
        .as_i64()
        .context("project has no version")
}

/// Saves its project with 20 costumes it has never uploaded: POSTs the 20 (at once, as the
/// editor's `Promise.all` does), then PUTs the project that references them.
struct AssetsThenSave {
    api: Api,
    token: Arc<str>,
    id: String,
    client: u64,
    saves: u64,
}

impl Worker for AssetsThenSave {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        self.saves += 1;
        let first_tag = (self.client << 40) | (self.saves * ED2_ASSETS as u64);
        let files: Vec<(String, Vec<u8>)> = (0..ED2_ASSETS as u64)
            .map(|j| {
                let bytes = svg(first_tag + j);
                (format!("{}.svg", hex::encode(Md5::digest(&bytes))), bytes)
            })
            .collect();
        let paths: Vec<String> = files
            .iter()
            .map(|(md5ext, _)| format!("/scratch/assets/{md5ext}"))
            .collect();
        let uploads = files
            .iter()
            .zip(&paths)
            .map(|((_, bytes), path)| self.api.post_raw(&self.token, path, bytes.clone()));
        for answer in futures::future::join_all(uploads).await {
            answer?;
        }
        let names: Vec<String> = files.into_iter().map(|(md5ext, _)| md5ext).collect();
        let body = serde_json::to_vec(&project(4 * 1024, &names))
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        let path = format!("/scratch/projects/{}", self.id);
        self.api.put_json(&self.token, &path, body.into()).await?;
        Ok(Outcome::Done { units: 1 })
    }
}

/// ED2: 8 clients, each saving its own project with 20 new costumes per save, end to end (the
/// 20 asset POSTs, then the PUT); the latency columns are of a whole save.
pub async fn ed2(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token = ctx.token("ed2-writer", "student").await?;
    let ids = seed_projects(
        &ctx.api,
        std::slice::from_ref(&token),
        ED2_CLIENTS,
        project(4 * 1024, &[]),
    )
    .await?;
    let token: Arc<str> = token.into();
    let workers = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| AssetsThenSave {
            api: ctx.api.clone(),
            token: Arc::clone(&token),
            id,
            client: i as u64 + 1,
            saves: 0,
        })
        .collect();
    let m = ctx.measure(workers, ctx.profile.short_phases()).await?;
    let mut row = ctx.load_row(
        "ED2",
        format!("save with {ED2_ASSETS} new assets (POSTs, then PUT), {ED2_CLIENTS} clients"),
        &m,
    );
    row.value = rate(m.load.ops_per_sec(), "saves/s");
    row.target = "0 errors".into();
    row.met = m.load.errors.total() == 0;
    Ok(vec![row])
}
