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
