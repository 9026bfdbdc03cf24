//! DataLoaders, created per request: every list of projects resolves owners, shares and
//! assets with one query per field, not one per row.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader, NoCache};
use entity::{asset, group, project, project_asset, project_share, user};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::service::Services;

/// The batch loader of one request; one `DataLoader` serves every key type below.
pub type Loaders = DataLoader<Batch, NoCache>;

/// What the loader wraps: the services (for the database).
#[derive(Clone)]
pub struct Batch(pub Services);

/// Users by id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey(pub i64);
/// Projects by id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectKey(pub i64);
/// The groups a project is shared with, by project id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharesKey(pub i64);
/// The assets a project references, by project id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectAssetsKey(pub i64);

impl Loader<UserKey> for Batch {
    type Value = user::Model;
    type Error = DbErr;

    async fn load(&self, keys: &[UserKey]) -> Result<HashMap<UserKey, user::Model>, DbErr> {
        let rows = user::Entity::find()
            .filter(user::Column::Id.is_in(keys.iter().map(|k| k.0)))
            .all(self.0.db.conn())
            .await?;
        Ok(rows.into_iter().map(|u| (UserKey(u.id), u)).collect())
    }
}

impl Loader<ProjectKey> for Batch {
    type Value = project::Model;
    type Error = DbErr;

    async fn load(
        &self,
        keys: &[ProjectKey],
    ) -> Result<HashMap<ProjectKey, project::Model>, DbErr> {
        let rows = project::Entity::find()
            .filter(project::Column::Id.is_in(keys.iter().map(|k| k.0)))
            .all(self.0.db.conn())
            .await?;
        Ok(rows.into_iter().map(|p| (ProjectKey(p.id), p)).collect())
    }
}

impl Loader<SharesKey> for Batch {
    type Value = Vec<group::Model>;
    type Error = DbErr;

    async fn load(
        &self,
        keys: &[SharesKey],
    ) -> Result<HashMap<SharesKey, Vec<group::Model>>, DbErr> {
        let rows = project_share::Entity::find()
            .filter(project_share::Column::ProjectId.is_in(keys.iter().map(|k| k.0)))
            .find_also_related(group::Entity)
            .order_by_asc(project_share::Column::GroupId)
            .all(self.0.db.conn())
            .await?;
        let mut out: HashMap<SharesKey, Vec<group::Model>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for (share, group) in rows {
            if let Some(group) = group {
                out.entry(SharesKey(share.project_id))
                    .or_default()
                    .push(group);
            }
        }
        Ok(out)
    }
}

impl Loader<ProjectAssetsKey> for Batch {
    type Value = Vec<asset::Model>;
    type Error = DbErr;

    async fn load(
        &self,
        keys: &[ProjectAssetsKey],
    ) -> Result<HashMap<ProjectAssetsKey, Vec<asset::Model>>, DbErr> {
        let rows = project_asset::Entity::find()
            .filter(project_asset::Column::ProjectId.is_in(keys.iter().map(|k| k.0)))
            .find_also_related(asset::Entity)
            .order_by_asc(project_asset::Column::AssetId)
            .all(self.0.db.conn())
            .await?;
        let mut out: HashMap<ProjectAssetsKey, Vec<asset::Model>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for (link, asset) in rows {
            if let Some(asset) = asset {
                out.entry(ProjectAssetsKey(link.project_id))
                    .or_default()
                    .push(asset);
            }
        }
        Ok(out)
    }
}

/// Assets by (md5, kind).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AssetKey(pub String, pub crate::domain::AssetKind);

impl Loader<AssetKey> for Batch {
    type Value = asset::Model;
    type Error = DbErr;

    async fn load(&self, keys: &[AssetKey]) -> Result<HashMap<AssetKey, asset::Model>, DbErr> {
        let rows = asset::Entity::find()
            .filter(asset::Column::Md5.is_in(keys.iter().map(|k| k.0.clone())))
            .all(self.0.db.conn())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|a| {
                let kind = crate::domain::AssetKind::from_db(&a.asset_type)?;
                Some((AssetKey(a.md5.clone(), kind), a))
            })
            .filter(|(k, _)| keys.contains(k))
            .collect())
    }
}
