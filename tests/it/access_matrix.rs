//! The authorization matrix, every cell: each kind of viewer (owner, member of a group the
//! project is shared with, a student outside that group, the teacher of the owner's class, a
//! teacher of another class, a teacher who shares a group only with a teacher-owner, an admin,
//! anonymous) × each operation on projects (read, list with every filter, update, delete,
//! copy, share, unshare, `remixedFrom`), on backpack items (list, save, delete, the HTTP body)
//! and on assets. Every refused cell asserts its exact code and that nothing changed.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code, empty_project, png, svg},
};

const READ: &str = "query($id: ID!) { project(id: $id) { id title content sharedWith { id } owner { id groups { id } } } }";
const LIST: &str = "query($f: ProjectFilter) { projects(first: 100, filter: $f) { edges { node { id sharedWith { id } } } } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!) { updateProject(input: {id: $id, expectedVersion: $v, title: \"changed\"}) { id version } }";
const DELETE: &str =
    "mutation($id: ID!, $v: Int) { deleteProject(input: {id: $id, expectedVersion: $v}) }";
const COPY: &str = "mutation($id: ID!) { copyProject(input: {id: $id}) { id version owner { id } remixedFrom { id } } }";
const SHARE: &str = "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id version sharedWith { id } } }";
const UNSHARE: &str = "mutation($id: ID!, $g: [ID!]!) { unshareProject(input: {id: $id, groupIds: $g}) { id version sharedWith { id } } }";
/// What an admin sees of a project: the state a refused mutation must leave alone.
const STATE: &str = "query($id: ID!) { project(id: $id) { title version sharedWith { id } } }";

both_backends!(
    every_cell_of_the_project_matrix,
    remixed_from_and_remixes_show_only_readable_projects,
    every_cell_of_the_backpack_matrix,
    groups_and_assets_by_viewer,
    membership_and_role_changes_apply_to_the_next_request,
);

/// What one viewer may do with one project.
#[derive(Debug, Clone, Copy, PartialEq)]
enum May {
    /// read, list, copy, change, share, unshare and delete it
    Write,
    /// read, list and copy it; changing, sharing, unsharing or deleting it is FORBIDDEN
    Read,
    /// it does not exist for them: null, never listed, NOT_FOUND (UNAUTHENTICATED anonymous)
    Nothing,
}
use May::{Nothing, Read, Write};

/// The class world every project cell runs in:
/// - `7B`: sam and cleo (students), tess (their teacher);
/// - `club`: sam and mia (students); sam's project is shared with it;
/// - `7C`: otto (a teacher) alone;
/// - `staff`: tess and tina (teachers) and ada (the admin).
const MEMBERS: &[(&str, &[&str])] = &[
    ("7B", &["sam", "cleo", "tess"]),
    ("club", &["sam", "mia"]),
    ("7C", &["otto"]),
    ("staff", &["tess", "tina", "ada"]),
];
const ROLES: &[(&str, &str)] = &[
    ("sam", "student"),
    ("mia", "student"),
    ("cleo", "student"),
    ("tess", "teacher"),
    ("otto", "teacher"),
    ("tina", "teacher"),
    ("ada", "admin"),
];
/// The projects: `P` is sam's (a student's), shared with `club`; `T` is tess's (a teacher's);
/// `A` is ada's (the admin's).
const PROJECTS: &[(&str, &str, &[&str])] = &[
    ("P", "sam", &["club"]),
    ("T", "tess", &[]),
    ("A", "ada", &[]),
];

/// The matrix. Reading it row by row is the model.
const CELLS: &[(&str, &str, May)] = &[
    // A student's project.
    ("sam", "P", Write),         // the owner
    ("mia", "P", Read),          // a member of a group it is shared with
    ("cleo", "P", Nothing),      // the owner's classmate, not in the shared group
    ("tess", "P", Read),         // the teacher of the owner's class
    ("otto", "P", Nothing),      // a teacher of another class
    ("tina", "P", Nothing),      // a teacher who shares a group only with the owner's teacher
    ("ada", "P", Write),         // an admin
    ("anonymous", "P", Nothing), // no token
    // A teacher's project: no teacher reads another teacher's project through a common
    // group, and no student reads their teacher's.
    ("tess", "T", Write),
    ("tina", "T", Nothing),
    ("cleo", "T", Nothing),
    ("sam", "T", Nothing),
    ("mia", "T", Nothing),
    ("otto", "T", Nothing),
    ("ada", "T", Write),
    ("anonymous", "T", Nothing),
    // An admin's project: a teacher in a group with the admin does not read it.
    ("ada", "A", Write),
    ("tess", "A", Nothing),
    ("tina", "A", Nothing),
    ("sam", "A", Nothing),
    ("cleo", "A", Nothing),
    ("mia", "A", Nothing),
    ("otto", "A", Nothing),
    ("anonymous", "A", Nothing),
];

struct World<'a> {
    s: &'a TestServer,
    users: Vec<(&'static str, Client, String)>,
    groups: Vec<(&'static str, String)>,
    projects: Vec<(&'static str, String)>,
}

impl World<'_> {
    async fn new(s: &TestServer) -> World<'_> {
        let mut users = Vec::new();
        for (name, role) in ROLES {
            let c = s.user_with_role(name, role).await;
            let id = c.data("{ viewer { id } }", json!({})).await["viewer"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            users.push((*name, c, id));
        }
        users.push(("anonymous", s.anonymous(), String::new()));
        let mut groups = Vec::new();
        for (group, members) in MEMBERS {
            let id = s.cli(&["group", "create", group]).1.trim().to_owned();
            for m in *members {
                assert!(
                    s.cli(&["group", "add-member", &id, m]).0,
                    "{m} joins {group}"
                );
            }
            groups.push((*group, id));
        }
        let mut w = World {
            s,
            users,
            groups,
            projects: Vec::new(),
        };
        for (key, owner, shared) in PROJECTS {
            let c = w.client(owner).clone();
            let id = c.create_project(key, empty_project()).await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            if !shared.is_empty() {
                let g: Vec<&str> = shared.iter().map(|g| w.group(g)).collect();
                c.data(SHARE, json!({ "id": id, "g": g })).await;
            }
            w.projects.push((*key, id));
        }
        w
    }

    fn client(&self, name: &str) -> &Client {
        &self.users.iter().find(|u| u.0 == name).unwrap().1
    }

    fn user_id(&self, name: &str) -> &str {
        &self.users.iter().find(|u| u.0 == name).unwrap().2
    }

    fn group(&self, name: &str) -> &str {
        &self.groups.iter().find(|g| g.0 == name).unwrap().1
    }

    fn project(&self, key: &str) -> &str {
        &self.projects.iter().find(|p| p.0 == key).unwrap().1
    }

    fn groups_of(&self, user: &str) -> Vec<&'static str> {
        MEMBERS
            .iter()
            .filter(|(_, members)| members.contains(&user))
            .map(|(g, _)| *g)
            .collect()
    }

    fn group_ids_of(&self, user: &str) -> BTreeSet<String> {
        self.groups_of(user)
            .iter()
            .map(|g| self.group(g).to_owned())
            .collect()
    }

    /// What the admin sees of a project, and the row counts a refused mutation must not move.
    async fn state(&self, key: &str) -> (Value, i64, i64) {
        let id = self.project(key);
        let seen = self.client("ada").data(STATE, json!({ "id": id })).await["project"].clone();
        (
            seen,
            self.s.count("projects").await,
            self.s.count("project_shares").await,
        )
    }
}

fn may(who: &str, key: &str) -> May {
    CELLS
        .iter()
        .find(|c| c.0 == who && c.1 == key)
        .map_or(Nothing, |c| c.2)
}

fn owner_of(key: &str) -> &'static str {
    PROJECTS.iter().find(|p| p.0 == key).unwrap().1
}

fn shared_groups(key: &str) -> &'static [&'static str] {
    PROJECTS.iter().find(|p| p.0 == key).unwrap().2
}

fn ids(edges: &Value) -> BTreeSet<String> {
    edges
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {edges}"))
        .iter()
        .map(|e| {
            let node = if e.get("node").is_some() {
                &e["node"]
            } else {
                e
            };
            node["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The error code a refusal answers this viewer.
fn refusal(who: &str, may: May) -> &'static str {
    match may {
        _ if who == "anonymous" => "UNAUTHENTICATED",
        Read => "FORBIDDEN",
        Nothing => "NOT_FOUND",
        Write => unreachable!("a writer is not refused"),
    }
}

/// Reads and listings, for one viewer and one project.
async fn check_reads(w: &World<'_>, who: &str, key: &str, may: May) {
    let c = w.client(who);
    let id = w.project(key);
    let cell = format!("{who} × {key} ({may:?})");
    let (_, read) = c.raw(READ, json!({ "id": id })).await;
    assert!(read.get("errors").is_none(), "{cell} reads: {read}");
    let p = &read["data"]["project"];
    if may == Nothing {
        assert!(p.is_null(), "{cell} reads: {read}");
        return;
    }
    assert_eq!(p["id"], id, "{cell} reads: {read}");
    assert_eq!(p["content"], empty_project(), "{cell} reads the content");
    // The shares it sees: all of them when it may change the project, else only its groups.
    let mine = w.group_ids_of(who);
    let expected: BTreeSet<String> = shared_groups(key)
        .iter()
        .map(|g| w.group(g).to_owned())
        .filter(|g| may == Write || mine.contains(g))
        .collect();
    assert_eq!(
        ids(&p["sharedWith"]),
        expected,
        "{cell} sees shares: {read}"
    );
    // The owner's groups: only the owner themself and admins see them.
    let owner = owner_of(key);
    let expected = if who == owner || who == "ada" {
        w.group_ids_of(owner)
    } else {
        BTreeSet::new()
    };
    assert_eq!(
        ids(&p["owner"]["groups"]),
        expected,
        "{cell} sees the owner's groups: {read}"
    );
}

/// Every listing of one viewer holds exactly the projects the matrix lets them read.
async fn check_listings(w: &World<'_>, who: &str) {
    let c = w.client(who);
    let readable = |keep: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        PROJECTS
            .iter()
            .filter(|(key, _, _)| may(who, key) != Nothing && keep(key))
            .map(|(key, _, _)| w.project(key).to_owned())
            .collect()
    };
    let mut filters = vec![
        ("no filter", Value::Null, readable(&|_| true)),
        (
            "mine",
            json!({ "mine": true }),
            readable(&|k| owner_of(k) == who),
        ),
    ];
    for (owner, _) in ROLES {
        filters.push((
            "owner",
            json!({ "owner": w.user_id(owner) }),
            readable(&|k| owner_of(k) == *owner),
        ));
    }
    // By group: what the viewer reads and is shared with that group, as far as they see the
    // share (their own projects, or a group they are in; an admin sees every share).
    let member = w.groups_of(who);
    for (group, _) in MEMBERS {
        let sees = |k: &str| may(who, k) == Write || member.contains(group);
        filters.push((
            "sharedWithGroup",
            json!({ "sharedWithGroup": w.group(group) }),
            readable(&|k| shared_groups(k).contains(group) && sees(k)),
        ));
    }
    for (name, filter, expected) in filters {
        let (_, listed) = c.raw(LIST, json!({ "f": filter })).await;
        assert!(
            listed.get("errors").is_none(),
            "{who} lists ({name}): {listed}"
        );
        let edges = &listed["data"]["projects"]["edges"];
        assert_eq!(
            ids(edges),
            expected,
            "{who} lists ({name} {filter}): {listed}"
        );
        // A listing shows shares by the same rule as a read.
        for e in edges.as_array().unwrap() {
            let key = w
                .projects
                .iter()
                .find(|p| p.1 == e["node"]["id"])
                .unwrap()
                .0;
            let mine = w.group_ids_of(who);
            let expected: BTreeSet<String> = shared_groups(key)
                .iter()
                .map(|g| w.group(g).to_owned())
                .filter(|g| may(who, key) == Write || mine.contains(g))
                .collect();
            assert_eq!(ids(&e["node"]["sharedWith"]), expected, "{who} lists {key}");
        }
    }
    if who == "anonymous" {
        return;
    }
    // `Group.projects` of each of the viewer's groups: what they read that is shared with it.
    let (_, answer) = c
        .raw(
            "{ groups { id projects { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    for g in answer["data"]["groups"].as_array().unwrap() {
        let name = w.groups.iter().find(|(_, id)| g["id"] == *id).unwrap().0;
        let expected = readable(&|k| shared_groups(k).contains(&name));
        assert_eq!(
            ids(&g["projects"]["edges"]),
            expected,
            "{who}: projects of {name}: {answer}"
        );
    }
}

/// Every mutation a reader or an outsider tries: the exact refusal, and nothing changed.
async fn check_refusals(w: &World<'_>, who: &str, key: &str, may: May) {
    let c = w.client(who);
    let id = w.project(key);
    let cell = format!("{who} × {key} ({may:?})");
    let expected = refusal(who, may);
    // A group the viewer belongs to (sharing with it would be allowed to the owner).
    let group = w
        .groups_of(who)
        .first()
        .map_or(w.group("club"), |g| w.group(g));
    let before = w.state(key).await;
    let version = before.0["version"].clone();
    let attempts = [
        ("update", UPDATE, json!({ "id": id, "v": version })),
        // A stale version must not tell an outsider the current one.
        ("delete", DELETE, json!({ "id": id, "v": 999 })),
        ("delete", DELETE, json!({ "id": id })),
        ("share", SHARE, json!({ "id": id, "g": [group] })),
        (
            "unshare",
            UNSHARE,
            json!({ "id": id, "g": [w.group("club")] }),
        ),
    ];
    for (what, query, vars) in attempts {
        let (_, answer) = c.raw(query, vars).await;
        assert_eq!(
            code(&answer["errors"][0]),
            expected,
            "{cell} {what}: {answer}"
        );
        assert!(
            answer["data"].is_null()
                || answer["data"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(Value::is_null),
            "{cell} {what} answered data: {answer}"
        );
        assert_eq!(w.state(key).await, before, "{cell} {what} changed nothing");
    }
    // Copying is reading: a reader may, an outsider may not.
    let (_, copied) = c.raw(COPY, json!({ "id": id })).await;
    if may == Read {
        let copy = &copied["data"]["copyProject"];
        assert_eq!(
            copy["owner"]["id"],
            w.user_id(who),
            "{cell} copies: {copied}"
        );
        assert_eq!(copy["remixedFrom"]["id"], id, "{cell} copies: {copied}");
        assert_eq!(copy["version"], 1);
        assert_eq!(
            w.s.count("projects").await,
            before.1 + 1,
            "{cell} copies once"
        );
        assert_eq!(
            w.state(key).await.0,
            before.0,
            "{cell}: the source is unchanged"
        );
        // The copy is theirs: they may delete it (and leave the world as it was).
        let (_, deleted) = c.raw(DELETE, json!({ "id": copy["id"] })).await;
        assert_eq!(
            deleted["data"]["deleteProject"], copy["id"],
            "{cell}: {deleted}"
        );
    } else {
        assert_eq!(
            code(&copied["errors"][0]),
            expected,
            "{cell} copies: {copied}"
        );
    }
    assert_eq!(
        w.state(key).await,
        before,
        "{cell} copy left the world as it was"
    );
}

/// Everything a writer may do, short of deleting: rename, copy, share and unshare.
async fn check_writes(w: &World<'_>, who: &str, key: &str) {
    let c = w.client(who);
    let id = w.project(key);
    let cell = format!("{who} × {key} (Write)");
    let before = w.state(key).await;
    let v = before.0["version"].as_i64().unwrap();
    let renamed = c.data(UPDATE, json!({ "id": id, "v": v })).await;
    assert_eq!(renamed["updateProject"]["version"], v + 1, "{cell} renames");

    let copied = c.data(COPY, json!({ "id": id })).await["copyProject"].clone();
    assert_eq!(copied["owner"]["id"], w.user_id(who), "{cell} copies");
    assert_eq!(copied["remixedFrom"]["id"], id, "{cell} copies");
    c.data(DELETE, json!({ "id": copied["id"] })).await;

    // Share with a group that is not yet shared and unshare it again: an owner only with a
    // group they are in, an admin with any.
    let group = if who == "ada" {
        w.group("7C")
    } else {
        let g = w
            .groups_of(who)
            .into_iter()
            .find(|g| !shared_groups(key).contains(g))
            .unwrap();
        w.group(g)
    };
    let shares = w.s.count("project_shares").await;
    let shared = c.data(SHARE, json!({ "id": id, "g": [group] })).await;
    assert!(
        ids(&shared["shareProject"]["sharedWith"]).contains(group),
        "{cell} shares: {shared}"
    );
    assert_eq!(
        shared["shareProject"]["version"],
        v + 1,
        "sharing keeps the version"
    );
    assert_eq!(w.s.count("project_shares").await, shares + 1);
    let unshared = c.data(UNSHARE, json!({ "id": id, "g": [group] })).await;
    assert!(!ids(&unshared["unshareProject"]["sharedWith"]).contains(group));
    assert_eq!(w.s.count("project_shares").await, shares);

    if who != "ada" {
        // An owner may not share with a group they are not in: FORBIDDEN, nothing shared.
        let state = w.state(key).await;
        let e = c
            .error(SHARE, json!({ "id": id, "g": [w.group("7C")] }))
            .await;
        assert_eq!(code(&e), "FORBIDDEN", "{cell} shares with 7C: {e}");
        assert_eq!(w.state(key).await, state);
        // ... but may take their project back from a group they are not in (an admin shared
        // it there).
        w.client("ada")
            .data(SHARE, json!({ "id": id, "g": [w.group("7C")] }))
            .await;
        // They see that share, in the project and by a listing of the group, and so do the
        // group's members; a reader outside 7C sees neither.
        let by_group = json!({ "f": { "sharedWithGroup": w.group("7C") } });
        let others = [("otto", true), ("mia", false), ("tess", false)];
        for (viewer, sees) in [(who, true)]
            .into_iter()
            .chain(others)
            .filter(|o| o.0 != who || o.1)
        {
            let listed = w.client(viewer).data(LIST, by_group.clone()).await;
            let listed = ids(&listed["projects"]["edges"]);
            assert_eq!(listed.contains(id), sees, "{viewer} lists {key} by 7C");
            let read = w.client(viewer).data(READ, json!({ "id": id })).await;
            let shares = &read["project"]["sharedWith"];
            if !read["project"].is_null() {
                assert_eq!(
                    ids(shares).contains(w.group("7C")),
                    sees,
                    "{viewer}: {read}"
                );
            }
        }
        let unshared = c
            .data(UNSHARE, json!({ "id": id, "g": [w.group("7C")] }))
            .await;
        assert!(
            !ids(&unshared["unshareProject"]["sharedWith"]).contains(w.group("7C")),
            "{cell} unshares from 7C: {unshared}"
        );
        assert_eq!(w.state(key).await, state);
    }
    // Absent groups are NOT_FOUND for writers too, and change nothing.
    let state = w.state(key).await;
    for query in [SHARE, UNSHARE] {
        let e = c.error(query, json!({ "id": id, "g": ["999999"] })).await;
        assert_eq!(code(&e), "NOT_FOUND", "{cell}: {e}");
    }
    assert_eq!(w.state(key).await, state);
}

async fn every_cell_of_the_project_matrix(s: TestServer) {
    let w = World::new(&s).await;
    // Reads first, while the world is exactly as set up.
    for (who, key, may) in CELLS {
        check_reads(&w, who, key, *may).await;
    }
    for (who, _) in ROLES.iter().chain([&("anonymous", "")]) {
        check_listings(&w, who).await;
    }
    for (who, key, may) in CELLS.iter().filter(|c| c.2 != Write) {
        check_refusals(&w, who, key, *may).await;
    }
    for (who, key, _) in CELLS.iter().filter(|c| c.2 == Write) {
        check_writes(&w, who, key).await;
    }
    // Deleting: the owner their own, an admin someone else's.
    for (who, key) in [("sam", "P"), ("ada", "T")] {
        let id = w.project(key);
        let shares = s.count("project_shares").await;
        let deleted = w.client(who).data(DELETE, json!({ "id": id })).await;
        assert_eq!(deleted["deleteProject"], id, "{who} deletes {key}");
        assert!(
            w.client("ada").data(READ, json!({ "id": id })).await["project"].is_null(),
            "{key} is gone"
        );
        // Its shares go with it.
        let expected = shares - shared_groups(key).len() as i64;
        assert_eq!(s.count("project_shares").await, expected);
    }
    assert_eq!(s.count("projects").await, 1);
}

/// `remixedFrom` names the source only to viewers who may read it; `remixes` lists only the
/// copies the viewer may read; copying needs read access, not more.
async fn remixed_from_and_remixes_show_only_readable_projects(s: TestServer) {
    const GET: &str = "query($id: ID!) { project(id: $id) { id remixedFrom { id title } remixes { edges { node { id } } } } }";
    let sam = s.user("sam").await;
    let mia = s.user("mia").await;
    let mias_teacher = s.user_with_role("mtea", "teacher").await;
    let ada = s.user_with_role("ada", "admin").await;
    let club = s.cli(&["group", "create", "club"]).1.trim().to_owned();
    let class = s.cli(&["group", "create", "8A"]).1.trim().to_owned();
    for (g, m) in [
        (&club, "sam"),
        (&club, "mia"),
        (&class, "mia"),
        (&class, "mtea"),
    ] {
        assert!(s.cli(&["group", "add-member", g, m]).0);
    }
    let p = sam.create_project("sam's", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sam.data(SHARE, json!({ "id": p, "g": [club] })).await;
    let r = mia.data(COPY, json!({ "id": p })).await["copyProject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let source = |c: &Client, id: &str| {
        let (c, id) = (c.clone(), id.to_owned());
        async move { c.data(GET, json!({ "id": id })).await["project"].clone() }
    };
    // The copier reads its source; so does an admin.
    assert_eq!(source(&mia, &r).await["remixedFrom"]["id"], p);
    assert_eq!(source(&ada, &r).await["remixedFrom"]["id"], p);
    // Mia's teacher reads her copy, but not sam's source: null.
    let seen = source(&mias_teacher, &r).await;
    assert_eq!(seen["id"], r);
    assert!(seen["remixedFrom"].is_null(), "{seen}");
    // The source's remixes: the copier and an admin see the copy, its owner (who may not read
    // mia's project) does not.
    assert_eq!(
        ids(&source(&mia, &p).await["remixes"]["edges"]),
        [r.clone()].into()
    );
    assert_eq!(
        ids(&source(&ada, &p).await["remixes"]["edges"]),
        [r.clone()].into()
    );
    assert!(ids(&source(&sam, &p).await["remixes"]["edges"]).is_empty());
    // The teacher may copy what they may read; the copy's source is visible to them.
    let t = mias_teacher.data(COPY, json!({ "id": r })).await["copyProject"].clone();
    assert_eq!(t["remixedFrom"]["id"], r);
    // ... but not what they may not: NOT_FOUND, nothing copied.
    let before = s.count("projects").await;
    let e = mias_teacher.error(COPY, json!({ "id": p })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");
    assert_eq!(s.count("projects").await, before);

    // Once unshared, the source is invisible to the copier: remixedFrom null, not an error.
    sam.data(UNSHARE, json!({ "id": p, "g": [club] })).await;
    let seen = source(&mia, &r).await;
    assert_eq!(seen["id"], r);
    assert!(seen["remixedFrom"].is_null(), "{seen}");
    assert!(mia.data(GET, json!({ "id": p })).await["project"].is_null());
    let e = mia.error(COPY, json!({ "id": p })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");
    assert_eq!(s.count("projects").await, before);
    // The same through a listing of mia's projects.
    let listed = mia
        .data(
            "{ projects(filter: {mine: true}) { edges { node { id remixedFrom { id } } } } }",
            json!({}),
        )
        .await;
    let edges = listed["projects"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{listed}");
    assert!(edges[0]["node"]["remixedFrom"].is_null(), "{listed}");
    // A deleted source is null for everyone, the admin included.
    sam.data(DELETE, json!({ "id": p })).await;
    assert!(source(&ada, &r).await["remixedFrom"].is_null());
}

const SAVE: &str = "mutation($n: String!, $t: BackpackItemType!, $m: String!, $b: Upload!, $th: Upload!) { saveBackpackItem(input: {name: $n, type: $t, mime: $m, body: $b, thumbnail: $th}) { id bodyUrl thumbnailUrl } }";
const BACKPACK: &str = "{ backpack(first: 100) { edges { node { id } } } }";
const DELETE_ITEM: &str = "mutation($id: ID!) { deleteBackpackItem(id: $id) }";

/// (HTTP status, body) of a `saveBackpackItem` multipart request.
async fn save_item(c: &Client, n: usize) -> (u16, Value) {
    let operations = json!({ "query": SAVE, "variables": { "n": "Cat", "t": "COSTUME", "m": "image/svg+xml", "b": null, "th": null } });
    let form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text(
            "map",
            json!({ "0": ["variables.b"], "1": ["variables.th"] }).to_string(),
        )
        .part(
            "0",
            reqwest::multipart::Part::bytes(svg(n)).file_name("body"),
        )
        .part(
            "1",
            reqwest::multipart::Part::bytes(png(n)).file_name("thumb.png"),
        );
    let resp = c.request().multipart(form).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn get_status(s: &TestServer, c: &Client, url: &str) -> u16 {
    let mut req = c.http.get(format!("{}{url}", s.base_url));
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A backpack is its owner's: nobody else lists, fetches or deletes its items, not a teacher
/// of the owner, not a member of a group with them; an admin fetches and deletes any item by
/// id (but `backpack` lists only the admin's own).
async fn every_cell_of_the_backpack_matrix(s: TestServer) {
    let sam = s.user("sam").await;
    let mia = s.user("mia").await;
    let tess = s.user_with_role("tess", "teacher").await;
    let ada = s.user_with_role("ada", "admin").await;
    let anonymous = s.anonymous();
    let class = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    for m in ["sam", "mia", "tess", "ada"] {
        assert!(s.cli(&["group", "add-member", &class, m]).0);
    }
    let (status, saved) = save_item(&sam, 1).await;
    assert_eq!(status, 200, "{saved}");
    let item = saved["data"]["saveBackpackItem"].clone();
    let id = item["id"].as_str().unwrap().to_owned();
    let urls = [
        item["bodyUrl"].as_str().unwrap().to_owned(),
        item["thumbnailUrl"].as_str().unwrap().to_owned(),
    ];

    // (viewer, lists it, HTTP status of its body and thumbnail)
    let cells: [(&str, &Client, bool, u16); 5] = [
        ("the owner", &sam, true, 200),
        ("a classmate", &mia, false, 404),
        ("the owner's teacher", &tess, false, 404),
        ("an admin", &ada, false, 200),
        ("anonymous", &anonymous, false, 401),
    ];
    for (who, c, lists, status) in cells {
        let (_, listed) = c.raw(BACKPACK, json!({})).await;
        if c.token.is_none() {
            assert_eq!(code(&listed["errors"][0]), "UNAUTHENTICATED", "{listed}");
        } else {
            let edges = &listed["data"]["backpack"]["edges"];
            assert_eq!(ids(edges).contains(&id), lists, "{who} lists: {listed}");
        }
        for url in &urls {
            assert_eq!(get_status(&s, c, url).await, status, "{who} fetches {url}");
        }
    }
    // An absent item and an unknown part are 404 even for the owner and an admin.
    for c in [&sam, &ada] {
        assert_eq!(get_status(&s, c, "/backpack/999999/body").await, 404);
        assert_eq!(
            get_status(&s, c, &format!("/backpack/{id}/other")).await,
            404
        );
    }

    // Refused deletes: the exact code, nothing deleted.
    for (who, c, expected) in [
        ("a classmate", &mia, "NOT_FOUND"),
        ("the owner's teacher", &tess, "NOT_FOUND"),
        ("anonymous", &anonymous, "UNAUTHENTICATED"),
    ] {
        let e = c.error(DELETE_ITEM, json!({ "id": id })).await;
        assert_eq!(code(&e), expected, "{who} deletes: {e}");
        assert_eq!(s.count("backpack_items").await, 1, "{who} deleted nothing");
    }
    let e = sam.error(DELETE_ITEM, json!({ "id": "999999" })).await;
    assert_eq!(code(&e), "NOT_FOUND");
    let e = sam.error(DELETE_ITEM, json!({ "id": "x" })).await;
    assert_eq!(code(&e), "BAD_USER_INPUT");
    // Saving needs a viewer: refused before the body is read, nothing stored.
    let (status, refused) = save_item(&anonymous, 2).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(code(&refused["errors"][0]), "UNAUTHENTICATED");
    assert_eq!(s.count("backpack_items").await, 1);
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());

    // An admin deletes someone else's item; the owner their own.
    assert_eq!(
        ada.data(DELETE_ITEM, json!({ "id": id })).await["deleteBackpackItem"],
        id
    );
    assert_eq!(get_status(&s, &sam, &urls[0]).await, 404);
    let (_, saved) = save_item(&sam, 3).await;
    let id = saved["data"]["saveBackpackItem"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sam.data(DELETE_ITEM, json!({ "id": id })).await["deleteBackpackItem"],
        id
    );
    assert_eq!(s.count("backpack_items").await, 0);
}

/// `groups` is the viewer's own; `User.groups` of someone else is empty unless the viewer is
/// an admin. Assets are readable by anyone by default, by signed-in users only under
/// `ATELIER_ASSET_ACCESS=authenticated`; uploading always needs a viewer.
async fn groups_and_assets_by_viewer(s: TestServer) {
    let sam = s.user("sam").await;
    let tess = s.user_with_role("tess", "teacher").await;
    let ada = s.user_with_role("ada", "admin").await;
    let class = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    let other = s.cli(&["group", "create", "7C"]).1.trim().to_owned();
    for (g, m) in [(&class, "sam"), (&class, "tess"), (&other, "tess")] {
        assert!(s.cli(&["group", "add-member", g, m]).0);
    }
    let groups = |c: &Client| {
        let c = c.clone();
        async move { ids(&c.data("{ groups { id } }", json!({})).await["groups"]) }
    };
    assert_eq!(groups(&sam).await, [class.clone()].into());
    assert_eq!(groups(&tess).await, [class.clone(), other.clone()].into());
    assert!(groups(&ada).await.is_empty(), "an admin's own groups: none");
    let e = s.anonymous().error("{ groups { id } }", json!({})).await;
    assert_eq!(code(&e), "UNAUTHENTICATED");
    let anonymous = s.anonymous().data("{ viewer { id } }", json!({})).await;
    assert!(anonymous["viewer"].is_null(), "{anonymous}");
    // Tess reads sam's project (she teaches him) but not his groups; an admin does.
    let p = sam.create_project("p", empty_project()).await["id"].clone();
    let q = "query($id: ID!) { project(id: $id) { owner { groups { id } } } }";
    let seen = |c: &Client| {
        let (c, p) = (c.clone(), p.clone());
        async move { ids(&c.data(q, json!({ "id": p })).await["project"]["owner"]["groups"]) }
    };
    assert!(seen(&tess).await.is_empty());
    assert_eq!(seen(&ada).await, [class.clone()].into());
    assert_eq!(seen(&sam).await, [class.clone()].into());

    // Assets: public by default.
    const ASSET: &str =
        "query($m: String!) { asset(md5: $m, assetType: IMAGE_VECTOR) { md5 url } }";
    let up = sam.upload(svg(1), "IMAGE_VECTOR").await;
    let (md5, url) = (
        up["asset"]["md5"].clone(),
        up["asset"]["url"].as_str().unwrap().to_owned(),
    );
    for c in [&s.anonymous(), &tess] {
        assert_eq!(
            c.data(ASSET, json!({ "m": md5 })).await["asset"]["md5"],
            md5
        );
        assert_eq!(get_status(&s, c, &url).await, 200);
    }
    let (status, body) = s.anonymous().upload_raw(svg(2), "IMAGE_VECTOR", None).await;
    assert_eq!(status.as_u16(), 401, "{body}");
    assert_eq!(code(&body["errors"][0]), "UNAUTHENTICATED");

    // Signed-in users only.
    let private =
        TestServer::start_with(s.backend, &[("ATELIER_ASSET_ACCESS", "authenticated")]).await;
    let bob = private.user("bob").await;
    let up = bob.upload(svg(3), "IMAGE_VECTOR").await;
    let (md5, url) = (
        up["asset"]["md5"].clone(),
        up["asset"]["url"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        bob.data(ASSET, json!({ "m": md5 })).await["asset"]["md5"],
        md5
    );
    assert_eq!(get_status(&private, &bob, &url).await, 200);
    let e = private.anonymous().error(ASSET, json!({ "m": md5 })).await;
    assert_eq!(code(&e), "UNAUTHENTICATED");
    assert_eq!(get_status(&private, &private.anonymous(), &url).await, 401);
}

/// Runs one statement on the test database, as the identity provider's sync would.
async fn execute(s: &TestServer, sql: &str) {
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    db.execute_unprepared(sql).await.unwrap();
    let _ = db.close().await;
}

/// Access follows the stored memberships and roles, not what they were when the viewer signed
/// in: a student who leaves a group stops reading what is shared with it, a teacher stops
/// reading a student who left their class or who is no longer a student.
async fn membership_and_role_changes_apply_to_the_next_request(s: TestServer) {
    let sam = s.user("sam").await;
    let mia = s.user("mia").await;
    let tess = s.user_with_role("tess", "teacher").await;
    let class = s.cli(&["group", "create", "7B"]).1.trim().to_owned();
    let club = s.cli(&["group", "create", "club"]).1.trim().to_owned();
    for (g, m) in [
        (&class, "sam"),
        (&class, "tess"),
        (&club, "sam"),
        (&club, "mia"),
    ] {
        assert!(s.cli(&["group", "add-member", g, m]).0);
    }
    let id = sam.create_project("P", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sam.data(SHARE, json!({ "id": id, "g": [club] })).await;
    let reads = |c: &Client| {
        let (c, id) = (c.clone(), id.clone());
        async move { !c.data(READ, json!({ "id": id })).await["project"].is_null() }
    };
    assert!(reads(&mia).await && reads(&tess).await);

    // Mia leaves the club: the project is gone for her, a change NOT_FOUND, not FORBIDDEN.
    let user = |name: &str| format!("(SELECT id FROM users WHERE subject = '{name}')");
    execute(
        &s,
        &format!(
            "DELETE FROM group_members WHERE group_id = {club} AND user_id = {}",
            user("mia")
        ),
    )
    .await;
    assert!(!reads(&mia).await);
    let e = mia.error(UPDATE, json!({ "id": id, "v": 1 })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");
    let e = mia.error(COPY, json!({ "id": id })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");

    // Sam becomes a teacher: his class's teacher no longer reads his projects.
    execute(
        &s,
        "UPDATE users SET role = 'teacher' WHERE subject = 'sam'",
    )
    .await;
    assert!(!reads(&tess).await);
    execute(
        &s,
        "UPDATE users SET role = 'student' WHERE subject = 'sam'",
    )
    .await;
    assert!(reads(&tess).await);
    // Sam leaves the class: the same.
    execute(
        &s,
        &format!(
            "DELETE FROM group_members WHERE group_id = {class} AND user_id = {}",
            user("sam")
        ),
    )
    .await;
    assert!(!reads(&tess).await);
    let e = tess.error(UPDATE, json!({ "id": id, "v": 1 })).await;
    assert_eq!(code(&e), "NOT_FOUND", "{e}");
    // Nothing of it changed the project.
    let state = sam.data(STATE, json!({ "id": id })).await;
    assert_eq!(state["project"]["version"], 1);
    assert_eq!(ids(&state["project"]["sharedWith"]), [club.clone()].into());
}
