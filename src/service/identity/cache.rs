//! The token cache: token hash → viewer, an optimisation that never extends authority. On
//! PostgreSQL it is trusted only while this process's listener hears every authority change
//! ([`super::propagate`]); on SQLite an epoch file in the data dir validates it.

use crate::domain::Viewer;

/// An upper bound on how long a resolved token is trusted even while notifications flow.
const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Token hash → viewer. An optimisation only, and one that never extends authority:
///
/// - It is *trusted* only while this process's listener on [`AUTH_CHANNEL`](super::AUTH_CHANNEL) is connected
///   ([`AuthSubscriber`](super::AuthSubscriber) on `db::listen`). Before the listener connects, after it fails and until it has
///   reconnected, every lookup goes to the database and nothing is stored. SQLite has no
///   listener, so there the cache is never used (a token lookup is a local query).
/// - Every notification, and every change of trust, clears it and bumps a generation. A lookup
///   takes the generation before its query and stores its answer only if the generation is
///   unchanged, so an answer read before an authority change can never be stored after the
///   notification of that change has cleared the cache.
/// - Whoever changes authority waits, after the commit, until every listening process has
///   cleared its cache ([`await_authority_propagated`](super::await_authority_propagated)), so the change holds for the next
///   request anywhere, not merely a moment later.
#[derive(Default)]
pub struct TokenCache {
    state: std::sync::Mutex<CacheState>,
    /// SQLite: the epoch file checked before every lookup (see [`EPOCH_FILE`]).
    epoch_file: Option<std::path::PathBuf>,
    /// Bumped whenever the cache is emptied (an authority change was heard, or trust
    /// changed): long-running work (open sockets, subscriptions) re-checks its authority then
    /// instead of waiting for its next poll.
    changed: tokio::sync::watch::Sender<u64>,
}

/// SQLite has no LISTEN/NOTIFY: every authority change (from this process or a CLI process)
/// rewrites this file after its commit, and every lookup first checks with one `stat` that it
/// has not changed since the cache was filled.
const EPOCH_FILE: &str = "auth.epoch";

/// What `stat` says of the epoch file: any change of it is an authority change.
type Epoch = Option<(std::time::SystemTime, u64, u64)>;

fn read_epoch(path: &std::path::Path) -> Epoch {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[derive(Default)]
struct CacheState {
    /// SQLite: what the epoch file said when the entries were filled.
    epoch_seen: Epoch,
    entries: std::collections::HashMap<String, (Viewer, std::time::Instant)>,
    generation: u64,
    trusted: bool,
    /// Counters for `/metrics`.
    hits: u64,
    invalidations: u64,
}

/// What a cache miss hands to [`TokenCache::put`]: the generation the lookup started in, or
/// nothing when the cache was not trusted (the answer must not be stored).
pub struct Ticket(Option<u64>);

impl TokenCache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state stays consistent even if a holder panicked: every change is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cache for SQLite, validated by the epoch file in `data_dir` on every lookup.
    pub fn with_epoch_file(data_dir: &std::path::Path) -> TokenCache {
        let path = data_dir.join(EPOCH_FILE);
        let state = CacheState {
            epoch_seen: read_epoch(&path),
            trusted: true,
            ..Default::default()
        };
        TokenCache {
            state: std::sync::Mutex::new(state),
            epoch_file: Some(path),
            changed: Default::default(),
        }
    }

    /// SQLite: tells every process's token cache that authority changed. A process that dies
    /// between its commit and this write leaves caches trusting the old authority for at most
    /// [`TOKEN_CACHE_TTL`].
    pub(super) fn bump_epoch(&self) {
        let Some(path) = &self.epoch_file else {
            return;
        };
        let stamp = uuid::Uuid::new_v4().simple().to_string();
        if let Err(e) = std::fs::write(path, stamp) {
            tracing::error!(error = %e, path = %path.display(), "auth_epoch_write_failed");
        }
    }

    pub(crate) fn get(&self, hash: &str) -> Result<Viewer, Ticket> {
        // The `stat` runs before the lock is taken: concurrent requests do not queue behind it.
        let epoch = self.epoch_file.as_deref().map(read_epoch);
        let mut state = self.state();
        if !state.trusted {
            return Err(Ticket(None));
        }
        if let Some(now) = epoch
            && now != state.epoch_seen
        {
            state.epoch_seen = now;
            state.invalidations += 1;
            state.generation += 1;
            state.entries.clear();
            self.announce_change();
        }
        match state.entries.get(hash) {
            Some((viewer, until)) if *until > std::time::Instant::now() => {
                let viewer = *viewer;
                state.hits += 1;
                Ok(viewer)
            }
            _ => Err(Ticket(Some(state.generation))),
        }
    }

    pub(crate) fn put(
        &self,
        ticket: Ticket,
        hash: String,
        viewer: Viewer,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let Ticket(Some(generation)) = ticket else {
            return;
        };
        let mut ttl = TOKEN_CACHE_TTL;
        if let Some(at) = expires_at {
            ttl = ttl.min((at - chrono::Utc::now()).to_std().unwrap_or_default());
        }
        let mut state = self.state();
        if !state.trusted || state.generation != generation {
            return;
        }
        if state.entries.len() >= TOKEN_CACHE_MAX {
            state.entries.clear();
        }
        state
            .entries
            .insert(hash, (viewer, std::time::Instant::now() + ttl));
    }

    /// Forgets every entry: an authority change was announced.
    pub fn invalidate(&self) {
        let mut state = self.state();
        state.invalidations += 1;
        state.generation += 1;
        state.entries.clear();
        self.announce_change();
    }

    /// Resolves (`changed().await`) after every later emptying of the cache: authority may
    /// have changed, so whoever holds it for long should ask again. On PostgreSQL that is a
    /// moment after any process commits a change; on SQLite, when a lookup in this process
    /// notices the epoch file changed (subscriptions also re-check on their own poll).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn announce_change(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Starts (listener connected and listening) or stops (listener down) trusting the cache;
    /// either way it starts empty, since changes made while nobody listened were not heard.
    pub fn set_trusted(&self, trusted: bool) {
        let mut state = self.state();
        state.generation += 1;
        state.entries.clear();
        state.trusted = trusted;
        self.announce_change();
    }

    /// Whether lookups may be answered from the cache (the listener is connected).
    pub fn is_trusted(&self) -> bool {
        self.state().trusted
    }

    /// Prometheus text: whether the cache is trusted, hits, and invalidations heard.
    pub fn render_metrics(&self) -> String {
        let state = self.state();
        format!(
            "# HELP atelier_auth_cache_trusted 1 while tokens may be answered from the cache (PostgreSQL: the authority-change listener is connected; SQLite: always, guarded by the epoch file), else 0.\n\
             # TYPE atelier_auth_cache_trusted gauge\natelier_auth_cache_trusted {}\n\
             # HELP atelier_auth_cache_hits_total Requests authenticated from the token cache.\n\
             # TYPE atelier_auth_cache_hits_total counter\natelier_auth_cache_hits_total {}\n\
             # HELP atelier_auth_cache_invalidations_total Authority-change notifications heard.\n\
             # TYPE atelier_auth_cache_invalidations_total counter\natelier_auth_cache_invalidations_total {}\n",
            u8::from(state.trusted),
            state.hits,
            state.invalidations
        )
    }
}
