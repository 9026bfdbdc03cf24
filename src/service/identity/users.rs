//! Users, groups, memberships and API tokens. Get-or-create is `INSERT … ON CONFLICT DO
//! NOTHING` followed by a read of the winner, so racing first logins never duplicate a user.

use base64::Engine;
use entity::{api_token, group, group_member, user};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
};

use super::{announce_authority_change, await_authority_propagated, hash_token};
use crate::{
    domain::{GroupId, Role, UserId},
    error::{AppError, AppResult},
    service::{Services, now},
};

/// Provider name for users and groups created from the CLI rather than an identity provider.
pub const LOCAL_PROVIDER: &str = "local";

/// Finds the user of (provider, subject) or creates it, race-free. The role of an existing
/// user is updated only when `role` is given; a change is announced to every process (it
/// takes effect on the next request, even where the user's token is cached).
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
            tracing::info!(
                user.id = existing.id,
                from = existing.role.as_str(),
                to = role.as_str(),
                "user_role_changed"
            );
            announce_authority_change(conn, &format!("role:{}", existing.id)).await?;
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

/// A local user's name as given on the command line: trimmed, and not empty (`field` names
/// the argument in the error).
pub fn local_name(field: &'static str, raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::bad_input(
            field,
            format!("{field} must name a user (it is empty)"),
        ));
    }
    Ok(name.to_owned())
}

/// The local user named `name` (see [`local_name`]), created if absent, in `conn`; with
/// `role`, the user's role is set (a change is announced, see [`get_or_create_user`]).
pub async fn local_user_in<C: ConnectionTrait>(
    conn: &C,
    name: &str,
    role: Option<Role>,
) -> AppResult<user::Model> {
    get_or_create_user(conn, LOCAL_PROVIDER, name, name, role).await
}

/// [`local_user_in`] in a transaction of its own; a role change has reached every process
/// when this returns.
pub async fn local_user(svc: &Services, name: &str, role: Option<Role>) -> AppResult<user::Model> {
    let user = svc
        .db
        .write(|txn| {
            let name = name.to_owned();
            Box::pin(async move { local_user_in(txn, &name, role).await })
        })
        .await?;
    if role.is_some() {
        // The role may have changed: let every process hear it before answering.
        await_authority_propagated(svc).await;
    }
    Ok(user)
}

/// `atelier token create`: the local user named `name` (created if absent) and a new token.
pub async fn create_user_token(
    svc: &Services,
    name: &str,
    role: Option<Role>,
) -> AppResult<(user::Model, String)> {
    let user = local_user(svc, &local_name("user", name)?, role).await?;
    let token = create_token(svc, UserId(user.id), "cli").await?;
    Ok((user, token))
}

/// `atelier token revoke TOKEN`: deletes that token; the next request that presents it is
/// refused, in every process. An unknown (or already revoked) token is `NOT_FOUND`.
pub async fn revoke_token(svc: &Services, token: &str) -> AppResult<()> {
    let hash = hash_token(token.trim());
    let revoked = svc
        .db
        .write(|txn| {
            let hash = hash.clone();
            Box::pin(async move {
                let deleted = api_token::Entity::delete_many()
                    .filter(api_token::Column::TokenHash.eq(&hash))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if deleted > 0 {
                    announce_authority_change(txn, "revoke:token").await?;
                }
                Ok(deleted)
            })
        })
        .await?;
    if revoked == 0 {
        return Err(AppError::NotFound("token"));
    }
    await_authority_propagated(svc).await;
    tracing::info!("token_revoked");
    Ok(())
}

/// `atelier token revoke --user NAME`: deletes every token of the local user `name`; returns
/// how many. An unknown user is `NOT_FOUND`; a user without tokens revokes 0.
pub async fn revoke_user_tokens(svc: &Services, name: &str) -> AppResult<u64> {
    let name = local_name("user", name)?;
    let (user_id, revoked) = svc
        .db
        .write(|txn| {
            let name = name.clone();
            Box::pin(async move {
                let user = user::Entity::find()
                    .filter(user::Column::Provider.eq(LOCAL_PROVIDER))
                    .filter(user::Column::Subject.eq(&name))
                    .one(txn)
                    .await?
                    .ok_or(AppError::NotFound("user"))?;
                let deleted = api_token::Entity::delete_many()
                    .filter(api_token::Column::UserId.eq(user.id))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if deleted > 0 {
                    announce_authority_change(txn, &format!("revoke:user:{}", user.id)).await?;
                }
                Ok((user.id, deleted))
            })
        })
        .await?;
    if revoked > 0 {
        await_authority_propagated(svc).await;
    }
    tracing::info!(user.id = user_id, revoked, "user_tokens_revoked");
    Ok(revoked)
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
    let user_name = local_name("user", user_name)?;
    svc.db
        .write(|txn| {
            let user_name = user_name.clone();
            Box::pin(async move {
                group::Entity::find_by_id(group.0)
                    .lock_shared()
                    .one(txn)
                    .await?
                    .ok_or(AppError::NotFound("group"))?;
                let user = local_user_in(txn, &user_name, None).await?;
                add_member(txn, group, UserId(user.id)).await
            })
        })
        .await
}

/// A user by id, read in `conn` (a transaction).
pub async fn user_in<C: ConnectionTrait>(conn: &C, id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(id.0).one(conn).await?)
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
