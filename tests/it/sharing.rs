//! Sharing and copying under concurrency: racing shares make exactly the union of rows,
//! copies racing versioned updates each take one single version, and shares, copies and
//! deletes racing each other end in an allowed serial outcome with no dangling row.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code},
};

const SHARE: &str = "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id version sharedWith { id } } }";
const UNSHARE: &str = "mutation($id: ID!, $g: [ID!]!) { unshareProject(input: {id: $id, groupIds: $g}) { id sharedWith { id } } }";
const COPY: &str = "mutation($id: ID!) { copyProject(input: {id: $id}) { id title version content remixedFrom { id } } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!, $t: String, $c: JSON) { updateProject(input: {id: $id, expectedVersion: $v, title: $t, content: $c}) { id version } }";
const DELETE: &str = "mutation($id: ID!) { deleteProject(input: {id: $id}) }";
const GET: &str =
    "query($id: ID!) { project(id: $id) { id title remixes { edges { node { id } } } } }";

both_backends!(
    racing_shares_make_exactly_the_union,
    sharing_rules_and_visibility,
    copies_racing_updates_take_one_version_each,
    shares_copies_and_deletes_racing_leave_nothing_dangling,
);

fn content(n: usize) -> Value {
    json!({ "targets": [{ "isStage": true, "name": format!("v{n}") }], "meta": { "semver": "3.0.0" } })
}

/// A class: groups with the given members; returns the group ids.
fn groups(s: &TestServer, names: &[&str], members: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let id = s.cli(&["group", "create", name]).1.trim().to_owned();
            for m in members {
                assert!(s.cli(&["group", "add-member", &id, m]).0);
            }
            id
        })
        .collect()
}

async fn new_project(c: &Client, title: &str) -> String {
    c.create_project(title, content(0)).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// 20 concurrent shares with overlapping group sets: exactly the union of share rows, and
/// the version never moves.
async fn racing_shares_make_exactly_the_union(s: TestServer) {
    let teacher = s.user("tess").await;
    let g = groups(&s, &["a", "b", "c", "d", "e"], &["tess"]);
    let id = new_project(&teacher, "template").await;
    let sets: Vec<Vec<String>> = (0..20)
        .map(|i| {
            vec![
                g[i % 5].clone(),
                g[(i + 1) % 5].clone(),
                g[(i + 2) % 5].clone(),
            ]
        })
        .collect();
    let answers = join_all(
        sets.iter()
            .map(|set| teacher.raw(SHARE, json!({ "id": id, "g": set }))),
    )
    .await;
    for (_, body) in &answers {
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(body["data"]["shareProject"]["version"], 1);
    }
    assert_eq!(s.count("project_shares").await, 5);
    // Sharing again adds nothing; unsharing takes exactly what it names.
    let again = teacher.data(SHARE, json!({ "id": id, "g": [g[0]] })).await;
    assert_eq!(
        again["shareProject"]["sharedWith"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let fewer = teacher
        .data(UNSHARE, json!({ "id": id, "g": [g[0], g[1]] }))
        .await;
    assert_eq!(
        fewer["unshareProject"]["sharedWith"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(s.count("project_shares").await, 3);
}

/// Who may share with which group, and who then sees what.
async fn sharing_rules_and_visibility(s: TestServer) {
    let owner = s.user("sam").await;
    let mate = s.user("mia").await;
    let outsider = s.user("otto").await;
    let class = groups(&s, &["7B"], &["sam", "mia"]).remove(0);
    let other = groups(&s, &["7C"], &["otto"]).remove(0);
    let id = new_project(&owner, "sam's").await;

    // Not visible before sharing.
    assert!(mate.data(GET, json!({ "id": id })).await["project"].is_null());
    // A group the owner is not in: FORBIDDEN, and nothing of the request is applied.
    let e = owner
        .error(SHARE, json!({ "id": id, "g": [class, other] }))
        .await;
    assert_eq!(code(&e), "FORBIDDEN", "{e}");
    assert_eq!(s.count("project_shares").await, 0);
    let e = owner
        .error(SHARE, json!({ "id": id, "g": ["999999"] }))
        .await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");
    // Only the owner shares.
    let e = mate.error(SHARE, json!({ "id": id, "g": [class] })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");

    owner.data(SHARE, json!({ "id": id, "g": [class] })).await;
    // A member reads it, lists it by group, and copies it; an outsider does not.
    assert_eq!(
        mate.data(GET, json!({ "id": id })).await["project"]["id"],
        id
    );
    let listed = mate
        .data(
            "query($g: ID!) { projects(filter: {sharedWithGroup: $g}) { edges { node { id } } } }",
            json!({ "g": class }),
        )
        .await;
    assert_eq!(listed["projects"]["edges"][0]["node"]["id"], id);
    let via_group = mate
        .data(
            "{ viewer { groups { projects { edges { node { id } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        via_group["viewer"]["groups"][0]["projects"]["edges"][0]["node"]["id"],
        id
    );
    // A member may read but not change it.
    let e = mate
        .error(UPDATE, json!({ "id": id, "v": 1, "t": "mine now" }))
        .await;
    assert_eq!(code(&e), "FORBIDDEN", "{e}");
    let copy = mate.data(COPY, json!({ "id": id })).await["copyProject"].clone();
    assert_eq!(copy["remixedFrom"]["id"], id);
    assert_eq!(copy["version"], 1);
    assert_eq!(copy["content"], content(0));
    // Lineage lists the copies the viewer can see: the copier sees theirs, the owner (who
    // cannot read it) does not.
    let remixes = mate.data(GET, json!({ "id": id })).await;
    assert_eq!(
        remixes["project"]["remixes"]["edges"][0]["node"]["id"],
        copy["id"]
    );
    let remixes = owner.data(GET, json!({ "id": id })).await;
    assert_eq!(remixes["project"]["remixes"]["edges"], json!([]));
    assert!(outsider.data(GET, json!({ "id": id })).await["project"].is_null());
    let e = outsider.error(COPY, json!({ "id": id })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");

    // Removed from the group: access ends on the next request.
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    db.execute_unprepared(
        "DELETE FROM group_members WHERE user_id = (SELECT id FROM users WHERE subject = 'mia')",
    )
    .await
    .unwrap();
    assert!(mate.data(GET, json!({ "id": id })).await["project"].is_null());
    // A copy writes no bytes: one content blob for the source and the copy.
    assert_eq!(s.blob_files().len(), 1, "{:?}", s.blob_files());
}

/// 20 copies race 20 versioned updates (each changing title and content together): every
/// copy's title and content come from one single source version.
async fn copies_racing_updates_take_one_version_each(s: TestServer) {
    let owner = s.user("sam").await;
    let mate = s.user("mia").await;
    let class = groups(&s, &["7B"], &["sam", "mia"]).remove(0);
    let id = new_project(&owner, "v0").await;
    owner.data(SHARE, json!({ "id": id, "g": [class] })).await;
    let updates = async {
        for n in 1..=20 {
            let vars = json!({ "id": id, "v": n, "t": format!("v{n}"), "c": content(n) });
            owner.data(UPDATE, vars).await;
        }
    };
    let copies = join_all((0..20).map(|_| mate.raw(COPY, json!({ "id": id }))));
    let ((), copies) = tokio::join!(updates, copies);
    for (_, body) in copies {
        let copy = &body["data"]["copyProject"];
        let title = copy["title"].as_str().unwrap_or_else(|| panic!("{body}"));
        let n: usize = title[1..].parse().unwrap();
        assert_eq!(
            copy["content"],
            content(n),
            "title {title} with another version's content"
        );
    }
    assert_eq!(s.count("projects").await, 21);
}

/// Share vs delete, copy vs delete and 10 deletes racing: each ends in an allowed serial
/// outcome; the losers get NOT_FOUND; no share row or copy points at a deleted project.
async fn shares_copies_and_deletes_racing_leave_nothing_dangling(s: TestServer) {
    let owner = s.user("sam").await;
    let mate = s.user("mia").await;
    let class = groups(&s, &["7B"], &["sam", "mia"]).remove(0);
    for round in 0..5 {
        let id = new_project(&owner, &format!("round {round}")).await;
        owner.data(SHARE, json!({ "id": id, "g": [class] })).await;
        let share = owner.raw(SHARE, json!({ "id": id, "g": [class] }));
        let copy = mate.raw(COPY, json!({ "id": id }));
        let deletes = join_all((0..10).map(|_| owner.raw(DELETE, json!({ "id": id }))));
        let ((_, share), (_, copy), deletes) = tokio::join!(share, copy, deletes);
        let deleted = deletes
            .iter()
            .filter(|(_, b)| b["data"]["deleteProject"] == id)
            .count();
        assert_eq!(deleted, 1, "exactly one delete wins");
        for (_, b) in &deletes {
            if b["data"]["deleteProject"] != id {
                assert_eq!(code(&b["errors"][0]), "NOT_FOUND", "{b}");
            }
        }
        for b in [&share, &copy] {
            assert!(
                b.get("errors").is_none() || code(&b["errors"][0]) == "NOT_FOUND",
                "{b}"
            );
        }
        if copy.get("errors").is_none() {
            // The copy came first: it stands on its own, its link to the source cleared.
            let copy_id = copy["data"]["copyProject"]["id"].as_str().unwrap();
            let read = mate
                .data(
                    "query($id: ID!) { project(id: $id) { remixedFrom { id } } }",
                    json!({ "id": copy_id }),
                )
                .await;
            assert!(read["project"]["remixedFrom"].is_null());
        }
    }
    assert_eq!(
        s.count("project_shares WHERE project_id NOT IN (SELECT id FROM projects)")
            .await,
        0
    );
    assert_eq!(
        s.count("projects WHERE remixed_from IS NOT NULL AND remixed_from NOT IN (SELECT id FROM projects)").await,
        0
    );
    assert_eq!(s.count("project_shares").await, 0);
}

/// The same races with their clients spread over two server processes on one PostgreSQL:
/// the row locks are the database's, so the outcomes are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn the_races_hold_across_two_processes() {
    let s = TestServer::start(crate::harness::Backend::Postgres).await;
    let other = s.second_process(&[]);
    let owner = s.user("sam").await;
    let mate = s.user("mia").await;
    let owner_b = Client::new(other.graphql_url(), owner.token.clone());
    let mate_b = Client::new(other.graphql_url(), mate.token.clone());
    let g = groups(&s, &["a", "b", "c", "d"], &["sam", "mia"]);

    let id = new_project(&owner, "template").await;
    let shares = join_all((0..20).map(|i| {
        let c = if i % 2 == 0 { &owner } else { &owner_b };
        c.raw(SHARE, json!({ "id": id, "g": [g[i % 4], g[(i + 1) % 4]] }))
    }))
    .await;
    for (_, b) in &shares {
        assert!(b.get("errors").is_none(), "{b}");
    }
    assert_eq!(s.count("project_shares").await, 4);

    let copies = join_all((0..10).map(|i| {
        let c = if i % 2 == 0 { &mate } else { &mate_b };
        c.raw(COPY, json!({ "id": id }))
    }));
    let deletes = join_all((0..6).map(|i| {
        let c = if i % 2 == 0 { &owner } else { &owner_b };
        c.raw(DELETE, json!({ "id": id }))
    }));
    let (copies, deletes) = tokio::join!(copies, deletes);
    let won = deletes
        .iter()
        .filter(|(_, b)| b["data"]["deleteProject"] == id)
        .count();
    assert_eq!(won, 1);
    for (_, b) in copies.iter().chain(deletes.iter()) {
        assert!(
            b.get("errors").is_none() || code(&b["errors"][0]) == "NOT_FOUND",
            "{b}"
        );
    }
    assert_eq!(s.count("project_shares").await, 0);
    assert_eq!(
        s.count("projects WHERE remixed_from IS NOT NULL").await,
        0,
        "copies that won keep no link to the deleted source"
    );
}

both_backends!(remixes_of_a_page_cost_the_same_whatever_its_size);

/// `Project.remixes` on every project of a page: one statement for all of them, so a page of
/// 30 costs what a page of 10 does.
async fn remixes_of_a_page_cost_the_same_whatever_its_size(s: TestServer) {
    let alice = s.user("alice").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(new_project(&alice, &format!("p{i}")).await);
    }
    for id in &ids {
        for _ in 0..2 {
            alice.data(COPY, json!({ "id": id })).await;
        }
    }
    let q = "query($n: Int) { projects(first: $n) { edges { node { id remixes(first: 1) { edges { node { id } } pageInfo { hasNextPage } } } } } }";
    let mut costs = Vec::new();
    for n in [10, 30] {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let before = s.metric("atelier_db_statements_total").await;
            let data = alice.data(q, json!({ "n": n })).await;
            runs.push(s.metric("atelier_db_statements_total").await - before);
            let edges = data["projects"]["edges"].as_array().unwrap();
            assert_eq!(edges.len(), n);
            for e in edges {
                let remixes = &e["node"]["remixes"];
                assert_eq!(remixes["edges"].as_array().unwrap().len(), 1, "{e}");
                assert_eq!(remixes["pageInfo"]["hasNextPage"], true);
            }
        }
        // The loader's short batching window may be split on a starved machine: take the
        // cheapest run (an N+1 implementation costs n+ statements in every run).
        costs.push(*runs.iter().min().unwrap());
    }
    assert_eq!(costs[0], costs[1], "cost grows with the page: {costs:?}");
}

both_backends!(projects_of_listed_groups_cost_one_statement);

/// `Group.projects` on every group of the viewer: one statement for all of them, and each
/// group lists exactly what is shared with it.
async fn projects_of_listed_groups_cost_one_statement(s: TestServer) {
    let alice = s.user("alice").await;
    let g = groups(&s, &["g1", "g2", "g3", "g4", "g5", "g6"], &["alice"]);
    for (i, group) in g.iter().enumerate() {
        for n in 0..=i {
            let id = new_project(&alice, &format!("{i}-{n}")).await;
            alice.data(SHARE, json!({ "id": id, "g": [group] })).await;
        }
    }
    let q = "{ viewer { groups { id projects(first: 3) { edges { node { id } } pageInfo { hasNextPage } } } } }";
    let data = alice.data(q, json!({})).await;
    for group in data["viewer"]["groups"].as_array().unwrap() {
        let i = g.iter().position(|id| group["id"] == *id).unwrap();
        let edges = group["projects"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), (i + 1).min(3), "{group}");
        assert_eq!(group["projects"]["pageInfo"]["hasNextPage"], i + 1 > 3);
    }
    // Two groups or six: the same cost (best of five runs, see the remixes test).
    let one = "{ viewer { groups { id } } }";
    let mut base = Vec::new();
    let mut with = Vec::new();
    for _ in 0..5 {
        let before = s.metric("atelier_db_statements_total").await;
        alice.data(one, json!({})).await;
        let mid = s.metric("atelier_db_statements_total").await;
        alice.data(q, json!({})).await;
        let after = s.metric("atelier_db_statements_total").await;
        base.push(mid - before);
        with.push(after - mid);
    }
    let (base, with) = (base.iter().min().unwrap(), with.iter().min().unwrap());
    assert_eq!(with - base, 1, "one statement for six groups' projects");
}
