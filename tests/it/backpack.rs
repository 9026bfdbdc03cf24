//! The backpack: saved with two blobs in one transaction, private to its owner, within a quota
//! that holds under concurrent saves, and a failed save leaves no row and no file.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, code, png, svg},
};

const SAVE: &str = "mutation($n: String!, $t: BackpackItemType!, $m: String!, $b: Upload!, $th: Upload!) { saveBackpackItem(input: {name: $n, type: $t, mime: $m, body: $b, thumbnail: $th}) { id name type mime bodyUrl thumbnailUrl size } }";
const LIST: &str = "{ backpack(first: 100) { edges { node { id name } } } }";
const DELETE: &str = "mutation($id: ID!) { deleteBackpackItem(id: $id) }";

both_backends!(
    saved_items_are_private_to_their_owner,
    a_failed_save_leaves_no_row_and_no_file,
);

async fn save(c: &Client, name: &str, kind: &str, mime: &str, body: Vec<u8>) -> Value {
    let operations = json!({ "query": SAVE, "variables": { "n": name, "t": kind, "m": mime, "b": null, "th": null } });
    let form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text(
            "map",
            json!({ "0": ["variables.b"], "1": ["variables.th"] }).to_string(),
        )
        .part("0", reqwest::multipart::Part::bytes(body).file_name("body"))
        .part(
            "1",
            reqwest::multipart::Part::bytes(png(0)).file_name("thumb.png"),
        );
    c.request()
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn fetch(s: &TestServer, c: &Client, url: &str) -> (u16, String, Vec<u8>) {
    let mut req = c.http.get(format!("{}{url}", s.base_url));
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

async fn saved_items_are_private_to_their_owner(s: TestServer) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let body = svg(7);
    let saved = save(&alice, "Cat", "COSTUME", "image/svg+xml", body.clone()).await;
    let item = &saved["data"]["saveBackpackItem"];
    assert_eq!(item["type"], "COSTUME", "{saved}");
    assert_eq!(item["size"], (body.len() + png(0).len()) as i64);
    let id = item["id"].as_str().unwrap().to_owned();
    let second = save(
        &alice,
        "Script",
        "SCRIPT",
        "application/json",
        b"[{\"opcode\":\"x\"}]".to_vec(),
    )
    .await;
    let second_id = second["data"]["saveBackpackItem"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let listed = alice.data(LIST, json!({})).await;
    let ids: Vec<&str> = listed["backpack"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_id.as_str(), id.as_str()], "newest first");
    let (status, ct, bytes) = fetch(&s, &alice, item["bodyUrl"].as_str().unwrap()).await;
    assert_eq!((status, ct.as_str(), bytes), (200, "image/svg+xml", body));
    let (status, ct, bytes) = fetch(&s, &alice, item["thumbnailUrl"].as_str().unwrap()).await;
    assert_eq!((status, ct.as_str(), bytes), (200, "image/png", png(0)));

    // Bob sees nothing of it, can fetch nothing and delete nothing.
    assert_eq!(
        bob.data(LIST, json!({})).await["backpack"]["edges"],
        json!([])
    );
    assert_eq!(
        fetch(&s, &bob, item["bodyUrl"].as_str().unwrap()).await.0,
        404
    );
    assert_eq!(
        fetch(&s, &s.anonymous(), item["bodyUrl"].as_str().unwrap())
            .await
            .0,
        401
    );
    let e = bob.error(DELETE, json!({ "id": id })).await;
    assert_eq!(code(&e), "NOT_FOUND");
    assert_eq!(s.count("backpack_items").await, 2);

    assert_eq!(
        alice.data(DELETE, json!({ "id": id })).await["deleteBackpackItem"],
        id
    );
    assert_eq!(s.count("backpack_items").await, 1);
}

async fn a_failed_save_leaves_no_row_and_no_file(s: TestServer) {
    let alice = s.user("alice").await;
    // Wrong mime for the bytes, bytes that are not the kind, a bad thumbnail.
    let e = save(&alice, "Cat", "COSTUME", "image/png", svg(1)).await;
    assert_eq!(code(&e["errors"][0]), "BAD_USER_INPUT", "{e}");
    assert_eq!(e["errors"][0]["extensions"]["field"], "mime");
    let e = save(&alice, "Meow", "SOUND", "audio/wav", svg(1)).await;
    assert_eq!(e["errors"][0]["extensions"]["field"], "body", "{e}");
    assert_eq!(s.count("backpack_items").await, 0);
    assert!(s.blob_files().is_empty(), "{:?}", s.blob_files());
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
}

/// 50 concurrent saves against a quota of 10 items: exactly 10 are saved, the others answer
/// CONFLICT/QUOTA_EXCEEDED, and no file of a refused save stays behind. On PostgreSQL the
/// saves are spread over two server processes: the quota's lock is the database's.
async fn quota_holds_under_concurrent_saves(backend: Backend) {
    let limit = [("ATELIER_BACKPACK_MAX_ITEMS", "10")];
    let s = TestServer::start_with(backend, &limit).await;
    let alice = s.user("alice").await;
    let other = (backend == Backend::Postgres).then(|| s.second_process(&limit));
    let alice_b = match &other {
        Some(o) => Client::new(o.graphql_url(), alice.token.clone()),
        None => alice.clone(),
    };
    let answers = join_all((0..50).map(|i| {
        let c = if i % 2 == 0 { &alice } else { &alice_b };
        save(c, "Cat", "COSTUME", "image/svg+xml", svg(100 + i))
    }))
    .await;
    let saved = answers
        .iter()
        .filter(|a| a["data"]["saveBackpackItem"]["id"].is_string())
        .count();
    assert_eq!(saved, 10);
    for a in answers
        .iter()
        .filter(|a| a["data"]["saveBackpackItem"].is_null())
    {
        assert_eq!(code(&a["errors"][0]), "CONFLICT", "{a}");
        assert_eq!(a["errors"][0]["extensions"]["reason"], "QUOTA_EXCEEDED");
    }
    assert_eq!(s.count("backpack_items").await, 10);
    // 10 bodies and the one thumbnail they share.
    assert_eq!(s.blob_files().len(), 11, "{:?}", s.blob_files());
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_under_concurrent_saves_sqlite() {
    quota_holds_under_concurrent_saves(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn quota_holds_under_concurrent_saves_postgres() {
    quota_holds_under_concurrent_saves(Backend::Postgres).await;
}
