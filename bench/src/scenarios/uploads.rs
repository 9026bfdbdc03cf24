//! U1 (upload throughput against hashing the same bytes with coreutils) and U2 (100 racing
//! uploads of identical bytes must store one asset).

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Barrier;

use super::Ctx;
use crate::{
    baseline,
    client::{Api, CallError, UploadFile},
    error::{Context, Result},
    load::{ErrorTally, Latencies, Outcome, Worker},
    payload::{Filler, MIB, WavPayload},
    report::{Row, rate},
    rss::RssSampler,
};

const U1_CLIENTS: usize = 8;
const U1_SIZES: [u64; 2] = [MIB, 50 * MIB];
const U1_TARGET: f64 = 0.7;
const U2_UPLOADS: usize = 100;
const U2_SIZE: u64 = MIB;
/// Payload tags: U1 numbers its own from 0; these stay clear of them.
const U2_TAG: u64 = u64::MAX - 1;
const HASH_BASELINE_TAG: u64 = u64::MAX;
const FILLER_SEED: u64 = 0x00a7_e11e;

fn wav_file(len: u64) -> UploadFile {
    UploadFile {
        name: "sound.wav",
        mime: "audio/wav",
        len,
    }
}

/// Uploads distinct sounds of one size, back to back.
struct Uploader {
    api: Api,
    token: Arc<str>,
    filler: Filler,
    size: u64,
    next_tag: u64,
}

impl Worker for Uploader {
    async fn step(&mut self, _deadline: Instant) -> Result<Outcome, CallError> {
        let payload = WavPayload::new(self.size, self.next_tag, &self.filler);
        self.next_tag += 1;
        let result = self
            .api
            .upload(
                &self.token,
                "SOUND",
                wav_file(self.size),
                payload.into_body(),
            )
            .await?;
        if result["created"].as_bool() != Some(true) {
            return Err(CallError::Malformed(
                "a distinct upload was not stored as a new asset".into(),
            ));
        }
        Ok(Outcome::Done { units: self.size })
    }
}

/// md5sum + sha256sum throughput over a payload of `size` bytes (measured once per run).
pub(super) async fn hash_baseline(ctx: &mut Ctx<'_>, filler: &Filler, size: u64) -> Result<f64> {
    if let Some(&bps) = ctx.baselines.hash.get(&size) {
        return Ok(bps);
    }
    let path = ctx.scratch.join(format!("hash-baseline-{size}.wav"));
    WavPayload::new(size, HASH_BASELINE_TAG, filler)
        .write_to(&path)
        .await?;
    let bps = baseline::hash_throughput(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    let bps = bps?;
    ctx.baselines.hash.insert(size, bps);
    Ok(bps)
}

/// U1: 8 clients upload distinct 1 MiB, then 50 MiB sounds; MB/s against md5sum + sha256sum.
pub async fn u1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token: Arc<str> = ctx.token("uploader", "student").await?.into();
    let filler = Filler::new(FILLER_SEED);
    let mut rows = Vec::new();
    for (size_index, size) in U1_SIZES.into_iter().enumerate() {
        let hash_bps = hash_baseline(ctx, &filler, size).await?;
        let uploaders = (0..U1_CLIENTS as u64)
            .map(|client| Uploader {
                api: ctx.api.clone(),
                token: Arc::clone(&token),
                filler: filler.clone(),
                size,
                next_tag: ((size_index as u64) << 48) | (client << 32),
            })
            .collect();
        let m = ctx.measure(uploaders, ctx.profile.phases).await?;

        let mut row = ctx.load_row(
            "U1",
            format!("uploadAsset {} MiB, {U1_CLIENTS} clients", size / MIB),
            &m,
        );
        let bps = m.load.units_per_sec();
        row.value = rate(bps / 1e6, "MB/s");
        row.baseline = Some(rate(hash_bps / 1e6, "MB/s (md5sum + sha256sum)"));
        row.ratio = Some(bps / hash_bps);
        row.target = format!("≥ {U1_TARGET} × md5sum + sha256sum, 0 errors");
        row.met = m.load.errors.total() == 0 && bps / hash_bps >= U1_TARGET;
        row.notes
            .push(format!("{} uploads in the window", m.load.ops));
        rows.push(row);
    }
    Ok(rows)
}

/// U2: 100 uploads of the same 1 MiB, released at once: one asset, one `created: true`.
pub async fn u2(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let token: Arc<str> = ctx.token("uploader", "student").await?.into();
    let payload = WavPayload::new(U2_SIZE, U2_TAG, &Filler::new(FILLER_SEED));
    let barrier = Arc::new(Barrier::new(U2_UPLOADS));
    let before = ctx.api.counters().await?;
    let rss = RssSampler::start(ctx.server.pid());
    let start = Instant::now();
    let tasks: Vec<_> = (0..U2_UPLOADS)
        .map(|_| {
            let (api, token, payload, barrier) = (
                ctx.api.clone(),
                Arc::clone(&token),
                payload.clone(),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let began = Instant::now();
                let result = api
                    .upload(
                        &token,
                        "SOUND",
                        wav_file(payload.len()),
                        payload.into_body(),
                    )
                    .await;
                (began.elapsed(), result)
            })
        })
        .collect();
    let joined = tokio::time::timeout(Duration::from_secs(180), futures::future::join_all(tasks))
        .await
        .context("U2's uploads did not finish in time")?;
    let elapsed = start.elapsed();
    let peak_rss = rss.finish();
    let after = ctx.api.counters().await?;

    let mut errors = ErrorTally::default();
    let mut micros = Vec::new();
    let mut created = 0;
    let mut ids = BTreeSet::new();
    for joined in joined {
        let (latency, result) = joined.context("an upload task panicked")?;
        match result {
            Ok(asset) => {
                micros.push(latency.as_micros() as u64);
                created += u32::from(asset["created"].as_bool() == Some(true));
                ids.insert(asset["asset"]["id"].to_string());
            }
            Err(e) => errors.add(&e),
        }
    }
    let latencies = Latencies::from_unsorted(micros);
    let requests = after.requests.saturating_sub(before.requests + 1);

    let mut row = Row::new(
        ctx.backend,
        "U2",
        format!("{U2_UPLOADS} concurrent identical 1 MiB uploads"),
    );
    row.value = rate(U2_UPLOADS as f64 / elapsed.as_secs_f64(), "uploads/s");
    row.p50 = latencies.quantile(0.5);
    row.p99 = latencies.quantile(0.99);
    row.errors = Some(errors.total());
    row.peak_rss = Some(peak_rss);
    row.stmts_per_req =
        Some(after.statements.saturating_sub(before.statements) as f64 / requests.max(1) as f64);
    row.target = "1 asset (one created: true, one id), 0 errors".into();
    row.met = errors.total() == 0 && created == 1 && ids.len() == 1;
    row.notes.push(format!(
        "created: true ×{created}, {} distinct id(s)",
        ids.len()
    ));
    row.notes.extend(errors.summary());
    Ok(vec![row])
}
