//! The write transaction of one or several staged files: assets, project, asset links and
//! the completion of each run, conditional on the claim still being ours.

use std::sync::Arc;

use entity::{asset, import_run};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    sea_query::Expr,
};

use super::stage::Plan;
use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services,
        lease::{self, Held, LeaseStatus},
        now,
    },
    storage::StagedBlob,
};
/// Writes one file inside the transaction: its new assets (get-or-create: another import
/// may store the same asset at the same time), its project, the project's asset links, and
/// the completion of its run, conditional on the claim still being ours.
pub(super) async fn write_one(
    txn: &DatabaseTransaction,
    owner: Viewer,
    claimer: &str,
    plan: &Plan,
) -> AppResult<i64> {
    for new in &plan.new_assets {
        let (winner, _) = crate::db::get_or_create(
            txn,
            asset::ActiveModel {
                md5: Set(new.md5.clone()),
                asset_type: Set(new.kind.as_str().to_owned()),
                sha256: Set(new.sha256.clone()),
                size: Set(new.size),
                content_type: Set(new.format.content_type().to_owned()),
                data_format: Set(new.format.extension().to_owned()),
                blob_key: Set(new.sha256.clone()),
                created_by: Set(Some(owner.id.0)),
                created_at: Set(now()),
                ..Default::default()
            },
            [asset::Column::Md5, asset::Column::AssetType],
            asset::Entity::find()
                .filter(asset::Column::Md5.eq(new.md5.as_str()))
                .filter(asset::Column::AssetType.eq(new.kind.as_str())),
        )
        .await?;
        if winner.sha256 != new.sha256 {
            return Err(AppError::Conflict(format!(
                "a different {} asset with md5 {} is already stored",
                new.kind.as_str(),
                new.md5
            )));
        }
    }
    // MISSING_ASSETS when a reference is neither in the file nor stored.
    let asset_ids = crate::service::projects::resolve_assets(txn, &plan.refs).await?;
    let project = crate::service::projects::new_row(
        owner,
        plan.title.clone(),
        plan.content_key.clone(),
        plan.content_size,
        None,
    )
    .insert(txn)
    .await?;
    crate::service::projects::link_assets(txn, ProjectId(project.id), &asset_ids).await?;
    crate::service::history::record(
        txn,
        &project,
        Some(owner.id),
        crate::service::history::Via::Import,
    )
    .await?;
    let completed = lease::finish::<import_run::Entity>(
        import_run::Column::Id.eq(plan.run_id),
        claimer,
        LeaseStatus::Completed,
    )
    .col_expr(import_run::Column::ProjectId, Expr::value(project.id))
    .col_expr(import_run::Column::UpdatedAt, Expr::value(now()))
    .exec(txn)
    .await?;
    if Held::from_rows(completed.rows_affected) == Held::Lost {
        // Rolls the file's writes back; the caller reports the file as not imported.
        return Err(AppError::Conflict(
            "the claim on this import was lost (its lease passed and another import took it)"
                .to_owned(),
        ));
    }
    Ok(project.id)
}

/// Writes several files in one transaction; their staged blobs are published after it.
pub(super) async fn write_plans(
    svc: &Services,
    owner: Viewer,
    claimer: &str,
    plans: Vec<Plan>,
    staged: Vec<StagedBlob>,
) -> AppResult<Vec<i64>> {
    let plans = Arc::new(plans);
    let claimer: Arc<str> = claimer.into();
    crate::service::write::commit(svc, staged, None, |txn| {
        let (plans, claimer) = (plans.clone(), claimer.clone());
        Box::pin(async move {
            let mut ids = Vec::with_capacity(plans.len());
            for plan in plans.iter() {
                ids.push(write_one(txn, owner, &claimer, plan).await?);
            }
            Ok(ids)
        })
    })
    .await
}
