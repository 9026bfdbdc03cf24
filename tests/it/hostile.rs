//! What a hostile student or a careless client sends, as one table: every row runs on every
//! transport it applies to (POST /graphql and the WebSocket), and must be refused with its
//! exact code and `extensions.limit`, quickly, without a crash and without a partial write.
//! A new field or route is tried the same way by adding a row.

use serde_json::{Value, json};

use crate::{
    both_backends,
    harness::{Client, TestServer, code, empty_project, svg},
    ws::ws_execute,
};

both_backends!(
    every_hostile_operation_is_refused_on_every_transport,
    a_refused_batch_runs_none_of_its_operations,
    multipart_bodies_are_bounded_per_byte_and_part,
    sharing_is_capped_per_project,
);

/// Small enough that a test builds a response over it with a few projects.
const RESPONSE_BYTES: usize = 300_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Http,
    Ws,
}

/// What a row must get: the code and `extensions.limit` (and `extensions.field`, if any).
struct Refusal {
    code: &'static str,
    limit: Option<&'static str>,
    field: Option<&'static str>,
}

const fn limit(name: &'static str) -> Refusal {
    Refusal {
        code: "BAD_USER_INPUT",
        limit: Some(name),
        field: None,
    }
}

struct Row {
    name: &'static str,
    query: String,
    variables: Value,
    expect: Refusal,
}

fn nested_remixed_from(levels: usize) -> String {
    let mut q = String::from("id");
    for _ in 0..levels {
        q = format!("remixedFrom {{ {q} }}");
    }
    format!("query($id: ID!) {{ project(id: $id) {{ {q} }} }}")
}

/// `levels` nested arrays around an empty one, as a GraphQL literal.
fn nested_list_literal(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn create_with_literal(extra: &str) -> String {
    format!(
        "mutation {{ createProject(input: {{title: \"deep\", content: {{targets: [], deep: {extra}}}}}) {{ id }} }}"
    )
}

/// Thirty fragments, each spreading the next twice: 2^30 fields once expanded.
fn fragment_fan_out() -> String {
    let mut q = String::from("query { ...F0 }\n");
    for i in 0..29 {
        q.push_str(&format!(
            "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    q.push_str("fragment F29 on Query { viewer { id } }\n");
    q
}

fn rows(project: &str) -> Vec<Row> {
    let id = json!({ "id": project });
    let aliases: String = (0..51).map(|i| format!("a{i}: viewer {{ id }} ")).collect();
    vec![
        Row {
            name: "selections nested deeper than the depth limit",
            query: nested_remixed_from(20),
            variables: id.clone(),
            expect: limit("depth"),
        },
        Row {
            name: "1 MiB of opening braces",
            query: "{".repeat(1 << 20),
            variables: json!({}),
            expect: limit("depth"),
        },
        Row {
            name: "a 1 MiB nested list literal",
            query: create_with_literal(&nested_list_literal(1 << 19)),
            variables: json!({}),
            expect: limit("depth"),
        },
        Row {
            name: "content nested deeper than 100 levels, as a literal",
            query: create_with_literal(&nested_list_literal(150)),
            variables: json!({}),
            expect: Refusal {
                code: "BAD_USER_INPUT",
                limit: Some("content_depth"),
                field: Some("content"),
            },
        },
        Row {
            name: "content nested deeper than 100 levels, as a variable",
            query: "mutation($c: JSON!) { createProject(input: {title: \"deep\", content: $c}) { id } }".into(),
            variables: json!({ "c": { "targets": [], "deep": serde_json::from_str::<Value>(&nested_list_literal(101)).unwrap() } }),
            expect: Refusal {
                code: "BAD_USER_INPUT",
                limit: Some("content_depth"),
                field: Some("content"),
            },
        },
        Row {
            name: "the 213-byte remix cycle: nested pages multiply",
            query: "{ projects(first: 100) { nodes { remixedFrom { remixes(first: 100) { nodes { remixedFrom { remixes(first: 100) { nodes { id title } } } } } } } } }".into(),
            variables: json!({}),
            expect: limit("complexity"),
        },
        Row {
            name: "the share cycle: sharedWith and Group.projects",
            query: "{ projects(first: 100) { nodes { sharedWith { projects(first: 100) { nodes { id } } } } } }".into(),
            variables: json!({}),
            expect: limit("complexity"),
        },
        Row {
            name: "lists without `first` count as their cap",
            query: "{ projects(first: 100) { nodes { assets { md5 sha256 url size contentType } } } }".into(),
            variables: json!({}),
            expect: limit("complexity"),
        },
        Row {
            name: "a variable page size counts like a literal one",
            query: "query($n: Int) { projects(first: $n) { nodes { remixes(first: $n) { nodes { id title version } } } } }".into(),
            variables: json!({ "n": 100 }),
            expect: limit("complexity"),
        },
        Row {
            name: "more aliases than allowed",
            query: format!("{{ {aliases} }}"),
            variables: json!({}),
            expect: limit("aliases"),
        },
        Row {
            name: "fragments that double at every level",
            query: fragment_fan_out(),
            variables: json!({}),
            expect: limit("complexity"),
        },
        Row {
            name: "a fragment that spreads itself",
            query: "query { ...A } fragment A on Query { viewer { id } ...A }".into(),
            variables: json!({}),
            expect: limit("depth"),
        },
        Row {
            name: "a response over the byte budget",
            query: "{ projects(first: 20, filter: {mine: true}) { nodes { id content } } }".into(),
            variables: json!({}),
            expect: limit("response_bytes"),
        },
    ]
}

/// The first error of an answer, from either transport (the WebSocket client gives
/// `{"errors": …}` for an `error` message and the response itself for `next`).
fn first_error(answer: &Value) -> &Value {
    &answer["errors"][0]
}

async fn run(s: &TestServer, client: &Client, transport: Transport, row: &Row) -> Value {
    match transport {
        Transport::Http => {
            let (status, body) = client.raw(&row.query, row.variables.clone()).await;
            assert!(
                status.is_success() || status.is_client_error(),
                "{}: HTTP {status}: {body}",
                row.name
            );
            body
        }
        Transport::Ws => {
            ws_execute(
                s,
                client.token.as_deref(),
                &row.query,
                row.variables.clone(),
            )
            .await
        }
    }
}

/// A content document of about `bytes` bytes (a long string in an extra field).
fn heavy_project(bytes: usize) -> Value {
    let mut p = empty_project();
    p["padding"] = json!("x".repeat(bytes));
    p
}

async fn every_hostile_operation_is_refused_on_every_transport(mut s: TestServer) {
    s.set_env("ATELIER_MAX_RESPONSE_BYTES", &RESPONSE_BYTES.to_string());
    s.restart();
    let alice = s.user("alice").await;
    // Five projects of 80 kB each: a page of their contents is over the budget, one is not.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            alice
                .create_project(&format!("heavy {i}"), heavy_project(80_000))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let before = s.count("projects").await;
    for transport in [Transport::Http, Transport::Ws] {
        for row in rows(&ids[0]) {
            let answer = run(&s, &alice, transport, &row).await;
            let err = first_error(&answer);
            let what = format!("{} over {transport:?}: {answer:.600}", row.name);
            assert_eq!(code(err), row.expect.code, "{what}");
            assert_eq!(
                err["extensions"]["limit"].as_str(),
                row.expect.limit,
                "{what}"
            );
            if let Some(field) = row.expect.field {
                assert_eq!(err["extensions"]["field"], field, "{what}");
            }
            // Nothing of a refused operation's data leaks out: no partial answer.
            assert!(
                answer["data"].is_null() || answer.get("data").is_none(),
                "{what}"
            );
        }
        // The server is alive and answers a sane request on the same transport.
        let ok = run(
            &s,
            &alice,
            transport,
            &Row {
                name: "a page within the budget",
                query: "query($id: ID!) { project(id: $id) { id content } }".into(),
                variables: json!({ "id": ids[0] }),
                expect: limit("none"),
            },
        )
        .await;
        assert!(ok.get("errors").is_none(), "{transport:?}: {ok:.300}");
        assert_eq!(ok["data"]["project"]["id"], ids[0].as_str());
    }
    assert_eq!(
        s.count("projects").await,
        before,
        "no refused mutation wrote a project"
    );
    // Every project is still readable (nothing deep got in to poison a listing).
    let listed = alice
        .data("{ projects(first: 100) { nodes { id } } }", json!({}))
        .await;
    assert_eq!(
        listed["projects"]["nodes"].as_array().unwrap().len(),
        ids.len()
    );
}

const CREATE: &str =
    "mutation($t: String!) { createProject(input: {title: $t, content: {targets: []}}) { id } }";

async fn a_refused_batch_runs_none_of_its_operations(s: TestServer) {
    let alice = s.user("alice").await;
    let batch = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({ "query": CREATE, "variables": { "t": format!("p{i}") } }))
            .collect()
    };
    let resp = alice
        .request()
        .json(&batch(11))
        .send()
        .await
        .expect("batch");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.is_object(),
        "one GraphQL response, not an array: {body}"
    );
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["limit"], "batch");
    assert_eq!(s.count("projects").await, 0, "none of the batch ran");
    // At the limit, the batch runs whole.
    let resp = alice.request().json(&batch(10)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(10), "{body:.300}");
    assert_eq!(s.count("projects").await, 10);
}

/// An upload form whose file parts are given by hand.
fn form(map: Value, parts: Vec<(&str, Vec<u8>)>) -> reqwest::multipart::Form {
    let operations = json!({ "query": crate::harness::UPLOAD, "variables": { "f": null, "t": "IMAGE_VECTOR", "m": null } });
    let mut form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", map.to_string());
    for (name, bytes) in parts {
        form = form.part(
            name.to_owned(),
            reqwest::multipart::Part::bytes(bytes).file_name("a.svg"),
        );
    }
    form
}

async fn multipart_bodies_are_bounded_per_byte_and_part(mut s: TestServer) {
    // 256 KiB for a whole request; assets may be larger than that on their own.
    s.set_env("ATELIER_MAX_REQUEST_BYTES", &(256 * 1024).to_string());
    s.restart();
    let alice = s.user("alice").await;
    let send = |form: reqwest::multipart::Form| {
        let req = alice.request().multipart(form);
        async move {
            let resp = req.send().await.expect("upload");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("JSON body"))
        }
    };
    let map = json!({ "0": ["variables.f"] });

    // The same key, repeated: each copy alone is small.
    let (status, body) = send(form(
        map.clone(),
        vec![("0", svg(1)), ("0", svg(2)), ("0", svg(3))],
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("appears twice")
    );

    // A part `map` does not name.
    let (status, body) = send(form(map.clone(), vec![("0", svg(1)), ("1", svg(2))])).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not in `map`")
    );

    // Every byte counts: one part over the request's limit, though under the asset limit.
    let mut big = svg(1);
    big.truncate(big.len() - "</svg>".len());
    big.extend(std::iter::repeat_n(b' ', 600 * 1024));
    big.extend_from_slice(b"</svg>");
    let (status, body) = send(form(map.clone(), vec![("0", big)])).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body["errors"][0]), "PAYLOAD_TOO_LARGE");

    // Nothing was stored or left staged by any of them; a good upload still works.
    assert_eq!(s.count_assets().await, 0);
    assert!(s.staging_files().is_empty(), "{:?}", s.staging_files());
    let (status, body) = send(form(map, vec![("0", svg(7))])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(s.count_assets().await, 1);
}

async fn sharing_is_capped_per_project(s: TestServer) {
    let teacher = s.user_with_role("teacher", "teacher").await;
    let project = teacher.create_project("shared", empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 51 classes the teacher belongs to, written directly (51 CLI runs would take long).
    {
        use entity::{group, group_member, user};
        use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
        let db = s.db().await;
        let me = user::Entity::find()
            .filter(user::Column::Subject.eq("teacher"))
            .one(&db)
            .await
            .unwrap()
            .expect("the teacher's row");
        for i in 0..51 {
            let g = group::ActiveModel {
                provider: Set("local".into()),
                external_id: Set(format!("class-{i}")),
                name: Set(format!("class-{i}")),
                created_at: Set(chrono::Utc::now()),
                ..Default::default()
            }
            .insert(&db)
            .await
            .unwrap();
            group_member::ActiveModel {
                group_id: Set(g.id),
                user_id: Set(me.id),
                created_at: Set(chrono::Utc::now()),
            }
            .insert(&db)
            .await
            .unwrap();
        }
    }
    let ids: Vec<String> = teacher
        .data("{ viewer { groups { id } } }", json!({}))
        .await["viewer"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 51);
    const SHARE: &str = "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id sharedWith { id } } }";
    let shared = teacher
        .data(SHARE, json!({ "id": project, "g": ids[..50] }))
        .await;
    assert_eq!(
        shared["shareProject"]["sharedWith"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    let err = teacher
        .error(SHARE, json!({ "id": project, "g": [ids[50]] }))
        .await;
    assert_eq!(code(&err), "BAD_USER_INPUT");
    assert_eq!(err["extensions"]["limit"], "shares");
    assert_eq!(
        s.count("project_shares").await,
        50,
        "the refused share wrote nothing"
    );
}
