//! Running one operation of a socket: authorized and prepared as a new request, a query or
//! mutation answered once, a subscription streamed until it ends or loses access.

use async_graphql::{
    BatchRequest, ServerError,
    parser::types::{DocumentOperations, OperationType},
};
use futures::{StreamExt, stream::BoxStream};

use super::{
    MAX_SUBSCRIPTION_MESSAGE_BYTES,
    outbox::{Control, End, Ops, Outbox},
    protocol::close,
};
use crate::{
    domain::Viewer,
    error::{AppError, Code},
    graphql::{RequestAuthority, with_request_data},
    http::graphql::{Answer, with_codes},
    service::{credential::Authority, idempotency},
};

impl super::Connection {
    /// A `subscribe`: authorized as a new request, prepared like one, then run in a task.
    pub(super) async fn subscribe(
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
    pub(super) fn start_subscription(
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
    pub(super) async fn start_once(
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
        let credential = self.credential.clone();
        let mut running = self.ops.lock();
        tokio::spawn(async move {
            let _slot = slot;
            // `openEditor` ties the session it opens to the socket's credential, as a POST's.
            let batch =
                BatchRequest::Single(request).data(crate::graphql::RequestCredential(credential));
            let (body, replayed) =
                match crate::http::graphql::answer(&state, viewer, batch, None, key).await {
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
}

/// Streams a subscription's events as `next`; its end as `complete`. A failure (its root
/// field erred: access lost, the credential revoked, refused at the start) ends it with an
/// `error`.
pub(super) async fn stream_results(
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
pub(super) enum Payload {
    /// Refused before it ran (no data, and no error belongs to a field: parse, validation,
    /// limits, a reused key): an `error` message with these errors.
    Refused(serde_json::Value),
    /// An execution result, as POST /graphql would answer it: `next`, then `complete`.
    Result(String),
}

/// Sorts a serialized response. Only responses with errors (and replays, which are marked)
/// are looked into: a successful one is passed on as it is.
pub(super) fn result_payload(body: Vec<u8>, replayed: bool) -> Payload {
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
pub(super) fn errors_json(e: &AppError) -> serde_json::Value {
    serde_json::to_value(vec![crate::graphql::request_error(e)]).unwrap_or_default()
}

pub(super) fn code_of(e: &ServerError) -> Option<&str> {
    match e.extensions.as_ref()?.get("code")? {
        async_graphql::Value::String(code) => Some(code),
        _ => None,
    }
}

/// `extensions.idempotencyKey` of an operation: the same rules as the `Idempotency-Key`
/// header of POST /graphql.
pub(super) fn idempotency_key(
    request: &async_graphql::Request,
) -> Result<Option<String>, AppError> {
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
pub(super) fn operation_type(request: &mut async_graphql::Request) -> Option<OperationType> {
    let name = request.operation_name.clone();
    let doc = request.parsed_query().ok()?;
    match (&doc.operations, name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(_), None) => None,
    }
}
