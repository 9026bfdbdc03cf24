//! Batched reads behind the GraphQL layer's dataloaders: each answers many keys in one
//! statement and, where visibility depends on who asks, takes the viewer and applies the rule
//! of [`access`] in SQL. The loaders only group keys and hand the rows back; they never query
//! nor filter themselves.
//!
//! Test hook: `FAILPOINTS=service::batched_read=1*return(<ms>)` pauses the next batched read
//! before it asks the pool for a connection (see `failpoints`).
//!
//! Not here: the coalesced `project(id)` reads (`coalesce`), where one statement serves many
//! viewers and the access module's predicate decides per reader.

use std::collections::HashMap;

use entity::{asset, group, project, project_asset, project_share, user};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait,
    sea_query::{Asterisk, Expr, ExprTrait, Order, Query},
};

use crate::{
    domain::{AssetKind, Viewer},
    error::AppResult,
    service::{Services, access},
};

/// Where a test pauses a batched read (see the module documentation).
const HOLD: &str = "service::batched_read";

/// Users by id. A user is seen by whoever sees something of theirs: no rule of its own.
pub async fn users(svc: &Services, ids: &[i64]) -> AppResult<HashMap<i64, user::Model>> {
    crate::failpoints::hold(HOLD).await;
    let rows = user::Entity::find()
        .filter(user::Column::Id.is_in(ids.iter().copied()))
        .all(svc.db.conn())
        .await?;
    Ok(rows.into_iter().map(|u| (u.id, u)).collect())
}

/// The projects among `ids` that `viewer` may read (`Project.remixedFrom`): the rest, and
/// everything for an anonymous viewer, are absent from the answer.
pub async fn readable_projects(
    svc: &Services,
    viewer: Option<Viewer>,
    ids: &[i64],
) -> AppResult<HashMap<i64, project::Model>> {
    crate::failpoints::hold(HOLD).await;
    let Some(viewer) = viewer else {
        return Ok(HashMap::new());
    };
    let rows = project::Entity::find()
        .filter(project::Column::Id.is_in(ids.iter().copied()))
        .filter(access::readable_projects(viewer))
        .all(svc.db.conn())
        .await?;
    Ok(rows.into_iter().map(|p| (p.id, p)).collect())
}

/// The groups each of `projects` is shared with that `viewer` sees (`Project.sharedWith`, the
/// rule of [`access::shares_seen_by`]), by group id; every project has an entry.
pub async fn shares_seen(
    svc: &Services,
    viewer: Option<Viewer>,
    projects: &[i64],
) -> AppResult<HashMap<i64, Vec<group::Model>>> {
    crate::failpoints::hold(HOLD).await;
    let mut out: HashMap<i64, Vec<group::Model>> =
        projects.iter().map(|p| (*p, Vec::new())).collect();
    let Some(viewer) = viewer else {
        return Ok(out);
    };
    let rows = project_share::Entity::find()
        .join(
            JoinType::InnerJoin,
            project_share::Entity::belongs_to(project::Entity)
                .from(project_share::Column::ProjectId)
                .to(project::Column::Id)
                .into(),
        )
        .filter(project_share::Column::ProjectId.is_in(projects.iter().copied()))
        .filter(access::shares_seen_by(viewer))
        .find_also_related(group::Entity)
        .order_by_asc(project_share::Column::GroupId)
        .all(svc.db.conn())
        .await?;
    group_by_project(&mut out, rows, |share| share.project_id);
    Ok(out)
}

/// The assets each of `projects` references, by asset id; every project has an entry. Whoever
/// sees a project sees its assets.
pub async fn assets_of(
    svc: &Services,
    projects: &[i64],
) -> AppResult<HashMap<i64, Vec<asset::Model>>> {
    crate::failpoints::hold(HOLD).await;
    let rows = project_asset::Entity::find()
        .filter(project_asset::Column::ProjectId.is_in(projects.iter().copied()))
        .find_also_related(asset::Entity)
        .order_by_asc(project_asset::Column::AssetId)
        .all(svc.db.conn())
        .await?;
    let mut out: HashMap<i64, Vec<asset::Model>> =
        projects.iter().map(|p| (*p, Vec::new())).collect();
    group_by_project(&mut out, rows, |link| link.project_id);
    Ok(out)
}

/// Stored assets by (md5, kind); the caller checked `access::require_asset_reader`.
pub async fn assets(
    svc: &Services,
    keys: &[(String, AssetKind)],
) -> AppResult<HashMap<(String, AssetKind), asset::Model>> {
    crate::failpoints::hold(HOLD).await;
    let rows = asset::Entity::find()
        .filter(asset::Column::Md5.is_in(keys.iter().map(|k| k.0.clone())))
        .all(svc.db.conn())
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|a| Some(((a.md5.clone(), AssetKind::from_db(&a.asset_type)?), a)))
        .filter(|(k, _)| keys.contains(k))
        .collect())
}

/// The first `first` copies the viewer can see of each of `sources`, oldest first, in one
/// statement for all of them (a page of projects asking for their remixes costs one query).
pub async fn first_remixes(
    svc: &Services,
    viewer: Option<Viewer>,
    sources: &[i64],
    first: u64,
) -> AppResult<HashMap<i64, Vec<project::Model>>> {
    crate::failpoints::hold(HOLD).await;
    let mut out: HashMap<i64, Vec<project::Model>> = HashMap::new();
    let Some(viewer) = viewer else {
        return Ok(out);
    };
    let ranked = project::Entity::find()
        .filter(access::readable_projects(viewer))
        .filter(project::Column::RemixedFrom.is_in(sources.iter().copied()))
        .column_as(
            Expr::cust("ROW_NUMBER() OVER (PARTITION BY remixed_from ORDER BY id)"),
            "remix_rank",
        )
        .into_query();
    let page = Query::select()
        .column(Asterisk)
        .from_subquery(ranked, "ranked")
        .and_where(Expr::col("remix_rank").lte(first as i64))
        .order_by("id", Order::Asc)
        .to_owned();
    let statement = svc.db.backend().build(&page);
    for row in project::Model::find_by_statement(statement)
        .all(svc.db.conn())
        .await?
    {
        if let Some(source) = row.remixed_from {
            out.entry(source).or_default().push(row);
        }
    }
    Ok(out)
}

/// A project and the group it is shared with, for [`first_shared`].
#[derive(Debug, FromQueryResult)]
struct SharedRow {
    share_group: i64,
    #[sea_orm(nested)]
    project: project::Model,
}

/// The first `first` projects shared with each of `groups` that the viewer can see (and whose
/// share with that group the viewer sees), oldest first, in one statement for all of them
/// (`Group.projects` on a list of groups).
pub async fn first_shared(
    svc: &Services,
    viewer: Option<Viewer>,
    groups: &[i64],
    first: u64,
) -> AppResult<HashMap<i64, Vec<project::Model>>> {
    crate::failpoints::hold(HOLD).await;
    let mut out: HashMap<i64, Vec<project::Model>> = HashMap::new();
    let Some(viewer) = viewer else {
        return Ok(out);
    };
    let ranked = project::Entity::find()
        .join_rev(
            JoinType::InnerJoin,
            project_share::Entity::belongs_to(project::Entity)
                .from(project_share::Column::ProjectId)
                .to(project::Column::Id)
                .into(),
        )
        .filter(access::readable_projects(viewer))
        .filter(access::shares_seen_by(viewer))
        .filter(project_share::Column::GroupId.is_in(groups.iter().copied()))
        .column_as(project_share::Column::GroupId, "share_group")
        .column_as(
            Expr::cust(
                "ROW_NUMBER() OVER (PARTITION BY project_shares.group_id ORDER BY projects.id)",
            ),
            "share_rank",
        )
        .into_query();
    let page = Query::select()
        .column(Asterisk)
        .from_subquery(ranked, "ranked")
        .and_where(Expr::col("share_rank").lte(first as i64))
        .order_by("id", Order::Asc)
        .to_owned();
    let statement = svc.db.backend().build(&page);
    for row in SharedRow::find_by_statement(statement)
        .all(svc.db.conn())
        .await?
    {
        out.entry(row.share_group).or_default().push(row.project);
    }
    Ok(out)
}

/// Files the related rows of a join under the project each link row names (a link whose
/// related row is gone is skipped), in the order the rows came.
fn group_by_project<L, R>(
    out: &mut HashMap<i64, Vec<R>>,
    rows: Vec<(L, Option<R>)>,
    project_of: impl Fn(&L) -> i64,
) {
    for (link, related) in rows {
        if let Some(related) = related {
            out.entry(project_of(&link)).or_default().push(related);
        }
    }
}
