//! Who may do what: every authorization rule of Atelier, written once, for every caller.
//! Resolvers and handlers ask; they never decide.
//!
//! Each project rule exists twice over, and both forms live here, side by side:
//! - as a SQL condition, for listings and compare-and-set statements (the database filters);
//! - as a predicate on a loaded row, for reads that one statement serves for several viewers
//!   (coalesced `project(id)` reads). Dataloaders take the viewer in their keys and use the
//!   SQL form (`service::reads`).
//!
//! The model:
//! - the owner may read and change their own projects;
//! - members of a group a project is shared with may read (and so copy) it;
//! - a teacher may also read (never change) every project owned by a student in a group the
//!   teacher belongs to;
//! - an admin may do everything;
//! - anyone else does not see the project at all.
//!
//! Sharing with a group needs the right to change the project and membership of the group
//! (admins: any group); unsharing needs only the right to change the project, so an owner who
//! left a class can still take a project back from it. A reader sees the groups a project is
//! shared with only where they are members themselves; the owner and admins see them all.
//!
//! A backpack is its owner's (and, like everything, an admin's): nobody else sees its items.
//!
//! Invisible is `null` / `NOT_FOUND`; visible but not allowed is `FORBIDDEN`.

use entity::{backpack_item, group_member, project, project_share, user};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    sea_query::{Query, SelectStatement},
};

use crate::{
    config::AssetAccess,
    domain::{Role, UserId, Viewer},
    error::{AppError, AppResult},
};

/// What a viewer may do with one project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectAccess {
    /// Not visible: answer `null` / `NOT_FOUND`.
    None,
    /// Visible, not changeable: a change is `FORBIDDEN`.
    Read,
    /// Visible and changeable.
    Write,
}

impl ProjectAccess {
    pub fn can_read(self) -> bool {
        self != ProjectAccess::None
    }

    /// `NOT_FOUND` when invisible, `FORBIDDEN` when only readable.
    pub fn require_write(self, action: &str) -> AppResult<()> {
        match self {
            ProjectAccess::Write => Ok(()),
            ProjectAccess::Read => Err(AppError::Forbidden(format!(
                "only the owner can {action} this project"
            ))),
            ProjectAccess::None => Err(AppError::NotFound("project")),
        }
    }
}

/// The rule, as a predicate on a loaded row. A teacher looking at someone else's project needs
/// one query (do they teach its owner?); everyone else is decided without the database.
pub async fn project<C: ConnectionTrait>(
    conn: &C,
    viewer: Option<Viewer>,
    p: &project::Model,
) -> AppResult<ProjectAccess> {
    let Some(v) = viewer else {
        return Ok(ProjectAccess::None);
    };
    if v.is_admin() || v.id.0 == p.owner_id {
        return Ok(ProjectAccess::Write);
    }
    if shared_with(conn, v.id, p.id).await? {
        return Ok(ProjectAccess::Read);
    }
    if v.role == Role::Teacher && teaches(conn, v.id, UserId(p.owner_id)).await? {
        return Ok(ProjectAccess::Read);
    }
    Ok(ProjectAccess::None)
}

/// The rule, as a SQL condition on `projects`: the rows `viewer` may read.
pub fn readable_projects(viewer: Viewer) -> Condition {
    match viewer.role {
        Role::Admin => Condition::all(),
        Role::Teacher => Condition::any()
            .add(project::Column::OwnerId.eq(viewer.id.0))
            .add(project::Column::Id.in_subquery(shared_with_member(viewer.id)))
            .add(project::Column::OwnerId.in_subquery(students_of(viewer.id))),
        Role::Student => Condition::any()
            .add(project::Column::OwnerId.eq(viewer.id.0))
            .add(project::Column::Id.in_subquery(shared_with_member(viewer.id))),
    }
}

/// The rule, as a SQL condition on `projects`: the rows `viewer` may change.
pub fn writable_projects(viewer: Viewer) -> Condition {
    if viewer.is_admin() {
        Condition::all()
    } else {
        Condition::all().add(project::Column::OwnerId.eq(viewer.id.0))
    }
}

/// The projects whose share with `group` the viewer sees (the rule of [`shares_seen_by`]), as a
/// SQL condition on `projects`: a listing filtered by a group never tells a viewer what is
/// shared with a group they are not in. Combine with [`readable_projects`].
pub fn shared_with_group_seen_by(viewer: Viewer, group: i64) -> Condition {
    let shared = || {
        Query::select()
            .column(project_share::Column::ProjectId)
            .from(project_share::Entity)
            .and_where(project_share::Column::GroupId.eq(group))
            .to_owned()
    };
    if viewer.is_admin() {
        return Condition::all().add(project::Column::Id.in_subquery(shared()));
    }
    let as_member = shared()
        .and_where(project_share::Column::GroupId.in_subquery(groups_of(viewer.id)))
        .to_owned();
    Condition::any()
        .add(project::Column::Id.in_subquery(as_member))
        .add(
            Condition::all()
                .add(project::Column::OwnerId.eq(viewer.id.0))
                .add(project::Column::Id.in_subquery(shared())),
        )
}

/// Which shares of a project a viewer who may read it sees, as a SQL condition on `projects`
/// joined with `project_shares` (one row per share): the owner and admins see every share; any
/// other reader only the shares with groups they belong to (a group is otherwise private to its
/// members, see [`can_see_groups_of`]). Anonymous viewers see none.
pub fn shares_seen_by(viewer: Viewer) -> Condition {
    if viewer.is_admin() {
        return Condition::all();
    }
    Condition::any()
        .add(project::Column::OwnerId.eq(viewer.id.0))
        .add(project_share::Column::GroupId.in_subquery(groups_of(viewer.id)))
}

/// The backpack items `viewer` may read and delete, as a SQL condition on `backpack_items`:
/// their own; an admin's reach is every item.
pub fn backpack_items(viewer: Viewer) -> Condition {
    if viewer.is_admin() {
        Condition::all()
    } else {
        own_backpack(viewer)
    }
}

/// The viewer's own backpack (the `backpack` listing: admins list only theirs too, they reach
/// others' items by id).
pub fn own_backpack(viewer: Viewer) -> Condition {
    Condition::all().add(backpack_item::Column::OwnerId.eq(viewer.id.0))
}

/// Whether `viewer` may see `user`'s groups: the user themself and admins.
pub fn can_see_groups_of(viewer: Option<Viewer>, user: UserId) -> bool {
    viewer.is_some_and(|v| v.is_admin() || v.id == user)
}

/// Whether asset bytes and metadata may be read: by anyone (`public`, as in Scratch), or by
/// any signed-in user (`authenticated`).
pub fn require_asset_reader(policy: AssetAccess, viewer: Option<Viewer>) -> AppResult<()> {
    match (policy, viewer) {
        (AssetAccess::Public, _) | (AssetAccess::Authenticated, Some(_)) => Ok(()),
        (AssetAccess::Authenticated, None) => Err(AppError::Unauthenticated),
    }
}

/// Whether `viewer`, who may change the project, may share it with `group`: its members and
/// admins. An absent group is `NOT_FOUND`, someone else's `FORBIDDEN`.
pub async fn require_share_with<C: ConnectionTrait>(
    conn: &C,
    viewer: Viewer,
    group: i64,
) -> AppResult<()> {
    require_group_exists(conn, group).await?;
    if viewer.is_admin() {
        return Ok(());
    }
    let member = group_member::Entity::find()
        .filter(group_member::Column::GroupId.eq(group))
        .filter(group_member::Column::UserId.eq(viewer.id.0))
        .count(conn)
        .await?;
    if member == 0 {
        return Err(AppError::Forbidden(format!(
            "you are not a member of group {group}"
        )));
    }
    Ok(())
}

/// Whether a viewer who may change the project may stop sharing it with `group`: any group
/// that exists (membership is not needed to take one's own project back). An absent group is
/// `NOT_FOUND`.
pub async fn require_unshare_from<C: ConnectionTrait>(conn: &C, group: i64) -> AppResult<()> {
    require_group_exists(conn, group).await
}

async fn require_group_exists<C: ConnectionTrait>(conn: &C, group: i64) -> AppResult<()> {
    use entity::group;
    if group::Entity::find_by_id(group).one(conn).await?.is_none() {
        return Err(AppError::NotFound("group"));
    }
    Ok(())
}

/// The groups `member` belongs to.
fn groups_of(member: UserId) -> SelectStatement {
    Query::select()
        .column(group_member::Column::GroupId)
        .from(group_member::Entity)
        .and_where(group_member::Column::UserId.eq(member.0))
        .to_owned()
}

/// Projects shared with a group `member` belongs to.
fn shared_with_member(member: UserId) -> SelectStatement {
    Query::select()
        .column(project_share::Column::ProjectId)
        .from(project_share::Entity)
        .and_where(project_share::Column::GroupId.in_subquery(groups_of(member)))
        .to_owned()
}

/// Whether `project` is shared with a group `member` belongs to.
async fn shared_with<C: ConnectionTrait>(
    conn: &C,
    member: UserId,
    project: i64,
) -> AppResult<bool> {
    let n = project_share::Entity::find()
        .filter(project_share::Column::ProjectId.eq(project))
        .filter(project_share::Column::ProjectId.in_subquery(shared_with_member(member)))
        .count(conn)
        .await?;
    Ok(n > 0)
}

/// Students in the groups `teacher` belongs to.
fn students_of(teacher: UserId) -> SelectStatement {
    let members = Query::select()
        .column(group_member::Column::UserId)
        .from(group_member::Entity)
        .and_where(group_member::Column::GroupId.in_subquery(groups_of(teacher)))
        .to_owned();
    Query::select()
        .column(user::Column::Id)
        .from(user::Entity)
        .and_where(user::Column::Role.eq(Role::Student.as_str()))
        .and_where(user::Column::Id.in_subquery(members))
        .to_owned()
}

/// Whether `teacher` teaches `student` (the student is in one of the teacher's groups).
async fn teaches<C: ConnectionTrait>(
    conn: &C,
    teacher: UserId,
    student: UserId,
) -> AppResult<bool> {
    let n = user::Entity::find()
        .filter(user::Column::Id.eq(student.0))
        .filter(user::Column::Id.in_subquery(students_of(teacher)))
        .count(conn)
        .await?;
    Ok(n > 0)
}

/// Whose backpack `viewer` may act on when a route names its owner (the Scratch editor's
/// `/scratch/backpack/{userId}`): their own, or anyone's for an admin. The answer is the
/// viewer acting as that owner, so the backpack service counts and writes under the owner.
pub fn act_on_backpack_of(viewer: Viewer, owner: UserId) -> AppResult<Viewer> {
    if viewer.id == owner || viewer.is_admin() {
        Ok(Viewer {
            id: owner,
            role: viewer.role,
        })
    } else {
        Err(AppError::Forbidden(
            "this backpack belongs to someone else".into(),
        ))
    }
}
