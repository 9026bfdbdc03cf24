//! Who calls, as axum extractors: a handler names what it needs in its signature and never
//! reads credentials itself. [`MaybeCaller`] lets anonymous requests through; [`Caller`]
//! needs a signed-in viewer. Both reject with an [`AppError`] (a malformed or unknown
//! credential is `UNAUTHENTICATED`, a lookup that failed `UNAVAILABLE`); a route that answers
//! plain text takes `Result<Caller, AppError>` and words the refusal itself.

use axum::{extract::FromRequestParts, http::HeaderMap, http::request::Parts};

use super::{AppState, auth};
use crate::{
    domain::Viewer,
    error::{AppError, AppResult},
    service::credential::Credential,
};

/// The caller of one request, signed in or anonymous.
#[derive(Clone, Copy, Debug)]
pub struct MaybeCaller {
    pub viewer: Option<Viewer>,
    /// The credential was the session cookie (the browser may have sent it on its own).
    pub by_cookie: bool,
}

impl MaybeCaller {
    /// Resolves the request's credential (see `auth::credential`) to its viewer. For routes
    /// that need to know only sometimes (an asset under the `public` policy asks nobody).
    pub async fn of(state: &AppState, headers: &HeaderMap) -> AppResult<MaybeCaller> {
        let credential = auth::credential(headers)?;
        Ok(MaybeCaller {
            viewer: credential.viewer(&state.services).await?,
            by_cookie: matches!(credential, Credential::Cookie(_)),
        })
    }
}

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        MaybeCaller::of(state, &parts.headers).await
    }
}

/// A signed-in caller; an anonymous request is `UNAUTHENTICATED`.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub Viewer);

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let caller = MaybeCaller::of(state, &parts.headers).await?;
        caller.viewer.map(Caller).ok_or(AppError::Unauthenticated)
    }
}
