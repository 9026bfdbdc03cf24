//! Database outages (PostgreSQL): a TCP proxy the test controls sits between the server and
//! PostgreSQL and is cut under load. Requests fail fast with UNAVAILABLE, /readyz says not
//! ready, the server recovers by itself, and nothing acknowledged is lost.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

use crate::{
    harness::{Backend, Client, PgDatabase, TestServer, code, empty_project},
    proxy::Proxy,
};

async fn ready(s: &TestServer) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/readyz", s.base_url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    /// Successful `project(id)` reads (coalesced into shared statements).
    reads: usize,
    failures: Vec<(u16, String, Duration)>,
}

/// One GraphQL call with a generous timeout: its status, body and how long it took.
async fn timed_call(c: &Client, request: serde_json::Value) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let resp = c
        .request()
        .json(&request)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap();
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_outage_fails_fast_and_recovers() {
    let pg = PgDatabase::create().await;
    let proxy = Proxy::start().await;
    let name = pg.url.rsplit('/').next().unwrap().to_owned();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port);
    let s = TestServer::start_on(Backend::Postgres, Some(pg), &[("DATABASE_URL", &via_proxy)]);
    let token = s.user("alice").await.token.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let seed = Client::new(s.graphql_url(), Some(token.clone()))
        .create_project("read during the outage", empty_project())
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (c, stop, tally, id) = (Client::new(s.graphql_url(), Some(token.clone())), stop.clone(), tally.clone(), seed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let (status, body, took) = timed_call(&c, json!({ "query": "query($id: ID!) { project(id: $id) { id } }", "variables": { "id": id } })).await;
                    {
                        let mut t = tally.lock().unwrap();
                        if body["data"]["project"]["id"] == id.as_str() {
                            t.reads += 1;
                        } else {
                            t.failures.push((status, code(&body["errors"][0]).to_owned(), took));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (c, stop, tally) = (Client::new(s.graphql_url(), Some(token.clone())), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (status, body, took) = timed_call(&c, json!({
                        "query": "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id } }",
                        "variables": { "t": format!("w{w}-{n}"), "c": empty_project() },
                    }))
                    .await;
                    {
                        let mut t = tally.lock().unwrap();
                        match body["data"]["createProject"]["id"].as_str() {
                            Some(id) => t.acked.push(id.to_owned()),
                            None => t.failures.push((status, code(&body["errors"][0]).to_owned(), took)),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.lock().unwrap().acked.len();
    assert!(before > 0, "load runs before the outage");
    proxy.cut();
    let cut_at = Instant::now();
    let mut saw_not_ready = false;
    while cut_at.elapsed() < Duration::from_secs(4) {
        if ready(&s).await == 503 {
            saw_not_ready = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready, "/readyz reports the outage");
    let during = tally.lock().unwrap().failures.len();
    assert!(during > 0, "requests failed during the outage");

    proxy.restore();
    let restored_at = Instant::now();
    while ready(&s).await != 200 {
        assert!(
            restored_at.elapsed() < Duration::from_secs(15),
            "the server did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (acked_at_recovery, reads_at_recovery) = {
        let t = tally.lock().unwrap();
        (t.acked.len(), t.reads)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers.into_iter().chain(readers) {
        w.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.acked.len() > acked_at_recovery,
        "writes succeed again after recovery"
    );
    assert!(
        tally.reads > reads_at_recovery,
        "reads succeed again after recovery"
    );
    for (status, code, took) in &tally.failures {
        assert_eq!(
            code, "UNAVAILABLE",
            "failures are retryable, status {status}"
        );
        assert_ne!(*status, 500);
        assert!(*took < Duration::from_secs(8), "failed fast: took {took:?}");
    }
    // Nothing acknowledged was lost.
    let db = s.db().await;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM projects",
        ))
        .await
        .unwrap();
    let ids: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| r.try_get::<i64>("", "id").unwrap().to_string())
        .collect();
    for id in &tally.acked {
        assert!(ids.contains(id), "acknowledged project {id} lost");
    }
    eprintln!(
        "outage: {} acknowledged, {} UNAVAILABLE during the cut, recovered in {:?}",
        tally.acked.len(),
        tally.failures.len(),
        restored_at.elapsed()
    );

    // Backends killed behind the pool's back: the next request still works.
    let name =
        s.pg.as_ref()
            .unwrap()
            .url
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
    db.execute_unprepared(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await
    .unwrap();
    let c = Client::new(s.graphql_url(), Some(token));
    c.create_project("after terminate", empty_project()).await;
}

/// A write blocked on a row lock until the statement timeout (57014) is answered UNAVAILABLE
/// after that one timeout: nothing about it is a lost connection, and running it again would
/// only wait out the timeout again (up to 10 times). The project stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_statement_timeout_is_unavailable_after_one_attempt() {
    use sea_orm::TransactionTrait;

    const TIMEOUT: Duration = Duration::from_millis(500);
    use crate::api::UPDATE_PROJECT as UPDATE;
    let s = TestServer::start_with(
        Backend::Postgres,
        &[(
            "ATELIER_DB_STATEMENT_TIMEOUT_MS",
            &TIMEOUT.as_millis().to_string(),
        )],
    )
    .await;
    let alice = s.user("alice").await;
    let id = alice
        .create_project("before", json!({ "targets": [], "v": 1 }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another session holds the project's row lock (the test's connection has no timeout).
    let db = s.db().await;
    let holder = db.begin().await.unwrap();
    holder
        .execute_unprepared(&format!(
            "SELECT id FROM projects WHERE id = {id} FOR UPDATE"
        ))
        .await
        .unwrap();

    let attempts = s.metric("atelier_db_write_attempts_total").await;
    let retries = s.metric("atelier_db_write_retries_total").await;
    // New content goes through a transaction (`Db::write`), a rename is one autocommit
    // statement (`Db::write_one`): both wait on the lock.
    let updates = [
        (
            "content",
            json!({ "id": id, "v": 1, "t": "after", "c": { "targets": [], "v": 2 } }),
        ),
        ("rename", json!({ "id": id, "v": 1, "t": "after" })),
    ];
    for (what, vars) in updates {
        let started = Instant::now();
        let e = alice.error(UPDATE, vars).await;
        let took = started.elapsed();
        assert_eq!(code(&e), "UNAVAILABLE", "{what}: {e:#}");
        assert!(
            took >= TIMEOUT,
            "{what}: answered after {took:?}, before the statement timeout: {e:#}"
        );
        assert!(
            took < 2 * TIMEOUT,
            "{what}: answered after {took:?}, more than one statement timeout"
        );
    }
    assert_eq!(
        s.metric("atelier_db_write_attempts_total").await - attempts,
        2,
        "one attempt per update"
    );
    assert_eq!(s.metric("atelier_db_write_retries_total").await, retries);
    let log = s.server_log();
    assert!(
        !log.contains("transaction_retry") && !log.contains("statement_retry"),
        "a timeout was retried:\n{log}"
    );

    holder.rollback().await.unwrap();
    let _ = db.close().await;
    let p = alice
        .data(
            "query($id: ID!) { project(id: $id) { title version content } }",
            json!({ "id": id }),
        )
        .await["project"]
        .clone();
    assert_eq!(
        p,
        json!({ "title": "before", "version": 1, "content": { "targets": [], "v": 1 } })
    );
    // Nothing is stuck: the same update now goes through.
    let v = alice
        .data(UPDATE, json!({ "id": id, "v": 1, "t": "after" }))
        .await["updateProject"]["version"]
        .clone();
    assert_eq!(v, 2);
}
