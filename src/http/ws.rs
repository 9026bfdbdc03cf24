//! `GET /graphql/ws`: GraphQL subscriptions over graphql-transport-ws (and the older
//! graphql-ws). The viewer comes from the upgrade request's `Authorization` header, or from
//! `connectionParams` (`{"Authorization": "Bearer …"}`), checked as POST /graphql checks it.

use async_graphql::{Data, ErrorExtensions, http::ALL_WEBSOCKET_PROTOCOLS};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::{
    extract::{State, WebSocketUpgrade},
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    graphql::{authenticate, error_response},
};
use crate::{graphql::RequestViewer, service};

pub async fn upgrade(
    State(state): State<AppState>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_header = match authenticate(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let svc = state.services.clone();
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |params| async move {
                    let viewer = match bearer(&params) {
                        Some(token) => Some(
                            service::identity::authenticate(&svc, &token)
                                .await
                                .map_err(|e| e.extend())?,
                        ),
                        None => from_header,
                    };
                    let mut data = Data::default();
                    data.insert(RequestViewer(viewer));
                    Ok(data)
                })
                .serve()
        })
        .into_response()
}

/// The token in `connectionParams`: `Authorization`/`authorization` ("Bearer …"), or `token`.
fn bearer(params: &serde_json::Value) -> Option<String> {
    let header = params
        .get("Authorization")
        .or_else(|| params.get("authorization"))
        .and_then(|v| v.as_str())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
        });
    header
        .or_else(|| params.get("token").and_then(|v| v.as_str()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}
