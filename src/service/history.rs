//! Version history and conflicted saves.
//!
//! Every committed change of a project (title and/or content, through any path) is a
//! version: [`record`] writes its row in the same transaction as the change, so versions are
//! exactly the project's `version` numbers, without gaps, and a rolled-back change leaves
//! none. Content is content-addressed, so a version costs only its distinct bytes (stored
//! compressed, see `storage`).
//!
//! A save through an editing session whose base is stale is not a version: it is kept as a
//! conflicted save ([`keep_conflict`]), one row per (session, content), until a person looks
//! at it and, perhaps, makes it current ([`resolve_conflict`]).
//!
//! Retention ([`prune`], run by `atelier gc` before blobs are collected): every version of
//! the last [`Retention::keep_all`], then the last version of each UTC day for
//! [`Retention::keep_daily`]; older ones go. Pinned whatever their age: a project's current
//! version and the versions an export job names. Conflicts are retained by the same rule.

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entity::{job, project, project_conflict, project_version};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, OnConflict},
};

use crate::{
    domain::{ProjectContent, ProjectId, Title, UserId, Viewer},
    error::{AppError, AppResult},
    service::{Services, now, projects, write::Effect},
};

/// The path a version was saved through (`SaveVia` in the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Graphql,
    Editor,
    Copy,
    Import,
    Restore,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Graphql => "graphql",
            Via::Editor => "editor",
            Via::Copy => "copy",
            Via::Import => "import",
            Via::Restore => "restore",
        }
    }

    pub fn from_db(s: &str) -> Via {
        match s {
            "editor" => Via::Editor,
            "copy" => Via::Copy,
            "import" => Via::Import,
            "restore" => Via::Restore,
            _ => Via::Graphql,
        }
    }
}

/// How long history is kept (`ATELIER_HISTORY_KEEP_ALL_DAYS`,
/// `ATELIER_HISTORY_KEEP_DAILY_DAYS`).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Every version younger than this is kept.
    pub keep_all: Duration,
    /// Older than `keep_all` but younger than this: the last version of each UTC day.
    pub keep_daily: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_all: Duration::from_secs(14 * 86_400),
            keep_daily: Duration::from_secs(365 * 86_400),
        }
    }
}

/// Records `project` (as it is after a committed change) as a version. Inside the change's
/// transaction: the version and the change commit or roll back together.
pub(super) async fn record<C: ConnectionTrait>(
    conn: &C,
    project: &project::Model,
    saved_by: Option<UserId>,
    via: Via,
) -> AppResult<()> {
    project_version::ActiveModel {
        project_id: Set(project.id),
        version: Set(project.version),
        title: Set(project.title.clone()),
        content_key: Set(project.content_key.clone()),
        content_size: Set(project.content_size),
        saved_by: Set(saved_by.map(|u| u.0)),
        saved_at: Set(project.updated_at),
        via: Set(via.as_str().to_owned()),
    }
    .insert(conn)
    .await?;
    super::changes::announce(conn, project.id).await
}

/// One page of versions, newest first.
#[derive(Debug)]
pub struct VersionPage {
    pub rows: Vec<project_version::Model>,
    pub has_next: bool,
}

/// Versions of `project` older than `before` (all when `None`), newest first: one statement.
/// The caller has checked that the viewer may read the project.
pub async fn versions(
    svc: &Services,
    project: ProjectId,
    first: u64,
    before: Option<i32>,
) -> AppResult<VersionPage> {
    let mut q = project_version::Entity::find()
        .filter(project_version::Column::ProjectId.eq(project.0))
        .order_by_desc(project_version::Column::Version);
    if let Some(before) = before {
        q = q.filter(project_version::Column::Version.lt(before));
    }
    let mut rows = q.limit(first + 1).all(svc.db.conn()).await?;
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok(VersionPage { rows, has_next })
}

/// One version of `project`, if it is retained.
pub async fn version_at(
    svc: &Services,
    project: ProjectId,
    version: i32,
) -> AppResult<Option<project_version::Model>> {
    Ok(project_version::Entity::find_by_id((project.0, version))
        .one(svc.db.conn())
        .await?)
}

/// The JSON stored under `key` (a version's or a conflict's content).
pub async fn content_of(svc: &Services, key: &str) -> AppResult<serde_json::Value> {
    let bytes = svc.blobs.read_content(key).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AppError::internal(format!(
                "content blob {key} of a retained version is missing"
            ))
        } else {
            e.into()
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AppError::internal(format!("content blob {key} does not parse: {e}")))
}

/// Parsed content under `key`, for making it current again (its asset references).
async fn parsed(svc: &Services, key: &str) -> AppResult<ProjectContent> {
    let value = content_of(svc, key).await?;
    // Stored content was checked when it was saved: no size bound applies again.
    ProjectContent::parse(value, u64::MAX)
}

/// `restoreProjectVersion`: a new version whose title and content are `version`'s,
/// compare-and-set against `expected` like any update.
pub async fn restore(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    version: i32,
    expected: i32,
    effect: Option<&Effect>,
) -> AppResult<project::Model> {
    let old = version_at(svc, id, version).await?;
    // A version of a project the viewer cannot see is as absent as the project.
    if projects::get(svc, Some(viewer), id).await?.is_none() {
        return Err(AppError::NotFound("project"));
    }
    let old = old.ok_or(AppError::NotFound("version"))?;
    let content = parsed(svc, &old.content_key).await?;
    let title = Title::parse(&old.title)?;
    let project = projects::make_current(
        svc,
        viewer,
        id,
        expected,
        Some(title),
        (old.content_key.clone(), old.content_size),
        Arc::new(content.asset_refs),
        Via::Restore,
        effect,
        None,
    )
    .await?;
    tracing::info!(project.id = %id, project.version = project.version, restored = version, "project_version_restored");
    Ok(project)
}

/// Keeps an editing session's stale save as a conflicted save: one row per (session,
/// content), so an autosave that retries the same bytes updates its time instead of adding
/// rows. Inside the save's transaction. Returns the conflict's id.
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep_conflict<C: ConnectionTrait>(
    conn: &C,
    project: &project::Model,
    session_id: i64,
    base_version: i32,
    content_key: &str,
    content_size: i64,
    saved_by: UserId,
) -> AppResult<i64> {
    let at = now();
    project_conflict::Entity::insert(project_conflict::ActiveModel {
        project_id: Set(project.id),
        session_id: Set(Some(session_id)),
        base_version: Set(base_version),
        title: Set(project.title.clone()),
        content_key: Set(content_key.to_owned()),
        content_size: Set(content_size),
        saved_by: Set(Some(saved_by.0)),
        saved_at: Set(at),
        resolved_version: Set(None),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([
            project_conflict::Column::SessionId,
            project_conflict::Column::ContentKey,
        ])
        .update_column(project_conflict::Column::SavedAt)
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    let row = project_conflict::Entity::find()
        .filter(project_conflict::Column::SessionId.eq(session_id))
        .filter(project_conflict::Column::ContentKey.eq(content_key))
        .one(conn)
        .await?
        .ok_or_else(|| AppError::internal("conflicted save vanished after its upsert"))?;
    Ok(row.id)
}

/// One page of conflicted saves, newest first.
#[derive(Debug)]
pub struct ConflictPage {
    pub rows: Vec<project_conflict::Model>,
    pub has_next: bool,
}

/// Conflicted saves of `project` with ids below `before`, newest first (the caller checked
/// the viewer may read the project).
pub async fn conflicts(
    svc: &Services,
    project: ProjectId,
    first: u64,
    before: Option<i64>,
) -> AppResult<ConflictPage> {
    let mut q = project_conflict::Entity::find()
        .filter(project_conflict::Column::ProjectId.eq(project.0))
        .order_by_desc(project_conflict::Column::Id);
    if let Some(before) = before {
        q = q.filter(project_conflict::Column::Id.lt(before));
    }
    let mut rows = q.limit(first + 1).all(svc.db.conn()).await?;
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok(ConflictPage { rows, has_next })
}

/// `resolveConflict` ("keep mine"): the conflicted save's content becomes current as a new
/// version (compare-and-set against `expected`; the title stays the project's, the editor
/// never sends one). The conflict records the version it became.
pub async fn resolve_conflict(
    svc: &Services,
    viewer: Viewer,
    id: ProjectId,
    conflict_id: i64,
    expected: i32,
    effect: Option<&Effect>,
) -> AppResult<project::Model> {
    if projects::get(svc, Some(viewer), id).await?.is_none() {
        return Err(AppError::NotFound("project"));
    }
    let conflict = project_conflict::Entity::find_by_id(conflict_id)
        .one(svc.db.conn())
        .await?
        .filter(|c| c.project_id == id.0)
        .ok_or(AppError::NotFound("conflict"))?;
    let content = parsed(svc, &conflict.content_key).await?;
    let project = projects::make_current(
        svc,
        viewer,
        id,
        expected,
        None,
        (conflict.content_key.clone(), conflict.content_size),
        Arc::new(content.asset_refs),
        Via::Restore,
        effect,
        Some(conflict_id),
    )
    .await?;
    tracing::info!(project.id = %id, project.version = project.version, conflict.id = conflict_id, "project_conflict_resolved");
    Ok(project)
}

/// Marks a conflict as made current as `version` (inside that change's transaction).
pub(super) async fn mark_resolved<C: ConnectionTrait>(
    conn: &C,
    conflict_id: i64,
    version: i32,
) -> AppResult<()> {
    project_conflict::Entity::update_many()
        .col_expr(
            project_conflict::Column::ResolvedVersion,
            Expr::value(version),
        )
        .filter(project_conflict::Column::Id.eq(conflict_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// What [`prune`] removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub versions_removed: u64,
    pub conflicts_removed: u64,
}

/// Which of the rows `(group, id, saved_at)` (ordered by group, then id ascending) retention
/// lets go at `at`: those older than `keep_daily`, and those older than `keep_all` that are
/// not the last of their group's UTC day.
fn expired<K: Copy + Eq>(
    rows: &[(i64, K, DateTime<Utc>)],
    at: DateTime<Utc>,
    r: Retention,
) -> Vec<(i64, K)> {
    let all_until = at - chrono::Duration::from_std(r.keep_all).unwrap_or(chrono::Duration::MAX);
    let daily_until =
        at - chrono::Duration::from_std(r.keep_daily).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for (i, (group, id, saved_at)) in rows.iter().enumerate() {
        if *saved_at >= all_until {
            continue;
        }
        if *saved_at < daily_until {
            out.push((*group, *id));
            continue;
        }
        // Kept if it is the last of its UTC day in its group.
        let later_same_day = rows
            .get(i + 1)
            .is_some_and(|(g, _, next)| g == group && next.date_naive() == saved_at.date_naive());
        if later_same_day {
            out.push((*group, *id));
        }
    }
    out
}

/// Applies retention to versions and conflicts older than [`Retention::keep_all`]. Pinned
/// versions (a project's current one, those an export job names) are never removed.
pub async fn prune(svc: &Services, r: Retention) -> AppResult<PruneReport> {
    let at = now();
    let all_until = at - chrono::Duration::from_std(r.keep_all).unwrap_or(chrono::Duration::MAX);
    let conn = svc.db.conn();
    let mut report = PruneReport::default();

    // Candidates: every version older than keep_all, plus, for the day rule, the version
    // right after each (it may be the same day's later one) — simplest as all versions of
    // the projects that have old ones, a page of projects at a time.
    let mut after = 0i64;
    loop {
        let projects: Vec<i64> = project_version::Entity::find()
            .select_only()
            .column(project_version::Column::ProjectId)
            .filter(project_version::Column::SavedAt.lt(all_until))
            .filter(project_version::Column::ProjectId.gt(after))
            .group_by(project_version::Column::ProjectId)
            .order_by_asc(project_version::Column::ProjectId)
            .limit(200)
            .into_tuple()
            .all(conn)
            .await?;
        let Some(last) = projects.last().copied() else {
            break;
        };
        after = last;
        let rows: Vec<(i64, i32, DateTime<Utc>)> = project_version::Entity::find()
            .select_only()
            .column(project_version::Column::ProjectId)
            .column(project_version::Column::Version)
            .column(project_version::Column::SavedAt)
            .filter(project_version::Column::ProjectId.is_in(projects.clone()))
            .order_by_asc(project_version::Column::ProjectId)
            .order_by_asc(project_version::Column::Version)
            .into_tuple()
            .all(conn)
            .await?;
        let mut pinned: HashSet<(i64, i32)> = project::Entity::find()
            .select_only()
            .column(project::Column::Id)
            .column(project::Column::Version)
            .filter(project::Column::Id.is_in(projects.clone()))
            .into_tuple::<(i64, i32)>()
            .all(conn)
            .await?
            .into_iter()
            .collect();
        pinned.extend(
            job::Entity::find()
                .select_only()
                .column(job::Column::SubjectId)
                .column(job::Column::SubjectVersion)
                .filter(job::Column::SubjectId.is_in(projects.clone()))
                .into_tuple::<(i64, i32)>()
                .all(conn)
                .await?,
        );
        for (project_id, version) in expired(&rows, at, r) {
            if pinned.contains(&(project_id, version)) {
                continue;
            }
            let gone = project_version::Entity::delete_by_id((project_id, version))
                .exec(conn)
                .await?;
            report.versions_removed += gone.rows_affected;
        }
    }

    // Conflicts: the same rule, per project, by id order.
    let rows: Vec<(i64, i64, DateTime<Utc>)> = project_conflict::Entity::find()
        .select_only()
        .column(project_conflict::Column::ProjectId)
        .column(project_conflict::Column::Id)
        .column(project_conflict::Column::SavedAt)
        .order_by_asc(project_conflict::Column::ProjectId)
        .order_by_asc(project_conflict::Column::Id)
        .into_tuple()
        .all(conn)
        .await?;
    let gone: Vec<i64> = expired(&rows, at, r)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    for chunk in gone.chunks(500) {
        let res = project_conflict::Entity::delete_many()
            .filter(project_conflict::Column::Id.is_in(chunk.to_vec()))
            .exec(conn)
            .await?;
        report.conflicts_removed += res.rows_affected;
    }
    tracing::info!(
        history.versions_removed = report.versions_removed,
        history.conflicts_removed = report.conflicts_removed,
        "history_pruned"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn keeps_everything_recent_and_the_last_of_each_old_day() {
        let r = Retention {
            keep_all: Duration::from_secs(10 * 86_400),
            keep_daily: Duration::from_secs(20 * 86_400),
        };
        let at = t(31, 12);
        let rows = vec![
            (1, 1, t(1, 9)),   // older than keep_daily: goes
            (1, 2, t(15, 9)),  // old day, not its last: goes
            (1, 3, t(15, 17)), // old day's last: stays
            (1, 4, t(16, 9)),  // old day's last: stays
            (1, 5, t(30, 9)),  // recent: stays
            (1, 6, t(30, 10)), // recent: stays
            (2, 1, t(15, 9)),  // another project's last of that day: stays
        ];
        assert_eq!(expired(&rows, at, r), vec![(1, 1), (1, 2)]);
    }
}
