//! Users and groups: the `User`, `Group` and `Role` types, `viewer` and `groups`.

use async_graphql::{Context, Enum, ID, Object};
use entity::{group, user};

use super::{errors::GqlResultExt, require_viewer, services, viewer};
use crate::{
    domain::{Role as DomainRole, UserId},
    service,
};

/// A user's role.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum Role {
    Student,
    Teacher,
    Admin,
}

impl From<DomainRole> for Role {
    fn from(r: DomainRole) -> Self {
        match r {
            DomainRole::Student => Role::Student,
            DomainRole::Teacher => Role::Teacher,
            DomainRole::Admin => Role::Admin,
        }
    }
}

/// A person using Atelier.
pub struct User(pub user::Model);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn display_name(&self) -> &str {
        &self.0.display_name
    }

    async fn role(&self) -> Role {
        DomainRole::from_db(&self.0.role).into()
    }

    /// The user's groups; only the user themself and admins see them.
    #[graphql(complexity = "super::limits::list(child_complexity)")]
    async fn groups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        let user = UserId(self.0.id);
        if !service::access::can_see_groups_of(viewer(ctx), user) {
            return Ok(Vec::new());
        }
        let groups = service::identity::groups_of(services(ctx).gql()?, user)
            .await
            .gql()?;
        Ok(groups.into_iter().map(Group).collect())
    }
}

/// A class.
pub struct Group(pub group::Model);

#[Object]
impl Group {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Projects shared with this group that the viewer can see, oldest first.
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn projects(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::projects::ProjectConnection> {
        if after.is_none() {
            // The first page of every listed group's projects: one statement in all.
            let first = service::projects::page_size(first).gql()?;
            let key = super::loaders::GroupProjectsKey {
                group: self.0.id,
                first,
                viewer: viewer(ctx),
            };
            let rows = super::loaders::load::<_, Vec<entity::project::Model>>(ctx, key)
                .await
                .gql()?
                .unwrap_or_default();
            return Ok(super::projects::first_page(rows, first));
        }
        let filter = service::projects::ProjectFilter {
            shared_with_group: Some(crate::domain::GroupId(self.0.id)),
            ..Default::default()
        };
        super::projects::list(ctx, first, after, filter).await
    }
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The signed-in user, or null for anonymous requests.
    async fn viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(v) = viewer(ctx) else {
            return Ok(None);
        };
        let user = service::identity::user(services(ctx).gql()?, v.id)
            .await
            .gql()?;
        Ok(user.map(User))
    }

    /// The viewer's groups.
    #[graphql(complexity = "super::limits::list(child_complexity)")]
    async fn groups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        let v = require_viewer(ctx).gql()?;
        let groups = service::identity::groups_of(services(ctx).gql()?, v.id)
            .await
            .gql()?;
        Ok(groups.into_iter().map(Group).collect())
    }
}
