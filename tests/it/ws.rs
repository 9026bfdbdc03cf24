//! GraphQL over WebSocket (`/graphql/ws`, graphql-transport-ws): every operation on an open
//! socket is authorized as a new request would be (a revoked token, a logout and a demotion
//! cut what the socket may do, in one process and across two on PostgreSQL), every root field
//! gets an answer, mutations carry idempotency keys, subscriptions are capped and end when
//! access is lost, slow consumers are dropped, and the protocol's reference client works.
//!
//! [`WsClient`] and [`ws_execute`] are the socket's counterpart of `harness::Client`: other
//! tests can run any operation over the socket with them.

use std::{collections::VecDeque, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{
    both_backends,
    harness::{Backend, Client, TestServer, code, empty_project, svg},
};
use atelier_testkit::oidc::{Browser, FakeProvider};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long any one message may take to arrive.
const WAIT: Duration = Duration::from_secs(30);

/// A graphql-transport-ws client over a real socket.
pub struct WsClient {
    ws: Socket,
    /// Messages read while waiting for another operation's.
    pending: VecDeque<Value>,
    next_id: u64,
    /// The close frame's (code, reason), once the server closed.
    pub closed: Option<(u16, String)>,
}

pub fn ws_url(s: &TestServer) -> String {
    format!("{}/graphql/ws", s.base_url.replacen("http", "ws", 1))
}

impl WsClient {
    /// Connected and acknowledged, authenticated by `connectionParams` (anonymous without a
    /// token).
    pub async fn connect(s: &TestServer, token: Option<&str>) -> WsClient {
        let mut ws = WsClient::open(s, "graphql-transport-ws", &[])
            .await
            .expect("upgrade");
        let payload = match token {
            Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        let ack = ws.init(payload).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws
    }

    /// The upgrade alone, with this sub-protocol and these headers (a cookie, an origin);
    /// `Err` carries the HTTP status of a refused upgrade.
    pub async fn open(
        s: &TestServer,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        let mut req = ws_url(s).into_client_request().unwrap();
        if !protocol.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(WsClient {
                ws,
                pending: VecDeque::new(),
                next_id: 0,
                closed: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("ws connect: {e}"),
        }
    }

    /// Sends `connection_init`; the server's answer (`connection_ack`), or
    /// `{"closed": code}`.
    pub async fn init(&mut self, payload: Value) -> Value {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        match self.recv().await {
            Some(v) => v,
            None => json!({ "closed": self.closed.as_ref().map(|c| c.0) }),
        }
    }

    pub async fn send(&mut self, msg: Value) {
        self.send_text(msg.to_string()).await;
    }

    /// Sends a text message (a send to a socket the server already closed is not an error
    /// here: what the server said is read next).
    pub async fn send_text(&mut self, text: String) {
        let _ = self.ws.send(Message::Text(text.into())).await;
    }

    /// The next protocol message (pings answered), or None once the socket is closed.
    pub async fn recv(&mut self) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        self.read().await
    }

    async fn read(&mut self) -> Option<Value> {
        if self.closed.is_some() {
            return None;
        }
        loop {
            let msg = match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within 30 s")
            {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    self.closed = Some((1006, String::new()));
                    return None;
                }
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON message");
                    if v["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(frame) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                _ => {}
            }
        }
    }

    /// Waits until the server closes; its close code.
    pub async fn close_code(&mut self) -> u16 {
        while let Some(v) = self.read().await {
            self.pending.push_back(v);
        }
        self.closed.as_ref().unwrap().0
    }

    /// Starts an operation; its id.
    pub async fn start(&mut self, query: &str, variables: Value, extensions: Value) -> String {
        self.next_id += 1;
        let id = format!("op{}", self.next_id);
        self.send(json!({ "id": id, "type": "subscribe", "payload": {
            "query": query, "variables": variables, "extensions": extensions } }))
            .await;
        id
    }

    /// The next message for operation `id` (others are kept for later), or None once closed.
    pub async fn next_of(&mut self, id: &str) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(|m| m["id"] == id) {
            return self.pending.remove(i);
        }
        loop {
            let msg = self.read().await?;
            if msg["id"] == id {
                return Some(msg);
            }
            self.pending.push_back(msg);
        }
    }

    /// Runs a query or mutation: the GraphQL response as POST /graphql would have it (`next`
    /// then `complete`), or `{"errors": …}` from an `error` message.
    pub async fn execute(&mut self, query: &str, variables: Value) -> Value {
        self.execute_with(query, variables, json!({})).await
    }

    pub async fn execute_with(&mut self, query: &str, variables: Value, ext: Value) -> Value {
        let id = self.start(query, variables, ext).await;
        self.answer(&id).await
    }

    /// The one answer of operation `id`.
    pub async fn answer(&mut self, id: &str) -> Value {
        let msg = self.next_of(id).await.unwrap_or_else(|| {
            panic!(
                "the socket closed ({:?}) without answering {id}",
                self.closed
            )
        });
        match msg["type"].as_str() {
            Some("next") => {
                let done = self.next_of(id).await;
                assert_eq!(
                    done.as_ref().map(|d| d["type"].clone()),
                    Some(json!("complete")),
                    "{done:?}"
                );
                msg["payload"].clone()
            }
            Some("error") => json!({ "errors": msg["payload"] }),
            _ => panic!("unexpected answer: {msg}"),
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Runs one operation on a fresh socket (authenticated by `connectionParams` when there is a
/// token): the GraphQL response, or `{"errors": …}` when the socket refused it.
pub async fn ws_execute(
    s: &TestServer,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut ws = WsClient::connect(s, token).await;
    let answer = ws.execute(query, variables).await;
    ws.close().await;
    answer
}

fn first_code(answer: &Value) -> &str {
    code(&answer["errors"][0])
}

/// The `data` of an answer that has no errors.
fn data(answer: Value) -> Value {
    assert!(
        answer.get("errors").is_none(),
        "unexpected errors: {answer:#}"
    );
    answer["data"].clone()
}

const CREATE: &str = "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id title version owner { displayName } } }";
const EXPORT: &str = "mutation($id: ID!) { exportProject(id: $id) { id status } }";
const JOB_CHANGED: &str = "subscription($id: ID!) { jobChanged(id: $id) { id status } }";
const PROJECT: &str = "query($id: ID!) { project(id: $id) { id title owner { displayName } } }";
const RENAME: &str = "mutation($id: ID!, $v: Int!, $t: String) { updateProject(input: {id: $id, expectedVersion: $v, title: $t}) { id title version } }";
/// Holds every export RUNNING for a minute: its `jobChanged` keeps running.
const HOLD_EXPORTS: &str = "export::build_delay=return(60000)";

async fn project(c: &Client, title: &str) -> String {
    c.create_project(title, empty_project()).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn export(c: &Client, id: &str) -> String {
    c.data(EXPORT, json!({ "id": id })).await["exportProject"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Subscribes to `jobChanged(job)` and waits for its first event (the job's state now).
async fn watch(ws: &mut WsClient, job: &str) -> String {
    let id = ws.start(JOB_CHANGED, json!({ "id": job }), json!({})).await;
    let first = ws.next_of(&id).await.expect("an event");
    assert_eq!(first["type"], "next", "{first}");
    assert_eq!(first["payload"]["data"]["jobChanged"]["id"], job, "{first}");
    id
}

/// The message that ends subscription `id` (skipping further events); asserts it is an
/// `error` with `code`.
async fn ends_with_error(ws: &mut WsClient, id: &str, code_: &str) {
    loop {
        let msg = ws
            .next_of(id)
            .await
            .unwrap_or_else(|| panic!("closed ({:?}) before {id} ended", ws.closed));
        match msg["type"].as_str() {
            Some("next") => continue,
            Some("error") => {
                assert_eq!(code(&msg["payload"][0]), code_, "{msg}");
                return;
            }
            _ => panic!("{id} ended with {msg}, not an error {code_}"),
        }
    }
}

fn cli_ok(s: &TestServer, args: &[&str]) -> String {
    let (ok, out, err) = s.cli_full(args);
    assert!(ok, "{args:?} failed: {err}");
    out
}

/// Polls a `/metrics` value until it is `want` (gauges settle a moment after a socket
/// closes: the server notices the close, then its tasks are dropped).
async fn metric_becomes(s: &TestServer, name: &str, want: u64) {
    let started = std::time::Instant::now();
    loop {
        let now = s.metric(name).await;
        if now == want {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{name} stayed {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    every_root_field_gets_an_answer,
    a_revoked_token_ends_its_sockets,
    a_demoted_admin_loses_reads_on_an_open_socket,
    job_changed_ends_when_access_is_lost,
    subscriptions_are_capped_and_their_places_freed,
    idempotency_keys_over_the_socket,
    a_slow_consumer_is_closed,
    protocol_errors_are_typed,
    the_older_protocol_still_works,
);

/// The root fields of the checked-in schema, as `Type.field`.
fn schema_root_fields() -> std::collections::BTreeSet<String> {
    let sdl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    let mut fields = std::collections::BTreeSet::new();
    let mut root: Option<&str> = None;
    let mut in_doc = false;
    for line in sdl.lines() {
        let t = line.trim();
        if t.starts_with("\"\"\"") {
            // A one-line description opens and closes on the same line.
            if !(t.len() > 3 && t.ends_with("\"\"\"")) {
                in_doc = !in_doc;
            }
            continue;
        }
        if in_doc {
            continue;
        }
        match t {
            "type Query {" => root = Some("Query"),
            "type Mutation {" => root = Some("Mutation"),
            "type Subscription {" => root = Some("Subscription"),
            "}" => root = None,
            _ => {
                if let Some(r) = root
                    && let Some(name) = t.split(['(', ':']).next().filter(|n| !n.is_empty())
                {
                    fields.insert(format!("{r}.{name}"));
                }
            }
        }
    }
    fields
}

/// Every root field of the schema, sent over one socket: each gets its answer (the same as
/// POST /graphql gives for queries), the socket survives all of them, and the fields that
/// used to panic the socket's task (`owner`, `projects`, `createProject { owner }`) answer.
async fn every_root_field_gets_an_answer(s: TestServer) {
    let alice = s.user("alice").await;
    let token = alice.token.clone();
    let group = cli_ok(&s, &["group", "create", "7B"]).trim().to_owned();
    assert!(s.cli(&["group", "add-member", &group, "alice"]).0);
    let bytes = svg(1);
    let md5 = alice.upload(bytes, "IMAGE_VECTOR").await["asset"]["md5"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = project(&alice, "first").await;
    let job = export(&alice, &id).await;

    let mut ws = WsClient::connect(&s, token.as_deref()).await;
    let mut sent = std::collections::BTreeSet::new();
    // Queries: exactly what POST /graphql answers.
    let queries: Vec<(&str, &str, Value)> = vec![
        (
            "viewer",
            "{ viewer { id displayName role groups { id name } } }",
            json!({}),
        ),
        (
            "project",
            "query($id: ID!) { project(id: $id) { id title version owner { id displayName role } content assets { md5 } sharedWith { name } remixedFrom { id } remixes { edges { node { id } } } createdAt updatedAt } }",
            json!({ "id": id }),
        ),
        (
            "projects",
            "{ projects(first: 10) { edges { cursor node { id title owner { displayName } sharedWith { name } } } pageInfo { hasNextPage endCursor } } }",
            json!({}),
        ),
        (
            "asset",
            "query($m: String!) { asset(md5: $m, assetType: IMAGE_VECTOR) { id md5 sha256 size contentType url } }",
            json!({ "m": md5 }),
        ),
        (
            "backpack",
            "{ backpack(first: 5) { edges { node { id } } pageInfo { hasNextPage } } }",
            json!({}),
        ),
        ("groups", "{ groups { id name } }", json!({})),
        // (an unknown token: null, over both)
        (
            "editorSession",
            "{ editorSession(token: \"eds_unknown\") { baseVersion project { id } lastConflict { id } } }",
            json!({}),
        ),
        // (not its status: the export runs meanwhile)
        (
            "job",
            "query($id: ID!) { job(id: $id) { id kind createdAt } }",
            json!({ "id": job }),
        ),
    ];
    for (field, query, vars) in &queries {
        let over_ws = ws.execute(query, vars.clone()).await;
        let (_, over_http) = alice.raw(query, vars.clone()).await;
        assert_eq!(
            over_ws, over_http,
            "{field}: the socket answers as POST /graphql"
        );
        assert!(over_ws.get("errors").is_none(), "{field}: {over_ws:#}");
        sent.insert(format!("Query.{field}"));
    }

    // Mutations: each answers, with data or with the same code as over HTTP.
    let created = data(
        ws.execute(
            CREATE,
            json!({ "t": "over the socket", "c": empty_project() }),
        )
        .await,
    )["createProject"]
        .clone();
    assert_eq!(created["owner"]["displayName"], "alice");
    let new_id = created["id"].as_str().unwrap().to_owned();
    sent.insert("Mutation.createProject".into());
    let renamed = data(
        ws.execute(RENAME, json!({ "id": new_id, "v": 1, "t": "renamed" }))
            .await,
    );
    assert_eq!(renamed["updateProject"]["version"], 2);
    sent.insert("Mutation.updateProject".into());
    let copy = data(
        ws.execute(
            "mutation($id: ID!) { copyProject(input: {id: $id, title: \"copy\"}) { id remixedFrom { id } } }",
            json!({ "id": new_id }),
        )
        .await,
    );
    assert_eq!(copy["copyProject"]["remixedFrom"]["id"], new_id.as_str());
    let copy_id = copy["copyProject"]["id"].as_str().unwrap().to_owned();
    sent.insert("Mutation.copyProject".into());
    for (field, names) in [
        ("shareProject", json!(["7B"])),
        ("unshareProject", json!([])),
    ] {
        let q = format!(
            "mutation($id: ID!, $g: [ID!]!) {{ {field}(input: {{id: $id, groupIds: $g}}) {{ id sharedWith {{ name }} }} }}"
        );
        let d = data(ws.execute(&q, json!({ "id": new_id, "g": [group] })).await);
        assert_eq!(
            d[field]["sharedWith"],
            json!(
                names
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| json!({ "name": n }))
                    .collect::<Vec<_>>()
            )
        );
        sent.insert(format!("Mutation.{field}"));
    }
    let exported = data(ws.execute(EXPORT, json!({ "id": new_id })).await);
    let new_job = exported["exportProject"]["id"].as_str().unwrap().to_owned();
    sent.insert("Mutation.exportProject".into());
    // The editor's credentials: a socket's credential opens a session like a request's.
    let token = data(
        ws.execute(
            "query($id: ID!) { projectToken(id: $id) { token } }",
            json!({ "id": new_id }),
        )
        .await,
    );
    assert!(
        token["projectToken"]["token"]
            .as_str()
            .unwrap()
            .starts_with("ptk_")
    );
    sent.insert("Query.projectToken".into());
    let opened = data(
        ws.execute(
            "mutation($id: ID!) { openEditor(projectId: $id) { token } }",
            json!({ "id": new_id }),
        )
        .await,
    );
    assert!(
        opened["openEditor"]["token"]
            .as_str()
            .unwrap()
            .starts_with("eds_")
    );
    sent.insert("Mutation.openEditor".into());
    // History: a restore, and its live change.
    let live = ws
        .start(
            "subscription($id: ID!) { projectChanged(id: $id) { version title } }",
            json!({ "id": new_id }),
            json!({}),
        )
        .await;
    let restored = data(
        ws.execute(
            "mutation($id: ID!) { restoreProjectVersion(input: {id: $id, version: 1, expectedVersion: 2}) { version title } }",
            json!({ "id": new_id }),
        )
        .await,
    );
    assert_eq!(
        restored["restoreProjectVersion"],
        json!({ "version": 3, "title": "over the socket" })
    );
    sent.insert("Mutation.restoreProjectVersion".into());
    let msg = ws.next_of(&live).await.expect("projectChanged answers");
    assert_eq!(
        msg["payload"]["data"]["projectChanged"],
        json!({ "version": 3, "title": "over the socket" }),
        "{msg}"
    );
    ws.send(json!({ "id": live, "type": "complete" })).await;
    sent.insert("Subscription.projectChanged".into());
    let deleted = data(
        ws.execute(
            "mutation($id: ID!) { deleteProject(input: {id: $id}) }",
            json!({ "id": copy_id }),
        )
        .await,
    );
    assert_eq!(deleted["deleteProject"], copy_id.as_str());
    sent.insert("Mutation.deleteProject".into());
    // Uploads need a multipart request: over the socket they are typed refusals, as over
    // HTTP without a file part; an unknown backpack item is NOT_FOUND.
    let refusals: Vec<(&str, &str, Value, &str)> = vec![
        (
            "uploadAsset",
            "mutation($f: Upload!) { uploadAsset(input: {file: $f, assetType: IMAGE_VECTOR}) { created } }",
            json!({ "f": "0" }),
            "BAD_USER_INPUT",
        ),
        (
            "saveBackpackItem",
            "mutation($f: Upload!) { saveBackpackItem(input: {name: \"n\", type: SPRITE, mime: \"application/zip\", body: $f, thumbnail: $f}) { id } }",
            json!({ "f": "0" }),
            "BAD_USER_INPUT",
        ),
        (
            "importProject",
            "mutation($f: Upload!) { importProject(file: $f) { id } }",
            json!({ "f": "0" }),
            "BAD_USER_INPUT",
        ),
        (
            "deleteBackpackItem",
            "mutation { deleteBackpackItem(id: \"999999\") }",
            json!({}),
            "NOT_FOUND",
        ),
        (
            "resolveConflict",
            "mutation($id: ID!) { resolveConflict(input: {id: $id, conflictId: \"999999\", expectedVersion: 1}) { id } }",
            json!({ "id": copy_id }),
            "NOT_FOUND",
        ),
    ];
    for (field, query, vars, want) in &refusals {
        let over_ws = ws.execute(query, vars.clone()).await;
        let (_, over_http) = alice.raw(query, vars.clone()).await;
        assert_eq!(first_code(&over_ws), *want, "{field}: {over_ws:#}");
        assert_eq!(
            first_code(&over_http),
            *want,
            "{field} over HTTP: {over_http:#}"
        );
        sent.insert(format!("Mutation.{field}"));
    }

    // The subscription: every event until the job settles, then complete.
    let sub = ws
        .start(JOB_CHANGED, json!({ "id": new_job }), json!({}))
        .await;
    let mut last = Value::Null;
    loop {
        let msg = ws.next_of(&sub).await.expect("jobChanged answers");
        match msg["type"].as_str() {
            Some("next") => last = msg["payload"]["data"]["jobChanged"]["status"].clone(),
            Some("complete") => break,
            _ => panic!("jobChanged: {msg}"),
        }
    }
    assert!(last == "READY" || last == "FAILED", "{last}");
    sent.insert("Subscription.jobChanged".into());

    // An anonymous socket gets the codes HTTP gives anonymous requests.
    let anonymous = s.anonymous();
    let mut anon = WsClient::connect(&s, None).await;
    for query in ["{ groups { id } }", "{ viewer { id } }"] {
        let (_, over_http) = anonymous.raw(query, json!({})).await;
        assert_eq!(anon.execute(query, json!({})).await, over_http, "{query}");
    }
    let refused = anon
        .execute(CREATE, json!({ "t": "x", "c": empty_project() }))
        .await;
    assert_eq!(first_code(&refused), "UNAUTHENTICATED", "{refused:#}");

    // Nothing took the socket down.
    let still = data(ws.execute("{ viewer { displayName } }", json!({})).await);
    assert_eq!(still["viewer"]["displayName"], "alice");
    assert_eq!(
        sent,
        schema_root_fields(),
        "every root field of the schema is sent over the socket (add new ones here)"
    );
    ws.close().await;
    anon.close().await;
}

/// After `atelier token revoke`, the token's open sockets stop: a running subscription ends
/// with UNAUTHENTICATED and the socket closes with 4401; an idle socket's next operation is
/// refused (or the socket was already closed with 4401), and nothing it sends is applied.
async fn a_revoked_token_ends_its_sockets(mut s: TestServer) {
    s.set_env("ATELIER_JOB_POLL_MS", "200");
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let token = alice.token.clone().unwrap();
    let id = project(&alice, "p").await;
    let job = export(&alice, &id).await;
    let mut watching = WsClient::connect(&s, Some(&token)).await;
    let sub = watch(&mut watching, &job).await;
    let mut idle = WsClient::connect(&s, Some(&token)).await;
    // Both sockets work before.
    data(
        idle.execute(CREATE, json!({ "t": "before", "c": empty_project() }))
            .await,
    );
    data(watching.execute(PROJECT, json!({ "id": id })).await);
    let projects = s.count("projects").await;

    assert_eq!(
        cli_ok(&s, &["token", "revoke", &token]).trim(),
        "revoked 1 token(s)"
    );
    let (status, _) = alice.raw("{ viewer { id } }", json!({})).await;
    assert_eq!(status, 401, "HTTP refuses the token");

    ends_with_error(&mut watching, &sub, "UNAUTHENTICATED").await;
    assert_eq!(watching.close_code().await, 4401);

    let op = idle
        .start(
            CREATE,
            json!({ "t": "after", "c": empty_project() }),
            json!({}),
        )
        .await;
    if let Some(msg) = idle.next_of(&op).await {
        assert_eq!(msg["type"], "error", "{msg}");
        assert_eq!(code(&msg["payload"][0]), "UNAUTHENTICATED", "{msg}");
    }
    assert_eq!(idle.close_code().await, 4401);
    assert_eq!(
        s.count("projects").await,
        projects,
        "nothing applied after the revocation"
    );

    // A new socket with the revoked token is refused at `connection_init`.
    let mut again = WsClient::open(&s, "graphql-transport-ws", &[])
        .await
        .unwrap();
    let answer = again
        .init(json!({ "Authorization": format!("Bearer {token}") }))
        .await;
    assert_eq!(answer["closed"], 4401, "{answer}");
}

/// An admin demoted to student while their socket is open: the subscription on another
/// user's job ends with NOT_FOUND, the next read of that project answers null and a rename is
/// NOT_FOUND, on the same socket (which stays open: the token itself is still valid).
async fn a_demoted_admin_loses_reads_on_an_open_socket(mut s: TestServer) {
    s.set_env("ATELIER_JOB_POLL_MS", "200");
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let id = project(&alice, "alice's").await;
    let job = export(&alice, &id).await;
    let root = s.user_with_role("root", "admin").await;
    let mut ws = WsClient::connect(&s, root.token.as_deref()).await;
    let read = data(ws.execute(PROJECT, json!({ "id": id })).await);
    assert_eq!(
        read["project"]["id"],
        id.as_str(),
        "an admin reads any project"
    );
    data(
        ws.execute(RENAME, json!({ "id": id, "v": 1, "t": "by root" }))
            .await,
    );
    let sub = watch(&mut ws, &job).await;

    cli_ok(
        &s,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    ends_with_error(&mut ws, &sub, "NOT_FOUND").await;
    let read = data(ws.execute(PROJECT, json!({ "id": id })).await);
    assert_eq!(
        read["project"],
        Value::Null,
        "the demoted admin no longer reads it"
    );
    let rename = ws
        .execute(RENAME, json!({ "id": id, "v": 2, "t": "again" }))
        .await;
    assert_eq!(first_code(&rename), "NOT_FOUND", "{rename:#}");
    let me = data(ws.execute("{ viewer { role } }", json!({})).await);
    assert_eq!(me["viewer"]["role"], "STUDENT");
    assert_eq!(
        alice.data(PROJECT, json!({ "id": id })).await["project"]["title"],
        "by root",
        "only the rename from before the demotion was applied"
    );
    ws.close().await;
}

/// A classmate watching the export of a project shared with the class: when the owner
/// unshares it, the subscription ends with NOT_FOUND (at its next poll).
async fn job_changed_ends_when_access_is_lost(mut s: TestServer) {
    s.set_env("ATELIER_JOB_POLL_MS", "200");
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let group = cli_ok(&s, &["group", "create", "7B"]).trim().to_owned();
    for m in ["alice", "bob"] {
        assert!(s.cli(&["group", "add-member", &group, m]).0);
    }
    let id = project(&alice, "shared").await;
    const SHARE: &str =
        "mutation($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }";
    const UNSHARE: &str =
        "mutation($id: ID!, $g: [ID!]!) { unshareProject(input: {id: $id, groupIds: $g}) { id } }";
    alice.data(SHARE, json!({ "id": id, "g": [group] })).await;
    let job = export(&alice, &id).await;
    let mut ws = WsClient::connect(&s, bob.token.as_deref()).await;
    let sub = watch(&mut ws, &job).await;
    alice.data(UNSHARE, json!({ "id": id, "g": [group] })).await;
    ends_with_error(&mut ws, &sub, "NOT_FOUND").await;
    // The socket itself is fine.
    data(ws.execute("{ viewer { id } }", json!({})).await);
    ws.close().await;
}

/// Caps per connection and per user, refused with BAD_USER_INPUT and `limit:
/// "subscriptions"`; cancelling or closing frees places; the gauges return to 0 when every
/// socket is gone, closed politely or dropped.
async fn subscriptions_are_capped_and_their_places_freed(mut s: TestServer) {
    s.set_env("ATELIER_WS_MAX_SUBSCRIPTIONS", "3");
    s.set_env("ATELIER_WS_MAX_USER_SUBSCRIPTIONS", "5");
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let job = export(&alice, &project(&alice, "a").await).await;
    let bobs_job = export(&bob, &project(&bob, "b").await).await;

    let refused = |msg: &Value| {
        assert_eq!(msg["type"], "error", "{msg}");
        assert_eq!(code(&msg["payload"][0]), "BAD_USER_INPUT", "{msg}");
        assert_eq!(
            msg["payload"][0]["extensions"]["limit"], "subscriptions",
            "{msg}"
        );
    };
    let mut a1 = WsClient::connect(&s, alice.token.as_deref()).await;
    let mut a1_subs = Vec::new();
    for _ in 0..3 {
        a1_subs.push(watch(&mut a1, &job).await);
    }
    let over = a1.start(JOB_CHANGED, json!({ "id": job }), json!({})).await;
    refused(&a1.next_of(&over).await.unwrap());
    let mut a2 = WsClient::connect(&s, alice.token.as_deref()).await;
    for _ in 0..2 {
        watch(&mut a2, &job).await;
    }
    let over = a2.start(JOB_CHANGED, json!({ "id": job }), json!({})).await;
    refused(
        &a2.next_of(&over)
            .await
            .expect("the per-user cap spans connections"),
    );
    let mut b1 = WsClient::connect(&s, bob.token.as_deref()).await;
    watch(&mut b1, &bobs_job).await;
    assert_eq!(s.metric("atelier_ws_subscriptions").await, 6);
    assert_eq!(s.metric("atelier_ws_connections").await, 3);
    assert_eq!(s.metric("atelier_ws_subscriptions_refused_total").await, 2);

    // The client cancels one: its place is free again.
    a1.send(json!({ "type": "complete", "id": a1_subs[0] }))
        .await;
    metric_becomes(&s, "atelier_ws_subscriptions", 5).await;
    watch(&mut a2, &job).await;
    // A refused or failing subscription holds no place: an anonymous one is refused.
    let mut anon = WsClient::connect(&s, None).await;
    let sub = anon
        .start(JOB_CHANGED, json!({ "id": job }), json!({}))
        .await;
    let msg = anon.next_of(&sub).await.unwrap();
    assert_eq!(code(&msg["payload"][0]), "UNAUTHENTICATED", "{msg}");
    metric_becomes(&s, "atelier_ws_subscriptions", 6).await;
    data(anon.execute("{ viewer { id } }", json!({})).await);

    a1.close().await;
    drop(a2); // no close frame: the TCP connection just goes away
    b1.close().await;
    anon.close().await;
    metric_becomes(&s, "atelier_ws_subscriptions", 0).await;
    metric_becomes(&s, "atelier_ws_connections", 0).await;
}

/// `extensions.idempotencyKey` on a mutation over the socket: a repeat answers the original
/// outcome (marked `idempotentReplayed`), the same key for another operation is CONFLICT
/// (IDEMPOTENCY_KEY_REUSED), keys are per user and shared with the `Idempotency-Key` header,
/// and a client whose socket died right after sending retries safely.
async fn idempotency_keys_over_the_socket(s: TestServer) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let vars = json!({ "t": "keyed", "c": empty_project() });
    let key = |k: &str| json!({ "idempotencyKey": k });
    let mut ws = WsClient::connect(&s, alice.token.as_deref()).await;
    let first = ws.execute_with(CREATE, vars.clone(), key("k1")).await;
    let id = data(first.clone())["createProject"]["id"].clone();
    assert!(first.get("extensions").is_none(), "{first}");
    let again = ws.execute_with(CREATE, vars.clone(), key("k1")).await;
    assert_eq!(again["data"], first["data"], "the original outcome");
    assert_eq!(again["extensions"]["idempotentReplayed"], true, "{again}");
    assert_eq!(s.count("projects").await, 1);
    let other = ws
        .execute_with(
            CREATE,
            json!({ "t": "other", "c": empty_project() }),
            key("k1"),
        )
        .await;
    assert_eq!(first_code(&other), "CONFLICT", "{other:#}");
    assert_eq!(
        other["errors"][0]["extensions"]["reason"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    // The header and the extension are one key space: HTTP replays the socket's answer.
    let (status, replayed, body) = alice.with_key("k1").call(CREATE, vars.clone()).await;
    assert_eq!((status, replayed), (200, true), "{body}");
    assert_eq!(body["data"]["createProject"]["id"], id);
    // Per user: bob's k1 is his own.
    let bob_id = data(ws_execute(&s, bob.token.as_deref(), "{ viewer { id } }", json!({})).await);
    assert!(bob_id["viewer"]["id"].is_string());
    let mut bws = WsClient::connect(&s, bob.token.as_deref()).await;
    let theirs = data(bws.execute_with(CREATE, vars.clone(), key("k1")).await);
    assert_ne!(theirs["createProject"]["id"], id);
    bws.close().await;
    assert_eq!(s.count("projects").await, 2);
    for bad in [json!(""), json!(42), json!("x".repeat(256))] {
        let refused = ws
            .execute_with(CREATE, vars.clone(), json!({ "idempotencyKey": bad }))
            .await;
        assert_eq!(first_code(&refused), "BAD_USER_INPUT", "{refused:#}");
        assert_eq!(
            refused["errors"][0]["extensions"]["field"],
            "idempotencyKey"
        );
    }
    // A key on a query is ignored, as with the header.
    data(
        ws.execute_with("{ viewer { id } }", json!({}), key("k1"))
            .await,
    );
    ws.close().await;
    assert_eq!(s.count("projects").await, 2);

    // The socket dies right after the mutation was sent; the client retries on a new socket
    // until it gets an answer that is not UNAVAILABLE. Exactly one project either way.
    for round in 0..5 {
        let title = format!("lost {round}");
        let vars = json!({ "t": title, "c": empty_project() });
        let k = format!("lost-{round}");
        let mut dying = WsClient::connect(&s, alice.token.as_deref()).await;
        dying.start(CREATE, vars.clone(), key(&k)).await;
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
        }
        drop(dying);
        let answer = loop {
            let mut retry = WsClient::connect(&s, alice.token.as_deref()).await;
            let answer = retry.execute_with(CREATE, vars.clone(), key(&k)).await;
            retry.close().await;
            if first_code(&answer) != "UNAVAILABLE" {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(data(answer)["createProject"]["title"], title.as_str());
        assert_eq!(
            s.count(&format!("projects WHERE title = '{title}'")).await,
            1,
            "round {round}: applied exactly once"
        );
    }
}

/// A client that sends but never reads: once its queue is full the server closes it
/// (counted in `/metrics`) instead of buffering its answers, and serves everyone else.
async fn a_slow_consumer_is_closed(mut s: TestServer) {
    s.set_env("ATELIER_WS_SEND_QUEUE", "4");
    s.restart();
    let alice = s.user("alice").await;
    let big =
        json!({ "targets": [], "meta": { "semver": "3.0.0" }, "padding": "x".repeat(2 << 20) });
    let id = alice.create_project("big", big).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = WsClient::connect(&s, alice.token.as_deref()).await;
    // 400 MiB of answers asked for, none read.
    for _ in 0..200 {
        ws.start(
            "query($id: ID!) { project(id: $id) { content } }",
            json!({ "id": id }),
            json!({}),
        )
        .await;
    }
    metric_becomes(&s, "atelier_ws_slow_consumers_total", 1).await;
    metric_becomes(&s, "atelier_ws_connections", 0).await;
    drop(ws);
    let other = s.user("bob").await;
    other.data("{ viewer { id } }", json!({})).await;
}

/// Protocol violations close with graphql-transport-ws's codes; bad operations get typed
/// `error` messages; the upgrade itself refuses a missing sub-protocol and a bad token.
async fn protocol_errors_are_typed(mut s: TestServer) {
    s.set_env("ATELIER_MAX_REQUEST_BYTES", "200000");
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let token = alice.token.clone().unwrap();
    let job = export(&alice, &project(&alice, "p").await).await;

    assert_eq!(
        WsClient::open(&s, "", &[]).await.err(),
        Some(400),
        "no sub-protocol"
    );
    assert_eq!(
        WsClient::open(
            &s,
            "graphql-transport-ws",
            &[("authorization", "Bearer atl_nope")]
        )
        .await
        .err(),
        Some(401),
        "a bad token on the upgrade"
    );
    let mut ws = WsClient::open(&s, "graphql-transport-ws", &[])
        .await
        .unwrap();
    assert_eq!(
        ws.init(json!({ "Authorization": "Bearer atl_nope" })).await["closed"],
        4401
    );
    let mut ws = WsClient::open(&s, "graphql-transport-ws", &[])
        .await
        .unwrap();
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ viewer { id } }" } }))
        .await;
    assert_eq!(
        ws.close_code().await,
        4401,
        "subscribe before connection_init"
    );
    let mut ws = WsClient::connect(&s, Some(&token)).await;
    ws.send(json!({ "type": "connection_init" })).await;
    assert_eq!(ws.close_code().await, 4429, "a second connection_init");
    let mut ws = WsClient::connect(&s, Some(&token)).await;
    ws.send_text("not json".into()).await;
    assert_eq!(ws.close_code().await, 4400);

    let mut ws = WsClient::connect(&s, Some(&token)).await;
    ws.send(json!({ "type": "ping", "payload": { "n": 1 } }))
        .await;
    let pong = ws.recv().await.unwrap();
    assert_eq!(pong, json!({ "type": "pong", "payload": { "n": 1 } }));
    // Typed errors for what is wrong with one operation; the socket goes on.
    ws.send(json!({ "id": "bad", "type": "subscribe", "payload": 5 }))
        .await;
    let msg = ws.next_of("bad").await.unwrap();
    assert_eq!(
        (msg["type"].as_str(), code(&msg["payload"][0])),
        (Some("error"), "BAD_USER_INPUT")
    );
    for query in [
        "{ viewer {",
        "{ noSuchField }",
        "query A { viewer { id } } query B { viewer { id } }",
    ] {
        let answer = ws.execute(query, json!({})).await;
        assert_eq!(first_code(&answer), "BAD_USER_INPUT", "{query}: {answer:#}");
        assert!(
            answer.get("data").is_none(),
            "refused before it ran: {answer:#}"
        );
    }
    // A subscription is kept while it runs: its message may be 64 KiB at most.
    let padded = ws
        .start(
            JOB_CHANGED,
            json!({ "id": job, "pad": "x".repeat(100 * 1024) }),
            json!({}),
        )
        .await;
    let msg = ws.next_of(&padded).await.unwrap();
    assert_eq!(code(&msg["payload"][0]), "PAYLOAD_TOO_LARGE", "{msg}");
    let sub = watch(&mut ws, &job).await;
    ws.send(json!({ "id": sub, "type": "subscribe", "payload": { "query": "{ viewer { id } }" } }))
        .await;
    assert_eq!(ws.close_code().await, 4409, "an id already running");
    // A message over the request size limit ends the socket.
    let mut ws = WsClient::connect(&s, Some(&token)).await;
    let big = format!("{{ viewer {{ id }} }} # {}", "x".repeat(300 * 1024));
    let op = ws.start(&big, json!({}), json!({})).await;
    assert!(
        ws.next_of(&op).await.is_none(),
        "no answer to an oversized message"
    );
    data(alice.raw("{ viewer { id } }", json!({})).await.1);
}

/// The older subscriptions-transport-ws protocol (sub-protocol `graphql-ws`): `start`,
/// `data`, `complete`, `stop`.
async fn the_older_protocol_still_works(mut s: TestServer) {
    s.restart_with_failpoints(HOLD_EXPORTS);
    let alice = s.user("alice").await;
    let job = export(&alice, &project(&alice, "p").await).await;
    let mut ws = WsClient::open(&s, "graphql-ws", &[]).await.unwrap();
    let ack = ws
        .init(json!({ "Authorization": format!("Bearer {}", alice.token.as_deref().unwrap()) }))
        .await;
    assert_eq!(ack["type"], "connection_ack");
    ws.send(
        json!({ "id": "q", "type": "start", "payload": { "query": "{ viewer { displayName } }" } }),
    )
    .await;
    let msg = ws.next_of("q").await.unwrap();
    assert_eq!(msg["type"], "data", "{msg}");
    assert_eq!(msg["payload"]["data"]["viewer"]["displayName"], "alice");
    assert_eq!(ws.next_of("q").await.unwrap()["type"], "complete");
    ws.send(json!({ "id": "s", "type": "start", "payload": { "query": JOB_CHANGED, "variables": { "id": job } } }))
        .await;
    assert_eq!(ws.next_of("s").await.unwrap()["type"], "data");
    ws.send(json!({ "id": "s", "type": "stop" })).await;
    assert_eq!(ws.next_of("s").await.unwrap()["type"], "complete");
    metric_becomes(&s, "atelier_ws_subscriptions", 0).await;
    let mut bad = WsClient::open(&s, "graphql-ws", &[]).await.unwrap();
    let refused = bad
        .init(json!({ "Authorization": "Bearer atl_nope" }))
        .await;
    assert_eq!(refused["type"], "connection_error", "{refused}");
    assert_eq!(bad.close_code().await, 4401);
    ws.close().await;
}

// Logout needs sign-in through an OpenID Provider.
mod logout {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::logout_ends_its_cookie_sockets(crate::harness::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(atelier_pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
    )]
    async fn postgres() {
        super::logout_ends_its_cookie_sockets(crate::harness::Backend::Postgres).await;
    }
}

fn base(s: &TestServer) -> String {
    s.base_url.clone()
}

/// A server signing in through a fake provider, with exports held and quick polls.
async fn start_with_provider(
    backend: Backend,
    extra: &[(&str, &str)],
) -> (TestServer, FakeProvider) {
    let p = FakeProvider::start().await;
    let env = p.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    (TestServer::start_with(backend, &env).await, p)
}

/// A signed-in browser's socket (the session cookie, from our own origin).
async fn cookie_socket(s: &TestServer, b: &Browser) -> WsClient {
    let cookie = format!("atelier_session={}", b.session().unwrap());
    let origin = base(s);
    let mut ws = WsClient::open(
        s,
        "graphql-transport-ws",
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("upgrade with the session cookie");
    assert_eq!(ws.init(json!({})).await["type"], "connection_ack");
    ws
}

/// `POST /auth/logout` ends the session's open sockets: the cookie socket's subscription ends
/// with UNAUTHENTICATED and it closes with 4401; another cookie socket's next mutation is
/// refused (or it was closed already) and creates nothing.
async fn logout_ends_its_cookie_sockets(backend: Backend) {
    let (s, p) = start_with_provider(
        backend,
        &[("FAILPOINTS", HOLD_EXPORTS), ("ATELIER_JOB_POLL_MS", "200")],
    )
    .await;
    p.set_user("sam", "Sam", json!([]));
    let b = Browser::default();
    b.sign_in(&base(&s), "sam").await;
    let sam = Client::new(s.graphql_url(), b.session());
    let id = project(&sam, "sam's").await;
    let job = export(&sam, &id).await;
    let mut watching = cookie_socket(&s, &b).await;
    let sub = watch(&mut watching, &job).await;
    let mut idle = cookie_socket(&s, &b).await;
    data(
        idle.execute(CREATE, json!({ "t": "before", "c": empty_project() }))
            .await,
    );
    let projects = s.count("projects").await;

    let resp = b
        .post(
            &format!("{}/auth/logout", base(&s)),
            &[("x-atelier-csrf", "1")],
        )
        .await;
    assert_eq!(resp.status(), 204);
    ends_with_error(&mut watching, &sub, "UNAUTHENTICATED").await;
    assert_eq!(watching.close_code().await, 4401);
    let op = idle
        .start(
            CREATE,
            json!({ "t": "after", "c": empty_project() }),
            json!({}),
        )
        .await;
    if let Some(msg) = idle.next_of(&op).await {
        assert_eq!(code(&msg["payload"][0]), "UNAUTHENTICATED", "{msg}");
    }
    assert_eq!(idle.close_code().await, 4401);
    assert_eq!(s.count("projects").await, projects);
}

/// Two processes on one PostgreSQL: the sockets are on the second, the changes are made
/// through the first (a revocation and a demotion by the CLI, a logout by HTTP). The second
/// process polls its jobs only every 10 minutes, so only the authority-change notification
/// it hears can end the subscriptions within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn postgres_changes_in_one_process_reach_sockets_on_another() {
    let (a, p) = start_with_provider(Backend::Postgres, &[("FAILPOINTS", HOLD_EXPORTS)]).await;
    let env = p.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("FAILPOINTS", HOLD_EXPORTS),
        ("ATELIER_JOB_POLL_MS", "600000"),
    ]);
    let b = a.second_process(&env);
    p.set_user("sam", "Sam", json!([]));

    let alice = a.user("alice").await;
    let alice_job = export(&alice, &project(&alice, "alice's").await).await;
    let root = a.user_with_role("root", "admin").await;
    let browser = Browser::default();
    browser.sign_in(&base(&a), "sam").await;
    let sam = Client::new(a.graphql_url(), browser.session());
    let sam_job = export(&sam, &project(&sam, "sam's").await).await;

    let mut alice_ws = WsClient::connect(&b, alice.token.as_deref()).await;
    let alice_sub = watch(&mut alice_ws, &alice_job).await;
    // A socket that runs nothing is closed too, without sending anything.
    let mut alice_idle = WsClient::connect(&b, alice.token.as_deref()).await;
    let mut root_ws = WsClient::connect(&b, root.token.as_deref()).await;
    let root_sub = watch(&mut root_ws, &alice_job).await;
    let mut sam_ws = cookie_socket(&b, &browser).await;
    let sam_sub = watch(&mut sam_ws, &sam_job).await;

    cli_ok(
        &a,
        &["token", "create", "--user", "root", "--role", "student"],
    );
    ends_with_error(&mut root_ws, &root_sub, "NOT_FOUND").await;
    let me = data(root_ws.execute("{ viewer { role } }", json!({})).await);
    assert_eq!(me["viewer"]["role"], "STUDENT");

    cli_ok(&a, &["token", "revoke", alice.token.as_deref().unwrap()]);
    ends_with_error(&mut alice_ws, &alice_sub, "UNAUTHENTICATED").await;
    assert_eq!(alice_ws.close_code().await, 4401);
    assert_eq!(alice_idle.close_code().await, 4401);

    let resp = browser
        .post(
            &format!("{}/auth/logout", base(&a)),
            &[("x-atelier-csrf", "1")],
        )
        .await;
    assert_eq!(resp.status(), 204);
    ends_with_error(&mut sam_ws, &sam_sub, "UNAUTHENTICATED").await;
    assert_eq!(sam_ws.close_code().await, 4401);
    root_ws.close().await;
}

/// The protocol's reference client, npm `graphql-ws` (pinned in
/// `tests/graphql-ws-client/package-lock.json`), against `/graphql/ws`: a query, a keyed
/// mutation and its replay, a listing, a subscription to its end, and a refused operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(atelier_node_tests),
    ignore = "needs Node.js (and `npm ci --prefix tests/graphql-ws-client`)"
)]
async fn the_reference_client_graphql_ws() {
    let s = TestServer::start(Backend::Sqlite).await;
    let alice = s.user("alice").await;
    ensure_client_package();
    let dir = client_dir();
    let out = tokio::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .env("WS_URL", ws_url(&s))
        .env("TOKEN", alice.token.as_deref().unwrap())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the client finishes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed:\n{stdout}\n{stderr}");
    let got: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(got.get("failure").is_none(), "{got:#}");
    assert_eq!(
        got["viewer"]["data"]["viewer"]["displayName"], "alice",
        "{got:#}"
    );
    let created = &got["created"]["data"]["createProject"];
    assert_eq!(created["owner"]["displayName"], "alice", "{got:#}");
    assert_eq!(got["replayed"]["data"]["createProject"], *created);
    assert_eq!(got["replayed"]["extensions"]["idempotentReplayed"], true);
    assert_eq!(s.count("projects").await, 1);
    let listed: Vec<&Value> = got["listing"]["data"]["projects"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"]["id"])
        .collect();
    assert_eq!(listed, [&created["id"]]);
    let statuses: Vec<&str> = got["job"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data"]["jobChanged"]["status"].as_str().unwrap())
        .collect();
    assert!(
        matches!(statuses.last(), Some(&"READY")),
        "the export to its end: {statuses:?}"
    );
    assert_eq!(
        code(&got["invalid"]["errors"][0]),
        "BAD_USER_INPUT",
        "{got:#}"
    );
}

fn client_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/graphql-ws-client")
}

/// `node_modules` from the lockfile: CI installs it (`.ci/run`) and fails without it; a
/// developer's run installs it.
fn ensure_client_package() {
    let dir = client_dir();
    let installed = || dir.join("node_modules/graphql-ws/package.json").exists();
    if installed() {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "tests/graphql-ws-client/node_modules is missing: CI must run `npm ci --prefix tests/graphql-ws-client` first (.ci/run does)"
    );
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "`npm ci --prefix tests/graphql-ws-client` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
