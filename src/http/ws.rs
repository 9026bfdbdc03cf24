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

mod protocol;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_graphql::{
    BatchRequest, ErrorExtensions, ServerError,
    parser::types::{DocumentOperations, OperationType},
};
use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures::{
    SinkExt, StreamExt,
    stream::{BoxStream, SplitSink, SplitStream},
};
use tokio::{
    sync::{Semaphore, mpsc, mpsc::error::TrySendError},
    task::{AbortHandle, JoinSet},
};
use tracing::Instrument;

use super::{
    AppState, auth,
    graphql::{Answer, error_response, with_codes},
};
use crate::{
    domain::Viewer,
    error::{AppError, Code},
    graphql::{RequestAuthority, with_request_data},
    service::{
        credential::{self, Authority, Credential},
        idempotency, subscriptions,
    },
};
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
        return error_response(&AppError::bad_input(
            "Sec-WebSocket-Protocol",
            "GET /graphql/ws speaks graphql-transport-ws (or the older graphql-ws): ask for \
             it in Sec-WebSocket-Protocol",
        ));
    };
    let credential = match auth::credential(&headers) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    if matches!(credential, Credential::Cookie(_))
        && let Err(e) = auth::check_origin(&state.web, &headers)
    {
        return error_response(&e);
    }
    if let Err(e) = credential.viewer(&state.services).await {
        return error_response(&e);
    }
    let max = state.max_request_bytes;
    let span = tracing::Span::current();
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(socket, state, protocol, credential).instrument(span))
        .into_response()
}

/// How a connection ends.
enum End {
    /// Send this close frame (after whatever is queued), then close.
    Close(u16, String),
    /// The client does not read: drop the socket at once (nothing more can be sent).
    SlowConsumer,
    /// The client sent its close frame: answer it (the WebSocket layer queued the reply),
    /// then close.
    ClientClosed,
    /// The connection broke.
    Gone,
}

impl End {
    fn close(code: u16, reason: impl Into<String>) -> End {
        End::Close(code, reason.into())
    }
}

/// What operation tasks ask of the connection's loop.
enum Control {
    /// The outgoing queue is full.
    SlowConsumer,
    /// An operation was refused UNAUTHENTICATED: check whether the credential still holds.
    Recheck,
}

/// The connection's outgoing queue, shared by its operations.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    control: mpsc::Sender<Control>,
    protocol: Protocol,
}

impl Outbox {
    /// Queues a message. False when the connection is closing, or when the queue is full: the
    /// client is not reading, and the connection is then closed as a slow consumer.
    fn push(&self, text: String) -> bool {
        match self.tx.try_send(Message::Text(text.into())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let _ = self.control.try_send(Control::SlowConsumer);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn close(&self, code: u16, reason: String) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.tx.try_send(Message::Close(Some(frame)));
    }

    /// An `error` for operation `id` that never started.
    fn refuse(&self, id: &str, e: &AppError) {
        self.push(self.protocol.error(id, &errors_json(e)));
    }
}

/// The operations running on one connection, by id, with the handle that cancels a
/// subscription. A message of an operation is queued under this lock after checking that the
/// operation still runs, so nothing follows its last message (`complete`, `error`), nor the
/// errors sent when the credential is revoked.
///
/// Queries and mutations are never cancelled, only forgotten: a mutation whose client went
/// away still finishes and records its answer under its idempotency key, so the client's
/// retry gets that answer instead of waiting out the key's lease.
#[derive(Clone, Default)]
struct Ops(Arc<Mutex<HashMap<String, Option<AbortHandle>>>>);

impl Ops {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<AbortHandle>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `text` for operation `id` if it still runs; `last` ends the operation. False if
    /// nothing more should be sent for it.
    fn emit(&self, outbox: &Outbox, id: &str, text: String, last: bool) -> bool {
        let mut ops = self.lock();
        if !ops.contains_key(id) {
            return false;
        }
        if last {
            ops.remove(id);
        }
        outbox.push(text)
    }
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

/// Writes queued messages to the socket, in order, until the close frame (or the queue is
/// dropped: then the closing handshake is finished, answering a client's close frame).
async fn write(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        let last = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() {
            break;
        }
        if last {
            return;
        }
    }
    let _ = sink.close().await;
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

    /// A `subscribe`: authorized as a new request, prepared like one, then run in a task.
    async fn subscribe(
        &mut self,
        id: String,
        payload: serde_json::Value,
        size: usize,
    ) -> Option<End> {
        if self.ops.lock().contains_key(&id) {
            return Some(End::close(
                close::SUBSCRIBER_EXISTS,
                format!("Subscriber for {id} already exists"),
            ));
        }
        let viewer = match self.credential.viewer(&self.state.services).await {
            Ok(v) => v,
            Err(e) if e.code() == Code::Unauthenticated => {
                self.outbox.refuse(&id, &e);
                return Some(self.revoke(&e));
            }
            Err(e) => {
                self.outbox.refuse(&id, &e);
                return None;
            }
        };
        let mut request: async_graphql::Request = match serde_json::from_value(payload) {
            Ok(r) => r,
            Err(e) => {
                let e = AppError::BadUserInput {
                    message: format!("the payload is not a GraphQL request: {e}"),
                    field: None,
                };
                self.outbox.refuse(&id, &e);
                return None;
            }
        };
        let key = match idempotency_key(&request) {
            Ok(k) => k,
            Err(e) => {
                self.outbox.refuse(&id, &e);
                return None;
            }
        };
        self.state.documents.prepare(&mut request);
        if operation_type(&mut request) == Some(OperationType::Subscription) {
            self.start_subscription(id, viewer, request, size);
        } else {
            self.start_once(id, viewer, request, key).await;
        }
        None
    }

    /// A subscription: admitted under the caps, then streamed until it completes, fails, is
    /// cancelled or the socket closes (each of which frees its place).
    fn start_subscription(
        &mut self,
        id: String,
        viewer: Option<Viewer>,
        request: async_graphql::Request,
        size: usize,
    ) {
        if size > MAX_SUBSCRIPTION_MESSAGE_BYTES {
            let e = AppError::PayloadTooLarge {
                what: "a subscription's message",
                limit: MAX_SUBSCRIPTION_MESSAGE_BYTES as u64,
            };
            self.outbox.refuse(&id, &e);
            return;
        }
        let permit = match self.subscriptions.admit(viewer.map(|v| v.id)) {
            Ok(p) => p,
            Err(e) => {
                self.outbox.refuse(&id, &e);
                return;
            }
        };
        let request = with_request_data(&self.state.services, viewer, request)
            .data(RequestAuthority(Authority::Live(self.credential.clone())));
        let stream = self.state.schema.execute_stream(request);
        let (ops, outbox, task_id) = (self.ops.clone(), self.outbox.clone(), id.clone());
        // Registered before the task can send anything (it takes this lock to send).
        let mut running = self.ops.lock();
        let task = self.tasks.spawn(async move {
            let _permit = permit;
            stream_results(stream, &ops, &outbox, &task_id).await;
        });
        running.insert(id, Some(task));
    }

    /// A query or mutation: one answer (`next` and `complete`, or `error`), executed as POST
    /// /graphql executes it, idempotency key included.
    async fn start_once(
        &mut self,
        id: String,
        viewer: Option<Viewer>,
        request: async_graphql::Request,
        key: Option<String>,
    ) {
        let Ok(slot) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let (state, ops, outbox, task_id) = (
            self.state.clone(),
            self.ops.clone(),
            self.outbox.clone(),
            id.clone(),
        );
        let mut running = self.ops.lock();
        tokio::spawn(async move {
            let _slot = slot;
            let batch = BatchRequest::Single(request);
            let (body, replayed) =
                match super::graphql::answer(&state, viewer, batch, None, key).await {
                    Err(e) => {
                        let msg = outbox.protocol.error(&task_id, &errors_json(&e));
                        ops.emit(&outbox, &task_id, msg, true);
                        return;
                    }
                    Ok(Answer::Executed(done)) => (done.body, false),
                    Ok(Answer::Replayed { body, .. }) => (body.into_bytes(), true),
                };
            match result_payload(body, replayed) {
                Payload::Refused(errors) => {
                    let msg = outbox.protocol.error(&task_id, &errors);
                    ops.emit(&outbox, &task_id, msg, true);
                }
                Payload::Result(body) => {
                    let next = outbox.protocol.next(&task_id, &body);
                    if ops.emit(&outbox, &task_id, next, false) {
                        let complete = outbox.protocol.complete(&task_id);
                        ops.emit(&outbox, &task_id, complete, true);
                    }
                }
            }
        });
        running.insert(id, None);
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

/// Streams a subscription's events as `next`; its end as `complete`. A failure (its root
/// field erred: access lost, the credential revoked, refused at the start) ends it with an
/// `error`.
async fn stream_results(
    mut stream: BoxStream<'static, async_graphql::Response>,
    ops: &Ops,
    outbox: &Outbox,
    id: &str,
) {
    while let Some(resp) = stream.next().await {
        let resp = with_codes(resp);
        if resp.data == async_graphql::Value::Null && !resp.errors.is_empty() {
            let unauthenticated = resp
                .errors
                .iter()
                .any(|e| code_of(e) == Some(Code::Unauthenticated.as_str()));
            let errors = serde_json::to_value(&resp.errors).unwrap_or_default();
            ops.emit(outbox, id, outbox.protocol.error(id, &errors), true);
            if unauthenticated {
                let _ = outbox.control.try_send(Control::Recheck);
            }
            return;
        }
        let body = match serde_json::to_string(&resp) {
            Ok(b) => b,
            Err(e) => {
                let e = AppError::internal(e);
                ops.emit(
                    outbox,
                    id,
                    outbox.protocol.error(id, &errors_json(&e)),
                    true,
                );
                return;
            }
        };
        if !ops.emit(outbox, id, outbox.protocol.next(id, &body), false) {
            return;
        }
    }
    ops.emit(outbox, id, outbox.protocol.complete(id), true);
}

/// What one answer becomes on the socket.
enum Payload {
    /// Refused before it ran (no data, and no error belongs to a field: parse, validation,
    /// limits, a reused key): an `error` message with these errors.
    Refused(serde_json::Value),
    /// An execution result, as POST /graphql would answer it: `next`, then `complete`.
    Result(String),
}

/// Sorts a serialized response. Only responses with errors (and replays, which are marked)
/// are looked into: a successful one is passed on as it is.
fn result_payload(body: Vec<u8>, replayed: bool) -> Payload {
    let text = String::from_utf8_lossy(&body).into_owned();
    if !replayed && !text.starts_with(r#"{"errors""#) {
        return Payload::Result(text);
    }
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Payload::Result(text);
    };
    let refused = value.get("data").is_none_or(|d| d.is_null())
        && value["errors"].as_array().is_some_and(|errors| {
            !errors.is_empty() && errors.iter().all(|e| e.get("path").is_none())
        });
    if refused {
        return Payload::Refused(value["errors"].take());
    }
    if replayed && let Some(obj) = value.as_object_mut() {
        // The socket's counterpart of the `Idempotent-Replayed: true` header.
        let ext = obj
            .entry("extensions")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(ext) = ext.as_object_mut() {
            ext.insert("idempotentReplayed".to_owned(), true.into());
        }
    }
    Payload::Result(value.to_string())
}

/// An error as the `payload` of an `error` message: a list of one GraphQL error with its code.
fn errors_json(e: &AppError) -> serde_json::Value {
    let err = e.extend();
    let server_error = ServerError {
        message: err.message,
        source: None,
        locations: Vec::new(),
        path: Vec::new(),
        extensions: err.extensions,
    };
    serde_json::to_value(vec![server_error]).unwrap_or_default()
}

fn code_of(e: &ServerError) -> Option<&str> {
    match e.extensions.as_ref()?.get("code")? {
        async_graphql::Value::String(code) => Some(code),
        _ => None,
    }
}

/// `extensions.idempotencyKey` of an operation: the same rules as the `Idempotency-Key`
/// header of POST /graphql.
fn idempotency_key(request: &async_graphql::Request) -> Result<Option<String>, AppError> {
    let invalid = || {
        AppError::bad_input(
            "idempotencyKey",
            format!(
                "extensions.idempotencyKey must be a string of 1 to {} visible ASCII characters",
                idempotency::MAX_KEY_LEN
            ),
        )
    };
    match request.extensions.get("idempotencyKey") {
        None | Some(async_graphql::Value::Null) => Ok(None),
        Some(async_graphql::Value::String(raw)) => {
            idempotency::parse_key(raw).map(Some).map_err(|_| invalid())
        }
        Some(_) => Err(invalid()),
    }
}

/// The type of the operation the request will run; None when it does not parse or names no
/// operation of its document (execution then reports that, as over HTTP).
fn operation_type(request: &mut async_graphql::Request) -> Option<OperationType> {
    let name = request.operation_name.clone();
    let doc = request.parsed_query().ok()?;
    match (&doc.operations, name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(_), None) => None,
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
