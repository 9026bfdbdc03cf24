//! Building a `.sb3` bundle: the project JSON of one version and every asset it references,
//! zipped the way Scratch opens it (`project.json` at the root, assets named `<md5>.<ext>`).
//!
//! The bundle is deterministic (fixed entry order, fixed timestamps): two builds of one version
//! produce the same bytes, hence the same content-addressed blob key. A build repeated after a
//! worker died therefore never leaves a second bundle blob behind.

use std::{collections::BTreeMap, sync::Arc};

use entity::{asset, job};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::{
    domain::{DataFormat, ProjectContent},
    error::{AppError, AppResult},
    service::Services,
    storage::StagedBlob,
};

/// Why a build cannot succeed: reported in `Job.error` (retrying the same version is futile).
fn failed(message: impl Into<String>) -> AppError {
    AppError::Conflict(message.into())
}

/// Builds the bundle of `job`'s project version and stages it (not yet visible: the job's
/// READY transaction publishes it).
pub async fn build(svc: &Services, job: &job::Model) -> AppResult<StagedBlob> {
    // Tests make a build fail on purpose (`return(message)`).
    fail::fail_point!("export::build", |msg: Option<String>| Err(failed(
        msg.unwrap_or_else(|| "injected build failure".to_owned())
    )));
    let key = job
        .source_key
        .as_deref()
        .ok_or_else(|| failed("the job does not name the project's content"))?;
    let json = match svc.blobs.read(key).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(failed(format!(
                "the content of version {} is no longer stored; export again",
                job.subject_version
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| AppError::internal(format!("stored project content does not parse: {e}")))?;
    let refs = ProjectContent::parse(value, u64::MAX)?.asset_refs;

    // One entry per md5ext, in name order.
    let mut wanted: BTreeMap<String, (String, String, DataFormat)> = BTreeMap::new();
    for r in refs {
        wanted.insert(
            r.md5ext.clone(),
            (
                r.md5.as_str().to_owned(),
                r.kind.as_str().to_owned(),
                r.format,
            ),
        );
    }
    let md5s: Vec<String> = wanted.values().map(|(m, _, _)| m.clone()).collect();
    let rows = if md5s.is_empty() {
        Vec::new()
    } else {
        asset::Entity::find()
            .filter(asset::Column::Md5.is_in(md5s))
            .all(svc.db.conn())
            .await?
    };
    let mut entries = Vec::with_capacity(wanted.len());
    for (md5ext, (md5, kind, format)) in &wanted {
        let row = rows
            .iter()
            .find(|a| &a.md5 == md5 && &a.asset_type == kind && a.data_format == format.extension())
            .ok_or_else(|| failed(format!("asset {md5ext} is not stored")))?;
        let bytes = svc.blobs.read(&row.blob_key).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AppError::internal(format!("asset {} blob {} is missing", row.id, row.blob_key))
            } else {
                e.into()
            }
        })?;
        entries.push((md5ext.clone(), *format, bytes));
    }
    let zipped = tokio::task::spawn_blocking(move || {
        crate::service::sb3::build_sb3(
            &json,
            entries.into_iter().map(|(name, _, bytes)| (name, bytes)),
        )
    })
    .await
    .map_err(AppError::internal)?
    .map_err(|e| AppError::internal(format!("zipping failed: {e}")))?;
    Ok(svc.blobs.stage_bytes(Arc::new(zipped)).await?)
}
