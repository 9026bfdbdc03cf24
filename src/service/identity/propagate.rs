//! Authority changes reach every process before the change is answered: announced on
//! [`AUTH_CHANNEL`] in the changing transaction, heard by each process's listener
//! (`db::listen`, which clears the token cache), and confirmed by a `sync` round
//! ([`await_authority_propagated`]). SQLite: the epoch file.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::TokenCache;
use crate::{db::listen, error::AppResult, service::Services};

/// The PostgreSQL channel on which every authority change (role change, token revocation) is
/// announced, from inside the transaction that makes it, so it is delivered at commit.
pub const AUTH_CHANNEL: &str = "atelier_auth";

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
    let mut conn = listen::connect(url, SYNC_APPLICATION_NAME)
        .await
        .map_err(e)?;
    conn.listen(ACK_CHANNEL).await.map_err(e)?;
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(listen::APPLICATION_NAME)
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

/// The token cache's ear on [`AUTH_CHANNEL`] (subscribed to the process's `db::listen`
/// listener): trusted while the listener is up, cleared on every authority change, and
/// answering a `sync` once it is clear.
pub struct AuthSubscriber(pub Arc<TokenCache>);

impl listen::Subscriber for AuthSubscriber {
    fn notified(&self, payload: &str) -> Option<listen::Reply> {
        // Tests: a listener slow to hear a change (`sleep(ms)`).
        fail::fail_point!("auth::listener_notified");
        self.0.invalidate();
        tracing::debug!(payload, "auth_cache_invalidated");
        // Someone who changed authority waits for every process to say its cache is clear
        // (see `await_authority_propagated`); it is. The reply goes out on the listening
        // connection, whose backend pid is the one the waiter looks for.
        payload
            .strip_prefix(SYNC_PREFIX)
            .map(|nonce| listen::Reply {
                channel: ACK_CHANNEL,
                payload: nonce.to_owned(),
            })
    }

    fn up(&self) {
        // Changes committed before the listener listened were not heard: start empty.
        self.0.set_trusted(true);
    }

    fn down(&self) {
        self.0.set_trusted(false);
    }
}
