//! `.sb3` exports as background jobs: one claim and one build per project version however many
//! ask at once (in one process or two), failure then retry, a worker killed mid-build, the
//! download and its visibility, and the `jobChanged` subscription over graphql-transport-ws.

use std::{io::Read, time::Duration};

use futures::{SinkExt, StreamExt, future::join_all};
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code, md5_hex, png, svg, wav},
};

const EXPORT: &str = "mutation($id: ID!) { exportProject(id: $id) { id kind status url error createdAt updatedAt } }";
const JOB: &str = "query($id: ID!) { job(id: $id) { id kind status url error } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!, $c: JSON) { updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }";
const SHARE: &str =
    "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }";

both_backends!(
    concurrent_exports_of_one_version_build_once,
    a_failed_export_is_claimed_anew,
    the_bundle_is_of_the_claimed_version,
    who_may_export_and_download,
    subscription_reports_each_status_in_order,
    a_killed_worker_s_job_is_reclaimed,
    an_exported_bundle_imports_back_equal,
    entries_are_named_as_the_json_says,
);

/// A project whose content references three uploaded assets (vector, bitmap, sound); returns
/// (project id, content, [(md5ext, bytes)]).
async fn project_with_assets(
    c: &Client,
    title: &str,
    n: usize,
) -> (String, Value, Vec<(String, Vec<u8>)>) {
    let files = [
        (svg(n), "IMAGE_VECTOR", "svg"),
        (png(n), "IMAGE_BITMAP", "png"),
        (wav(n), "SOUND", "wav"),
    ];
    let mut assets = Vec::new();
    for (bytes, ty, ext) in files {
        c.upload(bytes.clone(), ty).await;
        assets.push((format!("{}.{ext}", md5_hex(&bytes)), bytes));
    }
    let content = json!({
        "targets": [
            { "isStage": true, "name": "Stage",
              "costumes": [{ "name": "backdrop", "md5ext": assets[0].0, "assetId": &assets[0].0[..32], "dataFormat": "svg" }],
              "sounds": [{ "name": "pop", "md5ext": assets[2].0, "assetId": &assets[2].0[..32], "dataFormat": "wav" }] },
            { "isStage": false, "name": "Sprite1",
              "costumes": [
                  { "name": "c1", "md5ext": assets[1].0, "assetId": &assets[1].0[..32], "dataFormat": "png" },
                  // The same asset twice: one zip entry.
                  { "name": "c2", "md5ext": assets[0].0, "assetId": &assets[0].0[..32], "dataFormat": "svg" }
              ],
              "sounds": [] }
        ],
        "meta": { "semver": "3.0.0", "n": n }
    });
    let id = c.create_project(title, content.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, content, assets)
}

async fn export(c: &Client, project: &str) -> Value {
    c.data(EXPORT, json!({ "id": project })).await["exportProject"].clone()
}

/// Polls `job(id)` until it is READY or FAILED.
async fn settled(c: &Client, job: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let j = c.data(JOB, json!({ "id": job })).await["job"].clone();
        if j["status"] == "READY" || j["status"] == "FAILED" {
            return j;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job {job} did not settle: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `job(id)` until its status is `status`.
async fn reaches(c: &Client, job: &str, status: &str) {
    let started = std::time::Instant::now();
    loop {
        let j = c.data(JOB, json!({ "id": job })).await["job"].clone();
        if j["status"] == status {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job {job} never became {status}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `path` on the server with the client's token: (status, headers, body).
async fn get(s: &TestServer, c: &Client, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = c.http.get(format!("{}{path}", s.base_url));
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("download");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// The bundle opens as Scratch expects: a zip with `project.json` at the root equal to
/// `content`, and exactly the referenced assets, named md5ext, with bytes of that md5.
fn assert_bundle(bytes: &[u8], content: &Value, assets: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid zip");
    let mut names: Vec<String> = zip
        .file_names()
        .map(|n| n.expect("entry name").into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = assets.iter().map(|(n, _)| n.clone()).collect();
    expected.push("project.json".to_owned());
    expected.sort();
    assert_eq!(names, expected, "zip entries");
    let mut json = String::new();
    zip.by_name("project.json")
        .unwrap()
        .read_to_string(&mut json)
        .unwrap();
    let parsed: Value = serde_json::from_str(&json).expect("project.json parses");
    assert_eq!(
        &parsed, content,
        "project.json is the exported version's content"
    );
    for (name, original) in assets {
        let mut got = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(&got, original, "{name}");
        assert_eq!(
            format!("{}.{}", md5_hex(&got), name.split('.').nth(1).unwrap()),
            *name
        );
    }
}

async fn job_row_i64(s: &TestServer, job: &str, column: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT {column} AS v FROM jobs WHERE id = {job}"),
        ))
        .await
        .unwrap()
        .unwrap();
    let v: i64 = row
        .try_get::<i64>("", "v")
        .or_else(|_| row.try_get::<i32>("", "v").map(i64::from))
        .unwrap();
    let _ = db.close().await;
    v
}

async fn bundle_key(s: &TestServer, job: &str) -> String {
    s.scalar(&format!("SELECT bundle_key FROM jobs WHERE id = {job}"))
        .await
}

/// 20 concurrent `exportProject` for one version: one job for all, one build, a valid bundle;
/// asking again answers the READY job without building; a new version is a new job.
async fn concurrent_exports_of_one_version_build_once(s: TestServer) {
    let alice = s.user("alice").await;
    let (id, content, assets) = project_with_assets(&alice, "My \"Game\"/1", 1).await;

    let jobs = join_all((0..20).map(|_| export(&alice, &id))).await;
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    for j in &jobs {
        assert_eq!(j["id"], job, "every racer gets the same job");
        assert_eq!(j["kind"], "EXPORT_SB3");
        assert!(["PENDING", "RUNNING", "READY"].contains(&j["status"].as_str().unwrap()));
    }
    let done = settled(&alice, &job).await;
    assert_eq!(done["status"], "READY", "{done}");
    assert_eq!(done["url"], format!("/exports/{job}.sb3"));
    assert_eq!(done["error"], Value::Null);
    assert_eq!(s.count("jobs").await, 1);
    assert_eq!(s.metric("atelier_export_builds_total").await, 1);

    let (status, headers, bytes) = get(&s, &alice, &format!("/exports/{job}.sb3")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x.scratch.sb3");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"My _Game__1.sb3\""
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", bundle_key(&s, &job).await));
    assert_bundle(&bytes, &content, &assets);
    let revalidated = alice
        .http
        .get(format!("{}/exports/{job}.sb3", s.base_url))
        .bearer_auth(alice.token.as_ref().unwrap())
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status().as_u16(), 304);

    // gc keeps a live bundle.
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    let (status, _, again) = get(&s, &alice, &format!("/exports/{job}.sb3")).await;
    assert_eq!(status, 200);
    assert_eq!(again, bytes);

    // READY: the same job again, nothing rebuilt.
    let again = export(&alice, &id).await;
    assert_eq!(again["id"], job);
    assert_eq!(again["status"], "READY");
    assert_eq!(s.metric("atelier_export_builds_total").await, 1);

    // A new version is a new job (and a new build).
    let (_, _, assets2) = project_with_assets(&alice, "other", 2).await;
    let mut content2 = content.clone();
    content2["targets"][1]["costumes"][0] = json!({ "name": "c1", "md5ext": assets2[1].0, "assetId": &assets2[1].0[..32], "dataFormat": "png" });
    alice
        .data(UPDATE, json!({ "id": id, "v": 1, "c": content2 }))
        .await;
    let next = export(&alice, &id).await;
    let next_id = next["id"].as_str().unwrap().to_owned();
    assert_ne!(next_id, job);
    assert_eq!(settled(&alice, &next_id).await["status"], "READY");
    assert_eq!(s.count("jobs").await, 2);
    assert_eq!(s.metric("atelier_export_builds_total").await, 2);
    let (_, _, bytes2) = get(&s, &alice, &format!("/exports/{next_id}.sb3")).await;
    let expected = vec![assets[0].clone(), assets2[1].clone(), assets[2].clone()];
    assert_bundle(&bytes2, &content2, &expected);
    // The first version's bundle still downloads.
    assert_eq!(get(&s, &alice, &format!("/exports/{job}.sb3")).await.0, 200);
}

/// A build that fails: FAILED with its reason, no bundle, 409 on download; the next request
/// claims a new job, which succeeds.
async fn a_failed_export_is_claimed_anew(mut s: TestServer) {
    s.restart_with_failpoints("export::build=1*return(disk on fire)");
    let alice = s.user("alice").await;
    let (id, content, assets) = project_with_assets(&alice, "p", 1).await;
    let first = export(&alice, &id).await["id"].as_str().unwrap().to_owned();
    let failed = settled(&alice, &first).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["url"], Value::Null);
    assert!(
        failed["error"].as_str().unwrap().contains("disk on fire"),
        "{failed}"
    );
    let (status, _, body) = get(&s, &alice, &format!("/exports/{first}.sb3")).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("export again"));
    assert_eq!(s.metric("atelier_export_failures_total").await, 1);

    // Concurrent retries: one new job for all of them.
    let retries = join_all((0..5).map(|_| export(&alice, &id))).await;
    let second = retries[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(retries.iter().all(|r| r["id"] == second));
    assert_eq!(settled(&alice, &second).await["status"], "READY");
    assert_eq!(s.count("jobs").await, 2);
    assert_eq!(s.metric("atelier_export_builds_total").await, 2);
    let (status, _, bytes) = get(&s, &alice, &format!("/exports/{second}.sb3")).await;
    assert_eq!(status, 200);
    assert_bundle(&bytes, &content, &assets);
    // The failed job stays failed.
    let old = alice.data(JOB, json!({ "id": first })).await["job"].clone();
    assert_eq!(old["status"], "FAILED");
}

/// The job is for the version current when it was claimed: a project updated before a
/// worker builds it still exports that version (its content blob is kept for the job, even
/// through gc), and the new version is a job of its own.
async fn the_bundle_is_of_the_claimed_version(mut s: TestServer) {
    s.restart_with_failpoints("jobs::before_take=1*return(1500)");
    let alice = s.user("alice").await;
    let (id, content, assets) = project_with_assets(&alice, "p", 1).await;
    let job = export(&alice, &id).await;
    assert_eq!(job["status"], "PENDING");
    let job = job["id"].as_str().unwrap().to_owned();
    let v2 =
        json!({ "targets": [{ "isStage": true, "name": "Stage" }], "meta": { "semver": "3.0.0" } });
    alice
        .data(UPDATE, json!({ "id": id, "v": 1, "c": v2 }))
        .await;
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    assert_eq!(settled(&alice, &job).await["status"], "READY");
    let (_, _, bytes) = get(&s, &alice, &format!("/exports/{job}.sb3")).await;
    assert_bundle(&bytes, &content, &assets);
    let newer = export(&alice, &id).await["id"].as_str().unwrap().to_owned();
    assert_ne!(newer, job);
    assert_eq!(settled(&alice, &newer).await["status"], "READY");
    let (_, _, bytes) = get(&s, &alice, &format!("/exports/{newer}.sb3")).await;
    assert_bundle(&bytes, &v2, &[]);
}

/// Export and download need read access to the project, now: a stranger sees nothing, a
/// classmate it is shared with may export (the same job) and download.
async fn who_may_export_and_download(s: TestServer) {
    let alice = s.user("alice").await;
    let mia = s.user("mia").await;
    let eve = s.user("eve").await;
    let (id, content, assets) = project_with_assets(&alice, "class work", 1).await;

    let err = eve.error(EXPORT, json!({ "id": id })).await;
    assert_eq!(code(&err), "NOT_FOUND", "{err}");
    assert_eq!(
        code(&s.anonymous().error(EXPORT, json!({ "id": id })).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        code(&alice.error(EXPORT, json!({ "id": "999999" })).await),
        "NOT_FOUND"
    );
    assert_eq!(
        code(&alice.error(EXPORT, json!({ "id": "x" })).await),
        "BAD_USER_INPUT"
    );
    assert_eq!(s.count("jobs").await, 0, "a refused export claims nothing");

    let job = export(&alice, &id).await["id"].as_str().unwrap().to_owned();
    assert_eq!(settled(&alice, &job).await["status"], "READY");
    let path = format!("/exports/{job}.sb3");
    assert_eq!(
        eve.data(JOB, json!({ "id": job })).await["job"],
        Value::Null
    );
    assert_eq!(
        alice.data(JOB, json!({ "id": "nope" })).await["job"],
        Value::Null
    );
    assert_eq!(get(&s, &eve, &path).await.0, 404);
    assert_eq!(get(&s, &mia, &path).await.0, 404);
    assert_eq!(get(&s, &s.anonymous(), &path).await.0, 401);
    assert_eq!(get(&s, &alice, "/exports/999999.sb3").await.0, 404);
    assert_eq!(get(&s, &alice, "/exports/abc.sb3").await.0, 404);

    let class = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    for m in ["alice", "mia"] {
        assert!(s.cli(&["group", "add-member", &class, m]).0);
    }
    alice.data(SHARE, json!({ "id": id, "g": [class] })).await;
    let mates = export(&mia, &id).await;
    assert_eq!(
        mates["id"], job,
        "the same version is the same job, whoever asks"
    );
    assert_eq!(mates["status"], "READY");
    assert_eq!(
        mia.data(JOB, json!({ "id": job })).await["job"]["status"],
        "READY"
    );
    let (status, _, bytes) = get(&s, &mia, &path).await;
    assert_eq!(status, 200);
    assert_bundle(&bytes, &content, &assets);
    assert_eq!(s.count("jobs").await, 1);
    assert_eq!(s.metric("atelier_export_builds_total").await, 1);

    // The project deleted: its export is gone for everyone, and gc may collect the bundle.
    let key = bundle_key(&s, &job).await;
    let bundle_files = |s: &TestServer| {
        s.blob_files()
            .iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy() == key)
            .count()
    };
    assert_eq!(bundle_files(&s), 1);
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(get(&s, &alice, &path).await.0, 404);
    assert_eq!(
        alice.data(JOB, json!({ "id": job })).await["job"],
        Value::Null
    );
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    assert_eq!(bundle_files(&s), 0, "{out}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws connection, acknowledged, authenticated by `connectionParams`.
async fn ws_connect(s: &TestServer, token: Option<&str>) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/graphql/ws", s.base_url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    let payload = match token {
        Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
        None => json!({}),
    };
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
    let ack = ws_next(&mut ws)
        .await
        .expect("an answer to connection_init");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

async fn ws_send(ws: &mut Ws, msg: Value) {
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        msg.to_string().into(),
    ))
    .await
    .unwrap();
}

/// The next protocol message (pings answered), or None when the connection closed.
async fn ws_next(ws: &mut Ws) -> Option<Value> {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")?
            .ok()?;
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ping" {
                    ws_send(ws, json!({ "type": "pong" })).await;
                    continue;
                }
                return Some(v);
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Subscribes to `jobChanged(id)` and collects the statuses until `complete`; the error
/// message's payload if the subscription is refused.
async fn statuses(ws: &mut Ws, job: &str) -> Result<Vec<String>, Value> {
    ws_send(
        ws,
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { jobChanged(id: $id) { id status url } }",
            "variables": { "id": job } } }),
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let msg = ws_next(ws).await.expect("the subscription completes");
        match msg["type"].as_str().unwrap() {
            "next" => {
                if let Some(errors) = msg["payload"].get("errors") {
                    return Err(errors.clone());
                }
                let j = &msg["payload"]["data"]["jobChanged"];
                assert_eq!(j["id"], job);
                if j["status"] == "READY" {
                    assert_eq!(j["url"], format!("/exports/{job}.sb3"));
                }
                seen.push(j["status"].as_str().unwrap().to_owned());
            }
            "complete" => return Ok(seen),
            "error" => return Err(msg["payload"].clone()),
            other => panic!("unexpected message {other}: {msg}"),
        }
    }
}

/// `jobChanged` over graphql-transport-ws: the current state first, then every change, in
/// order, then `complete`. A stranger's subscription is refused.
async fn subscription_reports_each_status_in_order(mut s: TestServer) {
    // Held PENDING long enough to subscribe, then RUNNING long enough to be seen.
    s.restart_with_failpoints("jobs::before_take=return(800);export::build_delay=return(800)");
    let alice = s.user("alice").await;
    let eve = s.user("eve").await;
    let (id, _, _) = project_with_assets(&alice, "p", 1).await;
    let job = export(&alice, &id).await;
    assert_eq!(job["status"], "PENDING");
    let job = job["id"].as_str().unwrap().to_owned();

    let mut ws = ws_connect(&s, alice.token.as_deref()).await;
    let seen = statuses(&mut ws, &job).await.expect("subscribed");
    assert_eq!(seen, ["PENDING", "RUNNING", "READY"]);

    // Subscribing to a settled job: its state, then complete.
    let mut again = ws_connect(&s, alice.token.as_deref()).await;
    assert_eq!(statuses(&mut again, &job).await.unwrap(), ["READY"]);

    let mut stranger = ws_connect(&s, eve.token.as_deref()).await;
    let refused = statuses(&mut stranger, &job).await.unwrap_err();
    assert_eq!(refused[0]["extensions"]["code"], "NOT_FOUND", "{refused}");
    let mut anonymous = ws_connect(&s, None).await;
    let refused = statuses(&mut anonymous, &job).await.unwrap_err();
    assert_eq!(
        refused[0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );
}

/// A server killed (-9) while building: after the restart the job's lease runs out, the sweep
/// takes it again and it becomes READY, with one bundle blob on disk.
async fn a_killed_worker_s_job_is_reclaimed(mut s: TestServer) {
    s.set_env("ATELIER_JOB_LEASE_MS", "1000");
    s.restart_with_failpoints("export::build_delay=return(60000)");
    let alice = s.user("alice").await;
    let (id, content, assets) = project_with_assets(&alice, "p", 1).await;
    let job = export(&alice, &id).await["id"].as_str().unwrap().to_owned();
    reaches(&alice, &job, "RUNNING").await;
    assert_eq!(s.metric("atelier_export_builds_total").await, 1);
    s.kill();
    s.remove_env("FAILPOINTS");
    s.start_again();
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    assert_eq!(settled(&alice, &job).await["status"], "READY");
    assert_eq!(s.metric("atelier_export_builds_total").await, 1);
    assert_eq!(job_row_i64(&s, &job, "attempts").await, 2);
    assert_eq!(s.count("jobs").await, 1);
    let key = bundle_key(&s, &job).await;
    let bundles = s
        .blob_files()
        .iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy() == key)
        .count();
    assert_eq!(bundles, 1);
    // Asking again while READY does not start anything.
    assert_eq!(export(&alice, &id).await["id"], job);
    let (status, _, bytes) = get(&s, &alice, &format!("/exports/{job}.sb3")).await;
    assert_eq!(status, 200);
    assert_bundle(&bytes, &content, &assets);
}

/// Two server processes on one PostgreSQL: 20 concurrent exports spread over both make one
/// job and one build in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn two_processes_build_each_version_once() {
    let s = TestServer::start(crate::harness::Backend::Postgres).await;
    let other = s.second_process(&[]);
    let alice = s.user("alice").await;
    let alice_b = Client::new(other.graphql_url(), alice.token.clone());
    let (id, content, assets) = project_with_assets(&alice, "p", 1).await;
    for round in 0..3 {
        if round > 0 {
            let v = json!({ "targets": [], "meta": { "semver": "3.0.0", "round": round } });
            alice
                .data(UPDATE, json!({ "id": id, "v": round, "c": v }))
                .await;
        }
        let jobs = join_all((0..20).map(|i| {
            let c = if i % 2 == 0 { &alice } else { &alice_b };
            export(c, &id)
        }))
        .await;
        let job = jobs[0]["id"].as_str().unwrap().to_owned();
        assert!(jobs.iter().all(|j| j["id"] == job), "{jobs:?}");
        assert_eq!(settled(&alice_b, &job).await["status"], "READY");
        let builds = s.metric("atelier_export_builds_total").await
            + other.metric("atelier_export_builds_total").await;
        assert_eq!(
            builds,
            round + 1,
            "one build per version across both processes"
        );
        if round == 0 {
            // Either process serves the bundle.
            let (status, _, bytes) = get(&other, &alice, &format!("/exports/{job}.sb3")).await;
            assert_eq!(status, 200);
            assert_bundle(&bytes, &content, &assets);
        }
    }
    assert_eq!(s.count("jobs").await, 3);
}

/// The subscription hears a change made by another process (PostgreSQL NOTIFY fan-out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn subscription_hears_other_processes() {
    let s = TestServer::start_with(
        crate::harness::Backend::Postgres,
        &[(
            "FAILPOINTS",
            "jobs::before_take=return(800);export::build_delay=return(800)",
        )],
    )
    .await;
    // The watcher polls too rarely to see anything within the test: only notifications
    // from the building process can carry the changes to it.
    let watcher = s.second_process(&[("ATELIER_JOB_POLL_MS", "600000")]);
    let alice = s.user("alice").await;
    let (id, _, _) = project_with_assets(&alice, "p", 1).await;
    let job = export(&alice, &id).await["id"].as_str().unwrap().to_owned();
    let mut ws = ws_connect(&watcher, alice.token.as_deref()).await;
    assert_eq!(
        statuses(&mut ws, &job).await.unwrap(),
        ["PENDING", "RUNNING", "READY"]
    );
}

/// Round trip: what `exportProject` builds imports back (`importProject`, another user) into
/// an equal project: the same JSON value and the same asset set, without a new asset row.
async fn an_exported_bundle_imports_back_equal(s: TestServer) {
    let alice = s.user("alice").await;
    let (id, content, assets) = project_with_assets(&alice, "round trip", 7).await;
    let job = export(&alice, &id).await;
    let job = settled(&alice, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "READY", "{job}");
    let (status, _, bundle) = get(&s, &alice, job["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_bundle(&bundle, &content, &assets);
    let assets_before = s.count_assets().await;
    let bob = s.user("bob").await;
    let copy = crate::imports::imported(&bob, bundle).await;
    assert_ne!(copy["id"], id.as_str());
    assert_eq!(copy["content"], content, "the same JSON value");
    let md5s: std::collections::BTreeSet<String> = copy["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["md5"].as_str().unwrap().to_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> = assets
        .iter()
        .map(|(name, _)| name[..32].to_owned())
        .collect();
    assert_eq!(md5s, expected, "the same asset set");
    assert_eq!(s.count_assets().await, assets_before);
}

/// JPEG magic plus `n`-dependent filler.
fn jpeg(n: usize) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    b.extend(format!("jfif-{n}").bytes());
    b
}

/// One costume or sound of the names table: how the project's JSON names its asset.
struct Named {
    /// 0: the stage; 1: the sprite.
    target: usize,
    sound: bool,
    md5ext: String,
    asset_id: String,
    data_format: &'static str,
    /// The asset's bytes.
    bytes: Vec<u8>,
    /// The bundle entries this reference needs: its `md5ext`, and `<assetId>.<dataFormat>`
    /// (how Scratch looks a costume up).
    entries: Vec<String>,
}

/// A project whose JSON names its assets in every way Scratch accepts: an md5 in upper case, a
/// costume whose `md5ext` and `assetId` differ in case, an extension in upper case, a JPEG as
/// `.jpeg` and as `.jpg`. Returns (project id, content, the table).
async fn project_naming_assets_every_way(c: &Client, n: usize) -> (String, Value, Vec<Named>) {
    let (svg_b, png_b, jpeg_b, wav_b) = (svg(n), png(n), jpeg(n), wav(n));
    for (bytes, ty) in [
        (&svg_b, "IMAGE_VECTOR"),
        (&png_b, "IMAGE_BITMAP"),
        (&jpeg_b, "IMAGE_BITMAP"),
        (&wav_b, "SOUND"),
    ] {
        c.upload(bytes.clone(), ty).await;
    }
    let (s, p, j, w) = (
        md5_hex(&svg_b),
        md5_hex(&png_b),
        md5_hex(&jpeg_b),
        md5_hex(&wav_b),
    );
    let up = |m: &str| m.to_ascii_uppercase();
    let row = |target,
               sound,
               md5ext: String,
               asset_id: String,
               data_format,
               bytes: &Vec<u8>,
               entries: &[String]| Named {
        target,
        sound,
        md5ext,
        asset_id,
        data_format,
        bytes: bytes.clone(),
        entries: entries.to_vec(),
    };
    let table = vec![
        row(
            0,
            false,
            format!("{}.svg", up(&s)),
            up(&s),
            "svg",
            &svg_b,
            &[format!("{}.svg", up(&s))],
        ),
        row(
            0,
            true,
            format!("{}.wav", up(&w)),
            up(&w),
            "wav",
            &wav_b,
            &[format!("{}.wav", up(&w))],
        ),
        row(
            1,
            false,
            format!("{s}.svg"),
            up(&s),
            "svg",
            &svg_b,
            &[format!("{s}.svg"), format!("{}.svg", up(&s))],
        ),
        row(
            1,
            false,
            format!("{p}.png"),
            p.clone(),
            "png",
            &png_b,
            &[format!("{p}.png")],
        ),
        row(
            1,
            false,
            format!("{j}.jpeg"),
            j.clone(),
            "jpeg",
            &jpeg_b,
            &[format!("{j}.jpeg")],
        ),
        row(
            1,
            false,
            format!("{j}.jpg"),
            j.clone(),
            "jpg",
            &jpeg_b,
            &[format!("{j}.jpg")],
        ),
        row(
            1,
            false,
            format!("{}.PNG", up(&p)),
            up(&p),
            "png",
            &png_b,
            &[format!("{}.PNG", up(&p)), format!("{}.png", up(&p))],
        ),
        row(
            1,
            true,
            format!("{w}.wav"),
            w.clone(),
            "wav",
            &wav_b,
            &[format!("{w}.wav")],
        ),
    ];
    let items = |target: usize, sound: bool| -> Vec<Value> {
        table
            .iter()
            .enumerate()
            .filter(|(_, r)| r.target == target && r.sound == sound)
            .map(|(i, r)| {
                let mut item = json!({ "name": format!("item{i}"), "assetId": r.asset_id,
                                       "md5ext": r.md5ext, "dataFormat": r.data_format });
                if sound {
                    item["rate"] = json!(48000);
                    item["sampleCount"] = json!(1);
                } else {
                    item["rotationCenterX"] = json!(0);
                    item["rotationCenterY"] = json!(0);
                }
                item
            })
            .collect()
    };
    // Shaped as Scratch 3 writes a project (scratch-vm validates it before loading).
    let content = json!({
        "targets": [
            { "isStage": true, "name": "Stage", "variables": {}, "lists": {}, "broadcasts": {},
              "blocks": {}, "comments": {}, "currentCostume": 0,
              "costumes": items(0, false), "sounds": items(0, true),
              "volume": 100, "layerOrder": 0, "tempo": 60 },
            { "isStage": false, "name": "Sprite1", "variables": {}, "lists": {}, "broadcasts": {},
              "blocks": {}, "comments": {}, "currentCostume": 0,
              "costumes": items(1, false), "sounds": items(1, true),
              "volume": 100, "layerOrder": 1, "visible": true, "x": 0, "y": 0, "size": 100,
              "direction": 90, "draggable": false, "rotationStyle": "all around" }
        ],
        "monitors": [], "extensions": [],
        "meta": { "semver": "3.0.0", "vm": "0.2.0", "agent": "atelier-tests" }
    });
    let id = c.create_project("names", content.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, content, table)
}

/// Exports the project and downloads its bundle.
async fn exported_bundle(s: &TestServer, c: &Client, id: &str) -> Vec<u8> {
    let job = export(c, id).await;
    let job = settled(c, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "READY", "{job}");
    let (status, _, bundle) = get(s, c, job["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    bundle
}

/// Each entry of an export is named exactly as the project's JSON looks it up (Scratch's lookup
/// is case-sensitive, and tells `.jpg` from `.jpeg`), holds that asset's bytes, and the bundle
/// imports back into an equal project without a new asset.
async fn entries_are_named_as_the_json_says(s: TestServer) {
    let alice = s.user("alice").await;
    let (id, content, table) = project_naming_assets_every_way(&alice, 11).await;
    let bundle = exported_bundle(&s, &alice, &id).await;
    let mut expected: Vec<(String, Vec<u8>)> = table
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| (e.clone(), r.bytes.clone())))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), 9, "nine names for four assets");
    // Exactly these names (and project.json), each with its asset's bytes.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bundle)).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    want.push("project.json".into());
    want.sort();
    assert_eq!(names, want, "zip entries");
    for (name, bytes) in &expected {
        let mut got = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(&got, bytes, "{name}");
    }
    let mut json = String::new();
    zip.by_name("project.json")
        .unwrap()
        .read_to_string(&mut json)
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), content);

    let assets_before = s.count_assets().await;
    assert_eq!(assets_before, 4);
    let bob = s.user("bob").await;
    let copy = crate::imports::imported(&bob, bundle).await;
    assert_eq!(
        copy["content"], content,
        "the same JSON value, names as written"
    );
    let md5s: std::collections::BTreeSet<String> = copy["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["md5"].as_str().unwrap().to_owned())
        .collect();
    let want: std::collections::BTreeSet<String> =
        table.iter().map(|r| md5_hex(&r.bytes)).collect();
    assert_eq!(md5s, want, "the same asset set");
    assert_eq!(s.count_assets().await, assets_before);
}

/// Scratch's own VM (scratch-vm from npm, `tests/scratch-vm`) loads an export of the names
/// table with a storage that serves nothing: every costume and sound comes out of the bundle,
/// found under the name the VM looks up.
mod scratch_vm_loads_the_export {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_node_tests),
        ignore = "needs Node.js (and `npm ci --prefix tests/scratch-vm`)"
    )]
    async fn sqlite() {
        super::scratch_vm_loads_the_export(crate::harness::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(all(atelier_node_tests, atelier_pg_tests)),
        ignore = "needs Node.js and TEST_DATABASE_URL"
    )]
    async fn postgres() {
        super::scratch_vm_loads_the_export(crate::harness::Backend::Postgres).await;
    }
}

fn scratch_vm_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scratch-vm")
}

/// Makes sure `tests/scratch-vm/node_modules` is there: CI installs it (`.ci/run`) and fails
/// without it; a developer's run installs it from the lockfile.
fn ensure_scratch_vm() {
    let dir = scratch_vm_dir();
    let installed = || {
        dir.join("node_modules/@scratch/scratch-vm/package.json")
            .exists()
    };
    if installed() {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "tests/scratch-vm/node_modules is missing: CI must run `npm ci --prefix tests/scratch-vm` first (.ci/run does)"
    );
    // Both backends' tests may get here at once: one installs, the other waits for it.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if installed() {
        return;
    }
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .output()
        .expect("npm runs (Node.js is installed: build.rs found `node`)");
    assert!(
        out.status.success(),
        "`npm ci --prefix tests/scratch-vm` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scratch_vm_loads_the_export(backend: crate::harness::Backend) {
    ensure_scratch_vm();
    let s = TestServer::start(backend).await;
    let alice = s.user("alice").await;
    let (id, _, table) = project_naming_assets_every_way(&alice, 12).await;
    let bundle = exported_bundle(&s, &alice, &id).await;
    let file = s.root.path().join("export.sb3");
    std::fs::write(&file, &bundle).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(scratch_vm_dir().join("load-sb3.js"))
            .arg(&file)
            .output()
            .expect("node runs tests/scratch-vm/load-sb3.js")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scratch-vm did not load the export:\n{stderr}"
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ATELIER_RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));

    // Nothing came from anywhere but the bundle.
    assert_eq!(result["storageLoads"], json!([]), "{result:#}");
    // The VM found every name it looked for: a costume's `<assetId>.<dataFormat>`, a sound's
    // `md5ext`, as the JSON wrote them.
    let mut looked_up: Vec<(String, bool)> = result["lookups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["found"] == true))
        .collect();
    looked_up.sort();
    let mut expected: Vec<(String, bool)> = table
        .iter()
        .map(|r| {
            let name = if r.sound {
                r.md5ext.clone()
            } else {
                format!("{}.{}", r.asset_id, r.data_format)
            };
            (name, true)
        })
        .collect();
    expected.sort();
    assert_eq!(looked_up, expected, "{result:#}");

    // Each costume and sound holds its asset's bytes (an SVG's as the VM's sanitizer rewrote
    // them: the VM names it by the md5 of what it kept).
    let targets = result["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{result:#}");
    for (t, target) in targets.iter().enumerate() {
        for (list, sound) in [("costumes", false), ("sounds", true)] {
            let rows: Vec<&Named> = table
                .iter()
                .filter(|r| r.target == t && r.sound == sound)
                .collect();
            let loaded = target[list].as_array().unwrap();
            assert_eq!(
                loaded.len(),
                rows.len(),
                "{}.{list}: {result:#}",
                target["name"]
            );
            for (got, row) in loaded.iter().zip(rows) {
                assert_eq!(got["broken"], false, "{got}");
                assert_eq!(got["assetFormat"], row.data_format, "{got}");
                let data_md5 = got["dataMd5"].as_str().expect("the asset's bytes");
                if row.data_format != "svg" {
                    assert_eq!(data_md5, md5_hex(&row.bytes), "{got}");
                }
                assert_eq!(
                    got["md5ext"],
                    format!("{data_md5}.{}", row.data_format),
                    "{got}"
                );
            }
        }
    }
}
