//! `.sb3` imports: `atelier import` (idempotent re-runs, concurrent processes, kill -9 half
//! way, malformed files failing alone) and `importProject` (idempotent per user and bytes,
//! concurrent identical uploads, round trip).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code, md5_hex, png, svg, wav},
};

both_backends!(
    import_directory_twice,
    concurrent_import_processes,
    killed_import_runs_again,
    malformed_files_fail_alone,
    claims_of_others_wait_for_their_lease,
    import_project_upload,
    concurrent_identical_uploads,
    round_trip,
    duplicate_entries_are_refused,
);

/// A zip of `entries` (name, bytes), deflated, in order.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `zip` with its entries named `from` renamed `to` (as long), in the central directory and
/// in the local headers: how a zip with two entries of one name is made (zip writers refuse
/// to write one).
pub fn renamed(mut zip: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut at = zip::ZipArchive::new(std::io::Cursor::new(&zip))
        .unwrap()
        .central_directory_start() as usize;
    let mut hits = 0;
    while zip[at..at + 4] == *b"PK\x01\x02" {
        let len = |o: usize| usize::from(u16::from_le_bytes([zip[at + o], zip[at + o + 1]]));
        let (n, e, c) = (len(28), len(30), len(32));
        let local = u32::from_le_bytes(zip[at + 42..at + 46].try_into().unwrap()) as usize;
        if &zip[at + 46..at + 46 + n] == from.as_bytes() {
            zip[at + 46..at + 46 + n].copy_from_slice(to.as_bytes());
            assert_eq!(&zip[local + 30..local + 30 + n], from.as_bytes());
            zip[local + 30..local + 30 + n].copy_from_slice(to.as_bytes());
            hits += 1;
        }
        at += 46 + n + e + c;
    }
    assert!(hits > 0, "no entry named {from}");
    zip
}

/// The entries of a zip, in order: (name, bytes).
fn entries_of(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).unwrap();
            (f.name().unwrap().to_string(), b)
        })
        .collect()
}

/// The md5ext name of `bytes`.
fn md5ext(bytes: &[u8], ext: &str) -> String {
    format!("{}.{ext}", md5_hex(bytes))
}

/// A real-shaped Scratch 3 project: a stage with a backdrop shared by every fixture (so
/// concurrent imports race on creating it), a sprite with an SVG and a PNG costume of its
/// own and a sound.
fn project_json(backdrop: &str, costume: &str, bitmap: &str, sound: &str, n: usize) -> Value {
    let costume_of = |name: &str, md5ext: &str| {
        let (id, fmt) = md5ext.split_once('.').unwrap();
        json!({ "name": name, "assetId": id, "md5ext": md5ext, "dataFormat": fmt,
                "rotationCenterX": 240, "rotationCenterY": 180 })
    };
    let (sid, _) = sound.split_once('.').unwrap();
    json!({
        "targets": [
            { "isStage": true, "name": "Stage", "variables": {}, "lists": {}, "broadcasts": {},
              "blocks": {}, "comments": {}, "currentCostume": 0,
              "costumes": [costume_of("backdrop1", backdrop)], "sounds": [],
              "volume": 100, "layerOrder": 0, "tempo": 60 },
            { "isStage": false, "name": format!("Sprite{n}"), "variables": {}, "lists": {},
              "broadcasts": {},
              "blocks": { "a": { "opcode": "event_whenflagclicked", "next": null, "parent": null,
                                  "inputs": {}, "fields": {}, "shadow": false, "topLevel": true,
                                  "x": n, "y": 0 } },
              "comments": {}, "currentCostume": 0,
              "costumes": [costume_of("costume1", costume), costume_of("costume2", bitmap)],
              "sounds": [{ "name": "pop", "assetId": sid, "dataFormat": "wav", "md5ext": sound,
                           "rate": 48000, "sampleCount": 1 }],
              "volume": 100, "layerOrder": 1, "visible": true, "x": 0, "y": 0, "size": 100,
              "direction": 90, "draggable": false, "rotationStyle": "all around" }
        ],
        "monitors": [], "extensions": [],
        "meta": { "semver": "3.0.0", "vm": "0.2.0", "agent": "atelier-tests" }
    })
}

/// Fixture `n`: (.sb3 bytes, its project JSON, the md5ext names of its assets).
fn fixture(n: usize) -> (Vec<u8>, Value, BTreeSet<String>) {
    let backdrop = svg(0);
    let (costume, bitmap, sound) = (svg(1000 + n), png(n), wav(n));
    let names = [
        md5ext(&backdrop, "svg"),
        md5ext(&costume, "svg"),
        md5ext(&bitmap, "png"),
        md5ext(&sound, "wav"),
    ];
    let project = project_json(&names[0], &names[1], &names[2], &names[3], n);
    let zip = zip_of(&[
        ("project.json".into(), serde_json::to_vec(&project).unwrap()),
        (names[0].clone(), backdrop),
        (names[1].clone(), costume),
        (names[2].clone(), bitmap),
        (names[3].clone(), sound),
    ]);
    (zip, project, names.into_iter().collect())
}

/// Distinct assets of fixtures `0..n`: one shared backdrop, three of each fixture's own.
fn assets_of(n: usize) -> i64 {
    1 + 3 * n as i64
}

/// Writes fixtures `range` into `dir` (nested one level for half of them: directories are
/// searched recursively).
fn write_fixtures(dir: &Path, range: std::ops::Range<usize>) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("class-b")).unwrap();
    range
        .map(|n| {
            let sub = if n % 2 == 0 {
                dir.to_owned()
            } else {
                dir.join("class-b")
            };
            let path = sub.join(format!("project-{n:03}.sb3"));
            std::fs::write(&path, fixture(n).0).unwrap();
            path
        })
        .collect()
}

/// `atelier import --json …`: (exit ok, the summary).
fn import(s: &TestServer, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["import", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = s.cli_full(&all);
    let summary: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("import printed no JSON summary ({e}):\n{out}\n{err}"));
    (ok, summary)
}

fn by_status(summary: &Value, status: &str) -> Vec<Value> {
    summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == status)
        .cloned()
        .collect()
}

/// (path → project id) of the files with `status`.
fn projects_by_path(summary: &Value, status: &str) -> HashMap<String, i64> {
    by_status(summary, status)
        .into_iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["projectId"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every file became exactly one project, every run is completed with its own project, and
/// no asset or link is duplicated.
async fn assert_imported_exactly_once(s: &TestServer, files: usize) {
    assert_eq!(s.count("projects").await, files as i64);
    assert_eq!(s.count("import_runs").await, files as i64);
    assert_eq!(
        s.scalar::<i64>("SELECT COUNT(*) AS n FROM import_runs WHERE status = 'completed'")
            .await,
        files as i64
    );
    assert_eq!(
        s.scalar::<i64>("SELECT COUNT(DISTINCT project_id) AS n FROM import_runs")
            .await,
        files as i64
    );
    assert_eq!(s.count_assets().await, assets_of(files));
    assert_eq!(s.count("project_assets").await, 4 * files as i64);
}

async fn import_directory_twice(s: TestServer) {
    let dir = s.root.path().join("school");
    write_fixtures(&dir, 0..12);
    let d = dir.to_str().unwrap();
    let (ok, first) = import(&s, &[d, "--owner", "teacher1", "--batch", "5"]);
    assert!(ok, "{first:#}");
    assert_eq!(
        (
            first["imported"].clone(),
            first["skipped"].clone(),
            first["failed"].clone()
        ),
        (json!(12), json!(0), json!(0)),
        "{first:#}"
    );
    assert_imported_exactly_once(&s, 12).await;

    let (ok, second) = import(&s, &[d, "--owner", "teacher1"]);
    assert!(ok, "{second:#}");
    assert_eq!(
        (second["imported"].clone(), second["skipped"].clone()),
        (json!(0), json!(12)),
        "{second:#}"
    );
    assert_eq!(
        projects_by_path(&first, "imported"),
        projects_by_path(&second, "skipped"),
        "a skipped file reports the project it was imported as"
    );
    // The same files moved elsewhere are the same content for the same owner: skipped.
    let moved = s.root.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let (ok, third) = import(&s, &[moved.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(ok && third["skipped"] == 12, "{third:#}");
    assert_imported_exactly_once(&s, 12).await;

    // The projects are the owner's, with the content and assets of the files.
    let teacher = s.user("teacher1").await;
    let one = projects_by_path(&first, "imported")
        .into_iter()
        .find(|(p, _)| p.ends_with("project-004.sb3"))
        .unwrap();
    let v = teacher
        .data(
            "query($id: ID!) { project(id: $id) { title owner { displayName } content assets { md5 assetType } } }",
            json!({ "id": one.1.to_string() }),
        )
        .await;
    let (_, project, names) = fixture(4);
    assert_eq!(v["project"]["title"], "project-004");
    assert_eq!(v["project"]["owner"]["displayName"], "teacher1");
    assert_eq!(v["project"]["content"], project);
    let md5s: BTreeSet<String> = v["project"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["md5"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = names
        .iter()
        .map(|n| n.split('.').next().unwrap().to_owned())
        .collect();
    assert_eq!(md5s, expected);

    // Another owner's import of the same files is theirs: new projects, no new assets.
    let (ok, other) = import(&s, &[moved.to_str().unwrap(), "--owner", "teacher2"]);
    assert!(ok && other["imported"] == 12, "{other:#}");
    assert_eq!(s.count("projects").await, 24);
    assert_eq!(s.count_assets().await, assets_of(12));

    // Humans get a one-line summary; the exit code says whether anything failed.
    let (ok, out, _) = s.cli_full(&["import", moved.to_str().unwrap(), "--owner", "teacher2"]);
    assert!(ok);
    assert!(
        out.contains("imported 0, skipped 12"),
        "summary line: {out}"
    );

    // Two copies of one file in one import: one project.
    let dups = s.root.path().join("dups");
    std::fs::create_dir_all(&dups).unwrap();
    std::fs::write(dups.join("a.sb3"), fixture(50).0).unwrap();
    std::fs::write(dups.join("b.sb3"), fixture(50).0).unwrap();
    let (ok, summary) = import(&s, &[dups.to_str().unwrap(), "--owner", "teacher3"]);
    assert!(ok, "{summary:#}");
    assert_eq!(
        (summary["imported"].clone(), summary["skipped"].clone()),
        (json!(1), json!(1)),
        "{summary:#}"
    );
    assert_eq!(s.count("projects").await, 25);
}

/// Spawns `atelier import --json` on `dir` without waiting.
fn spawn_import(
    s: &TestServer,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = s.command();
    cmd.env_remove("FAILPOINTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args([
        "import",
        "--json",
        dir.to_str().unwrap(),
        "--owner",
        "teacher1",
    ])
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn atelier import")
}

fn summary_of(child: std::process::Child) -> (bool, Value) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), summary)
}

async fn concurrent_import_processes(s: TestServer) {
    const FILES: usize = 40;
    let dir = s.root.path().join("school");
    let all: HashSet<String> = write_fixtures(&dir, 0..FILES)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    // Three processes on the same directory at once, while the server also runs.
    let children: Vec<_> = (0..3)
        .map(|_| spawn_import(&s, &dir, &["--batch", "4", "--concurrency", "3"], &[]))
        .collect();
    let summaries: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let (ok, summary) = summary_of(c);
            assert!(ok, "{summary:#}");
            summary
        })
        .collect();
    let mut imported: Vec<String> = Vec::new();
    for summary in &summaries {
        assert_eq!(summary["failed"], 0, "{summary:#}");
        imported.extend(projects_by_path(summary, "imported").into_keys());
    }
    let distinct: HashSet<String> = imported.iter().cloned().collect();
    assert_eq!(
        imported.len(),
        FILES,
        "every file imported exactly once in total"
    );
    assert_eq!(distinct, all);
    assert_imported_exactly_once(&s, FILES).await;
    // The others saw each file as done or in progress, and a run afterwards skips them all.
    let (ok, after) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(ok && after["skipped"] == FILES, "{after:#}");
}

async fn killed_import_runs_again(s: TestServer) {
    const FILES: usize = 60;
    let dir = s.root.path().join("school");
    write_fixtures(&dir, 0..FILES);
    // Each batch of 4 waits 150 ms before it is written: the import takes seconds, and the
    // kill lands between commits, or during one.
    let mut child = spawn_import(
        &s,
        &dir,
        &["--batch", "4", "--concurrency", "4"],
        &[("FAILPOINTS", "imports::before_batch=return(150)")],
    );
    let completed = "SELECT COUNT(*) AS n FROM import_runs WHERE status = 'completed'";
    let started = std::time::Instant::now();
    loop {
        let n = s.scalar::<i64>(completed).await;
        if n >= 12 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the import made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    // Reaped: the dead claimer is then recognised as dead at once.
    let _ = child.wait();
    let done_before = s.scalar::<i64>(completed).await;
    assert!(
        (12..FILES as i64).contains(&done_before),
        "killed half way: {done_before} completed"
    );
    let pending = s
        .scalar::<i64>("SELECT COUNT(*) AS n FROM import_runs WHERE status = 'running'")
        .await;
    assert!(pending > 0, "the killed import held claims");
    // Nothing half-written: every project has its completed run.
    assert_eq!(s.count("projects").await, done_before);

    // Run again (no lease override: the dead claimer's leases are still running).
    let (ok, again) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(ok, "{again:#}");
    assert_eq!(again["skipped"], done_before, "{again:#}");
    assert_eq!(again["imported"], FILES as i64 - done_before, "{again:#}");
    assert_eq!(again["taken"], 0, "{again:#}");
    assert_imported_exactly_once(&s, FILES).await;
    s.fsck_ok();
}

async fn malformed_files_fail_alone(s: TestServer) {
    let dir = s.root.path().join("mixed");
    write_fixtures(&dir, 0..5);
    let (good, project, names) = fixture(99);
    let names: Vec<String> = names.into_iter().collect();
    let entries = |skip: Option<&str>| -> Vec<(String, Vec<u8>)> {
        let mut out = vec![(
            "project.json".to_owned(),
            serde_json::to_vec(&project).unwrap(),
        )];
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(good.clone())).unwrap();
        for i in 0..z.len() {
            let mut f = z.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            if name == "project.json" || Some(name.as_str()) == skip {
                continue;
            }
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).unwrap();
            out.push((name, b));
        }
        out
    };
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not-a-zip.sb3",
            b"PK but not really a zip".to_vec(),
            "BAD_USER_INPUT",
        ),
        (
            "no-project-json.sb3",
            zip_of(&entries(Some("project.json")).split_off(1)),
            "BAD_USER_INPUT",
        ),
        (
            "bad-json.sb3",
            zip_of(&[("project.json".into(), b"{\"targets\": [".to_vec())]),
            "BAD_USER_INPUT",
        ),
        (
            "md5-mismatch.sb3",
            {
                let mut e = entries(None);
                let victim = e.iter_mut().find(|(n, _)| n.ends_with(".svg")).unwrap();
                victim.1 = svg(123_456);
                zip_of(&e)
            },
            "CHECKSUM_MISMATCH",
        ),
        (
            "zip-bomb.sb3",
            {
                let zeros = vec![0u8; 11 * 1024 * 1024];
                let mut e = entries(None);
                e.push((md5ext(&zeros, "wav"), zeros));
                zip_of(&e)
            },
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "dot-dot.sb3",
            {
                let mut e = entries(None);
                e.push(("../../evil.svg".into(), svg(7)));
                zip_of(&e)
            },
            "BAD_USER_INPUT",
        ),
        (
            "absolute.sb3",
            {
                let mut e = entries(None);
                e.push(("/etc/evil.svg".into(), svg(8)));
                zip_of(&e)
            },
            "BAD_USER_INPUT",
        ),
        (
            "missing-asset.sb3",
            // Validated fine, refused in the write transaction: the batch it is in fails
            // and is retried file by file.
            zip_of(&entries(Some(
                names.iter().find(|n| n.ends_with(".png")).unwrap(),
            ))),
            "MISSING_ASSETS",
        ),
    ];
    for (name, bytes, _) in &bad {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    assert!(bad[4].1.len() < 200 * 1024, "the bomb is small on disk");
    let (ok, summary) = import(
        &s,
        &[
            dir.to_str().unwrap(),
            "--owner",
            "teacher1",
            "--batch",
            "16",
        ],
    );
    assert!(!ok, "a failure makes the exit code non-zero");
    assert_eq!(summary["imported"], 5, "{summary:#}");
    assert_eq!(summary["failed"], bad.len(), "{summary:#}");
    let failed: HashMap<String, Value> = by_status(&summary, "failed")
        .into_iter()
        .map(|f| {
            let name = Path::new(f["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, f)
        })
        .collect();
    for (name, _, expected) in &bad {
        let f = &failed[*name];
        assert_eq!(f["code"], *expected, "{name}: {f:#}");
        assert!(!f["reason"].as_str().unwrap().is_empty());
    }
    assert!(
        failed["dot-dot.sb3"]["reason"]
            .as_str()
            .unwrap()
            .contains("../../evil.svg")
    );
    assert!(
        failed["missing-asset.sb3"]["reason"]
            .as_str()
            .unwrap()
            .contains(".png")
    );
    // Nothing of the bad files was written; their runs say why.
    assert_eq!(s.count("projects").await, 5);
    assert_eq!(s.count_assets().await, assets_of(5));
    assert_eq!(
        s.scalar::<i64>(
            "SELECT COUNT(*) AS n FROM import_runs WHERE status = 'failed' AND error IS NOT NULL"
        )
        .await,
        bad.len() as i64
    );
    // A failed run is claimed again by the next import (and fails again, alone).
    let (ok, again) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(!ok);
    assert_eq!(
        (again["skipped"].clone(), again["failed"].clone()),
        (json!(5), json!(bad.len())),
        "{again:#}"
    );
    assert_eq!(
        s.scalar::<i64>(
            "SELECT CAST(MIN(attempts) AS BIGINT) AS n FROM import_runs WHERE status = 'failed'"
        )
        .await,
        2
    );
    // A path that does not exist fails alone too.
    let (ok, summary) = import(&s, &["/nonexistent/x.sb3", "--owner", "teacher1"]);
    assert!(!ok && summary["failed"] == 1, "{summary:#}");
}

/// A pending run held by a process of another host is left alone while its lease runs
/// ("taken", not a failure), and claimed once the lease has passed.
async fn claims_of_others_wait_for_their_lease(s: TestServer) {
    use entity::import_run;
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use sha2::Digest;

    let dir = s.root.path().join("school");
    let files = write_fixtures(&dir, 0..3);
    s.user("teacher1").await;
    let owner = s
        .scalar::<i64>("SELECT id AS n FROM users WHERE subject = 'teacher1'")
        .await;
    let hash = |p: &PathBuf| hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()));
    let now = chrono::Utc::now();
    let db = s.db().await;
    for (file, lease) in [
        (&files[0], chrono::Duration::hours(1)),
        (&files[1], chrono::Duration::minutes(-1)),
    ] {
        import_run::Entity::insert(import_run::ActiveModel {
            source: Set(format!("cli:{owner}")),
            content_hash: Set(hash(file)),
            status: Set(entity::lease::LeaseStatus::Running),
            attempts: Set(1),
            claimed_by: Set(Some("another-host:4242:x".into())),
            lease_until: Set(Some(now + lease)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec_without_returning(&db)
        .await
        .unwrap();
    }
    let (ok, summary) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(
        ok,
        "a file another import holds is not a failure: {summary:#}"
    );
    assert_eq!(
        (summary["imported"].clone(), summary["taken"].clone()),
        (json!(2), json!(1)),
        "{summary:#}"
    );
    let taken = &by_status(&summary, "taken")[0];
    assert_eq!(taken["path"], files[0].display().to_string());
    assert_eq!(s.count("projects").await, 2);
    assert_eq!(
        s.scalar::<i64>("SELECT CAST(attempts AS BIGINT) AS n FROM import_runs WHERE claimed_by IS NULL OR claimed_by NOT LIKE 'another-host:%' ORDER BY attempts DESC LIMIT 1").await,
        2,
        "the expired claim was taken over"
    );
    // The holder's lease passes: the next import claims it.
    use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
    import_run::Entity::update_many()
        .col_expr(
            import_run::Column::LeaseUntil,
            Expr::value(Some(now - chrono::Duration::seconds(1))),
        )
        .filter(import_run::Column::Status.eq(entity::lease::LeaseStatus::Running))
        .exec(&db)
        .await
        .unwrap();
    let _ = db.close().await;
    let (ok, summary) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(ok, "{summary:#}");
    assert_eq!(
        (summary["imported"].clone(), summary["skipped"].clone()),
        (json!(1), json!(2)),
        "{summary:#}"
    );
    assert_imported_exactly_once(&s, 3).await;
}

const IMPORT: &str = "mutation($f: Upload!, $t: String) { importProject(file: $f, title: $t) { id title version content owner { displayName } assets { md5 } } }";

/// `importProject` with `bytes` as the file: the whole response body.
pub(crate) async fn upload_sb3(c: &Client, bytes: Vec<u8>, title: Option<&str>) -> Value {
    let operations = json!({ "query": IMPORT, "variables": { "f": null, "t": title } });
    let form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", json!({ "0": ["variables.f"] }).to_string())
        .part(
            "0",
            reqwest::multipart::Part::bytes(bytes).file_name("project.sb3"),
        );
    let resp = c.request().multipart(form).send().await.unwrap();
    assert!(
        resp.status() == 200 || c.token.is_none(),
        "{}",
        resp.status()
    );
    resp.json().await.unwrap()
}

pub(crate) async fn imported(c: &Client, bytes: Vec<u8>) -> Value {
    let body = upload_sb3(c, bytes, None).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    body["data"]["importProject"].clone()
}

async fn import_project_upload(s: TestServer) {
    let alice = s.user("alice").await;
    let (bytes, project, _) = fixture(1);
    let first = imported(&alice, bytes.clone()).await;
    assert_eq!(first["content"], project);
    assert_eq!(first["title"], "Imported project");
    assert_eq!(first["owner"]["displayName"], "alice");
    assert_eq!(first["assets"].as_array().unwrap().len(), 4);
    let again = imported(&alice, bytes.clone()).await;
    assert_eq!(
        again["id"], first["id"],
        "the same file answers the same project"
    );
    assert_eq!(s.count("projects").await, 1);
    // Another user's import of the same file is theirs.
    let bob = s.user("bob").await;
    let bobs = upload_sb3(&bob, bytes.clone(), Some("Bob's copy")).await;
    let bobs = &bobs["data"]["importProject"];
    assert_ne!(bobs["id"], first["id"]);
    assert_eq!(bobs["title"], "Bob's copy");
    assert_eq!(s.count("projects").await, 2);
    assert_eq!(s.count_assets().await, 4);

    // Deleted since: importing the file again creates it anew.
    alice
        .data(
            crate::api::DELETE_PROJECT,
            json!({ "id": first["id"], "v": null }),
        )
        .await;
    let anew = imported(&alice, bytes.clone()).await;
    assert_ne!(anew["id"], first["id"]);
    assert_eq!(anew["content"], project);
    assert_eq!(imported(&alice, bytes).await["id"], anew["id"]);

    // Bad files are typed errors, and write nothing.
    let before = (s.count("projects").await, s.count_assets().await);
    let (good, _, names) = fixture(2);
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(good)).unwrap();
    let mut entries = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).unwrap();
        entries.push((f.name().unwrap().to_string(), b));
    }
    let svg_name = names
        .iter()
        .find(|n| n.ends_with(".svg") && *n != &md5ext(&svg(0), "svg"))
        .unwrap();
    let mut tampered = entries.clone();
    tampered.iter_mut().find(|(n, _)| n == svg_name).unwrap().1 = svg(424_242);
    let mut escaping = entries.clone();
    escaping.push(("../x.svg".into(), svg(5)));
    let no_json: Vec<_> = entries
        .iter()
        .filter(|(n, _)| n != "project.json")
        .cloned()
        .collect();
    for (bytes, expected) in [
        (b"definitely not a zip".to_vec(), "BAD_USER_INPUT"),
        (zip_of(&no_json), "BAD_USER_INPUT"),
        (zip_of(&tampered), "CHECKSUM_MISMATCH"),
        (zip_of(&escaping), "BAD_USER_INPUT"),
    ] {
        let body = upload_sb3(&alice, bytes, None).await;
        let err = &body["errors"][0];
        assert_eq!(code(err), expected, "{body:#}");
        assert!(body["data"].is_null() || body["data"]["importProject"].is_null());
    }
    assert_eq!((s.count("projects").await, s.count_assets().await), before);
    // Anonymous: UNAUTHENTICATED.
    let body = upload_sb3(&s.anonymous(), fixture(3).0, None).await;
    assert_eq!(code(&body["errors"][0]), "UNAUTHENTICATED");
}

async fn concurrent_identical_uploads(s: TestServer) {
    let alice = s.user("alice").await;
    let (bytes, _, _) = fixture(7);
    let answers = futures::future::join_all((0..10).map(|_| imported(&alice, bytes.clone()))).await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "ten identical uploads, one project: {ids:?}");
    assert_eq!(s.count("projects").await, 1);
    assert_eq!(s.count_assets().await, 4);
    assert_eq!(s.count("import_runs").await, 1);
    // Different files at once: one project each, the shared backdrop stored once.
    let answers = futures::future::join_all((10..20).map(|n| imported(&alice, fixture(n).0))).await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(s.count("projects").await, 11);
    assert_eq!(s.count_assets().await, 4 + 30);
}

/// An imported project written back out as an `.sb3` (project.json at the root, assets named
/// md5ext, the bytes served at its asset URLs) imports into an equal project.
async fn round_trip(s: TestServer) {
    let alice = s.user("alice").await;
    let (bytes, project, names) = fixture(3);
    let first = imported(&alice, bytes).await;
    let v = alice
        .data(
            "query($id: ID!) { project(id: $id) { content assets { md5 url } } }",
            json!({ "id": first["id"] }),
        )
        .await;
    let mut assets = Vec::new();
    for a in v["project"]["assets"].as_array().unwrap() {
        let url = format!("{}{}", s.base_url, a["url"].as_str().unwrap());
        let body = reqwest::get(&url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let name = url.rsplit('/').next().unwrap().to_owned();
        assert_eq!(md5_hex(&body), a["md5"].as_str().unwrap());
        assets.push((name, body));
    }
    let sb3 = atelier::service::sb3::build_sb3(
        &serde_json::to_vec(&v["project"]["content"]).unwrap(),
        assets.into_iter(),
    )
    .unwrap();
    // What Scratch needs to open it: a zip, project.json at the root, md5ext names.
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(sb3.clone())).unwrap();
    let entry_names: BTreeSet<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
        .collect();
    let mut expected = names.clone();
    expected.insert("project.json".into());
    assert_eq!(entry_names, expected);
    let bob = s.user("bob").await;
    let second = imported(&bob, sb3).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["content"], project, "the same JSON value");
    let md5s = |p: &Value| -> BTreeSet<String> {
        p["assets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["md5"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(md5s(&second), md5s(&first), "the same asset set");
    assert_eq!(s.count_assets().await, 4);
}

/// An `.sb3` with two entries of one name is refused, through `importProject` and through
/// `atelier import`, with the name in the reason, and writes nothing: the zip reader's index
/// keeps only the last of them, so a bad first copy (which Scratch or an unzip tool may take)
/// would otherwise pass unseen.
async fn duplicate_entries_are_refused(s: TestServer) {
    let (good, _, names) = fixture(5);
    let entries = entries_of(&good);
    let svg_name = names.iter().find(|n| n.ends_with(".svg")).unwrap().clone();
    // The same length as the name it will become, and a name no fixture has.
    let stand_in = |name: &str| format!("{}X", &name[..name.len() - 1]);
    let other_project = {
        let mut p: Value = serde_json::from_slice(&entries[0].1).unwrap();
        p["targets"][1]["name"] = json!("Impostor");
        serde_json::to_vec(&p).unwrap()
    };
    type Entries = Vec<(String, Vec<u8>)>;
    // (file, entries as written, the entry renamed to the name it then shares)
    let cases: Vec<(&str, Entries, String)> = vec![
        (
            "two-project-json.sb3",
            [(stand_in("project.json"), other_project)]
                .into_iter()
                .chain(entries.iter().cloned())
                .collect(),
            "project.json".to_owned(),
        ),
        (
            "bad-copy-first.sb3",
            {
                let mut e = entries.clone();
                e.insert(1, (stand_in(&svg_name), svg(424_242)));
                e
            },
            svg_name.clone(),
        ),
        (
            "identical-copies.sb3",
            {
                let mut e = entries.clone();
                let copy = e.iter().find(|(n, _)| *n == svg_name).unwrap().1.clone();
                e.push((stand_in(&svg_name), copy));
                e
            },
            svg_name.clone(),
        ),
    ];
    let dir = s.root.path().join("duplicates");
    std::fs::create_dir_all(&dir).unwrap();
    let alice = s.user("alice").await;
    let blobs_before = s.blob_files().len();
    for (file, written, name) in &cases {
        let bytes = renamed(zip_of(written), &stand_in(name), name);
        let listed = entries_of(&bytes);
        assert_eq!(
            listed.iter().filter(|(n, _)| n == name).count(),
            1,
            "{file}: the zip reader itself sees one {name}"
        );
        let body = upload_sb3(&alice, bytes.clone(), None).await;
        let err = &body["errors"][0];
        assert_eq!(code(err), "BAD_USER_INPUT", "{file}: {body:#}");
        assert_eq!(err["extensions"]["field"], "file", "{file}: {body:#}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{name:?} appears more than once")),
            "{file}: {message}"
        );
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    let (ok, summary) = import(&s, &[dir.to_str().unwrap(), "--owner", "teacher1"]);
    assert!(!ok, "{summary:#}");
    assert_eq!(
        (summary["imported"].clone(), summary["failed"].clone()),
        (json!(0), json!(cases.len())),
        "{summary:#}"
    );
    for f in by_status(&summary, "failed") {
        let path = f["path"].as_str().unwrap();
        let (_, _, name) = cases
            .iter()
            .find(|(file, _, _)| path.ends_with(file))
            .unwrap();
        assert_eq!(f["code"], "BAD_USER_INPUT", "{f:#}");
        assert!(
            f["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("{name:?} appears more than once")),
            "{f:#}"
        );
    }
    // Nothing was written: no project, asset, link or published blob.
    for table in ["projects", "project_assets"] {
        assert_eq!(s.count(table).await, 0, "{table}");
    }
    assert_eq!(s.count_assets().await, 0);
    assert_eq!(s.blob_files().len(), blobs_before);
    // The same files without the duplicate import.
    let body = upload_sb3(&alice, zip_of(&entries), None).await;
    assert!(body.get("errors").is_none(), "{body:#}");
}
