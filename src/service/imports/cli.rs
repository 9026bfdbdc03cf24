//! `atelier import`: the pipeline over many files (read, hash, claim and validate
//! concurrently; write in bounded batches, retrying a failed batch file by file).

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use entity::import_run;
use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use sha2::{Digest, Sha256};

use super::{
    claim::{Claim, claim, completed_project, mark_failed, renew},
    claimer::new_claimer,
    cli_source, reason,
    report::{
        FileReport, FileStatus, ImportOptions, ImportSummary, failed_report, report, title_of,
    },
    stage::{Prepared, prepare_file, restage},
    write::write_plans,
};
use crate::{
    domain::{UserId, Viewer},
    error::{AppError, AppResult},
    service::{Services, sb3::Sb3Limits},
};
/// One file after the concurrent stage: either done (skipped, taken, failed) or ready to
/// be written.
pub(super) enum Step {
    Done(usize, FileReport),
    Ready(Prepared),
}

/// Reads, hashes, claims and validates one file (the concurrent stage).
pub(super) async fn prepare_path(
    svc: Services,
    owner: Viewer,
    claimer: Arc<str>,
    lease: Duration,
    index: usize,
    path: PathBuf,
) -> Step {
    let limits = Sb3Limits::from(&svc.limits);
    let fail = |e: AppError| Step::Done(index, failed_report(&path, &e));
    // A zip holds at most its decompressed total plus headers: anything bigger is refused
    // before it is read.
    let max_file = limits.max_total_bytes + 64 * 1024 * limits.max_entries as u64;
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() > max_file => {
            return fail(AppError::PayloadTooLarge {
                what: "the .sb3 file",
                limit: max_file,
            });
        }
        Ok(_) => {}
        Err(e) => return fail(AppError::bad_input("path", format!("cannot read: {e}"))),
    }
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::read(&path).map(|b| {
                let hash = hex::encode(Sha256::digest(&b));
                (Arc::new(b), hash)
            })
        })
        .await
    };
    let (bytes, hash) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(AppError::bad_input("path", format!("cannot read: {e}"))),
        Err(e) => return fail(AppError::internal(e)),
    };
    let run_id = match claim(&svc, &cli_source(owner.id), &hash, &claimer, lease).await {
        Ok(Claim::Claimed(id)) => id,
        Ok(Claim::Completed(project)) => {
            return Step::Done(index, report(&path, FileStatus::Skipped, Some(project)));
        }
        Ok(Claim::Held) => return Step::Done(index, report(&path, FileStatus::Taken, None)),
        Ok(Claim::OwnAlready) => {
            let mut r = report(&path, FileStatus::Skipped, None);
            r.reason = Some("the same bytes as another file of this import".to_owned());
            return Step::Done(index, r);
        }
        Err(e) => return fail(e),
    };
    match prepare_file(&svc, bytes, run_id, title_of(&path)).await {
        Ok((plan, staged, sb3)) => Step::Ready(Prepared {
            index,
            plan,
            staged,
            sb3,
        }),
        Err(e) => {
            mark_failed(&svc, run_id, &claimer, &reason(&e)).await;
            fail(e)
        }
    }
}

/// A re-run's shortcut: the files (by index) imported for `source` before, with their
/// projects. Every file is hashed (streamed, concurrently; the bytes are not kept) and the
/// completed runs are looked up a few hundred hashes per statement, so a directory imported
/// already costs a read of each file and a handful of queries, not a round trip per file.
/// Anything not found here (or any error) takes the normal path, which decides for itself.
pub(super) async fn already_imported(
    svc: &Services,
    source: &str,
    paths: &Arc<Vec<PathBuf>>,
    concurrency: usize,
) -> HashMap<usize, i64> {
    let hashes: Vec<(usize, String)> = futures::stream::iter(0..paths.len())
        .map(|i| {
            let path = paths[i].clone();
            async move {
                let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                    let mut file = std::fs::File::open(&path)?;
                    let mut hasher = Sha256::new();
                    std::io::copy(&mut file, &mut hasher)?;
                    Ok(hex::encode(hasher.finalize()))
                })
                .await;
                match hashed {
                    Ok(Ok(hash)) => Some((i, hash)),
                    _ => None,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|h| async move { h })
        .collect()
        .await;
    let mut found: HashMap<String, i64> = HashMap::new();
    for chunk in hashes.chunks(500) {
        let rows: Result<Vec<(String, Option<i64>)>, _> = import_run::Entity::find()
            .select_only()
            .column(import_run::Column::ContentHash)
            .column(import_run::Column::ProjectId)
            .filter(import_run::Column::Source.eq(source))
            .filter(import_run::Column::Status.eq(entity::lease::LeaseStatus::Completed))
            .filter(import_run::Column::ProjectId.is_not_null())
            .filter(import_run::Column::ContentHash.is_in(chunk.iter().map(|(_, h)| h.clone())))
            .into_tuple()
            .all(svc.db.conn())
            .await;
        match rows {
            Ok(rows) => found.extend(rows.into_iter().filter_map(|(h, p)| Some((h, p?)))),
            Err(e) => {
                tracing::debug!(error = %e, "import_precheck_failed");
                return HashMap::new();
            }
        }
    }
    hashes
        .into_iter()
        .filter_map(|(i, h)| found.get(&h).map(|p| (i, *p)))
        .collect()
}

/// `atelier import`: imports `files` for `owner` (see the module docs). `on_file` is told
/// of each file as it is decided (the progress bar).
pub async fn import_files(
    svc: &Services,
    owner: Viewer,
    files: Vec<PathBuf>,
    opts: ImportOptions,
    on_file: impl Fn(&FileReport),
) -> AppResult<ImportSummary> {
    let claimer: Arc<str> = new_claimer().into();
    let batch_size = opts.batch.max(1);
    let lease = opts.lease.max(Duration::from_secs(1));
    tracing::info!(import.files = files.len(), import.claimer = %claimer, "import_started");
    let renewer = {
        let (svc, claimer) = (svc.clone(), claimer.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = renew(&svc, &claimer, lease).await {
                    tracing::warn!(error = %e, "import_lease_renewal_failed");
                }
            }
        })
    };
    let paths: Arc<Vec<PathBuf>> = Arc::new(files);
    let mut reports: Vec<Option<FileReport>> = vec![None; paths.len()];
    let done_before = already_imported(svc, &cli_source(owner.id), &paths, opts.concurrency).await;
    // Bounded: at most `concurrency` files in the concurrent stage and two batches waiting.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Step>(batch_size * 2);
    let producer = {
        let (svc, claimer, paths) = (svc.clone(), claimer.clone(), paths.clone());
        tokio::spawn(async move {
            let mut steps = futures::stream::iter(0..paths.len())
                .map(|i| {
                    let skipped = done_before.get(&i).map(|project| {
                        Step::Done(i, report(&paths[i], FileStatus::Skipped, Some(*project)))
                    });
                    let task = prepare_path(
                        svc.clone(),
                        owner,
                        claimer.clone(),
                        lease,
                        i,
                        paths[i].clone(),
                    );
                    async move {
                        match skipped {
                            Some(step) => Ok(step),
                            None => tokio::spawn(task).await,
                        }
                    }
                })
                .buffer_unordered(opts.concurrency.max(1));
            while let Some(step) = steps.next().await {
                let step = match step {
                    Ok(step) => step,
                    Err(e) => {
                        tracing::error!(error = %e, "import_task_panicked");
                        continue;
                    }
                };
                if tx.send(step).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut batch: Vec<Prepared> = Vec::with_capacity(batch_size);
    let record = |index: usize, r: FileReport, reports: &mut Vec<Option<FileReport>>| {
        on_file(&r);
        reports[index] = Some(r);
    };
    loop {
        let step = rx.recv().await;
        let flush = match &step {
            None => !batch.is_empty(),
            Some(_) => false,
        };
        match step {
            Some(Step::Done(i, r)) => record(i, r, &mut reports),
            Some(Step::Ready(p)) => batch.push(p),
            None if !flush => break,
            None => {}
        }
        if batch.len() >= batch_size || flush {
            for (i, r) in
                write_batch(svc, owner, &claimer, std::mem::take(&mut batch), &paths).await
            {
                record(i, r, &mut reports);
            }
        }
    }
    let _ = producer.await;
    renewer.abort();
    let mut summary = ImportSummary::default();
    for (i, r) in reports.into_iter().enumerate() {
        // A file whose task panicked is reported, never silently dropped.
        let r = r.unwrap_or_else(|| {
            failed_report(
                &paths[i],
                &AppError::internal("the import of this file crashed"),
            )
        });
        match r.status {
            FileStatus::Imported => summary.imported += 1,
            FileStatus::Skipped => summary.skipped += 1,
            FileStatus::Taken => summary.taken += 1,
            FileStatus::Failed => summary.failed += 1,
        }
        summary.files.push(r);
    }
    tracing::info!(
        import.imported = summary.imported,
        import.skipped = summary.skipped,
        import.taken = summary.taken,
        import.failed = summary.failed,
        "import_finished"
    );
    Ok(summary)
}

/// Writes a batch in one transaction; if it fails, each file on its own, so one bad file
/// fails alone.
pub(super) async fn write_batch(
    svc: &Services,
    owner: Viewer,
    claimer: &str,
    batch: Vec<Prepared>,
    paths: &[PathBuf],
) -> Vec<(usize, FileReport)> {
    // Tests: `imports::before_batch=return(300)` holds each batch before it is written, so
    // that a kill -9 catches the import half way.
    crate::failpoints::hold("imports::before_batch").await;
    let mut out = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    let mut staged = Vec::new();
    let mut plans = Vec::with_capacity(batch.len());
    for p in batch {
        plans.push(p.plan.clone());
        staged.extend(p.staged);
        items.push((p.index, p.plan, p.sb3));
    }
    let n = plans.len();
    let first = write_plans(svc, owner, claimer, plans, staged).await;
    match first {
        Ok(ids) => {
            tracing::info!(import.batch = n, "import_batch_written");
            for ((index, _, _), id) in items.iter().zip(ids) {
                out.push((
                    *index,
                    report(&paths[*index], FileStatus::Imported, Some(id)),
                ));
            }
            return out;
        }
        Err(e) => {
            tracing::info!(import.batch = n, error = %e, "import_batch_failed_retrying_one_by_one")
        }
    }
    // The batch's staged blobs are gone with it (or kept pending for the database to decide,
    // and then the run is found completed below): stage each file's again.
    for (index, plan, sb3) in items {
        let path = &paths[index];
        let result = async {
            let staged = restage(svc, &plan, &sb3).await?;
            write_plans(svc, owner, claimer, vec![plan.clone()], staged).await
        }
        .await;
        let r = match result {
            Ok(ids) => report(path, FileStatus::Imported, Some(ids[0])),
            Err(e) => match completed_project(svc, plan.run_id, claimer).await {
                Some(id) => report(path, FileStatus::Imported, Some(id)),
                None => {
                    mark_failed(svc, plan.run_id, claimer, &reason(&e)).await;
                    tracing::info!(import_run.id = plan.run_id, path = %path.display(), code = %e.code(), error = %e, "import_file_failed");
                    failed_report(path, &e)
                }
            },
        };
        out.push((index, r));
    }
    out
}

/// The local user `--owner` names (created if absent, as `token create` does), as the viewer
/// the projects are created for.
pub async fn local_owner(svc: &Services, name: &str) -> AppResult<Viewer> {
    use crate::service::identity;
    let user = identity::local_user(svc, &identity::local_name("owner", name)?, None).await?;
    Ok(Viewer {
        id: UserId(user.id),
        role: crate::domain::Role::from_db(&user.role),
    })
}
