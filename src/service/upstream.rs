//! Pull-through from an upstream asset host (`ATELIER_ASSET_UPSTREAM`, e.g. Scratch's).
//!
//! The stock editor never uploads the library's sprites, costumes and sounds: it names them
//! by md5ext and loads them from Scratch's CDN. With an upstream configured, an asset a save
//! names that is not stored ([`pull_missing`], called by every content write before its
//! transaction, see `projects::stage_content`) or that an asset GET misses ([`pull`]) is
//! fetched from `<template with {md5ext}>`, and stored exactly like an upload
//! (`assets::store`: staged while streamed, md5 checked against the name, the format sniffed
//! and checked against the extension, `ON CONFLICT DO NOTHING` on (md5, type), published after
//! commit) with no `created_by`, as the built-in assets. From then on it is an ordinary asset:
//! served by `/assets/{md5ext}`, kept by `gc` (its row references its blob), checked by
//! `fsck`.
//!
//! Bounds, per process:
//! - one fetch at a time per md5ext: concurrent misses of one asset wait for the same fetch
//!   (the map of fetches in flight; each fetch runs as its own task, so a caller that goes away
//!   never strands the others);
//! - at most `concurrency` fetches at once; a fetch waits at most `timeout` for its turn,
//!   then the asset counts as missing (`busy`, not remembered);
//! - each fetch at most `timeout` (connect at most `connect_timeout`) and `max_bytes` (reading
//!   stops beyond it);
//! - an asset the upstream did not deliver (404/410, wrong md5, refused, error, timeout) is not
//!   asked for again for `negative_ttl`;
//! - fetches started by anonymous GETs take a token from a bucket of `anonymous_per_minute`;
//!   saves and signed-in GETs do not.
//!
//! Several processes may each fetch the same asset: content addressing makes that harmless
//! (the second store finds the first one's row and drops its own staged copy).
//!
//! Nothing here ever fails a request: an asset the upstream could not deliver is simply still
//! missing (the save answers MISSING_ASSETS listing it, the GET 404).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use crate::{
    domain::{AssetRef, DataFormat, Md5},
    service::{Services, assets},
    storage::StageError,
};

/// What `{md5ext}` in the template is replaced with: `<md5>.<ext>`.
pub const PLACEHOLDER: &str = "{md5ext}";

/// Most assets remembered as not delivered; beyond it the expired ones are forgotten first,
/// then the cache starts again (it only saves upstream requests).
const NEGATIVE_CAP: usize = 10_000;

/// `ATELIER_ASSET_UPSTREAM` and its bounds.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// An http(s) URL containing [`PLACEHOLDER`].
    pub template: String,
    pub max_bytes: u64,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub concurrency: usize,
    pub negative_ttl: Duration,
    pub anonymous_per_minute: u32,
}

impl UpstreamSettings {
    /// The template, trimmed, if it is an http or https URL with a host and `{md5ext}`.
    pub fn check_template(raw: &str) -> Result<String, String> {
        let template = raw.trim();
        if !template.contains(PLACEHOLDER) {
            return Err(format!(
                "ATELIER_ASSET_UPSTREAM must contain {PLACEHOLDER} where the asset's <md5>.<ext> goes (e.g. https://assets.scratch.mit.edu/internalapi/asset/{PLACEHOLDER}/get/), got {template:?}"
            ));
        }
        let sample = template.replace(PLACEHOLDER, "0123456789abcdef0123456789abcdef.svg");
        let url = reqwest::Url::parse(&sample)
            .map_err(|e| format!("ATELIER_ASSET_UPSTREAM is not a URL ({e}): {template:?}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "ATELIER_ASSET_UPSTREAM must be an http or https URL, not {}: {template:?}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("ATELIER_ASSET_UPSTREAM has no host: {template:?}"));
        }
        Ok(template.to_owned())
    }
}

/// Who asked for a fetch: only anonymous GETs are rate-bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A content write's missing-asset check (an authenticated writer).
    Save,
    /// An asset GET by a signed-in caller (or through an editing session).
    SignedInGet,
    /// An asset GET by nobody in particular.
    AnonymousGet,
}

/// How a pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The asset is stored now (fetched, or found stored already).
    Stored,
    /// Fetched and not stored (`not_found`, `mismatch`, `refused`, `error`): remembered for
    /// the negative TTL.
    Failed(&'static str),
    /// No fetch was made (`negative_cached`, `rate_limited`, `busy`).
    Skipped(&'static str),
}

type Fetch = Shared<BoxFuture<'static, Outcome>>;

/// The upstream client and its per-process state.
pub struct Upstream {
    settings: UpstreamSettings,
    client: reqwest::Client,
    permits: tokio::sync::Semaphore,
    state: Mutex<State>,
}

struct State {
    /// Fetches running, by canonical md5ext.
    in_flight: HashMap<String, Fetch>,
    /// Assets not delivered, until when they are not asked for again.
    not_delivered: HashMap<String, Instant>,
    anonymous: Bucket,
}

/// A token bucket: `capacity` tokens, refilled evenly over a minute.
struct Bucket {
    tokens: f64,
    capacity: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let per_sec = self.capacity / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Result<Upstream, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("atelier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the upstream asset client: {e}"))?;
        let capacity = f64::from(settings.anonymous_per_minute);
        Ok(Upstream {
            permits: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            client,
            state: Mutex::new(State {
                in_flight: HashMap::new(),
                not_delivered: HashMap::new(),
                anonymous: Bucket {
                    tokens: capacity,
                    capacity,
                    at: Instant::now(),
                },
            }),
            settings,
        })
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache: a panic elsewhere never leaves it inconsistent enough to stop.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fetch's end: no longer in flight, and remembered if it failed.
    fn finish(&self, key: &str, outcome: Outcome) {
        let mut state = self.state();
        state.in_flight.remove(key);
        if let Outcome::Failed(_) = outcome
            && !self.settings.negative_ttl.is_zero()
        {
            let now = Instant::now();
            if state.not_delivered.len() >= NEGATIVE_CAP {
                state.not_delivered.retain(|_, until| *until > now);
                if state.not_delivered.len() >= NEGATIVE_CAP {
                    state.not_delivered.clear();
                }
            }
            state
                .not_delivered
                .insert(key.to_owned(), now + self.settings.negative_ttl);
        }
    }
}

/// Fetches every asset of `refs` that is not stored, concurrently within the bounds, before a
/// content write's transaction checks them. Does nothing without an upstream. Never fails:
/// whatever is still missing, the transaction reports (MISSING_ASSETS).
pub async fn pull_missing(svc: &Services, refs: &[AssetRef]) {
    if svc.upstream.is_none() || refs.is_empty() {
        return;
    }
    let missing = match super::projects::missing_refs(svc.db.conn(), refs).await {
        Ok(missing) => missing,
        Err(e) => {
            tracing::warn!(error = %e, "upstream_missing_check_failed");
            return;
        }
    };
    let mut wanted: Vec<(&Md5, DataFormat)> = missing.iter().map(|r| (&r.md5, r.format)).collect();
    wanted.sort_unstable_by_key(|(md5, format)| (md5.as_str(), format.extension()));
    wanted.dedup();
    futures::future::join_all(
        wanted
            .into_iter()
            .map(|(md5, format)| pull(svc, md5, format, Trigger::Save)),
    )
    .await;
}

/// Fetches `<md5>.<ext>` from the upstream and stores it, or joins the fetch of it already
/// running. [`Outcome::Stored`] means it can be looked up now.
pub async fn pull(svc: &Services, md5: &Md5, format: DataFormat, trigger: Trigger) -> Outcome {
    let Some(upstream) = svc.upstream.clone() else {
        return Outcome::Skipped("off");
    };
    let key = format!("{}.{}", md5.as_str(), format.extension());
    let fetch = {
        let mut state = upstream.state();
        match state.in_flight.get(&key) {
            Some(fetch) => fetch.clone(),
            None => {
                let now = Instant::now();
                let skip = if state.not_delivered.get(&key).is_some_and(|t| *t > now) {
                    Some("negative_cached")
                } else if trigger == Trigger::AnonymousGet && !state.anonymous.take(now) {
                    Some("rate_limited")
                } else {
                    None
                };
                if let Some(reason) = skip {
                    drop(state);
                    svc.db.metrics.record_upstream_skip(reason);
                    tracing::debug!(asset.md5ext = %key, reason, "upstream_fetch_skipped");
                    return Outcome::Skipped(reason);
                }
                let task = tokio::spawn(run(
                    svc.clone(),
                    upstream.clone(),
                    key.clone(),
                    md5.clone(),
                    format,
                ));
                let fetch: Fetch = async move { task.await.unwrap_or(Outcome::Failed("error")) }
                    .boxed()
                    .shared();
                state.in_flight.insert(key, fetch.clone());
                fetch
            }
        }
    };
    fetch.await
}

/// One fetch, start to finish (its own task).
async fn run(
    svc: Services,
    upstream: Arc<Upstream>,
    key: String,
    md5: Md5,
    format: DataFormat,
) -> Outcome {
    /// Ends the fetch however its task ends (a panic too): never left in flight for good.
    struct Finish<'a> {
        upstream: &'a Upstream,
        key: &'a str,
        outcome: Outcome,
    }
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.upstream.finish(self.key, self.outcome);
        }
    }
    let mut finish = Finish {
        upstream: &upstream,
        key: &key,
        outcome: Outcome::Failed("error"),
    };
    let started = Instant::now();
    let outcome = fetch_and_store(&svc, finish.upstream, finish.key, &md5, format).await;
    finish.outcome = outcome;
    match outcome {
        Outcome::Stored => {}
        Outcome::Failed(o) => svc.db.metrics.record_upstream_fetch(o),
        Outcome::Skipped(r) => svc.db.metrics.record_upstream_skip(r),
    }
    tracing::info!(
        asset.md5ext = %key,
        outcome = ?outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "upstream_fetch_done"
    );
    outcome
}

async fn fetch_and_store(
    svc: &Services,
    upstream: &Upstream,
    key: &str,
    md5: &Md5,
    format: DataFormat,
) -> Outcome {
    // Stored since the caller looked (an upload, a fetch that just finished, another process).
    match assets::find_by_md5ext(svc, md5, format).await {
        Ok(Some(_)) => return Outcome::Stored,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(asset.md5ext = %key, error = %e, "upstream_lookup_failed");
            return Outcome::Skipped("busy");
        }
    }
    let settings = &upstream.settings;
    let Ok(Ok(_permit)) = tokio::time::timeout(settings.timeout, upstream.permits.acquire()).await
    else {
        return Outcome::Skipped("busy");
    };
    let url = settings.template.replace(PLACEHOLDER, key);
    // reqwest's timeout covers the body too; this one also bounds staging on a slow disk.
    let fetched = tokio::time::timeout(
        settings.timeout + Duration::from_secs(1),
        fetch(svc, upstream, &url, key, md5, format),
    )
    .await
    .unwrap_or_else(|_| {
        tracing::warn!(asset.md5ext = %key, "upstream_fetch_timed_out");
        Err("error")
    });
    let upload = match fetched {
        Ok(upload) => upload,
        Err(outcome) => return Outcome::Failed(outcome),
    };
    match assets::store(svc, None, upload, format.kind(), Some(md5.clone()), None).await {
        Ok(_) => {
            svc.db.metrics.record_upstream_fetch("ok");
            Outcome::Stored
        }
        Err(e) => {
            tracing::warn!(asset.md5ext = %key, error = %e, "upstream_asset_not_stored");
            Outcome::Failed("error")
        }
    }
}

/// GETs `url` into staging and checks the bytes: their md5 is the name's, and they are the
/// format the extension names. Err: the outcome's label.
async fn fetch(
    svc: &Services,
    upstream: &Upstream,
    url: &str,
    key: &str,
    md5: &Md5,
    format: DataFormat,
) -> Result<crate::storage::StagedUpload, &'static str> {
    let max = upstream.settings.max_bytes;
    let resp = upstream.client.get(url).send().await.map_err(|e| {
        tracing::warn!(asset.md5ext = %key, error = %e, "upstream_fetch_failed");
        "error"
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err("not_found");
    }
    if !status.is_success() {
        tracing::warn!(asset.md5ext = %key, status = status.as_u16(), "upstream_fetch_failed");
        return Err("error");
    }
    if resp.content_length().is_some_and(|n| n > max) {
        tracing::warn!(asset.md5ext = %key, limit = max, "upstream_asset_too_large");
        return Err("refused");
    }
    let upload = svc
        .blobs
        .stage_stream(Box::pin(resp.bytes_stream()), max)
        .await
        .map_err(|e| match e {
            StageError::TooLarge { limit } => {
                tracing::warn!(asset.md5ext = %key, limit, "upstream_asset_too_large");
                "refused"
            }
            StageError::Body(e) => {
                tracing::warn!(asset.md5ext = %key, error = %e, "upstream_fetch_failed");
                "error"
            }
            StageError::Io(e) => {
                tracing::warn!(asset.md5ext = %key, error = %e, "upstream_asset_staging_failed");
                "error"
            }
        })?;
    // Dropping `upload` below deletes its staged file: nothing is stored.
    if upload.blob.md5 != md5.as_str() {
        tracing::warn!(
            asset.md5ext = %key,
            got.md5 = %upload.blob.md5,
            "upstream_asset_md5_mismatch"
        );
        return Err("mismatch");
    }
    match assets::sniff(format.kind(), &upload.head) {
        Some(f) if f.extension == format.extension() => Ok(upload),
        _ => {
            tracing::warn!(asset.md5ext = %key, "upstream_asset_not_its_format");
            Err("refused")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_http_urls_with_the_placeholder() {
        let ok = "https://assets.scratch.mit.edu/internalapi/asset/{md5ext}/get/";
        assert_eq!(UpstreamSettings::check_template(ok).unwrap(), ok);
        assert!(UpstreamSettings::check_template(" http://127.0.0.1:9/a/{md5ext} ").is_ok());
        assert!(UpstreamSettings::check_template("https://example.org/assets/").is_err());
        assert!(UpstreamSettings::check_template("ftp://example.org/{md5ext}").is_err());
        assert!(UpstreamSettings::check_template("file:///srv/{md5ext}").is_err());
        assert!(UpstreamSettings::check_template("{md5ext}").is_err());
    }

    #[test]
    fn the_bucket_refills_over_a_minute() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 2.0,
            capacity: 2.0,
            at: t0,
        };
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_secs(30)));
        assert!(!b.take(t0 + Duration::from_secs(30)));
    }
}
