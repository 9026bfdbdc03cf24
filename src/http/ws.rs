//! `GET /graphql/ws`: GraphQL over WebSocket, graphql-transport-ws (and the older
//! subscriptions-transport-ws), for queries, mutations and subscriptions alike.
//!
//! The credential is the `Authorization` of `connectionParams` (`{"Authorization": "Bearer
//! …"}`), or else the upgrade request's (its `Authorization` header or session cookie; a
//! cookie-authenticated upgrade must come from an allowed `Origin`, since browsers send
//! cookies with cross-site upgrades too). The socket keeps the credential, not a viewer:
//!
//! - every operation is authorized as a new request would be: the credential is resolved
//!   again when its `subscribe` arrives (through the token cache, which every authority change
//!   empties in every process), and it runs through the same preparation and the same
//!   idempotency rules as POST /graphql (`extensions.idempotencyKey` plays the header's part);
//! - a running subscription resolves it again before each event (see
//!   `service::credential::Authority`), so losing access ends it with an `error`;
//! - once the credential no longer holds (revoked, logged out), every running operation gets
//!   an `error` (UNAUTHENTICATED) and the socket is closed with 4401. That is noticed at the
//!   next operation, at a subscription's next event, and whenever this process hears of an
//!   authority change.
//!
//! Bounds: subscriptions per connection and per user (`service::subscriptions`), at most
//! [`MAX_IN_FLIGHT`] queries and mutations at once per connection (beyond that the socket is
//! not read until one ends), inbound messages up to the request size limit, and a bounded
//! outgoing queue: a client that does not read its messages is closed (a slow consumer)
//! rather than buffered for. Closing a socket ends everything it ran.

mod operations;
mod outbox;
mod protocol;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures::{StreamExt, stream::SplitStream};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tracing::Instrument;

use super::{AppState, auth};
use crate::{
    error::{AppError, Code},
    service::{
        credential::{self, Credential},
        subscriptions,
    },
};
use operations::errors_json;
use outbox::{Control, End, Ops, Outbox, write};
use protocol::{ClientMessage, Protocol, close};

/// How long a client has after the upgrade to send `connection_init`.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries and mutations one connection runs at once. More wait: the socket is not read
/// until one ends, so the client's own sends back up instead of our memory.
pub const MAX_IN_FLIGHT: usize = 16;
/// Largest `subscribe` message for a subscription: its request is kept for as long as the
/// subscription runs, so the cap on subscriptions is a cap on memory only if each is small.
const MAX_SUBSCRIPTION_MESSAGE_BYTES: usize = 64 * 1024;
/// How long a closing socket waits for its last messages (errors, the close frame) to go.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `GET /graphql/ws`: checks the sub-protocol and the upgrade request's credential (a bad one
/// is refused with 401 before any socket exists), then serves the socket.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = upgrade.protocols(protocol::PROTOCOLS);
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(Protocol::from_name)
    else {
        return AppError::bad_input(
            "Sec-WebSocket-Protocol",
            "GET /graphql/ws speaks graphql-transport-ws (or the older graphql-ws): ask for \
             it in Sec-WebSocket-Protocol",
        )
        .into_response();
    };
    let credential = match auth::credential(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if matches!(credential, Credential::Cookie(_))
        && let Err(e) = auth::check_origin(&state.web, &headers)
    {
        return e.into_response();
    }
    if let Err(e) = credential.viewer(&state.services).await {
        return e.into_response();
    }
    let max = state.max_request_bytes;
    let span = tracing::Span::current();
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(socket, state, protocol, credential).instrument(span))
        .into_response()
}

/// One socket's state.
struct Connection {
    state: AppState,
    protocol: Protocol,
    credential: Arc<Credential>,
    outbox: Outbox,
    ops: Ops,
    /// Every subscription's task; dropping the set ends them all.
    tasks: JoinSet<()>,
    in_flight: Arc<Semaphore>,
    control: mpsc::Receiver<Control>,
    subscriptions: subscriptions::Connection,
}

async fn serve(socket: WebSocket, state: AppState, protocol: Protocol, credential: Credential) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(state.ws_send_queue);
    let (control_tx, control) = mpsc::channel(16);
    let mut writer = tokio::spawn(write(sink, rx));
    let mut conn = Connection {
        subscriptions: state.services.subscriptions.open(),
        state,
        protocol,
        credential: Arc::new(credential),
        outbox: Outbox {
            tx,
            control: control_tx,
            protocol,
        },
        ops: Ops::default(),
        tasks: JoinSet::new(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        control,
    };
    let end = conn.run(&mut stream).await;
    conn.tasks.abort_all();
    conn.ops.lock().clear();
    match end {
        End::Close(code, reason) => {
            tracing::debug!(close.code = code, close.reason = %reason, "ws_closing");
            conn.outbox.close(code, reason);
            // The writer ends after the close frame.
            drop(conn);
            if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
        End::SlowConsumer => {
            conn.state.services.subscriptions.record_slow_consumer();
            tracing::info!(queue = conn.state.ws_send_queue, "ws_slow_consumer_closed");
            writer.abort();
        }
        End::ClientClosed => {
            // Finishes the closing handshake (the WebSocket layer answers the client's frame).
            let _ = conn.outbox.tx.try_send(Message::Close(None));
            drop(conn);
            if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
        End::Gone => writer.abort(),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The text of the next client message; `Err` ends the connection.
fn text_of(msg: Option<Result<Message, axum::Error>>) -> Result<Option<String>, End> {
    match msg {
        None | Some(Err(_)) => Err(End::Gone),
        Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
        Some(Ok(Message::Text(t))) => Ok(Some(t.as_str().to_owned())),
        Some(Ok(Message::Binary(_))) => Err(End::close(
            close::BAD_REQUEST,
            "binary messages are not GraphQL over WebSocket",
        )),
        // WebSocket-level pings are answered by the WebSocket layer itself.
        Some(Ok(_)) => Ok(None),
    }
}

impl Connection {
    async fn run(&mut self, stream: &mut SplitStream<WebSocket>) -> End {
        if let Err(end) = self.init(stream).await {
            return end;
        }
        let mut authority_changes = self.state.services.tokens.changes();
        // When to check the credential again, after an authority change was heard.
        let mut recheck_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => match control {
                    Control::SlowConsumer => return End::SlowConsumer,
                    Control::Recheck => if let Some(end) = self.recheck().await {
                        return end;
                    },
                },
                // Finished subscriptions are reaped as they end.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                Ok(()) = authority_changes.changed(), if !self.credential.is_anonymous() => {
                    recheck_at.get_or_insert_with(|| {
                        tokio::time::Instant::now() + credential::recheck_delay()
                    });
                }
                () = sleep_until(recheck_at), if recheck_at.is_some() => {
                    recheck_at = None;
                    authority_changes.borrow_and_update();
                    if let Some(end) = self.recheck().await {
                        return end;
                    }
                }
                msg = stream.next() => {
                    let text = match text_of(msg) {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(end) => return end,
                    };
                    if let Some(end) = self.handle(&text).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Until `connection_init`: only pings are answered; the credential is settled and
    /// checked, then acknowledged.
    async fn init(&mut self, stream: &mut SplitStream<WebSocket>) -> Result<(), End> {
        let deadline = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                () = &mut deadline => return Err(End::close(
                    close::INIT_TIMEOUT,
                    "Connection initialisation timeout",
                )),
                msg = stream.next() => msg,
            };
            let Some(text) = text_of(msg)? else {
                continue;
            };
            match ClientMessage::parse(&text) {
                Err(why) => return Err(End::close(close::BAD_REQUEST, why)),
                Ok(ClientMessage::Ping { payload }) => {
                    self.outbox.push(self.protocol.pong(payload));
                }
                Ok(ClientMessage::Pong | ClientMessage::Complete { .. }) => {}
                Ok(ClientMessage::Terminate) => return Err(End::close(close::NORMAL, "")),
                Ok(ClientMessage::Subscribe { .. }) => {
                    return Err(End::close(close::UNAUTHORIZED, "Unauthorized"));
                }
                Ok(ClientMessage::ConnectionInit { payload }) => {
                    if let Some(token) = payload.as_ref().and_then(bearer) {
                        self.credential = Arc::new(Credential::Bearer(token));
                    }
                    return match self.credential.viewer(&self.state.services).await {
                        Ok(_) => {
                            self.outbox.push(self.protocol.ack());
                            Ok(())
                        }
                        Err(e) => {
                            if let Some(m) = self.protocol.connection_error(&e.public_message()) {
                                self.outbox.push(m);
                            }
                            Err(if e.code() == Code::Unauthenticated {
                                End::close(close::UNAUTHORIZED, "Unauthorized")
                            } else {
                                End::close(
                                    close::TRY_AGAIN_LATER,
                                    "the credential could not be checked; try again",
                                )
                            })
                        }
                    };
                }
            }
        }
    }

    /// One client message after the acknowledgement.
    async fn handle(&mut self, text: &str) -> Option<End> {
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(why) => return Some(End::close(close::BAD_REQUEST, why)),
        };
        match msg {
            ClientMessage::ConnectionInit { .. } => Some(End::close(
                close::TOO_MANY_INITS,
                "Too many initialisation requests",
            )),
            ClientMessage::Ping { payload } => {
                self.outbox.push(self.protocol.pong(payload));
                None
            }
            ClientMessage::Pong => None,
            ClientMessage::Terminate => Some(End::close(close::NORMAL, "")),
            ClientMessage::Complete { id } => {
                let cancelled = self.ops.lock().remove(&id);
                if let Some(task) = cancelled {
                    if let Some(task) = task {
                        task.abort();
                    }
                    // The older protocol confirms a `stop`.
                    if self.protocol == Protocol::Legacy {
                        self.outbox.push(self.protocol.complete(&id));
                    }
                }
                None
            }
            ClientMessage::Subscribe { id, payload } => {
                self.subscribe(id, payload, text.len()).await
            }
        }
    }

    /// Whether the credential still holds; if not, the socket is revoked.
    async fn recheck(&mut self) -> Option<End> {
        if self.credential.is_anonymous() {
            return None;
        }
        match self.credential.viewer(&self.state.services).await {
            Err(e) if e.code() == Code::Unauthenticated => Some(self.revoke(&e)),
            // An outage is not a revocation: each operation checks again for itself.
            _ => None,
        }
    }

    /// The credential no longer holds: every running operation ends with its `error`, then
    /// the socket closes with 4401.
    fn revoke(&mut self, e: &AppError) -> End {
        let errors = errors_json(e);
        let mut running = self.ops.lock();
        let ended = running.len();
        for (id, task) in running.drain() {
            if let Some(task) = task {
                task.abort();
            }
            self.outbox.push(self.protocol.error(&id, &errors));
        }
        tracing::info!(operations.ended = ended, "ws_credential_revoked");
        End::close(close::UNAUTHORIZED, "Unauthorized")
    }
}

/// The token in `connectionParams`: `Authorization`/`authorization` ("Bearer …"), or `token`.
fn bearer(params: &serde_json::Value) -> Option<String> {
    let header = params
        .get("Authorization")
        .or_else(|| params.get("authorization"))
        .and_then(|v| v.as_str())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
        });
    header
        .or_else(|| params.get("token").and_then(|v| v.as_str()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}
