//! GraphQL over real HTTP: a [`Client`] per user (bearer token or none), and a
//! [`KeyedClient`] whose requests carry an `Idempotency-Key`.

use serde_json::{Value, json};

use super::UPLOAD;

/// A GraphQL client over real HTTP.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
}

impl Client {
    pub fn new(url: String, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            url,
            token,
        }
    }

    /// The same user, sending `Idempotency-Key: key` with every request.
    pub fn with_key(&self, key: &str) -> KeyedClient {
        KeyedClient {
            client: self.clone(),
            key: key.to_owned(),
        }
    }

    pub fn request(&self) -> reqwest::RequestBuilder {
        let req = self.http.post(&self.url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The whole response body.
    pub async fn raw(&self, query: &str, variables: Value) -> (reqwest::StatusCode, Value) {
        let resp = self
            .request()
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        (status, body)
    }

    /// `data`, asserting there are no errors.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self.raw(query, variables).await;
        assert!(
            body.get("errors").is_none() && status.is_success(),
            "unexpected errors ({status}): {body:#}"
        );
        body["data"].clone()
    }

    /// The first error, asserting there is one.
    pub async fn error(&self, query: &str, variables: Value) -> Value {
        let (_, body) = self.raw(query, variables).await;
        body["errors"][0]
            .clone()
            .as_object()
            .cloned()
            .map(Value::Object)
            .unwrap_or_else(|| panic!("expected an error, got {body:#}"))
    }

    pub async fn create_project(&self, title: &str, content: Value) -> Value {
        self.data(
            "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id title version } }",
            json!({ "t": title, "c": content }),
        )
        .await["createProject"]
            .clone()
    }
}

/// A client whose requests carry an `Idempotency-Key`.
pub struct KeyedClient {
    pub client: Client,
    pub key: String,
}

impl KeyedClient {
    /// (status, whether the answer was a replay, body)
    pub async fn call(&self, query: &str, variables: Value) -> (u16, bool, Value) {
        self.send(|req| req.json(&json!({ "query": query, "variables": variables })))
            .await
    }

    /// (status, whether the answer was a replay, body) of an upload.
    pub async fn upload(&self, bytes: Vec<u8>, asset_type: &str) -> (u16, bool, Value) {
        self.send(|req| req.multipart(Client::upload_form(bytes, asset_type, None)))
            .await
    }

    async fn send(
        &self,
        body: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> (u16, bool, Value) {
        let req = self.client.request().header("Idempotency-Key", &self.key);
        let resp = body(req).send().await.expect("request");
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        (status, replayed, resp.json().await.expect("JSON body"))
    }
}

impl Client {
    /// The multipart form of an upload, per the GraphQL multipart request spec.
    pub fn upload_form(
        bytes: Vec<u8>,
        asset_type: &str,
        md5: Option<&str>,
    ) -> reqwest::multipart::Form {
        let operations =
            json!({ "query": UPLOAD, "variables": { "f": null, "t": asset_type, "m": md5 } });
        reqwest::multipart::Form::new()
            .text("operations", operations.to_string())
            .text("map", json!({ "0": ["variables.f"] }).to_string())
            .part(
                "0",
                reqwest::multipart::Part::bytes(bytes).file_name("asset.bin"),
            )
    }

    /// Uploads bytes; returns (status, body).
    pub async fn upload_raw(
        &self,
        bytes: Vec<u8>,
        asset_type: &str,
        md5: Option<&str>,
    ) -> (reqwest::StatusCode, Value) {
        let form = Self::upload_form(bytes, asset_type, md5);
        let resp = self
            .request()
            .multipart(form)
            .send()
            .await
            .expect("upload request");
        let status = resp.status();
        (status, resp.json().await.expect("JSON body"))
    }

    /// Uploads and asserts success: the `uploadAsset` payload.
    pub async fn upload(&self, bytes: Vec<u8>, asset_type: &str) -> Value {
        let (status, body) = self.upload_raw(bytes, asset_type, None).await;
        assert!(
            status.is_success() && body.get("errors").is_none(),
            "upload failed ({status}): {body:#}"
        );
        body["data"]["uploadAsset"].clone()
    }
}

/// The error's `extensions.code`.
pub fn code(err: &Value) -> &str {
    err["extensions"]["code"].as_str().unwrap_or("<none>")
}
