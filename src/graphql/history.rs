//! Version history and conflicted saves: `ProjectVersion`, `ProjectConflict`, their
//! connections (the `Project.versions`, `Project.versionAt` and `Project.conflicts` fields
//! resolve through [`versions`], [`version_at`] and [`conflicts`]), and the mutations that
//! make kept content current again.

use async_graphql::{
    Context, Enum, ID, InputObject, Json, Object, Subscription,
    connection::{Connection, CursorType, Edge},
};
use base64::Engine;
use chrono::{DateTime, Utc};
use entity::{project, project_conflict, project_version};

use super::{
    authority, effect,
    errors::GqlResultExt,
    identity::User,
    loaders::{UserKey, load},
    projects::Project,
    require_viewer, services, viewer,
};
use crate::{
    domain::{ProjectId, Viewer},
    error::{AppError, AppResult},
    service::{self, history::Via},
};
use futures::{Stream, StreamExt};

/// The path a version was saved through.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum SaveVia {
    /// `createProject`, `updateProject` (and a project's first entry when history began).
    Graphql,
    /// The Scratch editor's routes.
    Editor,
    /// `copyProject`, or the editor's "save as a copy".
    Copy,
    /// An `.sb3` import.
    Import,
    /// `restoreProjectVersion`, or `resolveConflict` ("keep mine").
    Restore,
}

impl From<Via> for SaveVia {
    fn from(v: Via) -> Self {
        match v {
            Via::Graphql => SaveVia::Graphql,
            Via::Editor => SaveVia::Editor,
            Via::Copy => SaveVia::Copy,
            Via::Import => SaveVia::Import,
            Via::Restore => SaveVia::Restore,
        }
    }
}

async fn user(ctx: &Context<'_>, id: Option<i64>) -> async_graphql::Result<Option<User>> {
    let Some(id) = id else { return Ok(None) };
    Ok(load::<UserKey, _>(ctx, UserKey(id)).await.gql()?.map(User))
}

/// One committed version of a project.
pub struct ProjectVersion(pub project_version::Model);

#[Object]
impl ProjectVersion {
    async fn version(&self) -> i32 {
        self.0.version
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    /// Size of the content's JSON in bytes.
    async fn size(&self) -> i64 {
        self.0.content_size
    }

    async fn saved_at(&self) -> DateTime<Utc> {
        self.0.saved_at
    }

    /// Who saved it (null for the first entry of a project older than history).
    async fn saved_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        user(ctx, self.0.saved_by).await
    }

    async fn via(&self) -> SaveVia {
        Via::from_db(&self.0.via).into()
    }

    /// The Scratch 3 project JSON of this version.
    async fn content(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<serde_json::Value>> {
        let svc = services(ctx).gql()?;
        Ok(Json(
            service::history::content_of(svc, &self.0.content_key)
                .await
                .gql()?,
        ))
    }
}

/// A save from an editing session whose base was stale: kept, not a version.
pub struct ProjectConflict(pub project_conflict::Model);

#[Object]
impl ProjectConflict {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The version the editor had loaded (or last saved) when it sent this save.
    async fn base_version(&self) -> i32 {
        self.0.base_version
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    /// The last time this content was sent (an autosave retrying it moves this).
    async fn saved_at(&self) -> DateTime<Utc> {
        self.0.saved_at
    }

    async fn saved_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        user(ctx, self.0.saved_by).await
    }

    /// The version it became through `resolveConflict`, if it did.
    async fn resolved_version(&self) -> Option<i32> {
        self.0.resolved_version
    }

    async fn content(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<serde_json::Value>> {
        let svc = services(ctx).gql()?;
        Ok(Json(
            service::history::content_of(svc, &self.0.content_key)
                .await
                .gql()?,
        ))
    }
}

/// Opaque cursor over a number (a version, a conflict id): base64 of `<tag>:<n>`.
pub struct NumCursor<const TAG: char>(pub i64);

impl<const TAG: char> CursorType for NumCursor<TAG> {
    type Error = AppError;

    fn decode_cursor(s: &str) -> Result<Self, AppError> {
        let bad = || AppError::bad_input("after", "not a valid cursor");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        raw.strip_prefix(TAG)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|n| n.parse::<i64>().ok())
            .map(NumCursor)
            .ok_or_else(bad)
    }

    fn encode_cursor(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TAG}:{}", self.0))
    }
}

pub type ProjectVersionConnection = Connection<NumCursor<'v'>, ProjectVersion>;
pub type ProjectConflictConnection = Connection<NumCursor<'c'>, ProjectConflict>;

/// History is the owner's (and admins'): the viewer must be allowed to change the project.
async fn require_history(ctx: &Context<'_>, p: &project::Model) -> AppResult<()> {
    let svc = services(ctx)?;
    let viewer: Option<Viewer> = viewer(ctx);
    service::access::project(svc.db.conn(), viewer, p)
        .await?
        .require_write("see the history of")
}

fn decode<const TAG: char>(after: Option<String>) -> AppResult<Option<i64>> {
    after
        .as_deref()
        .map(NumCursor::<TAG>::decode_cursor)
        .transpose()
        .map(|c| c.map(|c| c.0))
}

/// `Project.versions`, newest first.
pub async fn versions(
    ctx: &Context<'_>,
    p: &project::Model,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<ProjectVersionConnection> {
    require_history(ctx, p).await.gql()?;
    let first = service::projects::page_size(first).gql()?;
    let before = decode::<'v'>(after).gql()?.map(|v| v as i32);
    let page = service::history::versions(services(ctx).gql()?, ProjectId(p.id), first, before)
        .await
        .gql()?;
    let mut conn = Connection::new(false, page.has_next);
    conn.edges.extend(
        page.rows
            .into_iter()
            .map(|v| Edge::new(NumCursor(v.version as i64), ProjectVersion(v))),
    );
    Ok(conn)
}

/// `Project.versionAt`.
pub async fn version_at(
    ctx: &Context<'_>,
    p: &project::Model,
    version: i32,
) -> async_graphql::Result<Option<ProjectVersion>> {
    require_history(ctx, p).await.gql()?;
    let v = service::history::version_at(services(ctx).gql()?, ProjectId(p.id), version)
        .await
        .gql()?;
    Ok(v.map(ProjectVersion))
}

/// `Project.conflicts`, newest first.
pub async fn conflicts(
    ctx: &Context<'_>,
    p: &project::Model,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<ProjectConflictConnection> {
    require_history(ctx, p).await.gql()?;
    let first = service::projects::page_size(first).gql()?;
    let before = decode::<'c'>(after).gql()?;
    let page = service::history::conflicts(services(ctx).gql()?, ProjectId(p.id), first, before)
        .await
        .gql()?;
    let mut conn = Connection::new(false, page.has_next);
    conn.edges.extend(
        page.rows
            .into_iter()
            .map(|c| Edge::new(NumCursor(c.id), ProjectConflict(c))),
    );
    Ok(conn)
}

#[derive(InputObject)]
pub struct RestoreProjectVersionInput {
    pub id: ID,
    /// The retained version whose title and content become current again.
    pub version: i32,
    /// The version the client last saw; a different current version is a VERSION_CONFLICT.
    pub expected_version: i32,
}

#[derive(InputObject)]
pub struct ResolveConflictInput {
    /// The project.
    pub id: ID,
    /// The conflicted save to make current ("keep mine").
    pub conflict_id: ID,
    pub expected_version: i32,
}

#[derive(Default)]
pub struct HistoryMutation;

#[Object]
impl HistoryMutation {
    /// Makes an old version's title and content current again, as a new version.
    async fn restore_project_version(
        &self,
        ctx: &Context<'_>,
        input: RestoreProjectVersionInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let project = service::history::restore(
            services(ctx).gql()?,
            viewer,
            id,
            input.version,
            input.expected_version,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }

    /// Makes a conflicted save's content current, as a new version ("keep mine").
    async fn resolve_conflict(
        &self,
        ctx: &Context<'_>,
        input: ResolveConflictInput,
    ) -> async_graphql::Result<Project> {
        let viewer = require_viewer(ctx).gql()?;
        let id = ProjectId::parse(&input.id, "id").gql()?;
        let conflict = input
            .conflict_id
            .parse::<i64>()
            .map_err(|_| AppError::NotFound("conflict"))
            .gql()?;
        let project = service::history::resolve_conflict(
            services(ctx).gql()?,
            viewer,
            id,
            conflict,
            input.expected_version,
            effect(ctx).as_ref(),
        )
        .await
        .gql()?;
        Ok(Project(project))
    }
}

#[derive(Default)]
pub struct ProjectSubscription;

#[Subscription]
impl ProjectSubscription {
    /// The project after each committed change from now on (never before its commit, never
    /// a rolled-back one; a conflicted save is no change), every version exactly once and in
    /// version order, across processes. NOT_FOUND if the viewer may not read the project
    /// (checked again before every event: losing access ends the stream).
    async fn project_changed(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Project>> + use<>> {
        let viewer = require_viewer(ctx).gql()?;
        let svc = services(ctx).gql()?.clone();
        let id = ProjectId::parse(&id, "id").gql()?;
        // Refused at once rather than as the stream's first item; its version is where the
        // stream starts.
        let current = service::projects::get(&svc, Some(viewer), id)
            .await
            .gql()?
            .ok_or(AppError::NotFound("project"))
            .gql()?;
        Ok(
            service::changes::watch(svc, authority(ctx), id, current.version)
                .map(|item| item.map(Project).gql()),
        )
    }
}
