//! Assets: deduplicating concurrent uploads, validation, the download endpoint, and projects
//! referencing assets.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Backend, TestServer, UPLOAD, code, md5_hex, png, svg, wav},
};

both_backends!(
    identical_concurrent_uploads_make_one_asset,
    mixed_concurrent_batch_has_exact_counts,
    same_bytes_different_type_are_different_keys,
    upload_errors_leave_nothing,
    cut_off_upload_leaves_nothing,
    asset_download_behaves_like_a_cdn,
    projects_reference_stored_assets_exactly,
    md5ext_must_name_the_stored_format,
    anonymous_upload_is_refused_before_its_body_is_read,
);

/// 64 concurrent uploads of the same bytes from 8 users.
async fn identical_concurrent_uploads_make_one_asset(s: TestServer) {
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(s.user(&format!("student{i}")).await);
    }
    let bytes = svg(1);
    let uploads = (0..64).map(|i| {
        let (c, b) = (users[i % 8].clone(), bytes.clone());
        async move { c.upload(b, "IMAGE_VECTOR").await }
    });
    let results = join_all(uploads).await;
    let ids: HashSet<_> = results.iter().map(|r| r["asset"]["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "every racer gets the winner's id");
    let created = results.iter().filter(|r| r["created"] == true).count();
    assert_eq!(created, 1, "exactly one upload created the asset");
    assert_eq!(results[0]["asset"]["md5"], md5_hex(&bytes));
    assert_eq!(s.count_assets().await, 1);
    assert_eq!(s.blob_files().len(), 1);
    assert!(
        s.staging_files().is_empty(),
        "losers' staged files removed: {:?}",
        s.staging_files()
    );
}

async fn mixed_concurrent_batch_has_exact_counts(s: TestServer) {
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(s.user(&format!("u{i}")).await);
    }
    // 6 distinct assets (2 of each type), each uploaded 8 times, plus 8 singletons.
    let mut jobs: Vec<(Vec<u8>, &str)> = Vec::new();
    for n in 0..2 {
        for _ in 0..8 {
            jobs.push((svg(100 + n), "IMAGE_VECTOR"));
            jobs.push((png(n), "IMAGE_BITMAP"));
            jobs.push((wav(n), "SOUND"));
        }
    }
    for n in 0..8 {
        jobs.push((svg(1000 + n), "IMAGE_VECTOR"));
    }
    let uploads = jobs.into_iter().enumerate().map(|(i, (bytes, t))| {
        let c = users[i % 8].clone();
        async move {
            let md5 = md5_hex(&bytes);
            (md5, t, c.upload(bytes, t).await)
        }
    });
    let results = join_all(uploads).await;
    let mut by_key: HashMap<(String, &str), HashSet<Value>> = HashMap::new();
    let mut created: HashMap<(String, &str), usize> = HashMap::new();
    for (md5, t, r) in &results {
        by_key
            .entry((md5.clone(), t))
            .or_default()
            .insert(r["asset"]["id"].clone());
        *created.entry((md5.clone(), t)).or_default() += usize::from(r["created"] == true);
    }
    assert_eq!(by_key.len(), 14);
    assert!(
        by_key.values().all(|ids| ids.len() == 1),
        "one id per (md5, type)"
    );
    assert!(
        created.values().all(|n| *n == 1),
        "one creator per (md5, type): {created:?}"
    );
    assert_eq!(s.count_assets().await, 14);
    assert_eq!(s.blob_files().len(), 14);
    assert!(s.staging_files().is_empty());
}

/// The key is (md5, asset_type). Validation decides type from the bytes, so the same bytes can
/// never be valid as two types: the second type is rejected, never aliased to the first asset.
async fn same_bytes_different_type_are_different_keys(s: TestServer) {
    let alice = s.user("alice").await;
    let bytes = svg(7);
    let md5 = md5_hex(&bytes);
    alice.upload(bytes.clone(), "IMAGE_VECTOR").await;
    let (_, body) = alice.upload_raw(bytes.clone(), "IMAGE_BITMAP", None).await;
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT");
    let q = "query($m: String!, $t: AssetType!) { asset(md5: $m, assetType: $t) { id assetType contentType url } }";
    let vector = alice
        .data(q, json!({ "m": md5, "t": "IMAGE_VECTOR" }))
        .await;
    assert_eq!(vector["asset"]["assetType"], "IMAGE_VECTOR");
    assert_eq!(vector["asset"]["url"], format!("/assets/{md5}.svg"));
    let bitmap = alice
        .data(q, json!({ "m": md5, "t": "IMAGE_BITMAP" }))
        .await;
    assert_eq!(bitmap["asset"], Value::Null);
    // Anyone may look assets up by md5 (public by default, as in Scratch).
    let anon = s
        .anonymous()
        .data(q, json!({ "m": md5, "t": "IMAGE_VECTOR" }))
        .await;
    assert_eq!(anon["asset"]["assetType"], "IMAGE_VECTOR");
    assert_eq!(s.count_assets().await, 1);
}

async fn upload_errors_leave_nothing(_s: TestServer) {
    let s = TestServer::start_with(_s.backend, &[("ATELIER_MAX_ASSET_BYTES", "65536")]).await;
    drop(_s);
    let alice = s.user("alice").await;
    let mut too_big = svg(1);
    too_big.truncate(too_big.len() - 6);
    too_big.extend(std::iter::repeat_n(b' ', 70_000));
    too_big.extend(b"</svg>");
    let (status, body) = alice.upload_raw(too_big, "IMAGE_VECTOR", None).await;
    assert_eq!(status, 413);
    assert_eq!(code(&body["errors"][0]), "PAYLOAD_TOO_LARGE");
    assert_eq!(body["errors"][0]["extensions"]["limit"], 65536);

    let bytes = png(1);
    let (_, body) = alice
        .upload_raw(
            bytes.clone(),
            "IMAGE_BITMAP",
            Some(&md5_hex(b"other bytes")),
        )
        .await;
    assert_eq!(code(&body["errors"][0]), "CHECKSUM_MISMATCH");
    let (_, body) = alice
        .upload_raw(bytes.clone(), "IMAGE_BITMAP", Some("not-an-md5"))
        .await;
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "md5");

    for (bytes, t) in [
        (png(2), "SOUND"),
        (wav(2), "IMAGE_BITMAP"),
        (b"<html><body>hi</body></html>".to_vec(), "IMAGE_VECTOR"),
        (b"GIF89a......".to_vec(), "IMAGE_BITMAP"),
        (Vec::new(), "SOUND"),
    ] {
        let (_, body) = alice.upload_raw(bytes, t, None).await;
        assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT", "{t}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "file");
    }
    let (status, body) = s.anonymous().upload_raw(png(3), "IMAGE_BITMAP", None).await;
    assert_eq!(
        code(&body["errors"][0]),
        "UNAUTHENTICATED",
        "{status} {body}"
    );
    // A JSON request cannot carry a file.
    let e = alice
        .error(crate::harness::UPLOAD, json!({ "f": "0", "t": "SOUND" }))
        .await;
    assert_eq!(code(&e), "BAD_USER_INPUT");
    assert_eq!(e["extensions"]["field"], "file");

    assert_eq!(s.count_assets().await, 0);
    assert!(s.blob_files().is_empty(), "{:?}", s.blob_files());
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
    // The right md5 is accepted.
    let (_, body) = alice
        .upload_raw(bytes.clone(), "IMAGE_BITMAP", Some(&md5_hex(&bytes)))
        .await;
    assert_eq!(body["data"]["uploadAsset"]["created"], true, "{body}");
}

/// The client disconnects in the middle of a file part.
async fn cut_off_upload_leaves_nothing(s: TestServer) {
    use tokio::io::AsyncWriteExt;
    let alice = s.user("alice").await;
    let token = alice.token.clone().unwrap();
    let addr = s.base_url.trim_start_matches("http://").to_owned();
    let boundary = "XyZzYboundary";
    let ops = json!({ "query": crate::harness::UPLOAD, "variables": { "f": null, "t": "SOUND" } })
        .to_string();
    let mut head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{ops}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\":[\"variables.f\"]}}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"a.wav\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    head.extend(wav(1));
    head.extend(vec![7u8; 256 * 1024]);
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        head.len() + 10 * 1024 * 1024
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&head).await.unwrap();
    stream.flush().await.unwrap();
    // The server is staging the part that arrived…
    let mut staged = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if !s.staging_files().is_empty() {
            staged = true;
            break;
        }
    }
    assert!(
        staged,
        "the upload was being staged before the client vanished"
    );
    // …when the client vanishes.
    drop(stream);
    let mut clean = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if s.staging_files().is_empty() {
            clean = true;
            break;
        }
    }
    assert!(clean, "staging still holds {:?}", s.staging_files());
    assert_eq!(s.count_assets().await, 0);
    assert!(s.blob_files().is_empty());
    // And the server is fine.
    alice.upload(wav(2), "SOUND").await;
    assert_eq!(s.count_assets().await, 1);
}

async fn asset_download_behaves_like_a_cdn(s: TestServer) {
    let alice = s.user("alice").await;
    let bytes = svg(42);
    let up = alice.upload(bytes.clone(), "IMAGE_VECTOR").await;
    let url = format!("{}{}", s.base_url, up["asset"]["url"].as_str().unwrap());
    let http = reqwest::Client::new();

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/svg+xml");
    assert_eq!(
        h["etag"],
        format!("\"{}\"", up["asset"]["sha256"].as_str().unwrap())
    );
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), bytes);

    let resp = http
        .get(&url)
        .header("if-none-match", h["etag"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert!(resp.bytes().await.unwrap().is_empty());

    let resp = http
        .get(&url)
        .header("range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 5-9/{}", bytes.len())
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), bytes[5..10].to_vec());
    let resp = http
        .get(&url)
        .header("range", "bytes=-4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        bytes[bytes.len() - 4..].to_vec()
    );
    let resp = http
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{}", bytes.len())
    );

    let resp = http.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], bytes.len().to_string());
    assert!(resp.bytes().await.unwrap().is_empty());

    let md5 = up["asset"]["md5"].as_str().unwrap();
    for (path, status) in [
        (format!("/assets/{md5}.png"), 404), // wrong extension for the type
        (format!("/assets/{md5}.exe"), 404), // unknown extension
        (format!("/assets/{}.svg", "0".repeat(32)), 404), // not stored
        (format!("/assets/{}.svg", &md5[..31]), 400), // wrong length
        (format!("/assets/{}.svg", "z".repeat(32)), 400), // not hex
        ("/assets/..%2F..%2Fetc%2Fpasswd".to_owned(), 400), // traversal
        (format!("/assets/..%2F{md5}.svg"), 400),
        (format!("/assets/{md5}"), 400), // no extension
    ] {
        let resp = http
            .get(format!("{}{path}", s.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }

    // With `ATELIER_ASSET_ACCESS=authenticated` only signed-in users get bytes.
    if s.backend == Backend::Sqlite {
        let private = TestServer::start_with(
            Backend::Sqlite,
            &[("ATELIER_ASSET_ACCESS", "authenticated")],
        )
        .await;
        let bob = private.user("bob").await;
        let up = bob.upload(bytes.clone(), "IMAGE_VECTOR").await;
        let url = format!(
            "{}{}",
            private.base_url,
            up["asset"]["url"].as_str().unwrap()
        );
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
        let resp = http
            .get(&url)
            .bearer_auth(bob.token.as_ref().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let e = private
            .anonymous()
            .error(
                "query($m: String!) { asset(md5: $m, assetType: IMAGE_VECTOR) { id } }",
                json!({ "m": md5 }),
            )
            .await;
        assert_eq!(code(&e), "UNAUTHENTICATED");
    }
}

async fn projects_reference_stored_assets_exactly(s: TestServer) {
    let alice = s.user("alice").await;
    let costume = alice.upload(svg(1), "IMAGE_VECTOR").await["asset"].clone();
    let backdrop = alice.upload(png(1), "IMAGE_BITMAP").await["asset"].clone();
    let sound = alice.upload(wav(1), "SOUND").await["asset"].clone();
    let md5 = |a: &Value| a["md5"].as_str().unwrap().to_owned();
    let content = |costumes: Vec<Value>, sounds: Vec<Value>| json!({ "targets": [{ "isStage": false, "name": "Sprite1", "costumes": costumes, "sounds": sounds }] });
    let c1 = json!({ "name": "c1", "assetId": md5(&costume), "dataFormat": "svg", "md5ext": format!("{}.svg", md5(&costume)) });
    let c2 = json!({ "name": "bg", "assetId": md5(&backdrop), "dataFormat": "png" });
    let s1 = json!({ "name": "pop", "md5ext": format!("{}.wav", md5(&sound)) });
    let ghost = json!({ "name": "ghost", "md5ext": "00000000000000000000000000000001.wav" });
    const ASSETS: &str =
        "query($id: ID!) { project(id: $id) { version assets { md5 assetType } } }";

    let e = alice
        .error(
            "mutation($c: JSON!) { createProject(input: {title: \"x\", content: $c}) { id } }",
            json!({ "c": content(vec![c1.clone()], vec![ghost.clone()]) }),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(
        e["extensions"]["missing"],
        json!(["00000000000000000000000000000001.wav"])
    );
    assert_eq!(s.count("projects").await, 0);

    let id = alice
        .create_project("p", content(vec![c1.clone(), c2.clone()], vec![]))
        .await["id"]
        .clone();
    let p = alice.data(ASSETS, json!({ "id": id })).await["project"].clone();
    let kinds: HashSet<_> = p["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["assetType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        HashSet::from(["IMAGE_VECTOR".to_owned(), "IMAGE_BITMAP".to_owned()])
    );
    assert_eq!(s.count("project_assets").await, 2);

    // Drop the backdrop, add the sound (the costume is listed twice: still one link).
    use crate::api::UPDATE_PROJECT as UPDATE;
    alice.data(UPDATE, json!({ "id": id, "v": 1, "c": content(vec![c1.clone(), c1.clone()], vec![s1.clone()]) })).await;
    let p = alice.data(ASSETS, json!({ "id": id })).await["project"].clone();
    let md5s: HashSet<_> = p["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["md5"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(md5s, HashSet::from([md5(&costume), md5(&sound)]));
    assert_eq!(s.count("project_assets").await, 2);

    // A failed update keeps the previous links.
    let e = alice
        .error(
            UPDATE,
            json!({ "id": id, "v": 2, "c": content(vec![], vec![ghost]) }),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS");
    assert_eq!(s.count("project_assets").await, 2);
    alice
        .data(
            UPDATE,
            json!({ "id": id, "v": 2, "c": content(vec![], vec![]) }),
        )
        .await;
    assert_eq!(s.count("project_assets").await, 0);
    assert_eq!(
        alice.data(ASSETS, json!({ "id": id })).await["project"]["assets"],
        json!([])
    );

    // Deleting a project cascades to its links (and shares); the shared assets stay.
    let other = alice
        .create_project("q", content(vec![c1, c2], vec![s1]))
        .await["id"]
        .clone();
    assert_eq!(s.count("project_assets").await, 3);
    let db = s.db().await;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("INSERT INTO groups (provider, external_id, name, created_at) VALUES ('local', 'c', 'c', CURRENT_TIMESTAMP)").await.unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO project_shares (project_id, group_id, shared_by, created_at) SELECT {}, id, 1, CURRENT_TIMESTAMP FROM groups",
        other.as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(s.count("project_shares").await, 1);
    alice
        .data(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": other }),
        )
        .await;
    assert_eq!(s.count("project_assets").await, 0);
    assert_eq!(s.count("project_shares").await, 0);
    assert_eq!(s.count_assets().await, 3);
}

/// JPEG magic plus `n`-dependent filler.
fn jpeg(n: usize) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    b.extend(format!("jfif-{n}").bytes());
    b
}

/// Every md5ext a saved project references is served exactly as written: `<md5>.jpg` for a
/// PNG is MISSING_ASSETS (as written, nothing saved); `.jpeg` and `.jpg` name one format; fsck
/// reports a reference whose asset is stored in another format.
async fn md5ext_must_name_the_stored_format(mut s: TestServer) {
    let alice = s.user("alice").await;
    let png_asset = alice.upload(png(7), "IMAGE_BITMAP").await["asset"].clone();
    let jpeg_bytes = jpeg(7);
    let jpeg_asset = alice.upload(jpeg_bytes.clone(), "IMAGE_BITMAP").await["asset"].clone();
    assert_eq!(jpeg_asset["contentType"], "image/jpeg");
    let (png_md5, jpeg_md5) = (
        png_asset["md5"].as_str().unwrap().to_owned(),
        jpeg_asset["md5"].as_str().unwrap().to_owned(),
    );
    let costume =
        |md5ext: &str| json!({ "targets": [{ "costumes": [{ "name": "c", "md5ext": md5ext }] }] });
    const GET: &str = "query($id: ID!) { project(id: $id) { version content assets { md5 } } }";
    use crate::api::UPDATE_PROJECT as UPDATE;

    // The PNG referenced as a JPEG: on create and on update.
    let as_jpg = format!("{png_md5}.jpg");
    let e = alice
        .error(
            "mutation($c: JSON!) { createProject(input: {title: \"x\", content: $c}) { id } }",
            json!({ "c": costume(&as_jpg) }),
        )
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS", "{e:#}");
    assert_eq!(e["extensions"]["missing"], json!([as_jpg]));
    assert_eq!(s.count("projects").await, 0);
    let id = alice
        .create_project("p", costume(&format!("{png_md5}.png")))
        .await["id"]
        .clone();
    let before = alice.data(GET, json!({ "id": id })).await;
    let e = alice
        .error(UPDATE, json!({ "id": id, "v": 1, "c": costume(&as_jpg) }))
        .await;
    assert_eq!(code(&e), "MISSING_ASSETS", "{e:#}");
    assert_eq!(e["extensions"]["missing"], json!([as_jpg]));
    assert_eq!(
        alice.data(GET, json!({ "id": id })).await,
        before,
        "nothing written"
    );
    // Also in the `assetId` + `dataFormat` form.
    let e = alice
        .error(
            UPDATE,
            json!({ "id": id, "v": 1, "c": { "targets": [{ "costumes": [{ "assetId": png_md5, "dataFormat": "jpeg" }] }] } }),
        )
        .await;
    assert_eq!(
        e["extensions"]["missing"],
        json!([format!("{png_md5}.jpeg")])
    );
    assert_eq!(
        alice.data(GET, json!({ "id": id })).await,
        before,
        "nothing written"
    );

    // A JPEG referenced as `.jpeg` saves, and both spellings serve it.
    let v = alice
        .data(
            UPDATE,
            json!({ "id": id, "v": 1, "c": costume(&format!("{jpeg_md5}.jpeg")) }),
        )
        .await["updateProject"]["version"]
        .clone();
    assert_eq!(v, 2);
    let after = alice.data(GET, json!({ "id": id })).await;
    assert_eq!(after["project"]["assets"], json!([{ "md5": jpeg_md5 }]));
    let http = reqwest::Client::new();
    for ext in ["jpeg", "jpg"] {
        let resp = http
            .get(format!("{}/assets/{jpeg_md5}.{ext}", s.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, ".{ext}");
        assert_eq!(resp.headers()["content-type"], "image/jpeg", ".{ext}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), jpeg_bytes, ".{ext}");
    }
    for wrong in [
        format!("{jpeg_md5}.png"),
        format!("{png_md5}.jpg"),
        format!("{png_md5}.jpeg"),
    ] {
        let resp = http
            .get(format!("{}/assets/{wrong}", s.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{wrong}");
    }
    let (ok, out) = s.cli(&["fsck", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    // The stored asset's format changes behind the project's back: fsck reports I3 (broken
    // on purpose, so the check on drop is off).
    s.skip_invariant_check();
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    db.execute_unprepared(&format!(
        "UPDATE assets SET data_format = 'png', content_type = 'image/png' WHERE md5 = '{jpeg_md5}'"
    ))
    .await
    .unwrap();
    let _ = db.close().await;
    let (ok, out) = s.cli(&["fsck", "--json"]);
    assert!(!ok, "fsck must fail: {out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([{
            "invariant": "I3",
            "subject": format!("project {}", id.as_str().unwrap()),
            "detail": format!(
                "references {jpeg_md5}.jpeg but asset {} is stored as png",
                jpeg_asset["id"].as_str().unwrap()
            ),
        }])
    );
}

/// An anonymous multipart request is refused with 401 as soon as its headers are in: the
/// client has sent 64 KiB of a 5 MiB body and never sends the rest, and still gets its
/// answer, with nothing staged or published.
async fn anonymous_upload_is_refused_before_its_body_is_read(s: TestServer) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let blobs = s.blob_files();
    let addr = s.base_url.strip_prefix("http://").unwrap().to_owned();
    let boundary = "atelier-test-boundary";
    let operations =
        json!({ "query": UPLOAD, "variables": { "f": null, "t": "IMAGE_BITMAP", "m": null } });
    let parts = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{operations}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\": [\"variables.f\"]}}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"big.png\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let file_len = 5 * 1024 * 1024;
    let closing = format!("\r\n--{boundary}--\r\n");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        parts.len() + file_len + closing.len()
    );
    let mut first = png(0);
    first.resize(64 * 1024, 0);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(parts.as_bytes()).await.unwrap();
    conn.write_all(&first).await.unwrap();

    // The rest of the body never comes: the answer must not wait for it.
    let mut response = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
                let len = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                if len.is_some_and(|len| response.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("no answer while the body is incomplete: the server waited for it");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(headers.starts_with("HTTP/1.1 401 "), "{text}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["data"], Value::Null);
    assert_eq!(code(&body["errors"][0]), "UNAUTHENTICATED", "{body:#}");
    assert_eq!(
        s.staging_files(),
        Vec::<std::path::PathBuf>::new(),
        "nothing staged"
    );
    drop(conn);
    assert_eq!(s.blob_files(), blobs, "nothing published");
    assert_eq!(s.count_assets().await, 0);

    // Anonymous JSON requests are still answered (queries may be public).
    let (status, body) = s.anonymous().raw("{ viewer { id } }", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "data": { "viewer": null } }));
}
