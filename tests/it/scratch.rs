//! The Scratch editor's wire (`/scratch/…`): load, save (last writer wins), create, copy and
//! remix with lineage, asset upload checks, project tokens, editing sessions (scope, expiry,
//! revocation of their parent credential), concurrent saves, and no token in the logs.

use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, md5_hex, svg},
};

both_backends!(
    load_save_create_copy_and_remix,
    asset_upload_checks_name_and_credentials,
    project_tokens_read_one_project_only,
    editing_sessions_are_scoped_and_end_with_their_credential,
    concurrent_saves_all_win_in_turn,
    a_reader_loads_but_never_saves,
    an_editing_session_follows_the_project_it_creates,
);

const PROJECT: &str =
    "query($id: ID!) { project(id: $id) { id version content remixedFrom { id } } }";

fn token_of(c: &Client) -> &str {
    c.token.as_deref().unwrap()
}

async fn created(c: &Client, title: &str) -> String {
    c.create_project(title, json!({"targets": [], "meta": {"semver": "3.0.0"}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn project(c: &Client, id: &str) -> Value {
    c.data(PROJECT, json!({"id": id})).await["project"].clone()
}

async fn load_save_create_copy_and_remix(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let id = created(&alice, "mine").await;
    let url = format!("{}/scratch/projects/{id}", s.base_url);

    let (status, body) = send(http.get(&url).bearer_auth(token_of(&alice))).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"targets": [], "meta": {"semver": "3.0.0"}}));

    let content =
        json!({"targets": [{"name": "Stage", "isStage": true}], "meta": {"semver": "3.0.0"}});
    let (status, body) = send(
        http.put(&url)
            .bearer_auth(token_of(&alice))
            .header("content-type", "application/json")
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "content-name": id, "version": 2})
    );
    let p = project(&alice, &id).await;
    assert_eq!(p["version"], 2);
    assert_eq!(p["content"], content);

    // Invalid content: a clear 4xx, nothing changes.
    let (status, body) = send(http.put(&url).bearer_auth(token_of(&alice)).body("[1,2")).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
    assert_eq!(body["code"], "BAD_USER_INPUT");
    assert_eq!(project(&alice, &id).await["version"], 2);

    // Nobody else may save it, and an anonymous load is not found.
    let bob = s.user("bob").await;
    let (status, body) = send(
        http.put(&url)
            .bearer_auth(token_of(&bob))
            .body(content.to_string()),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    let (status, _) = send(http.get(&url)).await;
    assert_eq!(status, 404);
    let (status, body) = send(http.put(&url).body(content.to_string())).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(project(&alice, &id).await["version"], 2);

    // Create.
    let new = json!({"targets": [], "meta": {"semver": "3.0.0", "agent": "editor"}});
    let (status, body) = send(
        http.post(format!("{}/scratch/projects/?title=Fresh", s.base_url))
            .bearer_auth(token_of(&alice))
            .body(new.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let new_id = body["content-name"].as_str().unwrap().to_owned();
    let p = project(&alice, &new_id).await;
    assert_eq!(
        (p["version"].clone(), p["content"].clone()),
        (json!(1), new.clone())
    );
    assert_eq!(p["remixedFrom"], Value::Null);

    // Copy and remix: lineage, the posted content, by whoever may read the original.
    for flag in ["is_copy", "is_remix"] {
        let (status, body) = send(
            http.post(format!(
                "{}/scratch/projects/?{flag}=1&original_id={id}&title=Mine%20too",
                s.base_url
            ))
            .bearer_auth(token_of(&alice))
            .body(new.to_string()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let copy = body["content-name"].as_str().unwrap().to_owned();
        let p = project(&alice, &copy).await;
        assert_eq!(p["remixedFrom"]["id"], id.as_str());
        assert_eq!(p["content"], new);
        assert_eq!(p["version"], 1);
    }
    let (status, body) = send(
        http.post(format!(
            "{}/scratch/projects/?is_remix=1&original_id={id}",
            s.base_url
        ))
        .bearer_auth(token_of(&bob))
        .body(new.to_string()),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(s.count("projects").await, 4);
}

async fn asset_upload_checks_name_and_credentials(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let bytes = svg(7);
    let md5 = md5_hex(&bytes);
    let post = |name: String| http.post(format!("{}/scratch/assets/{name}", s.base_url));

    let wrong = md5_hex(b"other");
    let (status, body) = send(
        post(format!("{wrong}.svg"))
            .bearer_auth(token_of(&alice))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("CHECKSUM_MISMATCH")),
        "{body}"
    );
    let (status, body) = send(
        post(format!("{md5}.exe"))
            .bearer_auth(token_of(&alice))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("BAD_USER_INPUT"))
    );
    let (status, body) = send(post(format!("{md5}.svg")).body(bytes.clone())).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(s.count_assets().await, 0);

    let (status, body) = send(
        post(format!("{md5}.svg"))
            .bearer_auth(token_of(&alice))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "content-name": format!("{md5}.svg")})
    );
    // Again: deduplicated.
    let (status, _) = send(
        post(format!("{md5}.svg"))
            .bearer_auth(token_of(&alice))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.count_assets().await, 1);

    let got = http
        .get(format!(
            "{}/scratch/assets/internalapi/asset/{md5}.svg/get/",
            s.base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);

    // A save that references it now passes the asset check.
    let id = created(&alice, "with costume").await;
    let content = json!({"targets": [{"name": "Stage", "isStage": true, "costumes": [{"name": "c", "assetId": md5, "md5ext": format!("{md5}.svg"), "dataFormat": "svg"}], "sounds": []}], "meta": {"semver": "3.0.0"}});
    let (status, body) = send(
        http.put(format!("{}/scratch/projects/{id}", s.base_url))
            .bearer_auth(token_of(&alice))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let missing = md5_hex(b"never uploaded");
    let content = json!({"targets": [{"name": "Stage", "isStage": true, "costumes": [{"name": "c", "assetId": missing, "md5ext": format!("{missing}.svg"), "dataFormat": "svg"}], "sounds": []}], "meta": {"semver": "3.0.0"}});
    let (status, body) = send(
        http.put(format!("{}/scratch/projects/{id}", s.base_url))
            .bearer_auth(token_of(&alice))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("MISSING_ASSETS")),
        "{body}"
    );
    assert_eq!(body["missing"], json!([format!("{missing}.svg")]));
    assert_eq!(project(&alice, &id).await["version"], 2);
}

const PROJECT_TOKEN: &str = "query($id: ID!) { projectToken(id: $id) { token expiresAt } }";
const OPEN: &str =
    "mutation($id: ID!) { openEditor(projectId: $id) { token projectHost assetHost expiresAt } }";

async fn project_tokens_read_one_project_only(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let id = created(&alice, "one").await;
    let other = created(&alice, "two").await;
    let t = alice.data(PROJECT_TOKEN, json!({"id": id})).await["projectToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) =
        send(http.get(format!("{}/scratch/projects/{id}?token={t}", s.base_url))).await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["semver"], "3.0.0");
    let (status, body) =
        send(http.get(format!("{}/scratch/projects/{other}?token={t}", s.base_url))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    // Read only: a PUT does not read ?token= at all.
    let (status, _) = send(
        http.put(format!("{}/scratch/projects/{id}?token={t}", s.base_url))
            .body(json!({"targets": []}).to_string()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(
        http.put(format!("{}/scratch/projects/{id}", s.base_url))
            .bearer_auth(&t)
            .body("{\"targets\":[]}"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(project(&alice, &id).await["version"], 1);
    // An API token (or a session token) in the URL is refused.
    let (status, body) = send(http.get(format!(
        "{}/scratch/projects/{id}?token={}",
        s.base_url,
        token_of(&alice)
    )))
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("BAD_USER_INPUT"))
    );
    let (status, _) = send(http.get(format!(
        "{}/scratch/projects/{id}?token=ses_whatever",
        s.base_url
    )))
    .await;
    assert_eq!(status, 400);
    // Someone who cannot read the project gets no token for it.
    let bob = s.user("bob").await;
    let err = bob.error(PROJECT_TOKEN, json!({"id": id})).await;
    assert_eq!(crate::harness::code(&err), "NOT_FOUND");
    assert_no_token_logged(&s, &[&t, token_of(&alice), token_of(&bob)]);
}

fn assert_no_token_logged(s: &TestServer, tokens: &[&str]) {
    let log = s.server_log();
    assert!(log.contains("/scratch/"), "the server log is captured");
    for t in tokens {
        assert!(!log.contains(t), "a token appears in the server log");
    }
}

async fn editing_sessions_are_scoped_and_end_with_their_credential(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let id = created(&alice, "edited").await;
    let other = created(&alice, "other").await;
    let grant = alice.data(OPEN, json!({"id": id})).await["openEditor"].clone();
    let token = grant["token"].as_str().unwrap().to_owned();
    let host = grant["projectHost"].as_str().unwrap().to_owned();
    let assets = grant["assetHost"].as_str().unwrap().to_owned();
    assert_eq!(
        host,
        format!("{}/scratch/sessions/{token}/projects", s.base_url)
    );
    assert_eq!(
        assets,
        format!("{}/scratch/sessions/{token}/assets", s.base_url)
    );

    let (status, _) = send(http.get(format!("{host}/{id}"))).await;
    assert_eq!(status, 200);
    let (status, body) = send(http.get(format!("{host}/{other}"))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    let content = json!({"targets": [], "meta": {"semver": "3.0.0", "via": "session"}});
    let (status, body) = send(http.put(format!("{host}/{id}")).body(content.to_string())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let (status, _) = send(
        http.put(format!("{host}/{other}"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(project(&alice, &other).await["version"], 1);
    let bytes = svg(3);
    let md5 = md5_hex(&bytes);
    let (status, body) = send(http.post(format!("{assets}/{md5}.svg")).body(bytes.clone())).await;
    assert_eq!(status, 200, "{body}");
    let got = http
        .get(format!("{assets}/internalapi/asset/{md5}.svg/get/"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);

    // Who cannot read the project opens no session of it.
    let carol = s.user("carol").await;
    let err = carol.error(OPEN, json!({"id": id})).await;
    assert_eq!(crate::harness::code(&err), "NOT_FOUND");
    // An editing token is no bearer token for the plain routes.
    let (status, _) = send(
        http.get(format!("{}/scratch/projects/{id}", s.base_url))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 401);

    // Revoking the API token the session was opened with ends the session.
    let (ok, _) = s.cli(&["token", "revoke", token_of(&alice)]);
    assert!(ok);
    let (status, body) = send(http.get(format!("{host}/{id}"))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, _) = send(http.put(format!("{host}/{id}")).body(content.to_string())).await;
    assert_eq!(status, 401);
    assert_no_token_logged(&s, &[&token, token_of(&alice), token_of(&carol)]);
}

/// File > New, "Save as a copy" and a remix through an editing session (Atelier's own page,
/// a cross-site editor): the editor goes on with the new project through the same hosts, so
/// the session follows it (and no longer authorizes the one it left).
async fn an_editing_session_follows_the_project_it_creates(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let id = created(&alice, "first").await;
    let grant = alice.data(OPEN, json!({"id": id})).await["openEditor"].clone();
    let host = grant["projectHost"].as_str().unwrap().to_owned();
    let content = json!({"targets": [], "meta": {"semver": "3.0.0", "by": "new"}});

    // File > New: a project of Alice's; its save goes through the same session.
    let (status, body) = send(http.post(format!("{host}/")).body(content.to_string())).await;
    assert_eq!(status, 200, "{body}");
    let new_id = body["content-name"].as_str().unwrap().to_owned();
    let (status, body) = send(
        http.put(format!("{host}/{new_id}"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!((status, body["version"].clone()), (200, json!(2)), "{body}");
    let p = project(&alice, &new_id).await;
    assert_eq!(
        (p["version"].clone(), p["content"].clone()),
        (json!(2), content.clone())
    );
    // The project it left is no longer the session's.
    let (status, _) = send(http.put(format!("{host}/{id}")).body(content.to_string())).await;
    assert_eq!(status, 403);
    let (status, _) = send(
        http.post(format!("{host}/?is_copy=1&original_id={id}"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(project(&alice, &id).await["version"], 1);

    // Save as a copy: the copy, with lineage, is the session's next project.
    let (status, body) = send(
        http.post(format!("{host}/?is_copy=1&original_id={new_id}&title=Copy"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let copy = body["content-name"].as_str().unwrap().to_owned();
    let (status, _) = send(http.put(format!("{host}/{copy}")).body(content.to_string())).await;
    assert_eq!(status, 200);
    let p = project(&alice, &copy).await;
    assert_eq!(
        (p["version"].clone(), p["remixedFrom"]["id"].clone()),
        (json!(2), json!(new_id))
    );

    // A reader's session: read-only on the original, a remix it may then save.
    let bob = s.user("bob").await;
    let group = s.cli(&["group", "create", "7C"]).1.trim().to_owned();
    for m in ["alice", "bob"] {
        assert!(s.cli(&["group", "add-member", &group, m]).0);
    }
    alice
        .data(
            "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }",
            json!({"id": copy, "g": [group]}),
        )
        .await;
    let grant = bob.data(OPEN, json!({"id": copy})).await["openEditor"].clone();
    let host = grant["projectHost"].as_str().unwrap().to_owned();
    let (status, _) = send(http.put(format!("{host}/{copy}")).body(content.to_string())).await;
    assert_eq!(status, 403);
    let (status, body) = send(
        http.post(format!("{host}/?is_remix=1&original_id={copy}"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let remix = body["content-name"].as_str().unwrap().to_owned();
    let (status, body) = send(
        http.put(format!("{host}/{remix}"))
            .body(content.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(project(&bob, &remix).await["version"], 2);
    assert_eq!(project(&alice, &copy).await["version"], 2);
}

async fn concurrent_saves_all_win_in_turn(s: TestServer) {
    let alice = s.user("alice").await;
    let http = reqwest::Client::new();
    let id = created(&alice, "busy").await;
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    let contents: Vec<Value> = (0..20)
        .map(|n| json!({"targets": [], "meta": {"semver": "3.0.0", "n": n}}))
        .collect();
    let saves = contents.iter().map(|c| {
        send(
            http.put(&url)
                .bearer_auth(token_of(&alice))
                .body(c.to_string()),
        )
    });
    let results = futures::future::join_all(saves).await;
    let mut versions: Vec<i64> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["version"].as_i64().unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=21).collect::<Vec<i64>>());
    let p = project(&alice, &id).await;
    assert_eq!(p["version"], 21);
    assert!(contents.contains(&p["content"]));
}

mod expired_editing_sessions {
    use super::*;

    async fn run(backend: Backend) {
        let s = TestServer::start_with(backend, &[("ATELIER_EDITOR_SESSION_TTL_SECS", "1")]).await;
        let alice = s.user("alice").await;
        let id = created(&alice, "short").await;
        let grant = alice.data(OPEN, json!({"id": id})).await["openEditor"].clone();
        let host = grant["projectHost"].as_str().unwrap().to_owned();
        let (status, _) = send(reqwest::Client::new().get(format!("{host}/{id}"))).await;
        assert_eq!(status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (status, body) = send(reqwest::Client::new().get(format!("{host}/{id}"))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("UNAUTHENTICATED"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}

/// Cookie sessions need an OpenID Connect sign-in: the fake provider of the test kit.
mod signed_in {
    use super::*;
    use atelier_testkit::oidc::{Browser, FakeProvider};

    async fn run(backend: Backend) {
        let p = FakeProvider::start().await;
        let env = p.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let s = TestServer::start_with(backend, &env).await;
        p.set_user("alice", "Alice", json!([]));
        cookie_writes_need_our_origin_and_logout_ends_editing_sessions(s).await;
    }

    async fn cookie_writes_need_our_origin_and_logout_ends_editing_sessions(s: TestServer) {
        let base = s.graphql_url().trim_end_matches("/graphql").to_owned();
        let b = Browser::default();
        b.sign_in(&base, "alice").await;
        let session = b.session().unwrap();
        let alice = Client::new(s.graphql_url(), Some(session.clone()));
        let id = created(&alice, "cookie").await;
        let http = reqwest::Client::new();
        let cookie = format!("atelier_session={session}");
        let url = format!("{}/scratch/projects/{id}", base);
        let body = json!({"targets": [], "meta": {"semver": "3.0.0", "by": "cookie"}}).to_string();

        // A load needs no Origin.
        let (status, _) = send(http.get(&url).header("cookie", &cookie)).await;
        assert_eq!(status, 200);
        // Writes: no Origin, or a foreign one, change nothing.
        let (status, b1) = send(http.put(&url).header("cookie", &cookie).body(body.clone())).await;
        assert_eq!((status, b1["code"].as_str()), (403, Some("FORBIDDEN")));
        let (status, _) = send(
            http.put(&url)
                .header("cookie", &cookie)
                .header("origin", "http://evil.example")
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 403);
        let bytes = svg(11);
        let md5 = md5_hex(&bytes);
        let (status, _) = send(
            http.post(format!("{}/scratch/assets/{md5}.svg", base))
                .header("cookie", &cookie)
                .body(bytes.clone()),
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = send(
            http.post(format!("{}/scratch/projects/", base))
                .header("cookie", &cookie)
                .header("origin", "http://evil.example")
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 403);
        assert_eq!(project(&alice, &id).await["version"], 1);
        assert_eq!(s.count_assets().await, 0);
        assert_eq!(s.count("projects").await, 1);
        // Our own origin may.
        let (status, b2) = send(
            http.put(&url)
                .header("cookie", &cookie)
                .header("origin", &base)
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 200, "{b2}");
        assert_eq!(b2["version"], 2);
        let (status, _) = send(
            http.post(format!("{}/scratch/assets/{md5}.svg", base))
                .header("cookie", &cookie)
                .header("origin", &base)
                .body(bytes),
        )
        .await;
        assert_eq!(status, 200);

        // An editing session opened with the browser session ends at its logout.
        let (status, opened) = b.graphql(&base, OPEN, json!({"id": id})).await;
        assert_eq!(status, 200, "{opened}");
        let grant = opened["data"]["openEditor"].clone();
        let token = grant["token"].as_str().unwrap().to_owned();
        let host = grant["projectHost"].as_str().unwrap().to_owned();
        let (status, _) = send(http.get(format!("{host}/{id}"))).await;
        assert_eq!(status, 200);
        // The session's token is no URL token either.
        let (status, _) = send(http.get(format!("{url}?token={session}"))).await;
        assert_eq!(status, 400);
        let resp = http
            .post(format!("{}/auth/logout", base))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let (status, body) = send(http.get(format!("{host}/{id}"))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("UNAUTHENTICATED"))
        );
        assert_no_token_logged(&s, &[&token, &session]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}

/// CORS: the editor's PUT passes the preflight, errors carry the headers too, and the
/// session routes answer any page (their token is the authority, never a cookie).
mod cors {
    use super::*;

    async fn run(backend: Backend) {
        let editor = "http://editor.example";
        let s = TestServer::start_with(backend, &[("ATELIER_CORS_ORIGINS", editor)]).await;
        let http = reqwest::Client::new();
        let preflight = |url: String, origin: &str| {
            http.request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "PUT")
                .header("access-control-request-headers", "content-type")
        };
        let resp = preflight(format!("{}/scratch/projects/1", s.base_url), editor)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let methods = resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(methods.contains("PUT"), "{methods}");
        assert_eq!(resp.headers()["access-control-allow-origin"], editor);

        let resp = http
            .get(format!("{}/scratch/projects/999", s.base_url))
            .header("origin", editor)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        assert_eq!(resp.headers()["access-control-allow-origin"], editor);

        let alice = s.user("alice").await;
        let id = created(&alice, "cors").await;
        let grant = alice.data(OPEN, json!({"id": id})).await["openEditor"].clone();
        let host = grant["projectHost"].as_str().unwrap().to_owned();
        let school = "https://school.example.org";
        let resp = preflight(format!("{host}/{id}"), school)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        assert_eq!(resp.headers()["access-control-allow-origin"], school);
        let resp = http
            .put(format!("{host}/{id}"))
            .header("origin", school)
            .header("content-type", "application/json")
            .body(json!({"targets": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["access-control-allow-origin"], school);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}

/// A classmate who may read a shared project loads it through the editor's routes, plain and
/// through an editing session, but neither route lets them save it or upload into it: the
/// PUT is FORBIDDEN and the project stays at its version and content.
async fn a_reader_loads_but_never_saves(s: TestServer) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let id = created(&alice, "shared").await;
    let group = s.cli(&["group", "create", "class"]).1.trim().to_owned();
    for m in ["alice", "bob"] {
        assert!(s.cli(&["group", "add-member", &group, m]).0);
    }
    alice
        .data(
            "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }",
            json!({"id": id, "g": [group]}),
        )
        .await;
    let http = reqwest::Client::new();
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    let content = json!({"targets": [], "meta": {"semver": "3.0.0", "agent": "bob"}});

    let (status, body) = send(http.get(&url).bearer_auth(token_of(&bob))).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"targets": [], "meta": {"semver": "3.0.0"}}));
    let (status, body) = send(http.put(&url).bearer_auth(token_of(&bob)).json(&content)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["code"].as_str()),
        (403, Some("error"), Some("FORBIDDEN"))
    );

    let session = bob
        .data(
            "mutation($id: ID!) { openEditor(projectId: $id) { token projectHost assetHost } }",
            json!({"id": id}),
        )
        .await["openEditor"]
        .clone();
    let host = session["projectHost"].as_str().unwrap();
    let (status, _) = send(http.get(format!("{host}/{id}"))).await;
    assert_eq!(status, 200);
    let (status, body) = send(http.put(format!("{host}/{id}")).json(&content)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    let bytes = svg(7);
    let asset = format!(
        "{}/{}.svg",
        session["assetHost"].as_str().unwrap(),
        md5_hex(&bytes)
    );
    let (status, body) = send(http.post(asset).body(bytes)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));

    let p = project(&alice, &id).await;
    assert_eq!(p["version"], 1);
    assert_eq!(
        p["content"],
        json!({"targets": [], "meta": {"semver": "3.0.0"}})
    );
    assert_eq!(s.count_assets().await, 0);
    assert_no_token_logged(&s, &[session["token"].as_str().unwrap()]);
}
