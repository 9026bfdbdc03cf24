//! DataLoaders, created per request: every list of projects resolves owners, shares and
//! assets with one query per field, not one per row. Each loader only groups its keys and
//! hands them to a batched read in `service::reads`, which queries and applies the access
//! rule; keys carry the viewer wherever what they see depends on who asks. Errors are the
//! service's own (`Arc<AppError>`: a loader's error is shared by every key of its batch), so
//! their codes reach the client unchanged.
//!
//! A list resolver does not rely on the DataLoader's batch window (a timer that a starved
//! machine can split into several batches): it loads each selected relation for the whole
//! page itself, in one query, and leaves the answers in [`Prefetched`] for the rows' field
//! resolvers. The DataLoader remains for everything else.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

use async_graphql::dataloader::{DataLoader, Loader, NoCache};
use entity::{asset, group, project, user};

use crate::{
    domain::{AssetKind, Viewer},
    error::AppError,
    service::{Services, reads},
};

/// What every loader fails with.
pub type LoadError = Arc<AppError>;

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
) -> Result<(), LoadError>
where
    Batch: Loader<K, Value = V, Error = LoadError>,
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

/// A project by id, if `viewer` may read it (`Project.remixedFrom`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectKey {
    pub id: i64,
    pub viewer: Option<Viewer>,
}

/// The groups a project is shared with that `viewer` sees.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharesKey {
    pub project: i64,
    pub viewer: Option<Viewer>,
}

/// The assets a project references, by project id (whoever sees the project sees them).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectAssetsKey(pub i64);

/// Assets by (md5, kind).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AssetKey(pub String, pub AssetKind);

/// The first page (`first` + 1 rows, to tell whether there is more) of a project's remixes
/// that `viewer` can see.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemixesKey {
    pub project: i64,
    pub first: u64,
    pub viewer: Option<Viewer>,
}

/// The first page (`first` + 1 rows) of the projects shared with a group that `viewer` can
/// see.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupProjectsKey {
    pub group: i64,
    pub first: u64,
    pub viewer: Option<Viewer>,
}

/// Keys split by what their statement depends on besides the ids (the viewer, a page size):
/// in practice one group per request.
fn grouped<K, G: Hash + Eq>(keys: &[K], split: impl Fn(&K) -> (G, i64)) -> HashMap<G, Vec<i64>> {
    let mut groups: HashMap<G, Vec<i64>> = HashMap::new();
    for k in keys {
        let (group, id) = split(k);
        groups.entry(group).or_default().push(id);
    }
    groups
}

impl Loader<UserKey> for Batch {
    type Value = user::Model;
    type Error = LoadError;

    async fn load(&self, keys: &[UserKey]) -> Result<HashMap<UserKey, user::Model>, LoadError> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let found = reads::users(&self.0, &ids).await?;
        Ok(found.into_iter().map(|(id, u)| (UserKey(id), u)).collect())
    }
}

impl Loader<ProjectKey> for Batch {
    type Value = project::Model;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[ProjectKey],
    ) -> Result<HashMap<ProjectKey, project::Model>, LoadError> {
        let mut out = HashMap::new();
        for (viewer, ids) in grouped(keys, |k| (k.viewer, k.id)) {
            let found = reads::readable_projects(&self.0, viewer, &ids).await?;
            out.extend(
                found
                    .into_iter()
                    .map(|(id, p)| (ProjectKey { id, viewer }, p)),
            );
        }
        Ok(out)
    }
}

impl Loader<SharesKey> for Batch {
    type Value = Vec<group::Model>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[SharesKey],
    ) -> Result<HashMap<SharesKey, Vec<group::Model>>, LoadError> {
        let mut out = HashMap::new();
        for (viewer, ids) in grouped(keys, |k| (k.viewer, k.project)) {
            let found = reads::shares_seen(&self.0, viewer, &ids).await?;
            out.extend(
                found
                    .into_iter()
                    .map(|(project, groups)| (SharesKey { project, viewer }, groups)),
            );
        }
        Ok(out)
    }
}

impl Loader<ProjectAssetsKey> for Batch {
    type Value = Vec<asset::Model>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[ProjectAssetsKey],
    ) -> Result<HashMap<ProjectAssetsKey, Vec<asset::Model>>, LoadError> {
        let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let found = reads::assets_of(&self.0, &ids).await?;
        Ok(found
            .into_iter()
            .map(|(id, assets)| (ProjectAssetsKey(id), assets))
            .collect())
    }
}

impl Loader<AssetKey> for Batch {
    type Value = asset::Model;
    type Error = LoadError;

    async fn load(&self, keys: &[AssetKey]) -> Result<HashMap<AssetKey, asset::Model>, LoadError> {
        let wanted: Vec<(String, AssetKind)> = keys.iter().map(|k| (k.0.clone(), k.1)).collect();
        let found = reads::assets(&self.0, &wanted).await?;
        Ok(found
            .into_iter()
            .map(|((md5, kind), a)| (AssetKey(md5, kind), a))
            .collect())
    }
}

impl Loader<RemixesKey> for Batch {
    type Value = Vec<project::Model>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[RemixesKey],
    ) -> Result<HashMap<RemixesKey, Vec<project::Model>>, LoadError> {
        let mut out = HashMap::new();
        for ((viewer, first), sources) in grouped(keys, |k| ((k.viewer, k.first), k.project)) {
            let mut found = reads::first_remixes(&self.0, viewer, &sources, first + 1).await?;
            for project in sources {
                let rows = found.remove(&project).unwrap_or_default();
                let key = RemixesKey {
                    project,
                    first,
                    viewer,
                };
                out.insert(key, rows);
            }
        }
        Ok(out)
    }
}

impl Loader<GroupProjectsKey> for Batch {
    type Value = Vec<project::Model>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[GroupProjectsKey],
    ) -> Result<HashMap<GroupProjectsKey, Vec<project::Model>>, LoadError> {
        let mut out = HashMap::new();
        for ((viewer, first), ids) in grouped(keys, |k| ((k.viewer, k.first), k.group)) {
            let mut found = reads::first_shared(&self.0, viewer, &ids, first + 1).await?;
            for group in ids {
                let rows = found.remove(&group).unwrap_or_default();
                let key = GroupProjectsKey {
                    group,
                    first,
                    viewer,
                };
                out.insert(key, rows);
            }
        }
        Ok(out)
    }
}

/// One relation of one row: from the page's prefetch when the listing loaded it, else through
/// the request's dataloader.
pub async fn load<K, V>(ctx: &async_graphql::Context<'_>, key: K) -> Result<Option<V>, LoadError>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
    Batch: Loader<K, Value = V, Error = LoadError>,
    V: Send + Sync + Clone + 'static,
{
    if let Some(answer) = super::prefetched(ctx)?.get::<K, V>(&key) {
        return Ok(answer);
    }
    super::loaders(ctx)?.load_one(key).await
}
