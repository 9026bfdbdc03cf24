//! IMP1: `atelier import` of a directory of 200 real-shaped `.sb3` files (a stage and a sprite,
//! SVG, PNG and WAV assets of their own, one backdrop shared by all), run beside the serving
//! process on the same store. Throughput against `unzip -p | md5sum` over the same files in
//! the same run (decompressing and hashing everything is the least an import must do), then
//! a second run over the same directory that must skip everything, much faster.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use md5::Digest;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};

use super::Ctx;
use crate::{
    error::{Context, Result, bail},
    payload::svg,
    report::{Row, rate},
    server,
};

const FILES: usize = 200;
/// Random (incompressible) media: the zip is as big as what it holds.
const PNG_BYTES: usize = 96 * 1024;
const WAV_BYTES: usize = 160 * 1024;
const THROUGHPUT_TARGET: f64 = 0.5;
const SKIP_SPEEDUP_TARGET: f64 = 10.0;
const SEED: u64 = 0x5b3_5b3;

fn md5ext(bytes: &[u8], ext: &str) -> String {
    format!("{}.{ext}", hex::encode(md5::Md5::digest(bytes)))
}

/// `len` bytes: `magic`, then random filler.
fn media(rng: &mut SmallRng, magic: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    bytes.resize(len, 0);
    rng.fill_bytes(&mut bytes[magic.len()..]);
    bytes
}

/// One `.sb3`: (file bytes).
fn sb3(rng: &mut SmallRng, n: usize) -> Result<Vec<u8>> {
    let backdrop = svg(u64::MAX - 7);
    let costume = svg(n as u64);
    let bitmap = media(rng, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", PNG_BYTES);
    let sound = media(rng, b"RIFF\x24\0\0\0WAVEfmt ", WAV_BYTES);
    let names = [
        md5ext(&backdrop, "svg"),
        md5ext(&costume, "svg"),
        md5ext(&bitmap, "png"),
        md5ext(&sound, "wav"),
    ];
    let costume_of = |name: &str, md5ext: &str| {
        let (id, fmt) = md5ext.split_once('.').unwrap_or_default();
        json!({ "name": name, "assetId": id, "md5ext": md5ext, "dataFormat": fmt,
                "rotationCenterX": 0, "rotationCenterY": 0 })
    };
    let project: Value = json!({
        "targets": [
            { "isStage": true, "name": "Stage", "variables": {}, "lists": {}, "broadcasts": {},
              "blocks": {}, "comments": {}, "currentCostume": 0,
              "costumes": [costume_of("backdrop1", &names[0])], "sounds": [],
              "volume": 100, "layerOrder": 0, "tempo": 60 },
            { "isStage": false, "name": format!("Sprite{n}"), "variables": {}, "lists": {},
              "broadcasts": {}, "blocks": {}, "comments": {}, "currentCostume": 0,
              "costumes": [costume_of("costume1", &names[1]), costume_of("costume2", &names[2])],
              "sounds": [{ "name": "pop", "assetId": names[3].split('.').next(),
                           "dataFormat": "wav", "md5ext": names[3], "rate": 48000,
                           "sampleCount": 1 }],
              "volume": 100, "layerOrder": 1, "visible": true, "x": 0, "y": 0, "size": 100,
              "direction": 90, "draggable": false, "rotationStyle": "all around" }
        ],
        "monitors": [], "extensions": [], "meta": { "semver": "3.0.0" }
    });
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let entries = [
        ("project.json".to_owned(), project.to_string().into_bytes()),
        (names[0].clone(), backdrop),
        (names[1].clone(), costume),
        (names[2].clone(), bitmap),
        (names[3].clone(), sound),
    ];
    for (name, bytes) in entries {
        zip.start_file(name, options).context("writing an .sb3")?;
        zip.write_all(&bytes).context("writing an .sb3")?;
    }
    Ok(zip.finish().context("writing an .sb3")?.into_inner())
}

/// Writes the fixture directory; returns the files and their total size.
fn write_fixtures(dir: &Path) -> Result<(Vec<PathBuf>, u64)> {
    std::fs::create_dir_all(dir).context("creating IMP1's directory")?;
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut files = Vec::with_capacity(FILES);
    let mut total = 0;
    for n in 0..FILES {
        let bytes = sb3(&mut rng, n)?;
        total += bytes.len() as u64;
        let path = dir.join(format!("project-{n:03}.sb3"));
        std::fs::write(&path, bytes).context("writing an .sb3")?;
        files.push(path);
    }
    Ok((files, total))
}

/// `unzip -p FILE | md5sum` over every file, one after the other.
async fn unzip_md5sum(files: &[PathBuf]) -> Result<Duration> {
    let start = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("for f in \"$@\"; do unzip -p \"$f\" | md5sum; done")
        .arg("sh")
        .args(files)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("running unzip -p | md5sum")?;
    if !status.success() {
        bail!("unzip -p | md5sum failed: {status}");
    }
    Ok(start.elapsed())
}

/// One `atelier import --json` run: (wall time, summary).
async fn import(ctx: &Ctx<'_>, dir: &Path) -> Result<(Duration, Value)> {
    let dir = dir.to_str().context("a UTF-8 scratch path")?;
    let start = Instant::now();
    let out = server::cli(
        ctx.ws,
        ctx.store,
        &["import", "--json", dir, "--owner", "bench-importer"],
    )
    .await?;
    let elapsed = start.elapsed();
    let summary: Value = serde_json::from_str(&out).context("atelier import printed no JSON")?;
    Ok((elapsed, summary))
}

pub async fn imp1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let dir = ctx
        .scratch
        .join(format!("imp1-{}", ctx.backend).to_lowercase());
    let (files, total_bytes) = write_fixtures(&dir)?;
    // Warm the page cache for both sides, then the baseline.
    unzip_md5sum(&files).await?;
    let baseline = unzip_md5sum(&files).await?;
    let baseline_bps = total_bytes as f64 / baseline.as_secs_f64();

    let (first, summary) = import(ctx, &dir).await?;
    let (imported, failed) = (summary["imported"].as_u64(), summary["failed"].as_u64());
    let bps = total_bytes as f64 / first.as_secs_f64();
    let mut row = Row::new(
        ctx.backend,
        "IMP1",
        format!(
            "atelier import, {FILES} .sb3 ({:.1} MB), first run",
            total_bytes as f64 / 1e6
        ),
    );
    row.value = rate(bps / 1e6, "MB/s");
    row.errors = failed;
    row.baseline = Some(rate(baseline_bps / 1e6, "MB/s (unzip -p | md5sum)"));
    row.ratio = Some(bps / baseline_bps);
    row.target = format!("≥ {THROUGHPUT_TARGET} × unzip -p | md5sum, {FILES} imported, 0 failed");
    row.met = imported == Some(FILES as u64)
        && failed == Some(0)
        && bps / baseline_bps >= THROUGHPUT_TARGET;
    row.notes.push(format!(
        "{:.0} files/s ({} in {:.2} s; baseline {:.2} s); imported {imported:?}, failed {failed:?}",
        FILES as f64 / first.as_secs_f64(),
        FILES,
        first.as_secs_f64(),
        baseline.as_secs_f64()
    ));

    let (second, summary) = import(ctx, &dir).await?;
    let skipped = summary["skipped"].as_u64();
    let mut again = Row::new(ctx.backend, "IMP1", "the same directory again: all skipped");
    let speedup = first.as_secs_f64() / second.as_secs_f64();
    again.value = format!("{:.0} ms", second.as_secs_f64() * 1e3);
    again.errors = summary["failed"].as_u64();
    again.baseline = Some(format!(
        "{:.0} ms (the first run)",
        first.as_secs_f64() * 1e3
    ));
    again.ratio = Some(speedup);
    again.target = format!("≥ {SKIP_SPEEDUP_TARGET}× faster than the first run, {FILES} skipped");
    again.met = skipped == Some(FILES as u64) && speedup >= SKIP_SPEEDUP_TARGET;
    again.notes.push(format!(
        "{:.0} files/s; skipped {skipped:?}, imported {:?}",
        FILES as f64 / second.as_secs_f64(),
        summary["imported"].as_u64()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![row, again])
}
