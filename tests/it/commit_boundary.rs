//! The commit boundary: a COMMIT whose reply is lost, a client that leaves while its commit is
//! on the wire, a second process on the same data dir, and rolling restarts under load. In
//! every case a committed row's bytes are readable, nothing uncommitted becomes visible, and
//! fsck is clean.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::api::{CREATE_PROJECT as CREATE, GET_PROJECT as GET, UPDATE_PROJECT as UPDATE};
use crate::{
    both_backends,
    harness::{Backend, Client, PgDatabase, TestServer, code, md5_hex, svg},
    proxy::Proxy,
};

both_backends!(
    client_gone_during_commit_keeps_the_bytes,
    second_process_on_the_same_data_dir_keeps_the_first_ones_writes,
    rolling_restarts_lose_nothing_acknowledged,
);

/// A project whose content differs with `n`.
fn content(n: usize) -> Value {
    json!({ "targets": [{ "isStage": true, "name": format!("Stage {n}") }], "meta": { "semver": "3.0.0" } })
}

/// Files in staging whose name ends with `suffix`.
fn staged_with(s: &TestServer, suffix: &str) -> usize {
    s.staging_files()
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .count()
}

async fn only_project_id(s: &TestServer) -> i64 {
    let db = s.db().await;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM projects",
        ))
        .await
        .unwrap()
        .expect("one project row");
    row.try_get("", "id").unwrap()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PostgreSQL behind the proxy, with a quick sweep.
async fn behind_proxy() -> (Proxy, TestServer) {
    let pg = PgDatabase::create().await;
    let proxy = Proxy::start().await;
    let s = proxy.server(
        pg,
        &[
            ("ATELIER_SWEEP_INTERVAL_SECS", "1"),
            ("ATELIER_PENDING_GRACE_SECS", "2"),
        ],
    );
    (proxy, s)
}

/// createProject, updateProject with new content and uploadAsset with new bytes, each with
/// its COMMIT delivered and the reply lost: whatever the client was told, the committed rows'
/// bytes read back exactly and fsck is clean, on the live server and after it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn lost_commit_reply_keeps_the_bytes() {
    let (proxy, mut s) = behind_proxy().await;
    let alice = s.user("alice").await;

    proxy.lose_next_commit_replies(1);
    let (_, created) = alice
        .raw(CREATE, json!({ "t": "lost reply", "c": content(1) }))
        .await;
    assert_eq!(proxy.cuts(), 1, "the COMMIT was cut");
    assert!(
        created.get("errors").is_none() || code(&created["errors"][0]) == "UNAVAILABLE",
        "{created}"
    );
    assert_eq!(
        s.count("projects").await,
        1,
        "the COMMIT reached PostgreSQL"
    );
    let id = only_project_id(&s).await.to_string();
    let read = alice.data(GET, json!({ "id": id })).await;
    assert_eq!(read["project"]["content"], content(1));
    assert_eq!(read["project"]["version"], 1);

    proxy.lose_next_commit_replies(1);
    let (_, updated) = alice
        .raw(UPDATE, json!({ "id": id, "v": 1, "c": content(2) }))
        .await;
    assert_eq!(proxy.cuts(), 2);
    assert!(
        updated.get("errors").is_none() || code(&updated["errors"][0]) == "UNAVAILABLE",
        "{updated}"
    );
    let read = alice.data(GET, json!({ "id": id })).await;
    assert_eq!(read["project"]["version"], 2);
    assert_eq!(read["project"]["content"], content(2));

    proxy.lose_next_commit_replies(1);
    let bytes = svg(4242);
    let (_, uploaded) = alice.upload_raw(bytes.clone(), "IMAGE_VECTOR", None).await;
    assert_eq!(proxy.cuts(), 3);
    assert!(
        uploaded.get("errors").is_none() || code(&uploaded["errors"][0]) == "UNAVAILABLE",
        "{uploaded}"
    );
    assert_eq!(s.count_assets().await, 1);
    let got = reqwest::get(format!("{}/assets/{}.svg", s.base_url, md5_hex(&bytes)))
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());

    s.fsck_ok();
    // The sweep publishes whatever a reader did not need yet; nothing stays pending.
    wait_until("staging is empty", async || s.staging_files().is_empty()).await;
    s.stop();
    s.fsck_ok();
    s.start_again();
    assert!(s.staging_files().is_empty());
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let read = alice.data(GET, json!({ "id": id })).await;
    assert_eq!(read["project"]["content"], content(2));
}

/// A COMMIT that never reaches PostgreSQL: no row, and the kept file is deleted once the
/// database has shown for the grace period that no row references it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn lost_commit_leaves_nothing_visible() {
    let (proxy, s) = behind_proxy().await;
    let alice = s.user("alice").await;
    proxy.lose_next_commits(1);
    let e = alice
        .error(CREATE, json!({ "t": "never committed", "c": content(7) }))
        .await;
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(code(&e), "UNAVAILABLE", "{e}");
    assert_eq!(s.count("projects").await, 0);
    assert_eq!(
        staged_with(&s, ".pending"),
        1,
        "kept until the database decides"
    );
    s.fsck_ok();
    wait_until("the pending file is settled", async || {
        s.staging_files().is_empty()
    })
    .await;
    assert!(s.blob_files().is_empty(), "{:?}", s.blob_files());
    s.fsck_ok();
}

/// The client disconnects while its COMMIT is held (the request future is dropped after the
/// commit): the staged file is kept, and the committed row's content reads back exactly.
async fn client_gone_during_commit_keeps_the_bytes(mut s: TestServer) {
    let alice = s.user("alice").await;
    s.restart_with_failpoints("db::after_commit=1*return(1500)");
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let gone = alice
        .request()
        .json(&json!({ "query": CREATE, "variables": { "t": "gone", "c": content(3) } }))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up before the answer");
    wait_until("the commit's file is kept as pending", async || {
        staged_with(&s, ".pending") == 1
    })
    .await;
    assert_eq!(s.count("projects").await, 1);
    let id = only_project_id(&s).await.to_string();
    s.fsck_ok();
    let read = alice.data(GET, json!({ "id": id })).await;
    assert_eq!(read["project"]["content"], content(3));
    assert!(s.staging_files().is_empty(), "the reader published it");
    s.stop();
    s.fsck_ok();
}

/// Process B starts on A's data dir while A's write is staged and waiting (PostgreSQL: on a
/// table lock; SQLite: held by a failpoint, since B could not start while A holds SQLite's
/// write lock). B's startup recovery must not touch A's staging directory.
async fn second_process_on_the_same_data_dir_keeps_the_first_ones_writes(mut s: TestServer) {
    let alice = s.user("alice").await;
    let lock = match s.backend {
        Backend::Postgres => {
            let txn = sea_orm::TransactionTrait::begin(&s.db().await)
                .await
                .unwrap();
            txn.execute_unprepared("LOCK TABLE projects IN EXCLUSIVE MODE")
                .await
                .unwrap();
            Some(txn)
        }
        Backend::Sqlite => {
            s.restart_with_failpoints("write::after_stage=1*return(4000)");
            None
        }
    };
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let writer = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.create_project("staged", content(5)).await })
    };
    wait_until("A's write is staged", async || {
        staged_with(&s, ".ready") == 1
    })
    .await;
    let b = s.second_process(&[]);
    assert_eq!(
        staged_with(&s, ".ready"),
        1,
        "B left A's staged write alone"
    );
    if let Some(txn) = lock {
        txn.commit().await.unwrap();
    }
    let created = writer.await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let via_b = Client::new(b.graphql_url(), alice.token.clone());
    for c in [&alice, &via_b] {
        let read = c.data(GET, json!({ "id": id })).await;
        assert_eq!(read["project"]["content"], content(5));
    }
    s.fsck_ok();
    drop(b);
    s.stop();
    s.fsck_ok();
}

#[derive(Default)]
struct Acked {
    /// project id → (version, content n) of the last acknowledged write.
    last: std::collections::HashMap<String, (i64, usize)>,
    writes: usize,
}

/// Two processes on one data dir and database, 20 writers each (create, then updates with
/// new content); one process is restarted 5 times under load (alternately SIGTERM and
/// SIGKILL). Every acknowledged write is there afterwards and fsck is clean.
async fn rolling_restarts_lose_nothing_acknowledged(mut s: TestServer) {
    let token = s.user("alice").await.token.unwrap();
    let mut b = s.second_process(&[("ATELIER_SHUTDOWN_GRACE_SECS", "2")]);
    let urls = Arc::new(Mutex::new([s.graphql_url(), b.graphql_url()]));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..40)
        .map(|w| {
            let (urls, acked, stop, token) =
                (urls.clone(), acked.clone(), stop.clone(), token.clone());
            tokio::spawn(async move {
                let mut project: Option<(String, i64)> = None;
                let mut n = w * 10_000;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let url = urls.lock().unwrap()[w % 2].clone();
                    let c = Client::new(url, Some(token.clone()));
                    let request = match &project {
                        None => json!({ "query": CREATE, "variables": { "t": format!("w{w}"), "c": content(n) } }),
                        Some((id, v)) => json!({ "query": UPDATE, "variables": { "id": id, "v": v, "c": content(n) } }),
                    };
                    let Ok(resp) = c
                        .request()
                        .json(&request)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let Ok(body) = resp.json::<Value>().await else {
                        continue;
                    };
                    let data = if project.is_none() {
                        &body["data"]["createProject"]
                    } else {
                        &body["data"]["updateProject"]
                    };
                    if let (Some(id), Some(v)) = (data["id"].as_str(), data["version"].as_i64()) {
                        project = Some((id.to_owned(), v));
                        let mut a = acked.lock().unwrap();
                        a.last.insert(id.to_owned(), (v, n));
                        a.writes += 1;
                    } else if code(&body["errors"][0]) == "VERSION_CONFLICT" {
                        // Only after a lost answer: re-read the version we are at.
                        if let Some((_, v)) = &mut project {
                            *v = body["errors"][0]["extensions"]["currentVersion"]
                                .as_i64()
                                .unwrap_or(*v);
                        }
                    }
                }
            })
        })
        .collect();
    for cycle in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if cycle % 2 == 0 {
            b.stop();
        } else {
            b.kill();
        }
        b.start_again();
        urls.lock().unwrap()[1] = b.graphql_url();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.writes >= 40, "the load ran: {} writes", acked.writes);
    let reader = Client::new(s.graphql_url(), Some(token.clone()));
    for (id, (version, n)) in &acked.last {
        let read = reader.data(GET, json!({ "id": id })).await;
        let got = read["project"]["version"].as_i64().unwrap();
        assert!(
            got >= *version,
            "project {id}: version {got} < acked {version}"
        );
        if got == *version {
            assert_eq!(read["project"]["content"], content(*n), "project {id}");
        }
    }
    // B's last run may have died with files in flight: S's startup recovery settles them.
    b.kill();
    s.restart();
    s.fsck_ok();
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
}
