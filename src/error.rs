//! The one error type of Atelier. Every variant maps to a stable `extensions.code`
//! (DESIGN.md §6); database errors are classified once, here.

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

pub type AppResult<T> = Result<T, AppError>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    BadUserInput {
        message: String,
        field: Option<&'static str>,
    },
    #[error("version conflict: expected {expected}, current {current}")]
    VersionConflict {
        expected: i32,
        current: i32,
        /// Advice for a client that will re-read and try again (see `service::pacing`).
        retry_after: Option<std::time::Duration>,
    },
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("project references assets that are not stored: {}", .0.join(", "))]
    MissingAssets(Vec<String>),
    #[error("{what} exceeds the limit of {limit} bytes")]
    PayloadTooLarge { what: &'static str, limit: u64 },
    /// Retryable trouble with the database or storage (busy, unreachable, disk full).
    #[error("{0}")]
    Unavailable(String),
    /// COMMIT was sent (or may have been) and its reply never came: the write may or may not
    /// have happened. Code UNAVAILABLE; a retry with the same Idempotency-Key is safe.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Internal signal of the write helper: another execution of the same idempotency key
    /// committed this mutation first. Answered with that execution's outcome; never reaches
    /// a client as an error.
    #[error("the mutation was already applied under this Idempotency-Key")]
    AlreadyApplied,
    #[error(transparent)]
    Db(#[from] DbErr),
}

impl AppError {
    pub fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        AppError::BadUserInput {
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        AppError::Internal(message.to_string())
    }

    /// The stable code clients match on (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadUserInput { .. } => "BAD_USER_INPUT",
            AppError::VersionConflict { .. } => "VERSION_CONFLICT",
            AppError::Conflict(_) | AppError::AlreadyApplied | AppError::IdempotencyKeyReused => {
                "CONFLICT"
            }
            AppError::ChecksumMismatch(_) => "CHECKSUM_MISMATCH",
            AppError::MissingAssets(_) => "MISSING_ASSETS",
            AppError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            AppError::Unavailable(_) | AppError::OutcomeUnknown(_) => "UNAVAILABLE",
            AppError::Internal(_) => "INTERNAL",
            AppError::Db(e) => match classify_db(e) {
                DbErrorKind::Transient
                | DbErrorKind::Unreachable
                | DbErrorKind::ResourceExhausted => "UNAVAILABLE",
                DbErrorKind::UniqueViolation => "CONFLICT",
                DbErrorKind::Other => "INTERNAL",
            },
        }
    }

    /// Whether a transaction that failed with this error may simply be run again.
    pub fn is_retryable_conflict(&self) -> bool {
        matches!(self, AppError::Db(e) if classify_db(e) == DbErrorKind::Transient)
    }

    /// Whether a failed COMMIT may still have committed: the reply was lost (connection or
    /// protocol failure). An error the database itself answered means it rolled back.
    pub fn commit_outcome_unknown(&self) -> bool {
        use sea_orm::sqlx::Error;
        let AppError::Db(e) = self else {
            return false;
        };
        match e {
            DbErr::Conn(RuntimeErr::SqlxError(se))
            | DbErr::Exec(RuntimeErr::SqlxError(se))
            | DbErr::Query(RuntimeErr::SqlxError(se)) => match &**se {
                // The server answered. Only an administrator's shutdown or a crash in the
                // middle (57P0x) leaves it open whether the commit was written first.
                Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
                _ => true,
            },
            // Not an error from the wire: we cannot tell, so assume it may have happened.
            _ => true,
        }
    }

    /// Whether a connection we held went away mid-transaction. Not when no connection could be
    /// had at all: then the database is down and the client should hear so at once.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, AppError::Db(e)
            if !matches!(e, DbErr::ConnectionAcquire(_)) && classify_db(e) == DbErrorKind::Unreachable)
    }

    /// The same failure again, for each of several callers that waited on one operation:
    /// same code and same public message (the details were logged once).
    pub fn shareable(&self) -> AppError {
        match self {
            AppError::Unavailable(m) => AppError::Unavailable(m.clone()),
            AppError::OutcomeUnknown(m) => AppError::OutcomeUnknown(m.clone()),
            _ if self.code() == "UNAVAILABLE" => AppError::Unavailable(self.public_message()),
            _ => AppError::Internal(self.to_string()),
        }
    }

    /// The message a client sees. Internal details stay in the log.
    fn public_message(&self) -> String {
        match self.code() {
            "INTERNAL" => "internal error".to_owned(),
            "UNAVAILABLE" => match self {
                AppError::Unavailable(m) | AppError::OutcomeUnknown(m) => m.clone(),
                AppError::Db(e) if classify_db(e) == DbErrorKind::ResourceExhausted => {
                    "the database did not finish the request in time or is out of resources; \
                     retry later"
                        .to_owned()
                }
                _ => "the database is busy or unreachable; retry shortly".to_owned(),
            },
            "CONFLICT" => match self {
                AppError::Conflict(m) => m.clone(),
                AppError::IdempotencyKeyReused => self.to_string(),
                _ => "the write conflicts with existing data".to_owned(),
            },
            _ => self.to_string(),
        }
    }
}

impl From<std::io::Error> for AppError {
    fn from(e: std::io::Error) -> Self {
        // Disk full and friends are the operator's problem and retryable for the client.
        match e.raw_os_error() {
            Some(code) if code == 28 /* ENOSPC */ || code == 122 /* EDQUOT */ => {
                AppError::Unavailable("storage is full; retry later".to_owned())
            }
            _ => AppError::Unavailable(format!("storage error: {e}")),
        }
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        match code {
            "INTERNAL" => tracing::error!(error = %self, error.debug = ?self, "internal error"),
            "UNAVAILABLE" => tracing::warn!(error = %self, "request failed: unavailable"),
            _ => tracing::debug!(error = %self, error.code = code, "request rejected"),
        }
        async_graphql::Error::new(self.public_message()).extend_with(|_, ext| {
            ext.set("code", code);
            match self {
                AppError::BadUserInput {
                    field: Some(field), ..
                } => ext.set("field", *field),
                AppError::VersionConflict {
                    expected,
                    current,
                    retry_after,
                } => {
                    ext.set("expectedVersion", *expected);
                    ext.set("currentVersion", *current);
                    if let Some(wait) = retry_after {
                        ext.set("retryAfterMs", wait.as_micros().div_ceil(1000) as u64);
                    }
                }
                AppError::MissingAssets(missing) => ext.set("missing", missing.clone()),
                AppError::IdempotencyKeyReused => ext.set("reason", "IDEMPOTENCY_KEY_REUSED"),
                AppError::PayloadTooLarge { limit, .. } => ext.set("limit", *limit),
                _ => {}
            }
        })
    }
}

/// Resolver-boundary conversion that keeps the extensions (a bare `?` would drop them through
/// async-graphql's blanket `From<Display>`).
pub trait GqlResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResultExt<T> for AppResult<T> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.extend())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// Serialization failure, deadlock, SQLite busy/locked: run the transaction again.
    Transient,
    /// Connection refused, pool timeout, connection lost: the database is not there right now.
    Unreachable,
    /// The database is there but refused to finish: statement or lock timeout (the write was
    /// blocked, e.g. on a row lock), query canceled, disk full, out of memory. Nothing was
    /// committed, but running it again would wait or fail the same way, multiplying the
    /// client's wait: answer `UNAVAILABLE` at once, never retry.
    ResourceExhausted,
    UniqueViolation,
    Other,
}

/// Classifies a database error once, for retries and for the client-facing code.
pub fn classify_db(e: &DbErr) -> DbErrorKind {
    if let Some(SqlErr::UniqueConstraintViolation(_)) = e.sql_err() {
        return DbErrorKind::UniqueViolation;
    }
    match e {
        DbErr::ConnectionAcquire(_) => DbErrorKind::Unreachable,
        DbErr::Conn(RuntimeErr::SqlxError(se))
        | DbErr::Exec(RuntimeErr::SqlxError(se))
        | DbErr::Query(RuntimeErr::SqlxError(se)) => classify_sqlx(se),
        DbErr::Conn(_) => DbErrorKind::Unreachable,
        _ => DbErrorKind::Other,
    }
}

fn classify_sqlx(e: &sea_orm::sqlx::Error) -> DbErrorKind {
    use sea_orm::sqlx::Error;
    match e {
        Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // PostgreSQL: serialization_failure, deadlock_detected.
                "40001" | "40P01" => DbErrorKind::Transient,
                // PostgreSQL: admin shutdown / crash / cannot connect now, connection failures.
                "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" => {
                    DbErrorKind::Unreachable
                }
                // PostgreSQL: query_canceled (statement_timeout, pg_cancel_backend) and
                // lock_not_available (lock_timeout; nothing here uses NOWAIT): the time budget
                // is spent, a retry would wait it out again.
                "57014" | "55P03" => DbErrorKind::ResourceExhausted,
                // SQLite primary and extended codes for BUSY (5, 261, 517) and LOCKED (6, 262).
                "5" | "261" | "517" | "6" | "262" => DbErrorKind::Transient,
                // SQLITE_FULL; PostgreSQL disk_full, out_of_memory.
                "13" | "53100" | "53200" => DbErrorKind::ResourceExhausted,
                _ => DbErrorKind::Other,
            }
        }
        Error::PoolTimedOut | Error::PoolClosed | Error::Io(_) | Error::Tls(_) => {
            DbErrorKind::Unreachable
        }
        Error::Protocol(_) | Error::WorkerCrashed => DbErrorKind::Unreachable,
        _ => DbErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::{AppError, DbErrorKind, classify_db};

    /// A database error with just a code, as PostgreSQL (SQLSTATE) or SQLite (result code)
    /// reports it.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn exec_err(code: &'static str) -> AppError {
        AppError::Db(DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::Database(Box::new(Coded(code))).into(),
        )))
    }

    #[test]
    fn timeouts_and_full_disks_are_unavailable_and_never_retried() {
        // statement timeout / query canceled, lock timeout, PostgreSQL disk full and out of
        // memory, SQLITE_FULL.
        for code in ["57014", "55P03", "53100", "53200", "13"] {
            let e = exec_err(code);
            let AppError::Db(db) = &e else { unreachable!() };
            assert_eq!(classify_db(db), DbErrorKind::ResourceExhausted, "{code}");
            assert_eq!(e.code(), "UNAVAILABLE", "{code}");
            assert!(!e.is_retryable_conflict(), "{code} must not be retried");
            assert!(!e.is_connection_lost(), "{code} is not a lost connection");
        }
    }

    #[test]
    fn lost_connections_and_conflicts_stay_retryable() {
        for code in ["57P01", "57P02", "57P03", "08000", "08003", "08006"] {
            let e = exec_err(code);
            assert_eq!(e.code(), "UNAVAILABLE", "{code}");
            assert!(e.is_connection_lost(), "{code}");
            assert!(!e.is_retryable_conflict(), "{code}");
        }
        for code in ["40001", "40P01", "5", "261", "517", "6", "262"] {
            let e = exec_err(code);
            assert_eq!(e.code(), "UNAVAILABLE", "{code}");
            assert!(e.is_retryable_conflict(), "{code}");
            assert!(!e.is_connection_lost(), "{code}");
        }
    }
}
