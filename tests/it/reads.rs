//! Coalesced `project(id)` reads: concurrent readers share one statement, each still gets
//! exactly its own answer under its own visibility, reads see acknowledged writes, and a
//! failed batch fails only its own readers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code, empty_project},
};

const GET: &str = "query($id: ID!) { project(id: $id) { id title version } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!, $t: String) { updateProject(input: {id: $id, expectedVersion: $v, title: $t}) { version } }";

both_backends!(
    readers_waiting_on_one_batch_share_a_statement_and_get_their_own_answers,
    coalesced_reads_see_every_acknowledged_write,
    a_read_batch_that_dies_fails_only_its_readers,
    a_reader_that_goes_away_does_not_strand_the_others,
    a_reader_whose_content_was_superseded_and_collected_rereads_the_row,
);

fn reconnect(s: &TestServer, c: &Client) -> Client {
    Client::new(s.graphql_url(), c.token.clone())
}

/// alice and the id of her project titled "kept".
async fn alice_with_one_project(s: &TestServer) -> (Client, String) {
    let alice = s.user("alice").await;
    let id = alice.create_project("kept", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (alice, id)
}

async fn read(c: &Client, id: &str) -> Value {
    c.data(GET, json!({ "id": id })).await["project"].clone()
}

/// The first read's batch is held 1 s; the 63 readers that arrive meanwhile (three viewers,
/// their own, others' and missing ids, some ids asked for several times) must go out as one
/// more statement, and every reader must get exactly what it may see.
async fn readers_waiting_on_one_batch_share_a_statement_and_get_their_own_answers(
    mut s: TestServer,
) {
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let admin = s.user_with_role("root", "admin").await;
    let mut owned = Vec::new();
    for (owner, c) in [("alice", &alice), ("bob", &bob)] {
        for n in 0..8 {
            let p = c
                .create_project(&format!("{owner}-{n}"), empty_project())
                .await;
            owned.push((owner, p["id"].as_str().unwrap().to_owned()));
        }
    }
    owned.push(("nobody", "987654321".to_owned()));

    s.restart_with_failpoints("service::project_read_batch=1*return(1000)");
    let viewers = [
        ("alice", reconnect(&s, &alice)),
        ("bob", reconnect(&s, &bob)),
        ("root", reconnect(&s, &admin)),
    ];
    // Tokens are looked up (and cached) before the clock starts, without reading by id
    // (that would take the held batch).
    for (_, c) in &viewers {
        c.data("{ projects(first: 1) { nodes { id } } }", json!({}))
            .await;
    }
    let (batches, reads) = (
        s.metric("atelier_db_read_batches_total").await,
        s.metric("atelier_db_read_batch_reads_total").await,
    );
    assert_eq!(reads, 0);

    let first = {
        let (c, id) = (viewers[0].1.clone(), owned[0].1.clone());
        tokio::spawn(async move { read(&c, &id).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let asks: Vec<(usize, usize)> = (0..63).map(|i| (i % 3, (i * 7) % owned.len())).collect();
    let answers = join_all(asks.iter().map(|&(v, p)| {
        let (c, id) = (viewers[v].1.clone(), owned[p].1.clone());
        async move { read(&c, &id).await }
    }))
    .await;

    assert_eq!(first.await.unwrap()["title"], "alice-0");
    for (&(v, p), got) in asks.iter().zip(&answers) {
        let (viewer, (owner, id)) = (viewers[v].0, &owned[p]);
        let visible = *owner != "nobody" && (viewer == "root" || viewer == *owner);
        if visible {
            assert_eq!(got["id"], id.as_str(), "{viewer} reading {id}");
            let n = p % 8;
            assert_eq!(
                got["title"],
                format!("{owner}-{n}"),
                "{viewer} reading {id}"
            );
            assert_eq!(got["version"], 1);
        } else {
            assert!(got.is_null(), "{viewer} must not see {owner}'s {id}: {got}");
        }
    }
    let batches = s.metric("atelier_db_read_batches_total").await - batches;
    let reads = s.metric("atelier_db_read_batch_reads_total").await - reads;
    assert_eq!(reads, 64, "every read went through a batch");
    // One held statement, one for everyone who queued behind it (a third only if the
    // machine was too slow to send 63 requests in a second).
    assert!(batches <= 3, "64 reads took {batches} statements");
}

/// Writers update their own projects and read each one straight back while other readers
/// keep batches in flight: a coalesced read never answers with a row older than a write
/// acknowledged before the read was sent.
async fn coalesced_reads_see_every_acknowledged_write(s: TestServer) {
    let mut clients = Vec::new();
    for w in 0..16 {
        clients.push(s.user(&format!("writer{w}")).await);
    }
    let writers: Vec<(Client, String)> = join_all(clients.into_iter().map(|c| async move {
        let id = c.create_project("0", empty_project()).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (c, id)
    }))
    .await;
    let ids: Vec<String> = writers.iter().map(|(_, id)| id.clone()).collect();
    let before = (
        s.metric("atelier_db_read_batches_total").await,
        s.metric("atelier_db_read_batch_reads_total").await,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let admin = s.user_with_role("root", "admin").await;
    let background: Vec<_> = (0..16)
        .map(|r| {
            let (c, ids, stop) = (admin.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = r;
                while !stop.load(Ordering::SeqCst) {
                    assert!(!read(&c, &ids[n % ids.len()]).await.is_null());
                    n += 1;
                }
            })
        })
        .collect();
    let rounds = join_all(writers.into_iter().map(|(c, id)| async move {
        for v in 1..=15 {
            let title = format!("{v}");
            let body = c
                .data(UPDATE, json!({ "id": id, "v": v, "t": title }))
                .await;
            assert_eq!(body["updateProject"]["version"], v + 1);
            let got = read(&c, &id).await;
            assert_eq!(got["version"], v + 1, "read after acknowledged write {v}");
            assert_eq!(got["title"], title);
        }
    }));
    rounds.await;
    stop.store(true, Ordering::SeqCst);
    for b in background {
        b.await.unwrap();
    }

    let batches = s.metric("atelier_db_read_batches_total").await - before.0;
    let reads = s.metric("atelier_db_read_batch_reads_total").await - before.1;
    // Otherwise this test proved nothing about coalescing.
    assert!(
        reads > batches,
        "no reads were coalesced ({reads} reads in {batches} statements)"
    );
    eprintln!(
        "coalesced reads [{:?}]: {reads} reads in {batches} statements",
        s.backend
    );
}

/// The statement after a held one panics (in the drain task that answers the readers who
/// queued behind it): those readers get INTERNAL, the held reader its row, and later readers
/// are served instead of waiting forever.
async fn a_read_batch_that_dies_fails_only_its_readers(mut s: TestServer) {
    let (alice, id) = alice_with_one_project(&s).await;
    s.restart_with_failpoints("service::project_read_batch=1*return(1000)->1*panic");
    let alice = reconnect(&s, &alice);
    let held = {
        let (c, id) = (alice.clone(), id.clone());
        tokio::spawn(async move { read(&c, &id).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let queued = join_all((0..10).map(|_| alice.error(GET, json!({ "id": id })))).await;
    assert_eq!(held.await.unwrap()["title"], "kept");
    for e in &queued {
        assert_eq!(code(e), "INTERNAL", "{e}");
    }
    let after = tokio::time::timeout(
        Duration::from_secs(20),
        join_all((0..10).map(|_| read(&alice, &id))),
    )
    .await
    .expect("reads after a dead batch are served");
    for got in after {
        assert_eq!(got["title"], "kept");
    }
}

/// The reader whose statement is in flight goes away (client timeout): the readers queued
/// behind it are still answered.
async fn a_reader_that_goes_away_does_not_strand_the_others(mut s: TestServer) {
    let (alice, id) = alice_with_one_project(&s).await;
    s.restart_with_failpoints("service::project_read_batch=1*return(1500)");
    let alice = reconnect(&s, &alice);
    let impatient = {
        let (c, id) = (alice.clone(), id.clone());
        tokio::spawn(async move {
            c.request()
                .json(&json!({ "query": GET, "variables": { "id": id } }))
                .timeout(Duration::from_millis(300))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let others = tokio::time::timeout(
        Duration::from_secs(20),
        join_all((0..10).map(|_| read(&alice, &id))),
    )
    .await
    .expect("readers queued behind a reader that left are answered");
    assert!(
        impatient.await.unwrap().is_err(),
        "the impatient client timed out"
    );
    for got in others {
        assert_eq!(got["title"], "kept");
    }
}

/// The stored content key of project `id`, read directly from the database.
async fn content_key(s: &TestServer, id: &str) -> String {
    s.scalar(&format!("SELECT content_key FROM projects WHERE id = {id}"))
        .await
}

/// Waits until the server has logged `n` holds of the content-read failpoint.
async fn wait_for_holds(s: &TestServer, n: usize) {
    for _ in 0..200 {
        if s.server_log().matches("failpoint_hold").count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the content read never reached its failpoint:\n{}",
        s.server_log()
    );
}

/// A reader has read the project row; before it reads the content blob, the project gets new
/// content and `atelier gc` collects the old blob. The reader re-reads the row and answers
/// the new content (not INTERNAL); had the project been deleted, NOT_FOUND.
async fn a_reader_whose_content_was_superseded_and_collected_rereads_the_row(mut s: TestServer) {
    const CONTENT: &str = "query($id: ID!) { project(id: $id) { title content } }";
    const SET_CONTENT: &str = "mutation($id: ID!, $v: Int!, $c: JSON) { updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }";
    let alice = s.user("alice").await;
    let (old, new) = (
        json!({ "targets": [], "v": "old" }),
        json!({ "targets": [], "v": "new" }),
    );
    let id = alice.create_project("kept", old).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doomed = alice
        .create_project("doomed", json!({ "targets": [], "v": "doomed" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let blobs = s.data_dir().join("blobs");
    let blob_of = |key: &str| blobs.join(&key[..2]).join(key);
    let (old_key, doomed_key) = (content_key(&s, &id).await, content_key(&s, &doomed).await);
    assert!(blob_of(&old_key).exists() && blob_of(&doomed_key).exists());

    s.restart_with_failpoints("service::project_content_read=2*return(3000)");
    let alice = reconnect(&s, &alice);
    let read_content = |id: &str| {
        let (c, id) = (alice.clone(), id.to_owned());
        tokio::spawn(async move { c.raw(CONTENT, json!({ "id": id })).await })
    };

    // Superseded while read: the new content.
    let reader = read_content(&id);
    wait_for_holds(&s, 1).await;
    let v = alice
        .data(SET_CONTENT, json!({ "id": id, "v": 1, "c": new }))
        .await["updateProject"]["version"]
        .clone();
    assert_eq!(v, 2);
    // History retention of nothing: the superseded version goes, and gc collects its blob.
    let (ok, out) = s.cli(&[
        "gc",
        "--grace-secs",
        "0",
        "--history-keep-all-days",
        "0",
        "--history-keep-daily-days",
        "0",
    ]);
    assert!(ok && out.contains("removed 1 blob(s)"), "{out}");
    assert!(!blob_of(&old_key).exists(), "gc collected the old content");
    let (status, body) = reader.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "data": { "project": { "title": "kept", "content": new } } })
    );

    // Deleted while read: NOT_FOUND.
    let reader = read_content(&doomed);
    wait_for_holds(&s, 2).await;
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": doomed }),
        )
        .await;
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok && out.contains("removed 1 blob(s)"), "{out}");
    assert!(
        !blob_of(&doomed_key).exists(),
        "gc collected the deleted content"
    );
    let (status, body) = reader.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!({ "project": null }), "{body:#}");
    assert_eq!(code(&body["errors"][0]), "NOT_FOUND", "{body:#}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body:#}");
}
