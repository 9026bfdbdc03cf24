//! Query resolvers.

use async_graphql::{Context, ID, InputObject, Object, connection::CursorType};
use entity::user;
use sea_orm::EntityTrait;

use super::{
    loaders::AssetKey,
    require_viewer, services,
    types::{
        Asset, AssetType, Group, IdCursor, Project, ProjectConnection, User, prefetch_page,
        project_connection,
    },
    viewer,
};
use crate::{
    config::AssetAccess,
    domain::{Md5, ProjectId, UserId},
    error::{AppError, GqlResultExt},
    service::{
        self,
        projects::{DEFAULT_PAGE, MAX_PAGE},
    },
};

pub struct QueryRoot;

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

#[Object]
impl QueryRoot {
    /// The signed-in user, or null for anonymous requests.
    async fn viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(v) = viewer(ctx) else {
            return Ok(None);
        };
        let user = user::Entity::find_by_id(v.id.0)
            .one(services(ctx).db.conn())
            .await
            .map_err(AppError::from)
            .gql()?;
        Ok(user.map(User))
    }

    /// A project by id; null if it does not exist or the viewer may not see it.
    async fn project(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Project>> {
        let id = ProjectId::parse(&id, "id").gql()?;
        let found = service::projects::get(services(ctx), viewer(ctx), id)
            .await
            .gql()?;
        Ok(found.map(Project))
    }

    /// Projects the viewer can see, oldest first (Relay connection; `first` is capped at 100).
    async fn projects(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<ProjectFilter>,
    ) -> async_graphql::Result<ProjectConnection> {
        let first = match first {
            None => DEFAULT_PAGE,
            Some(n) if n < 0 => {
                return Err(AppError::bad_input("first", "first must not be negative")).gql();
            }
            Some(n) => (n as u64).min(MAX_PAGE),
        };
        let after = after
            .map(|c| IdCursor::decode_cursor(&c).map(|c| ProjectId(c.0)))
            .transpose()
            .gql()?;
        let filter = filter.unwrap_or_default();
        let service_filter = service::projects::ProjectFilter {
            mine: filter.mine.unwrap_or(false),
            owner: filter
                .owner
                .map(|id| UserId::parse(&id, "filter.owner"))
                .transpose()
                .gql()?,
        };
        if filter.shared_with_group.is_some() {
            // Sharing is not built yet: nothing is shared with any group.
            return Ok(ProjectConnection::new(false, false));
        }
        let page =
            service::projects::list(services(ctx), viewer(ctx), first, after, service_filter)
                .await
                .gql()?;
        prefetch_page(ctx, &page.rows).await.gql()?;
        Ok(project_connection(page))
    }

    /// An asset by md5 and type; null if not stored.
    async fn asset(
        &self,
        ctx: &Context<'_>,
        md5: String,
        asset_type: AssetType,
    ) -> async_graphql::Result<Option<Asset>> {
        if services(ctx).limits.asset_access == AssetAccess::Authenticated {
            require_viewer(ctx).gql()?;
        }
        let md5 = Md5::parse(&md5)
            .ok_or_else(|| AppError::bad_input("md5", "md5 must be 32 hex digits"))
            .gql()?;
        let found = super::loaders(ctx)
            .load_one(AssetKey(md5.as_str().to_owned(), asset_type.into()))
            .await
            .map_err(AppError::from)
            .gql()?;
        Ok(found.map(Asset))
    }

    /// The viewer's groups.
    async fn groups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        let v = require_viewer(ctx).gql()?;
        let groups = service::identity::groups_of(services(ctx), v.id)
            .await
            .gql()?;
        Ok(groups.into_iter().map(Group).collect())
    }
}
