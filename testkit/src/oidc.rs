//! A fake OpenID Provider for tests and benchmarks (discovery, JWKS, authorize, token, userinfo),
//! and a minimal browser (keeps cookies, does not follow redirects) to sign in through it.
//!
//! The provider signs in whoever the authorize URL names in `test_user` (the browser "types
//! the credentials"), issues RS256 ID tokens with a test key, counts token-endpoint calls, and
//! can refuse refreshes or answer slowly on demand. Refresh tokens are single-use (rotated on
//! every refresh), as strict providers do: a second refresh with the same token is refused.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine;
use openidconnect::{
    JsonWebKeyId, PrivateSigningKey,
    core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey},
};
use serde_json::{Value, json};
use sha2::Digest;

const KEY_PEM: &str = include_str!("oidc-test-signing-key.pem");
pub const CLIENT_ID: &str = "atelier-test";
pub const CLIENT_SECRET: &str = "atelier-test-secret";

/// What the provider knows of a user.
#[derive(Clone, Debug)]
pub struct FakeUser {
    pub name: String,
    pub email: String,
    /// The groups claim, as sent.
    pub groups: Value,
}

struct Code {
    subject: String,
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
}

#[derive(Default)]
struct Inner {
    users: Mutex<HashMap<String, FakeUser>>,
    codes: Mutex<HashMap<String, Code>>,
    /// refresh token → subject (removed when used: single-use).
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// access token → subject.
    access_tokens: Mutex<HashMap<String, String>>,
    token_calls: AtomicUsize,
    refresh_calls: AtomicUsize,
    refuse_refresh: AtomicBool,
    /// Seconds an access token lives (`expires_in`).
    expires_in: AtomicU64,
    /// Milliseconds the token endpoint waits before answering a refresh.
    refresh_delay_ms: AtomicU64,
    /// Send the groups in the ID token (true) or only from userinfo (false).
    groups_in_id_token: AtomicBool,
    issuer: Mutex<String>,
    /// Breaks the next code exchange's ID token this way (see [`Tamper`]).
    tamper: Mutex<Option<Tamper>>,
}

/// Ways to break an ID token, each of which the relying party must refuse.
#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    Nonce,
    Audience,
    Issuer,
    Expired,
    Signature,
}

#[derive(Clone)]
pub struct FakeProvider {
    inner: Arc<Inner>,
    key: Arc<CoreRsaPrivateSigningKey>,
    pub issuer: String,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Inner::default());
        inner.expires_in.store(3600, Ordering::SeqCst);
        inner.groups_in_id_token.store(true, Ordering::SeqCst);
        *inner.issuer.lock().unwrap() = issuer.clone();
        let key = Arc::new(
            CoreRsaPrivateSigningKey::from_pem(KEY_PEM, Some(JsonWebKeyId::new("k1".into())))
                .expect("test key"),
        );
        let state = (inner.clone(), key.clone());
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeProvider {
            inner,
            key,
            issuer,
            task: Arc::new(task),
        }
    }

    /// The server's environment for signing in through this provider.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ATELIER_OIDC_ISSUER".into(), self.issuer.clone()),
            ("ATELIER_OIDC_CLIENT_ID".into(), CLIENT_ID.into()),
            ("ATELIER_OIDC_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("ATELIER_OIDC_TEACHER_GROUPS".into(), "teachers".into()),
            (
                "ATELIER_SECRET_KEY".into(),
                "a test key shared by every process".into(),
            ),
        ]
    }

    pub fn set_user(&self, subject: &str, name: &str, groups: Value) {
        self.inner.users.lock().unwrap().insert(
            subject.to_owned(),
            FakeUser {
                name: name.to_owned(),
                email: format!("{subject}@school.example"),
                groups,
            },
        );
    }

    /// Token endpoint calls so far (code exchanges and refreshes).
    pub fn token_calls(&self) -> usize {
        self.inner.token_calls.load(Ordering::SeqCst)
    }

    pub fn refresh_calls(&self) -> usize {
        self.inner.refresh_calls.load(Ordering::SeqCst)
    }

    pub fn refuse_refresh(&self, refuse: bool) {
        self.inner.refuse_refresh.store(refuse, Ordering::SeqCst);
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.inner.expires_in.store(secs, Ordering::SeqCst);
    }

    pub fn set_refresh_delay(&self, ms: u64) {
        self.inner.refresh_delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn tamper_next(&self, how: Tamper) {
        *self.inner.tamper.lock().unwrap() = Some(how);
    }

    pub fn set_groups_in_id_token(&self, yes: bool) {
        self.inner.groups_in_id_token.store(yes, Ordering::SeqCst);
    }

    /// An ID token for `claims`, signed with the provider's key (tests forge variants).
    pub fn sign(&self, claims: &Value) -> String {
        sign(&self.key, claims)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

type St = (Arc<Inner>, Arc<CoreRsaPrivateSigningKey>);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random() -> String {
    b64(&rand::random::<[u8; 24]>())
}

fn sign(key: &CoreRsaPrivateSigningKey, claims: &Value) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": "k1" });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key
        .sign(
            &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            input.as_bytes(),
        )
        .unwrap();
    format!("{input}.{}", b64(&signature))
}

async fn discovery(State((inner, _)): State<St>) -> Json<Value> {
    let iss = inner.issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
    }))
}

async fn jwks(State((_, key)): State<St>) -> Json<Value> {
    let jwk = serde_json::to_value(key.as_verification_key()).unwrap();
    Json(json!({ "keys": [jwk] }))
}

async fn authorize(
    State((inner, _)): State<St>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(subject) = q.get("test_user").cloned() else {
        return (StatusCode::BAD_REQUEST, "test_user is required").into_response();
    };
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("response_type").map(String::as_str) != Some("code")
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = random();
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    inner.codes.lock().unwrap().insert(
        code.clone(),
        Code {
            subject,
            nonce: q.get("nonce").cloned(),
            challenge: q.get("code_challenge").cloned(),
            redirect_uri: redirect_uri.clone(),
        },
    );
    let state = q.get("state").cloned().unwrap_or_default();
    let to = format!(
        "{redirect_uri}?code={}&state={}",
        urlencode(&code),
        urlencode(&state)
    );
    Redirect::to(&to).into_response()
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn oauth_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

fn client_authenticated(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let expected = format!("{CLIENT_ID}:{CLIENT_SECRET}");
    basic.as_deref() == Some(expected.as_str())
        || (form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET))
}

async fn token(
    State((inner, key)): State<St>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    inner.token_calls.fetch_add(1, Ordering::SeqCst);
    if !client_authenticated(&headers, &form) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let (subject, nonce) = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(code) = form
                .get("code")
                .and_then(|c| inner.codes.lock().unwrap().remove(c))
            else {
                return oauth_error("invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = b64(&sha2::Sha256::digest(verifier.as_bytes()));
            if code.challenge.as_deref() != Some(challenge.as_str())
                || form.get("redirect_uri") != Some(&code.redirect_uri)
            {
                return oauth_error("invalid_grant");
            }
            (code.subject, code.nonce)
        }
        Some("refresh_token") => {
            inner.refresh_calls.fetch_add(1, Ordering::SeqCst);
            let delay = inner.refresh_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let subject = form
                .get("refresh_token")
                .and_then(|t| inner.refresh_tokens.lock().unwrap().remove(t));
            match subject {
                Some(s) if !inner.refuse_refresh.load(Ordering::SeqCst) => (s, None),
                _ => return oauth_error("invalid_grant"),
            }
        }
        _ => return oauth_error("unsupported_grant_type"),
    };
    let Some(user) = inner.users.lock().unwrap().get(&subject).cloned() else {
        return oauth_error("invalid_grant");
    };
    let access = random();
    let refresh = random();
    inner
        .access_tokens
        .lock()
        .unwrap()
        .insert(access.clone(), subject.clone());
    inner
        .refresh_tokens
        .lock()
        .unwrap()
        .insert(refresh.clone(), subject.clone());
    let now = chrono::Utc::now().timestamp();
    let iss = inner.issuer.lock().unwrap().clone();
    let mut claims = json!({
        "iss": iss,
        "sub": subject,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "name": user.name,
        "email": user.email,
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    if inner.groups_in_id_token.load(Ordering::SeqCst) {
        claims["groups"] = user.groups.clone();
    }
    let tamper = inner.tamper.lock().unwrap().take();
    let mut id_token = match tamper {
        Some(Tamper::Nonce) => {
            claims["nonce"] = json!("not-the-nonce");
            sign(&key, &claims)
        }
        Some(Tamper::Audience) => {
            claims["aud"] = json!("another-client");
            sign(&key, &claims)
        }
        Some(Tamper::Issuer) => {
            claims["iss"] = json!("http://impostor.example");
            sign(&key, &claims)
        }
        Some(Tamper::Expired) => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
            sign(&key, &claims)
        }
        _ => sign(&key, &claims),
    };
    if let Some(Tamper::Signature) = tamper {
        // Same header and signature, other claims: the signature no longer matches.
        claims["sub"] = json!("someone-else");
        let parts: Vec<&str> = id_token.split('.').collect();
        id_token = format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        );
    }
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": inner.expires_in.load(Ordering::SeqCst),
        "refresh_token": refresh,
        "id_token": id_token,
    }))
    .into_response()
}

async fn userinfo(State((inner, _)): State<St>, headers: HeaderMap) -> Response {
    let subject = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| inner.access_tokens.lock().unwrap().get(t).cloned());
    let Some(subject) = subject else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some(user) = inner.users.lock().unwrap().get(&subject).cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(json!({
        "sub": subject,
        "name": user.name,
        "email": user.email,
        "groups": user.groups,
    }))
    .into_response()
}

/// A browser: keeps cookies per name (one site), never follows redirects.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    pub cookies: Arc<Mutex<HashMap<String, String>>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Default::default(),
        }
    }
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            let expired = attrs.contains("Max-Age=0");
            let mut jar = self.cookies.lock().unwrap();
            if expired || val.is_empty() {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_owned(), val.to_owned());
            }
        }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        let resp = self
            .http
            .get(url)
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&resp);
        resp
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .http
            .post(url)
            .header(header::COOKIE, self.cookie_header());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        self.keep_cookies(&resp);
        resp
    }

    /// Submits an HTML form (`application/x-www-form-urlencoded`), as a browser does.
    pub async fn post_form(&self, url: &str, fields: &[(String, String)]) -> reqwest::Response {
        let resp = self
            .http
            .post(url)
            .header(header::COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&resp);
        resp
    }

    /// A GraphQL request the way the web editor makes it (JSON, with the session cookie).
    pub async fn graphql(&self, base: &str, query: &str, variables: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{base}/graphql"))
            .header(header::COOKIE, self.cookie_header())
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn session(&self) -> Option<String> {
        self.cookies.lock().unwrap().get("atelier_session").cloned()
    }

    /// Signs in as `user` through the server's `/auth/login` and the provider; returns where
    /// the server finally sent the browser.
    pub async fn sign_in(&self, base: &str, user: &str) -> String {
        self.sign_in_to(base, user, None).await.expect("signed in")
    }

    /// The whole dance; `Err` carries the server's answer when it refused.
    pub async fn sign_in_to(
        &self,
        base: &str,
        user: &str,
        return_to: Option<&str>,
    ) -> Result<String, (u16, String)> {
        let login = match return_to {
            Some(r) => format!("{base}/auth/login?return_to={}", urlencode(r)),
            None => format!("{base}/auth/login"),
        };
        let resp = self.get(&login).await;
        if resp.status() != 303 {
            return Err((
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            ));
        }
        let to_provider = location(&resp);
        let resp = self
            .get(&format!("{to_provider}&test_user={}", urlencode(user)))
            .await;
        assert!(
            resp.status().is_redirection(),
            "provider: {:?}",
            resp.status()
        );
        let callback = location(&resp);
        let resp = self.get(&callback).await;
        if resp.status() != 303 {
            return Err((
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            ));
        }
        Ok(location(&resp))
    }
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location in {:?}", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}
