//! `GET /graphql/ws`: GraphQL subscriptions over graphql-transport-ws (and the older
//! graphql-ws). The viewer comes from `connectionParams` (`{"Authorization": "Bearer …"}`), or
//! else from the upgrade request (its `Authorization` header or session cookie), checked as
//! POST /graphql checks it. Browsers send cookies with a cross-site WebSocket upgrade too, so
//! a cookie-authenticated upgrade must come from an allowed `Origin`.

use async_graphql::{Data, ErrorExtensions, http::ALL_WEBSOCKET_PROTOCOLS};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::{
    extract::{State, WebSocketUpgrade},
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use super::{AppState, auth, graphql::error_response};
use crate::graphql::RequestViewer;

pub async fn upgrade(
    State(state): State<AppState>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_header = match auth::caller(&state, &headers).await {
        Ok(c) if c.by_cookie => match auth::check_origin(&state.web, &headers) {
            Ok(()) => c.viewer,
            Err(e) => return error_response(&e),
        },
        Ok(c) => c.viewer,
        Err(e) => return error_response(&e),
    };
    let ws_state = state.clone();
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |params| async move {
                    let viewer = match bearer(&params) {
                        Some(token) => Some(
                            auth::by_token(&ws_state, &token)
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
