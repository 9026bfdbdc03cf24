//! DataLoaders, created per request: every list of projects resolves owners, shares and
//! assets with one query per field, not one per row.
//!
//! A list resolver does not rely on the DataLoader's batch window (a timer that a starved
//! machine can split into several batches): it loads each selected relation for the whole
//! page itself, in one query, and leaves the answers in [`Prefetched`] for the rows' field
//! resolvers. The DataLoader remains for everything else.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, PoisonError},
};

use async_graphql::dataloader::{DataLoader, Loader, NoCache};
use entity::{asset, group, group_member, project, project_asset, project_share, user};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::service::Services;

/// The batch loader of one request; one `DataLoader` serves every key type below.
pub type Loaders = DataLoader<Batch, NoCache>;

/// Relations loaded ahead for a page of rows, by key type. Fresh for every request and filled
/// only by query resolvers, so a mutation never reads a value from before its own write.
#[derive(Default)]
pub struct Prefetched(Mutex<HashMap<TypeId, Box<dyn Any + Send>>>);

/// Answers for one key type; `None` records that the key was looked up and has no row.
type Answers<K, V> = HashMap<K, Option<V>>;

impl Prefetched {
    /// `Some(answer)` if `key` was prefetched.
    pub fn get<K, V>(&self, key: &K) -> Option<Option<V>>
    where
        K: Hash + Eq + Send + 'static,
        V: Clone + Send + 'static,
    {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&TypeId::of::<Answers<K, V>>())?
            .downcast_ref::<Answers<K, V>>()?
            .get(key)
            .cloned()
    }

    fn put<K, V>(&self, keys: Vec<K>, mut found: HashMap<K, V>)
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let answers = map
            .entry(TypeId::of::<Answers<K, V>>())
            .or_insert_with(|| Box::new(Answers::<K, V>::new()))
            .downcast_mut::<Answers<K, V>>()
            .expect("entries are keyed by their own type");
        for key in keys {
            let value = found.remove(&key);
            answers.insert(key, value);
        }
    }
}

/// Loads `keys` (duplicates allowed) in one query and keeps the answers in `prefetched`.
pub async fn prefetch<K, V>(
    batch: &Batch,
    prefetched: &Prefetched,
    keys: impl IntoIterator<Item = K>,
) -> Result<(), DbErr>
where
    Batch: Loader<K, Value = V, Error = DbErr>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + Clone + 'static,
{
    let mut keys: Vec<K> = keys.into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    if keys.is_empty() {
        return Ok(());
    }
    let found = batch.load(&keys).await?;
    prefetched.put(keys, found);
    Ok(())
}

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
/// The ids of the groups a user belongs to, by user id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberOfKey(pub i64);
/// The assets a project references, by project id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectAssetsKey(pub i64);

/// The first page (`first` + 1 rows, to tell whether there is more) of a project's remixes
/// that `viewer` can see.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemixesKey {
    pub project: i64,
    pub first: u64,
    pub viewer: Option<crate::domain::Viewer>,
}

impl Loader<RemixesKey> for Batch {
    type Value = Vec<project::Model>;
    type Error = DbErr;

    async fn load(
        &self,
        keys: &[RemixesKey],
    ) -> Result<HashMap<RemixesKey, Vec<project::Model>>, DbErr> {
        // One statement per (viewer, page size): in practice one for the whole request.
        let mut groups: HashMap<(Option<crate::domain::Viewer>, u64), Vec<i64>> = HashMap::new();
        for k in keys {
            groups
                .entry((k.viewer, k.first))
                .or_default()
                .push(k.project);
        }
        let mut out = HashMap::new();
        for ((viewer, first), sources) in groups {
            let mut found =
                crate::service::sharing::first_remixes(&self.0, viewer, &sources, first + 1)
                    .await
                    .map_err(|e| DbErr::Custom(e.to_string()))?;
            for project in sources {
                let rows = found.remove(&project).unwrap_or_default();
                out.insert(
                    RemixesKey {
                        project,
                        first,
                        viewer,
                    },
                    rows,
                );
            }
        }
        Ok(out)
    }
}

/// The first page (`first` + 1 rows) of the projects shared with a group that `viewer` can
/// see.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupProjectsKey {
    pub group: i64,
    pub first: u64,
    pub viewer: Option<crate::domain::Viewer>,
}

impl Loader<GroupProjectsKey> for Batch {
    type Value = Vec<project::Model>;
    type Error = DbErr;

    async fn load(
        &self,
        keys: &[GroupProjectsKey],
    ) -> Result<HashMap<GroupProjectsKey, Vec<project::Model>>, DbErr> {
        let mut groups: HashMap<(Option<crate::domain::Viewer>, u64), Vec<i64>> = HashMap::new();
        for k in keys {
            groups.entry((k.viewer, k.first)).or_default().push(k.group);
        }
        let mut out = HashMap::new();
        for ((viewer, first), ids) in groups {
            let mut found = crate::service::sharing::first_shared(&self.0, viewer, &ids, first + 1)
                .await
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            for group in ids {
                let rows = found.remove(&group).unwrap_or_default();
                out.insert(
                    GroupProjectsKey {
                        group,
                        first,
                        viewer,
                    },
                    rows,
                );
            }
        }
        Ok(out)
    }
}

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

impl Loader<MemberOfKey> for Batch {
    type Value = Vec<i64>;
    type Error = DbErr;

    async fn load(&self, keys: &[MemberOfKey]) -> Result<HashMap<MemberOfKey, Vec<i64>>, DbErr> {
        let rows = group_member::Entity::find()
            .filter(group_member::Column::UserId.is_in(keys.iter().map(|k| k.0)))
            .all(self.0.db.conn())
            .await?;
        let mut out: HashMap<MemberOfKey, Vec<i64>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for m in rows {
            out.entry(MemberOfKey(m.user_id))
                .or_default()
                .push(m.group_id);
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

/// One relation of one row: from the page's prefetch when the listing loaded it, else through
/// the request's dataloader.
pub async fn load<K, V>(
    ctx: &async_graphql::Context<'_>,
    key: K,
) -> crate::error::AppResult<Option<V>>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
    Batch: Loader<K, Value = V, Error = DbErr>,
    V: Send + Sync + Clone + 'static,
{
    if let Some(answer) = super::prefetched(ctx)?.get::<K, V>(&key) {
        return Ok(answer);
    }
    Ok(super::loaders(ctx)?.load_one(key).await?)
}
