//! The process's one PostgreSQL `LISTEN` connection, shared by everyone who wants to hear
//! other processes: the token cache (authority changes) and job subscriptions (job changes)
//! each subscribe to a channel. One connection per process, outside the pool, so a
//! notification is never queued behind requests and the pool's size is the requests' own.
//!
//! The loop: connect, `LISTEN` on every subscribed channel, tell the subscribers they are
//! heard (`up`), hand each notification to its channel's subscriber; on any error, or on
//! silence, tell them they are not (`down`), back off, reconnect. A listener that hears
//! nothing at all, not even its own heartbeat, for [`SILENCE_LIMIT`] counts as down: that
//! catches a connection that died without an error (a silently dropped TCP connection, a
//! transaction-mode pooler that does not carry LISTEN).

use std::{sync::Arc, time::Duration, time::Instant};

use sea_orm::sqlx::{
    self,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};

/// `application_name` of the listening connection (see `pg_stat_activity`): how a process
/// that changed authority finds every listener it must wait for.
pub const APPLICATION_NAME: &str = "atelier-listener";

/// Backoff bounds for reconnecting. Subscribers fall back to the database (or their poll)
/// while the listener is down, so a slow reconnect costs throughput, never correctness.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The listener sends itself a heartbeat this often (on a channel of its own, so no other
/// process hears it), and counts itself down after hearing nothing for `SILENCE_LIMIT`.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const SILENCE_LIMIT: Duration = Duration::from_secs(5);

/// Someone listening on one channel. Called on the listener's task, in the order the
/// notifications arrive: keep it short, it holds up the next notification.
pub trait Subscriber: Send + Sync + 'static {
    /// A notification on the channel. A reply is sent (`pg_notify`) on the listener's own
    /// connection before the next notification is read, so it comes from this process's
    /// listening backend and follows whatever `notified` did.
    fn notified(&self, payload: &str) -> Option<Reply>;
    /// Listening from now on: every notification committed after this is heard. (Those
    /// committed before, while down, were not.)
    fn up(&self) {}
    /// Not listening any more: notifications may be missed until the next `up`.
    fn down(&self) {}
}

/// A notification to send in answer to one heard.
pub struct Reply {
    pub channel: &'static str,
    pub payload: String,
}

/// The channels of this process and who hears each; [`Listener::spawn`] runs it.
#[derive(Default)]
pub struct Listener {
    subscribers: Vec<(&'static str, Arc<dyn Subscriber>)>,
}

impl Listener {
    /// `subscriber` hears every notification on `channel`.
    pub fn subscribe(mut self, channel: &'static str, subscriber: Arc<dyn Subscriber>) -> Self {
        self.subscribers.push((channel, subscriber));
        self
    }

    /// Runs the listener for the life of the process, on a connection of its own to `url`.
    /// The returned receiver resolves once the first attempt has succeeded or failed, so
    /// `serve` can wait for it briefly without ever depending on it.
    pub fn spawn(self, url: String) -> tokio::sync::oneshot::Receiver<()> {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut backoff = BACKOFF_MIN;
            let heartbeat = format!(
                "atelier_heartbeat_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            loop {
                let mut was_up = false;
                let error = match self
                    .listen_once(&url, &heartbeat, &mut first, &mut was_up)
                    .await
                {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                if was_up {
                    for (_, s) in &self.subscribers {
                        s.down();
                    }
                    backoff = BACKOFF_MIN;
                    tracing::warn!(error = %error, "listener_down");
                } else {
                    tracing::warn!(
                        error = %error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "listener_connect_failed"
                    );
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
        first_rx
    }

    fn subscriber(&self, channel: &str) -> Option<&dyn Subscriber> {
        self.subscribers
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, s)| &**s)
    }

    /// One connection's life: returns only with the reason it ended. `was_up` says whether
    /// the subscribers were told `up` (and so must be told `down`).
    async fn listen_once(
        &self,
        url: &str,
        heartbeat: &str,
        first: &mut Option<tokio::sync::oneshot::Sender<()>>,
        was_up: &mut bool,
    ) -> Result<std::convert::Infallible, String> {
        fail::fail_point!("listen::connect", |_| Err(
            "injected failure (listen::connect)".to_owned()
        ));
        let mut listener = connect(url, APPLICATION_NAME)
            .await
            .map_err(|e| e.to_string())?;
        // A lost connection is handled here (down, then a fresh listener), not inside sqlx.
        listener.eager_reconnect(false);
        let mut channels: Vec<&str> = self.subscribers.iter().map(|(c, _)| *c).collect();
        channels.push(heartbeat);
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(|e| e.to_string())?;
        for (_, s) in &self.subscribers {
            s.up();
        }
        *was_up = true;
        tracing::info!(channels = ?channels, "listener_up");
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        let (mut last_heard, mut last_beat) = (Instant::now(), None::<Instant>);
        loop {
            if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
                last_beat = Some(Instant::now());
                // On the listener's own connection: a round trip that proves it alive, and a
                // notification that proves delivery (a session hears its own NOTIFY). It does
                // not go through the pool, so it is not counted as a request's statement.
                let beat = notify(&mut listener, heartbeat, "");
                match tokio::time::timeout(SILENCE_LIMIT, beat).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("heartbeat failed: {e}")),
                    Err(_) => return Err("heartbeat timed out".to_owned()),
                }
            }
            // `try_recv` is cancel-safe (sqlx reads whole messages from its own buffer), so
            // waking up for the heartbeat loses nothing. It answers None when the connection
            // was lost (notifications sent meanwhile are lost): that is down, like an error.
            match tokio::time::timeout(HEARTBEAT_EVERY, listener.try_recv()).await {
                Ok(Ok(Some(n))) => {
                    last_heard = Instant::now();
                    let reply = self
                        .subscriber(n.channel())
                        .and_then(|s| s.notified(n.payload()));
                    if let Some(reply) = reply {
                        notify(&mut listener, reply.channel, &reply.payload)
                            .await
                            .map_err(|e| format!("replying on {} failed: {e}", reply.channel))?;
                    }
                }
                Ok(Ok(None)) => return Err("connection lost".to_owned()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {}
            }
            if last_heard.elapsed() > SILENCE_LIMIT {
                return Err(format!(
                    "no notification, not even a heartbeat, for {} s",
                    SILENCE_LIMIT.as_secs()
                ));
            }
        }
    }
}

async fn notify(
    listener: &mut PgListener,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(listener)
        .await
        .map(|_| ())
}

/// A `PgListener` on a connection of its own, named `application_name` in
/// `pg_stat_activity` (a pool of one, as `PgListener::connect` makes, which only hands the
/// listener its connection). Also for short-lived listeners (waiting for acknowledgements).
pub async fn connect(url: &str, application_name: &str) -> Result<PgListener, sqlx::Error> {
    use std::str::FromStr;
    let options = PgConnectOptions::from_str(url)?.application_name(application_name);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    PgListener::connect_with(&pool).await
}
