//! PostgreSQL databases for tests: each test gets a fresh one, cloned from a template that is
//! migrated once per migration set (so a test pays a `CREATE DATABASE … TEMPLATE`, not the
//! migrations), and dropped when the test is done.
//!
//! The server under test connects to [`PgDatabase::url`]; `TEST_DATABASE_URL` names the
//! administrative connection the databases are created and dropped through.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// A fresh PostgreSQL database, dropped (forcibly) when this value is dropped.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// The migrated database every PostgreSQL test database is cloned from. Its name carries a
/// hash of `migration/src` (computed by this crate's `build.rs`), so a changed migration gets
/// a new one.
const TEMPLATE: &str = concat!("atelier_test_tpl_", env!("ATELIER_MIGRATIONS_HASH"));
/// The advisory lock under which one process at a time builds the template.
const TEMPLATE_LOCK: i64 = 0x6174_656c_6965_7201;

static TEMPLATE_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// `admin_url` with another database name.
fn database_url_for(admin_url: &str, name: &str) -> String {
    match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL must end in /<database>"),
    }
}

/// Runs a statement that PostgreSQL refuses while another session is still connected to a
/// database it names (55006, e.g. a migrator's backend that is still exiting): retried.
async fn execute_when_free(admin: &DatabaseConnection, sql: &str) {
    if let Err(e) = try_execute_when_free(admin, sql).await {
        panic!("{sql}: {e}");
    }
}

async fn try_execute_when_free(admin: &DatabaseConnection, sql: &str) -> Result<(), String> {
    for attempt in 0.. {
        match admin.execute_unprepared(sql).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 100 && e.to_string().contains("being accessed by other users") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    unreachable!()
}

/// Builds the template once per migration set: the first test (of any process) that needs it
/// migrates a scratch database under an advisory lock and renames it into place, so every
/// other test sees either no template or a complete one.
async fn ensure_template(admin_url: &str) {
    TEMPLATE_READY
        .get_or_init(|| build_template(admin_url))
        .await;
}

/// Migrates the template unless it exists (under the advisory lock).
async fn build_template(admin_url: &str) {
    let mut options = sea_orm::ConnectOptions::new(admin_url.to_owned());
    // One session: the advisory lock belongs to it.
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let admin = Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL is unreachable: {e}"));
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .await
        .expect("take the template lock");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 AS x FROM pg_database WHERE datname = '{TEMPLATE}'"),
        ))
        .await
        .expect("look for the template")
        .is_some();
    if !exists {
        let building = format!("{TEMPLATE}_building");
        // Left over by a run that died while building: nobody else holds the lock.
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop a half-built template");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create the template");
        let db = Database::connect(database_url_for(admin_url, &building))
            .await
            .expect("connect to the template");
        {
            use migration::MigratorTrait;
            migration::Migrator::up(&db, None)
                .await
                .expect("migrate the template");
        }
        let _ = db.close().await;
        execute_when_free(
            &admin,
            &format!("ALTER DATABASE {building} RENAME TO {TEMPLATE}"),
        )
        .await;
        // Templates of earlier migration sets (best effort: one may be in use).
        let old = admin
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT datname::text AS name FROM pg_database \
                     WHERE datname LIKE 'atelier\\_test\\_tpl\\_%' AND datname <> '{TEMPLATE}'"
                ),
            ))
            .await
            .unwrap_or_default();
        for row in old {
            if let Ok(name) = row.try_get::<String>("", "name") {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
            }
        }
    }
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .await
        .expect("release the template lock");
    let _ = admin.close().await;
}

impl PgDatabase {
    /// Creates a migrated database, cloned from the template (migrated once per run).
    /// Only PostgreSQL tests call this, and they are `#[ignore]`d unless the build saw
    /// `TEST_DATABASE_URL` (see `build.rs`): a missing or unreachable PostgreSQL here fails
    /// the test, it never passes without running.
    pub async fn create() -> PgDatabase {
        Self::create_from(true).await
    }

    /// Creates an empty database (for the migrations themselves).
    pub async fn create_empty() -> PgDatabase {
        Self::create_from(false).await
    }

    async fn create_from(migrated: bool) -> PgDatabase {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "TEST_DATABASE_URL is not set, so this PostgreSQL test cannot run{}: set \
                     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres",
                    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                        " (CI=true: PostgreSQL tests must run in CI)"
                    } else {
                        ""
                    }
                )
            });
        if migrated {
            ensure_template(&admin_url).await;
        }
        let name = format!("atelier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL is unreachable: {e}"));
        if migrated {
            let sql = format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}");
            if let Err(e) = try_execute_when_free(&admin, &sql).await {
                // Another checkout's test run (another migration set) cleaned templates up
                // while this run was going: build ours again, once.
                assert!(e.contains("does not exist"), "{sql}: {e}");
                build_template(&admin_url).await;
                execute_when_free(&admin, &sql).await;
            }
        } else {
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
        }
        let _ = admin.close().await;
        PgDatabase {
            url: database_url_for(&admin_url, &name),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await: do it on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
