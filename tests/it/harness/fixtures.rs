//! What tests start from: users with tokens, the smallest valid project, asset bytes.

use serde_json::{Value, json};

use super::{Backend, Client, TestServer};

pub use crate::api::UPLOAD_ASSET as UPLOAD;

impl TestServer {
    /// A client without a token.
    pub fn anonymous(&self) -> Client {
        Client::new(self.graphql_url(), None)
    }

    /// A client for the local user `name` (a student, created if absent) with a new token.
    pub async fn user(&self, name: &str) -> Client {
        self.user_with_role(name, "student").await
    }

    pub async fn user_with_role(&self, name: &str, role: &str) -> Client {
        let token = self.token_for(name, role).await;
        Client::new(self.graphql_url(), Some(token))
    }

    /// What `atelier token create --user NAME --role ROLE` does, written directly into the
    /// database (no process per user; cli.rs tests the command itself): the local user (its
    /// role set), and a new token of which only the SHA-256 (hex) is stored.
    pub async fn token_for(&self, name: &str, role: &str) -> String {
        use entity::{api_token, user};
        use sea_orm::{
            ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::OnConflict,
        };
        use sha2::Digest;

        let db = self.db().await;
        let now = chrono::Utc::now();
        user::Entity::insert(user::ActiveModel {
            provider: Set("local".to_owned()),
            subject: Set(name.to_owned()),
            display_name: Set(name.to_owned()),
            role: Set(role.to_owned()),
            created_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::columns([user::Column::Provider, user::Column::Subject])
                .update_column(user::Column::Role)
                .to_owned(),
        )
        .exec_without_returning(&db)
        .await
        .expect("insert user");
        let user_id = user::Entity::find()
            .filter(user::Column::Provider.eq("local"))
            .filter(user::Column::Subject.eq(name))
            .one(&db)
            .await
            .expect("read user")
            .expect("the user row")
            .id;
        if self.backend == Backend::Sqlite {
            // A role may have changed behind the server's back: tell its token cache, as
            // `atelier token create` does (see the server's `auth.epoch`).
            let stamp = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(self.data_dir().join("auth.epoch"), stamp).expect("auth epoch");
        }
        let token = format!("atl_test_{}", uuid::Uuid::new_v4().simple());
        api_token::Entity::insert(api_token::ActiveModel {
            user_id: Set(user_id),
            token_hash: Set(hex::encode(sha2::Sha256::digest(token.as_bytes()))),
            name: Set("test".to_owned()),
            created_at: Set(now),
            expires_at: Set(None),
            ..Default::default()
        })
        .exec_without_returning(&db)
        .await
        .expect("insert token");
        let _ = db.close().await;
        token
    }
}

/// The smallest valid Scratch 3 project.
pub fn empty_project() -> Value {
    json!({ "targets": [], "meta": { "semver": "3.0.0" } })
}

/// A small valid SVG whose bytes vary with `n`.
pub fn svg(n: usize) -> Vec<u8> {
    format!("<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{n}\" height=\"1\"><rect/></svg>").into_bytes()
}

/// PNG magic plus `n`-dependent filler.
pub fn png(n: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend(format!("filler-{n}").bytes());
    b
}

/// A RIFF/WAVE header plus `n`-dependent filler.
pub fn wav(n: usize) -> Vec<u8> {
    let mut b = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
    b.extend(format!("pcm-{n}").bytes());
    b
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}
