//! Crash safety: failpoints at every step of the storage protocol, startup recovery, fsck,
//! gc racing writers, disk full, and kill -9 under load.

use std::collections::HashMap;

use futures::future::join_all;
use serde_json::{Value, json};

use atelier::service::builtin::BUILTINS;

use crate::api::{CREATE_PROJECT as CREATE, GET_PROJECT as GET, UPDATE_PROJECT as UPDATE};
use crate::{
    both_backends,
    harness::{
        Backend, Client, PgDatabase, TestServer, code, empty_project, md5_hex, release_bin, svg,
        wav,
    },
};

both_backends!(
    failures_before_commit_leave_nothing,
    failed_publish_is_healed_by_readers,
    crash_between_commit_and_publish_is_recovered,
    failed_staged_delete_is_cleaned_at_startup,
    fsck_reports_each_broken_invariant,
    the_check_after_each_test_settles_staging_and_catches_broken_invariants,
    gc_removes_only_unreferenced_old_blobs,
    gc_racing_writers_never_loses_a_referenced_blob,
    kill_dash_nine_under_load_loses_nothing_acknowledged,
);

/// staging write, staging fsync, disk full while staging, and the database failing just
/// before commit: a clean UNAVAILABLE, no row, no file, and the next request works.
async fn failures_before_commit_leave_nothing(mut s: TestServer) {
    let alice = s.user("alice").await;
    for point in [
        "storage::stage_write=1*return",
        "storage::stage_fsync=1*return",
        "storage::stage_write=1*return(enospc)",
        "db::before_commit=1*return",
    ] {
        s.restart_with_failpoints(point);
        let alice = Client::new(s.graphql_url(), alice.token.clone());
        let e = alice
            .error(CREATE, json!({ "t": "x", "c": empty_project() }))
            .await;
        assert_eq!(code(&e), "UNAVAILABLE", "{point}: {e}");
        if point.ends_with("(enospc)") {
            assert!(
                e["message"].as_str().unwrap().contains("storage is full"),
                "{e}"
            );
        }
        assert_eq!(s.count("projects").await, 0, "{point}");
        assert!(s.blob_files().is_empty(), "{point}: {:?}", s.blob_files());
        assert!(
            s.staging_files().is_empty(),
            "{point}: {:?}",
            s.staging_files()
        );
        // The failpoint fired once; the server keeps serving.
        let p = alice.create_project("after", empty_project()).await;
        assert_eq!(p["version"], 1, "{point}");
        let id = p["id"].clone();
        alice
            .data(
                "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
                json!({ "id": id }),
            )
            .await;
        for f in s.blob_files() {
            std::fs::remove_file(f).unwrap();
        }
    }
    // Uploads go through the same staging.
    s.restart_with_failpoints("storage::stage_write=1*return(enospc)");
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let (status, body) = alice.upload_raw(wav(1), "SOUND", None).await;
    assert_eq!(code(&body["errors"][0]), "UNAVAILABLE", "{status} {body}");
    assert_eq!(s.count_assets().await, 0);
    assert!(s.staging_files().is_empty() && s.blob_files().is_empty());
    alice.upload(wav(1), "SOUND").await;
    assert_eq!(s.count_assets().await, 1);
}

/// The rename into blobs/ fails after the commit: the write is durable (committed row, fsynced
/// staged file) so it is acknowledged; the first reader publishes the staged file.
async fn failed_publish_is_healed_by_readers(mut s: TestServer) {
    let alice = s.user("alice").await;
    s.restart_with_failpoints("storage::publish=1*return");
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let content = json!({ "targets": [], "healed": true });
    let p = alice.create_project("p", content.clone()).await;
    assert!(s.blob_files().is_empty(), "the publish failed");
    assert_eq!(s.staging_files().len(), 1, "the staged file waits");
    let got = alice.data(GET, json!({ "id": p["id"] })).await;
    assert_eq!(got["project"]["content"], content);
    assert_eq!(s.blob_files().len(), 1);
    assert!(s.staging_files().is_empty());
    s.fsck_ok();
}

/// The process dies between commit and publish (no response reaches the client). After the
/// restart the committed project is complete.
async fn crash_between_commit_and_publish_is_recovered(mut s: TestServer) {
    let alice = s.user("alice").await;
    s.restart_with_failpoints("storage::after_commit=return(crash)");
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let content = json!({ "targets": [], "crash": "after commit" });
    let sent = alice
        .request()
        .json(&json!({ "query": CREATE, "variables": { "t": "c", "c": content } }))
        .send()
        .await;
    assert!(
        sent.is_err() || !sent.unwrap().status().is_success(),
        "the process died mid-request"
    );
    assert_eq!(s.count("projects").await, 1, "the commit happened");
    assert_eq!(s.staging_files().len(), 1, "the blob never got published");
    s.remove_env("FAILPOINTS");
    s.start_again();
    assert!(s.staging_files().is_empty(), "recovery published it");
    assert_eq!(s.blob_files().len(), 1);
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let list = alice
        .data(
            "{ projects { edges { node { content version } } } }",
            json!({}),
        )
        .await;
    assert_eq!(list["projects"]["edges"][0]["node"]["content"], content);
    s.fsck_ok();
}

/// Removing a loser's staged file fails: the request still gets its own error, nothing is
/// visible, and startup recovery removes the leftover.
async fn failed_staged_delete_is_cleaned_at_startup(mut s: TestServer) {
    let alice = s.user("alice").await;
    s.restart_with_failpoints("storage::blob_delete=1*return");
    let alice = Client::new(s.graphql_url(), alice.token.clone());
    let missing = json!({ "targets": [{ "costumes": [{ "md5ext": "0123456789abcdef0123456789abcdef.svg" }] }] });
    let e = alice.error(CREATE, json!({ "t": "m", "c": missing })).await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(s.count("projects").await, 0);
    assert!(s.blob_files().is_empty());
    assert_eq!(
        s.staging_files().len(),
        1,
        "the undeletable staged file stays, invisible"
    );
    // The server is alive: its staging directory is a live process's, so fsck leaves it be.
    let (ok, out) = s.cli(&["fsck"]);
    assert!(
        ok,
        "a live process's staged file is in flight, not stale: {out}"
    );
    // Once its process is gone, the file is stale.
    s.kill();
    let (ok, out) = s.cli(&["fsck"]);
    assert!(!ok && out.contains("STAGING"), "fsck reports it: {out}");
    s.remove_env("FAILPOINTS");
    s.start_again();
    assert!(s.staging_files().is_empty());
    assert!(s.blob_files().is_empty());
    s.fsck_ok();
}

/// Breaks I1, I2, I3 and staging on purpose: opts out of the check on drop.
async fn fsck_reports_each_broken_invariant(mut s: TestServer) {
    s.skip_invariant_check();
    let alice = s.user("alice").await;
    let asset = alice.upload(svg(5), "IMAGE_VECTOR").await["asset"].clone();
    let md5 = asset["md5"].as_str().unwrap().to_owned();
    let with_asset = json!({ "targets": [{ "costumes": [{ "md5ext": format!("{md5}.svg") }] }] });
    let p1 = alice.create_project("uses asset", with_asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p2 = alice
        .create_project("plain", json!({ "targets": [], "n": 2 }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out) = s.cli(&["fsck", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    let blob_of = |sha: &str| s.data_dir().join("blobs").join(&sha[..2]).join(sha);
    // I1: an asset blob whose bytes changed.
    std::fs::write(
        blob_of(asset["sha256"].as_str().unwrap()),
        b"<svg>tampered</svg>",
    )
    .unwrap();
    // I2: a project whose content blob is gone.
    let key: String = s
        .scalar(&format!("SELECT content_key FROM projects WHERE id = {p2}"))
        .await;
    std::fs::remove_file(blob_of(&key)).unwrap();
    // I3: a referenced asset row that vanished (behind the foreign key's back).
    let db = s.db().await;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("DELETE FROM project_assets")
        .await
        .unwrap();
    db.execute_unprepared("DELETE FROM assets").await.unwrap();
    // A stale staging file.
    std::fs::write(s.data_dir().join("staging").join("deadbeef.part"), b"x").unwrap();

    let (ok, out) = s.cli(&["fsck"]);
    assert!(!ok, "fsck must fail");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("I2 project {p2}:"))),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("I3 project {p1}:")) && l.contains(&md5)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STAGING ") && l.contains("deadbeef.part")),
        "{out}"
    );
    let (_, json_out) = s.cli(&["fsck", "--json"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), lines.len(), "{json_out}");

    // I1 needs the asset row back: restore it with the original hashes.
    db.execute_unprepared(&format!(
        "INSERT INTO assets (id, md5, asset_type, sha256, size, content_type, data_format, blob_key, created_at) \
         VALUES ({}, '{md5}', 'image_vector', '{sha}', {size}, 'image/svg+xml', 'svg', '{sha}', CURRENT_TIMESTAMP)",
        asset["id"].as_str().unwrap(),
        sha = asset["sha256"].as_str().unwrap(),
        size = asset["size"],
    ))
    .await
    .unwrap();
    let (_, out) = s.cli(&["fsck"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("I1 asset {}:", asset["id"].as_str().unwrap()))),
        "{out}"
    );
}

/// What every test ends with (`TestServer`'s drop): a stale staged file is settled by a
/// restart's recovery and passes; a broken invariant, which no restart repairs, fails.
async fn the_check_after_each_test_settles_staging_and_catches_broken_invariants(
    mut s: TestServer,
) {
    let alice = s.user("alice").await;
    alice.create_project("p", empty_project()).await;
    std::fs::write(s.data_dir().join("staging").join("deadbeef.part"), b"x").unwrap();
    s.check_invariants()
        .expect("recovery settles a dead process's staged file");
    assert!(s.staging_files().is_empty());
    // I2: the project's content blob is gone.
    for f in s.blob_files() {
        std::fs::remove_file(f).unwrap();
    }
    let report = s.check_invariants().unwrap_err();
    assert!(report.contains("I2 project"), "{report}");
    s.skip_invariant_check();
}

async fn gc_removes_only_unreferenced_old_blobs(s: TestServer) {
    let alice = s.user("alice").await;
    alice.upload(wav(3), "SOUND").await;
    let keep = alice
        .create_project("keep", json!({ "targets": [], "v": 1 }))
        .await["id"]
        .clone();
    alice
        .data(
            UPDATE,
            json!({ "id": keep, "v": 1, "c": { "targets": [], "v": 2 } }),
        )
        .await;
    let gone = alice
        .create_project("gone", json!({ "targets": [], "v": "gone" }))
        .await["id"]
        .clone();
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": gone }),
        )
        .await;
    assert_eq!(s.blob_files().len(), 4);

    let (ok, out) = s.cli(&["gc"]);
    assert!(ok);
    assert!(out.contains("removed 0 blob(s)"), "young blobs stay: {out}");
    // The deleted project's content goes; the updated one's first content stays, because
    // its version 1 is retained history (tests/it/history.rs prunes and collects).
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0", "--dry-run"]);
    assert!(ok);
    assert!(out.contains("would remove 1 blob(s)"), "{out}");
    assert_eq!(s.blob_files().len(), 4, "dry run removes nothing");
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok);
    assert!(out.contains("removed 1 blob(s)"), "{out}");
    assert_eq!(s.blob_files().len(), 3);
    assert!(s.staging_files().is_empty());
    let p = alice.data(GET, json!({ "id": keep })).await;
    assert_eq!(p["project"]["content"]["v"], 2);
    s.fsck_ok();
}

/// gc runs again and again while writers keep re-referencing exactly the bytes it collects.
async fn gc_racing_writers_never_loses_a_referenced_blob(s: TestServer) {
    let alice = s.user("alice").await;
    let contents: Vec<Value> = (0..4)
        .map(|i| json!({ "targets": [], "shared": i }))
        .collect();
    for round in 0..6 {
        // Make the blobs garbage: create and delete.
        for c in &contents {
            let id = alice.create_project("tmp", c.clone()).await["id"].clone();
            alice
                .data(
                    "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
                    json!({ "id": id }),
                )
                .await;
        }
        let writers = contents.iter().cloned().map(|c| {
            let alice = alice.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..6 {
                    ids.push(
                        alice.create_project("race", c.clone()).await["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
                ids
            })
        });
        let gcs = (0..3).map(|_| {
            let mut cmd = tokio::process::Command::from(s.command());
            cmd.args(["gc", "--grace-secs", "0"])
                .env_remove("FAILPOINTS");
            async move { cmd.output().await.unwrap() }
        });
        let (ids, gc_runs) = tokio::join!(join_all(writers), join_all(gcs));
        for out in gc_runs {
            assert!(
                out.status.success(),
                "gc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for id in ids.into_iter().flat_map(Result::unwrap) {
            let p = alice.data(GET, json!({ "id": id })).await;
            assert!(
                p["project"]["content"]["shared"].is_number(),
                "round {round}: project {id} lost its content"
            );
        }
        s.fsck_ok();
    }
}

/// A real full disk: a small tmpfs as the data dir (root only).
/// Mounting needs root: without it (see `build.rs`) the test is reported ignored, never passed.
mod disk_full_is_unavailable_and_leaves_nothing {
    use crate::harness::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_root_tests),
        ignore = "needs root to mount a tmpfs: run the tests as root"
    )]
    async fn sqlite() {
        super::disk_full_is_unavailable_and_leaves_nothing(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    #[cfg_attr(
        all(atelier_pg_tests, not(atelier_root_tests)),
        ignore = "needs root to mount a tmpfs: run the tests as root"
    )]
    async fn postgres() {
        super::disk_full_is_unavailable_and_leaves_nothing(Backend::Postgres).await;
    }
}

async fn disk_full_is_unavailable_and_leaves_nothing(backend: Backend) {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("data");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "running as root, yet `mount -t tmpfs` failed");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mount.clone());
    let pg = match backend {
        Backend::Postgres => Some(PgDatabase::create().await),
        Backend::Sqlite => None,
    };
    let data = mount.to_str().unwrap().to_owned();
    // Blobs and staging on the small disk (the SQLite database stays off it).
    let s = TestServer::start_on(backend, pg, &[("ATELIER_DATA_DIR", &data)]);
    let alice = s.user("alice").await;
    let big = |n: u8| {
        let mut b = wav(n as usize);
        b.extend(std::iter::repeat_n(n, 2 * 1024 * 1024));
        b
    };
    alice.upload(big(1), "SOUND").await;
    alice.upload(big(2), "SOUND").await;
    let (status, body) = alice.upload_raw(big(3), "SOUND", None).await;
    assert_eq!(code(&body["errors"][0]), "UNAVAILABLE", "{status} {body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("storage is full"),
        "{body}"
    );
    let staged: Vec<_> = std::fs::read_dir(mount.join("staging"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .collect();
    assert!(staged.is_empty(), "the partial staged file is removed");
    let blobs: usize = std::fs::read_dir(mount.join("blobs"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count())
        .sum();
    assert_eq!(blobs, 2 + BUILTINS.len(), "two uploads and the built-ins");
    // The space came back: a small write works.
    alice.upload(wav(9), "SOUND").await;
    assert_eq!(s.count_assets().await, 3);
    drop(s);
}

/// What one client was told, per project it owns.
#[derive(Default, Clone)]
struct Acked {
    /// project id → (version, title) acknowledged last
    projects: HashMap<String, (i64, String)>,
    /// project id → the title of an update sent but not answered when the server died
    pending: HashMap<String, String>,
    /// md5s of acknowledged uploads
    assets: Vec<String>,
}

async fn client_loop(c: Client, who: usize, cycle: usize, mut acked: Acked) -> Acked {
    for step in 0.. {
        let title = format!("c{who}-k{cycle}-s{step}");
        let r = match step % 3 {
            0 => {
                let content = json!({ "targets": [], "title": title });
                match c
                    .request()
                    .json(&json!({ "query": CREATE, "variables": { "t": title, "c": content } }))
                    .send()
                    .await
                {
                    Ok(resp) => resp.json::<Value>().await.ok().and_then(|b| {
                        let p = b["data"]["createProject"].clone();
                        p["id"].as_str().map(|id| (id.to_owned(), 1, title.clone()))
                    }),
                    Err(_) => None,
                }
            }
            1 => {
                let Some((id, (v, _))) = acked
                    .projects
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
                else {
                    continue;
                };
                acked.pending.insert(id.clone(), title.clone());
                let content = json!({ "targets": [], "title": title });
                match c.request().json(&json!({ "query": UPDATE, "variables": { "id": id, "v": v, "t": title, "c": content } })).send().await {
                    Ok(resp) => resp.json::<Value>().await.ok().and_then(|b| {
                        b["data"]["updateProject"]["version"].as_i64().map(|nv| (id.clone(), nv, title.clone()))
                    }),
                    Err(_) => None,
                }
            }
            _ => {
                let bytes = svg(who * 100_000 + cycle * 1000 + step);
                let md5 = md5_hex(&bytes);
                match c.upload_raw_safe(bytes, "IMAGE_VECTOR").await {
                    Some(true) => acked.assets.push(md5),
                    _ => return acked,
                }
                continue;
            }
        };
        match r {
            Some((id, v, title)) => {
                acked.pending.remove(&id);
                acked.projects.insert(id, (v, title));
            }
            None => return acked,
        }
    }
    acked
}

impl Client {
    /// An upload that tolerates the server dying: Some(true) when acknowledged.
    async fn upload_raw_safe(&self, bytes: Vec<u8>, t: &str) -> Option<bool> {
        let form = Client::upload_form(bytes, t, None);
        let resp = self.request().multipart(form).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        Some(body["data"]["uploadAsset"]["asset"]["id"].is_string())
    }
}

/// 8 clients write while the release binary is killed with SIGKILL at random moments, 20 times.
async fn kill_dash_nine_under_load_loses_nothing_acknowledged(mut s: TestServer) {
    s.kill();
    s.bin = release_bin();
    s.start_again();
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(s.user(&format!("writer{i}")).await.token.unwrap());
    }
    let mut state: Vec<Acked> = vec![Acked::default(); 8];
    for cycle in 0..20 {
        let clients = state.iter().cloned().enumerate().map(|(i, acked)| {
            let c = Client::new(s.graphql_url(), Some(tokens[i].clone()));
            tokio::spawn(client_loop(c, i, cycle, acked))
        });
        let handles: Vec<_> = clients.collect();
        tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(
            150..600,
        )))
        .await;
        s.kill();
        state = join_all(handles)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        s.start_again();
        assert!(
            s.staging_files().is_empty(),
            "cycle {cycle}: staging not empty after restart: {:?}",
            s.staging_files()
        );
        s.fsck_ok();
        // Every acknowledged write is there, with the acknowledged bytes and version.
        for (i, acked) in state.iter().enumerate() {
            let c = Client::new(s.graphql_url(), Some(tokens[i].clone()));
            for (id, (v, title)) in &acked.projects {
                let p = c.data(GET, json!({ "id": id })).await["project"].clone();
                assert!(
                    !p.is_null(),
                    "cycle {cycle}: acknowledged project {id} lost"
                );
                let got_v = p["version"].as_i64().unwrap();
                let got_title = p["title"].as_str().unwrap();
                if got_v == *v {
                    assert_eq!(got_title, title, "cycle {cycle}: project {id}");
                } else {
                    // Only an update in flight at the kill may have committed unacknowledged.
                    assert_eq!(
                        got_v,
                        v + 1,
                        "cycle {cycle}: project {id} version {got_v}, acked {v}"
                    );
                    assert_eq!(Some(got_title), acked.pending.get(id).map(String::as_str));
                }
                assert_eq!(
                    p["content"]["title"], got_title,
                    "content and title were one write"
                );
            }
            for md5 in &acked.assets {
                let resp = reqwest::get(format!("{}/assets/{md5}.svg", s.base_url))
                    .await
                    .unwrap();
                assert_eq!(
                    resp.status(),
                    200,
                    "cycle {cycle}: acknowledged asset {md5} lost"
                );
                assert_eq!(md5_hex(&resp.bytes().await.unwrap()), *md5);
            }
        }
        // Versions seen now are the baseline for the next cycle.
        for (i, acked) in state.iter_mut().enumerate() {
            let c = Client::new(s.graphql_url(), Some(tokens[i].clone()));
            for (id, entry) in acked.projects.iter_mut() {
                let p = c.data(GET, json!({ "id": id })).await["project"].clone();
                *entry = (
                    p["version"].as_i64().unwrap(),
                    p["title"].as_str().unwrap().to_owned(),
                );
            }
            acked.pending.clear();
        }
    }
    let total: usize = state
        .iter()
        .map(|a| a.projects.len() + a.assets.len())
        .sum();
    eprintln!(
        "kill -9 test [{:?}]: 20 cycles, {total} acknowledged projects+assets verified",
        s.backend
    );
    assert!(total > 20, "the clients got work done between kills");
}
