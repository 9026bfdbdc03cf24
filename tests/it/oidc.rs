//! Sign-in through an OpenID Provider (the fake one in `oidc_fake`), sessions, refresh, logout,
//! and the cross-site rules of cookie-authenticated requests. Both backends.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Backend, Client, TestServer, code, empty_project};
use atelier_testkit::oidc::{Browser, FakeProvider, Tamper, location, urlencode};

/// Runs `scenario(server, provider)` on both backends, the server signing in through a fresh
/// fake provider.
macro_rules! with_provider {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (s, p) = super::start($crate::harness::Backend::Sqlite).await;
                super::$name(s, p).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant")]
            async fn postgres() {
                let (s, p) = super::start($crate::harness::Backend::Postgres).await;
                super::$name(s, p).await;
            }
        }
    )*};
}

with_provider!(
    sign_in_creates_user_groups_and_session,
    fifty_first_logins_of_one_subject_make_one_user,
    fifty_logins_into_three_shared_groups,
    a_dropped_group_claim_removes_the_membership,
    twenty_requests_with_an_expired_token_refresh_once,
    a_refused_refresh_ends_the_session,
    a_refresh_resyncs_groups,
    callbacks_are_single_use_and_bound_to_the_browser,
    forged_id_tokens_are_refused,
    return_to_stays_on_our_origin,
    logout_ends_the_session,
    cookie_requests_must_not_be_cross_site,
    signed_in_teachers_read_their_students_projects,
);

async fn start(backend: Backend) -> (TestServer, FakeProvider) {
    let p = FakeProvider::start().await;
    let env = p.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (TestServer::start_with(backend, &env).await, p)
}

fn base(s: &TestServer) -> String {
    s.graphql_url().trim_end_matches("/graphql").to_owned()
}

const VIEWER: &str = "{ viewer { id displayName role groups { name } } }";

fn group_names(viewer: &Value) -> Vec<String> {
    let mut names: Vec<String> = viewer["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn viewer(s: &TestServer, b: &Browser) -> Value {
    let (status, body) = b.graphql(&base(s), VIEWER, json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["viewer"].clone()
}

async fn sign_in_creates_user_groups_and_session(s: TestServer, p: FakeProvider) {
    p.set_user(
        "alice",
        "Alice Liddell",
        json!(["7B", {"id": "art-1", "name": "Art"}]),
    );
    let b = Browser::default();
    assert_eq!(b.sign_in(&base(&s), "alice").await, "/graphql");
    let v = viewer(&s, &b).await;
    assert_eq!(v["displayName"], "Alice Liddell");
    assert_eq!(v["role"], "STUDENT");
    assert_eq!(group_names(&v), ["7B", "Art"]);
    // The session token also works as a bearer token.
    let token = b.session().unwrap();
    let bearer = Client::new(s.graphql_url(), Some(token));
    assert_eq!(
        bearer.data(VIEWER, json!({})).await["viewer"]["id"],
        v["id"]
    );
    // The provider's tokens are stored encrypted, never in the clear.
    let db = s.db().await;
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT access_token, refresh_token FROM sessions",
        ))
        .await
        .unwrap()
        .unwrap();
    for col in ["access_token", "refresh_token"] {
        let stored: String = row.try_get("", col).unwrap();
        assert!(stored.starts_with("v1."), "{col} is sealed: {stored}");
    }
    assert_eq!(
        s.count("users WHERE email = 'alice@school.example'").await,
        1
    );
    // A teacher group makes a teacher; the role follows the claim on the next sign-in.
    p.set_user("alice", "Alice Liddell", json!(["7B", "teachers"]));
    let b2 = Browser::default();
    b2.sign_in(&base(&s), "alice").await;
    assert_eq!(viewer(&s, &b2).await["role"], "TEACHER");
    // ... in every session of the user, at once.
    assert_eq!(viewer(&s, &b).await["role"], "TEACHER");
}

async fn fifty_first_logins_of_one_subject_make_one_user(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7B"]));
    let url = base(&s);
    let ids = futures::future::join_all((0..50).map(|_| {
        let url = url.clone();
        let s = &s;
        async move {
            let b = Browser::default();
            b.sign_in(&url, "sam").await;
            viewer(s, &b).await["id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(s.count("users WHERE subject = 'sam'").await, 1);
    assert_eq!(s.count("groups").await, 1);
    assert_eq!(s.count("group_members").await, 1);
    assert_eq!(s.count("sessions").await, 50);
}

/// User `i` is in groups A and B when `i` is even, B and C when odd.
fn groups_of(i: usize) -> Value {
    if i.is_multiple_of(2) {
        json!(["7A", "7B"])
    } else {
        json!(["7B", "7C"])
    }
}

async fn fifty_logins_into_three_shared_groups(s: TestServer, p: FakeProvider) {
    for i in 0..50 {
        p.set_user(&format!("u{i}"), &format!("User {i}"), groups_of(i));
    }
    let url = base(&s);
    futures::future::join_all((0..50).map(|i| {
        let url = url.clone();
        async move {
            Browser::default().sign_in(&url, &format!("u{i}")).await;
        }
    }))
    .await;
    assert_eq!(s.count("users").await, 50);
    assert_eq!(s.count("groups").await, 3);
    assert_eq!(s.count("group_members").await, 100);
    for (group, members) in [("7A", 25), ("7B", 50), ("7C", 25)] {
        assert_eq!(
            s.count(&format!(
                "group_members gm JOIN groups g ON g.id = gm.group_id WHERE g.external_id = '{group}'"
            ))
            .await,
            members,
            "{group}"
        );
    }
    // Exactly the right people: u1 is in 7B and 7C only.
    assert_eq!(
        s.count(
            "group_members gm JOIN groups g ON g.id = gm.group_id JOIN users u ON u.id = gm.user_id \
             WHERE u.subject = 'u1' AND g.external_id IN ('7B', '7C')"
        )
        .await,
        2
    );
}

async fn a_dropped_group_claim_removes_the_membership(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7A", "7B"]));
    let b = Browser::default();
    b.sign_in(&base(&s), "sam").await;
    // A local group (made with the CLI) is not the provider's to take away.
    let local = s
        .cli(&["group", "create", "chess club"])
        .1
        .trim()
        .to_owned();
    let db_user = s.count("users WHERE subject = 'sam'").await;
    assert_eq!(db_user, 1);
    {
        use sea_orm::ConnectionTrait;
        let db = s.db().await;
        db.execute_unprepared(&format!(
            "INSERT INTO group_members (group_id, user_id, created_at) \
             SELECT {local}, id, created_at FROM users WHERE subject = 'sam'"
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        group_names(&viewer(&s, &b).await),
        ["7A", "7B", "chess club"]
    );
    p.set_user("sam", "Sam", json!(["7B"]));
    let b2 = Browser::default();
    b2.sign_in(&base(&s), "sam").await;
    assert_eq!(group_names(&viewer(&s, &b2).await), ["7B", "chess club"]);
    // The group itself stays (others may be in it); only the membership went.
    assert_eq!(s.count("groups").await, 3);
    assert_eq!(s.count("group_members").await, 2);
}

async fn session_version(s: &TestServer) -> Vec<i64> {
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM sessions ORDER BY id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<i32>("", "version").unwrap() as i64)
        .collect()
}

/// Signs in with a provider token that expires at once, and waits until it has.
async fn signed_in_with_expiring_token(s: &TestServer, p: &FakeProvider, who: &str) -> Browser {
    p.set_expires_in(1);
    let b = Browser::default();
    b.sign_in(&base(s), who).await;
    p.set_expires_in(3600);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    b
}

async fn twenty_requests_with_an_expired_token_refresh_once(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7B"]));
    let b = signed_in_with_expiring_token(&s, &p, "sam").await;
    let before = p.token_calls();
    // The refresh takes a while, so the other 19 arrive while it runs.
    p.set_refresh_delay(300);
    let token = b.session().unwrap();
    let answers = futures::future::join_all((0..20usize).map(|i| {
        let b = b.clone();
        let s = &s;
        let token = token.clone();
        async move {
            if i.is_multiple_of(2) {
                viewer(s, &b).await
            } else {
                // Half of them present the session as a bearer token (another tab, an API client).
                Client::new(s.graphql_url(), Some(token))
                    .data(VIEWER, json!({}))
                    .await["viewer"]
                    .clone()
            }
        }
    }))
    .await;
    assert!(
        answers.iter().all(|v| v["displayName"] == "Sam"),
        "{answers:?}"
    );
    assert_eq!(p.token_calls() - before, 1, "exactly one refresh");
    assert_eq!(p.refresh_calls(), 1);
    assert_eq!(session_version(&s).await, [2]);
    // The next requests use the new token without refreshing again.
    viewer(&s, &b).await;
    assert_eq!(p.refresh_calls(), 1);
}

async fn a_refused_refresh_ends_the_session(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7B"]));
    let b = signed_in_with_expiring_token(&s, &p, "sam").await;
    p.refuse_refresh(true);
    let (status, body) = b.graphql(&base(&s), VIEWER, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body["errors"][0]), "UNAUTHENTICATED");
    // The session is over, its tokens forgotten, and nothing else was written.
    assert_eq!(
        s.count(
            "sessions WHERE ended_at IS NOT NULL AND access_token IS NULL AND refresh_token IS NULL"
        )
        .await,
        1
    );
    assert_eq!(session_version(&s).await, [1]);
    // It stays over, without asking the provider again, even once the provider would agree.
    p.refuse_refresh(false);
    let (status, _) = b.graphql(&base(&s), VIEWER, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(p.refresh_calls(), 1);
    // Signing in again works.
    let again = Browser::default();
    again.sign_in(&base(&s), "sam").await;
    assert_eq!(viewer(&s, &again).await["displayName"], "Sam");
}

async fn a_refresh_resyncs_groups(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7A"]));
    let b = signed_in_with_expiring_token(&s, &p, "sam").await;
    // Sam moved class at the provider; the refreshed identity says so.
    p.set_user("sam", "Samuel", json!(["7C"]));
    let v = viewer(&s, &b).await;
    assert_eq!(v["displayName"], "Samuel");
    assert_eq!(group_names(&v), ["7C"]);
    // Also when the provider sends groups only from its userinfo endpoint.
    p.set_groups_in_id_token(false);
    p.set_expires_in(1);
    let b2 = Browser::default();
    b2.sign_in(&base(&s), "sam").await;
    p.set_expires_in(3600);
    assert_eq!(group_names(&viewer(&s, &b2).await), ["7C"]);
    p.set_user("sam", "Samuel", json!(["7A", "7C"]));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(group_names(&viewer(&s, &b2).await), ["7A", "7C"]);
}

async fn callbacks_are_single_use_and_bound_to_the_browser(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!([]));
    let url = base(&s);
    let b = Browser::default();
    let resp = b.get(&format!("{url}/auth/login")).await;
    assert_eq!(resp.status(), 303);
    let to_provider = location(&resp);
    assert!(
        to_provider.contains("code_challenge_method=S256"),
        "{to_provider}"
    );
    assert!(to_provider.contains("nonce="), "{to_provider}");
    let resp = b.get(&format!("{to_provider}&test_user=sam")).await;
    let callback = location(&resp);

    // Another browser (an attacker who got the link) cannot use it: it did not start it.
    let other = Browser::default();
    let resp = other.get(&callback).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT", "{body}");
    assert_eq!(s.count("sessions").await, 0);

    // A forged state is refused, even with a matching cookie.
    let forged = Browser::default();
    forged
        .cookies
        .lock()
        .unwrap()
        .insert(login_cookie_name("forged"), "forged".into());
    let resp = forged
        .get(&format!("{url}/auth/callback?code=x&state=forged"))
        .await;
    assert_eq!(resp.status(), 400);

    // The browser that started it signs in, once.
    let (cookie_name, login_cookie) = b
        .cookies
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("atelier_login_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 303);
    assert!(b.session().is_some());
    assert_eq!(s.count("sessions").await, 1);
    // Replaying the callback (cookie and all) is refused: the sign-in was used.
    b.cookies.lock().unwrap().insert(cookie_name, login_cookie);
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(s.count("sessions").await, 1);
    assert_eq!(s.count("oidc_logins").await, 0);

    // Two tabs signing in at once both get there (each sign-in has its own cookie).
    let tabs = Browser::default();
    let mut callbacks = Vec::new();
    for _ in 0..2 {
        let to_provider = location(&tabs.get(&format!("{url}/auth/login")).await);
        callbacks.push(location(
            &tabs.get(&format!("{to_provider}&test_user=sam")).await,
        ));
    }
    for callback in callbacks.iter().rev() {
        assert_eq!(tabs.get(callback).await.status(), 303);
    }
    assert_eq!(s.count("sessions").await, 3);

    // The provider's own refusal reaches the browser as UNAUTHENTICATED.
    let resp = b
        .get(&format!(
            "{url}/auth/callback?error=access_denied&error_description=no"
        ))
        .await;
    assert_eq!(resp.status(), 401);
}

/// The name of the cookie that ties the sign-in with this state to its browser.
fn login_cookie_name(state: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(state.as_bytes()));
    format!("atelier_login_{}", &hash[..16])
}

async fn forged_id_tokens_are_refused(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!([]));
    for how in [
        Tamper::Nonce,
        Tamper::Audience,
        Tamper::Issuer,
        Tamper::Expired,
        Tamper::Signature,
    ] {
        p.tamper_next(how);
        let refused = Browser::default().sign_in_to(&base(&s), "sam", None).await;
        let (status, body) = refused.expect_err(&format!("{how:?} must be refused"));
        assert_eq!(status, 400, "{how:?}: {body}");
        assert!(body.contains("BAD_USER_INPUT"), "{how:?}: {body}");
    }
    assert_eq!(s.count("sessions").await, 0);
    assert_eq!(s.count("users").await, 0);
    // An honest token still works afterwards.
    Browser::default().sign_in(&base(&s), "sam").await;
    assert_eq!(s.count("sessions").await, 1);
}

/// `return_to` through the real flow: what `/auth/login` accepts comes back from the callback
/// as a `Location` that every browser resolves to this server (a path with one leading `/`);
/// anything that could lead elsewhere is refused at `/auth/login`, before the provider.
async fn return_to_stays_on_our_origin(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!([]));
    let url = base(&s);
    let host = url.strip_prefix("http://").unwrap().to_owned();
    let port: u16 = host.rsplit_once(':').unwrap().1.parse().unwrap();
    // (return_to, the callback's Location)
    let followed = [
        ("/projects/42?tab=code".to_owned(), "/projects/42?tab=code"),
        (format!("{url}/graphql?x=1"), "/graphql?x=1"),
        (format!("{url}/a/./b/../c"), "/a/c"),
        ("/x/%2e%2e/y".to_owned(), "/y"),
        ("/caf\u{e9}".to_owned(), "/caf%C3%A9"),
    ];
    for (return_to, expected) in &followed {
        let back = Browser::default()
            .sign_in_to(&url, "sam", Some(return_to))
            .await
            .unwrap_or_else(|e| panic!("{return_to:?}: {e:?}"));
        assert_eq!(back, *expected, "{return_to:?}");
    }
    let refused = [
        "https://evil.example/steal".to_owned(),
        "//evil.example/steal".to_owned(),
        "/\\evil.example".to_owned(),
        // Our own origin, then a path that browsers read as another host.
        format!("{url}//evil.example/phish"),
        format!("{url}/.//evil.example/phish"),
        "/.//evil.example/phish".to_owned(),
        "///evil.example".to_owned(),
        "/./..//evil.example".to_owned(),
        "/%2e%2e//evil.example".to_owned(),
        format!("{url}/%2E%2E//evil.example"),
        "/%2F%2Fevil.example".to_owned(),
        "/%5Cevil.example".to_owned(),
        "/\t/evil.example".to_owned(),
        "/\n/evil.example".to_owned(),
        "http:evil.example".to_owned(),
        "http:/evil.example".to_owned(),
        format!("http://user@{host}/x"),
        format!("http://user:pw@{host}/x"),
        format!("http://127.0.0.1:{}/x", port.wrapping_add(1)),
        format!("https://{host}/x"),
    ];
    for evil in &refused {
        let resp = Browser::default()
            .get(&format!("{url}/auth/login?return_to={}", urlencode(evil)))
            .await;
        assert_eq!(resp.status(), 400, "{evil:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT", "{evil:?}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "return_to");
    }
    assert_eq!(
        s.count("oidc_logins").await,
        0,
        "no refused sign-in was started"
    );
    assert_eq!(s.count("sessions").await, followed.len() as i64);

    // A stored `return_to` is checked again at the callback: one that is not a path of this
    // server (written before the rule was this strict) sends the browser to the default.
    let b = Browser::default();
    let to_provider = location(&b.get(&format!("{url}/auth/login?return_to=%2Fok")).await);
    {
        use sea_orm::ConnectionTrait;
        let db = s.db().await;
        let changed = db
            .execute_unprepared("UPDATE oidc_logins SET return_to = '//evil.example/phish'")
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1);
    }
    let callback = location(&b.get(&format!("{to_provider}&test_user=sam")).await);
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/graphql");
    assert!(b.session().is_some());
}

async fn logout_ends_the_session(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!([]));
    let url = base(&s);
    let b = Browser::default();
    b.sign_in(&url, "sam").await;
    let token = b.session().unwrap();
    // Warm every cache there is.
    for _ in 0..3 {
        viewer(&s, &b).await;
    }
    // A cross-site page cannot sign the user out.
    let resp = b
        .post(
            &format!("{url}/auth/logout"),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert!(!viewer(&s, &b).await.is_null());

    let resp = b
        .post(&format!("{url}/auth/logout"), &[("x-atelier-csrf", "1")])
        .await;
    assert_eq!(resp.status(), 204);
    assert!(b.session().is_none(), "the cookie is cleared");
    // The token is refused from now on, as cookie and as bearer.
    b.cookies
        .lock()
        .unwrap()
        .insert("atelier_session".into(), token.clone());
    let (status, body) = b.graphql(&url, VIEWER, json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = Client::new(s.graphql_url(), Some(token))
        .raw(VIEWER, json!({}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(s.count("sessions WHERE end_reason = 'logout'").await, 1);
}

const CREATE: &str =
    "mutation($c: JSON!) { createProject(input: {title: \"t\", content: $c}) { id } }";

async fn cookie_requests_must_not_be_cross_site(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!([]));
    let url = base(&s);
    let b = Browser::default();
    b.sign_in(&url, "sam").await;
    let cookie = format!("atelier_session={}", b.session().unwrap());
    let http = reqwest::Client::new();
    let body = json!({ "query": CREATE, "variables": { "c": empty_project() } }).to_string();

    // What a cross-site HTML form can send: text/plain (or form-encoded), no custom headers.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let resp = http
            .post(format!("{url}/graphql"))
            .header("cookie", &cookie)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{content_type}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(code(&answer["errors"][0]), "FORBIDDEN");
    }
    // JSON from another origin (a page that got past CORS somehow) is refused too.
    let resp = http
        .post(format!("{url}/graphql"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .json(&json!({ "query": CREATE, "variables": { "c": empty_project() } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A multipart upload without the preflight-forcing header is refused; with it, it runs.
    let operations = json!({
        "query": "mutation($f: Upload!) { uploadAsset(input: {file: $f, assetType: IMAGE_VECTOR}) { created } }",
        "variables": { "f": null }
    });
    let form = || {
        reqwest::multipart::Form::new()
            .text("operations", operations.to_string())
            .text("map", json!({ "0": ["variables.f"] }).to_string())
            .part(
                "0",
                reqwest::multipart::Part::bytes(crate::harness::svg(1)).file_name("a.svg"),
            )
    };
    let resp = http
        .post(format!("{url}/graphql"))
        .header("cookie", &cookie)
        .multipart(form())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = http
        .post(format!("{url}/graphql"))
        .header("cookie", &cookie)
        .header("x-atelier-csrf", "1")
        .multipart(form())
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["data"]["uploadAsset"]["created"], true, "{answer}");
    // GraphQL over GET never runs a mutation.
    let resp = http
        .get(format!(
            "{url}/graphql?query={}",
            urlencode("mutation { deleteBackpackItem(id: \"1\") }")
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(s.count("projects").await, 0);
    // The same-origin editor (JSON with the cookie) works.
    let (status, answer) = b
        .graphql(&url, CREATE, json!({ "c": empty_project() }))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.count("projects").await, 1);
}

async fn signed_in_teachers_read_their_students_projects(s: TestServer, p: FakeProvider) {
    p.set_user("sam", "Sam", json!(["7B"]));
    p.set_user("tess", "Tess", json!(["7B", "teachers"]));
    p.set_user("otto", "Otto", json!(["7C", "teachers"]));
    let url = base(&s);
    let (sam, tess, otto) = (Browser::default(), Browser::default(), Browser::default());
    sam.sign_in(&url, "sam").await;
    tess.sign_in(&url, "tess").await;
    otto.sign_in(&url, "otto").await;
    let (_, created) = sam
        .graphql(&url, CREATE, json!({ "c": empty_project() }))
        .await;
    let id = created["data"]["createProject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = "query($id: ID!) { project(id: $id) { id } }";
    let rename = "mutation($id: ID!) { updateProject(input: {id: $id, expectedVersion: 1, title: \"x\"}) { id } }";
    let (_, read) = tess.graphql(&url, get, json!({ "id": id })).await;
    assert_eq!(read["data"]["project"]["id"], id.as_str(), "{read}");
    let (_, write) = tess.graphql(&url, rename, json!({ "id": id })).await;
    assert_eq!(code(&write["errors"][0]), "FORBIDDEN", "{write}");
    let (_, read) = otto.graphql(&url, get, json!({ "id": id })).await;
    assert!(read["data"]["project"].is_null(), "{read}");
    let (_, write) = otto.graphql(&url, rename, json!({ "id": id })).await;
    assert_eq!(code(&write["errors"][0]), "NOT_FOUND", "{write}");
}

/// Without a provider configured, `/auth/login` says so; API tokens work as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_without_a_provider_says_so() {
    let s = TestServer::start(Backend::Sqlite).await;
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/auth/login", base(&s)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{body}"
    );
    let sam = s.user("sam").await;
    assert_eq!(
        sam.data(VIEWER, json!({})).await["viewer"]["displayName"],
        "sam"
    );
}

/// CORS: only configured origins may call with credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_configured_origins() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[(
            "ATELIER_CORS_ORIGINS",
            "https://editor.example, http://localhost:3000",
        )],
    )
    .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, s.graphql_url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, x-atelier-csrf",
            )
            .send()
    };
    let ok = preflight("https://editor.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://editor.example"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(
        evil.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        evil.headers()
    );
    // A simple request from an allowed origin gets the header; from another, none.
    let get = |origin: &'static str| {
        http.post(s.graphql_url())
            .header("origin", origin)
            .json(&json!({ "query": "{ viewer { id } }" }))
            .send()
    };
    let ok = get("http://localhost:3000").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(
        get("https://evil.example")
            .await
            .unwrap()
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

/// Two processes on one PostgreSQL: first logins spread over both make one user; a logout
/// in one holds in the other on the next request; a refresh runs once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn two_processes_share_users_sessions_and_refreshes() {
    let (a, p) = start(Backend::Postgres).await;
    let b_server = a.start_other_host();
    p.set_user("sam", "Sam", json!(["7A", "7B"]));
    let urls = [base(&a), base(&b_server)];
    let browsers = futures::future::join_all((0..20).map(|i| {
        let url = urls[i % 2].clone();
        async move {
            let b = Browser::default();
            b.sign_in(&url, "sam").await;
            b
        }
    }))
    .await;
    assert_eq!(a.count("users").await, 1);
    assert_eq!(a.count("groups").await, 2);
    assert_eq!(a.count("group_members").await, 2);
    assert_eq!(a.count("sessions").await, 20);

    // Logout in A; B (cache warm) refuses the session on the next request.
    let b0 = &browsers[0];
    for _ in 0..3 {
        let (status, _) = b0.graphql(&urls[1], VIEWER, json!({})).await;
        assert_eq!(status, 200);
    }
    let token = b0.session().unwrap();
    let resp = b0
        .post(
            &format!("{}/auth/logout", urls[0]),
            &[("x-atelier-csrf", "1")],
        )
        .await;
    assert_eq!(resp.status(), 204);
    let (status, _) = Client::new(format!("{}/graphql", urls[1]), Some(token))
        .raw(VIEWER, json!({}))
        .await;
    assert_eq!(status, 401, "logged out in A, refused by B");

    // One expired session, 20 requests over both processes: one refresh.
    let b = signed_in_with_expiring_token(&a, &p, "sam").await;
    p.set_refresh_delay(300);
    let before = p.refresh_calls();
    let answers = futures::future::join_all((0..20).map(|i| {
        let (b, url) = (b.clone(), urls[i % 2].clone());
        async move { b.graphql(&url, VIEWER, json!({})).await }
    }))
    .await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(p.refresh_calls() - before, 1);
}
