//! Every error code the foundation produces, with its extensions, and that failed mutations
//! leave no row and no file behind.

use serde_json::json;

use crate::api::{CREATE_PROJECT as CREATE, UPDATE_PROJECT as UPDATE};
use crate::{
    both_backends,
    harness::{TestServer, code, empty_project},
};

both_backends!(
    version_conflict_carries_versions,
    bad_input_names_the_field,
    oversized_content_is_rejected,
    malformed_requests_are_client_errors,
    failed_mutations_leave_no_row_and_no_file,
);

async fn version_conflict_carries_versions(s: TestServer) {
    let alice = s.user("alice").await;
    let id = alice
        .try_create_project("v", empty_project())
        .await
        .unwrap()
        .id;
    let v2 = alice
        .update_project(&id, 1, Some("v2"), None)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let e = alice
        .update_project(&id, 1, Some("stale"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "VERSION_CONFLICT");
    assert_eq!(e.error()["extensions"]["expectedVersion"], 1);
    assert_eq!(e.error()["extensions"]["currentVersion"], 2);
    let e = alice.delete_project(&id, Some(1)).await.unwrap_err();
    assert_eq!(e.code(), "VERSION_CONFLICT");
    assert_eq!(e.error()["extensions"]["currentVersion"], 2);
    let p = alice.get_project(&id).await.unwrap().expect("visible");
    assert_eq!((p.title.as_str(), p.version), ("v2", 2));
    assert_eq!(p.content, Some(empty_project()));
}

async fn bad_input_names_the_field(s: TestServer) {
    let alice = s.user("alice").await;
    for (content, what) in [
        (json!([1, 2]), "array"),
        (json!("text"), "string"),
        (json!({ "sprites": [] }), "no targets"),
        (json!({ "targets": {} }), "targets not an array"),
        (
            json!({ "targets": [{ "costumes": [{ "md5ext": "nothex.svg" }] }] }),
            "bad md5ext",
        ),
    ] {
        let e = alice.error(CREATE, json!({ "t": "x", "c": content })).await;
        assert_eq!(code(&e), "BAD_USER_INPUT", "{what}: {e}");
        assert_eq!(e["extensions"]["field"], "content", "{what}");
    }
    for title in ["", "   ", &"x".repeat(201)] {
        let e = alice
            .error(CREATE, json!({ "t": title, "c": empty_project() }))
            .await;
        assert_eq!(code(&e), "BAD_USER_INPUT");
        assert_eq!(e["extensions"]["field"], "title");
    }
    let e = alice
        .error(UPDATE, json!({ "id": "abc", "v": 1, "t": "x" }))
        .await;
    assert_eq!(code(&e), "BAD_USER_INPUT");
    assert_eq!(e["extensions"]["field"], "id");
    let e = alice
        .error("{ projects(first: -1) { edges { cursor } } }", json!({}))
        .await;
    assert_eq!(e["extensions"]["field"], "first");
    let e = alice
        .error(
            "{ projects(after: \"!!garbage\") { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&e), "BAD_USER_INPUT");
    assert_eq!(e["extensions"]["field"], "after");
    let id = alice.create_project("ok", empty_project()).await["id"].clone();
    let e = alice.error(UPDATE, json!({ "id": id, "v": 1 })).await;
    assert_eq!(
        code(&e),
        "BAD_USER_INPUT",
        "an update with nothing to change"
    );
    assert_eq!(s.count("projects").await, 1);
}

async fn oversized_content_is_rejected(s: TestServer) {
    let alice = s.user("alice").await;
    // 11 MiB of JSON: over the 10 MiB content limit, under the request limit.
    let big = "a".repeat(11 * 1024 * 1024);
    let e = alice
        .error(
            CREATE,
            json!({ "t": "big", "c": { "targets": [], "blob": big } }),
        )
        .await;
    assert_eq!(code(&e), "PAYLOAD_TOO_LARGE");
    assert_eq!(e["extensions"]["limit"], 10 * 1024 * 1024);
    // Just under the limit is fine.
    let fits = "a".repeat(10 * 1024 * 1024 - 100);
    alice
        .create_project("fits", json!({ "targets": [], "blob": fits }))
        .await;
    assert_eq!(s.count("projects").await, 1);
    assert_eq!(s.blob_files().len(), 1);

    // A request body over the request limit never reaches GraphQL: 413 with a code.
    let huge = "a".repeat(33 * 1024 * 1024);
    let resp = alice
        .request()
        .json(&json!({ "query": CREATE, "variables": { "t": "huge", "c": { "targets": [], "x": huge } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(code(&body["errors"][0]), "PAYLOAD_TOO_LARGE");
    assert_eq!(s.count("projects").await, 1);
    assert!(s.staging_files().is_empty());
}

async fn malformed_requests_are_client_errors(s: TestServer) {
    let alice = s.user("alice").await;
    let resp = alice
        .request()
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT");

    let e = alice.error("{ projects( }", json!({})).await;
    assert_eq!(code(&e), "BAD_USER_INPUT", "syntax errors carry a code too");
    let e = alice.error("{ noSuchField }", json!({})).await;
    assert_eq!(code(&e), "BAD_USER_INPUT");
    let e = alice.error(CREATE, json!({ "t": 5 })).await;
    assert_eq!(code(&e), "BAD_USER_INPUT", "variables of the wrong type");

    // The server is still healthy afterwards, and no error ever was a 500.
    let health = reqwest::get(format!("{}/healthz", s.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(!s.server_log().contains("panicked"));
}

async fn failed_mutations_leave_no_row_and_no_file(s: TestServer) {
    let alice = s.user("alice").await;
    let missing = json!({ "targets": [{ "name": "Sprite1", "costumes": [
        { "assetId": "0123456789abcdef0123456789abcdef", "dataFormat": "svg", "md5ext": "0123456789abcdef0123456789abcdef.svg" }
    ], "sounds": [ { "md5ext": "fedcba9876543210fedcba9876543210.wav" } ] }] });
    // The content is staged before the transaction finds the assets missing.
    let e = alice.error(CREATE, json!({ "t": "m", "c": missing })).await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(
        e["extensions"]["missing"],
        json!([
            "0123456789abcdef0123456789abcdef.svg",
            "fedcba9876543210fedcba9876543210.wav"
        ])
    );
    assert_eq!(s.count("projects").await, 0);
    assert!(
        s.blob_files().is_empty(),
        "no blob published: {:?}",
        s.blob_files()
    );
    assert!(
        s.staging_files().is_empty(),
        "staging cleaned: {:?}",
        s.staging_files()
    );

    let id = alice.create_project("ok", empty_project()).await["id"].clone();
    let blobs = s.blob_files();
    // An update whose content was staged but whose version check fails.
    alice
        .data(UPDATE, json!({ "id": id, "v": 1, "t": "v2" }))
        .await;
    let e = alice
        .error(
            UPDATE,
            json!({ "id": id, "v": 1, "c": { "targets": [], "new": true } }),
        )
        .await;
    assert_eq!(code(&e), "VERSION_CONFLICT");
    let e = alice
        .error(UPDATE, json!({ "id": id, "v": 2, "c": missing }))
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(s.blob_files(), blobs, "no new blob after failed updates");
    assert!(s.staging_files().is_empty());
    assert_eq!(s.count("project_assets").await, 0);
    let p = alice
        .data(
            "query($id: ID!) { project(id: $id) { version content } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(p["project"]["version"], 2);
    assert_eq!(p["project"]["content"], empty_project());
}
