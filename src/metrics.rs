//! Process metrics in Prometheus text format (`GET /metrics`): database statements, HTTP
//! requests and their latency, the connection pool. Plain atomics: no locks on the hot path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

/// Upper bounds of the pool acquire histogram, in seconds: an idle connection is handed out
/// in microseconds, a wait for a busy pool lasts up to the acquire timeout.
const ACQUIRE_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The tracing target of the event sqlx emits after every successful `Pool::acquire`, when
/// the pool's `acquire_time_level` is set (see `Db::connect`).
pub const SQLX_ACQUIRE_TARGET: &str = "sqlx::pool::acquire";

/// Connection pool counters. Process-wide: sqlx reports acquire times through `tracing`,
/// whose subscriber is global, before any `Db` exists.
static POOL: PoolCounters = PoolCounters {
    acquire_buckets: [const { AtomicU64::new(0) }; ACQUIRE_BUCKETS.len()],
    acquire_count: AtomicU64::new(0),
    acquire_micros: AtomicU64::new(0),
    acquire_timeouts: AtomicU64::new(0),
};

struct PoolCounters {
    acquire_buckets: [AtomicU64; ACQUIRE_BUCKETS.len()],
    acquire_count: AtomicU64,
    acquire_micros: AtomicU64,
    acquire_timeouts: AtomicU64,
}

/// One successful pool acquire that took `secs`.
pub fn record_pool_acquire(secs: f64) {
    POOL.acquire_count.fetch_add(1, Relaxed);
    for (i, le) in ACQUIRE_BUCKETS.iter().enumerate() {
        if secs <= *le {
            POOL.acquire_buckets[i].fetch_add(1, Relaxed);
        }
    }
    POOL.acquire_micros
        .fetch_add((secs * 1e6).round() as u64, Relaxed);
}

/// One wait for a pooled connection that ended at the acquire timeout.
pub fn record_pool_acquire_timeout() {
    POOL.acquire_timeouts.fetch_add(1, Relaxed);
}

/// The pool as it is now (gauges, read at scrape time).
#[derive(Clone, Copy, Debug)]
pub struct PoolState {
    /// Open connections, idle or lent out.
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Feeds [`record_pool_acquire`] from sqlx's acquire events: install it in the global
/// subscriber (`telemetry::init`). Its own filter passes only those events, whatever
/// `RUST_LOG` says, and leaves every other callsite to the other layers.
pub fn pool_acquire_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::{Layer, filter::Targets};
    PoolAcquireLayer
        .with_filter(Targets::new().with_target(SQLX_ACQUIRE_TARGET, tracing::Level::TRACE))
}

struct PoolAcquireLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PoolAcquireLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct AcquiredAfter(Option<f64>);
        impl tracing::field::Visit for AcquiredAfter {
            fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
                if field.name() == "acquired_after_secs" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if event.metadata().target() != SQLX_ACQUIRE_TARGET {
            return;
        }
        let mut secs = AcquiredAfter(None);
        event.record(&mut secs);
        if let Some(secs) = secs.0 {
            record_pool_acquire(secs);
        }
    }
}

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    db_statements: AtomicU64,
    db_statement_errors: AtomicU64,
    db_statement_micros: AtomicU64,
    http_requests: AtomicU64,
    http_server_errors: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_micros: AtomicU64,
    graphql_documents_parsed: AtomicU64,
    graphql_documents_reused: AtomicU64,
    read_batches: AtomicU64,
    read_batch_reads: AtomicU64,
    db_write_attempts: AtomicU64,
    db_write_retries: AtomicU64,
    /// Requests to the upstream asset host, by [`UPSTREAM_OUTCOMES`].
    upstream_fetches: [AtomicU64; UPSTREAM_OUTCOMES.len()],
    /// Upstream fetches not made, by [`UPSTREAM_SKIPS`].
    upstream_skips: [AtomicU64; UPSTREAM_SKIPS.len()],
}

/// How a request to the upstream asset host ended: `ok` (stored), `not_found` (404 or 410),
/// `mismatch` (the bytes' md5 is not the name's), `refused` (too large, or not the format
/// the extension names), `error` (network, timeout, another status, storage).
pub const UPSTREAM_OUTCOMES: [&str; 5] = ["ok", "not_found", "mismatch", "refused", "error"];

/// Why an upstream fetch was not made: `negative_cached` (it failed a moment ago),
/// `rate_limited` (anonymous GETs used up their budget), `busy` (no turn within the timeout).
pub const UPSTREAM_SKIPS: [&str; 3] = ["negative_cached", "rate_limited", "busy"];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn record_statement(&self, elapsed: Duration, failed: bool) {
        self.db_statements.fetch_add(1, Relaxed);
        self.db_statement_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        if failed {
            self.db_statement_errors.fetch_add(1, Relaxed);
        }
    }

    /// A GraphQL document taken from the cache (`reused`) or parsed for it.
    pub fn record_document(&self, reused: bool) {
        if reused {
            self.graphql_documents_reused.fetch_add(1, Relaxed);
        } else {
            self.graphql_documents_parsed.fetch_add(1, Relaxed);
        }
    }

    /// One coalesced by-id read statement that answered `reads` waiting reads.
    pub fn record_read_batch(&self, reads: u64) {
        self.read_batches.fetch_add(1, Relaxed);
        self.read_batch_reads.fetch_add(reads, Relaxed);
    }

    /// One run of a write (a transaction or an autocommit statement); `retry` when it runs
    /// again after a failed attempt.
    pub fn record_write_attempt(&self, retry: bool) {
        self.db_write_attempts.fetch_add(1, Relaxed);
        if retry {
            self.db_write_retries.fetch_add(1, Relaxed);
        }
    }

    /// One request to the upstream asset host that ended as `outcome` (one of
    /// [`UPSTREAM_OUTCOMES`]).
    pub fn record_upstream_fetch(&self, outcome: &str) {
        if let Some(i) = UPSTREAM_OUTCOMES.iter().position(|o| *o == outcome) {
            self.upstream_fetches[i].fetch_add(1, Relaxed);
        }
    }

    /// One upstream fetch not made, for `reason` (one of [`UPSTREAM_SKIPS`]).
    pub fn record_upstream_skip(&self, reason: &str) {
        if let Some(i) = UPSTREAM_SKIPS.iter().position(|r| *r == reason) {
            self.upstream_skips[i].fetch_add(1, Relaxed);
        }
    }

    pub fn record_request(&self, elapsed: Duration, status: u16) {
        self.http_requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.http_server_errors.fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "atelier_db_statements_total",
            "SQL statements executed.",
            self.db_statements.load(Relaxed),
        );
        counter(
            "atelier_db_statement_errors_total",
            "SQL statements that failed.",
            self.db_statement_errors.load(Relaxed),
        );
        counter(
            "atelier_http_requests_total",
            "HTTP requests answered.",
            self.http_requests.load(Relaxed),
        );
        counter(
            "atelier_http_server_errors_total",
            "HTTP responses with a 5xx status.",
            self.http_server_errors.load(Relaxed),
        );
        counter(
            "atelier_graphql_documents_parsed_total",
            "GraphQL query texts parsed into the document cache.",
            self.graphql_documents_parsed.load(Relaxed),
        );
        counter(
            "atelier_graphql_documents_reused_total",
            "GraphQL requests served a cached parsed document.",
            self.graphql_documents_reused.load(Relaxed),
        );
        counter(
            "atelier_db_read_batches_total",
            "Statements that answered coalesced project(id) reads.",
            self.read_batches.load(Relaxed),
        );
        counter(
            "atelier_db_read_batch_reads_total",
            "project(id) reads answered by those statements.",
            self.read_batch_reads.load(Relaxed),
        );
        counter(
            "atelier_db_write_attempts_total",
            "Runs of write transactions and autocommit write statements, retries included.",
            self.db_write_attempts.load(Relaxed),
        );
        counter(
            "atelier_db_write_retries_total",
            "Writes run again after a busy database, a serialization failure or a connection lost before COMMIT.",
            self.db_write_retries.load(Relaxed),
        );
        let name = "atelier_asset_upstream_fetches_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests to the upstream asset host (ATELIER_ASSET_UPSTREAM), by outcome.\n# TYPE {name} counter"
        );
        for (i, outcome) in UPSTREAM_OUTCOMES.iter().enumerate() {
            let v = self.upstream_fetches[i].load(Relaxed);
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {v}");
        }
        let name = "atelier_asset_upstream_skipped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Upstream asset fetches not made, by reason.\n# TYPE {name} counter"
        );
        for (i, reason) in UPSTREAM_SKIPS.iter().enumerate() {
            let v = self.upstream_skips[i].load(Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP atelier_db_statement_seconds_total Time spent in SQL statements.\n# TYPE atelier_db_statement_seconds_total counter\natelier_db_statement_seconds_total {}",
            self.db_statement_micros.load(Relaxed) as f64 / 1e6
        );
        let name = "atelier_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP request latency.\n# TYPE {name} histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.http_requests.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

/// The connection pool in Prometheus text: gauges from `state`, the acquire histogram and
/// the timeout counter.
pub fn render_pool(state: PoolState) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let in_use = state.size.saturating_sub(state.idle);
    let name = "atelier_db_pool_connections";
    let _ = writeln!(
        out,
        "# HELP {name} Open database connections: in_use (lent to a statement or transaction) or idle.\n# TYPE {name} gauge\n{name}{{state=\"in_use\"}} {in_use}\n{name}{{state=\"idle\"}} {}",
        state.idle
    );
    let name = "atelier_db_pool_max_connections";
    let _ = writeln!(
        out,
        "# HELP {name} The most connections the pool opens.\n# TYPE {name} gauge\n{name} {}",
        state.max
    );
    let name = "atelier_db_pool_acquire_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to get a connection from the pool (waiting for one to be free, or opening one), successful acquires only.\n# TYPE {name} histogram"
    );
    for (i, le) in ACQUIRE_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{le}\"}} {}",
            POOL.acquire_buckets[i].load(Relaxed)
        );
    }
    let count = POOL.acquire_count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        POOL.acquire_micros.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {count}");
    let name = "atelier_db_pool_acquire_timeouts_total";
    let _ = writeln!(
        out,
        "# HELP {name} Waits for a pooled connection that ended at the acquire timeout (ATELIER_DB_ACQUIRE_TIMEOUT_MS), counted where writes and readiness probes see them.\n# TYPE {name} counter\n{name} {}",
        POOL.acquire_timeouts.load(Relaxed)
    );
    out
}
