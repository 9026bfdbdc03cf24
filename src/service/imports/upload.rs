//! `importProject`: one uploaded `.sb3`, idempotent per (user, sha256 of the file).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use entity::project;
use sea_orm::EntityTrait;

use super::{
    DEFAULT_LEASE,
    claim::{Claim, claim, completed_project, mark_failed},
    claimer::new_claimer,
    reason,
    stage::prepare_file,
    upload_source,
    write::write_plans,
};
use crate::{
    domain::{Title, Viewer},
    error::{AppError, AppResult},
    service::Services,
    storage::StagedUpload,
};
/// How long `importProject` waits for a concurrent import of the same bytes to finish.
pub(super) const UPLOAD_WAIT: Duration = Duration::from_secs(15);

/// Imports one uploaded `.sb3` for `viewer` (`importProject`): idempotent per (user, sha256
/// of the file). A concurrent upload of the same bytes waits for the first one's project;
/// a file imported before answers its project (or imports again if it was deleted).
pub async fn import_upload(
    svc: &Services,
    viewer: Viewer,
    upload: StagedUpload,
    title: Option<Title>,
) -> AppResult<project::Model> {
    let sha256 = upload.blob.sha256.clone();
    let bytes = Arc::new(
        tokio::fs::read(upload.blob.path())
            .await
            .map_err(|e| AppError::Unavailable(format!("reading the upload failed: {e}")))?,
    );
    // The upload itself is not stored: only what the import makes of it.
    drop(upload);
    let source = upload_source(viewer.id);
    let claimer = new_claimer();
    let started = std::time::Instant::now();
    loop {
        match claim(svc, &source, &sha256, &claimer, DEFAULT_LEASE).await? {
            Claim::Completed(id) => {
                if let Some(p) = project::Entity::find_by_id(id).one(svc.db.conn()).await? {
                    tracing::info!(project.id = id, user.id = %viewer.id, "import_upload_already_imported");
                    return Ok(p);
                }
                // Deleted just now: the next claim imports it again.
            }
            // (A claimer per request: `OwnAlready` cannot happen here.)
            Claim::Held | Claim::OwnAlready if started.elapsed() < UPLOAD_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Claim::Held | Claim::OwnAlready => {
                return Err(AppError::Unavailable(
                    "an import of the same file is still in progress; retry shortly".to_owned(),
                ));
            }
            Claim::Claimed(run_id) => {
                // Bounds the memory of concurrent imports: an upload may decompress to the
                // content limit plus ten asset limits.
                let _slot = upload_slots().acquire().await.map_err(AppError::internal)?;
                let title = title
                    .clone()
                    .map(Title::into_inner)
                    .unwrap_or_else(|| "Imported project".to_owned());
                let result = async {
                    let (plan, staged, _) = prepare_file(svc, bytes.clone(), run_id, title).await?;
                    let ids = write_plans(svc, viewer, &claimer, vec![plan], staged).await?;
                    Ok::<i64, AppError>(ids[0])
                }
                .await;
                let id = match result {
                    Ok(id) => id,
                    Err(e) => {
                        if let Some(id) = completed_project(svc, run_id, &claimer).await {
                            id
                        } else {
                            mark_failed(svc, run_id, &claimer, &reason(&e)).await;
                            tracing::info!(import_run.id = run_id, code = %e.code(), error = %e, "import_upload_failed");
                            return Err(e);
                        }
                    }
                };
                tracing::info!(project.id = id, user.id = %viewer.id, import_run.id = run_id, "project_imported");
                return project::Entity::find_by_id(id)
                    .one(svc.db.conn())
                    .await?
                    .ok_or(AppError::NotFound("project"));
            }
        }
    }
}

/// Uploads unpacked at once in this process: one per CPU.
pub(super) fn upload_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )
    })
}
