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
