//! The HTTP surface: health, readiness, request ids, graceful shutdown (GraphiQL: `graphiql.rs`).

use std::time::Duration;

use serde_json::json;

use crate::{
    both_backends,
    harness::{TestServer, code, empty_project, signal},
};

both_backends!(
    health_and_readiness,
    graceful_shutdown_finishes_in_flight_requests,
    parsed_queries_are_reused_and_still_validated
);

async fn health_and_readiness(s: TestServer) {
    let health = reqwest::get(format!("{}/healthz", s.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", s.base_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "status": "ready", "database": "ok", "storage": "ok" })
    );
    assert!(
        s.staging_files().is_empty(),
        "the readiness probe cleans up after itself"
    );
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let s = TestServer::start(crate::harness::Backend::Sqlite).await;
    let alice = s.user("alice").await;
    let resp = alice
        .request()
        .json(&json!({ "query": "{ viewer { id } }" }))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a uuid: {id}");
    // A client-supplied id is kept, so logs can be correlated end to end.
    let resp = alice
        .request()
        .header("x-request-id", "client-chosen-id")
        .json(&json!({ "query": "mutation { deleteProject(input: {id: \"42\"}) }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id");
    // The log line of that request carries its id.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.server_log().contains("client-chosen-id"),
        "log:\n{}",
        s.server_log()
    );
}

/// SIGTERM while a request body is still arriving: the request completes, new connections are
/// refused, the process exits cleanly.
async fn graceful_shutdown_finishes_in_flight_requests(mut s: TestServer) {
    let alice = s.user("alice").await;
    let body = serde_json::to_vec(&json!({
        "query": "mutation($c: JSON!) { createProject(input: {title: \"slow\", content: $c}) { id version } }",
        "variables": { "c": empty_project() },
    }))
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = futures::stream::unfold(
        (Some(first), Some(rest), Some(sent_tx), Some(go_rx)),
        |(a, b, sent, go)| async move {
            if let Some(a) = a {
                return Some((Ok::<_, std::io::Error>(a), (None, b, sent, go)));
            }
            if let Some(b) = b {
                let _ = sent.unwrap().send(());
                let _ = go.unwrap().await;
                return Some((Ok(b), (None, None, None, None)));
            }
            None
        },
    );
    let req = alice
        .request()
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(stream));
    let in_flight = tokio::spawn(async move { req.send().await });
    sent_rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(s.child_mut(), "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Still running: it waits for the in-flight request.
    assert!(
        s.child_mut().try_wait().unwrap().is_none(),
        "exited before the request finished"
    );
    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", s.base_url))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "new connections are refused while draining"
    );
    go_tx.send(()).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["createProject"]["version"], 1, "{body}");
    let status = s.child_mut().wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(s.count("projects").await, 1);
    assert!(s.staging_files().is_empty());
}

/// A query text is parsed once and its document reused, yet every request is still validated
/// and answered with its own variables.
async fn parsed_queries_are_reused_and_still_validated(s: TestServer) {
    const PARSED: &str = "atelier_graphql_documents_parsed_total";
    const REUSED: &str = "atelier_graphql_documents_reused_total";
    let alice = s.user("alice").await;
    let a = alice.create_project("a", empty_project()).await;
    let b = alice.create_project("b", empty_project()).await;
    let q = "query($id: ID!) { project(id: $id) { id title } }";
    let (parsed, reused) = (s.metric(PARSED).await, s.metric(REUSED).await);
    for _ in 0..5 {
        for p in [&a, &b] {
            let d = alice.data(q, json!({ "id": p["id"] })).await;
            assert_eq!(d["project"]["title"], p["title"]);
        }
    }
    assert_eq!(s.metric(PARSED).await - parsed, 1);
    assert_eq!(s.metric(REUSED).await - reused, 9);

    // This text parses (and so is cached) but does not validate: it fails every time.
    let invalid = "query { project(id: \"1\") { id nope } }";
    for _ in 0..3 {
        let err = alice.error(invalid, json!({})).await;
        assert_eq!(code(&err), "BAD_USER_INPUT");
        assert!(err["message"].as_str().unwrap().contains("nope"), "{err}");
    }
    assert_eq!(s.metric(PARSED).await - parsed, 2);
    // A syntax error is reported as before and not cached.
    let parsed = s.metric(PARSED).await;
    for _ in 0..2 {
        let err = alice.error("query { project(id: ", json!({})).await;
        assert_eq!(code(&err), "BAD_USER_INPUT");
    }
    assert_eq!(s.metric(PARSED).await, parsed);
}
