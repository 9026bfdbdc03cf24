//! Sign-in sessions: what a successful OpenID Connect sign-in creates, what a request's session
//! cookie (or `Bearer ses_…` token) resolves to, one refresh of the provider's tokens at a
//! time, and logout.
//!
//! - A sign-in syncs the user (get-or-create by (issuer, subject); name, email and role
//!   updated) and their memberships (exactly the groups of the claim: adds and removes) in the
//!   transaction that creates the session, with the user's row locked.
//! - A request whose session's provider access token has expired refreshes it first. The
//!   session row is locked (`FOR UPDATE`; SQLite: the write lock) and re-read, so however many
//!   requests, tabs or processes arrive at once, one calls the provider and the others reuse
//!   its result. A refusal ends the session; an unreachable provider leaves it as it was.
//! - Logout, and a refusal, end the session in every process on the next request (the
//!   authority-change announcement clears every token cache).

use std::sync::Arc;

use base64::Engine;
use entity::{group, group_member, oidc_login, session, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    EntityTrait, QueryFilter, QuerySelect,
};

use crate::{
    domain::{Role, UserId, Viewer},
    error::{AppError, AppResult},
    service::{
        Services,
        identity::{self, announce_authority_change, await_authority_propagated, hash_token},
        now,
        oidc::{Grant, Identity, LoginStart, Oidc, RefreshFailure},
        return_to::safe_return_to,
    },
};

/// Session tokens start with this; API tokens with `atl_`.
pub const SESSION_PREFIX: &str = "ses_";

/// The cache key of a session token (kept apart from API token hashes).
fn cache_key(hash: &str) -> String {
    format!("session:{hash}")
}

fn oidc(svc: &Services) -> AppResult<Arc<Oidc>> {
    svc.oidc
        .clone()
        .ok_or_else(|| AppError::NotFound("OpenID Connect sign-in (not configured on this server)"))
}

/// `/auth/login`: records the sign-in's state, nonce and PKCE verifier, and returns where to
/// send the browser.
pub async fn begin_login(svc: &Services, return_to: Option<&str>) -> AppResult<LoginStart> {
    let oidc = oidc(svc)?;
    let return_to = match return_to.filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(safe_return_to(r, &oidc.public_url).ok_or_else(|| {
            AppError::bad_input(
                "return_to",
                "return_to must be a path on this server (or a URL of its own origin)",
            )
        })?),
    };
    let start = oidc.start().await?;
    let at = now();
    let row = oidc_login::ActiveModel {
        state_hash: Set(hash_token(&start.state)),
        nonce: Set(start.nonce.clone()),
        pkce_verifier: Set(oidc.secrets.seal(&start.pkce_verifier, "pkce")),
        return_to: Set(return_to),
        created_at: Set(at),
        expires_at: Set(at + chrono::Duration::from_std(super::oidc::LOGIN_TTL).unwrap_or_default()),
    };
    svc.db
        .write(|txn| {
            let row = row.clone();
            Box::pin(async move {
                // Sign-ins nobody finished are forgotten here rather than by a sweeper.
                oidc_login::Entity::delete_many()
                    .filter(oidc_login::Column::ExpiresAt.lt(now()))
                    .exec(txn)
                    .await?;
                oidc_login::Entity::insert(row)
                    .exec_without_returning(txn)
                    .await?;
                Ok(())
            })
        })
        .await?;
    Ok(start)
}

/// What a finished sign-in gives the browser.
pub struct SignedIn {
    pub token: String,
    pub return_to: Option<String>,
    pub user: UserId,
}

/// `/auth/callback`: claims the sign-in by its state (once: the row is deleted), checks that
/// this browser started it (`browser_state`, from its cookie), exchanges the code and verifies
/// the ID token, then creates the user, memberships and session in one transaction.
pub async fn finish_login(
    svc: &Services,
    state: &str,
    code: &str,
    browser_state: Option<&str>,
) -> AppResult<SignedIn> {
    let oidc = oidc(svc)?;
    let refused = |why: &str| AppError::bad_input("state", why.to_owned());
    // The state must be the one this browser was sent off with: a callback link made in
    // another browser (login CSRF, a stolen code) is refused before the row is touched.
    if browser_state != Some(state) {
        return Err(refused(
            "this sign-in was not started in this browser (state does not match); sign in again",
        ));
    }
    let hash = hash_token(state);
    let claimed = svc
        .db
        .write(|txn| {
            let hash = hash.clone();
            Box::pin(async move {
                Ok(oidc_login::Entity::delete_many()
                    .filter(oidc_login::Column::StateHash.eq(hash))
                    .exec_with_returning(txn)
                    .await?)
            })
        })
        .await?;
    let Some(login) = claimed.into_iter().next() else {
        tracing::info!("oidc_callback_unknown_state");
        return Err(refused(
            "this sign-in is unknown or was already used; sign in again",
        ));
    };
    if login.expires_at < now() {
        return Err(refused("this sign-in took too long; sign in again"));
    }
    let verifier = oidc.secrets.open(&login.pkce_verifier, "pkce")?;
    let (identity, grant) = oidc.exchange(code, &verifier, &login.nonce).await?;
    let token = format!(
        "{SESSION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let token_hash = hash_token(&token);
    let provider = oidc.settings.issuer.clone();
    let user = svc
        .db
        .write(|txn| {
            let (identity, grant, provider, token_hash, oidc) = (
                identity.clone(),
                grant.clone(),
                provider.clone(),
                token_hash.clone(),
                oidc.clone(),
            );
            Box::pin(async move {
                let (user, role_changed) = sync_identity(txn, &oidc, &provider, &identity).await?;
                let at = now();
                session::Entity::insert(session::ActiveModel {
                    user_id: Set(user.id),
                    access_token: Set(Some(oidc.secrets.seal(&grant.access_token, &token_hash))),
                    refresh_token: Set(grant
                        .refresh_token
                        .as_deref()
                        .map(|t| oidc.secrets.seal(t, &token_hash))),
                    token_hash: Set(token_hash),
                    expires_at: Set(grant.expires_at),
                    version: Set(1),
                    created_at: Set(at),
                    updated_at: Set(at),
                    provider: Set(provider),
                    ended_at: Set(None),
                    end_reason: Set(None),
                    ..Default::default()
                })
                .exec_without_returning(txn)
                .await?;
                Ok((user, role_changed))
            })
        })
        .await?;
    let (user, role_changed) = user;
    // A role change made by this sign-in holds for the user's other sessions and tokens too.
    // Only then: a sign-in that changed no authority (every first login of a student, most
    // sign-ins) has nothing for caches to forget, and waiting for every process would cost
    // each login a connection of its own (PostgreSQL) and clear every cache for nothing.
    if role_changed {
        await_authority_propagated(svc).await;
    }
    tracing::info!(user.id = user.id, "signed_in");
    Ok(SignedIn {
        token,
        // Checked again on the way out: a row written before the rule was tightened (or by
        // anything else) must not send a signed-in browser elsewhere.
        return_to: login
            .return_to
            .and_then(|r| safe_return_to(&r, &oidc.public_url)),
        user: UserId(user.id),
    })
}

/// Makes the database say what the provider says of a user: the user (created if new; name
/// and email updated; teacher or student by the teacher groups, an admin stays an admin) and
/// their memberships in this provider's groups (exactly those of the claim). Locks the user's
/// row first, so concurrent sign-ins of one user apply one after the other. Also says whether
/// the role changed (announced to every process; the caller awaits it after the commit).
pub async fn sync_identity(
    txn: &DatabaseTransaction,
    oidc: &Oidc,
    provider: &str,
    identity: &Identity,
) -> AppResult<(user::Model, bool)> {
    let created = identity::get_or_create_user(
        txn,
        provider,
        &identity.subject,
        &identity.display_name,
        None,
    )
    .await?;
    let mut user = user::Entity::find_by_id(created.id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let role = match (Role::from_db(&user.role), &identity.groups) {
        (Role::Admin, _) => Role::Admin,
        (_, Some(groups)) if oidc.is_teacher(groups) => Role::Teacher,
        (_, Some(_)) => Role::Student,
        // No groups claim this time: the role stays as it was.
        (role, None) => role,
    };
    let name = if identity.display_name.is_empty() {
        user.display_name.clone()
    } else {
        identity.display_name.clone()
    };
    let role_changed = user.role != role.as_str();
    if user.display_name != name || user.email != identity.email || role_changed {
        if role_changed {
            tracing::info!(user.id = user.id, from = %user.role, to = role.as_str(), "user_role_changed");
            announce_authority_change(txn, &format!("role:{}", user.id)).await?;
        }
        let mut active: user::ActiveModel = user.into();
        active.display_name = Set(name);
        active.email = Set(identity.email.clone());
        active.role = Set(role.as_str().to_owned());
        user = active.update(txn).await?;
    }
    if let Some(groups) = &identity.groups {
        sync_memberships(txn, provider, UserId(user.id), groups).await?;
    }
    Ok((user, role_changed))
}

/// The user's memberships in `provider`'s groups become exactly `groups` (sorted by id, so
/// concurrent sign-ins sharing groups take their locks in one order). Groups of other
/// providers (the CLI's local groups) are left alone.
async fn sync_memberships(
    txn: &DatabaseTransaction,
    provider: &str,
    user: UserId,
    groups: &[(String, String)],
) -> AppResult<()> {
    let mut wanted = Vec::with_capacity(groups.len());
    for (external_id, name) in groups {
        let g = identity::get_or_create_group(txn, provider, external_id, name).await?;
        if g.name != *name {
            let mut active: group::ActiveModel = g.clone().into();
            active.name = Set(name.clone());
            active.update(txn).await?;
        }
        identity::add_member(txn, crate::domain::GroupId(g.id), user).await?;
        wanted.push(g.id);
    }
    let stale: Vec<i64> = group_member::Entity::find()
        .select_only()
        .column(group_member::Column::GroupId)
        .filter(group_member::Column::UserId.eq(user.0))
        .filter(
            group_member::Column::GroupId.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(group::Column::Id)
                    .from(group::Entity)
                    .and_where(group::Column::Provider.eq(provider))
                    .to_owned(),
            ),
        )
        .filter(group_member::Column::GroupId.is_not_in(wanted))
        .into_tuple()
        .all(txn)
        .await?;
    if !stale.is_empty() {
        tracing::info!(user.id = user.0, groups = ?stale, "memberships_removed");
        group_member::Entity::delete_many()
            .filter(group_member::Column::UserId.eq(user.0))
            .filter(group_member::Column::GroupId.is_in(stale))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Resolves a session token. Unknown, ended or too old: `UNAUTHENTICATED`. A provider access
/// token that has expired is refreshed first (see [`refresh`]).
pub async fn authenticate(svc: &Services, token: &str) -> AppResult<Viewer> {
    authenticate_hashed(svc, &hash_token(token)).await
}

/// [`authenticate`] by the token's SHA-256 (what an editing session remembers of the session
/// it was opened with), through the same cache.
pub async fn authenticate_hashed(svc: &Services, hash: &str) -> AppResult<Viewer> {
    // Without a provider there are no sessions to trust (sign-in was turned off).
    let oidc = oidc(svc).map_err(|_| AppError::Unauthenticated)?;
    let key = cache_key(hash);
    let ticket = match svc.tokens.get(&key) {
        Ok(viewer) => return Ok(viewer),
        Err(ticket) => ticket,
    };
    let found = session::Entity::find()
        .filter(session::Column::TokenHash.eq(hash))
        .one(svc.db.conn())
        .await?;
    let Some(s) = found.filter(|s| s.ended_at.is_none()) else {
        return Err(AppError::Unauthenticated);
    };
    let until = s.created_at + oidc.session_max_age;
    if until <= chrono::Utc::now() {
        return Err(AppError::Unauthenticated);
    }
    if s.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return refresh(svc, s.id).await;
    }
    let u = identity::user(svc, UserId(s.user_id))
        .await?
        .ok_or(AppError::Unauthenticated)?;
    let viewer = Viewer {
        id: UserId(u.id),
        role: Role::from_db(&u.role),
    };
    // Trusted no longer than the provider's access token is valid (then it is refreshed),
    // nor than the session lives.
    let trust_until = s.expires_at.map_or(until, |at| at.min(until));
    svc.tokens.put(ticket, key, viewer, Some(trust_until));
    Ok(viewer)
}

/// What a locked look at an expired session decided.
enum Refreshed {
    /// Someone else refreshed it while this request waited for the lock (or it refreshed now):
    /// the user, and whether this refresh changed their role.
    Current(i64, bool),
    /// The session is over (ended before, or the provider refused now).
    Over,
}

/// What the provider answered a refresh: new tokens (and who the user is now), or a refusal.
type ProviderAnswer = Result<(Grant, Option<Identity>), String>;

/// Refreshes a session's provider tokens, once however many requests ask at the same time.
async fn refresh(svc: &Services, session_id: i64) -> AppResult<Viewer> {
    let oidc = oidc(svc).map_err(|_| AppError::Unauthenticated)?;
    // A retried transaction (a lost connection before COMMIT) reuses what the provider already
    // answered: a refresh token is often single-use, so it is never sent twice.
    let answered: Arc<tokio::sync::Mutex<Option<ProviderAnswer>>> = Default::default();
    let outcome = svc
        .db
        .write(|txn| {
            let (answered, oidc) = (answered.clone(), oidc.clone());
            Box::pin(async move {
                let Some(s) = session::Entity::find_by_id(session_id)
                    .lock_exclusive()
                    .one(txn)
                    .await?
                else {
                    return Ok(Refreshed::Over);
                };
                if s.ended_at.is_some() {
                    return Ok(Refreshed::Over);
                }
                if s.expires_at.is_none_or(|at| at > chrono::Utc::now()) {
                    tracing::debug!(session.id = s.id, "session_refresh_reused");
                    return Ok(Refreshed::Current(s.user_id, false));
                }
                let mut answer = answered.lock().await;
                if answer.is_none() {
                    let Some(sealed) = s.refresh_token.as_deref() else {
                        end(txn, &s, "the provider's access token expired and there is no refresh token").await?;
                        return Ok(Refreshed::Over);
                    };
                    let refresh_token = oidc.secrets.open(sealed, &s.token_hash)?;
                    let user = identity::user_in(txn, UserId(s.user_id)).await?;
                    let subject = user.map(|u| u.subject).unwrap_or_default();
                    tracing::info!(session.id = s.id, "session_refresh");
                    *answer = Some(match oidc.refresh(&refresh_token, &subject).await {
                        Ok(ok) => Ok(ok),
                        Err(RefreshFailure::Refused(why)) => Err(why),
                        Err(RefreshFailure::Unreachable(why)) => {
                            tracing::warn!(session.id = s.id, error = %why, "session_refresh_unreachable");
                            return Err(AppError::Unavailable(format!(
                                "the identity provider cannot be reached to refresh the sign-in ({why}); retry shortly"
                            )));
                        }
                    });
                }
                match answer.as_ref().expect("answered above") {
                    Err(why) => {
                        tracing::info!(session.id = s.id, reason = %why, "session_refresh_refused");
                        end(txn, &s, &format!("the provider refused to refresh: {why}")).await?;
                        Ok(Refreshed::Over)
                    }
                    Ok((grant, identity)) => {
                        let mut role_changed = false;
                        if let Some(identity) = identity {
                            role_changed =
                                sync_identity(txn, &oidc, &s.provider, identity).await?.1;
                        }
                        let mut active: session::ActiveModel = s.clone().into();
                        active.access_token =
                            Set(Some(oidc.secrets.seal(&grant.access_token, &s.token_hash)));
                        active.refresh_token = Set(grant
                            .refresh_token
                            .as_deref()
                            .map(|t| oidc.secrets.seal(t, &s.token_hash)));
                        active.expires_at = Set(grant.expires_at);
                        active.version = Set(s.version + 1);
                        active.updated_at = Set(now());
                        active.update(txn).await?;
                        Ok(Refreshed::Current(s.user_id, role_changed))
                    }
                }
            })
        })
        .await?;
    match outcome {
        Refreshed::Over => {
            await_authority_propagated(svc).await;
            Err(AppError::Unauthenticated)
        }
        Refreshed::Current(user_id, role_changed) => {
            // The new role holds for the user's other sessions and tokens too, everywhere.
            if role_changed {
                await_authority_propagated(svc).await;
            }
            let u = identity::user(svc, UserId(user_id))
                .await?
                .ok_or(AppError::Unauthenticated)?;
            Ok(Viewer {
                id: UserId(u.id),
                role: Role::from_db(&u.role),
            })
        }
    }
}

/// Marks a session over, keeping its row (and the reason) for the audit trail, and forgets
/// its provider tokens.
async fn end<C: ConnectionTrait>(conn: &C, s: &session::Model, reason: &str) -> AppResult<()> {
    let mut active: session::ActiveModel = s.clone().into();
    active.ended_at = Set(Some(now()));
    active.end_reason = Set(Some(reason.to_owned()));
    active.access_token = Set(None);
    active.refresh_token = Set(None);
    active.updated_at = Set(now());
    active.update(conn).await?;
    announce_authority_change(conn, &format!("session:{}", s.id)).await
}

/// `POST /auth/logout`: ends the session; the next request that presents it is refused, in
/// every process. Ending an unknown or already ended session is not an error.
pub async fn logout(svc: &Services, token: &str) -> AppResult<()> {
    let hash = hash_token(token);
    let ended = svc
        .db
        .write(|txn| {
            let hash = hash.clone();
            Box::pin(async move {
                let Some(s) = session::Entity::find()
                    .filter(session::Column::TokenHash.eq(hash))
                    .lock_exclusive()
                    .one(txn)
                    .await?
                else {
                    return Ok(false);
                };
                if s.ended_at.is_some() {
                    return Ok(false);
                }
                end(txn, &s, "logout").await?;
                Ok(true)
            })
        })
        .await?;
    if ended {
        await_authority_propagated(svc).await;
        tracing::info!("signed_out");
    }
    Ok(())
}
