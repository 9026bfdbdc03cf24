//! Connecting to the database per backend, and the one transaction helper every write goes
//! through (IMMEDIATE on SQLite, bounded retries on busy / serialization failures).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::Semaphore;

use crate::{
    config::StoreConfig,
    error::{AppError, AppResult},
};

/// How many times a transaction that hit a transient conflict is run again.
const MAX_ATTEMPTS: u32 = 10;

/// The database handle shared by the whole process.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    /// The URL connected to (for connections outside the pool: the auth listener).
    url: Arc<str>,
    /// Counts every statement this process runs (for `/metrics`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// SQLite has one writer at a time anyway. Queueing writers here, fairly, instead of in
    /// SQLite's polling busy handler keeps latency flat under a classroom of writers. This is an
    /// optimisation only: BEGIN IMMEDIATE plus the busy timeout stay the source of truth (a
    /// second process, e.g. the CLI, is still handled by them).
    write_gate: Option<Arc<Semaphore>>,
}

impl Db {
    /// Connects per the configured URL and applies the backend's settings.
    pub async fn connect(cfg: &StoreConfig) -> AppResult<Db> {
        let url = cfg.database_url();
        let mut opts = ConnectOptions::new(url.clone());
        opts.sqlx_logging(false)
            .acquire_timeout(Duration::from_millis(cfg.db_acquire_timeout_ms))
            .connect_timeout(Duration::from_secs(5));
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
                AppError::Unavailable(format!(
                    "cannot create data dir {}: {e}",
                    cfg.data_dir.display()
                ))
            })?;
            opts.max_connections(8)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|o| {
                    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                    o.journal_mode(SqliteJournalMode::Wal)
                        // FULL: a commit acknowledged to a client survives power loss too.
                        .synchronous(SqliteSynchronous::Full)
                        .foreign_keys(true)
                        .busy_timeout(Duration::from_secs(5))
                        .create_if_missing(true)
                });
        } else {
            let timeout = cfg.statement_timeout();
            opts.max_connections(cfg.db_max_connections)
                .min_connections(1)
                .idle_timeout(Duration::from_secs(300))
                // Health check for connections idle a while (the ones a restart or failover
                // most likely killed). Checking every acquire would double the round trips;
                // a busy connection that died anyway fails its statement, and `write` runs
                // such a transaction again on a fresh connection.
                .test_before_acquire_if_idle_for(Duration::from_secs(10))
                .map_sqlx_postgres_opts(move |o| match timeout {
                    Some(t) => o.options([("statement_timeout", format!("{}", t.as_millis()))]),
                    None => o,
                });
        }
        let mut conn = Database::connect(opts).await?;
        let metrics = crate::metrics::Metrics::new();
        let m = metrics.clone();
        conn.set_metric_callback(move |info| {
            m.record_statement(info.elapsed, info.failed);
            tracing::trace!(target: "atelier::sql", sql = %info.statement, elapsed_us = info.elapsed.as_micros() as u64, failed = info.failed);
        });
        Ok(Db {
            conn,
            url: url.into(),
            metrics,
            write_gate: sqlite.then(|| Arc::new(Semaphore::new(1))),
        })
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The database URL (it may hold a password: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// Runs `f` in a write transaction and commits it, retrying transient conflicts (SQLite busy,
    /// PostgreSQL serialization failure or deadlock) with jittered backoff. `f` may run more
    /// than once, so it must not have effects outside the transaction.
    pub async fn write<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send,
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<T>> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write_once(&f).await {
                // A dead pooled connection (or several, after a database restart), before
                // anything was committed: run it again on the next connection.
                Err(Failed::BeforeCommit(e))
                    if e.is_connection_lost() && attempt < MAX_ATTEMPTS =>
                {
                    tracing::info!(attempt, error = %e, "transaction_retry_after_connection_loss");
                    // No backoff: the next attempt draws another connection, or fails at once
                    // when none can be made (the database is down: the client hears so fast).
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(Failed::BeforeCommit(e) | Failed::Commit(e))
                    if e.is_retryable_conflict() && attempt < MAX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, error = %e, "transaction_retry");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(Failed::BeforeCommit(e) | Failed::Commit(e)) if e.is_retryable_conflict() => {
                    tracing::warn!(attempt, error = %e, "transaction_retries_exhausted");
                    return Err(AppError::Unavailable(
                        "the database is too busy; retry shortly".to_owned(),
                    ));
                }
                Err(Failed::BeforeCommit(e) | Failed::Commit(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// Runs `f`, whose one write statement commits by itself (no transaction), retrying it
    /// like `write` when it did not happen (SQLite busy). A connection lost meanwhile is not
    /// retried: the statement may have committed.
    pub async fn write_one<T, F>(&self, f: F) -> AppResult<T>
    where
        T: Send,
        F: for<'c> Fn(&'c DatabaseConnection) -> BoxFuture<'c, AppResult<T>> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                let _permit = self.write_permit().await?;
                f(&self.conn).await
            };
            match result {
                Err(e) if e.is_retryable_conflict() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "statement_retry");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) if e.is_retryable_conflict() => {
                    tracing::warn!(attempt, error = %e, "statement_retries_exhausted");
                    return Err(AppError::Unavailable(
                        "the database is too busy; retry shortly".to_owned(),
                    ));
                }
                other => return other,
            }
        }
    }

    /// SQLite: this process's turn to write (see `write_gate`).
    async fn write_permit(&self) -> AppResult<Option<tokio::sync::SemaphorePermit<'_>>> {
        match &self.write_gate {
            Some(gate) => Ok(Some(gate.acquire().await.map_err(AppError::internal)?)),
            None => Ok(None),
        }
    }

    async fn write_once<T, F>(&self, f: &F) -> Result<T, Failed>
    where
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<T>>,
    {
        let before = Failed::BeforeCommit;
        let _permit = self.write_permit().await.map_err(before)?;
        let txn = self
            .conn
            .begin_with_options(TransactionOptions {
                // IMMEDIATE: take the write lock at BEGIN, so a read-then-write can never
                // fail later with an unretryable SQLITE_BUSY_SNAPSHOT.
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                access_mode: None,
                isolation_level: None,
            })
            .await
            .map_err(|e| before(e.into()))?;
        // On error the transaction is dropped, which rolls it back.
        let value = f(&txn).await.map_err(before)?;
        fail::fail_point!("db::before_commit", |arg| {
            let e = crate::storage::injected("db::before_commit", arg);
            Err(before(AppError::Unavailable(format!(
                "the database is unavailable ({e}); retry"
            ))))
        });
        // A commit that fails may still have happened: never run it again.
        txn.commit().await.map_err(|e| Failed::Commit(e.into()))?;
        Ok(value)
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> AppResult<()> {
        self.conn.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Err(e) = self.conn.close_by_ref().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

/// Where a write transaction failed: only failures before COMMIT are safe to run again after
/// losing the connection.
enum Failed {
    BeforeCommit(AppError),
    Commit(AppError),
}

fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    Duration::from_millis(base + rand::random_range(0..=base))
}

/// Runs the migrations on a connected database.
pub async fn migrate(db: &Db) -> AppResult<()> {
    use migration::MigratorTrait;
    migration::Migrator::up(db.conn(), None).await?;
    Ok(())
}
