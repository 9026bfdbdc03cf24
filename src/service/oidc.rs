//! The OpenID Connect relying party: the authorization-code flow with PKCE, ID token
//! verification, and talking to the provider's token and userinfo endpoints. What a sign-in
//! or a refresh *does* to users, groups and sessions lives in `service::sessions`.
//!
//! A sign-in in progress is a row (`oidc_logins`), not process memory: the browser may come
//! back to another `atelier serve` process, and deleting the row is how its callback claims
//! it, exactly once.

use std::{collections::HashMap, time::Duration};

use openidconnect::{
    AdditionalClaims, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse, SubjectIdentifier,
    TokenResponse,
    core::{
        CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
        CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
        CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
        CoreTokenIntrospectionResponse, CoreTokenType,
    },
};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};

/// Every claim the provider sends beyond the standard ones; the groups claim's name is
/// configurable, so it is looked up here by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type ProviderTokens = StandardTokenResponse<IdFields, CoreTokenType>;
type Client = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    ProviderTokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What `atelier serve` was told about its provider.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back: `<public url>/auth/callback`.
    pub redirect_url: String,
    pub scopes: Vec<String>,
    /// The `prompt` values every authorization request carries (`consent`: see
    /// `ATELIER_OIDC_PROMPT`).
    pub prompt: Vec<String>,
    pub groups_claim: String,
    /// Members of these groups (by external id or name) are teachers.
    pub teacher_groups: Vec<String>,
}

/// Who the provider says signed in.
#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: String,
    /// Empty: the provider named nobody this time (the user's name is left as it was).
    pub display_name: String,
    pub email: Option<String>,
    /// (external id, name), as the groups claim lists them. `None`: the provider said nothing
    /// about groups this time (memberships are left as they are).
    pub groups: Option<Vec<(String, String)>>,
}

/// The provider's tokens for a session.
#[derive(Clone, Debug)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a refresh did not produce new tokens.
#[derive(Debug)]
pub enum RefreshFailure {
    /// The provider answered and refused (`invalid_grant`: revoked, expired, the user was
    /// removed): the session is over.
    Refused(String),
    /// The provider could not be reached or answered nonsense: try again later.
    Unreachable(String),
}

/// How long discovered metadata (and its signing keys) is used before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A sign-in must come back within this long.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Every call to the provider gives up after this long: a refresh holds a session's row lock.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Oidc {
    pub settings: OidcSettings,
    /// Seals the provider tokens (and PKCE verifiers) kept in the database.
    pub secrets: crate::service::secrets::SecretBox,
    /// This server's public URL (`ATELIER_PUBLIC_URL`): `return_to` must stay on its origin.
    pub public_url: String,
    /// A session ends this long after sign-in, however often it is refreshed.
    pub session_max_age: chrono::Duration,
    http: openidconnect::reqwest::Client,
    client: tokio::sync::Mutex<Option<(Client, std::time::Instant)>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.settings.issuer)
            .finish()
    }
}

/// What `/auth/login` sends the browser to, and the state it must come back with.
pub struct LoginStart {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl Oidc {
    pub fn new(
        settings: OidcSettings,
        secrets: crate::service::secrets::SecretBox,
        public_url: String,
        session_max_age: chrono::Duration,
    ) -> AppResult<Oidc> {
        IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| AppError::internal(format!("ATELIER_OIDC_ISSUER: {e}")))?;
        RedirectUrl::new(settings.redirect_url.clone())
            .map_err(|e| AppError::internal(format!("ATELIER_PUBLIC_URL: {e}")))?;
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects from the provider's endpoints invites SSRF.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(AppError::internal)?;
        Ok(Oidc {
            settings,
            secrets,
            public_url,
            session_max_age,
            http,
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The provider's client from discovery, cached for [`METADATA_TTL`]; `fresh` forces a
    /// new discovery (the provider rotated its signing keys).
    async fn client(&self, fresh: bool) -> AppResult<Client> {
        let mut cached = self.client.lock().await;
        if let Some((client, at)) = cached.as_ref()
            && !fresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(client.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(AppError::internal)?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, issuer = %self.settings.issuer, "oidc_discovery_failed");
                AppError::Unavailable(format!(
                    "the identity provider cannot be reached ({e}); try again shortly"
                ))
            })?;
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.settings.redirect_url.clone()).map_err(AppError::internal)?,
        );
        *cached = Some((client.clone(), std::time::Instant::now()));
        Ok(client)
    }

    /// Where to send the browser: the provider's authorization endpoint with a fresh state,
    /// nonce and PKCE (S256) challenge.
    pub async fn start(&self) -> AppResult<LoginStart> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.settings.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        for prompt in &self.settings.prompt {
            request = request.add_prompt(match prompt.as_str() {
                "none" => CoreAuthPrompt::None,
                "login" => CoreAuthPrompt::Login,
                "consent" => CoreAuthPrompt::Consent,
                "select_account" => CoreAuthPrompt::SelectAccount,
                other => CoreAuthPrompt::Extension(other.to_owned()),
            });
        }
        let (url, state, nonce) = request.url();
        Ok(LoginStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) and verifies the ID token:
    /// signature, issuer, audience, expiry and nonce.
    pub async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> AppResult<(Identity, Grant)> {
        let client = self.client(false).await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(AppError::internal)?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| match classify(e) {
                RefreshFailure::Refused(why) => AppError::bad_input(
                    "code",
                    format!("the identity provider refused the sign-in: {why}"),
                ),
                RefreshFailure::Unreachable(why) => AppError::Unavailable(format!(
                    "the identity provider cannot be reached ({why}); try again shortly"
                )),
            })?;
        let nonce = Nonce::new(nonce.to_owned());
        let identity = match self.verified_identity(&client, &tokens, &nonce).await {
            // The provider may have rotated its keys since discovery: look again, once.
            Err(_) => {
                let client = self.client(true).await?;
                self.verified_identity(&client, &tokens, &nonce).await?
            }
            ok => ok?,
        };
        let identity = self.with_userinfo(&client, &tokens, identity).await?;
        Ok((identity, grant(&tokens, None)))
    }

    async fn verified_identity(
        &self,
        client: &Client,
        tokens: &ProviderTokens,
        nonce: &Nonce,
    ) -> AppResult<Identity> {
        let id_token = tokens
            .id_token()
            .ok_or_else(|| AppError::bad_input("code", "the identity provider sent no ID token"))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), nonce)
            .map_err(|e| {
                tracing::warn!(error = %e, "oidc_id_token_rejected");
                AppError::bad_input("code", format!("the ID token is not valid: {e}"))
            })?;
        Ok(self.identity_of(claims))
    }

    fn identity_of(
        &self,
        claims: &openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>,
    ) -> Identity {
        Identity {
            subject: claims.subject().as_str().to_owned(),
            // Empty when the ID token names nobody: many providers (oidc-provider by default)
            // put only `sub` in the ID token of a code flow and the profile at userinfo.
            display_name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned())
                .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()))
                .or_else(|| claims.email().map(|e| e.as_str().to_owned()))
                .unwrap_or_default(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            groups: groups_of(
                &claims.additional_claims().other,
                &self.settings.groups_claim,
            ),
        }
    }

    /// When the ID token carries no groups claim or no name, the userinfo endpoint may. A user
    /// nobody names is called by their subject.
    async fn with_userinfo(
        &self,
        client: &Client,
        tokens: &ProviderTokens,
        identity: Identity,
    ) -> AppResult<Identity> {
        let mut identity = if needs_userinfo(&identity) {
            match self.userinfo(client, tokens, &identity.subject).await {
                Ok(Some(info)) => merged(identity, info),
                Ok(None) => identity,
                // Only a name was missing: not worth refusing the sign-in for.
                Err(_) if identity.groups.is_some() => identity,
                Err(why) => {
                    return Err(AppError::Unavailable(format!(
                        "the identity provider's userinfo endpoint failed ({why}); try again shortly"
                    )));
                }
            }
        } else {
            identity
        };
        if identity.display_name.is_empty() {
            identity.display_name = identity.subject.clone();
        }
        Ok(identity)
    }

    /// What the userinfo endpoint says of `subject` (`None`: the provider has none).
    async fn userinfo(
        &self,
        client: &Client,
        tokens: &ProviderTokens,
        subject: &str,
    ) -> Result<Option<Identity>, String> {
        let Ok(request) = client.user_info(
            tokens.access_token().clone(),
            Some(SubjectIdentifier::new(subject.to_owned())),
        ) else {
            return Ok(None);
        };
        let info: openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim> =
            request.request_async(&self.http).await.map_err(|e| {
                tracing::warn!(error = %e, "oidc_userinfo_failed");
                format!("userinfo: {e}")
            })?;
        Ok(Some(Identity {
            subject: subject.to_owned(),
            display_name: info
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned())
                .or_else(|| info.preferred_username().map(|u| u.as_str().to_owned()))
                .or_else(|| info.email().map(|e| e.as_str().to_owned()))
                .unwrap_or_default(),
            email: info.email().map(|e| e.as_str().to_owned()),
            groups: groups_of(&info.additional_claims().other, &self.settings.groups_claim),
        }))
    }

    /// Uses a refresh token. A new ID token (or else the userinfo endpoint) says who the user
    /// is now, groups included; `subject` must not change.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        subject: &str,
    ) -> Result<(Grant, Option<Identity>), RefreshFailure> {
        let client = self
            .client(false)
            .await
            .map_err(|e| RefreshFailure::Unreachable(e.to_string()))?;
        let token = RefreshToken::new(refresh_token.to_owned());
        let tokens = client
            .exchange_refresh_token(&token)
            .map_err(|e| RefreshFailure::Unreachable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(classify)?;
        let identity = match tokens.id_token() {
            Some(id_token) => {
                // A refreshed ID token carries no nonce (OIDC Core §12.2).
                let claims = id_token
                    .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| RefreshFailure::Unreachable(format!("refreshed ID token: {e}")))?;
                Some(self.identity_of(claims))
            }
            None => None,
        };
        // Groups (or a name) the ID token does not carry may come from the userinfo endpoint.
        // A name still empty leaves the user's name as it was.
        let identity = match identity {
            Some(i) if !needs_userinfo(&i) => Some(i),
            partial => match self.userinfo(&client, &tokens, subject).await {
                Ok(Some(info)) => Some(match partial {
                    Some(i) => merged(i, info),
                    None => info,
                }),
                Ok(None) => partial,
                // Only a name was missing: the refresh stands, the name stays as it was.
                Err(_) if partial.as_ref().is_some_and(|i| i.groups.is_some()) => partial,
                Err(why) => return Err(RefreshFailure::Unreachable(why)),
            },
        };
        if let Some(i) = &identity
            && i.subject != subject
        {
            return Err(RefreshFailure::Refused(
                "the refreshed identity is another user".to_owned(),
            ));
        }
        Ok((grant(&tokens, Some(refresh_token)), identity))
    }

    /// Whether a user in these groups is a teacher.
    pub fn is_teacher(&self, groups: &[(String, String)]) -> bool {
        groups.iter().any(|(id, name)| {
            self.settings
                .teacher_groups
                .iter()
                .any(|t| t == id || t == name)
        })
    }
}

/// Whether the ID token left out what the userinfo endpoint may know: the groups or a name.
fn needs_userinfo(identity: &Identity) -> bool {
    identity.groups.is_none() || identity.display_name.is_empty()
}

/// The ID token's identity, completed by the userinfo endpoint's (the ID token wins where both
/// speak).
fn merged(from_id_token: Identity, userinfo: Identity) -> Identity {
    Identity {
        display_name: if from_id_token.display_name.is_empty() {
            userinfo.display_name
        } else {
            from_id_token.display_name
        },
        email: from_id_token.email.or(userinfo.email),
        groups: from_id_token.groups.or(userinfo.groups),
        subject: from_id_token.subject,
    }
}

/// The provider's tokens; a refresh that returns no new refresh token keeps the old one
/// (RFC 6749 §6).
fn grant(tokens: &ProviderTokens, previous_refresh: Option<&str>) -> Grant {
    Grant {
        access_token: tokens.access_token().secret().clone(),
        refresh_token: tokens
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| previous_refresh.map(str::to_owned)),
        expires_at: tokens
            .expires_in()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| crate::service::now() + d),
    }
}

/// A token endpoint's error answer is a refusal; anything else (network, timeout, an answer
/// that does not parse) is the provider being unavailable.
fn classify<E: std::error::Error + 'static>(
    e: RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
) -> RefreshFailure {
    match e {
        RequestTokenError::ServerResponse(r) => {
            RefreshFailure::Refused(r.error().as_ref().to_string())
        }
        other => RefreshFailure::Unreachable(other.to_string()),
    }
}

/// The groups claim: a list of strings (ids that are also names) or of objects with `id`
/// (or `external_id`) and `name`. Absent: `None`. Sorted by id, without duplicates, so that
/// concurrent sign-ins lock groups in one order.
pub fn groups_of(
    claims: &HashMap<String, serde_json::Value>,
    claim: &str,
) -> Option<Vec<(String, String)>> {
    let list = claims.get(claim)?.as_array()?;
    let mut groups: Vec<(String, String)> = list
        .iter()
        .filter_map(|g| match g {
            serde_json::Value::String(s) => Some((s.clone(), s.clone())),
            serde_json::Value::Object(o) => {
                let id = o
                    .get("id")
                    .or_else(|| o.get("external_id"))
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })?;
                let name = o
                    .get("name")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| id.clone());
                Some((id, name))
            }
            _ => None,
        })
        .filter(|(id, _)| !id.trim().is_empty())
        .collect();
    groups.sort();
    groups.dedup_by(|a, b| a.0 == b.0);
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_completes_what_the_id_token_left_out() {
        let who = |name: &str, email: Option<&str>, groups: Option<&[&str]>| Identity {
            subject: "s1".into(),
            display_name: name.into(),
            email: email.map(str::to_owned),
            groups: groups.map(|g| g.iter().map(|g| (g.to_string(), g.to_string())).collect()),
        };
        // A code flow's ID token with `sub` only (oidc-provider's default).
        let bare = who("", None, None);
        assert!(needs_userinfo(&bare));
        let m = merged(bare, who("Ada", Some("a@x"), Some(&["7B"])));
        assert_eq!(m.display_name, "Ada");
        assert_eq!(m.email.as_deref(), Some("a@x"));
        assert_eq!(m.groups.unwrap(), vec![("7B".to_owned(), "7B".to_owned())]);
        // The ID token wins where both speak; an empty groups claim is a claim.
        let full = who("Ada L.", Some("ada@x"), Some(&[]));
        assert!(!needs_userinfo(&full));
        let m = merged(full, who("Ada", Some("a@x"), Some(&["7B"])));
        assert_eq!(
            (m.display_name.as_str(), m.email.as_deref()),
            ("Ada L.", Some("ada@x"))
        );
        assert!(m.groups.unwrap().is_empty());
        // A name but no groups, and groups but no name, both ask userinfo.
        assert!(needs_userinfo(&who("Ada", None, None)));
        assert!(needs_userinfo(&who("", None, Some(&["7B"]))));
    }

    #[test]
    fn groups_claim_shapes() {
        let claims: HashMap<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "groups": ["7B", {"id": "g-2", "name": "Art"}, {"id": 3}, "7B", "", 5],
                "roles": "x"
            }))
            .unwrap();
        assert_eq!(
            groups_of(&claims, "groups").unwrap(),
            vec![
                ("3".into(), "3".into()),
                ("7B".into(), "7B".into()),
                ("g-2".into(), "Art".into())
            ]
        );
        assert_eq!(groups_of(&claims, "missing"), None);
        assert_eq!(groups_of(&claims, "roles"), None);
    }
}
