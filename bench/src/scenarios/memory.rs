//! M1: the server's resident memory idle, under R1's read load, and while it receives a
//! 200 MiB upload (which it must stream to disk, not buffer).

use std::time::Instant;

use super::{Ctx, reads::project_readers};
use crate::{
    client::UploadFile,
    error::Result,
    payload::{Filler, MIB, WavPayload},
    report::{Row, mb, ms},
    rss::{self, RssSampler},
};

const IDLE_LIMIT: u64 = 30_000_000;
const LOADED_LIMIT: u64 = 100_000_000;
const UPLOAD_GROWTH_LIMIT: u64 = 32 * MIB;
const LOAD_CLIENTS: usize = 64;
const BIG_UPLOAD: u64 = 200 * MIB;
const BIG_UPLOAD_TAG: u64 = u64::MAX - 2;

pub async fn m1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let mut idle = Row::new(ctx.backend, "M1", "RSS idle (after start)");
    idle.value = mb(ctx.idle_rss);
    idle.peak_rss = Some(ctx.idle_rss);
    idle.target = format!("≤ {}", mb(IDLE_LIMIT));
    idle.met = ctx.idle_rss <= IDLE_LIMIT;

    let ids = ctx.read_ids().await?;
    let admin = ctx.token("bench-admin", "admin").await?;
    let readers = project_readers(&ctx.api, &admin, &ids, LOAD_CLIENTS);
    let m = ctx.measure(readers, ctx.profile.short_phases()).await?;
    let mut loaded = ctx.load_row(
        "M1",
        format!("RSS peak under R1 load ({LOAD_CLIENTS} clients)"),
        &m,
    );
    loaded.value = mb(m.peak_rss);
    loaded.target = format!("≤ {}, 0 errors", mb(LOADED_LIMIT));
    loaded.met = m.peak_rss <= LOADED_LIMIT && m.load.errors.total() == 0;

    let token = ctx.token("uploader", "student").await?;
    let payload = WavPayload::new(BIG_UPLOAD, BIG_UPLOAD_TAG, &Filler::new(BIG_UPLOAD_TAG));
    let file = UploadFile {
        name: "big.wav",
        mime: "audio/wav",
        len: payload.len(),
    };
    let pid = ctx.server.pid();
    let before = rss::current(pid)?;
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let result = ctx
        .api
        .upload(&token, "SOUND", file, payload.into_body())
        .await;
    let took = started.elapsed();
    let peak = sampler.finish();
    let growth = peak.saturating_sub(before);

    let mut upload = Row::new(ctx.backend, "M1", "RSS growth during a 200 MiB upload");
    upload.value = format!("+{:.1} MiB", growth as f64 / MIB as f64);
    upload.p50 = Some(took);
    upload.errors = Some(u64::from(result.is_err()));
    upload.peak_rss = Some(peak);
    upload.target = "grows ≤ 32 MiB, upload succeeds".into();
    upload.met = result.is_ok() && growth <= UPLOAD_GROWTH_LIMIT;
    upload.notes.push(format!(
        "RSS {} before, {} peak; upload took {}",
        mb(before),
        mb(peak),
        ms(took)
    ));
    if let Err(e) = result {
        upload.notes.push(format!("upload failed: {e}"));
    }
    Ok(vec![idle, loaded, upload])
}
