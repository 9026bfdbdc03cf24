//! Sign-in against a real, certified OpenID Provider: `oidc-provider` from npm
//! (`tests/oidc-provider`), run with Node as a child process. Where the fake provider of
//! `oidc.rs` does what the relying party expects, this one does what a production provider
//! does: its own login and consent pages, cookies of its own, `client_secret_basic`, PKCE
//! required, opaque access tokens, an ID token that (by default) carries `sub` only while the
//! profile, email and groups claims come from the userinfo endpoint, rotated refresh tokens.
//!
//! Needs Node (`cfg(atelier_node_tests)`, see `build.rs`: without Node the tests are reported
//! ignored) and the package installed (`npm ci --prefix tests/oidc-provider`; `.ci/run` does it;
//! outside CI the test runs it when missing). With `CI=true`, a missing Node or package fails.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use atelier_testkit::oidc::{Browser, location};
use serde_json::{Value, json};

use crate::harness::{Backend, Client, TestServer};

const CLIENT_ID: &str = "atelier-e2e";
const CLIENT_SECRET: &str = "atelier-e2e-secret";
/// Seconds the provider's access tokens live: short, so that the test sees a refresh.
const ACCESS_TOKEN_TTL: u64 = 4;

mod e2e {
    /// The provider's defaults: the ID token carries `sub` only, the rest comes from userinfo;
    /// `offline_access` (a refresh token) only with `prompt=consent` (`ATELIER_OIDC_PROMPT`).
    mod userinfo_claims {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(atelier_node_tests),
            ignore = "needs Node.js (and `npm ci --prefix tests/oidc-provider`)"
        )]
        async fn sqlite() {
            super::super::sign_in_end_to_end(
                crate::harness::Backend::Sqlite,
                super::super::Variant::SPEC,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(all(atelier_node_tests, atelier_pg_tests)),
            ignore = "needs Node.js and TEST_DATABASE_URL"
        )]
        async fn postgres() {
            super::super::sign_in_end_to_end(
                crate::harness::Backend::Postgres,
                super::super::Variant::SPEC,
            )
            .await;
        }
    }

    /// Every granted claim in the ID token as well (`conformIdTokenClaims: false`), and a
    /// refresh token without `prompt=consent`.
    mod id_token_claims {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(atelier_node_tests),
            ignore = "needs Node.js (and `npm ci --prefix tests/oidc-provider`)"
        )]
        async fn sqlite() {
            super::super::sign_in_end_to_end(
                crate::harness::Backend::Sqlite,
                super::super::Variant::LENIENT,
            )
            .await;
        }
    }
}

/// How the provider is set up.
#[derive(Clone, Copy)]
struct Variant {
    /// The ID token carries `sub` only; profile, email and groups are at userinfo.
    conform_id_token_claims: bool,
    /// A refresh token only with `offline_access` granted (so Atelier asks with
    /// `prompt=consent`), or for every code exchange.
    refresh_needs_offline_access: bool,
}

impl Variant {
    const SPEC: Variant = Variant {
        conform_id_token_claims: true,
        refresh_needs_offline_access: true,
    };
    const LENIENT: Variant = Variant {
        conform_id_token_claims: false,
        refresh_needs_offline_access: false,
    };
}

/// The `oidc-provider` child process; killed on drop.
struct NodeProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything it printed, for failure messages.
    output: Arc<Mutex<String>>,
    issuer: String,
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// Makes sure `node_modules` is there: CI installs it (`.ci/run`) and fails without it; a
/// developer's run installs it from the lockfile.
fn ensure_package() {
    let dir = provider_dir();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "tests/oidc-provider/node_modules is missing: CI must run `npm ci --prefix tests/oidc-provider` first (.ci/run does)"
    );
    // Several tests may get here at once: one installs, the others wait for it.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .output()
        .expect("npm runs (Node.js is installed: build.rs found `node`)");
    assert!(
        out.status.success(),
        "`npm ci --prefix tests/oidc-provider` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NodeProvider {
    /// Starts the provider with these accounts; it listens at once and says where.
    fn start(accounts: &Value, variant: Variant) -> NodeProvider {
        ensure_package();
        let mut child = Command::new("node")
            .arg(provider_dir().join("server.mjs"))
            .env("OP_CLIENT_ID", CLIENT_ID)
            .env("OP_CLIENT_SECRET", CLIENT_SECRET)
            .env("OP_ACCOUNTS", accounts.to_string())
            .env("OP_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL.to_string())
            .env("OP_CONFORM", variant.conform_id_token_claims.to_string())
            .env(
                "OP_REFRESH",
                if variant.refresh_needs_offline_access {
                    "offline_access"
                } else {
                    "always"
                },
            )
            .env_remove("OP_REDIRECT_URI")
            .env_remove("OP_PORT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts (tests/oidc-provider/server.mjs)");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(tx)),
            (Box::new(stderr), None),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let mut provider = NodeProvider {
            child,
            stdin: None,
            lines,
            output,
            issuer: String::new(),
        };
        provider.stdin = provider.child.stdin.take();
        let line = provider.expect_line("issuer ");
        provider.issuer = line.trim_start_matches("issuer ").to_owned();
        provider
    }

    /// Waits (30 s at most) for a line of stdout starting with `prefix`.
    fn expect_line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "oidc-provider did not print {prefix:?}; its output:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// Registers the client's redirect URI (known once Atelier listens) and waits until the
    /// provider serves.
    fn configure(&mut self, redirect_uri: &str) {
        let stdin = self.stdin.as_mut().expect("configured once");
        writeln!(stdin, "{redirect_uri}").expect("write to the provider's stdin");
        stdin.flush().unwrap();
        self.expect_line("ready");
    }

    /// Changes what the provider says of `subject` from now on.
    fn set_account(&mut self, subject: &str, account: &Value) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "account {subject} {account}").expect("write to the provider's stdin");
        stdin.flush().unwrap();
        self.expect_line("ok");
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Location` resolved against the URL that answered.
fn next_url(resp: &reqwest::Response) -> String {
    resp.url()
        .join(&location(resp))
        .expect("Location is a URL")
        .to_string()
}

/// The first form of an HTML page: its action (resolved against `page`) and its hidden inputs.
fn form_of(page: &str, html: &str) -> (String, Vec<(String, String)>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].replace("&amp;", "&"))
    };
    let form_at = html
        .find("<form")
        .unwrap_or_else(|| panic!("no form in:\n{html}"));
    let form_tag = &html[form_at..form_at + html[form_at..].find('>').unwrap()];
    let action = attr(form_tag, "action").expect("form action");
    let action = reqwest::Url::parse(page)
        .unwrap()
        .join(&action)
        .unwrap()
        .to_string();
    let body = &html[form_at
        ..html[form_at..]
            .find("</form>")
            .map_or(html.len(), |e| form_at + e)];
    let mut fields = Vec::new();
    for input in body.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap_or(input.len())];
        if attr(tag, "type").as_deref() == Some("hidden")
            && let (Some(name), Some(value)) = (attr(tag, "name"), attr(tag, "value"))
        {
            fields.push((name, value));
        }
    }
    (action, fields)
}

/// Signs `login` in the way a person in a browser does: Atelier's `/auth/login`, the
/// provider's authorization endpoint, its login page (form filled in and submitted), its
/// consent page (submitted), back to Atelier's callback. Returns where Atelier finally sent the
/// browser.
async fn sign_in(b: &Browser, base: &str, login: &str, provider: &NodeProvider) -> String {
    let resp = b.get(&format!("{base}/auth/login")).await;
    assert_eq!(resp.status(), 303, "/auth/login");
    let mut url = next_url(&resp);
    assert!(url.starts_with(&provider.issuer), "to the provider: {url}");
    let (mut logins, mut consents) = (0, 0);
    for _ in 0..20 {
        if url.starts_with(&format!("{base}/auth/callback")) {
            let resp = b.get(&url).await;
            let status = resp.status();
            let to = resp.headers().get("location").cloned();
            assert_eq!(
                status,
                303,
                "callback: {}\nprovider output:\n{}",
                resp.text().await.unwrap_or_default(),
                provider.output()
            );
            assert_eq!(
                (logins, consents),
                (1, 1),
                "one login page, one consent page"
            );
            return to.unwrap().to_str().unwrap().to_owned();
        }
        let resp = b.get(&url).await;
        if resp.status().is_redirection() {
            url = next_url(&resp);
            continue;
        }
        let status = resp.status();
        let html = resp.text().await.unwrap();
        assert_eq!(status, 200, "{url}: {html}\n{}", provider.output());
        let (action, mut fields) = form_of(&url, &html);
        match fields
            .iter()
            .find(|(k, _)| k == "prompt")
            .map(|(_, v)| v.as_str())
        {
            Some("login") => {
                logins += 1;
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any password will do".into()));
            }
            Some("consent") => consents += 1,
            other => panic!("an unexpected page ({other:?}): {html}"),
        }
        let resp = b.post_form(&action, &fields).await;
        assert!(
            resp.status().is_redirection(),
            "{action}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        url = next_url(&resp);
    }
    panic!("the sign-in never came back to {base}/auth/callback (last: {url})");
}

const VIEWER: &str = "{ viewer { id displayName role groups { id name } } }";

async fn viewer(base: &str, b: &Browser) -> Value {
    let (status, body) = b.graphql(base, VIEWER, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["viewer"].clone()
}

fn group_names(viewer: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = viewer["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    names.sort();
    names
}

/// The session row's version and whether it ended, for the user with this subject.
async fn session_of(s: &TestServer, subject: &str) -> (i64, bool) {
    use sea_orm::ConnectionTrait;
    let db = s.db().await;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT s.version, s.ended_at IS NOT NULL AS ended FROM sessions s \
                 JOIN users u ON u.id = s.user_id WHERE u.subject = '{subject}'"
            ),
        ))
        .await
        .unwrap()
        .expect("one session");
    let version: i64 = row
        .try_get::<i32>("", "version")
        .map(i64::from)
        .or_else(|_| row.try_get::<i64>("", "version"))
        .unwrap();
    let ended: bool = row.try_get("", "ended").unwrap();
    (version, ended)
}

async fn sign_in_end_to_end(backend: Backend, variant: Variant) {
    let accounts = json!({
        "ada": {"name": "Ada Lovelace", "email": "ada@school.example", "groups": ["7B", "teachers"]},
        "bo": {"name": "Bo Student", "email": "bo@school.example", "groups": ["7B"]},
    });
    let mut provider = NodeProvider::start(&accounts, variant);
    let issuer = provider.issuer.clone();
    let mut env = vec![("ATELIER_OIDC_ISSUER", issuer.as_str())];
    if variant.refresh_needs_offline_access {
        env.push(("ATELIER_OIDC_PROMPT", "consent"));
    }
    env.extend_from_slice(&[
        ("ATELIER_OIDC_CLIENT_ID", CLIENT_ID),
        ("ATELIER_OIDC_CLIENT_SECRET", CLIENT_SECRET),
        (
            "ATELIER_OIDC_SCOPES",
            "openid profile email groups offline_access",
        ),
        ("ATELIER_OIDC_TEACHER_GROUPS", "teachers"),
        ("ATELIER_SECRET_KEY", "the end-to-end test's key"),
    ]);
    let s = TestServer::start_with(backend, &env).await;
    let base = s.graphql_url().trim_end_matches("/graphql").to_owned();
    provider.configure(&format!("{base}/auth/callback"));

    // A teacher: the provider's name, email and groups; the role from the teacher group.
    let ada = Browser::default();
    assert_eq!(sign_in(&ada, &base, "ada", &provider).await, "/graphql");
    assert!(ada.session().is_some(), "the session cookie is set");
    let v = viewer(&base, &ada).await;
    assert_eq!(v["displayName"], "Ada Lovelace", "{v}");
    assert_eq!(v["role"], "TEACHER", "{v}");
    assert_eq!(group_names(&v), ["7B", "teachers"]);
    assert_eq!(s.count("users WHERE email = 'ada@school.example'").await, 1);

    // A student of the same class, in another browser: one group row for both.
    let bo = Browser::default();
    sign_in(&bo, &base, "bo", &provider).await;
    let w = viewer(&base, &bo).await;
    assert_eq!(w["displayName"], "Bo Student", "{w}");
    assert_eq!(w["role"], "STUDENT", "{w}");
    assert_eq!(group_names(&w), ["7B"]);
    let class_of = |v: &Value| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "7B")
            .unwrap()["id"]
            .clone()
    };
    assert_eq!(class_of(&v), class_of(&w));
    assert_eq!(s.count("groups").await, 2);

    // The provider's access token expires: the next request refreshes it with the refresh
    // token (offline_access), once, and the user stays signed in with the same groups.
    let (before, _) = session_of(&s, "ada").await;
    tokio::time::sleep(Duration::from_secs(ACCESS_TOKEN_TTL + 1)).await;
    let again = viewer(&base, &ada).await;
    assert_eq!(again["id"], v["id"]);
    assert_eq!(again["displayName"], "Ada Lovelace", "{again}");
    assert_eq!(again["role"], "TEACHER", "{again}");
    assert_eq!(group_names(&again), ["7B", "teachers"]);
    assert_eq!(
        session_of(&s, "ada").await,
        (before + 1, false),
        "one refresh against the provider\n{}",
        provider.output()
    );
    assert_eq!(viewer(&base, &ada).await["id"], v["id"]);
    assert_eq!(
        session_of(&s, "ada").await.0,
        before + 1,
        "no second refresh"
    );

    // The provider moves her to another class and out of the teachers: the next refresh (with
    // the rotated refresh token: the first one was consumed) says so.
    provider.set_account(
        "ada",
        &json!({"name": "Ada King", "email": "ada@school.example", "groups": ["7B", "Art"]}),
    );
    tokio::time::sleep(Duration::from_secs(ACCESS_TOKEN_TTL + 1)).await;
    let moved = viewer(&base, &ada).await;
    assert_eq!(moved["id"], v["id"]);
    assert_eq!(moved["displayName"], "Ada King", "{moved}");
    assert_eq!(moved["role"], "STUDENT", "{moved}");
    assert_eq!(group_names(&moved), ["7B", "Art"]);
    assert_eq!(session_of(&s, "ada").await, (before + 2, false));

    // Logout ends the session: the cookie is cleared and the token refused from then on.
    let token = ada.session().unwrap();
    let resp = ada
        .post(&format!("{base}/auth/logout"), &[("x-atelier-csrf", "1")])
        .await;
    assert_eq!(resp.status(), 204);
    assert!(ada.session().is_none(), "the cookie is cleared");
    assert!(session_of(&s, "ada").await.1, "the session row is ended");
    let (status, _) = Client::new(s.graphql_url(), Some(token))
        .raw(VIEWER, json!({}))
        .await;
    assert_eq!(status, 401);
    // The other user's session is untouched.
    assert_eq!(viewer(&base, &bo).await["id"], w["id"]);
}
