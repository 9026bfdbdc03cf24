//! Built-in assets: the stock editor's "New project" saves without uploading anything, the
//! five are served, `gc` keeps them, `fsck` notices when one is broken, and a start repairs a
//! missing one.

use std::path::PathBuf;

use atelier::service::builtin::BUILTINS;
use serde_json::{Value, json};

use crate::{both_backends, harness::TestServer};

both_backends!(
    default_project_saves_without_uploads,
    fsck_reports_broken_builtins_and_start_restores_them,
);

const UPDATE: &str = "mutation($id: ID!, $v: Int!, $c: JSON) { updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }";

/// The editor's default project as `project-data.ts` builds it, English names.
fn default_project() -> Value {
    json!({
        "targets": [
            {
                "isStage": true, "name": "Stage",
                "variables": { "`jEk@4|i[#Fk?(8x)AV.-my variable": ["my variable", 0] },
                "lists": {}, "broadcasts": {}, "blocks": {}, "currentCostume": 0,
                "costumes": [{
                    "assetId": "cd21514d0531fdffb22204e0ec5ed84a", "name": "backdrop1",
                    "md5ext": "cd21514d0531fdffb22204e0ec5ed84a.svg", "dataFormat": "svg",
                    "rotationCenterX": 240, "rotationCenterY": 180
                }],
                "sounds": [{
                    "assetId": "83a9787d4cb6f3b7632b4ddfebf74367", "name": "pop",
                    "dataFormat": "wav", "format": "", "rate": 11025, "sampleCount": 258,
                    "md5ext": "83a9787d4cb6f3b7632b4ddfebf74367.wav"
                }],
                "volume": 100
            },
            {
                "isStage": false, "name": "Sprite1", "variables": {}, "lists": {},
                "broadcasts": {}, "blocks": {}, "currentCostume": 0,
                "costumes": [
                    {
                        "assetId": "bcf454acf82e4504149f7ffe07081dbc", "name": "costume1",
                        "bitmapResolution": 1, "md5ext": "bcf454acf82e4504149f7ffe07081dbc.svg",
                        "dataFormat": "svg", "rotationCenterX": 48, "rotationCenterY": 50
                    },
                    {
                        "assetId": "0fb9be3e8397c983338cb71dc84d0b25", "name": "costume2",
                        "bitmapResolution": 1, "md5ext": "0fb9be3e8397c983338cb71dc84d0b25.svg",
                        "dataFormat": "svg", "rotationCenterX": 46, "rotationCenterY": 53
                    }
                ],
                "sounds": [{
                    "assetId": "83c36d806dc92327b9e7049a565c6bff", "name": "Meow",
                    "dataFormat": "wav", "format": "", "rate": 22050, "sampleCount": 18688,
                    "md5ext": "83c36d806dc92327b9e7049a565c6bff.wav"
                }],
                "volume": 100, "visible": true, "x": 0, "y": 0, "size": 100, "direction": 90,
                "draggable": false, "rotationStyle": "all around"
            }
        ],
        "meta": { "semver": "3.0.0", "vm": "0.1.0", "agent": "test" }
    })
}

/// The vendored file, read from the repository (not from the binary under test).
fn vendored(md5ext: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("vendor/scratch-default-project")
            .join(md5ext),
    )
    .unwrap()
}

fn blob_path(s: &TestServer, sha256: &str) -> PathBuf {
    s.storage_dir()
        .join("blobs")
        .join(&sha256[..2])
        .join(sha256)
}

async fn default_project_saves_without_uploads(s: TestServer) {
    assert_eq!(
        s.count("assets").await,
        5,
        "the built-ins are there from the start"
    );
    assert_eq!(s.count_assets().await, 0);
    let alice = s.user("alice").await;
    let created = alice.create_project("Untitled", default_project()).await;
    assert_eq!(created["version"], 1);
    let mut changed = default_project();
    changed["targets"][1]["x"] = json!(42);
    let updated = alice
        .data(UPDATE, json!({ "id": created["id"], "v": 1, "c": changed }))
        .await;
    assert_eq!(updated["updateProject"]["version"], 2);
    assert_eq!(s.count("project_assets").await, 5);
    assert_eq!(s.count("assets").await, 5, "nothing new was stored");

    let http = reqwest::Client::new();
    for b in &BUILTINS {
        let resp = http
            .get(format!("{}/assets/{}", s.base_url, b.md5ext))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", b.md5ext);
        assert_eq!(
            resp.bytes().await.unwrap().to_vec(),
            vendored(b.md5ext),
            "{}",
            b.md5ext
        );
    }

    // Referenced by their rows: gc keeps them even with no grace and no project.
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": created["id"] }),
        )
        .await;
    let (ok, out) = s.cli(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    for b in &BUILTINS {
        assert!(blob_path(&s, b.sha256).exists(), "gc kept {}", b.md5ext);
    }
    // `migrate` again (as a second process would) adds nothing.
    let (ok, out) = s.cli(&["migrate"]);
    assert!(ok, "{out}");
    assert_eq!(s.count("assets").await, 5);
    s.fsck_ok();
}

async fn fsck_reports_broken_builtins_and_start_restores_them(mut s: TestServer) {
    let (gone, bad) = (&BUILTINS[0], &BUILTINS[4]);
    std::fs::remove_file(blob_path(&s, gone.sha256)).unwrap();
    let mut corrupted = vendored(bad.md5ext);
    corrupted[100] ^= 1;
    std::fs::write(blob_path(&s, bad.sha256), &corrupted).unwrap();

    let (ok, out) = s.cli(&["fsck"]);
    assert!(!ok, "fsck must fail:\n{out}");
    let broken: Vec<&str> = out.lines().filter(|l| l.starts_with("I1 ")).collect();
    assert_eq!(broken.len(), 2, "{out}");
    assert!(
        broken
            .iter()
            .any(|l| l.contains(gone.sha256) && l.contains("unreadable")),
        "{out}"
    );
    assert!(
        broken
            .iter()
            .any(|l| l.contains(bad.sha256) && l.contains("hashes to")),
        "{out}"
    );

    // A row gone too: fsck names the built-in.
    let db = s.db().await;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "DELETE FROM assets WHERE blob_key = '{}'",
        BUILTINS[2].sha256
    ))
    .await
    .unwrap();
    let _ = db.close().await;
    let (ok, out) = s.cli(&["fsck"]);
    assert!(!ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("builtin {}", BUILTINS[2].md5ext))),
        "{out}"
    );

    // A start puts back what is missing and replaces what does not hash right.
    s.restart();
    assert_eq!(
        std::fs::read(blob_path(&s, gone.sha256)).unwrap(),
        vendored(gone.md5ext)
    );
    assert_eq!(
        std::fs::read(blob_path(&s, bad.sha256)).unwrap(),
        vendored(bad.md5ext)
    );
    assert_eq!(s.count("assets").await, 5);
    s.fsck_ok();
}
