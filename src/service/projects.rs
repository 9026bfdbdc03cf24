//! Projects: create, compare-and-set update, locked delete, visibility-checked reads and
//! keyset pagination. Content is staged as a blob before the transaction and published
//! after its commit (see `storage`).

use std::{collections::BTreeMap, sync::Arc};

use entity::{asset, project, project_asset};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    domain::{AssetRef, ProjectContent, ProjectId, Title, UserId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services, access,
        history::{self, Via},
        now,
        write::Effect,
    },
};

/// Largest page a client may ask for.
pub const MAX_PAGE: u64 = 100;
pub const DEFAULT_PAGE: u64 = 20;

/// The page size a client asked for: `DEFAULT_PAGE` when absent, at most `MAX_PAGE`.
pub fn page_size(first: Option<i32>) -> AppResult<u64> {
    match first {
        None => Ok(DEFAULT_PAGE),
        Some(n) if n < 0 => Err(AppError::bad_input("first", "first must not be negative")),
        Some(n) => Ok(Ord::min(n as u64, MAX_PAGE)),
    }
}

/// Which projects a listing wants (all filters combine with AND, inside what the viewer sees).
#[derive(Clone, Debug, Default)]
pub struct ProjectFilter {
    pub mine: bool,
    pub owner: Option<UserId>,
    pub shared_with_group: Option<crate::domain::GroupId>,
    /// Copies of this project (`Project.remixes`).
    pub remixed_from: Option<ProjectId>,
}

/// One page of a keyset-paginated listing, ordered by id.
#[derive(Debug)]
pub struct ProjectPage {
    pub rows: Vec<project::Model>,
    pub has_next: bool,
}

/// Creates a project owned by the viewer.
pub async fn create(
    svc: &Services,
    viewer: Viewer,
    title: Title,
    content: ProjectContent,
    via: Via,
    effect: Option<&Effect>,
) -> AppResult<project::Model> {
    let staged = stage_content(svc, &content).await?;
    let key = staged.key.clone();
    let size = staged.size as i64;
    let refs = Arc::new(content.asset_refs);
    let title = title.into_inner();
    let project = super::write::commit(svc, vec![staged], effect, |txn| {
        let (refs, key, title) = (refs.clone(), key.clone(), title.clone());
        Box::pin(async move {
            let asset_ids = resolve_assets(txn, &refs).await?;
            let project = new_row(viewer, title, key, size, None).insert(txn).await?;
            link_assets(txn, ProjectId(project.id), &asset_ids).await?;
            history::record(txn, &project, Some(viewer.id), via).await?;
            Ok(project)
        })
    })
    .await?;
    tracing::info!(project.id = project.id, user.id = %viewer.id, "project_created");
    Ok(project)
}

/// A new project of `viewer`'s at version 1 (created, or copied from `remixed_from`).
pub(super) fn new_row(
    viewer: Viewer,
    title: String,
    content_key: String,
    content_size: i64,
    remixed_from: Option<i64>,
) -> project::ActiveModel {
    let at = now();
    project::ActiveModel {
        owner_id: Set(viewer.id.0),
        title: Set(title),
        content_key: Set(content_key),
        content_size: Set(content_size),
        remixed_from: Set(remixed_from),
        version: Set(1),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    }
}

/// Changes a project's title and/or content if its version is still `expected`
/// (compare-and-set).
pub async fn update(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
    title: Option<Title>,
    content: Option<ProjectContent>,
    effect: Option<&Effect>,
) -> AppResult<project::Model> {
    if title.is_none() && content.is_none() {
        return Err(AppError::BadUserInput {
            message: "nothing to update: give a title, content or both".to_owned(),
            field: None,
        });
    }
    let staged = match &content {
        Some(c) => Some(stage_content(svc, c).await?),
        None => None,
    };
    let new_content = staged.as_ref().map(|s| (s.key.clone(), s.size as i64));
    let refs = content.map(|c| Arc::new(c.asset_refs));
    let title = title.map(Title::into_inner);
    let started = std::time::Instant::now();
    let written = match (&title, &refs) {
        // A rename on PostgreSQL is one statement that commits by itself, its version row
        // included (an idempotent one needs a transaction for its effect).
        (Some(title), None) if effect.is_none() && svc.db.backend() == DbBackend::Postgres => {
            svc.db
                .write_one(|conn| {
                    Box::pin(rename_recorded(conn, viewer, id, expected, title.clone()))
                })
                .await
        }
        // Every change is a version: the change and its version row, in one transaction.
        _ => {
            super::write::commit(svc, staged.into_iter().collect(), effect, |txn| {
                let (refs, title, new_content) = (refs.clone(), title.clone(), new_content.clone());
                Box::pin(async move {
                    let updated =
                        compare_and_set(txn, viewer, id, expected, title, new_content).await?;
                    if let Some(refs) = refs {
                        // Inside the transaction: MISSING_ASSETS rolls the version bump back.
                        relink_assets(txn, id, &refs).await?;
                    }
                    history::record(txn, &updated, Some(viewer.id), Via::Graphql).await?;
                    Ok(updated)
                })
            })
            .await
        }
    };
    let project = paced(svc, id, started, written)?;
    svc.project_changes.changed(project.id);
    tracing::info!(
        project.id = project.id,
        project.version = project.version,
        "project_updated"
    );
    Ok(project)
}

/// A compare-and-set outcome, with the pacer told: losers of a race on one row are spread
/// out rather than sent back as a herd.
fn paced(
    svc: &Services,
    id: ProjectId,
    started: std::time::Instant,
    written: AppResult<project::Model>,
) -> AppResult<project::Model> {
    match written {
        Ok(project) => {
            svc.pacer.record_update(started.elapsed());
            Ok(project)
        }
        Err(AppError::VersionConflict {
            expected, current, ..
        }) => Err(AppError::VersionConflict {
            expected,
            current,
            retry_after: Some(svc.pacer.after_conflict(id.0)),
        }),
        Err(e) => Err(e),
    }
}

/// Makes stored content current again as a new version (a restore, a conflicted save kept):
/// compare-and-set against `expected`, the asset links re-pointed, the version recorded with
/// `via`, and `resolved` (a conflict id) marked with the version it became. The content's blob
/// is already stored and referenced (by a version or a conflict), so nothing is staged.
#[allow(clippy::too_many_arguments)]
pub(super) async fn make_current(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
    title: Option<Title>,
    content: (String, i64),
    refs: Arc<Vec<AssetRef>>,
    via: Via,
    effect: Option<&Effect>,
    resolved: Option<i64>,
) -> AppResult<project::Model> {
    let title = title.map(Title::into_inner);
    let started = std::time::Instant::now();
    let written = super::write::commit(svc, Vec::new(), effect, |txn| {
        let (refs, title, content) = (refs.clone(), title.clone(), content.clone());
        Box::pin(async move {
            let updated = compare_and_set(txn, viewer, id, expected, title, Some(content)).await?;
            relink_assets(txn, id, &refs).await?;
            history::record(txn, &updated, Some(viewer.id), via).await?;
            if let Some(conflict) = resolved {
                history::mark_resolved(txn, conflict, updated.version).await?;
            }
            Ok(updated)
        })
    })
    .await;
    let project = paced(svc, id, started, written)?;
    svc.project_changes.changed(project.id);
    Ok(project)
}

/// Deletes a project (and, by cascade, its shares and asset links) after locking its row.
/// With `expected`, only if the version still matches.
pub async fn delete(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    expected: Option<i32>,
    effect: Option<&Effect>,
) -> AppResult<ProjectId> {
    super::write::commit(svc, Vec::new(), effect, |txn| {
        Box::pin(async move {
            // FOR UPDATE: a concurrent share or copy of this project waits for us.
            let current = project::Entity::find_by_id(id.0)
                .lock_exclusive()
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("project"))?;
            access::project(txn, Some(viewer), &current)
                .await?
                .require_write("delete")?;
            if let Some(expected) = expected
                && expected != current.version
            {
                return Err(AppError::VersionConflict {
                    expected,
                    current: current.version,
                    retry_after: None,
                });
            }
            project::Entity::delete_by_id(id.0).exec(txn).await?;
            Ok(())
        })
    })
    .await?;
    // The content blob stays: content-addressed blobs may be shared, `atelier gc` collects it.
    tracing::info!(project.id = %id, "project_deleted");
    Ok(id)
}

/// The project if the viewer may see it.
pub async fn get(
    svc: &Services,
    viewer: Option<Viewer>,
    id: ProjectId,
) -> AppResult<Option<project::Model>> {
    if viewer.is_none() {
        return Ok(None);
    }
    // One statement may serve several viewers' reads: the rule is applied per reader, here.
    match svc.project_reads.get(&svc.db, id.0).await? {
        Some(p) if access::project(svc.db.conn(), viewer, &p).await?.can_read() => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// Lists what the viewer can see, by ascending id after the cursor id. Ids only grow, so a
/// row inserted during paging lands after the cursor: no duplicates, no gaps.
pub async fn list(
    svc: &Services,
    viewer: Option<Viewer>,
    first: u64,
    after: Option<ProjectId>,
    filter: ProjectFilter,
) -> AppResult<ProjectPage> {
    let Some(viewer) = viewer else {
        return Ok(ProjectPage {
            rows: Vec::new(),
            has_next: false,
        });
    };
    let mut query = project::Entity::find()
        .filter(access::readable_projects(viewer))
        .order_by_asc(project::Column::Id);
    if filter.mine {
        query = query.filter(project::Column::OwnerId.eq(viewer.id.0));
    }
    if let Some(owner) = filter.owner {
        query = query.filter(project::Column::OwnerId.eq(owner.0));
    }
    if let Some(group) = filter.shared_with_group {
        query = query.filter(access::shared_with_group_seen_by(viewer, group.0));
    }
    if let Some(source) = filter.remixed_from {
        query = query.filter(super::sharing::remixes_of(source));
    }
    if let Some(after) = after {
        query = query.filter(project::Column::Id.gt(after.0));
    }
    let mut rows = query.limit(first + 1).all(svc.db.conn()).await?;
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok(ProjectPage { rows, has_next })
}

/// The project's current content, parsed.
///
/// `project` was read a moment ago; if the row has been updated since, `atelier gc` may
/// already have collected the blob it named. Then the row is read again and its current
/// content answered (a few times at most, for a row that keeps changing); only a row that
/// still names the missing blob is a broken invariant (I2), and a row gone is NOT_FOUND.
pub async fn content(svc: &Services, project: &project::Model) -> AppResult<serde_json::Value> {
    /// Re-reads after a missing blob; each one means the row changed (and its old blob was
    /// collected) while we read.
    const MAX_REREADS: usize = 3;
    // Tests: `service::project_content_read=1*return(1500)` holds the next content read after
    // its row was read, so that the row can be superseded and its old blob collected meanwhile.
    crate::failpoints::hold("service::project_content_read").await;
    let mut key = project.content_key.clone();
    let mut rereads = 0;
    let bytes = loop {
        match svc.blobs.read_content(&key).await {
            Ok(bytes) => break bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rereads < MAX_REREADS => {
                rereads += 1;
                // From the database itself, not a coalesced or cached read.
                let current = project::Entity::find_by_id(project.id)
                    .one(svc.db.conn())
                    .await?
                    .ok_or(AppError::NotFound("project"))?;
                if current.content_key == key {
                    return Err(AppError::internal(format!(
                        "content blob {key} of project {} is missing",
                        project.id
                    )));
                }
                tracing::info!(
                    project.id = project.id,
                    blob.key = %key,
                    project.version = current.version,
                    "project_content_superseded_while_read"
                );
                key = current.content_key;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AppError::Unavailable(format!(
                    "project {} changed {MAX_REREADS} times while it was read; retry",
                    project.id
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        AppError::internal(format!(
            "content of project {} does not parse: {e}",
            project.id
        ))
    })
}

/// Bumps the version of a project the viewer may write if it is still at `expected`: one
/// statement on the happy path; only a miss reads the row to say why (absent, not the
/// viewer's, or a newer version).
async fn compare_and_set<C: ConnectionTrait>(
    conn: &C,
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
    title: Option<String>,
    new_content: Option<(String, i64)>,
) -> AppResult<project::Model> {
    let update = compare_and_set_statement(viewer, id, expected, title, new_content);
    match update.exec_with_returning(conn).await?.into_iter().next() {
        Some(updated) => Ok(updated),
        None => Err(why_not_written(conn, viewer, id, expected).await),
    }
}

/// The compare-and-set UPDATE of a project row: the version bumped, only if it is still
/// `expected` and the viewer may write the project.
fn compare_and_set_statement(
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
    title: Option<String>,
    new_content: Option<(String, i64)>,
) -> sea_orm::UpdateMany<project::Entity> {
    let mut update = project::Entity::update_many()
        .col_expr(
            project::Column::Version,
            Expr::col(project::Column::Version).add(1),
        )
        .col_expr(project::Column::UpdatedAt, Expr::value(now()))
        .filter(project::Column::Id.eq(id.0))
        .filter(project::Column::Version.eq(expected));
    update = update.filter(access::writable_projects(viewer));
    if let Some(title) = title {
        update = update.col_expr(project::Column::Title, Expr::value(title));
    }
    if let Some((key, size)) = new_content {
        update = update
            .col_expr(project::Column::ContentKey, Expr::value(key))
            .col_expr(project::Column::ContentSize, Expr::value(size));
    }
    update
}

/// PostgreSQL: a rename as one statement that commits by itself: the compare-and-set UPDATE,
/// the version row it becomes, and the change notification, in one data-modifying CTE (no
/// BEGIN/COMMIT round trips, and the version cannot be left out: it is the same statement).
/// The notification is delivered at the statement's commit, like one sent in a transaction.
async fn rename_recorded(
    conn: &sea_orm::DatabaseConnection,
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
    title: String,
) -> AppResult<project::Model> {
    use sea_orm::{FromQueryResult, QueryTrait, Statement};
    let mut update =
        compare_and_set_statement(viewer, id, expected, Some(title), None).into_query();
    update.returning_all();
    let built = DbBackend::Postgres.build(&update);
    let mut values = built.values.map(|v| v.0).unwrap_or_default();
    values.push(viewer.id.0.into());
    values.push(Via::Graphql.as_str().into());
    values.push(super::changes::CHANNEL.into());
    let (saver, via, channel) = (values.len() - 2, values.len() - 1, values.len());
    let sql = format!(
        "WITH u AS ({update}), \
         v AS (INSERT INTO project_versions \
               (project_id, version, title, content_key, content_size, saved_by, saved_at, via) \
               SELECT id, version, title, content_key, content_size, ${saver}, updated_at, ${via} FROM u) \
         SELECT u.* FROM u CROSS JOIN LATERAL pg_notify(${channel}, u.id::text) AS n",
        update = built.sql,
    );
    let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
    match project::Model::find_by_statement(stmt).one(conn).await? {
        Some(updated) => Ok(updated),
        None => Err(why_not_written(conn, viewer, id, expected).await),
    }
}

/// Why a compare-and-set update matched no row, in the order a client needs it: invisible
/// (NOT_FOUND), visible but not the viewer's to change (FORBIDDEN), or a newer version.
async fn why_not_written<C: ConnectionTrait>(
    conn: &C,
    viewer: Viewer,
    id: ProjectId,
    expected: i32,
) -> AppError {
    let current = match project::Entity::find_by_id(id.0).one(conn).await {
        Ok(Some(row)) => row,
        Ok(None) => return AppError::NotFound("project"),
        Err(e) => return e.into(),
    };
    match access::project(conn, Some(viewer), &current).await {
        Err(e) => e,
        Ok(a) => match a.require_write("change") {
            Err(e) => e,
            Ok(()) => AppError::VersionConflict {
                expected,
                current: current.version,
                retry_after: None,
            },
        },
    }
}

/// Ids of the stored assets `refs` names, or MISSING_ASSETS listing (as written) those that
/// are not stored, or not in the format their extension names: every reference of a saved
/// project must be servable at `/assets/<md5ext>`.
pub(super) async fn resolve_assets<C: ConnectionTrait>(
    conn: &C,
    refs: &[AssetRef],
) -> AppResult<Vec<i64>> {
    let (mut ids, missing) = lookup_assets(conn, refs).await?;
    if !missing.is_empty() {
        return Err(AppError::MissingAssets(
            missing.into_iter().map(|r| r.md5ext.clone()).collect(),
        ));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The references of `refs` that [`resolve_assets`] would report missing.
pub(super) async fn missing_refs<'r, C: ConnectionTrait>(
    conn: &C,
    refs: &'r [AssetRef],
) -> AppResult<Vec<&'r AssetRef>> {
    Ok(lookup_assets(conn, refs).await?.1)
}

/// (ids of the stored assets `refs` names, the references not stored in their format).
async fn lookup_assets<'r, C: ConnectionTrait>(
    conn: &C,
    refs: &'r [AssetRef],
) -> AppResult<(Vec<i64>, Vec<&'r AssetRef>)> {
    if refs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut found: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    // Bounded IN-lists: a project with thousands of costumes must not build one huge query.
    for chunk in refs.chunks(200) {
        let mut any = Condition::any();
        for r in chunk {
            any = any.add(
                Condition::all()
                    .add(asset::Column::Md5.eq(r.md5.as_str()))
                    .add(asset::Column::AssetType.eq(r.kind.as_str())),
            );
        }
        let rows: Vec<(i64, String, String, String)> = asset::Entity::find()
            .select_only()
            .column(asset::Column::Id)
            .column(asset::Column::Md5)
            .column(asset::Column::AssetType)
            .column(asset::Column::DataFormat)
            .filter(any)
            .into_tuple()
            .all(conn)
            .await?;
        for (id, md5, kind, data_format) in rows {
            found.insert((md5, kind), (id, data_format));
        }
    }
    let mut missing = Vec::new();
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        match found.get(&(r.md5.as_str().to_owned(), r.kind.as_str().to_owned())) {
            Some((id, data_format)) if data_format == r.format.extension() => ids.push(*id),
            _ => missing.push(r),
        }
    }
    Ok((ids, missing))
}

/// Stages a content write's bytes, after pulling the assets it names that are not stored
/// from the upstream asset host, if one is configured (outside any transaction: a fetch may
/// take seconds). Every content-writing path goes through here (createProject,
/// updateProject, the editor's save, new project and copy), so each one's missing-asset
/// check inside its transaction sees what the upstream delivered.
pub(super) async fn stage_content(
    svc: &Services,
    content: &ProjectContent,
) -> AppResult<crate::storage::StagedBlob> {
    super::upstream::pull_missing(svc, &content.asset_refs).await;
    Ok(svc.blobs.stage_content(content.bytes.clone()).await?)
}

/// Points `project`'s asset links at exactly the assets `refs` names (MISSING_ASSETS when one
/// is not stored): the part of every content change that runs inside its transaction.
pub(super) async fn relink_assets<C: ConnectionTrait>(
    conn: &C,
    project: ProjectId,
    refs: &[AssetRef],
) -> AppResult<()> {
    let asset_ids = resolve_assets(conn, refs).await?;
    project_asset::Entity::delete_many()
        .filter(project_asset::Column::ProjectId.eq(project.0))
        .exec(conn)
        .await?;
    link_assets(conn, project, &asset_ids).await
}

pub(super) async fn link_assets<C: ConnectionTrait>(
    conn: &C,
    project: ProjectId,
    asset_ids: &[i64],
) -> AppResult<()> {
    for chunk in asset_ids.chunks(500) {
        project_asset::Entity::insert_many(chunk.iter().map(|asset_id| {
            project_asset::ActiveModel {
                project_id: Set(project.0),
                asset_id: Set(*asset_id),
            }
        }))
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}
