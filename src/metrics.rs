//! Process metrics in Prometheus text format (`GET /metrics`): database statements, HTTP
//! requests and their latency. Plain atomics: no locks on the hot path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

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
}

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
