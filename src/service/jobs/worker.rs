//! Running a job in this process: take it, build while keeping the lease, record the
//! outcome; and the periodic sweep that takes up jobs nobody runs.

use std::sync::atomic::Ordering::Relaxed;

use entity::job;

use super::queue::{finish_failed, finish_ready, keep_lease, sweep, take};
use crate::service::{export::BuildFailed, lease::Held};
use crate::{error::AppResult, service::Services};

/// Makes sure a task of this process tries to run job `id` (unless one already does).
pub fn kick(svc: &Services, id: i64) {
    if !svc.jobs.in_flight().insert(id) {
        return;
    }
    let svc = svc.clone();
    tokio::spawn(async move {
        // Forgets the job when the task ends, however it ends.
        struct Done(Services, i64);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.jobs.in_flight().remove(&self.1);
            }
        }
        let _done = Done(svc.clone(), id);
        let Ok(_permit) = svc.jobs.permits.clone().acquire_owned().await else {
            return;
        };
        if let Err(e) = run(&svc, id).await {
            tracing::warn!(job.id = id, error = %e, "job_run_failed");
        }
    });
}

/// Takes job `id` if nobody holds it, builds, and records the outcome.
pub(super) async fn run(svc: &Services, id: i64) -> AppResult<()> {
    // Tests keep a job PENDING for a while (`return(ms)`), e.g. to subscribe before it runs.
    crate::failpoints::hold("jobs::before_take").await;
    let token = format!(
        "{}/{}",
        svc.jobs.worker_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let Some(job) = take(svc, id, &token).await? else {
        tracing::debug!(job.id = id, "job_taken_elsewhere");
        return Ok(());
    };
    svc.jobs.changed(id);
    svc.jobs.builds.fetch_add(1, Relaxed);
    tracing::info!(
        job.id = id,
        job.attempt = job.attempts,
        project.id = job.subject_id,
        project.version = job.subject_version,
        "export_build_started"
    );
    let built = tokio::select! {
        built = build(svc, &job) => Some(built),
        // Returns only once the lease is lost.
        _lost = keep_lease(svc, id, &token) => None,
    };
    match built {
        None => {
            tracing::warn!(job.id = id, "export_lease_lost");
            Ok(())
        }
        Some(Ok(staged)) => {
            let (key, size) = (staged.key.clone(), staged.size);
            match finish_ready(svc, id, &token, staged).await {
                Ok(Held::Yes) => {
                    tracing::info!(job.id = id, blob.key = %key, blob.size = size, "export_ready");
                    Ok(())
                }
                Ok(Held::Lost) => {
                    tracing::warn!(job.id = id, "export_lease_lost_before_ready");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(job.id = id, error = %e, "export_failed");
                    finish_failed(svc, id, &token, e.public_message()).await;
                    Err(e)
                }
            }
        }
        Some(Err(failed)) => {
            tracing::warn!(job.id = id, error = %failed, "export_failed");
            finish_failed(svc, id, &token, failed.reason()).await;
            Ok(())
        }
    }
}

pub(super) async fn build(
    svc: &Services,
    job: &job::Model,
) -> Result<crate::storage::StagedBlob, BuildFailed> {
    // Tests hold a build here (`return(ms)`): to watch RUNNING, or to kill the process mid-build.
    crate::failpoints::hold("export::build_delay").await;
    crate::service::export::build(svc, job).await
}

/// The server's job housekeeping: a sweep now (jobs left by a process that died) and then
/// every `JobRunner::sweep_every`.
pub async fn sweep_forever(svc: Services) {
    let mut tick = tokio::time::interval(svc.jobs.sweep_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&svc).await {
            tracing::warn!(error = %e, "job_sweep_failed");
        }
    }
}
