//! Validating a claimed file and staging its blobs: the concurrent, expensive part of an
//! import, before anything is written.

use std::{collections::HashMap, sync::Arc};

use entity::asset;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};

use crate::{
    domain::AssetKind,
    error::{AppError, AppResult},
    service::{
        Services,
        sb3::{Sb3, Sb3Limits, read_sb3},
    },
    storage::StagedBlob,
};

/// What the write transaction needs of one validated file (cheap to clone: it may run more
/// than once).
#[derive(Clone)]
pub(super) struct Plan {
    pub(super) run_id: i64,
    pub(super) title: String,
    pub(super) content_key: String,
    pub(super) content_size: i64,
    pub(super) refs: Arc<Vec<crate::domain::AssetRef>>,
    /// Assets of the file not stored yet when it was validated (their blobs are staged).
    pub(super) new_assets: Vec<NewAsset>,
}

#[derive(Clone)]
pub(super) struct NewAsset {
    pub(super) md5: String,
    pub(super) kind: AssetKind,
    pub(super) format: crate::domain::DataFormat,
    pub(super) sha256: String,
    pub(super) size: i64,
}

/// A validated, claimed file with its blobs staged, ready to be written.
pub(super) struct Prepared {
    pub(super) index: usize,
    pub(super) plan: Plan,
    pub(super) staged: Vec<StagedBlob>,
    pub(super) sb3: Arc<Sb3>,
}

/// Validates `bytes` as an `.sb3` and stages its content and the assets not stored yet.
pub(super) async fn prepare_file(
    svc: &Services,
    bytes: Arc<Vec<u8>>,
    run_id: i64,
    title: String,
) -> AppResult<(Plan, Vec<StagedBlob>, Arc<Sb3>)> {
    let limits = Sb3Limits::from(&svc.limits);
    let sb3 = Arc::new(
        tokio::task::spawn_blocking(move || read_sb3(&bytes, &limits))
            .await
            .map_err(AppError::internal)??,
    );
    let stored = stored_assets(svc, &sb3).await?;
    let mut new_assets = Vec::new();
    let mut to_stage = Vec::new();
    for a in &sb3.assets {
        let kind = a.format.kind();
        if stored.get(&(a.md5.as_str().to_owned(), kind)) == Some(&a.sha256) {
            continue;
        }
        new_assets.push(NewAsset {
            md5: a.md5.as_str().to_owned(),
            kind,
            format: a.format,
            sha256: a.sha256.clone(),
            size: a.bytes.len() as i64,
        });
        to_stage.push(a.bytes.clone());
    }
    let staged = stage_all(svc, sb3.content.bytes.clone(), to_stage).await?;
    let plan = Plan {
        run_id,
        title,
        content_key: staged[0].key.clone(),
        content_size: staged[0].size as i64,
        refs: Arc::new(sb3.content.asset_refs.clone()),
        new_assets,
    };
    Ok((plan, staged, sb3))
}

/// Stages the blobs of a plan again (for a retry after its batch failed and dropped them).
pub(super) async fn restage(svc: &Services, plan: &Plan, sb3: &Sb3) -> AppResult<Vec<StagedBlob>> {
    let mut bytes = Vec::new();
    for new in &plan.new_assets {
        if let Some(a) = sb3.assets.iter().find(|a| a.sha256 == new.sha256) {
            bytes.push(a.bytes.clone());
        }
    }
    stage_all(svc, sb3.content.bytes.clone(), bytes).await
}

/// Stages a file's project JSON (first, as content: compressed) and its new assets (as they
/// are), concurrently.
async fn stage_all(
    svc: &Services,
    content: Arc<Vec<u8>>,
    assets: Vec<Arc<Vec<u8>>>,
) -> AppResult<Vec<StagedBlob>> {
    let (content, assets) = futures::future::try_join(
        svc.blobs.stage_content(content),
        futures::future::try_join_all(assets.into_iter().map(|b| svc.blobs.stage_bytes(b))),
    )
    .await?;
    let mut staged = vec![content];
    staged.extend(assets);
    Ok(staged)
}

/// The (md5, kind) → sha256 of the file's assets that are stored already.
pub(super) async fn stored_assets(
    svc: &Services,
    sb3: &Sb3,
) -> AppResult<HashMap<(String, AssetKind), String>> {
    let mut out = HashMap::new();
    for chunk in sb3.assets.chunks(200) {
        let mut any = Condition::any();
        for a in chunk {
            any = any.add(
                Condition::all()
                    .add(asset::Column::Md5.eq(a.md5.as_str()))
                    .add(asset::Column::AssetType.eq(a.format.kind().as_str())),
            );
        }
        let rows: Vec<(String, String, String)> = asset::Entity::find()
            .select_only()
            .column(asset::Column::Md5)
            .column(asset::Column::AssetType)
            .column(asset::Column::Sha256)
            .filter(any)
            .into_tuple()
            .all(svc.db.conn())
            .await?;
        for (md5, kind, sha256) in rows {
            if let Some(kind) = AssetKind::from_db(&kind) {
                out.insert((md5, kind), sha256);
            }
        }
    }
    Ok(out)
}
