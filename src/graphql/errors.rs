//! How an [`AppError`] reaches a GraphQL client: its message and `extensions`, with its stable code.

use async_graphql::ErrorExtensions;

use crate::error::{AppError, AppResult, Code};

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        match code {
            Code::Internal => tracing::error!(error = %self, error.debug = ?self, "internal error"),
            Code::Unavailable => tracing::warn!(error = %self, "request failed: unavailable"),
            _ => tracing::debug!(error = %self, error.code = %code, "request rejected"),
        }
        async_graphql::Error::new(self.public_message()).extend_with(|_, ext| {
            ext.set("code", code.as_str());
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
                AppError::SaveConflicted {
                    current,
                    conflict_id,
                } => {
                    ext.set("currentVersion", *current);
                    ext.set("conflictId", conflict_id.to_string());
                }
                AppError::MissingAssets(missing) => ext.set("missing", missing.clone()),
                AppError::IdempotencyKeyReused => ext.set("reason", "IDEMPOTENCY_KEY_REUSED"),
                AppError::QuotaExceeded { limit, .. } => {
                    ext.set("reason", "QUOTA_EXCEEDED");
                    ext.set("limit", *limit);
                }
                AppError::PayloadTooLarge { limit, .. } => ext.set("limit", *limit),
                AppError::LimitExceeded { limit, field, .. } => {
                    ext.set("limit", *limit);
                    if let Some(field) = field {
                        ext.set("field", *field);
                    }
                }
                _ => {}
            }
        })
    }
}

/// The error as a GraphQL response error without a location or path: a whole request or
/// operation was refused (before execution, or by a bound), not one field.
pub fn request_error(e: &AppError) -> async_graphql::ServerError {
    let err = e.extend();
    let mut server_error = async_graphql::ServerError::new(err.message, None);
    server_error.extensions = err.extensions;
    server_error
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

/// A dataloader's error: one failure shared by every key of its batch, with its code intact.
impl<T> GqlResultExt<T> for Result<T, std::sync::Arc<AppError>> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.as_ref().extend())
    }
}
