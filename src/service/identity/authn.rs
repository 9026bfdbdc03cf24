//! Bearer-token authentication: a token's hash is looked up (the cache first, see
//! [`super::cache`]), and a dead pooled connection never fails the request.

use entity::{api_token, user};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

use crate::{
    domain::{Role, UserId, Viewer},
    error::{AppError, AppResult},
    service::Services,
};

/// Resolves a bearer token to its user. An unknown, expired or revoked token is an error, not
/// an anonymous request: a client with a stale token must learn to sign in again.
///
/// Authority takes effect on the next request: the cache answers only
/// while this process hears every authority change (see [`TokenCache`]); otherwise the
/// database does.
pub async fn authenticate(svc: &Services, token: &str) -> AppResult<Viewer> {
    authenticate_hashed(svc, hash_token(token)).await
}

/// [`authenticate`] by the token's SHA-256 (what an editing session remembers of the API
/// token it was opened with), through the same cache.
pub async fn authenticate_hashed(svc: &Services, hash: String) -> AppResult<Viewer> {
    let ticket = match svc.tokens.get(&hash) {
        Ok(viewer) => return Ok(viewer),
        Err(ticket) => ticket,
    };
    let mut attempt = 0;
    let found = loop {
        attempt += 1;
        let found = api_token::Entity::find()
            .filter(api_token::Column::TokenHash.eq(&hash))
            .find_also_related(user::Entity)
            .one(svc.db.conn())
            .await
            .map_err(AppError::from);
        match found {
            // A read is always safe to run again: a pooled connection that died behind the
            // pool's back (a database restart, a terminated backend) must not fail the
            // request; the next attempt draws another connection, or a new one.
            Err(e) if e.is_connection_lost() && attempt < LOOKUP_ATTEMPTS => {
                tracing::info!(attempt, error = %e, "token_lookup_retry_after_connection_loss");
            }
            other => break other?,
        }
    };
    match found {
        Some((token, Some(user))) if token.expires_at.is_none_or(|at| at > chrono::Utc::now()) => {
            let viewer = Viewer {
                id: UserId(user.id),
                role: Role::from_db(&user.role),
            };
            svc.tokens.put(ticket, hash, viewer, token.expires_at);
            Ok(viewer)
        }
        _ => Err(AppError::Unauthenticated),
    }
}

/// The PostgreSQL channel on which every authority change (role change, token revocation) is
/// How many times a token lookup runs when its connection turns out to be dead: more than the
/// pool holds (32 by default), since after a database restart every pooled connection is dead
/// and each fails at once. When no connection can be had at all, the first attempt says so.
const LOOKUP_ATTEMPTS: u32 = 64;

/// SHA-256 of a token, hex: what the database stores instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
