//! Migrations run up, down and up again on both backends.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::harness::PgDatabase;

const TABLES: [&str; 12] = [
    "users",
    "api_tokens",
    "sessions",
    "groups",
    "group_members",
    "projects",
    "project_shares",
    "assets",
    "project_assets",
    "backpack_items",
    "import_runs",
    "jobs",
];

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => "SELECT name AS t FROM sqlite_master WHERE type = 'table'",
        _ => {
            "SELECT table_name::text AS t FROM information_schema.tables WHERE table_schema = 'public'"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap();
    let mut names: Vec<String> = rows.iter().map(|r| r.try_get("", "t").unwrap()).collect();
    names.retain(|t| TABLES.contains(&t.as_str()));
    names.sort();
    names
}

async fn up_down_up(db: DatabaseConnection) {
    Migrator::up(&db, None).await.unwrap();
    let mut expected: Vec<String> = TABLES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(tables(&db).await, expected);
    // The uniqueness the design relies on is enforced by the database.
    db.execute_unprepared("INSERT INTO users (provider, subject, display_name, role, created_at) VALUES ('p', 's', 'n', 'student', CURRENT_TIMESTAMP)").await.unwrap();
    let dup = db.execute_unprepared("INSERT INTO users (provider, subject, display_name, role, created_at) VALUES ('p', 's', 'n2', 'student', CURRENT_TIMESTAMP)").await;
    assert!(dup.is_err(), "unique (provider, subject)");
    db.execute_unprepared("INSERT INTO assets (md5, asset_type, sha256, size, content_type, data_format, blob_key, created_at) VALUES ('m', 'sound', 's', 1, 'audio/wav', 'wav', 'k', CURRENT_TIMESTAMP)").await.unwrap();
    let dup = db.execute_unprepared("INSERT INTO assets (md5, asset_type, sha256, size, content_type, data_format, blob_key, created_at) VALUES ('m', 'sound', 's', 1, 'audio/wav', 'wav', 'k', CURRENT_TIMESTAMP)").await;
    assert!(dup.is_err(), "unique (md5, asset_type)");
    db.execute_unprepared("INSERT INTO assets (md5, asset_type, sha256, size, content_type, data_format, blob_key, created_at) VALUES ('m', 'image_vector', 's', 1, 'image/svg+xml', 'svg', 'k', CURRENT_TIMESTAMP)").await.unwrap();
    // One live job per (kind, subject, version); a failed one does not block a retry.
    db.execute_unprepared("INSERT INTO jobs (kind, subject_id, subject_version, status, created_at, updated_at) VALUES ('export_sb3', 1, 1, 'failed', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)").await.unwrap();
    db.execute_unprepared("INSERT INTO jobs (kind, subject_id, subject_version, status, created_at, updated_at) VALUES ('export_sb3', 1, 1, 'pending', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)").await.unwrap();
    let dup = db.execute_unprepared("INSERT INTO jobs (kind, subject_id, subject_version, status, created_at, updated_at) VALUES ('export_sb3', 1, 1, 'running', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)").await;
    assert!(dup.is_err(), "at most one live job");

    Migrator::down(&db, None).await.unwrap();
    assert!(tables(&db).await.is_empty());
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await.len(), TABLES.len());
    let _ = db.close().await;
}

#[tokio::test]
async fn migrations_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    up_down_up(Database::connect(url).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn migrations_postgres() {
    let pg = PgDatabase::create_empty().await;
    up_down_up(Database::connect(&pg.url).await.unwrap()).await;
}

async fn text(db: &DatabaseConnection, sql: &str) -> Option<String> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<Option<String>>("", "v").unwrap()
}

/// The lease-states migration: rows written in the old words read in the one vocabulary,
/// and every built export is retired (failed, without its bundle) so it is built again.
async fn lease_states(db: DatabaseConnection) {
    // Every migration before this one (later ones may follow it).
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261207_000001_lease_states")
        .expect("the lease-states migration") as u32;
    Migrator::up(&db, Some(before)).await.unwrap();
    for sql in [
        "INSERT INTO users (id, provider, subject, display_name, role, created_at) VALUES (1, 'p', 's', 'n', 'student', CURRENT_TIMESTAMP)",
        "INSERT INTO jobs (id, kind, subject_id, subject_version, status, bundle_key, bundle_size, attempts, created_at, updated_at) VALUES (1, 'export_sb3', 1, 1, 'ready', 'k1', 10, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO jobs (id, kind, subject_id, subject_version, status, attempts, created_at, updated_at) VALUES (2, 'export_sb3', 1, 2, 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO jobs (id, kind, subject_id, subject_version, status, error, attempts, created_at, updated_at) VALUES (3, 'export_sb3', 1, 3, 'failed', 'boom', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO import_runs (id, source, content_hash, status, attempts, claimed_by, created_at, updated_at) VALUES (1, 'cli:1', 'h1', 'pending', 1, 'h:1:x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO import_runs (id, source, content_hash, status, attempts, created_at, updated_at) VALUES (2, 'cli:1', 'h2', 'completed', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, state, lease_until, status, response, created_at) VALUES (1, 'a', 'f', 'complete', CURRENT_TIMESTAMP, 200, '{}', CURRENT_TIMESTAMP)",
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, state, holder, lease_until, created_at) VALUES (1, 'b', 'f', 'running', 'x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
    Migrator::up(&db, None).await.unwrap();

    let job = |id: i64| format!("SELECT status AS v FROM jobs WHERE id = {id}");
    assert_eq!(
        text(&db, &job(1)).await.as_deref(),
        Some("failed"),
        "a built export is retired"
    );
    assert_eq!(
        text(&db, "SELECT error AS v FROM jobs WHERE id = 1")
            .await
            .as_deref(),
        Some(migration::RETIRED_EXPORT)
    );
    assert_eq!(
        text(&db, "SELECT bundle_key AS v FROM jobs WHERE id = 1").await,
        None,
        "its bundle is let go (gc collects it)"
    );
    assert_eq!(text(&db, &job(2)).await.as_deref(), Some("pending"));
    assert_eq!(
        text(&db, "SELECT error AS v FROM jobs WHERE id = 3")
            .await
            .as_deref(),
        Some("boom"),
        "a failed export keeps its reason"
    );
    let run = |id: i64| format!("SELECT status AS v FROM import_runs WHERE id = {id}");
    assert_eq!(text(&db, &run(1)).await.as_deref(), Some("running"));
    assert_eq!(text(&db, &run(2)).await.as_deref(), Some("completed"));
    let key = |k: &str| format!("SELECT state AS v FROM idempotency_keys WHERE idem_key = '{k}'");
    assert_eq!(text(&db, &key("a")).await.as_deref(), Some("completed"));
    assert_eq!(text(&db, &key("b")).await.as_deref(), Some("running"));
    // Every row reads as the entities' enum.
    use entity::lease::LeaseStatus;
    use sea_orm::EntityTrait;
    let jobs = entity::job::Entity::find().all(&db).await.unwrap();
    let mut states: Vec<_> = jobs.iter().map(|j| (j.id, j.status)).collect();
    states.sort_by_key(|(id, _)| *id);
    assert_eq!(
        states,
        [
            (1, LeaseStatus::Failed),
            (2, LeaseStatus::Pending),
            (3, LeaseStatus::Failed)
        ]
    );
    assert_eq!(
        entity::import_run::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        entity::idempotency_key::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .len(),
        2
    );

    // Down: the old words again; a retired export stays failed (its bundle is gone).
    let after = Migrator::migrations().len() as u32 - before;
    Migrator::down(&db, Some(after)).await.unwrap();
    assert_eq!(text(&db, &run(1)).await.as_deref(), Some("pending"));
    assert_eq!(text(&db, &key("a")).await.as_deref(), Some("complete"));
    assert_eq!(text(&db, &job(1)).await.as_deref(), Some("failed"));
    let _ = db.close().await;
}

#[tokio::test]
async fn lease_states_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    lease_states(Database::connect(url).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn lease_states_postgres() {
    let pg = PgDatabase::create_empty().await;
    lease_states(Database::connect(&pg.url).await.unwrap()).await;
}

/// Existing projects get their current version as the first history entry.
async fn history_backfill(db: DatabaseConnection) {
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261207_000003_history")
        .expect("the history migration") as u32;
    Migrator::up(&db, Some(before)).await.unwrap();
    for sql in [
        "INSERT INTO users (id, provider, subject, display_name, role, created_at) VALUES (1, 'p', 's', 'n', 'student', CURRENT_TIMESTAMP)",
        "INSERT INTO projects (id, owner_id, title, content_key, content_size, version, created_at, updated_at) VALUES (7, 1, 'seven', 'k7', 12, 7, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO projects (id, owner_id, title, content_key, content_size, version, created_at, updated_at) VALUES (8, 1, 'eight', 'k8', 13, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    use sea_orm::{EntityTrait, QueryOrder};
    let versions = entity::project_version::Entity::find()
        .order_by_asc(entity::project_version::Column::ProjectId)
        .all(&db)
        .await
        .unwrap();
    let got: Vec<_> = versions
        .iter()
        .map(|v| {
            (
                v.project_id,
                v.version,
                v.title.as_str(),
                v.content_key.as_str(),
                v.content_size,
                v.saved_by,
                v.via.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (7, 7, "seven", "k7", 12, None, "graphql"),
            (8, 1, "eight", "k8", 13, None, "graphql")
        ]
    );
    let after = Migrator::migrations().len() as u32 - before;
    Migrator::down(&db, Some(after)).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    let _ = db.close().await;
}

#[tokio::test]
async fn history_backfill_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    history_backfill(Database::connect(url).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(atelier_pg_tests),
    ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant"
)]
async fn history_backfill_postgres() {
    let pg = PgDatabase::create_empty().await;
    history_backfill(Database::connect(&pg.url).await.unwrap()).await;
}
