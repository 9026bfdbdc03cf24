//! Startup recovery (and, later, fsck and gc): keeps files and database in agreement.

use std::collections::HashSet;

use entity::{asset, backpack_item, project};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::{error::AppResult, service::Services, storage::RecoveryReport};

/// Runs before the server listens: publishes staged blobs whose transaction committed just
/// before a crash, and removes every other staged file.
pub async fn recover(svc: &Services) -> AppResult<RecoveryReport> {
    let staged = svc.blobs.staging_files()?;
    let keys: Vec<String> = staged
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.strip_suffix(".ready"))
        .filter_map(|name| name.split('.').next())
        .map(str::to_owned)
        .collect();
    let referenced = referenced_keys(svc.db.conn(), &keys).await?;
    let blobs = svc.blobs.clone();
    let report = tokio::task::spawn_blocking(move || blobs.recover(&referenced))
        .await
        .map_err(crate::error::AppError::internal)??;
    if report != RecoveryReport::default() {
        tracing::info!(
            recovery.published = report.published,
            recovery.removed = report.removed,
            "startup_recovery"
        );
    }
    Ok(report)
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
            .filter(backpack_item::Column::ThumbnailKey.is_in(chunk))
            .into_tuple()
            .all(conn)
            .await?;
        out.extend(projects);
        out.extend(assets);
        out.extend(bodies);
        out.extend(thumbs.into_iter().flatten());
    }
    Ok(out)
}
