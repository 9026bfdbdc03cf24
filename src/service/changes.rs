//! Live project changes (`projectChanged`): every committed version of a project, in version
//! order, exactly once, to whoever may read it.
//!
//! A version is recorded in its change's transaction ([`super::history::record`]), which
//! also notifies [`CHANNEL`] on PostgreSQL (delivered at commit, never for a rollback, to
//! every process). After a commit the changing process tells its own subscribers too
//! ([`ProjectChanges::changed`]; SQLite serves one process, so that is all it needs). The
//! payload is only the project id: a subscriber reads the versions after the last one it
//! delivered from `project_versions`, so notifications that coalesce, arrive twice or are
//! lost (a lagging receiver; then the poll) never make it skip or repeat a version. A
//! conflicted save is not a version, so it is no change.

use std::{collections::VecDeque, time::Duration};

use entity::{project, project_version};
use futures::Stream;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use tokio::sync::broadcast;

use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{Services, credential::Authority, jobs::watch::Woke},
};

/// The PostgreSQL channel project changes are announced on (payload: the project id).
pub const CHANNEL: &str = "atelier_project_changes";

/// How often a subscription reads its project without a notification (a lost one costs at
/// most this much delay, never a version).
const POLL: Duration = Duration::from_secs(5);

/// Versions delivered per read.
const BATCH: u64 = 50;

/// This process's broadcast of project ids whose versions changed.
pub struct ProjectChanges {
    tx: broadcast::Sender<i64>,
}

impl Default for ProjectChanges {
    fn default() -> Self {
        ProjectChanges {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl ProjectChanges {
    /// Project `id` has a new committed version (call after the commit).
    pub fn changed(&self, id: i64) {
        // Nobody listening is fine.
        let _ = self.tx.send(id);
    }

    fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.tx.subscribe()
    }
}

/// Hears other processes' project changes on the listener connection.
pub struct ProjectChangeSubscriber(pub std::sync::Arc<ProjectChanges>);

impl crate::db::listen::Subscriber for ProjectChangeSubscriber {
    fn notified(&self, payload: &str) -> Option<crate::db::listen::Reply> {
        if let Ok(id) = payload.parse::<i64>() {
            self.0.changed(id);
        }
        None
    }
}

/// Announces a new version of `project` to every process (PostgreSQL: inside the change's
/// transaction, so it is delivered at its commit and never for a rollback).
pub(super) async fn announce<C: ConnectionTrait>(conn: &C, project: i64) -> AppResult<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), project.to_string().into()],
        ))
        .await?;
    }
    Ok(())
}

/// The project as it was at `v` (its row, with the version's own title and content).
fn as_of(row: &project::Model, v: project_version::Model) -> project::Model {
    project::Model {
        version: v.version,
        title: v.title,
        content_key: v.content_key,
        content_size: v.content_size,
        updated_at: v.saved_at,
        ..row.clone()
    }
}

/// Every version of project `id` committed after `after`, in order, for as long as the
/// viewer `authority` stands for may read it. It is asked again before every read (each
/// notification, each poll, each authority change this process hears): the stream ends with
/// NOT_FOUND when the project is gone or no longer visible, and with UNAUTHENTICATED when the
/// credential was revoked or logged out.
pub fn watch(
    svc: Services,
    authority: Authority,
    id: ProjectId,
    after: i32,
) -> impl Stream<Item = AppResult<project::Model>> {
    struct Watch {
        svc: Services,
        authority: Authority,
        id: ProjectId,
        rx: broadcast::Receiver<i64>,
        authority_changes: tokio::sync::watch::Receiver<u64>,
        last: i32,
        ready: VecDeque<project::Model>,
        seen_by: Option<Option<Viewer>>,
        done: bool,
        /// Read before the first wait: versions committed between the subscribe's own read
        /// and the receiver's creation are not missed.
        first: bool,
    }
    let start = Watch {
        rx: svc.project_changes.subscribe(),
        authority_changes: svc.tokens.changes(),
        svc,
        authority,
        id,
        last: after,
        ready: VecDeque::new(),
        seen_by: None,
        done: false,
        first: true,
    };
    futures::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            if let Some(next) = w.ready.pop_front() {
                return Some((Ok(next), w));
            }
            if !w.first {
                let woke = crate::service::jobs::watch::wait_for_change(
                    &mut w.rx,
                    &mut w.authority_changes,
                    w.id.0,
                    POLL,
                )
                .await;
                if woke == Woke::Authority {
                    match w.authority.viewer(&w.svc).await {
                        Ok(viewer) if w.seen_by == Some(viewer) => continue,
                        Ok(_) => {}
                        Err(e) => {
                            w.done = true;
                            return Some((Err(e), w));
                        }
                    }
                }
            }
            w.first = false;
            match read(&w.svc, &w.authority, w.id, w.last).await {
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
                Ok((viewer, versions)) => {
                    w.seen_by = Some(viewer);
                    if let Some(v) = versions.last() {
                        w.last = v.version;
                    }
                    // A full batch: there may be more; read again without waiting.
                    w.first = versions.len() as u64 == BATCH;
                    w.ready.extend(versions);
                }
            }
        }
    })
}

/// The viewer now, and the versions after `last` they may see (NOT_FOUND when they may not
/// see the project any more).
async fn read(
    svc: &Services,
    authority: &Authority,
    id: ProjectId,
    last: i32,
) -> AppResult<(Option<Viewer>, Vec<project::Model>)> {
    let viewer = authority.viewer(svc).await?;
    // From the database itself: a coalesced read could be older than the notification.
    let row = project::Entity::find_by_id(id.0)
        .one(svc.db.conn())
        .await?
        .ok_or(AppError::NotFound("project"))?;
    if !crate::service::access::project(svc.db.conn(), viewer, &row)
        .await?
        .can_read()
    {
        return Err(AppError::NotFound("project"));
    }
    let versions = project_version::Entity::find()
        .filter(project_version::Column::ProjectId.eq(id.0))
        .filter(project_version::Column::Version.gt(last))
        .order_by_asc(project_version::Column::Version)
        .limit(BATCH)
        .all(svc.db.conn())
        .await?;
    Ok((
        viewer,
        versions.into_iter().map(|v| as_of(&row, v)).collect(),
    ))
}
