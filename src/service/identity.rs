//! Users, groups, memberships and API tokens. Get-or-create is `INSERT … ON CONFLICT DO
//! NOTHING` followed by a read of the winner, so racing first logins never duplicate a user.

use base64::Engine;
use entity::{api_token, group, group_member, user};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
};
use sha2::{Digest, Sha256};

use crate::{
    domain::{GroupId, Role, UserId, Viewer},
    error::{AppError, AppResult},
    service::{Services, now},
};

/// Provider name for users and groups created from the CLI rather than an identity provider.
pub const LOCAL_PROVIDER: &str = "local";

/// Resolves a bearer token to its user. An unknown or expired token is an error, not an
/// anonymous request: a client with a stale token must learn to sign in again.
pub async fn authenticate(svc: &Services, token: &str) -> AppResult<Viewer> {
    let hash = hash_token(token);
    if let Some(viewer) = svc.tokens.get(&hash) {
        return Ok(viewer);
    }
    let found = api_token::Entity::find()
        .filter(api_token::Column::TokenHash.eq(&hash))
        .find_also_related(user::Entity)
        .one(svc.db.conn())
        .await?;
    match found {
        Some((token, Some(user))) if token.expires_at.is_none_or(|at| at > chrono::Utc::now()) => {
            let viewer = Viewer {
                id: UserId(user.id),
                role: Role::from_db(&user.role),
            };
            svc.tokens.put(hash, viewer, token.expires_at);
            Ok(viewer)
        }
        _ => Err(AppError::Unauthenticated),
    }
}

/// How long a resolved token is trusted without asking the database again. Bounds how late a
/// role change (and, later, a revocation in another process) takes effect.
const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Token hash → viewer, for `TOKEN_CACHE_TTL`. An optimisation only: every miss and every
/// expiry goes to the database, which stays the source of truth.
#[derive(Default)]
pub struct TokenCache(
    std::sync::Mutex<std::collections::HashMap<String, (Viewer, std::time::Instant)>>,
);

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Viewer> {
        let map = self.0.lock().expect("token cache lock");
        map.get(hash)
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(v, _)| *v)
    }

    fn put(&self, hash: String, viewer: Viewer, expires_at: Option<chrono::DateTime<chrono::Utc>>) {
        let mut ttl = TOKEN_CACHE_TTL;
        if let Some(at) = expires_at {
            ttl = ttl.min((at - chrono::Utc::now()).to_std().unwrap_or_default());
        }
        let mut map = self.0.lock().expect("token cache lock");
        if map.len() >= TOKEN_CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (viewer, std::time::Instant::now() + ttl));
    }
}

/// SHA-256 of a token, hex: what the database stores instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Finds the user of (provider, subject) or creates it, race-free. The role of an existing
/// user is updated only when `role` is given.
pub async fn get_or_create_user<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    subject: &str,
    display_name: &str,
    role: Option<Role>,
) -> AppResult<user::Model> {
    let (existing, _) = crate::db::get_or_create(
        conn,
        user::ActiveModel {
            provider: Set(provider.to_owned()),
            subject: Set(subject.to_owned()),
            display_name: Set(display_name.to_owned()),
            role: Set(role.unwrap_or(Role::Student).as_str().to_owned()),
            created_at: Set(now()),
            ..Default::default()
        },
        [user::Column::Provider, user::Column::Subject],
        user::Entity::find()
            .filter(user::Column::Provider.eq(provider))
            .filter(user::Column::Subject.eq(subject)),
    )
    .await?;
    match role {
        Some(role) if existing.role != role.as_str() => {
            let mut active: user::ActiveModel = existing.into();
            active.role = Set(role.as_str().to_owned());
            Ok(sea_orm::ActiveModelTrait::update(active, conn).await?)
        }
        _ => Ok(existing),
    }
}

/// Creates a new random bearer token for a user; returns the token (shown once, never stored).
pub async fn create_token(svc: &Services, user: UserId, name: &str) -> AppResult<String> {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let token = format!(
        "atl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    api_token::Entity::insert(api_token::ActiveModel {
        user_id: Set(user.0),
        token_hash: Set(hash_token(&token)),
        name: Set(name.to_owned()),
        created_at: Set(now()),
        expires_at: Set(None),
        ..Default::default()
    })
    .exec(svc.db.conn())
    .await?;
    Ok(token)
}

/// `atelier token create`: the local user named `name` (created if absent) and a new token.
pub async fn create_user_token(
    svc: &Services,
    name: &str,
    role: Option<Role>,
) -> AppResult<(user::Model, String)> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AppError::bad_input("user", "user name must not be empty"));
    }
    let (name, role) = (name.to_owned(), role);
    let user = svc
        .db
        .write(|txn| {
            let name = name.clone();
            Box::pin(
                async move { get_or_create_user(txn, LOCAL_PROVIDER, &name, &name, role).await },
            )
        })
        .await?;
    let token = create_token(svc, UserId(user.id), "cli").await?;
    Ok((user, token))
}

/// Finds the group of (provider, external_id) or creates it, race-free.
pub async fn get_or_create_group<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    external_id: &str,
    name: &str,
) -> AppResult<group::Model> {
    let (group, _) = crate::db::get_or_create(
        conn,
        group::ActiveModel {
            provider: Set(provider.to_owned()),
            external_id: Set(external_id.to_owned()),
            name: Set(name.to_owned()),
            created_at: Set(now()),
            ..Default::default()
        },
        [group::Column::Provider, group::Column::ExternalId],
        group::Entity::find()
            .filter(group::Column::Provider.eq(provider))
            .filter(group::Column::ExternalId.eq(external_id)),
    )
    .await?;
    Ok(group)
}

/// `atelier group create NAME`: the local group of that name, created if absent.
pub async fn create_local_group(svc: &Services, name: &str) -> AppResult<group::Model> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::bad_input("name", "group name must not be empty"));
    }
    svc.db
        .write(|txn| {
            let name = name.clone();
            Box::pin(async move { get_or_create_group(txn, LOCAL_PROVIDER, &name, &name).await })
        })
        .await
}

/// Adds a user to a group; adding an existing member is a no-op.
pub async fn add_member<C: ConnectionTrait>(
    conn: &C,
    group: GroupId,
    user: UserId,
) -> AppResult<()> {
    group_member::Entity::insert(group_member::ActiveModel {
        group_id: Set(group.0),
        user_id: Set(user.0),
        created_at: Set(now()),
    })
    .on_conflict_do_nothing_on([group_member::Column::GroupId, group_member::Column::UserId])
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// `atelier group add-member GROUP_ID USER_NAME` (the local user is created if absent).
pub async fn add_local_member(svc: &Services, group: GroupId, user_name: &str) -> AppResult<()> {
    let user_name = user_name.trim().to_owned();
    if user_name.is_empty() {
        return Err(AppError::bad_input("user", "user name must not be empty"));
    }
    svc.db
        .write(|txn| {
            let user_name = user_name.clone();
            Box::pin(async move {
                group::Entity::find_by_id(group.0)
                    .lock_shared()
                    .one(txn)
                    .await?
                    .ok_or(AppError::NotFound("group"))?;
                let user =
                    get_or_create_user(txn, LOCAL_PROVIDER, &user_name, &user_name, None).await?;
                add_member(txn, group, UserId(user.id)).await
            })
        })
        .await
}

/// A user by id.
pub async fn user(svc: &Services, id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(id.0).one(svc.db.conn()).await?)
}

/// The groups a user belongs to, by name.
pub async fn groups_of(svc: &Services, user: UserId) -> AppResult<Vec<group::Model>> {
    use sea_orm::QueryOrder;
    let ids: Vec<i64> = group_member::Entity::find()
        .select_only()
        .column(group_member::Column::GroupId)
        .filter(group_member::Column::UserId.eq(user.0))
        .into_tuple()
        .all(svc.db.conn())
        .await?;
    Ok(group::Entity::find()
        .filter(group::Column::Id.is_in(ids))
        .order_by_asc(group::Column::Name)
        .all(svc.db.conn())
        .await?)
}
