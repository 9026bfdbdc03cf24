//! GraphQL object types. They wrap entity models (never derive on them) and resolve
//! relations through the request's dataloader.

use async_graphql::{
    Context, Enum, ID, Json, Object,
    connection::{Connection, CursorType, Edge},
};
use base64::Engine;
use chrono::{DateTime, Utc};
use entity::{asset, group, project, user};

use super::{
    loaders as l,
    loaders::{ProjectAssetsKey, ProjectKey, SharesKey, UserKey},
    prefetched, services, viewer,
};
use crate::{
    domain::{AssetKind, Role as DomainRole, UserId},
    error::{AppError, AppResult, GqlResultExt},
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

/// The kind of a media asset.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum AssetType {
    ImageVector,
    ImageBitmap,
    Sound,
}

impl From<AssetType> for AssetKind {
    fn from(t: AssetType) -> Self {
        match t {
            AssetType::ImageVector => AssetKind::ImageVector,
            AssetType::ImageBitmap => AssetKind::ImageBitmap,
            AssetType::Sound => AssetKind::Sound,
        }
    }
}

impl From<AssetKind> for AssetType {
    fn from(t: AssetKind) -> Self {
        match t {
            AssetKind::ImageVector => AssetType::ImageVector,
            AssetKind::ImageBitmap => AssetType::ImageBitmap,
            AssetKind::Sound => AssetType::Sound,
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
    async fn groups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        match viewer(ctx) {
            Some(v) if v.id.0 == self.0.id || v.is_admin() => {
                let groups = service::identity::groups_of(services(ctx), UserId(self.0.id))
                    .await
                    .gql()?;
                Ok(groups.into_iter().map(Group).collect())
            }
            _ => Ok(Vec::new()),
        }
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
}

/// A content-addressed media asset (costume, backdrop or sound).
pub struct Asset(pub asset::Model);

#[Object]
impl Asset {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn md5(&self) -> &str {
        &self.0.md5
    }

    async fn asset_type(&self) -> AssetType {
        AssetKind::from_db(&self.0.asset_type)
            .unwrap_or(AssetKind::ImageBitmap)
            .into()
    }

    async fn sha256(&self) -> &str {
        &self.0.sha256
    }

    async fn size(&self) -> i64 {
        self.0.size
    }

    async fn content_type(&self) -> &str {
        &self.0.content_type
    }

    /// Where the bytes are served: `/assets/{md5}.{ext}`.
    async fn url(&self) -> String {
        format!("/assets/{}.{}", self.0.md5, self.0.data_format)
    }
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
            service::projects::content(services(ctx), &self.0)
                .await
                .gql()?,
        ))
    }

    /// The stored assets the content references.
    async fn assets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Asset>> {
        let assets = load::<ProjectAssetsKey, _>(ctx, ProjectAssetsKey(self.0.id))
            .await
            .gql()?
            .unwrap_or_default();
        Ok(assets.into_iter().map(Asset).collect())
    }

    /// The groups the project is shared with.
    async fn shared_with(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Group>> {
        let groups = load::<SharesKey, _>(ctx, SharesKey(self.0.id))
            .await
            .gql()?
            .unwrap_or_default();
        Ok(groups.into_iter().map(Group).collect())
    }

    /// The project this one was copied from, if it still exists and the viewer may see it.
    async fn remixed_from(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Project>> {
        let Some(source) = self.0.remixed_from else {
            return Ok(None);
        };
        let source = load::<ProjectKey, _>(ctx, ProjectKey(source)).await.gql()?;
        Ok(source
            .filter(|p| service::projects::can_read(viewer(ctx), p))
            .map(Project))
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

async fn load<K, V>(ctx: &Context<'_>, key: K) -> AppResult<Option<V>>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
    l::Batch: async_graphql::dataloader::Loader<K, Value = V, Error = sea_orm::DbErr>,
    V: Send + Sync + Clone + 'static,
{
    if let Some(answer) = prefetched(ctx).get::<K, V>(&key) {
        return Ok(answer);
    }
    Ok(super::loaders(ctx).load_one(key).await?)
}

/// Loads each relation the query selects on a page of projects with one query for the whole
/// page, concurrently: the cost of a page is fixed whatever its size and however busy the
/// machine is.
pub async fn prefetch_page(ctx: &Context<'_>, rows: &[project::Model]) -> AppResult<()> {
    let look = ctx.look_ahead();
    let wants = |field: &str| {
        look.field("edges").field("node").field(field).exists()
            || look.field("nodes").field(field).exists()
    };
    let batch = l::Batch(services(ctx).clone());
    let store = prefetched(ctx);
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
        l::prefetch(&batch, store, ids().map(SharesKey)).await
    };
    let sources = async {
        if !wants("remixedFrom") {
            return Ok(());
        }
        let keys = rows.iter().filter_map(|p| p.remixed_from.map(ProjectKey));
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

pub fn project_connection(page: service::projects::ProjectPage) -> ProjectConnection {
    let mut conn = Connection::new(false, page.has_next);
    conn.edges.extend(
        page.rows
            .into_iter()
            .map(|p| Edge::new(IdCursor(p.id), Project(p))),
    );
    conn
}

/// A file part of a multipart request (GraphQL multipart request spec). In a JSON request it
/// cannot be satisfied.
pub struct UploadRef(pub String);

#[async_graphql::Scalar(name = "Upload")]
impl async_graphql::ScalarType for UploadRef {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match value {
            async_graphql::Value::String(s) => Ok(UploadRef(s)),
            other => Err(async_graphql::InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::String(self.0.clone())
    }
}
