//! `Idempotency-Key`: a repeated mutation request never applies twice, answers as the first
//! did, waits for a concurrent twin, and refuses a key reused for another request.

use futures::future::join_all;
use serde_json::json;

use crate::api::{CREATE_PROJECT as CREATE, UPDATE_PROJECT as UPDATE};
use crate::{
    both_backends,
    harness::{Client, PgDatabase, TestServer, code, empty_project, svg},
    proxy::Proxy,
};

both_backends!(
    concurrent_twins_write_once_and_answer_alike,
    a_repeat_answers_as_the_first_did,
    a_key_reused_for_another_request_is_a_conflict,
    keys_of_different_users_never_collide,
    uploads_are_idempotent_too,
);

/// 50 concurrent identical requests with one key: one write, 50 equal answers.
async fn concurrent_twins_write_once_and_answer_alike(s: TestServer) {
    let alice = s.user("alice").await;
    let keyed = alice.with_key("class-template-1");
    let answers = join_all((0..50).map(|_| {
        keyed.call(
            CREATE,
            json!({ "t": "Class template", "c": empty_project() }),
        )
    }))
    .await;
    let first = &answers[0].2;
    assert!(first.get("errors").is_none(), "{first}");
    for (status, _, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(body, first, "every twin gets the same answer");
    }
    assert_eq!(s.count("projects").await, 1);
    assert_eq!(s.count("idempotency_effects").await, 1);
    assert!(
        answers.iter().filter(|(_, replayed, _)| *replayed).count() >= 1,
        "the twins were answered from the record"
    );
}

/// A repeat is not applied again: an update repeated with its key answers the version it
/// produced (no VERSION_CONFLICT against its own write), a create keeps its id, and an error
/// answer is repeated with the same code.
async fn a_repeat_answers_as_the_first_did(s: TestServer) {
    let alice = s.user("alice").await;
    let create = alice.with_key("create-1");
    let (_, replayed, first) = create
        .call(CREATE, json!({ "t": "Mine", "c": empty_project() }))
        .await;
    assert!(!replayed);
    let id = first["data"]["createProject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, replayed, again) = create
        .call(CREATE, json!({ "t": "Mine", "c": empty_project() }))
        .await;
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(s.count("projects").await, 1);

    let rename = alice.with_key("rename-1");
    let vars = json!({ "id": id, "v": 1, "t": "Renamed" });
    let (_, _, first) = rename.call(UPDATE, vars.clone()).await;
    assert_eq!(first["data"]["updateProject"]["version"], 2, "{first}");
    let (_, replayed, again) = rename.call(UPDATE, vars).await;
    assert!(replayed);
    assert_eq!(again, first, "no VERSION_CONFLICT against its own write");
    let now = alice
        .data(
            "query($id: ID!) { project(id: $id) { version } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(now["project"]["version"], 2, "applied once");

    // An error is an answer too.
    let stale = alice.with_key("stale-1");
    let vars = json!({ "id": id, "v": 1, "t": "Stale" });
    let (_, _, first) = stale.call(UPDATE, vars.clone()).await;
    assert_eq!(code(&first["errors"][0]), "VERSION_CONFLICT");
    let (_, replayed, again) = stale.call(UPDATE, vars).await;
    assert!(replayed);
    assert_eq!(again, first);
}

/// The same key with other variables, another query or another operation: CONFLICT with
/// reason IDEMPOTENCY_KEY_REUSED, and nothing changes.
async fn a_key_reused_for_another_request_is_a_conflict(s: TestServer) {
    let alice = s.user("alice").await;
    let keyed = alice.with_key("k");
    let (_, _, first) = keyed
        .call(CREATE, json!({ "t": "One", "c": empty_project() }))
        .await;
    assert!(first.get("errors").is_none(), "{first}");
    for (query, vars) in [
        (CREATE, json!({ "t": "Two", "c": empty_project() })),
        (
            "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id } }",
            json!({ "t": "One", "c": empty_project() }),
        ),
    ] {
        let (status, _, body) = keyed.call(query, vars).await;
        let e = &body["errors"][0];
        assert_eq!(code(e), "CONFLICT", "{body}");
        assert_eq!(e["extensions"]["reason"], "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(status, 409);
    }
    assert_eq!(s.count("projects").await, 1);
    // A malformed key is refused before anything runs.
    let (status, _, body) = alice
        .with_key(&"x".repeat(256))
        .call(CREATE, json!({ "t": "Long", "c": empty_project() }))
        .await;
    assert_eq!((status, code(&body["errors"][0])), (400, "BAD_USER_INPUT"));
    assert_eq!(s.count("projects").await, 1);
}

/// Keys are per user: the same key from two users is two requests.
async fn keys_of_different_users_never_collide(s: TestServer) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let vars = json!({ "t": "Same", "c": empty_project() });
    let (_, _, a) = alice.with_key("shared").call(CREATE, vars.clone()).await;
    let (_, replayed, b) = bob.with_key("shared").call(CREATE, vars).await;
    assert!(!replayed);
    assert_ne!(
        a["data"]["createProject"]["id"],
        b["data"]["createProject"]["id"]
    );
    assert_eq!(s.count("projects").await, 2);
}

/// A multipart upload with a key: the repeat is answered from the record (the same
/// `created: true`), and other bytes under the same key are refused.
async fn uploads_are_idempotent_too(s: TestServer) {
    let alice = s.user("alice").await;
    let keyed = alice.with_key("upload-1");
    let (_, _, first) = keyed.upload(svg(1), "IMAGE_VECTOR").await;
    assert_eq!(first["data"]["uploadAsset"]["created"], true, "{first}");
    let (_, replayed, again) = keyed.upload(svg(1), "IMAGE_VECTOR").await;
    assert!(replayed);
    assert_eq!(again, first);
    let (_, _, other) = keyed.upload(svg(2), "IMAGE_VECTOR").await;
    assert_eq!(
        other["errors"][0]["extensions"]["reason"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(s.count_assets().await, 1);
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
}

/// The COMMIT's reply is lost, the client retries with its key: exactly one project, and the
/// retry answers its id. A COMMIT that never arrived is performed by the retry, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn retry_after_a_lost_reply_applies_once() {
    let pg = PgDatabase::create().await;
    let proxy = Proxy::start().await;
    let s = proxy.server(pg, &[]);
    let alice = s.user("alice").await;

    let keyed = alice.with_key("lost-reply");
    let vars = json!({ "t": "Saved once", "c": empty_project() });
    proxy.lose_next_commit_replies(1);
    let (_, _, first) = keyed.call(CREATE, vars.clone()).await;
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(code(&first["errors"][0]), "UNAVAILABLE", "{first}");
    let (_, _, retry) = keyed.call(CREATE, vars.clone()).await;
    assert!(retry.get("errors").is_none(), "{retry}");
    assert_eq!(s.count("projects").await, 1, "applied exactly once");
    let db_id = s.db().await;
    let row = sea_orm::ConnectionTrait::query_one_raw(
        &db_id,
        sea_orm::Statement::from_string(db_id.get_database_backend(), "SELECT id FROM projects"),
    )
    .await
    .unwrap()
    .unwrap();
    let id: i64 = row.try_get("", "id").unwrap();
    assert_eq!(retry["data"]["createProject"]["id"], id.to_string());
    let (_, replayed, third) = keyed.call(CREATE, vars).await;
    assert!(replayed);
    assert_eq!(third, retry);

    let keyed = alice.with_key("never-arrived");
    let vars = json!({ "t": "Second", "c": empty_project() });
    proxy.lose_next_commits(1);
    let (_, _, first) = keyed.call(CREATE, vars.clone()).await;
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(code(&first["errors"][0]), "UNAVAILABLE", "{first}");
    assert_eq!(s.count("projects").await, 1);
    let (_, replayed, retry) = keyed.call(CREATE, vars).await;
    assert!(!replayed);
    assert!(retry.get("errors").is_none(), "{retry}");
    assert_eq!(s.count("projects").await, 2);
}

/// Idempotency holds across processes: a twin sent to a second server on the same database
/// gets the first one's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn keys_hold_across_processes() {
    let s = TestServer::start(crate::harness::Backend::Postgres).await;
    let other = s.second_process(&[]);
    let alice = s.user("alice").await;
    let alice_b = Client::new(other.graphql_url(), alice.token.clone());
    let vars = json!({ "t": "Across", "c": empty_project() });
    let answers = join_all((0..20).map(|i| {
        let c = if i % 2 == 0 { &alice } else { &alice_b };
        let keyed = c.with_key("across");
        let vars = vars.clone();
        async move { keyed.call(CREATE, vars).await }
    }))
    .await;
    for (_, _, body) in &answers {
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(body, &answers[0].2);
    }
    assert_eq!(s.count("projects").await, 1);
}
