//! Projects: the `Project` type, its listing and the project queries and mutations.

use async_graphql::{
    Context, ID, InputObject, Json, Object,
    connection::{Connection, CursorType, Edge},
};
use base64::Engine;
use chrono::{DateTime, Utc};
use entity::project;

use super::{
    assets::Asset,
    effect,
    errors::GqlResultExt,
    identity::{Group, User},
    loaders as l,
    loaders::{ProjectAssetsKey, ProjectKey, RemixesKey, SharesKey, UserKey, load},
    prefetched, require_viewer, services, viewer,
};
use crate::{
    domain::{GroupId, ProjectContent, ProjectId, Title, UserId},
    error::AppError,
    service,
};

/// Narrows a project listing; filters combine with AND.
#[derive(InputObject, Default)]
pub struct ProjectFilter {
    /// Only the viewer's own projects.
    pub mine: Option<bool>,
    /// Only projects owned by this user.
    pub owner: Option<ID>,
    /// Only projects shared with this group.
    pub shared_with_group: Option<ID>,
}

#[derive(InputObject)]
pub struct CreateProjectInput {
    pub title: String,
    /// Scratch 3 project JSON: an object with a `targets` array.
    pub content: Json<serde_json::Value>,
}

#[derive(InputObject)]
pub struct UpdateProjectInput {
    pub id: ID,
    /// The version the client last saw; a different current version is a VERSION_CONFLICT.
    pub expected_version: i32,
    pub title: Option<String>,
    pub content: Option<Json<serde_json::Value>>,
}

#[derive(InputObject)]
pub struct DeleteProjectInput {
    pub id: ID,
    /// If given, delete only while the project is still at this version.
    pub expected_version: Option<i32>,
}

/// A Scratch project.
pub struct Project(pub project::Model);

#[Object]
impl Project {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    /// Bumped by every change of title or content; pass it back as `expectedVersion`.
    async fn version(&self) -> i32 {
        self.0.version
    }

    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let owner = load::<UserKey, _>(ctx, UserKey(self.0.owner_id))
            .await
            .gql()?
            .ok_or_else(|| AppError::internal("project owner missing"))
            .gql()?;
        Ok(User(owner))
    }

    /// The Scratch 3 project JSON.
    async fn content(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<serde_json::Value>> {
        Ok(Json(
            service::projects::content(services(ctx).gql()?, &self.0)
                .await
                .gql()?,
        ))
    }

    /// The stored assets the content references.
    #[graphql(complexity = "super::limits::list(child_complexity)")]
    async fn assets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Asset>> {
        let assets = load::<ProjectAssetsKey, _>(ctx, ProjectAssetsKey(self.0.id))
            .await
            .gql()?
            .unwrap_or_default();
        Ok(assets.into_iter().map(Asset).collect())
    }

    /// The groups the project is shared with: all of them for its owner and admins, for
    /// anyone else only those they belong to.
    #[graphql(complexity = "super::limits::list(child_complexity)")]
    async fn shared_with(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        let key = SharesKey {
            project: self.0.id,
            viewer: viewer(ctx),
        };
        let groups = load::<SharesKey, _>(ctx, key).await.gql()?;
        Ok(groups.unwrap_or_default().into_iter().map(Group).collect())
    }

    /// The project this one was copied from, if it still exists and the viewer may see it.
    async fn remixed_from(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Project>> {
        let Some(source) = self.0.remixed_from else {
            return Ok(None);
        };
        let key = ProjectKey {
            id: source,
            viewer: viewer(ctx),
        };
        let source = load::<ProjectKey, _>(ctx, key).await.gql()?;
        Ok(source.map(Project))
    }

    /// Copies of this project that the viewer can see, oldest first.
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn remixes(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<ProjectConnection> {
        if after.is_none() {
            // The first page of every project's remixes on a page: one statement in all.
            let first = service::projects::page_size(first).gql()?;
            let key = RemixesKey {
                project: self.0.id,
                first,
                viewer: viewer(ctx),
            };
            let mut rows = load::<RemixesKey, _>(ctx, key)
                .await
                .gql()?
                .unwrap_or_default();
            let has_next = rows.len() as u64 > first;
            rows.truncate(first as usize);
            return Ok(project_connection(service::projects::ProjectPage {
                rows,
                has_next,
            }));
        }
        let filter = service::projects::ProjectFilter {
            remixed_from: Some(ProjectId(self.0.id)),
            ..Default::default()
        };
        list(ctx, first, after, filter).await
    }

    /// Every retained version, newest first (the owner's and admins').
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn versions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::history::ProjectVersionConnection> {
        super::history::versions(ctx, &self.0, first, after).await
    }

    /// One retained version, with its content (null when retention let it go).
    async fn version_at(
        &self,
        ctx: &Context<'_>,
        version: i32,
    ) -> async_graphql::Result<Option<super::history::ProjectVersion>> {
        super::history::version_at(ctx, &self.0, version).await
    }

    /// Saves an editor sent from a stale base: kept, never silently lost; newest first.
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn conflicts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::history::ProjectConflictConnection> {
        super::history::conflicts(ctx, &self.0, first, after).await
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// Loads each relation the query selects on a page of projects with one query for the whole
/// page, concurrently: the cost of a page is fixed whatever its size and however busy the
/// machine is.
pub async fn prefetch_page(ctx: &Context<'_>, rows: &[project::Model]) -> Result<(), l::LoadError> {
    let look = ctx.look_ahead();
    let wants = |field: &str| {
        look.field("edges").field("node").field(field).exists()
            || look.field("nodes").field(field).exists()
    };
    let batch = l::Batch(services(ctx)?.clone());
    let store = prefetched(ctx)?;
    let viewer = viewer(ctx);
    let ids = || rows.iter().map(|p| p.id);
    let owners = async {
        if !wants("owner") {
            return Ok(());
        }
        l::prefetch(&batch, store, rows.iter().map(|p| UserKey(p.owner_id))).await
    };
    let assets = async {
        if !wants("assets") {
            return Ok(());
        }
        l::prefetch(&batch, store, ids().map(ProjectAssetsKey)).await
    };
    let shares = async {
        if !wants("sharedWith") {
            return Ok(());
        }
        let keys = ids().map(|project| SharesKey { project, viewer });
        l::prefetch(&batch, store, keys).await
    };
    let sources = async {
        if !wants("remixedFrom") {
            return Ok(());
        }
        let keys = rows
            .iter()
            .filter_map(|p| p.remixed_from.map(|id| ProjectKey { id, viewer }));
        l::prefetch(&batch, store, keys).await
    };
    tokio::try_join!(owners, assets, shares, sources)?;
    Ok(())
}

/// Opaque, stable cursor: base64 of `p:<id>`.
pub struct IdCursor(pub i64);

impl CursorType for IdCursor {
    type Error = AppError;

    fn decode_cursor(s: &str) -> Result<Self, AppError> {
        let bad = || AppError::bad_input("after", "not a valid cursor");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        raw.strip_prefix("p:")
            .and_then(|id| id.parse::<i64>().ok())
            .map(IdCursor)
            .ok_or_else(bad)
    }

    fn encode_cursor(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p:{}", self.0))
    }
}

pub type ProjectConnection = Connection<IdCursor, Project>;

/// A first page from `first` + 1 loaded rows (the extra one says there is more).
pub fn first_page(mut rows: Vec<project::Model>, first: u64) -> ProjectConnection {
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    project_connection(service::projects::ProjectPage { rows, has_next })
}

pub fn project_connection(page: service::projects::ProjectPage) -> ProjectConnection {
    let mut conn = Connection::new(false, page.has_next);
    conn.edges.extend(
        page.rows
            .into_iter()
            .map(|p| Edge::new(IdCursor(p.id), Project(p))),
    );
    conn
}

#[derive(Default)]
pub struct ProjectsQuery;

#[Object]
impl ProjectsQuery {
    /// A project by id; null if it does not exist or the viewer may not see it.
    async fn project(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Project>> {
        let id = ProjectId::parse(&id, "id").gql()?;
        let found = service::projects::get(services(ctx).gql()?, viewer(ctx), id)
            .await
            .gql()?;
        Ok(found.map(Project))
    }

    /// Projects the viewer can see, oldest first (Relay connection; `first` is capped at 100).
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn projects(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<ProjectFilter>,
    ) -> async_graphql::Result<ProjectConnection> {
        let filter = filter.unwrap_or_default();
        let service_filter = service::projects::ProjectFilter {
            mine: filter.mine.unwrap_or(false),
            owner: filter
                .owner
                .map(|id| UserId::parse(&id, "filter.owner"))
                .transpose()
                .gql()?,
            shared_with_group: filter
                .shared_with_group
                .map(|id| GroupId::parse(&id, "filter.sharedWithGroup"))
                .transpose()
                .gql()?,
            remixed_from: None,
        };
        list(ctx, first, after, service_filter).await
    }
}

/// `shareProject` and `unshareProject`: the same input, one of two service calls.
async fn change_sharing(
    ctx: &Context<'_>,
    input: ShareProjectInput,
    change: service::sharing::Change,
) -> async_graphql::Result<Project> {
    let viewer = require_viewer(ctx).gql()?;
    let id = ProjectId::parse(&input.id, "id").gql()?;
    let groups = input
        .group_ids
        .iter()
        .map(|g| GroupId::parse(g, "groupIds"))
        .collect::<Result<Vec<_>, _>>()
        .gql()?;
    let effect = effect(ctx);
    let project = service::sharing::change(
        services(ctx).gql()?,
        viewer,
        id,
        groups,
        effect.as_ref(),
        change,
    )
    .await
    .gql()?;
    Ok(Project(project))
}

/// One page of projects the viewer can see, with each selected relation prefetched for the
/// whole page.
pub async fn list(
    ctx: &Context<'_>,
    first: Option<i32>,
    after: Option<String>,
    filter: service::projects::ProjectFilter,
) -> async_graphql::Result<ProjectConnection> {
    let first = service::projects::page_size(first).gql()?;
    let after = after
        .map(|c| IdCursor::decode_cursor(&c).map(|c| ProjectId(c.0)))
        .transpose()
        .gql()?;
    let page = service::projects::list(services(ctx).gql()?, viewer(ctx), first, after, filter)
        .await
        .gql()?;
    prefetch_page(ctx, &page.rows).await.gql()?;
    Ok(project_connection(page))
}

#[derive(InputObject)]
pub struct ShareProjectInput {
    pub id: ID,
    pub group_ids: Vec<ID>,
}

#[derive(InputObject)]
pub struct CopyProjectInput {
    pub id: ID,
    /// The copy's title; the source's when absent.
    pub title: Option<String>,
}

#[derive(Default)]
pub struct ProjectsMutation;

#[Object]
impl ProjectsMutation {
    /// Shares a project with groups (owner or admin, member of each group). Idempotent; does
    /// not change the project's version.
    async fn share_project(
        &self,
        ctx: &Context<'_>,
        input: ShareProjectInput,
    ) -> async_graphql::Result<Project> {
        change_sharing(ctx, input, service::sharing::Change::Share).await
    }

    /// Stops sharing a project with groups.
    async fn unshare_project(
        &self,
        ctx: &Context<'_>,
        input: ShareProjectInput,
    ) -> async_graphql::Result<Project> {
        change_sharing(ctx, input, service::sharing::Change::Unshare).await
    }

    /// Copies ("remixes") a project the viewer can read into a new project of theirs.
    async fn copy_project(
        &self,
        ctx: &Context<'_>,
        input: CopyProjectInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let title = input.title.as_deref().map(Title::parse).transpose().gql()?;
        let project = service::sharing::copy(
            services(ctx).gql()?,
            viewer,
            id,
            title,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }

    /// Creates a project owned by the viewer.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        input: CreateProjectInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx).gql()?;
        let title = Title::parse(&input.title).gql()?;
        let content = ProjectContent::parse(input.content.0, svc.limits.max_content_bytes).gql()?;
        let project = service::projects::create(
            svc,
            viewer,
            title,
            content,
            service::history::Via::Graphql,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }

    /// Changes title and/or content if `expectedVersion` is still current.
    async fn update_project(
        &self,
        ctx: &Context<'_>,
        input: UpdateProjectInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let title = input.title.as_deref().map(Title::parse).transpose().gql()?;
        let content = input
            .content
            .map(|c| ProjectContent::parse(c.0, svc.limits.max_content_bytes))
            .transpose()
            .gql()?;
        let project = service::projects::update(
            svc,
            viewer,
            id,
            input.expected_version,
            title,
            content,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }

    /// Deletes a project; returns its id.
    async fn delete_project(
        &self,
        ctx: &Context<'_>,
        input: DeleteProjectInput,
    ) -> async_graphql::Result<ID> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let id = service::projects::delete(
            services(ctx).gql()?,
            viewer,
            id,
            input.expected_version,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(ID(id.to_string()))
    }
}
