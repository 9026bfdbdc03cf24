//! Sharing projects with groups, and copying ("remixing") what one may read. Each locks the
//! project row first (PostgreSQL `FOR UPDATE` / `FOR SHARE`; SQLite: the write transaction's
//! lock), so a share, a copy and a delete of one project happen one after another: a share row
//! or a copy never points at a deleted project, and a copy takes title, content and asset
//! links from one single version.

use entity::{project, project_asset, project_share};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect,
};

use crate::{
    domain::{GroupId, ProjectId, Title, Viewer},
    error::{AppError, AppResult},
    service::{Services, access, now, write::Effect},
};

/// Largest number of groups one share or unshare may name.
pub const MAX_GROUPS: usize = 100;

/// Most groups one project may be shared with at once (`Project.sharedWith` is a list without
/// pages; its cost in a query's complexity is this many rows).
pub const MAX_SHARES: u64 = 50;

/// What [`change`] does to a project's shares.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// Share with the groups: all or nothing, sharing twice adds nothing.
    Share,
    /// Stop sharing with them; unsharing what is not shared is not an error.
    Unshare,
}

/// Shares a project with groups, or stops sharing it: the owner (or an admin), and every
/// group must exist and, for a share by anyone but an admin, count the caller as a member
/// (the rules are `access::require_share_with` / `require_unshare_from`). Does not change the
/// project's version.
pub async fn change(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    groups: Vec<GroupId>,
    effect: Option<&Effect>,
    change: Change,
) -> AppResult<project::Model> {
    let groups = checked(groups)?;
    let project = super::write::commit(svc, Vec::new(), effect, |txn| {
        let groups = groups.clone();
        Box::pin(async move {
            let action = match change {
                Change::Share => "share",
                Change::Unshare => "unshare",
            };
            let project = locked_for_change(txn, viewer, id, action).await?;
            for g in &groups {
                match change {
                    Change::Share => access::require_share_with(txn, viewer, g.0).await?,
                    Change::Unshare => access::require_unshare_from(txn, g.0).await?,
                }
            }
            match change {
                Change::Share => {
                    let at = now();
                    project_share::Entity::insert_many(groups.iter().map(|g| {
                        project_share::ActiveModel {
                            project_id: Set(id.0),
                            group_id: Set(g.0),
                            shared_by: Set(viewer.id.0),
                            created_at: Set(at),
                        }
                    }))
                    .on_conflict_do_nothing_on([
                        project_share::Column::ProjectId,
                        project_share::Column::GroupId,
                    ])
                    .exec_without_returning(txn)
                    .await?;
                    // Counted after the insert, under the project's row lock: concurrent
                    // shares of one project cannot both pass.
                    let shares = project_share::Entity::find()
                        .filter(project_share::Column::ProjectId.eq(id.0))
                        .count(txn)
                        .await?;
                    if shares > MAX_SHARES {
                        return Err(AppError::LimitExceeded {
                            limit: "shares",
                            field: Some("groupIds"),
                            message: format!(
                                "a project may be shared with at most {MAX_SHARES} groups"
                            ),
                        });
                    }
                }
                Change::Unshare => {
                    project_share::Entity::delete_many()
                        .filter(project_share::Column::ProjectId.eq(id.0))
                        .filter(project_share::Column::GroupId.is_in(groups.iter().map(|g| g.0)))
                        .exec(txn)
                        .await?;
                }
            }
            Ok(project)
        })
    })
    .await?;
    tracing::info!(project.id = %id, groups = ?groups, change = ?change, "project_sharing_changed");
    Ok(project)
}

/// Copies a project the viewer may read into a new one the viewer owns, at version 1, with
/// `remixed_from` pointing at the source. The content blob and the assets are shared by key:
/// no bytes are written.
pub async fn copy(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    title: Option<Title>,
    effect: Option<&Effect>,
) -> AppResult<project::Model> {
    let title = title.map(Title::into_inner);
    let copy = super::write::commit(svc, Vec::new(), effect, |txn| {
        let title = title.clone();
        Box::pin(async move {
            // FOR SHARE: the source cannot change or go away until the copy is written, so
            // title, content and links all come from this one version.
            let source = project::Entity::find_by_id(id.0)
                .lock_shared()
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("project"))?;
            if !access::project(txn, Some(viewer), &source)
                .await?
                .can_read()
            {
                return Err(AppError::NotFound("project"));
            }
            let copy = super::projects::new_row(
                viewer,
                title.unwrap_or_else(|| source.title.clone()),
                source.content_key.clone(),
                source.content_size,
                Some(source.id),
            )
            .insert(txn)
            .await?;
            copy_links(txn, source.id, copy.id).await?;
            super::history::record(txn, &copy, Some(viewer.id), super::history::Via::Copy).await?;
            Ok(copy)
        })
    })
    .await?;
    tracing::info!(project.id = copy.id, project.remixed_from = %id, user.id = %viewer.id, "project_copied");
    Ok(copy)
}

fn checked(mut groups: Vec<GroupId>) -> AppResult<Vec<GroupId>> {
    groups.sort_unstable_by_key(|g| g.0);
    groups.dedup();
    if groups.is_empty() {
        return Err(AppError::bad_input("groupIds", "name at least one group"));
    }
    if groups.len() > MAX_GROUPS {
        return Err(AppError::bad_input(
            "groupIds",
            format!("at most {MAX_GROUPS} groups at once"),
        ));
    }
    Ok(groups)
}

/// The project row, locked against concurrent shares, copies and deletes, if the viewer may
/// change it.
async fn locked_for_change<C: ConnectionTrait>(
    conn: &C,
    viewer: Viewer,
    id: ProjectId,
    action: &str,
) -> AppResult<project::Model> {
    let project = project::Entity::find_by_id(id.0)
        .lock_exclusive()
        .one(conn)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    access::project(conn, Some(viewer), &project)
        .await?
        .require_write(action)?;
    Ok(project)
}

/// The source's asset links, copied in one statement.
async fn copy_links<C: ConnectionTrait>(conn: &C, from: i64, to: i64) -> AppResult<()> {
    use sea_orm::sea_query::{Expr, Query};
    let select = Query::select()
        .expr(Expr::val(to))
        .column(project_asset::Column::AssetId)
        .from(project_asset::Entity)
        .and_where(project_asset::Column::ProjectId.eq(from))
        .to_owned();
    let insert = Query::insert()
        .into_table(project_asset::Entity)
        .columns([
            project_asset::Column::ProjectId,
            project_asset::Column::AssetId,
        ])
        .select_from(select)
        .map_err(AppError::internal)?
        .to_owned();
    conn.execute(&insert).await?;
    Ok(())
}

/// Ids of the projects that are copies of `source`, for `Project.remixes`.
pub fn remixes_of(source: ProjectId) -> sea_orm::Condition {
    sea_orm::Condition::all().add(project::Column::RemixedFrom.eq(source.0))
}
