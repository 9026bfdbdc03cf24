//! Keeping files and database in agreement: startup recovery, the running server's sweep of
//! staged files no request owns, fsck and gc.

use std::{collections::HashSet, time::Duration};

use entity::{
    asset, backpack_item, job, lease::LeaseStatus, project, project_conflict, project_version,
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::{error::AppResult, service::Services, storage::RecoveryReport};

/// Runs before the server listens: settles the files of staging directories whose process is
/// gone (published if a committed row references their key, removed otherwise). Directories
/// of live processes (a second server on the same data dir) are not touched.
pub async fn recover(svc: &Services) -> AppResult<RecoveryReport> {
    let report = settle(svc, false, Duration::ZERO).await?;
    if report != RecoveryReport::default() {
        tracing::info!(
            recovery.published = report.published,
            recovery.removed = report.removed,
            "startup_recovery"
        );
    }
    Ok(report)
}

/// The running server's periodic pass: what startup recovery does for processes that died
/// since, plus this process's own `.pending` files (commits whose reply was lost): published
/// once the database shows their key, removed when it still does not after `pending_grace`.
pub async fn sweep(svc: &Services, pending_grace: Duration) -> AppResult<RecoveryReport> {
    let report = settle(svc, true, pending_grace).await?;
    if report.published + report.removed > 0 {
        tracing::info!(
            sweep.published = report.published,
            sweep.removed = report.removed,
            sweep.kept_pending = report.kept_pending,
            "staging_sweep"
        );
    }
    Ok(report)
}

async fn settle(
    svc: &Services,
    own_pending: bool,
    pending_grace: Duration,
) -> AppResult<RecoveryReport> {
    let blobs = svc.blobs.clone();
    let orphans = tokio::task::spawn_blocking(move || blobs.orphans(own_pending))
        .await
        .map_err(crate::error::AppError::internal)??;
    // Asked after the files were listed: a key committed before this query is seen.
    let referenced = referenced_keys(svc.db.conn(), &orphans.keys()).await?;
    let blobs = svc.blobs.clone();
    Ok(
        tokio::task::spawn_blocking(move || blobs.settle(orphans, &referenced, pending_grace))
            .await
            .map_err(crate::error::AppError::internal)??,
    )
}

/// Which of `keys` some row references.
async fn referenced_keys<C: ConnectionTrait>(
    conn: &C,
    keys: &[String],
) -> AppResult<HashSet<String>> {
    let mut out = HashSet::new();
    for chunk in keys.chunks(500) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let projects: Vec<String> = project::Entity::find()
            .select_only()
            .column(project::Column::ContentKey)
            .filter(project::Column::ContentKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        let assets: Vec<String> = asset::Entity::find()
            .select_only()
            .column(asset::Column::BlobKey)
            .filter(asset::Column::BlobKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        let bodies: Vec<String> = backpack_item::Entity::find()
            .select_only()
            .column(backpack_item::Column::BodyKey)
            .filter(backpack_item::Column::BodyKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        let thumbs: Vec<Option<String>> = backpack_item::Entity::find()
            .select_only()
            .column(backpack_item::Column::ThumbnailKey)
            .filter(backpack_item::Column::ThumbnailKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        // An export's bundle while its project exists (nobody may download it after), and the
        // content of the version a job exports (a job may be built after the project changed:
        // its version's content must outlive the change).
        let bundles: Vec<Option<String>> = job::Entity::find()
            .select_only()
            .column(job::Column::BundleKey)
            .filter(job::Column::BundleKey.is_in(chunk.clone()))
            .filter(
                job::Column::SubjectId.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(project::Column::Id)
                        .from(project::Entity)
                        .to_owned(),
                ),
            )
            .into_tuple()
            .all(conn)
            .await?;
        let sources: Vec<Option<String>> = job::Entity::find()
            .select_only()
            .column(job::Column::SourceKey)
            .filter(job::Column::SourceKey.is_in(chunk.clone()))
            .filter(job::Column::Status.is_in([LeaseStatus::Pending, LeaseStatus::Running]))
            .into_tuple()
            .all(conn)
            .await?;
        // Every retained version's content and every kept conflicted save's (history).
        let versions: Vec<String> = project_version::Entity::find()
            .select_only()
            .column(project_version::Column::ContentKey)
            .filter(project_version::Column::ContentKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        let conflicts: Vec<String> = project_conflict::Entity::find()
            .select_only()
            .column(project_conflict::Column::ContentKey)
            .filter(project_conflict::Column::ContentKey.is_in(chunk.clone()))
            .into_tuple()
            .all(conn)
            .await?;
        out.extend(versions);
        out.extend(conflicts);
        out.extend(bundles.into_iter().flatten());
        out.extend(sources.into_iter().flatten());
        out.extend(projects);
        out.extend(assets);
        out.extend(bodies);
        out.extend(thumbs.into_iter().flatten());
    }
    Ok(out)
}

/// One broken invariant found by [`fsck`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// `I1`, `I2`, `I3` (see `atelier fsck`) or `STAGING`.
    pub invariant: &'static str,
    /// What is broken, e.g. `asset 12` or `project 7`.
    pub subject: String,
    pub detail: String,
}

/// Checks I1–I3 on a live data dir and reports stale staging files (those of processes that
/// are gone; a live process's staged files are writes in flight).
pub async fn fsck(svc: &Services) -> AppResult<Vec<Violation>> {
    use std::collections::HashMap;

    use entity::project_asset;

    use crate::domain::ProjectContent;

    let mut out = Vec::new();
    let conn = svc.db.conn();

    // Writes in flight in live processes: their rows may be committed a moment before their
    // blobs are published, so a blob found only in a live staging directory is not missing.
    let blobs = svc.blobs.clone();
    let census = tokio::task::spawn_blocking(move || blobs.census())
        .await
        .map_err(crate::error::AppError::internal)??;
    let locate = |key: &str| -> std::path::PathBuf {
        let published = svc.blobs.blob_path(key);
        match census.in_flight.get(key) {
            Some(staged) if !published.exists() => staged.clone(),
            _ => published,
        }
    };

    // I1: every asset's blob exists and hashes to its md5 and sha256.
    let assets = asset::Entity::find().all(conn).await?;
    for a in &assets {
        let path = locate(&a.blob_key);
        let hashed = tokio::task::spawn_blocking(move || crate::storage::hash_file(&path))
            .await
            .map_err(crate::error::AppError::internal)?;
        let subject = format!("asset {}", a.id);
        match hashed {
            Err(e) => out.push(Violation {
                invariant: "I1",
                subject,
                detail: format!("blob {} unreadable: {e}", a.blob_key),
            }),
            Ok((md5, sha256, size)) => {
                if md5 != a.md5 || sha256 != a.sha256 || size != a.size as u64 {
                    out.push(Violation {
                        invariant: "I1",
                        subject,
                        detail: format!(
                            "blob {} hashes to md5 {md5} sha256 {sha256} size {size}, row says {} {} {}",
                            a.blob_key, a.md5, a.sha256, a.size
                        ),
                    });
                }
            }
        }
    }
    // Built-ins: each one has its row with the embedded bytes' hash (its blob is checked
    // with every other asset's above).
    for b in &super::builtin::BUILTINS {
        let (md5, format) = b.parts();
        match assets
            .iter()
            .find(|a| a.md5 == md5.as_str() && a.data_format == format.extension())
        {
            None => out.push(Violation {
                invariant: "builtin",
                subject: b.md5ext.to_owned(),
                detail: "built-in asset has no row (`atelier migrate` restores it)".to_owned(),
            }),
            Some(a) if a.sha256 != b.sha256 => out.push(Violation {
                invariant: "builtin",
                subject: b.md5ext.to_owned(),
                detail: format!(
                    "asset {} has sha256 {}, the built-in {}",
                    a.id, a.sha256, b.sha256
                ),
            }),
            Some(_) => {}
        }
    }
    let by_key: HashMap<(String, String), (i64, &str)> = assets
        .iter()
        .map(|a| {
            (
                (a.md5.clone(), a.asset_type.clone()),
                (a.id, a.data_format.as_str()),
            )
        })
        .collect();

    // I2 and I3, a page of projects at a time.
    let mut links: HashMap<i64, Vec<i64>> = HashMap::new();
    for l in project_asset::Entity::find().all(conn).await? {
        links.entry(l.project_id).or_default().push(l.asset_id);
    }
    let mut after = 0i64;
    loop {
        use sea_orm::{QueryOrder, QuerySelect};
        let page = project::Entity::find()
            .filter(project::Column::Id.gt(after))
            .order_by_asc(project::Column::Id)
            .limit(200)
            .all(conn)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for p in page {
            let subject = format!("project {}", p.id);
            let path = locate(&p.content_key);
            let bytes = match tokio::fs::read(&path)
                .await
                .and_then(crate::storage::decode_content)
            {
                Ok(b) => b,
                Err(e) => {
                    out.push(Violation {
                        invariant: "I2",
                        subject,
                        detail: format!("content blob {} unreadable: {e}", p.content_key),
                    });
                    continue;
                }
            };
            let value: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    out.push(Violation {
                        invariant: "I2",
                        subject,
                        detail: format!("content blob {} is not a JSON object", p.content_key),
                    });
                    continue;
                }
            };
            let refs = match ProjectContent::parse(value, u64::MAX) {
                Ok(c) => c.asset_refs,
                Err(e) => {
                    out.push(Violation {
                        invariant: "I2",
                        subject,
                        detail: format!("content is not a valid project: {e}"),
                    });
                    continue;
                }
            };
            let mut expected = Vec::new();
            for r in &refs {
                match by_key.get(&(r.md5.as_str().to_owned(), r.kind.as_str().to_owned())) {
                    // `/assets/<md5ext>` serves it only in the format its extension names.
                    Some((id, data_format)) if *data_format == r.format.extension() => {
                        expected.push(*id)
                    }
                    Some((id, data_format)) => out.push(Violation {
                        invariant: "I3",
                        subject: subject.clone(),
                        detail: format!(
                            "references {} but asset {id} is stored as {data_format}",
                            r.md5ext
                        ),
                    }),
                    None => out.push(Violation {
                        invariant: "I3",
                        subject: subject.clone(),
                        detail: format!("references {} which is not stored", r.md5ext),
                    }),
                }
            }
            expected.sort_unstable();
            expected.dedup();
            let mut linked = links.remove(&p.id).unwrap_or_default();
            linked.sort_unstable();
            if expected != linked && expected.len() == refs.len() {
                out.push(Violation {
                    invariant: "I3",
                    subject,
                    detail: format!(
                        "asset links {linked:?} differ from the content's {expected:?}"
                    ),
                });
            }
        }
    }

    // I10: every retained version and kept conflicted save names content that is stored and
    // is a project; a project's current version is in its history.
    let mut after = (0i64, 0i32);
    loop {
        use sea_orm::{QueryOrder, QuerySelect};
        let page = project_version::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(project_version::Column::ProjectId.gt(after.0))
                    .add(
                        sea_orm::Condition::all()
                            .add(project_version::Column::ProjectId.eq(after.0))
                            .add(project_version::Column::Version.gt(after.1)),
                    ),
            )
            .order_by_asc(project_version::Column::ProjectId)
            .order_by_asc(project_version::Column::Version)
            .limit(500)
            .all(conn)
            .await?;
        let Some(last) = page.last() else { break };
        after = (last.project_id, last.version);
        for v in page {
            if let Some(detail) = unreadable_content(&locate(&v.content_key)).await {
                out.push(Violation {
                    invariant: "I10",
                    subject: format!("project {} version {}", v.project_id, v.version),
                    detail: format!("content blob {}: {detail}", v.content_key),
                });
            }
        }
    }
    let unrecorded = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT p.id, p.version FROM projects p WHERE NOT EXISTS \
             (SELECT 1 FROM project_versions v WHERE v.project_id = p.id AND v.version = p.version)",
        ))
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get::<i64>("", "id")?, row.try_get::<i32>("", "version")?)))
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    for (id, version) in unrecorded {
        out.push(Violation {
            invariant: "I10",
            subject: format!("project {id}"),
            detail: format!("current version {version} has no history entry"),
        });
    }
    for c in project_conflict::Entity::find().all(conn).await? {
        if let Some(detail) = unreadable_content(&locate(&c.content_key)).await {
            out.push(Violation {
                invariant: "I10",
                subject: format!("conflict {}", c.id),
                detail: format!("content blob {}: {detail}", c.content_key),
            });
        }
    }

    for path in &census.stale {
        out.push(Violation {
            invariant: "STAGING",
            subject: path.display().to_string(),
            detail: "stale staging file of a process that is gone (recovery settles it)".to_owned(),
        });
    }
    Ok(out)
}

/// Why the content blob at `path` is not a readable project (None when it is one).
async fn unreadable_content(path: &std::path::Path) -> Option<String> {
    let bytes = match tokio::fs::read(path)
        .await
        .and_then(crate::storage::decode_content)
    {
        Ok(b) => b,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(_)) => None,
        _ => Some("not a JSON object".to_owned()),
    }
}

/// What [`gc`] removed (or would remove, with `dry_run`).
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<(String, u64)>,
    pub bytes_freed: u64,
    pub kept_referenced: usize,
    pub kept_young: usize,
}

/// Removes blobs that no row references and that are older than `grace`.
///
/// Race-free against writers without locks (see docs/storage.md): a candidate is first
/// renamed into staging as `<key>.<uuid>.gc`, *then* the database is asked again. A writer
/// that commits a reference before that second look makes gc put the blob back; one that
/// commits after it checks for the blob only after its commit, finds it gone, and publishes
/// its own staged copy of the same bytes.
pub async fn gc(svc: &Services, grace: std::time::Duration, dry_run: bool) -> AppResult<GcReport> {
    gc_with(svc, grace, dry_run, super::history::Retention::default()).await
}

/// [`gc`] under a history retention: versions and conflicts retention lets go are removed
/// first (not with `dry_run`), so their blobs can be collected in the same run.
pub async fn gc_with(
    svc: &Services,
    grace: std::time::Duration,
    dry_run: bool,
    retention: super::history::Retention,
) -> AppResult<GcReport> {
    if !dry_run {
        super::history::prune(svc, retention).await?;
    }
    let blobs = svc.blobs.clone();
    let candidates = tokio::task::spawn_blocking(move || blobs.blobs_older_than(grace))
        .await
        .map_err(crate::error::AppError::internal)??;
    let mut report = GcReport {
        kept_young: candidates.young,
        ..Default::default()
    };
    for chunk in candidates.old.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let referenced = referenced_keys(svc.db.conn(), &keys).await?;
        for (key, size) in chunk {
            if referenced.contains(key) {
                report.kept_referenced += 1;
                continue;
            }
            if dry_run {
                report.removed.push((key.clone(), *size));
                report.bytes_freed += size;
                continue;
            }
            let Some(aside) = svc.blobs.set_aside(key)? else {
                continue;
            };
            // The second look, after the blob stopped being visible.
            let still = referenced_keys(svc.db.conn(), std::slice::from_ref(key)).await?;
            if still.contains(key) {
                svc.blobs.put_back(key, &aside)?;
                report.kept_referenced += 1;
                tracing::info!(blob.key = %key, "gc_lost_race_blob_kept");
                continue;
            }
            svc.blobs.delete_aside(&aside)?;
            report.removed.push((key.clone(), *size));
            report.bytes_freed += size;
        }
    }
    tracing::info!(
        gc.removed = report.removed.len(),
        gc.bytes_freed = report.bytes_freed,
        gc.dry_run = dry_run,
        "gc_finished"
    );
    Ok(report)
}
