//! H1: what history costs. 200 editor saves of a 300 KiB project (five sprites with costumes,
//! one sprite's script changed per save): the growth of the blob store's bytes per version
//! against the `gzip -6` size of the same JSON, measured in the same run (every version is a
//! whole compressed blob, so compression is what has to keep history cheap), assets stored
//! once; and the statements `Project.versions(first: 50)` adds to a project read.

use std::{path::Path, sync::Arc, time::Instant};

use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{Ctx, seed_projects};
use crate::{
    client::{Api, CallError},
    error::{Context, Result},
    load::{Outcome, Worker},
    payload::svg,
    report::{Row, rate},
};

const SAVES: usize = 200;
const SPRITES: usize = 5;
const CONTENT_BYTES: usize = 300 * 1024;
/// Bytes on disk per version, at most this share of the JSON's `gzip -6` size.
const GROWTH_TARGET: f64 = 1.2;
/// One request at a time: concurrent `project(id)` reads coalesce into shared statements (and
/// a slower query coalesces less), so with several clients the difference between the two
/// phases would measure coalescing, not what `versions` costs one request.
const READERS: usize = 1;
/// Statements `versions(first: 50)` may add to a project read (the versions, their savers).
const VERSIONS_STATEMENTS: f64 = 2.0;

/// Five sprites, each with its own costume and about a fifth of `bytes` of script; save
/// `n` changes sprite `n % 5`'s first block.
fn project(costumes: &[String], n: usize) -> Value {
    let per_sprite = CONTENT_BYTES / SPRITES;
    let mut targets = vec![json!({"isStage": true, "name": "Stage", "variables": {},
        "lists": {}, "broadcasts": {}, "blocks": {}, "comments": {}, "currentCostume": 0,
        "costumes": [], "sounds": [], "volume": 100, "layerOrder": 0})];
    for (s, md5ext) in costumes.iter().enumerate() {
        let mut blocks = serde_json::Map::new();
        let mut i = 0;
        while i * 150 < per_sprite {
            // The block this save changes carries the save's number.
            let steps = if i == 0 && n % SPRITES == s { n } else { 10 };
            blocks.insert(
                format!("s{s}b{i:05}"),
                json!({"opcode": "motion_movesteps", "next": null, "parent": null,
                       "inputs": {"STEPS": [1, [4, steps.to_string()]]}, "fields": {},
                       "shadow": false, "topLevel": true, "x": i, "y": s}),
            );
            i += 1;
        }
        let md5 = md5ext.split('.').next().unwrap_or_default();
        targets.push(
            json!({"isStage": false, "name": format!("Sprite{s}"), "variables": {},
            "lists": {}, "broadcasts": {}, "blocks": blocks, "comments": {},
            "currentCostume": 0, "costumes": [{"assetId": md5, "name": "c", "md5ext": md5ext,
            "dataFormat": "svg", "rotationCenterX": 1, "rotationCenterY": 1}], "sounds": [],
            "volume": 100, "layerOrder": s + 1, "visible": true, "x": 0, "y": 0, "size": 100,
            "direction": 90, "draggable": false, "rotationStyle": "all around"}),
        );
    }
    json!({"targets": targets, "monitors": [], "extensions": [],
           "meta": {"semver": "3.0.0", "vm": "0.2.0", "agent": "atelier-bench"}})
}

/// (files, bytes) under the blob store.
fn blob_usage(data_dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, acc: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), acc),
                Ok(m) => {
                    acc.0 += 1;
                    acc.1 += m.len();
                }
                Err(_) => {}
            }
        }
    }
    let mut acc = (0, 0);
    walk(&data_dir.join("blobs"), &mut acc);
    acc
}

/// `gzip -6 -c | wc -c` of `bytes`: the baseline a version's blob is held to.
async fn gzip6(bytes: Vec<u8>) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new("gzip")
        .args(["-6", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip (the baseline)")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let mut stdout = child.stdout.take().context("gzip stdout")?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&bytes).await;
    });
    let mut out = Vec::new();
    stdout
        .read_to_end(&mut out)
        .await
        .context("reading gzip's output")?;
    let _ = writer.await;
    child.wait().await.context("gzip")?;
    Ok(out.len() as u64)
}

/// Reads its project, with or without its last 50 versions.
struct Reader {
    api: Api,
    token: Arc<str>,
    id: String,
    query: &'static str,
}

impl Worker for Reader {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        self.api
            .graphql(&self.token, self.query, json!({ "id": self.id }))
            .await?;
        Ok(Outcome::Done { units: 1 })
    }
}

const READ_PLAIN: &str = "query($id: ID!) { project(id: $id) { id version } }";
const READ_VERSIONS: &str = "query($id: ID!) { project(id: $id) { id version \
    versions(first: 50) { edges { node { version title size savedAt via savedBy { displayName } } } } } }";

pub async fn h1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token = ctx.token("h1-writer", "student").await?;
    let mut costumes = Vec::new();
    for s in 0..SPRITES {
        let bytes = svg(costume_seed(s));
        let md5ext = format!("{}.svg", hex::encode(Md5::digest(&bytes)));
        ctx.api
            .post_raw(&token, &format!("/scratch/assets/{md5ext}"), bytes)
            .await
            .context("uploading a costume")?;
        costumes.push(md5ext);
    }
    let first = project(&costumes, 0);
    let size = serde_json::to_vec(&first).map(|v| v.len()).unwrap_or(0);
    let ids = seed_projects(&ctx.api, std::slice::from_ref(&token), 1, first).await?;
    let id = ids.first().context("no project")?.clone();
    let data_dir = ctx.store.data_dir.clone();
    let (files_before, bytes_before) = blob_usage(&data_dir);

    let path = format!("/scratch/projects/{id}");
    let mut gzip_total = 0u64;
    let started = Instant::now();
    for n in 1..=SAVES {
        let body = serde_json::to_vec(&project(&costumes, n)).context("serialising")?;
        gzip_total += gzip6(body.clone()).await?;
        ctx.api
            .put_json(&token, &path, body.into())
            .await
            .context("an editor save")?;
    }
    let took = started.elapsed();
    let (files_after, bytes_after) = blob_usage(&data_dir);
    let per_version = (bytes_after.saturating_sub(bytes_before)) as f64 / SAVES as f64;
    let gzip_mean = gzip_total as f64 / SAVES as f64;
    let new_files = files_after.saturating_sub(files_before);

    let mut growth = Row::new(
        ctx.backend,
        "H1",
        format!(
            "{SAVES} editor saves of a {} KiB project ({SPRITES} sprites, one changed per save): blob store growth per version",
            size / 1024
        ),
    );
    growth.value = format!("{:.1} KiB/version", per_version / 1024.0);
    growth.baseline = Some(format!(
        "{:.1} KiB (gzip -6 of the same JSON, same run)",
        gzip_mean / 1024.0
    ));
    let ratio = (gzip_mean > 0.0).then(|| per_version / gzip_mean);
    growth.ratio = ratio;
    growth.target = format!("≤ {GROWTH_TARGET} × gzip -6; assets stored once");
    // One new blob per version (its content), none for the costumes it keeps naming.
    growth.met = ratio.is_some_and(|r| r <= GROWTH_TARGET) && new_files == SAVES as u64;
    growth.notes.push(format!(
        "{new_files} new blob files for {SAVES} versions; saves took {:.1} s in all ({})",
        took.as_secs_f64(),
        rate(SAVES as f64 / took.as_secs_f64().max(1e-9), "saves/s")
    ));

    // Statements: the same project read with and without its last 50 versions.
    let token: Arc<str> = token.into();
    let readers = |query: &'static str| -> Vec<Reader> {
        (0..READERS)
            .map(|_| Reader {
                api: ctx.api.clone(),
                token: Arc::clone(&token),
                id: id.clone(),
                query,
            })
            .collect()
    };
    let phases = ctx.profile.short_phases();
    let plain = ctx.measure(readers(READ_PLAIN), phases).await?;
    let with_versions = ctx.measure(readers(READ_VERSIONS), phases).await?;
    let added = with_versions.stmts_per_req - plain.stmts_per_req;
    let mut stmts = ctx.load_row(
        "H1",
        format!("project(id) {{ versions(first: 50) {{ … savedBy }} }}, {READERS} client (one request at a time)"),
        &with_versions,
    );
    stmts.value = rate(with_versions.load.ops_per_sec(), "req/s");
    stmts.baseline = Some(format!(
        "{:.2} statements/request without versions (same run)",
        plain.stmts_per_req
    ));
    stmts.target = format!("versions(first: 50) adds ≤ {VERSIONS_STATEMENTS} statements, 0 errors");
    stmts.met = added <= VERSIONS_STATEMENTS + 0.05 && with_versions.load.errors.total() == 0;
    stmts
        .notes
        .push(format!("adds {added:.2} statements per request"));
    Ok(vec![growth, stmts])
}

/// A distinct seed per costume of H1.
fn costume_seed(s: usize) -> u64 {
    0x4831_0000 + s as u64
}
