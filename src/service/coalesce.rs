//! Coalescing concurrent reads of projects by id, across requests, into one statement: the
//! read side of group commit.
//!
//! When a class opens its projects at once, the server receives many `project(id)` requests
//! in the same few hundred microseconds. Sent one by one, each costs a database round trip
//! (plus the pool's release check, another one), and those round trips, not the lookups,
//! dominate the cost on both sides. Here at most one batch statement is in flight per process;
//! whatever arrives meanwhile waits for it to finish and then goes out together, as
//! `WHERE id IN (…)`. With no load a read goes out at once, alone: there is no timer.
//!
//! Consistency is that of a plain read: a batch statement is sent after every read in it
//! arrived, so it sees every write committed before any of those requests was received
//! (a client that read its own acknowledged write still reads it back).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use entity::project;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::oneshot;

use crate::{
    db::Db,
    error::{AppError, AppResult},
};

/// The most ids one statement asks for; more waiting readers go in the next statement.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<AppResult<Option<project::Model>>>;

#[derive(Default)]
pub struct ProjectReads {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(i64, Reply)>,
    /// Whether a drain task is running; it clears this itself when it finds the queue empty.
    draining: bool,
}

impl ProjectReads {
    /// The project row with this id, if any (no visibility check: that is the caller's).
    pub async fn get(self: &Arc<Self>, db: &Db, id: i64) -> AppResult<Option<project::Model>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.lock();
            q.waiting.push((id, tx));
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            // A task of its own, so that no request's response waits for other requests'
            // batches, and a client that disconnects cannot stop the drain.
            tokio::spawn(self.clone().drain(db.clone()));
        }
        rx.await
            .map_err(|_| AppError::internal("the read batch was dropped (shutting down?)"))?
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn drain(self: Arc<Self>, db: Db) {
        let _guard = DrainGuard(&self);
        loop {
            let batch = {
                let mut q = self.lock();
                if q.waiting.is_empty() {
                    q.draining = false;
                    return;
                }
                let rest = q.waiting.len().saturating_sub(MAX_BATCH);
                let mut batch = std::mem::take(&mut q.waiting);
                q.waiting = batch.split_off(batch.len() - rest);
                batch
            };
            let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            hold_for_tests().await;
            let found = project::Entity::find()
                .filter(project::Column::Id.is_in(ids.iter().copied()))
                .all(db.conn())
                .await;
            db.metrics.record_read_batch(batch.len() as u64);
            match found {
                Ok(rows) => {
                    let by_id: HashMap<i64, project::Model> =
                        rows.into_iter().map(|p| (p.id, p)).collect();
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(by_id.get(&id).cloned()));
                    }
                }
                Err(e) => {
                    let e = AppError::from(e);
                    tracing::warn!(error = %e, readers = batch.len(), "project_read_batch_failed");
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.shareable()));
                    }
                }
            }
        }
    }
}

/// Test hook: `FAILPOINTS=service::project_read_batch=1*return(500)` holds the next batch
/// 500 ms (so that readers pile up behind it), `…=1*panic` kills its drain task.
async fn hold_for_tests() {
    let hold = (|| {
        fail::fail_point!("service::project_read_batch", |ms: Option<String>| ms
            .and_then(|ms| ms.parse().ok()));
        None
    })();
    if let Some(ms) = hold {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// If a drain task dies (a panic inside the driver), the next reader starts a new one, which
/// also serves whoever was left waiting.
struct DrainGuard<'a>(&'a ProjectReads);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().draining = false;
        }
    }
}
