//! The authorization model, cell by cell: owner, teacher of the owner's group, another
//! student, a teacher of another group, an admin and an anonymous client, each reading,
//! listing, changing and deleting one student's project. Invisible is `null` / `NOT_FOUND`;
//! visible but not allowed is `FORBIDDEN`.

use serde_json::json;

use crate::{
    both_backends,
    harness::{Client, TestServer, code, empty_project},
};

const GET: &str = "query($id: ID!) { project(id: $id) { id title } }";
const LIST: &str = "{ projects(first: 100) { edges { node { id } } } }";
const RENAME: &str = "mutation($id: ID!, $t: String!) { updateProject(input: {id: $id, expectedVersion: 1, title: $t}) { id version } }";
const DELETE: &str = "mutation($id: ID!) { deleteProject(input: {id: $id}) }";

both_backends!(every_cell_of_the_project_matrix);

/// What one viewer may do with the student's project.
#[derive(Debug, Clone, Copy, PartialEq)]
enum May {
    /// read and list it, change and delete it
    Write,
    /// read and list it; changing or deleting it is FORBIDDEN
    Read,
    /// it does not exist for them: null, not listed, NOT_FOUND
    Nothing,
}

async fn check(who: &str, c: &Client, id: &str, may: May) {
    let read = c.raw(GET, json!({ "id": id })).await.1;
    let listed = c.raw(LIST, json!({})).await.1["data"]["projects"]["edges"]
        .as_array()
        .map(|edges| edges.iter().any(|e| e["node"]["id"] == id))
        .unwrap_or(false);
    match may {
        May::Write | May::Read => {
            assert_eq!(read["data"]["project"]["id"], id, "{who} reads: {read}");
            assert!(listed, "{who} lists it");
        }
        May::Nothing => {
            assert!(read["data"]["project"].is_null(), "{who} reads: {read}");
            assert!(!listed, "{who} does not list it");
        }
    }
    let renamed = c.raw(RENAME, json!({ "id": id, "t": "renamed" })).await.1;
    let deleted = c.raw(DELETE, json!({ "id": id })).await.1;
    let expected = match may {
        May::Write => {
            assert_eq!(
                renamed["data"]["updateProject"]["version"], 2,
                "{who} renames: {renamed}"
            );
            assert_eq!(
                deleted["data"]["deleteProject"], id,
                "{who} deletes: {deleted}"
            );
            return;
        }
        May::Read => "FORBIDDEN",
        May::Nothing if c.token.is_none() => "UNAUTHENTICATED",
        May::Nothing => "NOT_FOUND",
    };
    assert_eq!(
        code(&renamed["errors"][0]),
        expected,
        "{who} renames: {renamed}"
    );
    assert_eq!(
        code(&deleted["errors"][0]),
        expected,
        "{who} deletes: {deleted}"
    );
}

async fn every_cell_of_the_project_matrix(s: TestServer) {
    let owner = s.user("sam").await;
    let teacher = s.user_with_role("tess", "teacher").await;
    let classmate = s.user("cleo").await;
    let other_teacher = s.user_with_role("otto", "teacher").await;
    let admin = s.user_with_role("ada", "admin").await;
    let class = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    let other = s.cli(&["group", "create", "7C"]).1.trim().to_owned();
    for (group, member) in [
        (&class, "sam"),
        (&class, "tess"),
        (&class, "cleo"),
        (&other, "otto"),
    ] {
        assert!(s.cli(&["group", "add-member", group, member]).0);
    }
    let id = owner.create_project("sam's", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A teacher's own project is not readable by a co-teacher's students or by other teachers.
    let tess_own = teacher.create_project("tess's", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    check("a classmate", &classmate, &id, May::Nothing).await;
    check(
        "a teacher of another class",
        &other_teacher,
        &id,
        May::Nothing,
    )
    .await;
    check("anonymous", &s.anonymous(), &id, May::Nothing).await;
    check("the class's teacher", &teacher, &id, May::Read).await;
    check(
        "the owner's classmate on the teacher's project",
        &classmate,
        &tess_own,
        May::Nothing,
    )
    .await;
    // Writers last: they change the project.
    check("an admin", &admin, &tess_own, May::Write).await;
    check("the owner", &owner, &id, May::Write).await;
}
