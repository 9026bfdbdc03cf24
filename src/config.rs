//! Settings from flags, then environment, then defaults; parsed once at start.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

/// Where the data lives: shared by every subcommand.
#[derive(clap::Args, Clone)]
pub struct StoreConfig {
    /// Data directory (SQLite database, blobs, staging).
    #[arg(
        long,
        env = "ATELIER_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Database URL (`postgres://…` or `sqlite://…`). Default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Maximum PostgreSQL connections in the pool (per process).
    #[arg(
        long,
        env = "ATELIER_DB_MAX_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    pub db_max_connections: u32,

    /// PostgreSQL statement timeout in milliseconds (0 disables it).
    #[arg(
        long,
        env = "ATELIER_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub db_statement_timeout_ms: u64,

    /// How long a request waits for a pooled connection before answering UNAVAILABLE.
    #[arg(
        long,
        env = "ATELIER_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2_000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,

    /// Seconds after which a PostgreSQL connection is closed and replaced, however busy it
    /// is (0: never).
    #[arg(
        long,
        env = "ATELIER_DB_MAX_LIFETIME_SECS",
        default_value_t = 1_800,
        global = true
    )]
    pub db_max_lifetime_secs: u64,

    /// Seconds a PostgreSQL connection may sit idle in the pool before it is closed (0:
    /// never; the pool keeps at least one).
    #[arg(
        long,
        env = "ATELIER_DB_IDLE_TIMEOUT_SECS",
        default_value_t = 300,
        global = true
    )]
    pub db_idle_timeout_secs: u64,
}

// The URL may carry a password: never print it.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("data_dir", &self.data_dir)
            .field("database", &self.database_url.as_deref().map(redact_url))
            .field("db_max_connections", &self.db_max_connections)
            .field("db_statement_timeout_ms", &self.db_statement_timeout_ms)
            .field("db_max_lifetime_secs", &self.db_max_lifetime_secs)
            .field("db_idle_timeout_secs", &self.db_idle_timeout_secs)
            .finish()
    }
}

impl StoreConfig {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("atelier.db").display()
            ),
        }
    }

    pub fn statement_timeout(&self) -> Option<Duration> {
        (self.db_statement_timeout_ms > 0)
            .then(|| Duration::from_millis(self.db_statement_timeout_ms))
    }

    pub fn max_lifetime(&self) -> Option<Duration> {
        (self.db_max_lifetime_secs > 0).then(|| Duration::from_secs(self.db_max_lifetime_secs))
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.db_idle_timeout_secs > 0).then(|| Duration::from_secs(self.db_idle_timeout_secs))
    }
}

/// Settings of `atelier serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "ATELIER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Largest project content accepted, in bytes.
    #[arg(long, env = "ATELIER_MAX_CONTENT_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_content_bytes: u64,

    /// Largest request body accepted on POST /graphql, in bytes (JSON escaping makes a
    /// request bigger than the content it carries).
    #[arg(long, env = "ATELIER_MAX_REQUEST_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Largest asset upload accepted, in bytes (decided while streaming).
    #[arg(long, env = "ATELIER_MAX_ASSET_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_asset_bytes: u64,

    /// Who may fetch asset bytes: `public` (anyone who knows the md5ext, as in Scratch) or
    /// `authenticated` (any signed-in user).
    #[arg(long, env = "ATELIER_ASSET_ACCESS", default_value = "public")]
    pub asset_access: AssetAccess,

    /// Seconds that in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "ATELIER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Most items one user's backpack may hold.
    #[arg(long, env = "ATELIER_BACKPACK_MAX_ITEMS", default_value_t = 200)]
    pub backpack_max_items: u64,

    /// Most bytes (bodies and thumbnails) one user's backpack may hold.
    #[arg(long, env = "ATELIER_BACKPACK_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub backpack_max_bytes: u64,

    /// Seconds between sweeps of staged files no request owns (commits whose reply was lost,
    /// processes that died) and of expired idempotency keys.
    #[arg(long, env = "ATELIER_SWEEP_INTERVAL_SECS", default_value_t = 30)]
    pub sweep_interval_secs: u64,

    /// How long a staged file whose commit had an unknown outcome waits for a committed row
    /// to reference it before it is deleted. Long: a COMMIT still in the network may land.
    #[arg(long, env = "ATELIER_PENDING_GRACE_SECS", default_value_t = 3600)]
    pub pending_grace_secs: u64,

    /// How long an `Idempotency-Key` and its recorded answer are remembered.
    #[arg(long, env = "ATELIER_IDEMPOTENCY_TTL_HOURS", default_value_t = 24)]
    pub idempotency_ttl_hours: u64,

    /// How many `.sb3` exports this process builds at once.
    #[arg(long, env = "ATELIER_EXPORT_WORKERS", default_value_t = 2)]
    pub export_workers: usize,

    /// How long a worker holds a job without renewing it, in milliseconds: a job whose worker
    /// died (kill -9) is taken by another worker after at most this long.
    #[arg(long, env = "ATELIER_JOB_LEASE_MS", default_value_t = 30_000)]
    pub job_lease_ms: u64,

    /// How often a `jobChanged` subscription re-reads its job when no notification came, in
    /// milliseconds (notifications normally deliver every change at once).
    #[arg(long, env = "ATELIER_JOB_POLL_MS", default_value_t = 2_000)]
    pub job_poll_ms: u64,

    /// Subscriptions one WebSocket connection may run at once; more are refused
    /// (`BAD_USER_INPUT`, `extensions.limit = "subscriptions"`).
    #[arg(long, env = "ATELIER_WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,

    /// Subscriptions one user may run at once over all their connections to this process.
    #[arg(long, env = "ATELIER_WS_MAX_USER_SUBSCRIPTIONS", default_value_t = 500)]
    pub ws_max_user_subscriptions: usize,

    /// Messages queued for one WebSocket client; a client that falls this far behind
    /// reading is closed (a slow consumer) instead of buffering without bound.
    #[arg(long, env = "ATELIER_WS_SEND_QUEUE", default_value_t = 256)]
    pub ws_send_queue: usize,

    /// Deepest nesting of fields one GraphQL operation may select (fragments expanded).
    #[arg(long, env = "ATELIER_MAX_QUERY_DEPTH", default_value_t = 16)]
    pub max_query_depth: usize,

    /// Largest complexity of one operation: each field counts 1 plus its children, and a list
    /// counts its children once per row it may return (its `first`, else its page size or cap).
    #[arg(long, env = "ATELIER_MAX_QUERY_COMPLEXITY", default_value_t = 20_000)]
    pub max_query_complexity: usize,

    /// Most aliased fields in one operation.
    #[arg(long, env = "ATELIER_MAX_QUERY_ALIASES", default_value_t = 50)]
    pub max_query_aliases: usize,

    /// Most operations in one batched POST /graphql request.
    #[arg(long, env = "ATELIER_MAX_BATCH", default_value_t = 10)]
    pub max_batch: usize,

    /// Largest response of one operation, in bytes, enforced while it is built.
    #[arg(long, env = "ATELIER_MAX_RESPONSE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_response_bytes: u64,

    /// How long an editing session (`openEditor`) lives after its last use, in seconds.
    #[arg(long, env = "ATELIER_EDITOR_SESSION_TTL_SECS", default_value_t = 12 * 3600)]
    pub editor_session_ttl_secs: u64,

    /// How long a read-only project token (`projectToken`) lives, in seconds.
    #[arg(long, env = "ATELIER_PROJECT_TOKEN_TTL_SECS", default_value_t = 300)]
    pub project_token_ttl_secs: u64,

    /// The installed Scratch editor package (`@scratch/scratch-gui-standalone`, the directory
    /// holding `dist/`; see `scripts/install-editor.sh`). Unset: `/projects/{id}/editor` says
    /// how to install it.
    #[arg(long, env = "ATELIER_EDITOR_DIR")]
    pub editor_dir: Option<PathBuf>,

    /// An upstream asset host to pull missing assets from (e.g. Scratch's,
    /// `https://assets.scratch.mit.edu/internalapi/asset/{md5ext}/get/`): a URL template,
    /// http or https, in which `{md5ext}` stands for `<md5>.<ext>`. An asset a save names but
    /// nobody uploaded (the editor's library sprites, costumes and sounds), or an asset GET
    /// misses, is fetched from there once, checked against its md5 and stored like an upload.
    /// Unset: nothing is ever fetched.
    #[arg(long, env = "ATELIER_ASSET_UPSTREAM")]
    pub asset_upstream: Option<String>,

    /// Largest asset fetched from the upstream, in bytes (reading stops beyond it). Default:
    /// `ATELIER_MAX_ASSET_BYTES`.
    #[arg(long, env = "ATELIER_ASSET_UPSTREAM_MAX_BYTES")]
    pub asset_upstream_max_bytes: Option<u64>,

    /// How long one upstream fetch may take in all (connect, headers and body), in
    /// milliseconds; a save waits at most about twice this for its missing assets.
    #[arg(
        long,
        env = "ATELIER_ASSET_UPSTREAM_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub asset_upstream_timeout_ms: u64,

    /// How long connecting to the upstream may take, in milliseconds.
    #[arg(
        long,
        env = "ATELIER_ASSET_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub asset_upstream_connect_timeout_ms: u64,

    /// Upstream fetches this process runs at once; more wait for a turn (at most the fetch
    /// timeout, then the asset counts as missing).
    #[arg(long, env = "ATELIER_ASSET_UPSTREAM_CONCURRENCY", default_value_t = 8)]
    pub asset_upstream_concurrency: usize,

    /// How long an asset the upstream did not deliver (not found, wrong md5, too large, an
    /// error or a timeout) is not asked for again, in seconds.
    #[arg(
        long,
        env = "ATELIER_ASSET_UPSTREAM_NEGATIVE_TTL_SECS",
        default_value_t = 300
    )]
    pub asset_upstream_negative_ttl_secs: u64,

    /// Upstream fetches that anonymous asset GETs may start per minute (a token bucket of
    /// this size, refilled evenly); beyond it such a miss is a plain 404. Saves and signed-in
    /// GETs are not counted.
    #[arg(
        long,
        env = "ATELIER_ASSET_UPSTREAM_ANONYMOUS_PER_MINUTE",
        default_value_t = 120
    )]
    pub asset_upstream_anonymous_per_minute: u32,

    #[command(flatten)]
    pub auth: AuthConfig,
}

impl ServeConfig {
    /// The bounds every GraphQL operation is held to.
    pub fn query_limits(&self) -> crate::graphql::QueryLimits {
        crate::graphql::QueryLimits {
            depth: self.max_query_depth,
            complexity: self.max_query_complexity,
            aliases: self.max_query_aliases,
            response_bytes: self.max_response_bytes,
        }
    }
}

/// Sign-in through an OpenID Connect provider, sessions, and which browser origins may call
/// the API.
#[derive(clap::Args, Clone)]
pub struct AuthConfig {
    /// The provider's issuer URL (its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`). Unset: no browser sign-in; API tokens
    /// from `atelier token create` still work.
    #[arg(long, env = "ATELIER_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// This server's client id at the provider.
    #[arg(long, env = "ATELIER_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    /// This server's client secret at the provider (unset for a public client).
    #[arg(long, env = "ATELIER_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,

    /// The URL browsers reach this server at; the provider sends them back to
    /// `<public url>/auth/callback`. Default: `http://<listen address>`.
    #[arg(long, env = "ATELIER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Scopes asked for at sign-in (space-separated).
    #[arg(
        long,
        env = "ATELIER_OIDC_SCOPES",
        default_value = "openid profile email offline_access"
    )]
    pub oidc_scopes: String,

    /// The `prompt` sent with every sign-in (space-separated: `consent`, `login`,
    /// `select_account`). Providers that follow OpenID Connect Core to the letter (e.g.
    /// `oidc-provider`) grant `offline_access`, and so a refresh token, only with
    /// `prompt=consent`; without a refresh token a session ends when the provider's access
    /// token expires. Unset: no prompt.
    #[arg(long, env = "ATELIER_OIDC_PROMPT")]
    pub oidc_prompt: Option<String>,

    /// The ID token (or userinfo) claim that lists the user's groups (classes).
    #[arg(long, env = "ATELIER_OIDC_GROUPS_CLAIM", default_value = "groups")]
    pub oidc_groups_claim: String,

    /// Groups (by id or name, comma-separated) whose members are teachers.
    #[arg(long, env = "ATELIER_OIDC_TEACHER_GROUPS", value_delimiter = ',')]
    pub oidc_teacher_groups: Vec<String>,

    /// The key that encrypts the provider tokens sessions keep. Every process sharing a
    /// database needs the same one. Unset: generated into `<data dir>/secret.key`.
    #[arg(long, env = "ATELIER_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// A session ends this many hours after sign-in, however often it is refreshed.
    #[arg(long, env = "ATELIER_SESSION_MAX_AGE_HOURS", default_value_t = 24 * 14)]
    pub session_max_age_hours: u64,

    /// Browser origins (comma-separated, e.g. `https://editor.example.org`) allowed to call
    /// the API from their pages with credentials (CORS). Unset: same-origin only.
    #[arg(long, env = "ATELIER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

// Secrets are never printed.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_client_id", &self.oidc_client_id)
            .field("public_url", &self.public_url)
            .field("oidc_scopes", &self.oidc_scopes)
            .field("oidc_prompt", &self.oidc_prompt)
            .field("oidc_groups_claim", &self.oidc_groups_claim)
            .field("oidc_teacher_groups", &self.oidc_teacher_groups)
            .field("session_max_age_hours", &self.session_max_age_hours)
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// The public URL without a trailing slash.
    pub fn public_url(&self, listen: SocketAddr) -> String {
        match &self.public_url {
            Some(u) if !u.trim().is_empty() => u.trim().trim_end_matches('/').to_owned(),
            _ => format!("http://{listen}"),
        }
    }
}

/// Who may read asset bytes and metadata.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetAccess {
    Public,
    Authenticated,
}

/// Limits and policies the service layer enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_content_bytes: u64,
    pub max_asset_bytes: u64,
    pub asset_access: AssetAccess,
    /// Per-user backpack quota: items, and bytes of bodies and thumbnails.
    pub backpack_max_items: u64,
    pub backpack_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_content_bytes: 10 * 1024 * 1024,
            max_asset_bytes: 10 * 1024 * 1024,
            asset_access: AssetAccess::Public,
            backpack_max_items: 200,
            backpack_max_bytes: 100 * 1024 * 1024,
        }
    }
}

fn redact_url(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
