//! The GraphQL operations tests share, once, and typed calls for the common ones: a call
//! returns `Result<T, CallError>` instead of untyped JSON to index.
//!
//! Tests that need a particular selection (statement counts, exact bodies) keep their own text.

#![allow(dead_code)] // used by some scenarios only

use serde::Deserialize;
use serde_json::{Value, json};

use crate::harness::Client;

/// `$t` title, `$c` content.
pub const CREATE_PROJECT: &str = "mutation($t: String!, $c: JSON!) { createProject(input: {title: $t, content: $c}) { id title version } }";
/// `$id`, `$v` the expected version, optional `$t` title and `$c` content.
pub const UPDATE_PROJECT: &str = "mutation($id: ID!, $v: Int!, $t: String, $c: JSON) { updateProject(input: {id: $id, expectedVersion: $v, title: $t, content: $c}) { id title version } }";
/// `$id`.
pub const GET_PROJECT: &str = "query($id: ID!) { project(id: $id) { id title version content } }";
/// `$id`, optional `$v` the expected version.
pub const DELETE_PROJECT: &str =
    "mutation($id: ID!, $v: Int) { deleteProject(input: {id: $id, expectedVersion: $v}) }";
/// `$f` the file (multipart), `$t` the asset type, optional `$m` the md5 the client expects.
pub const UPLOAD_ASSET: &str = "mutation($f: Upload!, $t: AssetType!, $m: String) { uploadAsset(input: {file: $f, assetType: $t, md5: $m}) { created asset { id md5 assetType sha256 size contentType url } } }";

/// What a call got instead of its data.
#[derive(Debug, Clone)]
pub enum CallError {
    /// A GraphQL error: its `extensions.code` and the whole error object.
    Graphql {
        status: u16,
        code: String,
        error: Value,
    },
    /// No answer, or one that is not a GraphQL response.
    Transport(String),
}

impl CallError {
    /// The error's `extensions.code` (`"<transport>"` when there was no GraphQL answer).
    pub fn code(&self) -> &str {
        match self {
            CallError::Graphql { code, .. } => code,
            CallError::Transport(_) => "<transport>",
        }
    }

    /// The GraphQL error object (`Null` for a transport failure).
    pub fn error(&self) -> &Value {
        match self {
            CallError::Graphql { error, .. } => error,
            CallError::Transport(_) => &Value::Null,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Graphql {
                status,
                code,
                error,
            } => write!(f, "{code} (HTTP {status}): {error}"),
            CallError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Project {
    pub id: String,
    pub title: String,
    pub version: i64,
    /// Present when the operation selected it.
    #[serde(default)]
    pub content: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    pub id: String,
    pub md5: String,
    pub asset_type: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Uploaded {
    pub created: bool,
    pub asset: Asset,
}

/// The body of a GraphQL response: its data, or its first error.
pub fn into_result(status: u16, body: Value) -> Result<Value, CallError> {
    match body.get("errors").and_then(|e| e.get(0)) {
        Some(error) => Err(CallError::Graphql {
            status,
            code: error["extensions"]["code"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned(),
            error: error.clone(),
        }),
        None if (200..300).contains(&status) && body.get("data").is_some() => {
            Ok(body["data"].clone())
        }
        None => Err(CallError::Transport(format!("HTTP {status}: {body}"))),
    }
}

fn field<T: serde::de::DeserializeOwned>(data: Value, name: &str) -> Result<T, CallError> {
    serde_json::from_value(data[name].clone())
        .map_err(|e| CallError::Transport(format!("unexpected `{name}` in {data}: {e}")))
}

impl Client {
    /// Any operation: its `data`, or the first error.
    pub async fn call(&self, query: &str, variables: Value) -> Result<Value, CallError> {
        let resp = self
            .request()
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| CallError::Transport(format!("HTTP {status}, body not JSON: {e}")))?;
        into_result(status, body)
    }

    pub async fn try_create_project(
        &self,
        title: &str,
        content: Value,
    ) -> Result<Project, CallError> {
        let data = self
            .call(CREATE_PROJECT, json!({ "t": title, "c": content }))
            .await?;
        field(data, "createProject")
    }

    /// `title` and `content` are left as they are when `None`.
    pub async fn update_project(
        &self,
        id: &str,
        expected_version: i64,
        title: Option<&str>,
        content: Option<Value>,
    ) -> Result<Project, CallError> {
        let data = self
            .call(
                UPDATE_PROJECT,
                json!({ "id": id, "v": expected_version, "t": title, "c": content }),
            )
            .await?;
        field(data, "updateProject")
    }

    /// `None` when the project is absent or not visible to this user.
    pub async fn get_project(&self, id: &str) -> Result<Option<Project>, CallError> {
        let data = self.call(GET_PROJECT, json!({ "id": id })).await?;
        field(data, "project")
    }

    pub async fn delete_project(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<String, CallError> {
        let data = self
            .call(DELETE_PROJECT, json!({ "id": id, "v": expected_version }))
            .await?;
        field(data, "deleteProject")
    }

    pub async fn upload_asset(
        &self,
        bytes: Vec<u8>,
        asset_type: &str,
    ) -> Result<Uploaded, CallError> {
        let resp = self
            .request()
            .multipart(Client::upload_form(bytes, asset_type, None))
            .send()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| CallError::Transport(format!("HTTP {status}, body not JSON: {e}")))?;
        field(into_result(status, body)?, "uploadAsset")
    }
}
