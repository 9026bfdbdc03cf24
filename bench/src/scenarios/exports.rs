//! E1: 20 clients export the same project version at once, round after round (each round a new
//! version): one job and one bundle build per version, however many ask.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::Ctx;
use crate::{
    client::{CallError, UploadFile},
    error::{Context, Result},
    load::{ErrorTally, Latencies},
    payload::{Filler, MIB, WavPayload},
    report::{Row, ms},
    rss::RssSampler,
};

const E1_CLIENTS: usize = 20;
/// Sounds of 1 MiB the project references: the bundle is about this many MiB.
const E1_ASSETS: u64 = 4;
const FILLER_SEED: u64 = 0x0e4b_0e4b;

const CREATE: &str = "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id version } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!, $c: JSON!) { updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }";
const EXPORT: &str = "mutation($id: ID!) { exportProject(id: $id) { id status } }";
const JOB: &str = "query($id: ID!) { job(id: $id) { status url error } }";

fn content(sounds: &[String], round: usize) -> Value {
    let sounds: Vec<Value> = sounds
        .iter()
        .enumerate()
        .map(|(i, md5)| json!({ "name": format!("s{i}"), "assetId": md5, "dataFormat": "wav", "md5ext": format!("{md5}.wav") }))
        .collect();
    json!({ "targets": [{ "isStage": true, "name": "Stage", "costumes": [], "sounds": sounds }],
            "meta": { "semver": "3.0.0", "round": round } })
}

/// E1: per round, a new version and 20 concurrent `exportProject` released by a barrier; then
/// polls the job until READY and downloads the bundle.
pub async fn e1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let rounds = if ctx.profile.phases.measure < Duration::from_secs(5) {
        3
    } else {
        10
    };
    let token: Arc<str> = ctx.token("e1-student", "student").await?.into();
    let filler = Filler::new(FILLER_SEED);
    let mut sounds = Vec::new();
    for tag in 0..E1_ASSETS {
        let payload = WavPayload::new(MIB, 0x0e10_0000 + tag, &filler);
        let file = UploadFile {
            name: "sound.wav",
            mime: "audio/wav",
            len: payload.len(),
        };
        let up = ctx
            .api
            .upload(&token, "SOUND", file, payload.into_body())
            .await
            .context("uploading E1's sounds")?;
        sounds.push(
            up["asset"]["md5"]
                .as_str()
                .context("uploadAsset returned no md5")?
                .to_owned(),
        );
    }
    let project = ctx
        .api
        .graphql(
            &token,
            CREATE,
            json!({ "t": "e1", "c": content(&sounds, 0) }),
        )
        .await
        .context("creating E1's project")?["createProject"]["id"]
        .as_str()
        .context("createProject returned no id")?
        .to_owned();
    let project: Arc<str> = project.into();

    let builds_before = ctx.api.metric("atelier_export_builds_total").await?;
    let rss = RssSampler::start(ctx.server.pid());
    let mut errors = ErrorTally::default();
    let mut micros = Vec::new();
    let mut to_ready = Vec::new();
    let (mut jobs, mut split_rounds, mut bad_bundles, mut bundle_bytes) = (0, 0, 0, 0);
    for round in 0..rounds {
        if round > 0 {
            ctx.api
                .graphql(
                    &token,
                    UPDATE,
                    json!({ "id": &*project, "v": round, "c": content(&sounds, round) }),
                )
                .await
                .context("E1's new version")?;
        }
        let barrier = Arc::new(Barrier::new(E1_CLIENTS));
        let released = Instant::now();
        let tasks: Vec<_> = (0..E1_CLIENTS)
            .map(|_| {
                let (api, token, project, barrier) = (
                    ctx.api.clone(),
                    Arc::clone(&token),
                    Arc::clone(&project),
                    Arc::clone(&barrier),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    let began = Instant::now();
                    let r = api
                        .graphql(&token, EXPORT, json!({ "id": &*project }))
                        .await;
                    (began.elapsed(), r)
                })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for joined in futures::future::join_all(tasks).await {
            let (latency, result) = joined.context("an export task panicked")?;
            match result {
                Ok(data) => {
                    micros.push(latency.as_micros() as u64);
                    ids.insert(data["exportProject"]["id"].to_string());
                }
                Err(e) => errors.add(&e),
            }
        }
        jobs += ids.len();
        if ids.len() != 1 {
            split_rounds += 1;
            continue;
        }
        let id = ids.into_iter().next().unwrap_or_default();
        let id = id.trim_matches('"').to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = loop {
            match ctx.api.graphql(&token, JOB, json!({ "id": id })).await {
                Ok(d) if d["job"]["status"] == "READY" => {
                    to_ready.push(released.elapsed().as_micros() as u64);
                    break d["job"]["url"].as_str().map(str::to_owned);
                }
                Ok(d) if d["job"]["status"] == "FAILED" => {
                    errors.add(&CallError::Malformed(format!(
                        "export failed: {}",
                        d["job"]["error"]
                    )));
                    break None;
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(_) => {
                    errors.add(&CallError::Malformed("export not READY in 120 s".into()));
                    break None;
                }
                Err(e) => {
                    errors.add(&e);
                    break None;
                }
            }
        };
        let Some(url) = url else {
            bad_bundles += 1;
            continue;
        };
        match ctx.api.get_bytes(&token, &url).await {
            Ok((status, body)) if status.is_success() && body.starts_with(b"PK") => {
                bundle_bytes = body.len();
            }
            Ok((status, _)) => {
                bad_bundles += 1;
                errors.add(&CallError::Malformed(format!("download answered {status}")));
            }
            Err(e) => {
                bad_bundles += 1;
                errors.add(&e);
            }
        }
    }
    let peak_rss = rss.finish();
    let builds = ctx
        .api
        .metric("atelier_export_builds_total")
        .await?
        .saturating_sub(builds_before);

    let latencies = Latencies::from_unsorted(micros);
    let ready = Latencies::from_unsorted(to_ready);
    let mut row = Row::new(
        ctx.backend,
        "E1",
        format!(
            "{E1_CLIENTS} concurrent exportProject of one version (≈{E1_ASSETS} MiB bundle), {rounds} versions"
        ),
    );
    row.value = format!("{builds} builds / {} requests", rounds * E1_CLIENTS);
    row.p50 = latencies.quantile(0.5);
    row.p99 = latencies.quantile(0.99);
    row.errors = Some(errors.total());
    row.peak_rss = Some(peak_rss);
    row.target = "1 job and 1 build per version, every bundle downloads, 0 errors".into();
    row.met = errors.total() == 0
        && builds == rounds as u64
        && jobs == rounds
        && split_rounds == 0
        && bad_bundles == 0;
    row.notes.push(format!(
        "{jobs} job(s) for {rounds} versions; claim → READY p50 {}, max {}; bundle {:.1} MB",
        ready.quantile(0.5).map(ms).unwrap_or_else(|| "–".into()),
        ready.quantile(1.0).map(ms).unwrap_or_else(|| "–".into()),
        bundle_bytes as f64 / 1e6
    ));
    row.notes.extend(errors.summary());
    Ok(vec![row])
}
