//! The CLI: scriptable output (only the token / id on stdout) and group membership.

use serde_json::json;

use crate::{both_backends, harness::TestServer};

both_backends!(cli_tokens_and_groups);

fn run(s: &TestServer, args: &[&str]) -> String {
    let out = s.command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn cli_tokens_and_groups(s: TestServer) {
    let token = run(
        &s,
        &["token", "create", "--user", "teacher1", "--role", "teacher"],
    );
    assert_eq!(
        token.lines().count(),
        1,
        "only the token on stdout: {token:?}"
    );
    assert!(token.starts_with("atl_") && token.trim().len() > 40);
    // The same user gets a second, different token; both work.
    let token2 = run(&s, &["token", "create", "--user", "teacher1"]);
    assert_ne!(token, token2);
    assert_eq!(s.count("users").await, 1);
    assert_eq!(s.count("api_tokens").await, 2);
    // Tokens are stored hashed only.
    let db = s.db().await;
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT token_hash FROM api_tokens",
        ))
        .await
        .unwrap();
    for row in rows {
        let h: String = row.try_get("", "token_hash").unwrap();
        assert!(!h.contains(token.trim()) && h.len() == 64);
    }

    let id = run(&s, &["group", "create", "Class 5B"]);
    let id = id.trim();
    assert!(id.parse::<i64>().is_ok(), "only the id on stdout: {id:?}");
    assert_eq!(
        run(&s, &["group", "create", "Class 5B"]).trim(),
        id,
        "create is get-or-create"
    );
    run(&s, &["group", "add-member", id, "teacher1"]);
    run(&s, &["group", "add-member", id, "teacher1"]);
    assert_eq!(s.count("group_members").await, 1);

    let client = crate::harness::Client::new(s.graphql_url(), Some(token.trim().to_owned()));
    let v = client
        .data(
            "{ viewer { displayName role groups { id name } } groups { name } }",
            json!({}),
        )
        .await;
    assert_eq!(v["viewer"]["role"], "TEACHER");
    assert_eq!(
        v["viewer"]["groups"],
        json!([{ "id": id, "name": "Class 5B" }])
    );
    assert_eq!(v["groups"], json!([{ "name": "Class 5B" }]));

    let out = s
        .command()
        .args(["group", "add-member", "999999", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown group fails");
    assert!(out.stdout.is_empty());
    let out = s
        .command()
        .args(["token", "create", "--user", "x", "--role", "wizard"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown role fails");
}
