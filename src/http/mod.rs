//! The HTTP surface: router, GraphQL endpoint, GraphiQL, health checks, request ids, limits,
//! and serving with graceful shutdown.

mod assets;
mod auth;
mod backpack;
mod editor_page;
mod error;
mod exports;
mod extractor;
mod graphiql;
mod graphql;
mod headers;
mod health;
mod home;
pub mod scratch;
mod upload;
mod ws;

pub use auth::WebConfig;

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    http::{HeaderName, Request},
    routing::get,
};
use tokio::net::TcpListener;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};

use crate::{
    graphql::{AppSchema, DocumentCache},
    service::Services,
};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub schema: AppSchema,
    pub documents: std::sync::Arc<DocumentCache>,
    pub max_request_bytes: usize,
    /// Most operations one batched request may carry.
    pub max_batch: usize,
    /// Messages queued for one WebSocket client before it is closed as a slow consumer.
    pub ws_send_queue: usize,
    pub web: std::sync::Arc<WebConfig>,
    /// The editor package's `dist/`, when installed (`ATELIER_EDITOR_DIR`).
    pub editor_dist: Option<std::sync::Arc<std::path::PathBuf>>,
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The application's routes and middleware.
pub fn router(state: AppState) -> Router {
    let cors = auth::cors(&state.web);
    let app = Router::new()
        .route("/graphql", get(graphiql::page).post(graphql::post))
        .route("/graphql/ws", get(ws::upgrade))
        .route("/graphiql/{tag}/{file}", get(graphiql::asset))
        .route("/exports/{name}", get(exports::get))
        .route("/assets/{name}", get(assets::get))
        .route("/backpack/{id}/{part}", get(backpack::get))
        .route(
            "/scratch/backpack/{segment}",
            get(scratch::backpack::get).post(scratch::backpack::post),
        )
        .route(
            "/scratch/backpack/{first}/{second}",
            get(scratch::backpack::part).delete(scratch::backpack::delete),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", axum::routing::post(auth::logout))
        .merge(home::routes())
        .merge(scratch::routes())
        .merge(editor_page::routes());
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // The session routes have their own CORS policy (see `scratch`).
    app.merge(scratch::session_routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                        let id = req
                            .extensions()
                            .get::<RequestId>()
                            .and_then(|id| id.header_value().to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", request.id = %id, method = %req.method(), uri = %scratch::redacted_uri(req.uri()))
                    })
                    // One line per request, with its id, status and latency.
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone())),
        )
}

async fn record_metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .services
        .db
        .metrics
        .record_request(start.elapsed(), resp.status().as_u16());
    resp
}

/// Serves until SIGTERM/SIGINT, then stops accepting and gives in-flight requests up to
/// `grace` to finish.
pub async fn serve(listener: TcpListener, state: AppState, grace: Duration) -> std::io::Result<()> {
    let app = router(state);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx2 = rx.clone();
    let deadline = async move {
        let _ = rx2.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; exiting");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
