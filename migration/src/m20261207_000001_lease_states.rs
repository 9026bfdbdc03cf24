//! One vocabulary for leased rows (`pending`, `running`, `completed`, `failed`): import runs
//! held under a claim were `pending`, now `running`; answered idempotency keys were
//! `complete`, and built export jobs `ready`, both now `completed`.
//!
//! It also retires every built export: bundles built before entries were named exactly as
//! `project.json` references them (they were lowercased) do not load in the editor. A retired
//! job is `failed` with a reason and without its bundle (which `gc` then collects), so the
//! next `exportProject` of that version builds a new one; a download of the old job answers
//! that the export failed and to export again.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `jobs.error` of a retired export.
pub const RETIRED_EXPORT: &str =
    "this export was built by an earlier version whose bundles may not load; export again";

/// (table, column, old value, new value) of each rename.
const RENAMES: [(&str, &str, &str, &str); 3] = [
    ("import_runs", "status", "pending", "running"),
    ("idempotency_keys", "state", "complete", "completed"),
    ("jobs", "status", "ready", "completed"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // Retire first, while built exports still read `ready`.
        let retire = Query::update()
            .table("jobs")
            .value("status", "failed")
            .value("error", RETIRED_EXPORT)
            .value("bundle_key", Option::<String>::None)
            .value("bundle_size", Option::<i64>::None)
            .and_where(Expr::col("kind").eq("export_sb3"))
            .and_where(Expr::col("status").eq("ready"))
            .to_owned();
        db.execute(&retire).await?;
        for (table, column, old, new) in RENAMES {
            rename(db, table, column, old, new).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Retired exports stay failed: their bundles are gone.
        let db = manager.get_connection();
        for (table, column, old, new) in RENAMES {
            rename(db, table, column, new, old).await?;
        }
        Ok(())
    }
}

async fn rename(
    db: &SchemaManagerConnection<'_>,
    table: &'static str,
    column: &'static str,
    from: &str,
    to: &str,
) -> Result<(), DbErr> {
    let update = Query::update()
        .table(table)
        .value(column, to)
        .and_where(Expr::col(column).eq(from))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}
