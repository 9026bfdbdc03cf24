//! C1 (32 clients copy one shared project: no bytes written, few statements per copy) and B1
//! (backpack saves of two 100 KiB blobs, against hashing the same bytes).

use std::{path::Path, sync::Arc, time::Instant};

use bytes::Bytes;
use serde_json::json;

use super::{Ctx, seed_projects, uploads::hash_baseline};
use crate::{
    client::{Api, CallError},
    error::{Context, Result},
    load::{Outcome, Worker},
    payload::{Filler, WavPayload},
    report::{Row, rate},
    server,
};

const C1_CLIENTS: usize = 32;
const C1_MAX_STATEMENTS: f64 = 5.0;
const B1_CLIENTS: usize = 8;
const B1_SIZE: u64 = 100 * 1024;
const FILLER_SEED: u64 = 0x0bac_c9ac;

const SHARE: &str =
    "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }";
const COPY: &str = "mutation($id: ID!) { copyProject(input: {id: $id}) { id version } }";

/// Copies one project, over and over.
struct Copier {
    api: Api,
    token: Arc<str>,
    source: Arc<str>,
}

impl Worker for Copier {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let data = self
            .api
            .graphql(&self.token, COPY, json!({ "id": &*self.source }))
            .await?;
        if data["copyProject"]["version"].as_i64() != Some(1) {
            return Err(CallError::Malformed("a copy is not at version 1".into()));
        }
        Ok(Outcome::Done { units: 1 })
    }
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { files_under(&p) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// C1: 32 clients of one class copy the project their teacher shared with it.
pub async fn c1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let teacher = ctx.token("c1-teacher", "teacher").await?;
    let student: Arc<str> = ctx.token("c1-student", "student").await?.into();
    let group = server::cli(ctx.ws, ctx.store, &["group", "create", "c1-class"]).await?;
    for user in ["c1-teacher", "c1-student"] {
        server::cli(ctx.ws, ctx.store, &["group", "add-member", &group, user]).await?;
    }
    let source = seed_projects(
        &ctx.api,
        std::slice::from_ref(&teacher),
        1,
        json!({ "targets": [] }),
    )
    .await?
    .remove(0);
    ctx.api
        .graphql(&teacher, SHARE, json!({ "id": source, "g": [group] }))
        .await
        .context("sharing the C1 project")?;
    let blobs = ctx.store.data_dir.join("blobs");
    let blobs_before = files_under(&blobs);
    let source: Arc<str> = source.into();
    let copiers = (0..C1_CLIENTS)
        .map(|_| Copier {
            api: ctx.api.clone(),
            token: Arc::clone(&student),
            source: Arc::clone(&source),
        })
        .collect();
    let m = ctx.measure(copiers, ctx.profile.phases).await?;
    let written = files_under(&blobs) - blobs_before;

    let mut row = ctx.load_row(
        "C1",
        format!("copyProject of one shared project, {C1_CLIENTS} clients"),
        &m,
    );
    row.value = rate(m.load.ops_per_sec(), "copies/s");
    row.target =
        format!("0 errors, ≤ {C1_MAX_STATEMENTS} statements per copy, no bytes written to blobs/");
    row.met = m.load.errors.total() == 0 && m.stmts_per_req <= C1_MAX_STATEMENTS && written == 0;
    row.notes.push(format!(
        "{} copies, {written} blob files written",
        m.load.ops
    ));
    Ok(vec![row])
}

/// Saves backpack items of distinct bodies and thumbnails.
struct Saver {
    api: Api,
    token: Arc<str>,
    filler: Filler,
    next_tag: u64,
}

impl Worker for Saver {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let body = WavPayload::new(B1_SIZE, self.next_tag, &self.filler);
        let thumbnail = png(B1_SIZE, self.next_tag, &self.filler);
        self.next_tag += 1;
        let body: Bytes = body.chunks().flat_map(|c| c.to_vec()).collect();
        let saved = self
            .api
            .save_backpack_item(&self.token, body, thumbnail)
            .await?;
        if saved["size"].as_u64() != Some(2 * B1_SIZE) {
            return Err(CallError::Malformed(
                "the item's size is not its bytes".into(),
            ));
        }
        Ok(Outcome::Done { units: 2 * B1_SIZE })
    }
}

/// `len` bytes that start like a PNG; distinct per `tag`.
fn png(len: u64, tag: u64, filler: &Filler) -> Bytes {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(format!("atelier-bench thumbnail {tag:020}\n").bytes());
    let rest: Vec<u8> = WavPayload::new(len, tag, filler)
        .chunks()
        .flat_map(|c| c.to_vec())
        .collect();
    bytes.extend_from_slice(&rest[..(len as usize).saturating_sub(bytes.len())]);
    bytes.into()
}

/// B1: 8 clients save backpack items (a 100 KiB sound and a 100 KiB thumbnail each); MB/s
/// against md5sum + sha256sum over the same number of bytes.
pub async fn b1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token: Arc<str> = ctx.token("b1-saver", "student").await?.into();
    let filler = Filler::new(FILLER_SEED);
    let hash_bps = hash_baseline(ctx, &filler, B1_SIZE).await?;
    let savers = (0..B1_CLIENTS as u64)
        .map(|client| Saver {
            api: ctx.api.clone(),
            token: Arc::clone(&token),
            filler: filler.clone(),
            next_tag: client << 32,
        })
        .collect();
    let m = ctx.measure(savers, ctx.profile.phases).await?;
    let mut row = ctx.load_row(
        "B1",
        format!("saveBackpackItem, 2 × 100 KiB, {B1_CLIENTS} clients"),
        &m,
    );
    let bps = m.load.units_per_sec();
    row.value = rate(bps / 1e6, "MB/s");
    row.baseline = Some(rate(hash_bps / 1e6, "MB/s (md5sum + sha256sum)"));
    row.ratio = Some(bps / hash_bps);
    row.target = "0 errors (ratio reported: small files are dominated by per-request work)".into();
    row.met = m.load.errors.total() == 0;
    row.notes
        .push(format!("{} saves in the window", m.load.ops));
    Ok(vec![row])
}
