//! Authority takes effect on the next request, in every process: a
//! demotion or a revoked token is honoured by the very next request, however warm the token
//! cache is, whichever process serves it, and also while the PostgreSQL notification channel
//! that keeps the cache honest is down.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, code, empty_project},
};

const GET: &str = "query($id: ID!) { project(id: $id) { id title } viewer { role } }";

both_backends!(
    demotion_takes_effect_on_the_next_request,
    revoked_token_is_refused_on_the_next_request,
    revoking_a_users_tokens_refuses_all_of_them_and_no_one_else,
);

/// alice's project id, and an admin ("root") whose token has already read it several times
/// (the cache, if any, is warm).
async fn project_and_warm_admin(s: &TestServer) -> (String, Client) {
    let alice = s.user("alice").await;
    let id = alice.create_project("alice's", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let root = s.user_with_role("root", "admin").await;
    for _ in 0..5 {
        let d = read(&root, &id).await;
        assert_eq!(
            d["project"]["id"],
            id.as_str(),
            "an admin reads any project"
        );
        assert_eq!(d["viewer"]["role"], "ADMIN");
    }
    (id, root)
}

async fn read(c: &Client, id: &str) -> Value {
    c.data(GET, json!({ "id": id })).await
}

/// Asserts the request is refused before execution: HTTP 401, `UNAUTHENTICATED`.
async fn assert_refused(c: &Client, what: &str) {
    let (status, body) = c.raw("{ viewer { role } }", json!({})).await;
    assert_eq!(status, 401, "{what}: {body:#}");
    assert_eq!(
        code(&body["errors"][0]),
        "UNAUTHENTICATED",
        "{what}: {body:#}"
    );
}

async fn assert_accepted(c: &Client, what: &str) {
    let (status, body) = c.raw("{ viewer { role } }", json!({})).await;
    assert!(
        status.is_success() && body.get("errors").is_none(),
        "{what}: ({status}) {body:#}"
    );
}

fn cli_ok(s: &TestServer, args: &[&str]) -> String {
    let (ok, out, err) = s.cli_full(args);
    assert!(ok, "{args:?} failed: {err}");
    out
}

/// The token cache must actually be in use (else these tests prove nothing about it): it is
/// trusted and has answered requests. (PostgreSQL: guarded by the listener; SQLite: by the
/// epoch file.)
async fn assert_cache_in_use(s: &TestServer) {
    assert_eq!(s.metric("atelier_auth_cache_trusted").await, 1);
    assert!(s.metric("atelier_auth_cache_hits_total").await > 0);
}

async fn demotion_takes_effect_on_the_next_request(s: TestServer) {
    let (id, root) = project_and_warm_admin(&s).await;
    assert_cache_in_use(&s).await;
    cli_ok(
        &s,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    let d = read(&root, &id).await;
    assert_eq!(
        d["project"],
        Value::Null,
        "a demoted admin must not read another user's project on the next request"
    );
    assert_eq!(d["viewer"]["role"], "STUDENT");
}

async fn revoked_token_is_refused_on_the_next_request(s: TestServer) {
    let (a1, a2) = (s.user("alice").await, s.user("alice").await);
    for _ in 0..5 {
        assert_accepted(&a1, "warm-up").await;
        assert_accepted(&a2, "warm-up").await;
    }
    assert_cache_in_use(&s).await;
    let t1 = a1.token.clone().unwrap();
    assert_eq!(
        cli_ok(&s, &["token", "revoke", &t1]).trim(),
        "revoked 1 token(s)"
    );
    assert_refused(&a1, "the revoked token").await;
    assert_accepted(&a2, "the user's other token").await;
    assert_eq!(s.count("api_tokens").await, 1);

    // Revoking it again, or a token never issued, fails loudly and changes nothing.
    for t in [t1.as_str(), "atl_never_issued"] {
        let (ok, out, err) = s.cli_full(&["token", "revoke", t]);
        assert!(!ok, "revoking an unknown token must fail");
        assert!(out.is_empty(), "nothing on stdout: {out:?}");
        assert!(err.contains("token not found"), "a clear message: {err}");
    }
    let (ok, _, _) = s.cli_full(&["token", "revoke"]);
    assert!(!ok, "revoke needs TOKEN or --user");
    let (ok, _, _) = s.cli_full(&["token", "revoke", "x", "--user", "alice"]);
    assert!(!ok, "TOKEN and --user are exclusive");
    assert_accepted(&a2, "still").await;
}

async fn revoking_a_users_tokens_refuses_all_of_them_and_no_one_else(s: TestServer) {
    let mut alice: Vec<Client> = Vec::new();
    for _ in 0..3 {
        alice.push(s.user("alice").await);
    }
    let bob = s.user("bob").await;
    for _ in 0..3 {
        for c in alice.iter().chain([&bob]) {
            assert_accepted(c, "warm-up").await;
        }
    }
    assert_cache_in_use(&s).await;
    assert_eq!(
        cli_ok(&s, &["token", "revoke", "--user", "alice"]).trim(),
        "revoked 3 token(s)"
    );
    for c in &alice {
        assert_refused(c, "every token of alice").await;
    }
    assert_accepted(&bob, "another user").await;
    assert_eq!(
        cli_ok(&s, &["token", "revoke", "--user", "alice"]).trim(),
        "revoked 0 token(s)"
    );
    let (ok, out, err) = s.cli_full(&["token", "revoke", "--user", "nobody"]);
    assert!(!ok && out.is_empty(), "an unknown user fails");
    assert!(err.contains("user not found"), "a clear message: {err}");
    // A new token for alice works again.
    assert_accepted(
        &s.user("alice").await,
        "a token issued after the revocation",
    )
    .await;
}

/// Two `atelier serve` processes on one PostgreSQL database, both caches warm: a change made
/// through the CLI is honoured by the next request to either process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_demotion_and_revocation_reach_every_process() {
    let a = TestServer::start(Backend::Postgres).await;
    let b = a.start_other_host();
    let (id, root_a) = project_and_warm_admin(&a).await;
    let root_b = Client::new(b.graphql_url(), root_a.token.clone());
    let bob_a = a.user("bob").await;
    let bob_b = Client::new(b.graphql_url(), bob_a.token.clone());
    for _ in 0..5 {
        assert_eq!(read(&root_b, &id).await["project"]["id"], id.as_str());
        assert_accepted(&bob_a, "warm-up").await;
        assert_accepted(&bob_b, "warm-up").await;
    }
    assert_cache_in_use(&a).await;
    assert_cache_in_use(&b).await;

    cli_ok(
        &a,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    assert_eq!(
        read(&root_b, &id).await["project"],
        Value::Null,
        "the other process must honour the demotion on its next request"
    );
    assert_eq!(read(&root_a, &id).await["project"], Value::Null);

    cli_ok(&a, &["token", "revoke", bob_a.token.as_deref().unwrap()]);
    assert_refused(&bob_b, "the other process, revoked token").await;
    assert_refused(&bob_a, "this process, revoked token").await;
}

/// Runs one statement on the server's database as a superuser; the number of rows it returned.
async fn sql_rows(s: &TestServer, sql: &str) -> usize {
    let db = s.db().await;
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap();
    let _ = db.close().await;
    rows.len()
}

/// The listener connects once, then can never connect again (failpoint). Once its connection
/// is killed, the cache must not be trusted: a demotion (whose notification nobody hears) is
/// still honoured by the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_cache_is_not_trusted_while_the_listener_is_down() {
    let s = TestServer::start_with(
        Backend::Postgres,
        &[("FAILPOINTS", "listen::connect=1*off->return")],
    )
    .await;
    let (id, root) = project_and_warm_admin(&s).await;
    assert_cache_in_use(&s).await;

    let killed = sql_rows(
        &s,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'atelier-listener'",
    )
    .await;
    assert_eq!(killed, 1, "one listener connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("atelier_auth_cache_trusted").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the server did not notice its listener died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests still work, from the database.
    assert_eq!(read(&root, &id).await["project"]["id"], id.as_str());

    cli_ok(
        &s,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    assert_eq!(
        read(&root, &id).await["project"],
        Value::Null,
        "with the listener down the cache must not answer"
    );
    assert!(s.server_log().contains("listener_down") || std::env::var("TEST_LOG").is_ok());
}

/// A change returns only once every process has cleared its cache, so "the next request" is
/// any request that starts after the command returned, even when a process hears the change
/// late: here both processes take 700 ms to act on each notification (failpoint), and the
/// requests right after the CLI returns must already see the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_a_change_returns_only_once_every_process_has_heard_it() {
    let a = TestServer::start_with(
        Backend::Postgres,
        &[("FAILPOINTS", "auth::listener_notified=sleep(700)")],
    )
    .await;
    let b = a.start_other_host();
    let (id, root_a) = project_and_warm_admin(&a).await;
    let root_b = Client::new(b.graphql_url(), root_a.token.clone());
    for _ in 0..5 {
        assert_eq!(read(&root_b, &id).await["project"]["id"], id.as_str());
    }
    assert_cache_in_use(&b).await;

    let started = Instant::now();
    cli_ok(
        &a,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    let took = started.elapsed();
    assert_eq!(
        read(&root_b, &id).await["project"],
        Value::Null,
        "the demotion must hold in the other process as soon as the command returned"
    );
    assert_eq!(read(&root_a, &id).await["project"], Value::Null);
    assert!(
        took >= Duration::from_millis(700),
        "the command waited for the slow listeners ({took:?})"
    );

    let started = Instant::now();
    cli_ok(&a, &["token", "revoke", "--user", "root"]);
    let took = started.elapsed();
    assert_refused(&root_b, "the other process, right after revoke --user").await;
    assert_refused(&root_a, "this process, right after revoke --user").await;
    assert!(
        took >= Duration::from_millis(700),
        "revoke waited for the slow listeners ({took:?})"
    );
}
