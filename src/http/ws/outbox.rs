//! What a connection sends: its bounded outgoing queue, the operations it is running, and how
//! it ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, stream::SplitSink};
use tokio::{
    sync::{mpsc, mpsc::error::TrySendError},
    task::AbortHandle,
};

use super::{errors_json, protocol::Protocol};
use crate::error::AppError;

/// How a connection ends.
pub(super) enum End {
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
    pub(super) fn close(code: u16, reason: impl Into<String>) -> End {
        End::Close(code, reason.into())
    }
}

/// What operation tasks ask of the connection's loop.
pub(super) enum Control {
    /// The outgoing queue is full.
    SlowConsumer,
    /// An operation was refused UNAUTHENTICATED: check whether the credential still holds.
    Recheck,
}

/// The connection's outgoing queue, shared by its operations.
#[derive(Clone)]
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) control: mpsc::Sender<Control>,
    pub(super) protocol: Protocol,
}

impl Outbox {
    /// Queues a message. False when the connection is closing, or when the queue is full: the
    /// client is not reading, and the connection is then closed as a slow consumer.
    pub(super) fn push(&self, text: String) -> bool {
        match self.tx.try_send(Message::Text(text.into())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let _ = self.control.try_send(Control::SlowConsumer);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    pub(super) fn close(&self, code: u16, reason: String) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.tx.try_send(Message::Close(Some(frame)));
    }

    /// An `error` for operation `id` that never started.
    pub(super) fn refuse(&self, id: &str, e: &AppError) {
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
pub(super) struct Ops(pub(super) Arc<Mutex<HashMap<String, Option<AbortHandle>>>>);

impl Ops {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<AbortHandle>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `text` for operation `id` if it still runs; `last` ends the operation. False if
    /// nothing more should be sent for it.
    pub(super) fn emit(&self, outbox: &Outbox, id: &str, text: String, last: bool) -> bool {
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

/// Writes queued messages to the socket, in order, until the close frame (or the queue is
/// dropped: then the closing handshake is finished, answering a client's close frame).
pub(super) async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
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
