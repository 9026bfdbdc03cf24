//! The HTTP side of the harness: GraphQL calls over keep-alive connections, streamed multipart
//! uploads (GraphQL multipart request spec), and the server's `/metrics` counters.
//!
//! A call succeeds only when the body has `data` and no `errors`: GraphQL errors arrive with
//! HTTP 200, so the status code alone would count failures as successes.

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{StatusCode, header::COOKIE, multipart};
use serde_json::{Value, json};

use crate::error::{Context, Result};

/// Long enough for a 200 MiB upload on a busy machine; a client-side timeout on a write that
/// the server then commits would look like a lost update, so err on the long side.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);

const UPLOAD_QUERY: &str = "mutation($f: Upload!, $t: AssetType!) { \
    uploadAsset(input: {file: $f, assetType: $t}) { created asset { id md5 } } }";

/// Why a call did not succeed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No complete response: connection refused or reset, timeout, body cut off.
    Transport(String),
    /// A status other than 200 without a GraphQL error body.
    Status { status: u16, body: String },
    /// The response carried `errors`; `code` is the first error's `extensions.code`.
    GraphQl {
        code: String,
        message: String,
        extensions: Value,
    },
    /// 200 but not JSON, or JSON without `data`.
    Malformed(String),
}

impl CallError {
    /// A short label to group errors by in reports.
    pub fn kind(&self) -> String {
        match self {
            CallError::Transport(_) => "transport".into(),
            CallError::Status { status, .. } => format!("HTTP {status}"),
            CallError::GraphQl { code, .. } => code.clone(),
            CallError::Malformed(_) => "malformed response".into(),
        }
    }

    /// Whether this is a GraphQL error with `extensions.code == code`.
    pub fn has_code(&self, wanted: &str) -> bool {
        matches!(self, CallError::GraphQl { code, .. } if code == wanted)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            CallError::GraphQl { code, message, .. } => write!(f, "{code}: {message}"),
            CallError::Malformed(e) => write!(f, "malformed response: {e}"),
        }
    }
}

/// The session cookie an OIDC sign-in sets.
pub const SESSION_COOKIE: &str = "atelier_session";

/// How a request proves who is calling.
#[derive(Clone, Debug)]
pub enum Credential {
    /// `Authorization: Bearer <token>` (an API token from `atelier token create`).
    Bearer(Arc<str>),
    /// `Cookie: atelier_session=<token>` (a session from a sign-in).
    SessionCookie(Arc<str>),
}

/// Server counters from `GET /metrics`.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub statements: u64,
    pub requests: u64,
}

/// A client of one server, sharing a pool of keep-alive connections among all tasks.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            // Only ever 127.0.0.1: never route through a proxy from the environment.
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.to_owned(),
        })
    }

    /// Runs a GraphQL operation and returns its `data`.
    pub async fn graphql(
        &self,
        token: &str,
        query: &str,
        variables: Value,
    ) -> Result<Value, CallError> {
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        data_of(response).await
    }

    /// Runs a GraphQL operation as `credential` and returns its `data`. A cookie request is
    /// made as the web editor makes it: JSON body (`Content-Type: application/json`, which
    /// the server requires of cookie-authenticated requests), no `Authorization`.
    pub async fn graphql_as(
        &self,
        credential: &Credential,
        query: &str,
        variables: Value,
    ) -> Result<Value, CallError> {
        let request = self.http.post(format!("{}/graphql", self.base));
        let request = match credential {
            Credential::Bearer(token) => request.bearer_auth(token),
            Credential::SessionCookie(token) => {
                request.header(COOKIE, format!("{SESSION_COOKIE}={token}"))
            }
        };
        let response = request
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        data_of(response).await
    }

    /// Saves a backpack item: a sound `body` and a PNG `thumbnail`; returns
    /// `data.saveBackpackItem`.
    pub async fn save_backpack_item(
        &self,
        token: &str,
        body: bytes::Bytes,
        thumbnail: bytes::Bytes,
    ) -> Result<Value, CallError> {
        let operations = json!({
            "query": "mutation($b: Upload!, $t: Upload!) { saveBackpackItem(input: {name: \"bench\", type: SOUND, mime: \"audio/wav\", body: $b, thumbnail: $t}) { id size } }",
            "variables": { "b": null, "t": null },
        });
        let form = multipart::Form::new()
            .text("operations", operations.to_string())
            .text("map", r#"{"0":["variables.b"],"1":["variables.t"]}"#)
            .part("0", multipart::Part::stream(body).file_name("sound.wav"))
            .part(
                "1",
                multipart::Part::stream(thumbnail).file_name("thumb.png"),
            );
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await;
        Ok(data_of(response).await?["saveBackpackItem"].clone())
    }

    /// Uploads one asset of `len` bytes streamed from `body`; returns `data.uploadAsset`.
    pub async fn upload(
        &self,
        token: &str,
        asset_type: &str,
        file: UploadFile,
        body: reqwest::Body,
    ) -> Result<Value, CallError> {
        let operations = json!({
            "query": UPLOAD_QUERY,
            "variables": { "f": null, "t": asset_type },
        });
        let part = multipart::Part::stream_with_length(body, file.len)
            .file_name(file.name)
            .mime_str(file.mime)
            .map_err(|e| CallError::Transport(format!("bad mime type: {e}")))?;
        let form = multipart::Form::new()
            .text("operations", operations.to_string())
            .text("map", r#"{"0":["variables.f"]}"#)
            .part("0", part);
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await;
        let mut data = data_of(response).await?;
        Ok(data["uploadAsset"].take())
    }

    /// `PUT path` with a JSON body and a bearer token, as the Scratch editor saves a project;
    /// succeeds only on exactly 200 with `"status":"ok"` (the editor's own check).
    pub async fn put_json(
        &self,
        token: &str,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<Value, CallError> {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        editor_ok(response).await
    }

    /// `POST path` with raw bytes and no Content-Type, as the Scratch editor uploads an asset;
    /// succeeds only on exactly 200 with `"status":"ok"`.
    pub async fn post_raw(
        &self,
        token: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Value, CallError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .body(body)
            .send()
            .await;
        editor_ok(response).await
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, String), CallError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        Ok((status, body))
    }

    /// `GET path` with a bearer token: status and body bytes.
    pub async fn get_bytes(
        &self,
        token: &str,
        path: &str,
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        Ok((status, body))
    }

    /// One counter of `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<u64> {
        let (status, text) = self.get("/metrics").await.context("GET /metrics")?;
        if status != StatusCode::OK {
            crate::error::bail!("GET /metrics answered {status}");
        }
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .context(format_args!("no {name} in /metrics"))
    }

    /// The statement and request counters. This request itself is counted in the next read.
    pub async fn counters(&self) -> Result<Counters> {
        let (status, text) = self.get("/metrics").await.context("GET /metrics")?;
        if status != StatusCode::OK {
            crate::error::bail!("GET /metrics answered {status}");
        }
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .context(format_args!("no {name} in /metrics"))
        };
        Ok(Counters {
            statements: counter("atelier_db_statements_total")?,
            requests: counter("atelier_http_requests_total")?,
        })
    }
}

/// What the file part of an upload says about itself.
pub struct UploadFile {
    pub name: &'static str,
    pub mime: &'static str,
    pub len: u64,
}

async fn data_of(response: reqwest::Result<reqwest::Response>) -> Result<Value, CallError> {
    let response = response.map_err(|e| CallError::Transport(error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CallError::Transport(error_chain(&e)))?;
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) if status == StatusCode::OK => return Err(CallError::Malformed(e.to_string())),
        Err(_) => {
            return Err(CallError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            });
        }
    };
    if let Some(first) = body["errors"].as_array().and_then(|errors| errors.first()) {
        return Err(CallError::GraphQl {
            code: first["extensions"]["code"]
                .as_str()
                .unwrap_or("(no code)")
                .to_owned(),
            message: first["message"].as_str().unwrap_or_default().to_owned(),
            extensions: first["extensions"].clone(),
        });
    }
    match body {
        Value::Object(mut map) if status == StatusCode::OK => match map.remove("data") {
            Some(data) if !data.is_null() => Ok(data),
            _ => Err(CallError::Malformed("no `data` in the response".into())),
        },
        _ => Err(CallError::Status {
            status: status.as_u16(),
            body: body.to_string().chars().take(200).collect(),
        }),
    }
}

/// reqwest's Display hides the cause ("error sending request"); include the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The Scratch editor's view of an answer: exactly 200 and a JSON body with `"status":"ok"`;
/// anything else is an error (a 4xx JSON body's `code` becomes the error's code).
async fn editor_ok(response: reqwest::Result<reqwest::Response>) -> Result<Value, CallError> {
    let response = response.map_err(|e| CallError::Transport(error_chain(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| CallError::Transport(error_chain(&e)))?;
    let json: Option<Value> = serde_json::from_str(&body).ok();
    match (status, json) {
        (StatusCode::OK, Some(v)) if v["status"] == "ok" => Ok(v),
        (_, Some(v)) if v["code"].is_string() => Err(CallError::GraphQl {
            code: v["code"].as_str().unwrap_or_default().to_owned(),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            extensions: v,
        }),
        (status, _) => Err(CallError::Status {
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        }),
    }
}
