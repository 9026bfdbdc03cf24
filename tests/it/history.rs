//! Version history: every committed change through every path is a version (gapless, each
//! readable, restorable), editing sessions' stale saves are kept as conflicted saves (never
//! a version, never lost, "keep mine" makes one current), retention keeps what it promises
//! and gc never breaks it, content blobs are stored compressed.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, code},
    ws::WsClient,
};

both_backends!(
    every_path_records_a_version,
    concurrent_saves_are_gapless_versions,
    a_stale_session_save_is_kept_as_a_conflict,
    retention_and_gc_keep_what_history_promises,
    project_changed_delivers_every_version_once_in_order,
    plain_blobs_written_before_compression_stay_readable,
    versions_cost_two_statements_whatever_the_page,
);

const VERSIONS: &str = "query($id: ID!, $first: Int, $after: String) { project(id: $id) {
    version
    versions(first: $first, after: $after) {
        edges { cursor node { version title size via savedAt savedBy { displayName } } }
        pageInfo { hasNextPage }
    } } }";

const VERSION_AT: &str = "query($id: ID!, $v: Int!) { project(id: $id) {
    versionAt(version: $v) { version title via content } } }";

const RESTORE: &str = "mutation($id: ID!, $v: Int!, $e: Int!) {
    restoreProjectVersion(input: {id: $id, version: $v, expectedVersion: $e}) { version title content } }";

const UPDATE: &str = "mutation($id: ID!, $e: Int!, $t: String, $c: JSON) {
    updateProject(input: {id: $id, expectedVersion: $e, title: $t, content: $c}) { version } }";

const OPEN: &str = "mutation($id: ID!) { openEditor(projectId: $id) { token projectHost } }";

const CONFLICTS: &str = "query($id: ID!) { project(id: $id) { version
    conflicts(first: 10) { edges { node { id baseVersion title savedBy { displayName } resolvedVersion content } } } } }";

const RESOLVE: &str = "mutation($id: ID!, $c: ID!, $e: Int!) {
    resolveConflict(input: {id: $id, conflictId: $c, expectedVersion: $e}) { version content } }";

fn content(n: usize) -> Value {
    json!({"targets": [{"isStage": true, "name": "Stage", "variables": {"n": ["n", n]}}],
           "meta": {"semver": "3.0.0"}})
}

fn token_of(c: &Client) -> &str {
    c.token.as_deref().unwrap()
}

async fn created(c: &Client, title: &str, n: usize) -> String {
    c.create_project(title, content(n)).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (version, via) of every version, newest first, through paging two at a time.
async fn history(c: &Client, id: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let d = c
            .data(VERSIONS, json!({"id": id, "first": 2, "after": after}))
            .await;
        let v = &d["project"]["versions"];
        for e in v["edges"].as_array().unwrap() {
            out.push((
                e["node"]["version"].as_i64().unwrap(),
                e["node"]["via"].as_str().unwrap().to_owned(),
            ));
            after = Some(e["cursor"].as_str().unwrap().to_owned());
        }
        if !v["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            return out;
        }
    }
}

async fn put(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn every_path_records_a_version(s: TestServer) {
    let alice = s.user("alice").await;
    let id = created(&alice, "first", 1).await;
    // A rename, a content change, an editor save.
    alice
        .data(UPDATE, json!({"id": id, "e": 1, "t": "renamed"}))
        .await;
    alice
        .data(UPDATE, json!({"id": id, "e": 2, "c": content(3)}))
        .await;
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    let (status, body) = put(&url, Some(token_of(&alice)), &content(4)).await;
    assert_eq!((status, body["version"].clone()), (200, json!(4)), "{body}");
    // A failed update (stale) and a failed save (missing asset) are not versions.
    let err = alice
        .error(UPDATE, json!({"id": id, "e": 1, "t": "stale"}))
        .await;
    assert_eq!(code(&err), "VERSION_CONFLICT");
    let missing = json!({"targets": [{"isStage": true, "name": "Stage", "costumes": [
        {"assetId": "0123456789abcdef0123456789abcdef", "md5ext": "0123456789abcdef0123456789abcdef.svg",
         "dataFormat": "svg", "name": "x"}]}], "meta": {"semver": "3.0.0"}});
    let (status, body) = put(&url, Some(token_of(&alice)), &missing).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("MISSING_ASSETS"))
    );

    assert_eq!(
        history(&alice, &id).await,
        vec![
            (4, "EDITOR".to_owned()),
            (3, "GRAPHQL".to_owned()),
            (2, "GRAPHQL".to_owned()),
            (1, "GRAPHQL".to_owned()),
        ]
    );
    let d = alice.data(VERSIONS, json!({"id": id, "first": 1})).await;
    let newest = &d["project"]["versions"]["edges"][0]["node"];
    assert_eq!(newest["savedBy"]["displayName"], "alice");
    assert_eq!(newest["title"], "renamed");
    assert_eq!(newest["size"], content(4).to_string().len());
    // Each version's content is the one it was saved with.
    for (v, n, title) in [(1, 1, "first"), (2, 1, "renamed"), (3, 3, "renamed")] {
        let d = alice.data(VERSION_AT, json!({"id": id, "v": v})).await;
        let at = &d["project"]["versionAt"];
        assert_eq!(
            (at["content"].clone(), at["title"].clone()),
            (content(n), json!(title))
        );
    }
    let d = alice.data(VERSION_AT, json!({"id": id, "v": 99})).await;
    assert_eq!(d["project"]["versionAt"], Value::Null);

    // Restore: a new version with the old title and content, compare-and-set.
    let err = alice
        .error(RESTORE, json!({"id": id, "v": 1, "e": 3}))
        .await;
    assert_eq!(code(&err), "VERSION_CONFLICT");
    let d = alice.data(RESTORE, json!({"id": id, "v": 1, "e": 4})).await;
    let r = &d["restoreProjectVersion"];
    assert_eq!(
        (
            r["version"].clone(),
            r["title"].clone(),
            r["content"].clone()
        ),
        (json!(5), json!("first"), content(1))
    );
    assert_eq!(history(&alice, &id).await[0], (5, "RESTORE".to_owned()));

    // A copy starts its own history; its source's is untouched.
    let d = alice
        .data(
            "mutation($id: ID!) { copyProject(input: {id: $id}) { id } }",
            json!({"id": id}),
        )
        .await;
    let copy = d["copyProject"]["id"].as_str().unwrap().to_owned();
    assert_eq!(history(&alice, &copy).await, vec![(1, "COPY".to_owned())]);

    // History is the owner's: another user cannot see the project, let alone its history;
    // nobody restores what they cannot change.
    let bob = s.user("bob").await;
    let d = bob.data(VERSIONS, json!({"id": id, "first": 5})).await;
    assert_eq!(d["project"], Value::Null);
    let err = bob.error(RESTORE, json!({"id": id, "v": 1, "e": 5})).await;
    assert_eq!(code(&err), "NOT_FOUND");
    let err = alice
        .error(RESTORE, json!({"id": id, "v": 42, "e": 5}))
        .await;
    assert_eq!(code(&err), "NOT_FOUND");
    assert_eq!(s.count("project_versions").await, 6);

    // Content blobs are stored compressed (gzip), named by the hash of the JSON.
    let gz = s
        .blob_files()
        .into_iter()
        .filter(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .count();
    assert_eq!(
        gz, 3,
        "the three distinct contents (1, 3, 4), each one gzip blob"
    );
}

async fn concurrent_saves_are_gapless_versions(s: TestServer) {
    let alice = s.user("alice").await;
    let id = created(&alice, "busy", 0).await;
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    const N: usize = 20;
    // N editor saves (last writer wins) and N GraphQL updates (compare-and-set, retried on
    // conflict), all at once.
    let mut tasks = Vec::new();
    for i in 1..=N {
        let (url, token) = (url.clone(), token_of(&alice).to_owned());
        tasks.push(tokio::spawn(async move {
            let (status, body) = put(&url, Some(&token), &content(i)).await;
            assert_eq!(status, 200, "{body}");
        }));
    }
    for i in N + 1..=2 * N {
        let (alice, id) = (alice.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let v = alice
                    .data(
                        "query($id: ID!) { project(id: $id) { version } }",
                        json!({"id": id}),
                    )
                    .await["project"]["version"]
                    .as_i64()
                    .unwrap();
                let (_, body) = alice
                    .raw(UPDATE, json!({"id": id, "e": v, "c": content(i)}))
                    .await;
                if body["errors"].is_null() {
                    break;
                }
                assert_eq!(code(&body["errors"][0]), "VERSION_CONFLICT", "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let versions = history(&alice, &id).await;
    let numbers: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
    assert_eq!(numbers, (1..=(2 * N as i64 + 1)).rev().collect::<Vec<_>>());
    assert_eq!(
        versions.iter().filter(|(_, via)| via == "EDITOR").count(),
        N
    );
    // Each version holds exactly one of the saves, each save is exactly one version.
    let mut seen = BTreeSet::new();
    for v in 2..=(2 * N as i64 + 1) {
        let d = alice.data(VERSION_AT, json!({"id": id, "v": v})).await;
        let n = d["project"]["versionAt"]["content"]["targets"][0]["variables"]["n"][1]
            .as_i64()
            .unwrap();
        assert!(seen.insert(n), "save {n} is two versions");
    }
    assert_eq!(seen, (1..=2 * N as i64).collect::<BTreeSet<_>>());
    // Each one restores.
    let mut current = 2 * N as i64 + 1;
    for v in 1..=2 * N as i64 + 1 {
        let d = alice
            .data(RESTORE, json!({"id": id, "v": v, "e": current}))
            .await;
        current += 1;
        assert_eq!(d["restoreProjectVersion"]["version"], current);
        let want = alice.data(VERSION_AT, json!({"id": id, "v": v})).await;
        assert_eq!(
            d["restoreProjectVersion"]["content"],
            want["project"]["versionAt"]["content"]
        );
    }
}

async fn a_stale_session_save_is_kept_as_a_conflict(s: TestServer) {
    let alice = s.user("alice").await;
    let id = created(&alice, "tabs", 0).await;
    let open = |c: Client| {
        let id = id.clone();
        async move {
            let g = c.data(OPEN, json!({"id": id})).await["openEditor"].clone();
            format!("{}/{id}", g["projectHost"].as_str().unwrap())
        }
    };
    let tab_a = open(alice.clone()).await;
    let tab_b = open(alice.clone()).await;
    let http = reqwest::Client::new();
    // Both tabs load version 1.
    for tab in [&tab_a, &tab_b] {
        let r = http.get(tab).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Tab B saves twice: versions 2 and 3, each from the base it last saved.
    for (n, want) in [(10, 2), (11, 3)] {
        let (status, body) = put(&tab_b, None, &content(n)).await;
        assert_eq!(
            (status, body["version"].clone()),
            (200, json!(want)),
            "{body}"
        );
    }
    // Tab A, never reloaded, saves: refused, kept, not a version.
    let (status, body) = put(&tab_a, None, &content(20)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(body["code"], "VERSION_CONFLICT");
    assert_eq!(body["currentVersion"], 3);
    let conflict = body["conflictId"].as_str().unwrap().to_owned();
    // Its autosave retries the same bytes: still one conflict.
    for _ in 0..3 {
        let (status, again) = put(&tab_a, None, &content(20)).await;
        assert_eq!(status, 409);
        assert_eq!(again["conflictId"], conflict.as_str());
    }
    assert_eq!(s.count("project_conflicts").await, 1);
    let d = alice.data(CONFLICTS, json!({"id": id})).await;
    assert_eq!(d["project"]["version"], 3, "B's work stays current");
    let c = &d["project"]["conflicts"]["edges"][0]["node"];
    assert_eq!(c["id"], conflict.as_str());
    assert_eq!(c["baseVersion"], 1);
    assert_eq!(c["savedBy"]["displayName"], "alice");
    assert_eq!(c["content"], content(20));
    assert_eq!(c["resolvedVersion"], Value::Null);
    assert_eq!(history(&alice, &id).await.len(), 3);

    // "Keep mine": compare-and-set, then A's content is current as version 4.
    let err = alice
        .error(RESOLVE, json!({"id": id, "c": conflict, "e": 2}))
        .await;
    assert_eq!(code(&err), "VERSION_CONFLICT");
    let d = alice
        .data(RESOLVE, json!({"id": id, "c": conflict, "e": 3}))
        .await;
    assert_eq!(d["resolveConflict"]["version"], 4);
    assert_eq!(d["resolveConflict"]["content"], content(20));
    let d = alice.data(CONFLICTS, json!({"id": id})).await;
    assert_eq!(
        d["project"]["conflicts"]["edges"][0]["node"]["resolvedVersion"],
        4
    );
    // Nothing of either tab is lost: B's saves are versions 2 and 3.
    for (v, n) in [(2, 10), (3, 11), (4, 20)] {
        let d = alice.data(VERSION_AT, json!({"id": id, "v": v})).await;
        assert_eq!(d["project"]["versionAt"]["content"], content(n));
    }
    // Tab B is stale now; once it reloads, it saves again.
    let (status, _) = put(&tab_b, None, &content(12)).await;
    assert_eq!(status, 409);
    assert_eq!(http.get(&tab_b).send().await.unwrap().status(), 200);
    let (status, body) = put(&tab_b, None, &content(12)).await;
    assert_eq!((status, body["version"].clone()), (200, json!(5)), "{body}");
    // The plain route stays last-writer-wins (and each save is a version).
    let plain = format!("{}/scratch/projects/{id}", s.base_url);
    let (status, body) = put(&plain, Some(token_of(&alice)), &content(30)).await;
    assert_eq!((status, body["version"].clone()), (200, json!(6)));
    // Another user cannot see the conflicts (nor resolve them).
    let bob = s.user("bob").await;
    let err = bob
        .error(RESOLVE, json!({"id": id, "c": conflict, "e": 6}))
        .await;
    assert_eq!(code(&err), "NOT_FOUND");

    // The base lives in the database: on PostgreSQL a second process serves a tab's save.
    if s.backend == Backend::Postgres {
        let other = s.second_process(&[]);
        let tab_c = open(alice.clone()).await;
        assert_eq!(http.get(&tab_c).send().await.unwrap().status(), 200);
        let (status, _) = put(&plain, Some(token_of(&alice)), &content(31)).await;
        assert_eq!(status, 200);
        let on_other = tab_c.replace(&s.base_url, &other.base_url);
        let (status, body) = put(&on_other, None, &content(32)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("VERSION_CONFLICT"))
        );
        assert_eq!(body["currentVersion"], 7);
    }
}

async fn retention_and_gc_keep_what_history_promises(s: TestServer) {
    use sea_orm::ConnectionTrait;
    let alice = s.user("alice").await;
    let id = created(&alice, "old", 1).await;
    for (e, n) in [(1, 2), (2, 3), (3, 4), (4, 5)] {
        alice
            .data(UPDATE, json!({"id": id, "e": e, "c": content(n)}))
            .await;
        if n == 2 {
            // An export of version 2 pins it, whatever its age.
            let job = alice
                .data(
                    "mutation($id: ID!) { exportProject(id: $id) { id } }",
                    json!({"id": id}),
                )
                .await["exportProject"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let d = alice
                    .data(
                        "query($id: ID!) { job(id: $id) { status } }",
                        json!({"id": job}),
                    )
                    .await;
                if d["job"]["status"] == "READY" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "export never ready: {d}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    // A project whose only (current) version is very old: pinned.
    let ancient = created(&alice, "ancient", 100).await;
    // Backdate: v1 beyond a year, v2 and v3 on one day a month ago (v3 later), v4 the day
    // after, v5 now.
    let db = s.db().await;
    let at = |days: i64, hour: u32| {
        let day = chrono::Utc::now().date_naive() - chrono::Duration::days(days);
        day.and_hms_opt(hour, 0, 0).unwrap().and_utc().to_rfc3339()
    };
    for (v, when) in [
        (1, at(400, 9)),
        (2, at(30, 9)),
        (3, at(30, 17)),
        (4, at(29, 9)),
    ] {
        db.execute_unprepared(&format!(
            "UPDATE project_versions SET saved_at = '{when}' WHERE project_id = {id} AND version = {v}"
        ))
        .await
        .unwrap();
    }
    db.execute_unprepared(&format!(
        "UPDATE project_versions SET saved_at = '{}' WHERE project_id = {ancient}",
        at(800, 9)
    ))
    .await
    .unwrap();
    let _ = db.close().await;
    let blobs_before = s.blob_files().len();

    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    let kept: Vec<i64> = history(&alice, &id).await.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        kept,
        vec![5, 4, 3, 2],
        "v1 older than a year goes; v2, not its day's last, is pinned by its export"
    );
    assert_eq!(
        history(&alice, &ancient).await.len(),
        1,
        "the current version is pinned"
    );
    for v in [2, 3, 4, 5] {
        let d = alice.data(VERSION_AT, json!({"id": id, "v": v})).await;
        assert_eq!(d["project"]["versionAt"]["content"], content(v as usize));
    }
    // v1's blob went; everything history still names is there.
    assert_eq!(s.blob_files().len(), blobs_before - 1);
    s.fsck_ok();
    // Restoring a kept old version still works after gc.
    let d = alice.data(RESTORE, json!({"id": id, "v": 3, "e": 5})).await;
    assert_eq!(d["restoreProjectVersion"]["content"], content(3));
}

const CHANGED: &str =
    "subscription($id: ID!) { projectChanged(id: $id) { id version title content } }";

/// The versions one subscription delivers, until it has `until`.
async fn changes(ws: &mut WsClient, sub: &str, until: i64) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    while out.last().map(|(v, _)| *v) != Some(until) {
        let msg = ws.next_of(sub).await.expect("an event");
        assert_eq!(msg["type"], "next", "{msg}");
        let p = &msg["payload"]["data"]["projectChanged"];
        out.push((p["version"].as_i64().unwrap(), p["content"].clone()));
    }
    out
}

/// 20 concurrent writers (over two processes on PostgreSQL): every subscriber, on either
/// process, sees every version exactly once, in order, with that version's content; a save
/// that rolled back (missing asset) and a conflicted save are no change.
async fn project_changed_delivers_every_version_once_in_order(s: TestServer) {
    let alice = s.user("alice").await;
    let id = created(&alice, "live", 0).await;
    let other = (s.backend == Backend::Postgres).then(|| s.second_process(&[]));
    let servers: Vec<&TestServer> = std::iter::once(&s).chain(other.as_ref()).collect();
    let mut subs = Vec::new();
    for server in &servers {
        for _ in 0..2 {
            let mut ws = WsClient::connect(server, alice.token.as_deref()).await;
            let sub = ws.start(CHANGED, json!({"id": id}), json!({})).await;
            subs.push((ws, sub));
        }
    }
    // Nobody else may watch it.
    let bob = s.user("bob").await;
    let mut bobs = WsClient::connect(&s, bob.token.as_deref()).await;
    let refused = bobs.start(CHANGED, json!({"id": id}), json!({})).await;
    let msg = bobs.next_of(&refused).await.unwrap();
    assert_eq!(msg["type"], "error", "{msg}");
    assert_eq!(code(&msg["payload"][0]), "NOT_FOUND");

    // One change everyone sees first: from then on all subscriptions are live.
    alice
        .data(UPDATE, json!({"id": id, "e": 1, "c": content(1)}))
        .await;
    for (ws, sub) in subs.iter_mut() {
        assert_eq!(changes(ws, sub, 2).await, vec![(2, content(1))]);
    }
    // A stale editing session's save (a conflict) and a save that rolls back: no change.
    let g = alice.data(OPEN, json!({"id": id})).await["openEditor"].clone();
    let tab = format!("{}/{id}", g["projectHost"].as_str().unwrap());
    assert_eq!(reqwest::get(&tab).await.unwrap().status(), 200);
    alice
        .data(UPDATE, json!({"id": id, "e": 2, "c": content(2)}))
        .await;
    let (status, _) = put(&tab, None, &content(99)).await;
    assert_eq!(status, 409);
    let missing = json!({"targets": [{"isStage": true, "name": "Stage", "costumes": [
        {"assetId": "0123456789abcdef0123456789abcdef", "md5ext": "0123456789abcdef0123456789abcdef.svg",
         "dataFormat": "svg", "name": "x"}]}], "meta": {"semver": "3.0.0"}});
    let plain = format!("{}/scratch/projects/{id}", s.base_url);
    let (status, _) = put(&plain, Some(token_of(&alice)), &missing).await;
    assert_eq!(status, 400);

    // 20 writers at once, spread over the processes.
    const N: usize = 20;
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = format!(
            "{}/scratch/projects/{id}",
            servers[i % servers.len()].base_url
        );
        let token = token_of(&alice).to_owned();
        tasks.push(tokio::spawn(async move {
            let (status, body) = put(&url, Some(&token), &content(100 + i)).await;
            assert_eq!(status, 200, "{body}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = 3 + N as i64;
    for (ws, sub) in subs.iter_mut() {
        let seen = changes(ws, sub, last).await;
        let versions: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            versions,
            (3..=last).collect::<Vec<_>>(),
            "each version once, in order"
        );
        assert_eq!(seen[0].1, content(2));
        // Each event carries its own version's content: the 20 saves, each once.
        let ns: BTreeSet<i64> = seen[1..]
            .iter()
            .map(|(_, c)| c["targets"][0]["variables"]["n"][1].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (100..100 + N as i64).collect::<BTreeSet<_>>());
    }
    // A rename (on PostgreSQL one statement that records its version and notifies; sent to
    // the other process there) is a change too, delivered everywhere with its title.
    let renamed: Value = reqwest::Client::new()
        .post(format!("{}/graphql", servers[servers.len() - 1].base_url))
        .bearer_auth(token_of(&alice))
        .json(&json!({"query": UPDATE, "variables": {"id": id, "e": last, "t": "renamed live"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        renamed["data"]["updateProject"]["version"],
        json!(last + 1),
        "{renamed}"
    );
    for (ws, sub) in subs.iter_mut() {
        let msg = ws.next_of(sub).await.expect("the rename");
        let p = &msg["payload"]["data"]["projectChanged"];
        assert_eq!(
            (p["version"].as_i64(), p["title"].as_str()),
            (Some(last + 1), Some("renamed live")),
            "{msg}"
        );
    }
    assert_eq!(
        history(&alice, &id).await[0],
        (last + 1, "GRAPHQL".to_owned())
    );
    // Deleting the project ends every subscription.
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({"id": id}),
        )
        .await;
    for (ws, sub) in subs.iter_mut() {
        let msg = ws.next_of(sub).await.unwrap();
        assert_eq!(msg["type"], "error", "{msg}");
        assert_eq!(code(&msg["payload"][0]), "NOT_FOUND");
    }
}

/// A data dir from before compression holds plain JSON under the same key (its SHA-256):
/// it is read, exported, checked and kept as before.
async fn plain_blobs_written_before_compression_stay_readable(s: TestServer) {
    let alice = s.user("alice").await;
    let id = created(&alice, "old", 7).await;
    let files = s.blob_files();
    assert_eq!(files.len(), 1);
    let gz = std::fs::read(&files[0]).unwrap();
    assert!(gz.starts_with(&[0x1f, 0x8b]));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    // As an old server wrote it: the JSON itself, named by its own hash.
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&plain))
    );
    std::fs::write(&files[0], &plain).unwrap();
    let d = alice.data(VERSION_AT, json!({"id": id, "v": 1})).await;
    assert_eq!(d["project"]["versionAt"]["content"], content(7));
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token_of(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), content(7));
    s.fsck_ok();
    // A new version of other content is compressed; the plain one is kept for history.
    alice
        .data(UPDATE, json!({"id": id, "e": 1, "c": content(8)}))
        .await;
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    assert_eq!(s.blob_files().len(), 2);
    s.fsck_ok();
}

/// `Project.versions(first: 50)` with every version's saver costs two statements (the page,
/// one batch of users) on top of the same project read without it, for 5 or 50 versions
/// (one request at a time: no read coalescing blurs the count, as it does in bench H1).
async fn versions_cost_two_statements_whatever_the_page(s: TestServer) {
    const PLAIN: &str = "query($id: ID!) { project(id: $id) { id version } }";
    const WITH: &str = "query($id: ID!) { project(id: $id) { id version versions(first: 50) {
        edges { node { version title size savedAt via savedBy { displayName } } } } } }";
    let alice = s.user("alice").await;
    let id = created(&alice, "many", 0).await;
    let url = format!("{}/scratch/projects/{id}", s.base_url);
    let mut added = Vec::new();
    for (from, to) in [(1, 5), (5, 60)] {
        for n in from..to {
            let (status, _) = put(&url, Some(token_of(&alice)), &content(n)).await;
            assert_eq!(status, 200);
        }
        // Warm: the viewer's token is cached after the first request.
        alice.data(PLAIN, json!({"id": id})).await;
        let cost = |q: &'static str| {
            let (s, alice, id) = (&s, &alice, &id);
            async move {
                let before = s.metric("atelier_db_statements_total").await;
                alice.data(q, json!({"id": id})).await;
                s.metric("atelier_db_statements_total").await - before
            }
        };
        let plain = cost(PLAIN).await;
        let with = cost(WITH).await;
        added.push(with - plain);
    }
    assert_eq!(
        added,
        vec![2, 2],
        "versions: one page statement and one batch of savers"
    );
}
