//! The request's credential and the cross-site checks a cookie needs, and the browser sign-in
//! routes. `extractor.rs` turns the credential into the caller handlers take.
//!
//! A request is authenticated by `Authorization: Bearer <token>` (an API token, or a session
//! token) or by the session cookie a sign-in sets. A cookie is sent by the browser on its own,
//! so a cookie-authenticated request must prove it was made by a page of an allowed origin
//! (cross-site request forgery): it needs `Content-Type: application/json` (multipart: an
//! `x-atelier-csrf` or `apollo-require-preflight` header), which no cross-site form can send
//! without a CORS preflight, and an `Origin`, when present, that is ours or allowed.

use axum::{
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::AppState;
use crate::{
    error::{AppError, AppResult},
    service::{self, credential::Credential, sessions::SESSION_PREFIX},
};

/// The session cookie.
pub const SESSION_COOKIE: &str = "atelier_session";
/// Ties a sign-in to the browser that started it: `atelier_login_<tag>` holds the `state`,
/// one cookie per sign-in, so two tabs signing in at once do not overwrite each other's.
fn login_cookie(state: &str) -> String {
    let tag = service::identity::hash_token(state);
    format!("atelier_login_{}", &tag[..16])
}
/// Headers that make a multipart request "non-simple", so a browser preflights it.
const CSRF_HEADERS: [&str; 2] = ["x-atelier-csrf", "apollo-require-preflight"];

/// What the browser-facing side needs to know about where it is served.
#[derive(Debug)]
pub struct WebConfig {
    pub public_url: String,
    /// `scheme://host[:port]` of the public URL.
    pub public_origin: String,
    /// Cookies get `Secure` when the public URL is https.
    pub secure_cookies: bool,
    /// Origins allowed to call with credentials (CORS), besides our own.
    pub cors_origins: Vec<HeaderValue>,
}

impl WebConfig {
    pub fn new(public_url: &str, cors_origins: &[String]) -> AppResult<WebConfig> {
        let origin_of = |u: &str, what: &'static str| -> AppResult<String> {
            let url = openidconnect::url::Url::parse(u).map_err(|e| {
                AppError::bad_input(what, format!("{what}: {u:?} is not a URL: {e}"))
            })?;
            match url.origin() {
                o @ openidconnect::url::Origin::Tuple(..) => Ok(o.ascii_serialization()),
                _ => Err(AppError::bad_input(
                    what,
                    format!("{what}: {u:?} has no origin"),
                )),
            }
        };
        let public_origin = origin_of(public_url, "ATELIER_PUBLIC_URL")?;
        let mut allowed = Vec::new();
        for o in cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
        {
            let origin = origin_of(o, "ATELIER_CORS_ORIGINS")?;
            if origin != o.trim_end_matches('/') {
                return Err(AppError::bad_input(
                    "ATELIER_CORS_ORIGINS",
                    format!(
                        "ATELIER_CORS_ORIGINS: {o:?} is not an origin (scheme://host[:port], no path)"
                    ),
                ));
            }
            allowed.push(HeaderValue::from_str(&origin).map_err(AppError::internal)?);
        }
        Ok(WebConfig {
            public_url: public_url.to_owned(),
            secure_cookies: public_url.starts_with("https://"),
            public_origin,
            cors_origins: allowed,
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        origin == self.public_origin || self.cors_origins.iter().any(|o| o == origin)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        ))
        .expect("cookie values are base64url")
    }
}

/// The request's credential: the `Authorization` header if present (a malformed one is
/// `UNAUTHENTICATED`, never anonymous), else the session cookie, else anonymous.
pub fn credential(headers: &HeaderMap) -> AppResult<Credential> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AppError::Unauthenticated)?;
        return Ok(Credential::Bearer(token.to_owned()));
    }
    Ok(match cookie(headers, SESSION_COOKIE) {
        Some(token) => Credential::Cookie(token.to_owned()),
        None => Credential::Anonymous,
    })
}

/// The value of a cookie of the request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Refuses a cookie-authenticated request whose `Origin` (when sent) is neither ours nor an
/// allowed one.
pub fn check_origin(web: &WebConfig, headers: &HeaderMap) -> AppResult<()> {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) if !web.origin_allowed(origin) => {
            tracing::info!(%origin, "cross_site_request_refused");
            Err(AppError::Forbidden(format!(
                "cross-site request refused: origin {origin} may not call this API with the \
                 session cookie (ATELIER_CORS_ORIGINS)"
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses a cookie-authenticated request a cross-site page could have made (see the module
/// documentation). `multipart` says whether the body is a multipart upload.
pub fn check_cross_site(web: &WebConfig, headers: &HeaderMap, multipart: bool) -> AppResult<()> {
    let refuse = |why: &str| {
        tracing::info!(reason = why, "cross_site_request_refused");
        Err(AppError::Forbidden(format!(
            "cross-site request refused: {why}"
        )))
    };
    check_origin(web, headers)?;
    if multipart {
        if !CSRF_HEADERS
            .iter()
            .any(|h| headers.get(*h).is_some_and(|v| !v.is_empty()))
        {
            return refuse(
                "a multipart request authenticated by the session cookie needs an \
                 `x-atelier-csrf` (or `apollo-require-preflight`) header",
            );
        }
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return refuse(
            "a request authenticated by the session cookie needs `Content-Type: application/json`",
        );
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct LoginParams {
    return_to: Option<String>,
}

/// `GET /auth/login[?return_to=/path]`: off to the provider.
pub async fn login(State(state): State<AppState>, Query(p): Query<LoginParams>) -> Response {
    match service::sessions::begin_login(&state.services, p.return_to.as_deref()).await {
        Err(e) => e.into_response(),
        Ok(start) => {
            let mut resp = redirect(&start.url);
            let max_age = service::oidc::LOGIN_TTL.as_secs() as i64;
            resp.headers_mut().append(
                header::SET_COOKIE,
                state
                    .web
                    .cookie(&login_cookie(&start.state), &start.state, "/auth", max_age),
            );
            resp
        }
    }
}

#[derive(Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback?code=…&state=…`: the provider sent the browser back.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<CallbackParams>,
) -> Response {
    if let Some(error) = p.error {
        let why = p.error_description.unwrap_or_default();
        tracing::info!(error = %error, description = %why, "oidc_callback_error");
        return declined(&format!(
            "the identity provider did not sign you in: {error} {why}"
        ));
    }
    let (Some(code), Some(s)) = (p.code, p.state) else {
        return AppError::bad_input("code", "the callback needs `code` and `state`")
            .into_response();
    };
    let browser_state = cookie(&headers, &login_cookie(&s));
    match service::sessions::finish_login(&state.services, &s, &code, browser_state).await {
        Err(e) => e.into_response(),
        Ok(signed_in) => {
            let to = signed_in.return_to.as_deref().unwrap_or("/graphql");
            let mut resp = redirect(to);
            let max_age = state
                .services
                .oidc
                .as_ref()
                .map_or(0, |o| o.session_max_age.num_seconds());
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                state
                    .web
                    .cookie(SESSION_COOKIE, &signed_in.token, "/", max_age),
            );
            h.append(
                header::SET_COOKIE,
                state.web.cookie(&login_cookie(&s), "", "/auth", 0),
            );
            resp
        }
    }
}

/// `POST /auth/logout`: ends the session (cookie or `Bearer ses_…`) in every process, and
/// clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = match bearer {
        Some(t) => Some(t),
        None => {
            let t = cookie(&headers, SESSION_COOKIE);
            // A cross-site page must not be able to sign the user out either.
            if t.is_some() && !logout_is_same_site(&state.web, &headers) {
                return AppError::Forbidden(
                    "cross-site request refused: logging out with the session cookie needs an \
                     `x-atelier-csrf` header or an allowed Origin"
                        .to_owned(),
                )
                .into_response();
            }
            t
        }
    };
    if let Some(token) = token.filter(|t| t.starts_with(SESSION_PREFIX))
        && let Err(e) = service::sessions::logout(&state.services, token).await
    {
        return e.into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        state.web.cookie(SESSION_COOKIE, "", "/", 0),
    );
    resp
}

fn logout_is_same_site(web: &WebConfig, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => web.origin_allowed(origin),
        None => CSRF_HEADERS
            .iter()
            .any(|h| headers.get(*h).is_some_and(|v| !v.is_empty())),
    }
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    match HeaderValue::from_str(to) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => AppError::internal("redirect target is not a header value").into_response(),
    }
}

/// The CORS policy: only the configured origins, with credentials.
pub fn cors(web: &WebConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, Method};
    if web.cors_origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(
                web.cors_origins.clone(),
            ))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-atelier-csrf"),
                HeaderName::from_static("apollo-require-preflight"),
                HeaderName::from_static("x-request-id"),
                // The Scratch editor's backpack credential.
                HeaderName::from_static("x-token"),
            ])
            .expose_headers([
                HeaderName::from_static("idempotent-replayed"),
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// A sign-in the provider declined, in the shape of every other error.
fn declined(message: &str) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": "UNAUTHENTICATED" } }]
    });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}
