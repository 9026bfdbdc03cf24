//! `jobChanged`: a job's status changes as a stream, for a viewer re-checked as it goes, fed by
//! this process's broadcast (and, on PostgreSQL, by every process's through `db::listen`).

use std::time::Duration;

use entity::job;
use futures::Stream;
use tokio::sync::broadcast;

use super::{LeaseStatus, claim::get};
use crate::{
    domain::Viewer,
    error::{AppError, AppResult},
    service::{
        Services,
        credential::{self, Authority},
    },
};

/// `jobChanged`: the job's current state, then one item per status change, in order, ending
/// after READY or FAILED. Subscribed to changes before the first read, so none is missed
/// between; a status that changed twice between two reads shows its latest value only (never
/// an older one after a newer).
///
/// The viewer is asked of `authority` again before every read (each notification, each poll,
/// and each authority change this process hears), so the stream never outlives the right to
/// see the job: it ends with NOT_FOUND when the job's project became invisible to the viewer
/// (unshared, a role lost), and with UNAUTHENTICATED when the credential was revoked or
/// logged out.
pub fn watch(
    svc: Services,
    authority: Authority,
    id: i64,
) -> impl Stream<Item = AppResult<job::Model>> {
    struct Watch {
        svc: Services,
        authority: Authority,
        id: i64,
        rx: broadcast::Receiver<i64>,
        authority_changes: tokio::sync::watch::Receiver<u64>,
        last: Option<LeaseStatus>,
        /// Who the job was last read for.
        seen_by: Option<Option<Viewer>>,
        done: bool,
    }
    let rx = svc.jobs.subscribe();
    let authority_changes = svc.tokens.changes();
    let start = Watch {
        svc,
        authority,
        id,
        rx,
        authority_changes,
        last: None,
        seen_by: None,
        done: false,
    };
    futures::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            if w.last.is_some() {
                let woke =
                    wait_for_change(&mut w.rx, &mut w.authority_changes, w.id, w.svc.jobs.poll)
                        .await;
                // An authority change elsewhere need not concern this viewer: the job is read
                // again only if the credential resolves to someone else now (another role),
                // or no longer holds.
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
            let seen = match w.authority.viewer(&w.svc).await {
                Ok(viewer) => {
                    w.seen_by = Some(viewer);
                    get(&w.svc, viewer, w.id).await
                }
                Err(e) => Err(e),
            };
            match seen {
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
                Ok(None) => {
                    w.done = true;
                    return Some((Err(AppError::NotFound("job")), w));
                }
                Ok(Some(job)) => {
                    let status = job.status;
                    if w.last == Some(status) {
                        continue;
                    }
                    w.last = Some(status);
                    w.done = status.is_final();
                    return Some((Ok(job), w));
                }
            }
        }
    })
}

/// Why [`wait_for_change`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The job may have changed (a notification, lagged notifications, the poll).
    Job,
    /// This process heard of an authority change.
    Authority,
}

/// Returns when job `id` may have changed, or who may see it: a notification for it, missed
/// notifications (lagged), an authority change (after a random moment, see
/// `credential::recheck_delay`), or the poll interval passing.
pub(crate) async fn wait_for_change(
    rx: &mut broadcast::Receiver<i64>,
    authority_changes: &mut tokio::sync::watch::Receiver<u64>,
    id: i64,
    poll: Duration,
) -> Woke {
    let deadline = tokio::time::sleep(poll);
    tokio::pin!(deadline);
    let mut authority_open = true;
    loop {
        tokio::select! {
            () = &mut deadline => return Woke::Job,
            changed = authority_changes.changed(), if authority_open => match changed {
                Ok(()) => {
                    tokio::time::sleep(credential::recheck_delay()).await;
                    // Changes heard meanwhile are answered by the same check.
                    authority_changes.borrow_and_update();
                    return Woke::Authority;
                }
                // The cache is gone (shutting down): only the poll is left.
                Err(_) => authority_open = false,
            },
            heard = rx.recv() => match heard {
                Ok(changed) if changed != id => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Woke::Job,
                Err(broadcast::error::RecvError::Closed) => {
                    deadline.as_mut().await;
                    return Woke::Job;
                }
            },
        }
    }
}
