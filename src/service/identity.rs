//! Users, groups, memberships and API tokens. Get-or-create is `INSERT … ON CONFLICT DO
//! NOTHING` followed by a read of the winner, so racing first logins never duplicate a user.

use base64::Engine;
use entity::{api_token, group, group_member, user};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QuerySelect, Statement,
};
use sha2::{Digest, Sha256};

use crate::{
    domain::{GroupId, Role, UserId, Viewer},
    error::{AppError, AppResult},
    service::{Services, now},
};

/// Provider name for users and groups created from the CLI rather than an identity provider.
pub const LOCAL_PROVIDER: &str = "local";

/// Resolves a bearer token to its user. An unknown, expired or revoked token is an error, not
/// an anonymous request: a client with a stale token must learn to sign in again.
///
/// Authority takes effect on the next request: the cache answers only
/// while this process hears every authority change (see [`TokenCache`]); otherwise the
/// database does.
pub async fn authenticate(svc: &Services, token: &str) -> AppResult<Viewer> {
    let hash = hash_token(token);
    let ticket = match svc.tokens.get(&hash) {
        Ok(viewer) => return Ok(viewer),
        Err(ticket) => ticket,
    };
    let mut attempt = 0;
    let found = loop {
        attempt += 1;
        let found = api_token::Entity::find()
            .filter(api_token::Column::TokenHash.eq(&hash))
            .find_also_related(user::Entity)
            .one(svc.db.conn())
            .await
            .map_err(AppError::from);
        match found {
            // A read is always safe to run again: a pooled connection that died behind the
            // pool's back (a database restart, a terminated backend) must not fail the
            // request; the next attempt draws another connection, or a new one.
            Err(e) if e.is_connection_lost() && attempt < LOOKUP_ATTEMPTS => {
                tracing::info!(attempt, error = %e, "token_lookup_retry_after_connection_loss");
            }
            other => break other?,
        }
    };
    match found {
        Some((token, Some(user))) if token.expires_at.is_none_or(|at| at > chrono::Utc::now()) => {
            let viewer = Viewer {
                id: UserId(user.id),
                role: Role::from_db(&user.role),
            };
            svc.tokens.put(ticket, hash, viewer, token.expires_at);
            Ok(viewer)
        }
        _ => Err(AppError::Unauthenticated),
    }
}

/// The PostgreSQL channel on which every authority change (role change, token revocation) is
/// announced, from inside the transaction that makes it, so it is delivered at commit.
pub const AUTH_CHANNEL: &str = "atelier_auth";

/// How many times a token lookup runs when its connection turns out to be dead: more than the
/// pool holds (32 by default), since after a database restart every pooled connection is dead
/// and each fails at once. When no connection can be had at all, the first attempt says so.
const LOOKUP_ATTEMPTS: u32 = 64;

/// An upper bound on how long a resolved token is trusted even while notifications flow.
const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Token hash → viewer. An optimisation only, and one that never extends authority:
///
/// - It is *trusted* only while this process's listener on [`AUTH_CHANNEL`] is connected
///   ([`spawn_auth_listener`]). Before the listener connects, after it fails and until it has
///   reconnected, every lookup goes to the database and nothing is stored. SQLite has no
///   listener, so there the cache is never used (a token lookup is a local query).
/// - Every notification, and every change of trust, clears it and bumps a generation. A lookup
///   takes the generation before its query and stores its answer only if the generation is
///   unchanged, so an answer read before an authority change can never be stored after the
///   notification of that change has cleared the cache.
/// - Whoever changes authority waits, after the commit, until every listening process has
///   cleared its cache ([`await_authority_propagated`]), so the change holds for the next
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
    fn bump_epoch(&self) {
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

/// Announces an authority change on [`AUTH_CHANNEL`] (PostgreSQL only). Run it inside the
/// transaction that makes the change: PostgreSQL delivers it at commit, and not at all on
/// rollback. SQLite keeps no trusted cache, so there is nobody to tell.
pub(crate) async fn announce_authority_change<C: ConnectionTrait>(
    conn: &C,
    what: &str,
) -> AppResult<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [AUTH_CHANNEL.into(), what.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Backoff bounds for reconnecting the listener. While it is down the cache is not used, so a
/// slow reconnect costs throughput, never correctness.
const LISTENER_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(50);
const LISTENER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Each listening process sends itself a heartbeat notification this often, and counts its
/// listener down when it has heard nothing at all, not even a heartbeat, for
/// `LISTENER_SILENCE_LIMIT`. That catches a channel that died without an error (a silently
/// dropped TCP connection, a transaction-mode pooler that does not carry LISTEN).
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const LISTENER_SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
const HEARTBEAT_PAYLOAD: &str = "heartbeat";
/// `application_name` of the listener's connection (see `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "atelier-auth-listener";
/// A notification `sync:<nonce>` on [`AUTH_CHANNEL`] asks every listener to answer `<nonce>`
/// on [`ACK_CHANNEL`] once its cache is clear.
const SYNC_PREFIX: &str = "sync:";
const ACK_CHANNEL: &str = "atelier_auth_ack";
const SYNC_APPLICATION_NAME: &str = "atelier-auth-sync";
/// How long a change waits for every listener's answer before cutting off the ones that did
/// not answer.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Call after an authority change has committed (PostgreSQL; a no-op on SQLite): returns once
/// every `atelier serve` process that may answer from its token cache has cleared it, so the
/// change holds for every request that starts after this returns, in every process.
///
/// The change's own notification reaches each listener a moment after the commit; this asks
/// every listener connected now (found in `pg_stat_activity` by name) to answer a `sync`
/// notification sent after it. PostgreSQL delivers notifications in commit order, and a
/// listener clears its cache before answering. A listener that connects later starts with an
/// empty cache. One that does not answer within `SYNC_TIMEOUT` (a stalled process) has its
/// connection terminated, so that process stops trusting its cache as soon as it runs again.
/// Failing to confirm is logged, not returned: the change itself has committed.
pub async fn await_authority_propagated(svc: &Services) {
    if svc.db.backend() != DbBackend::Postgres {
        svc.tokens.bump_epoch();
        return;
    }
    if let Err(e) = sync_listeners(svc.db.url()).await {
        tracing::warn!(error = %e, "auth_sync_failed");
    }
}

async fn sync_listeners(url: &str) -> Result<(), String> {
    let e = |e: sea_orm::sqlx::Error| e.to_string();
    use sea_orm::sqlx;
    let mut conn = connect_listener(url, SYNC_APPLICATION_NAME)
        .await
        .map_err(e)?;
    conn.listen(ACK_CHANNEL).await.map_err(e)?;
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut conn)
    .await
    .map_err(e)?;
    let mut waiting: std::collections::HashSet<u32> = pids.iter().map(|p| *p as u32).collect();
    if waiting.is_empty() {
        return Ok(());
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(AUTH_CHANNEL)
        .bind(format!("{SYNC_PREFIX}{nonce}"))
        .execute(&mut conn)
        .await
        .map_err(e)?;
    let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
    while !waiting.is_empty() {
        match tokio::time::timeout_at(deadline, conn.try_recv()).await {
            Ok(Ok(Some(n))) if n.payload() == nonce => {
                waiting.remove(&n.process_id());
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("connection lost".to_owned()),
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => break,
        }
    }
    for pid in &waiting {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(*pid as i32)
            .execute(&mut conn)
            .await
            .map_err(e)?;
    }
    if !waiting.is_empty() {
        tracing::warn!(listeners = ?waiting, "auth_listener_unresponsive_terminated");
    }
    Ok(())
}

/// Runs, for the life of the process, the listener that keeps `cache` honest on PostgreSQL:
/// connect (a connection of its own, from `url`), `LISTEN` on [`AUTH_CHANNEL`], then trust the
/// cache; clear it on every notification; on any error or silence stop trusting it, back off,
/// reconnect. The returned receiver resolves once the first attempt has succeeded or failed,
/// so `serve` can start with a usable cache without ever depending on it.
pub fn spawn_auth_listener(
    cache: std::sync::Arc<TokenCache>,
    url: String,
) -> tokio::sync::oneshot::Receiver<()> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        let mut backoff = LISTENER_BACKOFF_MIN;
        loop {
            let error = match listen_once(&cache, &url, &mut first).await {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let was_trusted = cache.is_trusted();
            cache.set_trusted(false);
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            if was_trusted {
                backoff = LISTENER_BACKOFF_MIN;
                tracing::warn!(error = %error, "auth_listener_down");
            } else {
                tracing::warn!(
                    error = %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "auth_listener_connect_failed"
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(LISTENER_BACKOFF_MAX);
        }
    });
    first_rx
}

/// A `PgListener` on a connection of its own, named `application_name` in
/// `pg_stat_activity` (a pool of one, as `PgListener::connect` makes, which only hands the
/// listener its connection).
pub(crate) async fn connect_listener(
    url: &str,
    application_name: &str,
) -> Result<sea_orm::sqlx::postgres::PgListener, sea_orm::sqlx::Error> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
    use std::str::FromStr;
    let options = PgConnectOptions::from_str(url)?.application_name(application_name);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    PgListener::connect_with(&pool).await
}

/// One listener connection's life: returns only with the reason it ended.
async fn listen_once(
    cache: &TokenCache,
    url: &str,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<std::convert::Infallible, String> {
    use std::time::Instant;
    fail::fail_point!("auth::listener_connect", |_| Err(
        "injected failure (auth::listener_connect)".to_owned()
    ));
    let mut listener = connect_listener(url, LISTENER_APPLICATION_NAME)
        .await
        .map_err(|e| e.to_string())?;
    // A lost connection is handled here (down, then a fresh listener), not inside sqlx.
    listener.eager_reconnect(false);
    listener
        .listen(AUTH_CHANNEL)
        .await
        .map_err(|e| e.to_string())?;
    // Listening from here on: every change committed from now is heard. Changes committed
    // before were not, so the cache starts empty.
    cache.set_trusted(true);
    tracing::info!(channel = AUTH_CHANNEL, "auth_listener_up");
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    let (mut last_heard, mut last_beat) = (Instant::now(), None::<Instant>);
    loop {
        if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
            last_beat = Some(Instant::now());
            // On the listener's own connection: a round trip that proves it alive, and a
            // notification that proves delivery (a session hears its own NOTIFY). It does not
            // go through the pool, so it is not counted as a request's statement.
            let beat = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
                .bind(AUTH_CHANNEL)
                .bind(HEARTBEAT_PAYLOAD)
                .execute(&mut listener);
            match tokio::time::timeout(LISTENER_SILENCE_LIMIT, beat).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("heartbeat failed: {e}")),
                Err(_) => return Err("heartbeat timed out".to_owned()),
            }
        }
        // `try_recv` is cancel-safe (sqlx reads whole messages from its own buffer), so
        // waking up for the heartbeat loses nothing. It answers None when the connection was
        // lost (notifications sent meanwhile are lost): that is down, like an error.
        match tokio::time::timeout(HEARTBEAT_EVERY, listener.try_recv()).await {
            Ok(Ok(Some(n))) => {
                last_heard = Instant::now();
                if n.payload() == HEARTBEAT_PAYLOAD {
                    continue;
                }
                // Tests: a listener slow to hear a change (`sleep(ms)`).
                fail::fail_point!("auth::listener_notified");
                cache.invalidate();
                tracing::debug!(payload = n.payload(), "auth_cache_invalidated");
                if let Some(nonce) = n.payload().strip_prefix(SYNC_PREFIX) {
                    // Someone who changed authority waits for every process to say its cache
                    // is clear (see `await_authority_propagated`); it is.
                    sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(ACK_CHANNEL)
                        .bind(nonce)
                        .execute(&mut listener)
                        .await
                        .map_err(|e| format!("acknowledging a sync failed: {e}"))?;
                }
            }
            Ok(Ok(None)) => return Err("connection lost".to_owned()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {}
        }
        if last_heard.elapsed() > LISTENER_SILENCE_LIMIT {
            return Err(format!(
                "no notification, not even a heartbeat, for {} s",
                LISTENER_SILENCE_LIMIT.as_secs()
            ));
        }
    }
}

/// SHA-256 of a token, hex: what the database stores instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Finds the user of (provider, subject) or creates it, race-free. The role of an existing
/// user is updated only when `role` is given; a change is announced to every process (it
/// takes effect on the next request, even where the user's token is cached).
pub async fn get_or_create_user<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    subject: &str,
    display_name: &str,
    role: Option<Role>,
) -> AppResult<user::Model> {
    let (existing, _) = crate::db::get_or_create(
        conn,
        user::ActiveModel {
            provider: Set(provider.to_owned()),
            subject: Set(subject.to_owned()),
            display_name: Set(display_name.to_owned()),
            role: Set(role.unwrap_or(Role::Student).as_str().to_owned()),
            created_at: Set(now()),
            ..Default::default()
        },
        [user::Column::Provider, user::Column::Subject],
        user::Entity::find()
            .filter(user::Column::Provider.eq(provider))
            .filter(user::Column::Subject.eq(subject)),
    )
    .await?;
    match role {
        Some(role) if existing.role != role.as_str() => {
            tracing::info!(
                user.id = existing.id,
                from = existing.role.as_str(),
                to = role.as_str(),
                "user_role_changed"
            );
            announce_authority_change(conn, &format!("role:{}", existing.id)).await?;
            let mut active: user::ActiveModel = existing.into();
            active.role = Set(role.as_str().to_owned());
            Ok(sea_orm::ActiveModelTrait::update(active, conn).await?)
        }
        _ => Ok(existing),
    }
}

/// Creates a new random bearer token for a user; returns the token (shown once, never stored).
pub async fn create_token(svc: &Services, user: UserId, name: &str) -> AppResult<String> {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let token = format!(
        "atl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    api_token::Entity::insert(api_token::ActiveModel {
        user_id: Set(user.0),
        token_hash: Set(hash_token(&token)),
        name: Set(name.to_owned()),
        created_at: Set(now()),
        expires_at: Set(None),
        ..Default::default()
    })
    .exec(svc.db.conn())
    .await?;
    Ok(token)
}

/// `atelier token create`: the local user named `name` (created if absent) and a new token.
pub async fn create_user_token(
    svc: &Services,
    name: &str,
    role: Option<Role>,
) -> AppResult<(user::Model, String)> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AppError::bad_input("user", "user name must not be empty"));
    }
    let (name, role) = (name.to_owned(), role);
    let user = svc
        .db
        .write(|txn| {
            let name = name.clone();
            Box::pin(
                async move { get_or_create_user(txn, LOCAL_PROVIDER, &name, &name, role).await },
            )
        })
        .await?;
    if role.is_some() {
        // The role may have changed: let every process hear it before answering.
        await_authority_propagated(svc).await;
    }
    let token = create_token(svc, UserId(user.id), "cli").await?;
    Ok((user, token))
}

/// `atelier token revoke TOKEN`: deletes that token; the next request that presents it is
/// refused, in every process. An unknown (or already revoked) token is `NOT_FOUND`.
pub async fn revoke_token(svc: &Services, token: &str) -> AppResult<()> {
    let hash = hash_token(token.trim());
    let revoked = svc
        .db
        .write(|txn| {
            let hash = hash.clone();
            Box::pin(async move {
                let deleted = api_token::Entity::delete_many()
                    .filter(api_token::Column::TokenHash.eq(&hash))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if deleted > 0 {
                    announce_authority_change(txn, "revoke:token").await?;
                }
                Ok(deleted)
            })
        })
        .await?;
    if revoked == 0 {
        return Err(AppError::NotFound("token"));
    }
    await_authority_propagated(svc).await;
    tracing::info!("token_revoked");
    Ok(())
}

/// `atelier token revoke --user NAME`: deletes every token of the local user `name`; returns
/// how many. An unknown user is `NOT_FOUND`; a user without tokens revokes 0.
pub async fn revoke_user_tokens(svc: &Services, name: &str) -> AppResult<u64> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::bad_input("user", "user name must not be empty"));
    }
    let (user_id, revoked) = svc
        .db
        .write(|txn| {
            let name = name.clone();
            Box::pin(async move {
                let user = user::Entity::find()
                    .filter(user::Column::Provider.eq(LOCAL_PROVIDER))
                    .filter(user::Column::Subject.eq(&name))
                    .one(txn)
                    .await?
                    .ok_or(AppError::NotFound("user"))?;
                let deleted = api_token::Entity::delete_many()
                    .filter(api_token::Column::UserId.eq(user.id))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if deleted > 0 {
                    announce_authority_change(txn, &format!("revoke:user:{}", user.id)).await?;
                }
                Ok((user.id, deleted))
            })
        })
        .await?;
    if revoked > 0 {
        await_authority_propagated(svc).await;
    }
    tracing::info!(user.id = user_id, revoked, "user_tokens_revoked");
    Ok(revoked)
}

/// Finds the group of (provider, external_id) or creates it, race-free.
pub async fn get_or_create_group<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    external_id: &str,
    name: &str,
) -> AppResult<group::Model> {
    let (group, _) = crate::db::get_or_create(
        conn,
        group::ActiveModel {
            provider: Set(provider.to_owned()),
            external_id: Set(external_id.to_owned()),
            name: Set(name.to_owned()),
            created_at: Set(now()),
            ..Default::default()
        },
        [group::Column::Provider, group::Column::ExternalId],
        group::Entity::find()
            .filter(group::Column::Provider.eq(provider))
            .filter(group::Column::ExternalId.eq(external_id)),
    )
    .await?;
    Ok(group)
}

/// `atelier group create NAME`: the local group of that name, created if absent.
pub async fn create_local_group(svc: &Services, name: &str) -> AppResult<group::Model> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::bad_input("name", "group name must not be empty"));
    }
    svc.db
        .write(|txn| {
            let name = name.clone();
            Box::pin(async move { get_or_create_group(txn, LOCAL_PROVIDER, &name, &name).await })
        })
        .await
}

/// Adds a user to a group; adding an existing member is a no-op.
pub async fn add_member<C: ConnectionTrait>(
    conn: &C,
    group: GroupId,
    user: UserId,
) -> AppResult<()> {
    group_member::Entity::insert(group_member::ActiveModel {
        group_id: Set(group.0),
        user_id: Set(user.0),
        created_at: Set(now()),
    })
    .on_conflict_do_nothing_on([group_member::Column::GroupId, group_member::Column::UserId])
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// `atelier group add-member GROUP_ID USER_NAME` (the local user is created if absent).
pub async fn add_local_member(svc: &Services, group: GroupId, user_name: &str) -> AppResult<()> {
    let user_name = user_name.trim().to_owned();
    if user_name.is_empty() {
        return Err(AppError::bad_input("user", "user name must not be empty"));
    }
    svc.db
        .write(|txn| {
            let user_name = user_name.clone();
            Box::pin(async move {
                group::Entity::find_by_id(group.0)
                    .lock_shared()
                    .one(txn)
                    .await?
                    .ok_or(AppError::NotFound("group"))?;
                let user =
                    get_or_create_user(txn, LOCAL_PROVIDER, &user_name, &user_name, None).await?;
                add_member(txn, group, UserId(user.id)).await
            })
        })
        .await
}

/// A user by id, read in `conn` (a transaction).
pub async fn user_in<C: ConnectionTrait>(conn: &C, id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(id.0).one(conn).await?)
}

/// A user by id.
pub async fn user(svc: &Services, id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(id.0).one(svc.db.conn()).await?)
}

/// The groups a user belongs to, by name.
pub async fn groups_of(svc: &Services, user: UserId) -> AppResult<Vec<group::Model>> {
    use sea_orm::QueryOrder;
    let ids: Vec<i64> = group_member::Entity::find()
        .select_only()
        .column(group_member::Column::GroupId)
        .filter(group_member::Column::UserId.eq(user.0))
        .into_tuple()
        .all(svc.db.conn())
        .await?;
    Ok(group::Entity::find()
        .filter(group::Column::Id.is_in(ids))
        .order_by_asc(group::Column::Name)
        .all(svc.db.conn())
        .await?)
}
