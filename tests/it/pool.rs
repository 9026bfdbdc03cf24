//! The connection pool in `/metrics`: connections in use and idle, the maximum, the time
//! acquires took and acquire timeouts.

use std::{collections::HashMap, time::Duration};

use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::{
    both_backends,
    harness::{Backend, TestServer, empty_project},
};

const IN_USE: &str = "atelier_db_pool_connections{state=\"in_use\"}";
const IDLE: &str = "atelier_db_pool_connections{state=\"idle\"}";
const MAX: &str = "atelier_db_pool_max_connections";
const ACQUIRES: &str = "atelier_db_pool_acquire_seconds_count";
const TIMEOUTS: &str = "atelier_db_pool_acquire_timeouts_total";

/// Every sample of `/metrics`, by name with its labels.
async fn scrape(s: &TestServer) -> HashMap<String, f64> {
    let text = s.metrics_text().await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

/// Acquires that took longer than `le` seconds (`le` one of the bucket bounds).
fn slower_than(m: &HashMap<String, f64>, le: &str) -> f64 {
    get(m, ACQUIRES)
        - get(
            m,
            &format!("atelier_db_pool_acquire_seconds_bucket{{le=\"{le}\"}}"),
        )
}

/// The histogram's buckets are cumulative and end at its count.
fn assert_histogram_consistent(m: &HashMap<String, f64>) {
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix("atelier_db_pool_acquire_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            Some((le.parse().unwrap(), *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "buckets: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets not cumulative: {buckets:?}"
    );
    let (last_le, last) = *buckets.last().unwrap();
    assert!(last_le.is_infinite());
    assert_eq!(last, get(m, ACQUIRES));
}

both_backends!(pool_is_exported);

/// The gauges show the configured maximum and at most that many open connections; every
/// request's statements go through the acquire histogram.
async fn pool_is_exported(s: TestServer) {
    let max = match s.backend {
        Backend::Sqlite => 8.0,    // fixed
        Backend::Postgres => 32.0, // ATELIER_DB_MAX_CONNECTIONS' default
    };
    let user = s.user("pool-owner").await;
    let before = scrape(&s).await;
    assert_eq!(get(&before, MAX), max);
    for i in 0..5 {
        user.create_project(&format!("counted {i}"), empty_project())
            .await;
    }
    let after = scrape(&s).await;
    assert_eq!(get(&after, MAX), max);
    // Each createProject is at least one write transaction: one acquire.
    assert!(
        get(&after, ACQUIRES) >= get(&before, ACQUIRES) + 5.0,
        "acquires: {} then {}",
        get(&before, ACQUIRES),
        get(&after, ACQUIRES)
    );
    let open = get(&after, IN_USE) + get(&after, IDLE);
    assert!(
        (1.0..=max).contains(&open),
        "{open} open connections, max {max}"
    );
    assert_eq!(get(&after, TIMEOUTS), 0.0);
    assert_histogram_consistent(&after);
}

/// PostgreSQL only: its pool size is configurable, SQLite's is fixed at 8 and its writers
/// queue on the in-process write gate before they take a connection, so SQLite cannot be
/// made to run out of connections from outside.
///
/// A test connection holds a lock every INSERT into `projects` waits for; 40 concurrent
/// createProject requests then fill a pool of 2 connections and queue for one. When the lock
/// goes, all of them succeed; the gauges showed the pool full meanwhile, and the histogram
/// counted the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run it")]
async fn pool_pressure_postgres() {
    const REQUESTS: usize = 40;
    let s = TestServer::start_with(
        Backend::Postgres,
        &[
            ("ATELIER_DB_MAX_CONNECTIONS", "2"),
            // Every request waits the whole time the lock is held: no timeouts here.
            ("ATELIER_DB_ACQUIRE_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let user = s.user("pool-writer").await;
    user.create_project("warm-up", empty_project()).await;
    let before = scrape(&s).await;
    assert_eq!(get(&before, MAX), 2.0);

    let db = s.db().await;
    let lock = db.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE projects IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let user = user.clone();
            tokio::spawn(async move {
                user.create_project(&format!("pressed {i}"), empty_project())
                    .await
            })
        })
        .collect();

    // Both connections end up in transactions waiting for the lock.
    let mut peak_in_use = 0.0f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while peak_in_use < 2.0 && tokio::time::Instant::now() < deadline {
        let now = scrape(&s).await;
        assert_eq!(get(&now, MAX), 2.0);
        assert!(get(&now, IN_USE) + get(&now, IDLE) <= 2.0);
        peak_in_use = peak_in_use.max(get(&now, IN_USE));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peak_in_use, 2.0, "the pool never filled");
    // The other requests queue for a connection meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = scrape(&s).await;
    assert_eq!(get(&during, IN_USE), 2.0);
    assert_eq!(get(&during, IDLE), 0.0);
    lock.commit().await.unwrap();

    for request in requests {
        request.await.unwrap();
    }
    let _ = db.close().await;
    let after = scrape(&s).await;
    let acquires = get(&after, ACQUIRES) - get(&before, ACQUIRES);
    assert!(
        acquires >= REQUESTS as f64,
        "{acquires} acquires for {REQUESTS} writes"
    );
    // Requests queued behind the lock waited for a connection for longer than half a second.
    let waited = slower_than(&after, "0.5") - slower_than(&before, "0.5");
    assert!(waited >= 1.0, "no acquire waited: {after:?}");
    assert_eq!(get(&after, TIMEOUTS), 0.0);
    assert!(get(&after, IN_USE) + get(&after, IDLE) <= 2.0);
    assert_histogram_consistent(&after);
}

/// PostgreSQL only (see above). With one connection held by a write waiting for a lock and a
/// short acquire timeout, the writes queued behind it give up: they answer UNAVAILABLE and
/// are counted as acquire timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run it")]
async fn pool_acquire_timeouts_postgres() {
    const REQUESTS: usize = 5;
    let s = TestServer::start_with(
        Backend::Postgres,
        &[
            ("ATELIER_DB_MAX_CONNECTIONS", "1"),
            ("ATELIER_DB_ACQUIRE_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let user = s.user("pool-timeout").await;
    user.create_project("warm-up", empty_project()).await;
    let before = scrape(&s).await;
    assert_eq!(get(&before, TIMEOUTS), 0.0);

    let db = s.db().await;
    let lock = db.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE projects IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let user = user.clone();
            tokio::spawn(async move {
                user.raw(
                    "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id } }",
                    serde_json::json!({ "t": format!("timed out {i}"), "c": empty_project() }),
                )
                .await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while get(&scrape(&s).await, IN_USE) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Longer than the acquire timeout: the queued writes give up meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.commit().await.unwrap();

    let mut unavailable = 0;
    for request in requests {
        let (_, body) = request.await.unwrap();
        match body.get("errors") {
            None => {}
            Some(errors) => {
                assert_eq!(crate::harness::code(&errors[0]), "UNAVAILABLE", "{body:#}");
                unavailable += 1;
            }
        }
    }
    let _ = db.close().await;
    let timeouts = get(&scrape(&s).await, TIMEOUTS);
    assert!(unavailable >= 1, "no write gave up");
    // Each write that gave up waited in its transaction's acquire, where it is counted.
    assert!(
        (1.0..=unavailable as f64).contains(&timeouts),
        "{timeouts} timeouts counted, {unavailable} writes answered UNAVAILABLE"
    );
}

/// PostgreSQL only (see above). A field served by a dataloader (each listed project's
/// `remixes`) that cannot get a connection answers UNAVAILABLE, like every other read: the
/// loader carries the service's error, not a string of it (which answered INTERNAL).
///
/// The listing reads its page, then the failpoint holds its batched read; meanwhile a write
/// waiting for a lock takes the pool's only connection, so the read's acquire times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run it")]
async fn a_loader_served_field_without_a_connection_is_unavailable_postgres() {
    let s = TestServer::start_with(
        Backend::Postgres,
        &[
            ("ATELIER_DB_MAX_CONNECTIONS", "1"),
            // Longer than the pool-of-one start needs on a busy machine, shorter than the hold.
            ("ATELIER_DB_ACQUIRE_TIMEOUT_MS", "500"),
            ("FAILPOINTS", "service::batched_read=1*return(2000)"),
        ],
    )
    .await;
    let user = s.user("pool-loader").await;
    let source = user.create_project("source", empty_project()).await;
    user.data(
        "mutation($id: ID!) { copyProject(input: {id: $id}) { id } }",
        serde_json::json!({ "id": source["id"] }),
    )
    .await;

    const LISTING: &str = "{ projects { nodes { id remixes { nodes { id } } } } }";
    let listing = {
        let user = user.clone();
        tokio::spawn(async move { user.raw(LISTING, serde_json::json!({})).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !s.server_log().contains("failpoint_hold") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batched read never reached its failpoint:\n{}",
            s.server_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let db = s.db().await;
    let lock = db.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE projects IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let writer = {
        let user = user.clone();
        tokio::spawn(async move { user.create_project("holds the pool", empty_project()).await })
    };
    while get(&scrape(&s).await, IN_USE) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = listing.await.unwrap();
    lock.commit().await.unwrap();
    writer.await.unwrap();
    let _ = db.close().await;
    assert!(status.is_success(), "{status}: {body:#}");
    let errors = body["errors"].as_array().expect("an error");
    assert!(!errors.is_empty(), "{body:#}");
    for error in errors {
        assert_eq!(crate::harness::code(error), "UNAVAILABLE", "{body:#}");
        // At `remixes` (the path names the row it nulled).
        let column = LISTING.find("remixes").unwrap() + 1;
        assert_eq!(error["locations"][0]["column"], column, "{body:#}");
        assert_eq!(
            error["path"],
            serde_json::json!(["projects", "nodes", 0]),
            "{body:#}"
        );
    }
}
