//! Connecting to the database per backend, and the one transaction helper every write goes
//! through (IMMEDIATE on SQLite, bounded retries on busy / serialization failures).

pub mod listen;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sea_orm::{
    ConnAcquireErr, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
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
    /// The pool's configured maximum size.
    max_connections: u32,
}

/// SQLite's pool size: one writer at a time anyway, a few readers alongside (WAL).
const SQLITE_MAX_CONNECTIONS: u32 = 8;

/// sqlx emits an event with the time every `Pool::acquire` took at this level (TRACE: the
/// log output shows it only when asked for); `metrics::pool_acquire_layer` turns the events
/// into the acquire histogram. Slow acquires (over 2 s) are still logged at WARN, as before.
const ACQUIRE_TIME_LEVEL: log::LevelFilter = log::LevelFilter::Trace;

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
            opts.max_connections(SQLITE_MAX_CONNECTIONS)
                .min_connections(1)
                .map_sqlx_sqlite_pool_opts(|o| o.acquire_time_level(ACQUIRE_TIME_LEVEL))
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
                .idle_timeout(cfg.idle_timeout())
                .max_lifetime(cfg.max_lifetime())
                // Health check for connections idle a while (the ones a restart or failover
                // most likely killed). Checking every acquire would double the round trips;
                // a busy connection that died anyway fails its statement, and `write` runs
                // such a transaction again on a fresh connection.
                .test_before_acquire_if_idle_for(Duration::from_secs(10))
                .map_sqlx_postgres_pool_opts(|o| o.acquire_time_level(ACQUIRE_TIME_LEVEL))
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
            max_connections: if sqlite {
                SQLITE_MAX_CONNECTIONS
            } else {
                cfg.db_max_connections
            },
        })
    }

    /// The pool right now (for `/metrics`).
    pub fn pool_state(&self) -> crate::metrics::PoolState {
        let (size, idle) = match self.backend() {
            DbBackend::Sqlite => {
                let pool = self.conn.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => {
                let pool = self.conn.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
        };
        crate::metrics::PoolState {
            size,
            idle: u32::try_from(idle).unwrap_or(u32::MAX),
            max: self.max_connections,
        }
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
    /// than once, so it must not have effects outside the transaction. A COMMIT whose reply
    /// is lost is never run again: it answers [`AppError::OutcomeUnknown`].
    pub async fn write<T, F>(&self, f: F) -> AppResult<T>
    where
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<T>>,
    {
        self.write_observed(&CommitState::default(), f).await
    }

    /// [`Db::write`], telling `commit` whether a COMMIT may have happened. It is set before
    /// COMMIT is sent and cleared only when the database answered that it did not commit; if
    /// the caller's future is dropped meanwhile, `commit` still says "may have": whoever holds
    /// files for this transaction must then keep them for the database to decide.
    pub async fn write_observed<T, F>(&self, commit: &CommitState, f: F) -> AppResult<T>
    where
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<T>>,
    {
        self.retrying(|| self.transaction_once(&f, commit, Decision::Commit))
            .await
    }

    /// [`Db::write_observed`] for a body that may decide to roll its writes back and answer
    /// all the same ([`Decision::RollBack`]): an outcome, not an error, so it is never retried
    /// and never reaches a client as one.
    pub async fn write_deciding<T, F>(&self, commit: &CommitState, f: F) -> AppResult<T>
    where
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<Decision<T>>>,
    {
        self.retrying(|| self.transaction_once(&f, commit, std::convert::identity))
            .await
    }

    /// Runs `f`, whose one write statement commits by itself (no BEGIN/COMMIT round trips).
    /// Unlike a transaction, a statement whose connection died is never run again: it may have
    /// committed.
    pub async fn write_one<T, F>(&self, f: F) -> AppResult<T>
    where
        F: for<'c> Fn(&'c DatabaseConnection) -> BoxFuture<'c, AppResult<T>>,
    {
        self.retrying(|| self.statement_once(&f)).await
    }

    async fn statement_once<T, F>(&self, f: &F) -> Result<T, Failed>
    where
        F: for<'c> Fn(&'c DatabaseConnection) -> BoxFuture<'c, AppResult<T>>,
    {
        let _permit = self.write_permit().await.map_err(Failed::Final)?;
        // The statement was sent: a lost connection may have committed it.
        f(&self.conn).await.map_err(|e| {
            if let AppError::Db(db) = &e {
                note_acquire_timeout(db);
            }
            Failed::sort(e, Failed::Unknown)
        })
    }

    /// The one retry policy of every write (see [`Failed`]).
    async fn retrying<T, A>(&self, attempt_once: impl Fn() -> A) -> AppResult<T>
    where
        A: std::future::Future<Output = Result<T, Failed>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.metrics.record_write_attempt(attempt > 1);
            match attempt_once().await {
                Ok(v) => return Ok(v),
                Err(Failed::Unknown(e)) => {
                    tracing::warn!(attempt, error = %e, "write_outcome_unknown");
                    return Err(AppError::OutcomeUnknown(
                        "the database connection was lost during the write: it may or may not \
                         have happened; retry with the same Idempotency-Key"
                            .to_owned(),
                    ));
                }
                // A dead pooled connection (or several, after a database restart), before
                // anything was committed. No backoff: the next attempt draws another
                // connection, or fails at once when none can be made (the database is down:
                // the client hears so fast).
                Err(Failed::NotDone(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::info!(attempt, error = %e, "write_retry_after_connection_loss");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(Failed::Conflict(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "write_retry");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(Failed::Conflict(e)) => {
                    tracing::warn!(attempt, error = %e, "write_retries_exhausted");
                    return Err(AppError::Unavailable(
                        "the database is too busy; retry shortly".to_owned(),
                    ));
                }
                Err(Failed::NotDone(e) | Failed::Final(e)) => return Err(e),
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

    /// One attempt of a transaction; `decide` says what the body's answer means.
    async fn transaction_once<R, T, F>(
        &self,
        f: &F,
        commit: &CommitState,
        decide: fn(R) -> Decision<T>,
    ) -> Result<T, Failed>
    where
        F: for<'c> Fn(&'c DatabaseTransaction) -> BoxFuture<'c, AppResult<R>>,
    {
        // Before COMMIT nothing happened: a lost connection may be retried.
        let before = |e: AppError| Failed::sort(e, Failed::NotDone);
        let _permit = self.write_permit().await.map_err(Failed::Final)?;
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
            .map_err(|e| {
                note_acquire_timeout(&e);
                before(e.into())
            })?;
        // On error the transaction is dropped, which rolls it back.
        let value = match decide(f(&txn).await.map_err(before)?) {
            Decision::Commit(value) => value,
            Decision::RollBack(value) => {
                // Nothing of it may become visible. A failed rollback (the connection died)
                // is a rollback too: nothing was committed.
                if let Err(e) = txn.rollback().await {
                    tracing::debug!(error = %e, "write_rollback_failed");
                }
                return Ok(value);
            }
        };
        fail::fail_point!("db::before_commit", |arg| {
            let e = crate::storage::injected("db::before_commit", arg);
            Err(Failed::Final(AppError::Unavailable(format!(
                "the database is unavailable ({e}); retry"
            ))))
        });
        commit.set(true);
        if let Err(e) = txn.commit().await {
            let e = AppError::from(e);
            if e.commit_outcome_unknown() {
                // Never run it again, and leave `commit` set: it may have happened.
                return Err(Failed::Unknown(e));
            }
            commit.set(false);
            return Err(Failed::sort(e, Failed::Final));
        }
        // Tests hold a committed write here (`return(ms)`) while its client goes away.
        crate::failpoints::hold("db::after_commit").await;
        Ok(value)
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> AppResult<()> {
        self.conn
            .execute_unprepared("SELECT 1")
            .await
            .inspect_err(note_acquire_timeout)?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Err(e) = self.conn.close_by_ref().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

/// What a transaction body decided (see [`Db::write_deciding`]).
pub enum Decision<T> {
    /// Commit the writes; answer `T`.
    Commit(T),
    /// Roll the writes back (nothing of them becomes visible); answer `T` all the same.
    RollBack(T),
}

/// How one attempt of a write failed, which decides what the retry policy does: the
/// difference between a transaction and a single autocommit statement is only in how their
/// errors are sorted into these.
enum Failed {
    /// It provably did not happen and its connection died: run it again on another one.
    NotDone(AppError),
    /// A transient conflict (busy, serialization failure, deadlock) the database rolled back:
    /// run it again after a backoff.
    Conflict(AppError),
    /// It may have happened (COMMIT sent, or a statement's connection died): never again.
    Unknown(AppError),
    /// Anything else: the answer.
    Final(AppError),
}

impl Failed {
    /// Sorts an error of one attempt; `lost` says what a lost connection means at that point.
    fn sort(e: AppError, lost: fn(AppError) -> Failed) -> Failed {
        if e.is_connection_lost() {
            lost(e)
        } else if e.is_retryable_conflict() {
            Failed::Conflict(e)
        } else {
            Failed::Final(e)
        }
    }
}

/// Whether a write transaction's COMMIT may have happened (see [`Db::write_observed`]).
#[derive(Debug, Default)]
pub struct CommitState(std::sync::atomic::AtomicBool);

impl CommitState {
    fn set(&self, may_have_committed: bool) {
        self.0
            .store(may_have_committed, std::sync::atomic::Ordering::SeqCst);
    }

    /// True from the moment COMMIT is sent until the database answers that it rolled back.
    pub fn may_have_committed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Counts `e` in `atelier_db_pool_acquire_timeouts_total` when it is a wait for a pooled
/// connection that timed out. Only where `Db` sees the error (write transactions, autocommit
/// writes, readiness pings): reads run their statements on `conn()` directly.
fn note_acquire_timeout(e: &DbErr) {
    if matches!(e, DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)) {
        crate::metrics::record_pool_acquire_timeout();
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    Duration::from_millis(base + rand::random_range(0..=base))
}

/// Get-or-create without duplicates: inserts `row` unless a row with the
/// same `unique` key exists (`INSERT … ON CONFLICT DO NOTHING`), then reads the one that
/// stands, `winner`. Every racer gets the same row; `created` tells the one whose insert won
/// (invariant I8, docs/ARCHITECTURE.md).
pub async fn get_or_create<A, C, I>(
    conn: &C,
    row: A,
    unique: I,
    winner: sea_orm::Select<A::Entity>,
) -> AppResult<(<A::Entity as sea_orm::EntityTrait>::Model, bool)>
where
    A: sea_orm::ActiveModelTrait + Send,
    C: ConnectionTrait,
    I: IntoIterator<Item = <A::Entity as sea_orm::EntityTrait>::Column>,
{
    use sea_orm::{EntityName, EntityTrait};
    let table = A::Entity::default().table_name();
    let inserted = A::Entity::insert(row)
        .on_conflict_do_nothing_on(unique)
        .exec_without_returning(conn)
        .await?;
    let created = matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0);
    if !created {
        tracing::debug!(table = %table, "get_or_create_lost_race");
    }
    let model = winner
        .one(conn)
        .await?
        .ok_or_else(|| AppError::internal(format!("{table} row vanished after get-or-create")))?;
    Ok((model, created))
}

/// Runs the migrations on a connected database.
pub async fn migrate(db: &Db) -> AppResult<()> {
    use migration::MigratorTrait;
    if up_to_date(db).await {
        return Ok(());
    }
    migration::Migrator::up(db.conn(), None).await?;
    Ok(())
}

/// Whether every migration this binary knows is applied already, by one query: the migrator's
/// own check takes several round trips (it re-creates its table each time), which is most of
/// a short CLI command's time on PostgreSQL (`atelier import` of a directory imported before).
/// Any doubt (no table yet, another error) says no, and the migrator decides.
async fn up_to_date(db: &Db) -> bool {
    use migration::MigratorTrait;
    use sea_orm::{ConnectionTrait, Statement};
    let known: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let rows = db
        .conn
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await;
    let Ok(rows) = rows else {
        return false;
    };
    let applied: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "version").ok())
        .collect();
    // Exactly the known set: a database that has migrations this binary does not know goes
    // to the migrator, which refuses it as before.
    applied.len() == known.len() && known.iter().all(|k| applied.contains(k))
}
