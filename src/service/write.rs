//! The one path by which a mutation's rows and bytes become durable together: blobs staged
//! before the transaction are published after its commit, deleted when it certainly failed,
//! and kept (as `.pending`) when the commit's outcome is unknown (a lost reply, or the request
//! dropped while COMMIT was on the wire), for the database to decide. With an idempotency
//! [`Effect`], the mutation's outcome is recorded in the same transaction, and a repeat
//! replays it instead of applying the mutation again (invariant I9, docs/ARCHITECTURE.md).

use entity::idempotency_effect;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, EntityTrait};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    db::{CommitState, Decision},
    error::{AppError, AppResult},
    service::{Services, now},
    storage::StagedBlob,
};

/// Where one mutation field of an idempotent request records what it did.
#[derive(Clone, Debug)]
pub struct Effect {
    pub user_id: i64,
    pub key: String,
    /// `<operation index>.<response key>`: one request may run several mutations.
    pub path: String,
}

/// Blobs staged for one transaction. Dropped before COMMIT may have happened: deleted (each
/// [`StagedBlob`] removes its file). Dropped after: kept for the database to decide.
struct Staged {
    blobs: Vec<StagedBlob>,
    commit: CommitState,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.commit.may_have_committed() {
            for blob in self.blobs.drain(..) {
                blob.keep_pending();
            }
        }
    }
}

/// Runs `f` in a write transaction (see [`crate::db::Db::write`]) for which `blobs` were
/// staged, and publishes them once it committed. With `effect`, a mutation that already
/// committed under the same idempotency key is not run again: its recorded outcome is
/// returned instead.
pub async fn commit<T, F>(
    svc: &Services,
    blobs: Vec<StagedBlob>,
    effect: Option<&Effect>,
    f: F,
) -> AppResult<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: for<'c> Fn(&'c DatabaseTransaction) -> futures::future::BoxFuture<'c, AppResult<T>>
        + Send
        + Sync,
{
    commit_deciding(svc, blobs, effect, |txn| {
        let body = f(txn);
        Box::pin(async move { body.await.map(Decision::Commit) })
    })
    .await
}

/// [`commit`] for a body that may decide to roll back ([`Decision::RollBack`]): then its
/// staged blobs are deleted, no effect is recorded, and its answer is returned.
pub async fn commit_deciding<T, F>(
    svc: &Services,
    blobs: Vec<StagedBlob>,
    effect: Option<&Effect>,
    f: F,
) -> AppResult<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: for<'c> Fn(
            &'c DatabaseTransaction,
        ) -> futures::future::BoxFuture<'c, AppResult<Decision<T>>>
        + Send
        + Sync,
{
    let mut staged = Staged {
        blobs,
        commit: CommitState::default(),
    };
    // Tests hold a staged write here (`return(ms)`), e.g. while a second process starts.
    crate::failpoints::hold("write::after_stage").await;
    let written = svc
        .db
        .write_deciding(&staged.commit, |txn| {
            let run = f(txn);
            let effect = effect.cloned();
            Box::pin(async move {
                if let Some(effect) = &effect
                    && let Some(done) = recorded(txn, effect).await?
                {
                    return Ok(Decision::RollBack(Outcome::Replayed(done)));
                }
                let value = match run.await? {
                    Decision::Commit(value) => value,
                    Decision::RollBack(value) => {
                        return Ok(Decision::RollBack(Outcome::RolledBack(value)));
                    }
                };
                if let Some(effect) = &effect
                    && record(txn, effect, &value).await? == Recorded::AlreadyApplied
                {
                    // Another execution of the key committed first: ours must not.
                    return Ok(Decision::RollBack(Outcome::AlreadyApplied));
                }
                Ok(Decision::Commit(Outcome::Applied(value)))
            })
        })
        .await?;
    match written {
        Outcome::Applied(value) => {
            // One at a time out of `staged`: if this future is dropped here, the blobs not yet
            // handed to a publish stay in `staged`, whose drop keeps them for the sweep.
            while let Some(blob) = staged.blobs.pop() {
                svc.blobs.publish_committed(blob).await;
            }
            Ok(value)
        }
        // Nothing of ours was committed: our staged copies go.
        Outcome::RolledBack(value) => Ok(value),
        Outcome::Replayed(value) => replayed(effect, value),
        Outcome::AlreadyApplied => {
            let effect = effect.expect("only an effect can be already applied");
            let value = recorded(svc.db.conn(), effect)
                .await?
                .ok_or_else(|| AppError::internal("an applied effect vanished"))?;
            replayed(Some(effect), value)
        }
    }
}

/// How a write under [`commit_deciding`] ended. Private: every case is an answer.
enum Outcome<T> {
    /// Committed.
    Applied(T),
    /// The body decided to roll back.
    RolledBack(T),
    /// Committed before under the same idempotency key: its recorded outcome.
    Replayed(String),
    /// Another execution of the same key committed while this one ran; its outcome is read
    /// after this transaction rolled back.
    AlreadyApplied,
}

/// Whether [`record`] recorded this execution's effect.
#[derive(PartialEq, Eq)]
enum Recorded {
    Recorded,
    AlreadyApplied,
}

fn replayed<T: DeserializeOwned>(effect: Option<&Effect>, outcome: String) -> AppResult<T> {
    if let Some(effect) = effect {
        tracing::info!(idempotency.key = %effect.key, idempotency.path = %effect.path, "idempotent_mutation_replayed");
    }
    serde_json::from_str(&outcome)
        .map_err(|e| AppError::internal(format!("recorded outcome does not parse: {e}")))
}

async fn recorded<C: sea_orm::ConnectionTrait>(
    conn: &C,
    effect: &Effect,
) -> AppResult<Option<String>> {
    Ok(idempotency_effect::Entity::find_by_id((
        effect.user_id,
        effect.key.clone(),
        effect.path.clone(),
    ))
    .one(conn)
    .await?
    .map(|e| e.outcome))
}

/// Records the effect in the mutation's transaction. Another execution of the same key that
/// committed first makes this insert conflict (PostgreSQL waits for it to decide): then this
/// transaction must roll back, and the other's outcome is answered.
async fn record<T: Serialize>(
    txn: &DatabaseTransaction,
    effect: &Effect,
    value: &T,
) -> AppResult<Recorded> {
    let outcome = serde_json::to_string(value).map_err(AppError::internal)?;
    let inserted = idempotency_effect::Entity::insert(idempotency_effect::ActiveModel {
        user_id: Set(effect.user_id),
        idem_key: Set(effect.key.clone()),
        path: Set(effect.path.clone()),
        outcome: Set(outcome),
        created_at: Set(now()),
    })
    .on_conflict_do_nothing_on([
        idempotency_effect::Column::UserId,
        idempotency_effect::Column::IdemKey,
        idempotency_effect::Column::Path,
    ])
    .exec_without_returning(txn)
    .await?;
    Ok(match inserted {
        sea_orm::TryInsertResult::Inserted(n) if n > 0 => Recorded::Recorded,
        _ => Recorded::AlreadyApplied,
    })
}
