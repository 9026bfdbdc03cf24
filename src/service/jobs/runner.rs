//! This process's job workers: their bounds, the jobs they run, their counters, and the
//! broadcast of job changes heard here.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, broadcast};

/// This process's workers: bounded concurrency, the jobs it is running, and the broadcast of
/// job changes heard here.
pub struct JobRunner {
    pub(super) permits: Arc<Semaphore>,
    /// Jobs a task of this process is running or about to run (an optimisation: the
    /// compare-and-set take is what guarantees one build).
    pub(super) in_flight: Mutex<HashSet<i64>>,
    pub(super) changes: broadcast::Sender<i64>,
    /// Names this process in `claimed_by` (with a per-run suffix).
    pub(super) worker_id: String,
    pub(super) lease: Duration,
    /// How often a subscription re-reads its job without a notification.
    pub(super) poll: Duration,
    pub(super) builds: AtomicU64,
    pub(super) failures: AtomicU64,
}

impl JobRunner {
    pub fn new(workers: usize, lease: Duration, poll: Duration) -> JobRunner {
        JobRunner {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            in_flight: Mutex::default(),
            changes: broadcast::channel(1024).0,
            worker_id: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease: lease.max(Duration::from_millis(100)),
            poll,
            builds: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Job ids whose row changed (in this process, or in any process on PostgreSQL).
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    pub(super) fn changed(&self, id: i64) {
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(id);
    }

    pub(super) fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often the sweep looks for jobs nobody runs: well within a lease.
    pub fn sweep_every(&self) -> Duration {
        (self.lease / 2).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// Counters for `/metrics`.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP atelier_export_builds_total Export bundles this process started building (after taking the job).\n\
             # TYPE atelier_export_builds_total counter\n\
             atelier_export_builds_total {}\n\
             # HELP atelier_export_failures_total Export builds of this process that ended FAILED.\n\
             # TYPE atelier_export_failures_total counter\n\
             atelier_export_failures_total {}\n",
            self.builds.load(Relaxed),
            self.failures.load(Relaxed)
        )
    }
}

/// Job changes of every process, heard on [`CHANNEL`](super::CHANNEL) by the process's
/// `db::listen` listener, into this process's broadcast. Subscribers also poll, so the time
/// the listener is down only delays their events.
pub struct JobSubscriber(pub Arc<JobRunner>);

impl crate::db::listen::Subscriber for JobSubscriber {
    fn notified(&self, payload: &str) -> Option<crate::db::listen::Reply> {
        if let Ok(id) = payload.parse::<i64>() {
            self.0.changed(id);
        }
        None
    }
}
