//! `/scratch/backpack`: the backpack as the stock Scratch editor calls it (x-token header,
//! limit/offset paging, base64 JSON saves, `<host>/<item.body>` URLs, md5ext asset fallback).

use base64::Engine;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, TestServer, md5_hex, png, svg},
};

both_backends!(
    save_list_page_fetch_and_delete,
    only_the_owner_or_an_admin_reaches_a_backpack,
    bad_saves_are_refused_and_write_nothing,
    an_md5ext_segment_is_an_asset,
    concurrent_saves_of_the_same_item_both_land,
);

/// A signed-in browser's session token (`ses_…`, the cookie's value) works as x-token for its
/// own backpack only; after logout it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_token_works_as_x_token_sqlite() {
    a_session_token_works_as_x_token(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn a_session_token_works_as_x_token_postgres() {
    a_session_token_works_as_x_token(Backend::Postgres).await;
}

async fn a_session_token_works_as_x_token(backend: Backend) {
    use atelier_testkit::oidc::{Browser, FakeProvider};
    let p = FakeProvider::start().await;
    p.set_user("sam", "Sam", json!([]));
    let env = p.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = TestServer::start_with(backend, &env).await;
    let b = Browser::default();
    b.sign_in(&s.base_url, "sam").await;
    let session = b.session().expect("a session cookie");
    assert!(session.starts_with("ses_"), "{session}");
    let sam = user_id(&s, "sam").await;
    let (status, item) = post(&s, &session, sam, &costume("Sam's cat", 40)).await;
    assert_eq!(status, 200, "{item}");
    let (status, page) = list(&s, &session, sam, "limit=5&offset=0").await;
    assert_eq!(status, 200);
    assert_eq!(page[0]["name"], "Sam's cat");
    // Not another user's backpack.
    s.token_for("alice", "student").await;
    let alice = user_id(&s, "alice").await;
    let (status, _) = list(&s, &session, alice, "limit=5&offset=0").await;
    assert_eq!(status, 403);
    // After logout the token is nobody.
    let resp = b
        .post(
            &format!("{}/auth/logout", s.base_url),
            &[("x-atelier-csrf", "1")],
        )
        .await;
    assert_eq!(resp.status(), 204);
    let (status, body) = list(&s, &session, sam, "limit=5&offset=0").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn host(s: &TestServer) -> String {
    format!("{}/scratch/backpack", s.base_url)
}

async fn user_id(s: &TestServer, name: &str) -> i64 {
    s.scalar(&format!("SELECT id FROM users WHERE subject = '{name}'"))
        .await
}

fn costume(name: &str, n: usize) -> Value {
    json!({ "type": "costume", "mime": "image/svg+xml", "name": name, "body": b64(&svg(n)), "thumbnail": b64(&png(0)) })
}

async fn post(s: &TestServer, token: &str, owner: i64, item: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/{owner}", host(s)))
        .header("x-token", token)
        .json(item)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn get(s: &TestServer, token: Option<&str>, path: &str) -> (u16, Vec<u8>) {
    let mut req = reqwest::Client::new().get(format!("{}/{path}", host(s)));
    if let Some(t) = token {
        req = req.header("x-token", t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

async fn list(s: &TestServer, token: &str, owner: i64, query: &str) -> (u16, Value) {
    let (status, body) = get(s, Some(token), &format!("{owner}?{query}")).await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn delete(s: &TestServer, token: &str, owner: i64, item: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/{owner}/{item}", host(s)))
        .header("x-token", token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn save_list_page_fetch_and_delete(s: TestServer) {
    let token = s.token_for("alice", "student").await;
    let alice = user_id(&s, "alice").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, item) = post(&s, &token, alice, &costume(&format!("Cat {n}"), n)).await;
        assert_eq!(status, 200, "{item}");
        assert_eq!(item["type"], "costume");
        assert_eq!(item["mime"], "image/svg+xml");
        assert_eq!(item["name"], format!("Cat {n}"));
        // Costume bodies and thumbnails are named as assets: the editor adds a backpacked
        // costume to a project by `body` as an md5ext.
        assert_eq!(item["body"], format!("{}.svg", md5_hex(&svg(n))));
        assert_eq!(item["thumbnail"], format!("{}.png", md5_hex(&png(0))));
        ids.push(item["id"].as_str().unwrap().to_owned());
    }
    // Newest first, paged by limit/offset.
    let (status, page) = list(&s, &token, alice, "limit=2&offset=0").await;
    assert_eq!(status, 200);
    let got: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    let (_, rest) = list(&s, &token, alice, "limit=2&offset=2").await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], ids[0].as_str());
    assert_eq!(rest[0]["name"], "Cat 0");
    let (_, past) = list(&s, &token, alice, "limit=2&offset=3").await;
    assert_eq!(past, json!([]));
    let (status, _) = list(&s, &token, alice, "limit=51&offset=0").await;
    assert_eq!(status, 400);

    // The URLs the editor builds: `<host>/<body>` and `<host>/<thumbnail>`, fetched without
    // x-token (an `<img>`, the VM's web store): the md5 is the capability.
    let (status, body) = get(&s, None, rest[0]["body"].as_str().unwrap()).await;
    assert_eq!((status, body), (200, svg(0)));
    let (status, thumb) = get(&s, None, rest[0]["thumbnail"].as_str().unwrap()).await;
    assert_eq!((status, thumb), (200, png(0)));
    // Three bodies and one shared thumbnail, each one asset row.
    assert_eq!(s.count_assets().await, 4);

    // A script's body is no asset: `<id>/body`, for its owner only.
    let script = json!({ "type": "script", "mime": "application/json", "name": "Go", "body": b64(b"[{\"opcode\":\"x\"}]"), "thumbnail": b64(&png(1)) });
    let (status, saved) = post(&s, &token, alice, &script).await;
    assert_eq!(status, 200, "{saved}");
    let script_id = saved["id"].as_str().unwrap();
    assert_eq!(saved["body"], format!("{script_id}/body"));
    assert_eq!(saved["thumbnail"], format!("{}.png", md5_hex(&png(1))));
    let (status, body) = get(&s, Some(&token), &format!("{script_id}/body")).await;
    assert_eq!((status, body), (200, b"[{\"opcode\":\"x\"}]".to_vec()));
    let (status, _) = get(&s, None, &format!("{script_id}/body")).await;
    assert_eq!(status, 401);
    let (status, _) = delete(&s, &token, alice, script_id).await;
    assert_eq!(status, 200);

    let (status, answer) = delete(&s, &token, alice, &ids[1]).await;
    assert_eq!((status, answer), (200, json!({ "status": "ok" })));
    let (_, after) = list(&s, &token, alice, "limit=20&offset=0").await;
    assert_eq!(after.as_array().unwrap().len(), 2);
    assert_eq!(s.count("backpack_items").await, 2);
    let (status, answer) = delete(&s, &token, alice, &ids[1]).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("NOT_FOUND")));
}

async fn only_the_owner_or_an_admin_reaches_a_backpack(s: TestServer) {
    let alice_token = s.token_for("alice", "student").await;
    let bob_token = s.token_for("bob", "student").await;
    let admin_token = s.token_for("root", "admin").await;
    let alice = user_id(&s, "alice").await;
    let (_, item) = post(&s, &alice_token, alice, &costume("Cat", 1)).await;
    let id = item["id"].as_str().unwrap().to_owned();

    let (status, err) = list(&s, &bob_token, alice, "limit=20&offset=0").await;
    assert_eq!(
        (status, err["status"].as_str(), err["code"].as_str()),
        (403, Some("error"), Some("FORBIDDEN"))
    );
    let (status, err) = post(&s, &bob_token, alice, &costume("Dog", 2)).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = delete(&s, &bob_token, alice, &id).await;
    assert_eq!(status, 403);
    let (status, _) = get(&s, Some(&bob_token), &format!("{id}/body")).await;
    assert_eq!(status, 404);
    assert_eq!(s.count("backpack_items").await, 1);

    // No token, a garbage one, an empty one: 401.
    let (status, _) = get(&s, None, &format!("{alice}?limit=20&offset=0")).await;
    assert_eq!(status, 401);
    let (status, err) = list(&s, "garbage", alice, "limit=20&offset=0").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, _) = post(&s, "garbage", alice, &costume("Dog", 2)).await;
    assert_eq!(status, 401);
    let (status, _) = delete(&s, "ses_garbage", alice, &id).await;
    assert_eq!(status, 401);
    assert_eq!(s.count("backpack_items").await, 1);

    // An admin reaches anyone's backpack, and writes there as its owner.
    let (status, items) = list(&s, &admin_token, alice, "limit=20&offset=0").await;
    assert_eq!(status, 200);
    assert_eq!(items.as_array().unwrap().len(), 1);
    let (status, saved) = post(&s, &admin_token, alice, &costume("Admin's", 3)).await;
    assert_eq!(status, 200, "{saved}");
    let (_, items) = list(&s, &alice_token, alice, "limit=20&offset=0").await;
    assert_eq!(items[0]["name"], "Admin's");
    let (status, _) = delete(&s, &admin_token, alice, &id).await;
    assert_eq!(status, 200);
    // An item is deleted only from the backpack the path names.
    let bob = user_id(&s, "bob").await;
    let other = saved["id"].as_str().unwrap();
    let (status, _) = delete(&s, &admin_token, bob, other).await;
    assert_eq!(status, 404);
    assert_eq!(s.count("backpack_items").await, 1);
}

async fn bad_saves_are_refused_and_write_nothing(mut s: TestServer) {
    s.set_env("ATELIER_MAX_REQUEST_BYTES", "100000");
    s.restart();
    let token = s.token_for("alice", "student").await;
    let alice = user_id(&s, "alice").await;
    let blobs = s.blob_files().len();
    let mut bad_base64 = costume("Cat", 1);
    bad_base64["body"] = json!("not base64!!");
    let mut unknown_type = costume("Cat", 1);
    unknown_type["type"] = json!("backdrop");
    let mut wrong_body = costume("Cat", 1);
    wrong_body["type"] = json!("sound");
    let mut oversize = costume("Cat", 1);
    oversize["body"] = json!(b64(&vec![b'<'; 200_000]));
    for (item, status, code) in [
        (bad_base64, 400, "BAD_USER_INPUT"),
        (unknown_type, 400, "BAD_USER_INPUT"),
        (wrong_body, 400, "BAD_USER_INPUT"),
        (json!({ "type": "costume" }), 400, "BAD_USER_INPUT"),
        (oversize, 413, "PAYLOAD_TOO_LARGE"),
    ] {
        let (got, err) = post(&s, &token, alice, &item).await;
        assert_eq!(
            (got, err["status"].as_str(), err["code"].as_str()),
            (status, Some("error"), Some(code)),
            "{err}"
        );
    }
    let (status, err) = post(&s, &token, 0, &costume("Cat", 1)).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("BAD_USER_INPUT"))
    );
    assert_eq!(s.count("backpack_items").await, 0);
    assert_eq!(s.count_assets().await, 0);
    assert_eq!(s.blob_files().len(), blobs);
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
}

async fn an_md5ext_segment_is_an_asset(s: TestServer) {
    let alice = s.user("alice").await;
    let bytes = svg(9);
    alice.upload(bytes.clone(), "IMAGE_VECTOR").await;
    let md5 = md5_hex(&bytes);
    let (status, body) = get(&s, None, &format!("{md5}.svg")).await;
    assert_eq!((status, body), (200, bytes));
    let resp = reqwest::get(format!("{}/{md5}.svg", host(&s)))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    assert!(resp.headers().get("etag").is_some());
    let (status, _) = get(&s, None, &format!("{}.svg", md5_hex(b"absent"))).await;
    assert_eq!(status, 404);
    // Not an md5ext (unknown extension): a user id, which it is not.
    let (status, body) = get(&s, None, &format!("{md5}.exe")).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
}

async fn concurrent_saves_of_the_same_item_both_land(s: TestServer) {
    let token = s.token_for("alice", "student").await;
    let alice = user_id(&s, "alice").await;
    let item = costume("Cat", 4);
    let answers = join_all((0..4).map(|_| post(&s, &token, alice, &item))).await;
    let mut ids: Vec<String> = answers
        .iter()
        .map(|(status, a)| {
            assert_eq!(*status, 200, "{a}");
            a["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    let (_, items) = list(&s, &token, alice, "limit=20&offset=0").await;
    assert_eq!(items.as_array().unwrap().len(), 4);
    for i in items.as_array().unwrap() {
        let (status, body) = get(&s, None, i["body"].as_str().unwrap()).await;
        assert_eq!((status, body), (200, svg(4)));
    }
    // The racers published one body asset and one thumbnail asset.
    assert_eq!(s.count_assets().await, 2);
}

/// The editor sends x-token cross-origin: the preflight must allow it (and DELETE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_allows_x_token_and_delete() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("ATELIER_CORS_ORIGINS", "https://editor.example")],
    )
    .await;
    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/1/2", host(&s)))
        .header("origin", "https://editor.example")
        .header("access-control-request-method", "DELETE")
        .header("access-control-request-headers", "x-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://editor.example");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("x-token"), "{allowed}");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("DELETE"), "{methods}");
}
