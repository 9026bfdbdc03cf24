//! The GraphQL transport: types, resolvers, dataloaders and error mapping. Resolvers are thin:
//! they parse input into domain types, call a `service::` function and map its error.

mod assets;
mod backpack;
mod documents;
mod editor;
mod errors;
mod history;
mod identity;
mod imports;
mod jobs;
mod limits;
mod loaders;
mod projects;
mod uploads;

use std::sync::Arc;

use async_graphql::{
    Schema,
    dataloader::DataLoader,
    runtime::{TokioSpawner, TokioTimer},
};

use crate::{domain::Viewer, error::AppError, service::Services};

pub use documents::{DOCUMENT_CACHE_ENTRIES, DocumentCache};
pub use errors::{GqlResultExt, request_error};
pub use limits::QueryLimits;
pub use loaders::{Loaders, Prefetched};
pub use uploads::Uploads;
/// The query root: one resolver file per aggregate, merged.
#[derive(async_graphql::MergedObject, Default)]
pub struct Query(
    projects::ProjectsQuery,
    assets::AssetsQuery,
    backpack::BackpackQuery,
    identity::IdentityQuery,
    jobs::JobsQuery,
    editor::EditorQuery,
);

/// The mutation root, merged the same way.
#[derive(async_graphql::MergedObject, Default)]
pub struct Mutation(
    projects::ProjectsMutation,
    assets::AssetsMutation,
    backpack::BackpackMutation,
    jobs::JobsMutation,
    imports::ImportsMutation,
    editor::EditorMutation,
    history::HistoryMutation,
);

/// The subscription root (graphql-transport-ws on `/graphql/ws`), merged the same way.
#[derive(async_graphql::MergedSubscription, Default)]
pub struct Subscription(jobs::JobsSubscription, history::ProjectSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Builds the schema; `Services` is shared by every request. Every operation, whatever
/// transport brought it, is held to `limits` (see [`limits`]).
pub fn build_schema(services: Services, limits: QueryLimits) -> AppSchema {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .data(services)
    .extension(limits::Limits(limits))
    .finish()
}

/// The SDL, as checked in at `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
    .sdl()
}

/// Gives one operation its per-request data: who is asking, fresh dataloaders and an empty
/// prefetch store (nothing is shared across requests, nor across the operations of a batch).
pub fn with_request_data(
    services: &Services,
    viewer: Option<Viewer>,
    request: async_graphql::Request,
) -> async_graphql::Request {
    // Listings prefetch each relation for the whole page (see `projects::prefetch_page`), so
    // the loader only batches what is left: relations of rows that did not come from a page
    // (a single `project(id)`, `remixedFrom`). The short delay lets those enqueue together.
    let loader = DataLoader::new(
        loaders::Batch(services.clone()),
        TokioSpawner::current(),
        TokioTimer::default(),
    )
    .delay(std::time::Duration::from_millis(5));
    request
        .data(RequestViewer(viewer))
        .data(Arc::new(loader))
        .data(Arc::new(Prefetched::default()))
}

/// The `Idempotency-Key` of the current request, for its mutations to record their effects
/// under. `index` is the operation's place in a batch.
#[derive(Clone, Debug)]
pub struct IdempotencyScope {
    pub user_id: i64,
    pub key: String,
    pub index: usize,
}

/// Where the current mutation field records its effect, if the request carries a key.
fn effect(ctx: &async_graphql::Context<'_>) -> Option<crate::service::write::Effect> {
    let scope = ctx.data_opt::<IdempotencyScope>()?;
    let field = ctx.path_node.map(|p| p.to_string()).unwrap_or_default();
    Some(crate::service::write::Effect {
        user_id: scope.user_id,
        key: scope.key.clone(),
        path: format!("{}.{field}", scope.index),
    })
}

/// The viewer of the current request (None for anonymous).
#[derive(Clone, Copy, Debug)]
pub struct RequestViewer(pub Option<Viewer>);

/// Data every operation needs. Missing data is a bug of ours (an operation prepared without
/// [`with_request_data`]): answered INTERNAL, never a panic that takes the connection down.
fn request_data<'a, T: std::any::Any + Send + Sync>(
    ctx: &async_graphql::Context<'a>,
    what: &'static str,
) -> Result<&'a T, AppError> {
    ctx.data_opt::<T>()
        .ok_or_else(|| AppError::internal(format!("request data `{what}` is missing")))
}

fn services<'a>(ctx: &async_graphql::Context<'a>) -> Result<&'a Services, AppError> {
    request_data::<Services>(ctx, "Services")
}

fn viewer(ctx: &async_graphql::Context<'_>) -> Option<Viewer> {
    ctx.data_opt::<RequestViewer>().and_then(|v| v.0)
}

/// The viewer, or UNAUTHENTICATED.
fn require_viewer(ctx: &async_graphql::Context<'_>) -> Result<Viewer, AppError> {
    viewer(ctx).ok_or(AppError::Unauthenticated)
}

fn loaders<'a>(ctx: &async_graphql::Context<'a>) -> Result<&'a Loaders, AppError> {
    request_data::<Arc<Loaders>>(ctx, "Loaders").map(|l| &**l)
}

fn prefetched<'a>(ctx: &async_graphql::Context<'a>) -> Result<&'a Prefetched, AppError> {
    request_data::<Arc<Prefetched>>(ctx, "Prefetched").map(|p| &**p)
}

/// The credential an HTTP request was made with (`openEditor` ties a session to it).
#[derive(Clone, Debug)]
pub struct RequestCredential(pub Arc<crate::service::credential::Credential>);

/// Who a long-running operation (a subscription) acts for, asked again before each event:
/// the socket's credential when it runs on one (see `service::credential`), else the viewer
/// the operation started with.
#[derive(Clone, Debug)]
pub struct RequestAuthority(pub crate::service::credential::Authority);

fn authority(ctx: &async_graphql::Context<'_>) -> crate::service::credential::Authority {
    match ctx.data_opt::<RequestAuthority>() {
        Some(a) => a.0.clone(),
        None => crate::service::credential::Authority::Fixed(viewer(ctx)),
    }
}
