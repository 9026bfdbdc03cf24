//! The one error type of Atelier. Every variant maps to a stable `extensions.code`
//! (the client contract, docs/api.md); database errors are classified once, here.

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
    /// An editing session's save whose base version is no longer current: not a version, kept
    /// as conflicted save `conflict_id` (see `service::history`).
    #[error(
        "the project changed since this editor loaded it (now version {current}); the save is kept as conflicted save {conflict_id}"
    )]
    SaveConflicted { current: i32, conflict_id: i64 },
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
    /// A request, an operation or an input is over one of the server's bounds, or a caller
    /// holds as much as it may at once (code BAD_USER_INPUT, `extensions.limit` names the
    /// bound: `depth`, `complexity`, `aliases`, `batch`, `response_bytes`, `content_depth`,
    /// `subscriptions`).
    #[error("{message}")]
    LimitExceeded {
        limit: &'static str,
        /// The input field that carried too much, when one did (`content`).
        field: Option<&'static str>,
        message: String,
    },
    /// A per-user quota is full (code CONFLICT, reason QUOTA_EXCEEDED).
    #[error("the quota of {limit} {what} is full")]
    QuotaExceeded { what: &'static str, limit: u64 },
    /// Retryable trouble with the database or storage (busy, unreachable, disk full).
    #[error("{0}")]
    Unavailable(String),
    /// COMMIT was sent (or may have been) and its reply never came: the write may or may not
    /// have happened. Code UNAVAILABLE; a retry with the same Idempotency-Key is safe.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Db(DbErr),
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
    pub fn code(&self) -> Code {
        match self {
            AppError::Unauthenticated => Code::Unauthenticated,
            AppError::Forbidden(_) => Code::Forbidden,
            AppError::NotFound(_) => Code::NotFound,
            AppError::BadUserInput { .. } | AppError::LimitExceeded { .. } => Code::BadUserInput,
            AppError::VersionConflict { .. } | AppError::SaveConflicted { .. } => {
                Code::VersionConflict
            }
            AppError::Conflict(_)
            | AppError::IdempotencyKeyReused
            | AppError::QuotaExceeded { .. } => Code::Conflict,
            AppError::ChecksumMismatch(_) => Code::ChecksumMismatch,
            AppError::MissingAssets(_) => Code::MissingAssets,
            AppError::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            AppError::Unavailable(_) | AppError::OutcomeUnknown(_) => Code::Unavailable,
            AppError::Internal(_) => Code::Internal,
            AppError::Db(e) => match classify_db(e) {
                DbErrorKind::Transient
                | DbErrorKind::Unreachable
                | DbErrorKind::ResourceExhausted => Code::Unavailable,
                DbErrorKind::UniqueViolation => Code::Conflict,
                DbErrorKind::ForeignKeyViolation => Code::NotFound,
                DbErrorKind::Other => Code::Internal,
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
            _ if self.code() == Code::Unavailable => AppError::Unavailable(self.public_message()),
            _ => AppError::Internal(self.to_string()),
        }
    }

    /// The message a client sees. Internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self.code() {
            Code::Internal => "internal error".to_owned(),
            Code::Unavailable => match self {
                AppError::Unavailable(m) | AppError::OutcomeUnknown(m) => m.clone(),
                AppError::Db(e) if classify_db(e) == DbErrorKind::ResourceExhausted => {
                    "the database did not finish the request in time or is out of resources; \
                     retry later"
                        .to_owned()
                }
                _ => "the database is busy or unreachable; retry shortly".to_owned(),
            },
            Code::Conflict => match self {
                AppError::Conflict(m) => m.clone(),
                AppError::IdempotencyKeyReused | AppError::QuotaExceeded { .. } => self.to_string(),
                _ => "the write conflicts with existing data".to_owned(),
            },
            Code::NotFound => match self {
                AppError::Db(_) => "a row this write refers to no longer exists".to_owned(),
                _ => self.to_string(),
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

/// The stable error codes of the API (`extensions.code`). Clients match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    NotFound,
    BadUserInput,
    VersionConflict,
    Conflict,
    ChecksumMismatch,
    MissingAssets,
    PayloadTooLarge,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::VersionConflict => "VERSION_CONFLICT",
            Code::Conflict => "CONFLICT",
            Code::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Code::MissingAssets => "MISSING_ASSETS",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
        }
    }

    /// The HTTP status of an error answered before a GraphQL operation runs (errors during
    /// execution travel in a 200 response, as GraphQL over HTTP does).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Unauthenticated => 401,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::BadUserInput | Code::ChecksumMismatch | Code::MissingAssets => 400,
            Code::VersionConflict | Code::Conflict => 409,
            Code::PayloadTooLarge => 413,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// A row this write refers to is gone (or, on delete, is still referred to).
    ForeignKeyViolation,
    Other,
}

impl From<DbErr> for AppError {
    fn from(e: DbErr) -> Self {
        on_constraint(e)
    }
}

/// Foreign keys by the name PostgreSQL gives them, and the parent whose absence they report.
/// (SQLite does not name the constraint: its violations answer the generic parent.)
const FOREIGN_KEYS: &[(&str, &str)] = &[
    ("projects_owner_id_fkey", "user"),
    ("projects_remixed_from_fkey", "project"),
    ("project_assets_project_id_fkey", "project"),
    ("project_assets_asset_id_fkey", "asset"),
    ("project_shares_project_id_fkey", "project"),
    ("project_shares_group_id_fkey", "group"),
    ("group_members_group_id_fkey", "group"),
    ("group_members_user_id_fkey", "user"),
    ("api_tokens_user_id_fkey", "user"),
    ("sessions_user_id_fkey", "user"),
    ("backpack_items_owner_id_fkey", "user"),
    ("idempotency_keys_user_id_fkey", "user"),
    ("idempotency_effects_user_id_fkey", "user"),
];

/// Named constraints to domain answers, in one place: a foreign key that fails because its
/// parent vanished (a concurrent delete) is the parent's `NOT_FOUND`, not `INTERNAL`; one that
/// fails because a row is still referred to is a `CONFLICT`. Unique violations stay database
/// errors (code `CONFLICT`); the services turn the expected ones into their winner's row.
fn on_constraint(e: DbErr) -> AppError {
    let Some(SqlErr::ForeignKeyConstraintViolation(message)) = e.sql_err() else {
        return AppError::Db(e);
    };
    if message.contains("update or delete on") {
        return AppError::Conflict("it is still in use".to_owned());
    }
    let parent = FOREIGN_KEYS
        .iter()
        .find(|(name, _)| message.contains(name))
        .map_or("referenced row", |(_, parent)| *parent);
    tracing::debug!(error = %message, parent, "foreign_key_parent_vanished");
    AppError::NotFound(parent)
}

/// Classifies a database error once, for retries and for the client-facing code.
pub fn classify_db(e: &DbErr) -> DbErrorKind {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => return DbErrorKind::UniqueViolation,
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
            return DbErrorKind::ForeignKeyViolation;
        }
        _ => {}
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

    #[tokio::test]
    async fn a_vanished_parent_is_not_found_and_a_referenced_one_a_conflict() {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect("sqlite::memory:").await.unwrap();
        for sql in [
            "PRAGMA foreign_keys = ON",
            "CREATE TABLE parents (id INTEGER PRIMARY KEY)",
            "CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parents(id))",
            "INSERT INTO parents (id) VALUES (1)",
            "INSERT INTO children (id, parent_id) VALUES (1, 1)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        let orphan: AppError = db
            .execute_unprepared("INSERT INTO children (id, parent_id) VALUES (2, 99)")
            .await
            .unwrap_err()
            .into();
        assert_eq!(orphan.code(), super::Code::NotFound, "{orphan:?}");
        let still_used: AppError = db
            .execute_unprepared("DELETE FROM parents WHERE id = 1")
            .await
            .unwrap_err()
            .into();
        // SQLite does not say which way a foreign key failed: NOT_FOUND either way there;
        // PostgreSQL's "update or delete on" message makes it a CONFLICT.
        assert!(
            matches!(
                still_used.code(),
                super::Code::NotFound | super::Code::Conflict
            ),
            "{still_used:?}"
        );
    }

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
            assert_eq!(e.code(), super::Code::Unavailable, "{code}");
            assert!(!e.is_retryable_conflict(), "{code} must not be retried");
            assert!(!e.is_connection_lost(), "{code} is not a lost connection");
        }
    }

    #[test]
    fn lost_connections_and_conflicts_stay_retryable() {
        for code in ["57P01", "57P02", "57P03", "08000", "08003", "08006"] {
            let e = exec_err(code);
            assert_eq!(e.code(), super::Code::Unavailable, "{code}");
            assert!(e.is_connection_lost(), "{code}");
            assert!(!e.is_retryable_conflict(), "{code}");
        }
        for code in ["40001", "40P01", "5", "261", "517", "6", "262"] {
            let e = exec_err(code);
            assert_eq!(e.code(), super::Code::Unavailable, "{code}");
            assert!(e.is_retryable_conflict(), "{code}");
            assert!(!e.is_connection_lost(), "{code}");
        }
    }
}
