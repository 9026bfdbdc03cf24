//! `Idempotency-Key` on mutation requests: per user, a key is claimed before
//! the request executes, and its answer is recorded when it is done. A repeat gets the recorded
//! answer; a repeat while the first still runs waits for it; a repeat after an answer of
//! unknown outcome (UNAVAILABLE) executes again, and each mutation field that had committed
//! replays its recorded effect (see `service::write`) instead of applying twice (invariant I9,
//! docs/ARCHITECTURE.md). The database is the only arbiter, so this holds across processes.

use std::time::{Duration, Instant};

use entity::{idempotency_effect, idempotency_key};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, TryInsertResult,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};

use crate::{
    domain::UserId,
    error::{AppError, AppResult},
    service::{
        Services,
        lease::{self, LeaseStatus},
        now,
    },
};

/// Longest key accepted (the header is opaque to us).
pub const MAX_KEY_LEN: usize = 255;
/// How long an execution holds a key before another request may take it over (its process
/// may have died). Taking over is safe: effects are recorded under a primary key.
const LEASE: Duration = Duration::from_secs(30);
/// How long a repeat waits for the execution holding its key.
const MAX_WAIT: Duration = Duration::from_secs(45);

/// The right to execute a keyed request, held until [`finish`] (or released on drop).
pub struct Claim {
    svc: Services,
    user_id: i64,
    key: String,
    holder: Option<String>,
}

/// What to do with a keyed request.
pub enum Begin {
    /// Nobody answered this key yet: execute, then [`finish`].
    Execute(Box<Claim>),
    /// Answered before: send this again.
    Replay { status: u16, body: String },
}

/// A key as sent: an opaque string (quoted as a structured-field string, or bare), 1 to 255
/// visible ASCII characters.
pub fn parse_key(raw: &str) -> AppResult<String> {
    let raw = raw.trim();
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(AppError::bad_input(
            "Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(key.to_owned())
}

/// SHA-256 of a JSON value with object keys sorted: the same request always hashes the same.
pub fn fingerprint(request: &serde_json::Value) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(request, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Claims `key` for this request, or finds its answer, waiting while another execution holds
/// it. The same key with another fingerprint is IDEMPOTENCY_KEY_REUSED.
pub async fn begin(svc: &Services, user: UserId, key: &str, fingerprint: &str) -> AppResult<Begin> {
    let holder = uuid::Uuid::new_v4().simple().to_string();
    let deadline = Instant::now() + MAX_WAIT;
    let mut delay = Duration::from_millis(2);
    loop {
        let at = now();
        let inserted = svc
            .db
            .write_one(|conn| {
                let row = idempotency_key::ActiveModel {
                    user_id: Set(user.0),
                    idem_key: Set(key.to_owned()),
                    fingerprint: Set(fingerprint.to_owned()),
                    state: Set(LeaseStatus::Running),
                    holder: Set(Some(holder.clone())),
                    lease_until: Set(at + LEASE),
                    status: Set(None),
                    response: Set(None),
                    created_at: Set(at),
                };
                Box::pin(async move {
                    Ok(idempotency_key::Entity::insert(row)
                        .on_conflict_do_nothing_on([
                            idempotency_key::Column::UserId,
                            idempotency_key::Column::IdemKey,
                        ])
                        .exec_without_returning(conn)
                        .await?)
                })
            })
            .await?;
        if matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            return Ok(Begin::Execute(Box::new(claim(svc, user, key, holder))));
        }
        let existing = idempotency_key::Entity::find_by_id((user.0, key.to_owned()))
            .one(svc.db.conn())
            .await?;
        if let Some(row) = existing {
            if row.fingerprint != fingerprint {
                return Err(AppError::IdempotencyKeyReused);
            }
            if row.state == LeaseStatus::Completed {
                tracing::info!(idempotency.key = key, "idempotent_request_replayed");
                return Ok(Begin::Replay {
                    status: row.status.unwrap_or(200) as u16,
                    body: row.response.unwrap_or_default(),
                });
            }
            if row.lease_until <= at && take_over(svc, &row, &holder, at).await? {
                tracing::info!(idempotency.key = key, "idempotency_key_taken_over");
                return Ok(Begin::Execute(Box::new(claim(svc, user, key, holder))));
            }
        }
        // Absent: it expired between our insert and read; try again.
        if Instant::now() >= deadline {
            return Err(AppError::Unavailable(
                "a request with this Idempotency-Key is still being processed; retry later"
                    .to_owned(),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

fn claim(svc: &Services, user: UserId, key: &str, holder: String) -> Claim {
    Claim {
        svc: svc.clone(),
        user_id: user.0,
        key: key.to_owned(),
        holder: Some(holder),
    }
}

/// Takes over a key whose execution's lease ran out (its process died, or it was released
/// after an answer of unknown outcome). Compare-and-set on the old holder: one taker wins.
async fn take_over(
    svc: &Services,
    row: &idempotency_key::Model,
    holder: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> AppResult<bool> {
    let result = svc
        .db
        .write_one(|conn| {
            let previous = match &row.holder {
                Some(h) => idempotency_key::Column::Holder.eq(h.clone()),
                None => idempotency_key::Column::Holder.is_null(),
            };
            let update = lease::claim::<idempotency_key::Entity>(
                Condition::all()
                    .add(the_key(row.user_id, &row.idem_key))
                    .add(idempotency_key::Column::State.eq(LeaseStatus::Running))
                    .add(idempotency_key::Column::LeaseUntil.eq(row.lease_until))
                    .add(previous),
                holder,
                at + LEASE,
            );
            Box::pin(async move { Ok(update.exec(conn).await?.rows_affected) })
        })
        .await?;
    Ok(result == 1)
}

/// Records the answer of an executed request (`record`), or, for an answer whose outcome is
/// unknown (UNAVAILABLE), releases the key so that a retry executes again at once.
pub async fn finish(mut claim: Claim, status: u16, body: &str, record: bool) {
    let Some(holder) = claim.holder.take() else {
        return;
    };
    let result = if record {
        complete(&claim.svc, claim.user_id, &claim.key, &holder, status, body).await
    } else {
        release(&claim.svc, claim.user_id, &claim.key, &holder).await
    };
    if let Err(e) = result {
        // The lease runs out by itself; a retry then executes and replays committed effects.
        tracing::warn!(idempotency.key = %claim.key, error = %e, "idempotency_finish_failed");
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The request went away before finishing (client gone, shutdown): let a retry in now
        // rather than after the lease.
        if let Some(holder) = self.holder.take() {
            let (svc, user, key) = (self.svc.clone(), self.user_id, self.key.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = release(&svc, user, &key, &holder).await;
                });
            }
        }
    }
}

/// Records the answer; only the holder of the key may.
async fn complete(
    svc: &Services,
    user: i64,
    key: &str,
    holder: &str,
    status: u16,
    body: &str,
) -> AppResult<()> {
    let update = lease::finish::<idempotency_key::Entity>(
        the_key(user, key),
        holder,
        LeaseStatus::Completed,
    )
    .col_expr(idempotency_key::Column::Status, Expr::value(status as i32))
    .col_expr(
        idempotency_key::Column::Response,
        Expr::value(body.to_owned()),
    )
    .col_expr(
        idempotency_key::Column::Holder,
        Expr::value(Option::<String>::None),
    );
    run(svc, update).await
}

/// Ends the lease at once, so a retry may take the key over.
async fn release(svc: &Services, user: i64, key: &str, holder: &str) -> AppResult<()> {
    run(
        svc,
        lease::release::<idempotency_key::Entity>(the_key(user, key), holder, now()),
    )
    .await
}

/// The row of (user, key).
fn the_key(user: i64, key: &str) -> Condition {
    Condition::all()
        .add(idempotency_key::Column::UserId.eq(user))
        .add(idempotency_key::Column::IdemKey.eq(key.to_owned()))
}

/// Runs a lease step on a key (one autocommit statement; a holder that lost the key changes
/// nothing, and then the new holder's answer stands).
async fn run(
    svc: &Services,
    update: sea_orm::UpdateMany<idempotency_key::Entity>,
) -> AppResult<()> {
    svc.db
        .write_one(|conn| {
            let update = update.clone();
            Box::pin(async move {
                update.exec(conn).await?;
                Ok(())
            })
        })
        .await
}

/// Forgets keys (and their effects) older than `ttl`.
pub async fn expire(svc: &Services, ttl: Duration) -> AppResult<u64> {
    let cutoff = now() - chrono::Duration::from_std(ttl).map_err(AppError::internal)?;
    let keys = idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(cutoff))
        .exec(svc.db.conn())
        .await?
        .rows_affected;
    idempotency_effect::Entity::delete_many()
        .filter(idempotency_effect::Column::CreatedAt.lt(cutoff))
        .exec(svc.db.conn())
        .await?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_only() {
        let a =
            serde_json::json!({"query": "q", "variables": {"a": 1, "b": [1, {"y": 2, "x": 1}]}});
        let b =
            serde_json::json!({"variables": {"b": [1, {"x": 1, "y": 2}], "a": 1}, "query": "q"});
        let c =
            serde_json::json!({"query": "q", "variables": {"a": 1, "b": [{"x": 1, "y": 2}, 1]}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("\"abc-1\"").unwrap(), "abc-1");
        assert_eq!(parse_key("abc-1").unwrap(), "abc-1");
        assert!(parse_key("").is_err());
        assert!(parse_key(&"k".repeat(256)).is_err());
        assert!(parse_key("tab\there").is_err());
    }
}
