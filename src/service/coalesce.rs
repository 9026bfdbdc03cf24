//! Coalescing concurrent reads of projects by id, across requests, into one statement: the
//! read side of group commit.
//!
//! When a class opens its projects at once, the server receives many `project(id)` requests
//! in the same few hundred microseconds. Sent one by one, each costs a database round trip
//! (plus the pool's release check, another one), and those round trips, not the lookups,
//! dominate the cost on both sides. Here at most one statement is in flight per process;
//! whatever arrives meanwhile waits for it to finish and then goes out together, as
//! `WHERE id IN (…)`, from a drain task. With nothing in flight a read goes out at once, alone,
//! on its own task: no timer, and no hop to another thread (waking a parked worker for every
//! lone read tripled its latency on a quiet server).
//!
//! Consistency is that of a plain read: a statement is sent after every read in it arrived,
//! so it sees every write committed before any of those requests was received (a client that
//! read its own acknowledged write still reads it back).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use entity::project;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};
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
    /// A statement is in flight (a lone read or a drain task). Cleared only by `HandOver`.
    busy: bool,
}

impl ProjectReads {
    /// The project row with this id, if any (no visibility check: that is the caller's).
    pub async fn get(self: &Arc<Self>, db: &Db, id: i64) -> AppResult<Option<project::Model>> {
        let queued = {
            let mut q = self.lock();
            if q.busy {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((id, tx));
                Some(rx)
            } else {
                q.busy = true;
                None
            }
        };
        let Some(rx) = queued else {
            let _next = HandOver { reads: self, db };
            return Ok(fetch(db, vec![id], 1).await?.into_iter().next());
        };
        rx.await
            .map_err(|_| AppError::internal("the read batch was dropped (shutting down?)"))?
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The longest-waiting readers, up to `MAX_BATCH`.
    fn next_batch(&self) -> Option<Vec<(i64, Reply)>> {
        let mut q = self.lock();
        if q.waiting.is_empty() {
            return None;
        }
        let rest = q.waiting.len().saturating_sub(MAX_BATCH);
        let mut batch = std::mem::take(&mut q.waiting);
        q.waiting = batch.split_off(batch.len() - rest);
        Some(batch)
    }

    /// Answers waiting readers, a batch per statement, until none are left.
    async fn drain(self: Arc<Self>, db: Db) {
        let _next = HandOver {
            reads: &self,
            db: &db,
        };
        while let Some(batch) = self.next_batch() {
            let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            match fetch(&db, ids, batch.len()).await {
                Ok(rows) => {
                    let by_id: HashMap<i64, project::Model> =
                        rows.into_iter().map(|p| (p.id, p)).collect();
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(by_id.get(&id).cloned()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, readers = batch.len(), "project_read_batch_failed");
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.shareable()));
                    }
                }
            }
        }
    }
}

/// One statement for a set of distinct ids, answering `readers` reads.
async fn fetch(db: &Db, ids: Vec<i64>, readers: usize) -> Result<Vec<project::Model>, AppError> {
    // Tests: `service::project_read_batch=1*return(500)` holds the next statement so that
    // readers pile up behind it, `…=1*panic` kills whoever runs it.
    crate::failpoints::hold("service::project_read_batch").await;
    let rows = project::Entity::find()
        .filter(project::Column::Id.is_in(ids))
        .all(db.conn())
        .await
        .map_err(|e: DbErr| AppError::from(e));
    db.metrics.record_read_batch(readers as u64);
    rows
}

/// Runs when a statement's owner is done with it, however it ends (answered, failed, its
/// client went away and the request was dropped, or a panic): whoever queued up meanwhile is
/// answered by a drain task, else the next read may go out alone.
struct HandOver<'a> {
    reads: &'a Arc<ProjectReads>,
    db: &'a Db,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut q = self.reads.lock();
        if q.waiting.is_empty() {
            q.busy = false;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            // A task of its own: no reader's response waits for other readers' statements,
            // and a client that disconnects cannot stop it.
            Ok(rt) => {
                rt.spawn(self.reads.clone().drain(self.db.clone()));
            }
            // The runtime is gone (shutdown): the waiting readers' requests are gone with it.
            Err(_) => q.busy = false,
        }
    }
}
