//! Credentials, and the authority of work that outlives one request.
//!
//! An HTTP request resolves its credential once: it ends a moment later. A WebSocket stays
//! open for hours, and a subscription runs as long, so what it may do must not be decided
//! once at the start: after a token revocation, a logout or a role change, the next operation
//! on the socket and the next event of a running subscription are authorized as a new request
//! would be. [`Credential`] is what the connection was opened with; [`Authority`] is what a
//! long-running operation asks, each time, for its current viewer. Both go through the same
//! cached lookups as every request (`identity::authenticate`, `sessions::authenticate`), whose
//! cache is cleared in every process by each authority change, so asking often is cheap and
//! never answers with authority that was taken away.

use std::sync::Arc;

use crate::{
    domain::Viewer,
    error::{AppError, AppResult},
    service::{Services, identity, sessions},
};

/// What a caller presented. The token itself is kept (never logged): it is resolved again
/// whenever its authority matters.
#[derive(Clone)]
pub enum Credential {
    /// Nothing: the caller is anonymous.
    Anonymous,
    /// `Authorization: Bearer …` (or `connectionParams`): an API token, or a session token
    /// (`ses_…`).
    Bearer(String),
    /// The session cookie a browser sign-in set.
    Cookie(String),
}

// Tokens never reach a log line.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Anonymous => "Anonymous",
            Credential::Bearer(_) => "Bearer(***)",
            Credential::Cookie(_) => "Cookie(***)",
        })
    }
}

impl Credential {
    /// The viewer this credential stands for now. A credential that is unknown, expired,
    /// revoked or logged out is UNAUTHENTICATED (never anonymous); anonymous stays anonymous.
    pub async fn viewer(&self, svc: &Services) -> AppResult<Option<Viewer>> {
        match self {
            Credential::Anonymous => Ok(None),
            Credential::Bearer(token) if token.starts_with(sessions::SESSION_PREFIX) => {
                sessions::authenticate(svc, token).await.map(Some)
            }
            Credential::Bearer(token) => identity::authenticate(svc, token).await.map(Some),
            Credential::Cookie(token) if token.starts_with(sessions::SESSION_PREFIX) => {
                sessions::authenticate(svc, token).await.map(Some)
            }
            Credential::Cookie(_) => Err(AppError::Unauthenticated),
        }
    }

    /// Whether there is a credential at all (one that can be revoked).
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credential::Anonymous)
    }
}

/// How long long-running work waits, after hearing of an authority change, before it checks
/// its own authority again: a random moment within this, so that the sockets and
/// subscriptions of a process do not all look their tokens up at the same instant (each
/// change empties the token cache), and the two notifications of one change are answered
/// with one check.
const RECHECK_SPREAD_MS: u64 = 250;

/// A random delay within [`RECHECK_SPREAD_MS`].
pub fn recheck_delay() -> std::time::Duration {
    std::time::Duration::from_millis(rand::random_range(0..=RECHECK_SPREAD_MS))
}

/// Who a long-running operation acts for, asked again before each thing it does.
#[derive(Clone, Debug)]
pub enum Authority {
    /// Decided once (an operation that ends with its request, or a background task).
    Fixed(Option<Viewer>),
    /// Resolved from the connection's credential every time.
    Live(Arc<Credential>),
}

impl Authority {
    /// The viewer now; UNAUTHENTICATED once the credential no longer holds.
    pub async fn viewer(&self, svc: &Services) -> AppResult<Option<Viewer>> {
        match self {
            Authority::Fixed(viewer) => Ok(*viewer),
            Authority::Live(credential) => credential.viewer(svc).await,
        }
    }
}
