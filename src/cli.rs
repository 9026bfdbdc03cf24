//! The command line: `serve`, `migrate`, `schema`, `fsck`, `gc`, `token create`,
//! `token revoke TOKEN`, `token revoke --user NAME`, `group create`, `group add-member`,
//! `import PATH… --owner NAME`.
//! Results for scripts go to stdout; logs go to stderr.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{
    config::{Limits, ServeConfig, StoreConfig},
    db::{self, Db},
    domain::{GroupId, Role},
    error::{AppError, AppResult},
    graphql, http,
    service::{self, Services},
    storage::BlobStore,
};

#[derive(Parser, Debug)]
#[command(
    name = "atelier",
    version,
    about = "GraphQL API server for a Scratch-style classroom platform"
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreConfig,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply migrations, recover the data dir, and serve HTTP (the default).
    Serve(Box<ServeConfig>),
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Check invariants I1–I3 and staging; exit 1 on any violation.
    Fsck {
        /// Print the violations as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Apply history retention, then remove blobs that no row references and that are older
    /// than the grace period.
    Gc {
        /// Only report what would be removed (history is not pruned).
        #[arg(long)]
        dry_run: bool,
        /// Minimum age of a blob before it may be removed, in seconds.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        /// Every version younger than this many days is kept.
        #[arg(long, env = "ATELIER_HISTORY_KEEP_ALL_DAYS", default_value_t = 14)]
        history_keep_all_days: u64,
        /// Up to this many days, the last version of each UTC day is kept; older ones go
        /// (a project's current version and versions an export names are always kept).
        #[arg(long, env = "ATELIER_HISTORY_KEEP_DAILY_DAYS", default_value_t = 365)]
        history_keep_daily_days: u64,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage groups (classes).
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Import `.sb3` files, and directories of them (searched recursively), as projects of a
    /// local user. Idempotent: a file imported before for the same owner is skipped, so an
    /// interrupted import is simply run again. Exits non-zero if any file failed.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// `.sb3` files and directories.
    #[arg(required = true)]
    pub paths: Vec<std::path::PathBuf>,
    /// The local user who owns the imported projects (created if absent).
    #[arg(long)]
    pub owner: String,
    /// Files read, unzipped and validated at once (default: four per CPU).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Files written per database transaction.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Print the summary as JSON on stdout (one object: counts and every file's outcome).
    #[arg(long)]
    pub json: bool,
    /// How long a claim on a file lasts unless renewed; the claims of an import that died
    /// on another host become claimable after it (on this host, at once).
    #[arg(
        long,
        env = "ATELIER_IMPORT_LEASE_SECS",
        default_value_t = 60,
        hide = true
    )]
    pub lease_secs: u64,
    /// Upper bound of project.json, as the server's `--max-content-bytes`.
    #[arg(long, env = "ATELIER_MAX_CONTENT_BYTES", default_value_t = Limits::default().max_content_bytes)]
    pub max_content_bytes: u64,
    /// Upper bound of one asset, as the server's `--max-asset-bytes`.
    #[arg(long, env = "ATELIER_MAX_ASSET_BYTES", default_value_t = Limits::default().max_asset_bytes)]
    pub max_asset_bytes: u64,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token for a local user (created if absent); prints only the token.
    Create {
        /// The user's name.
        #[arg(long)]
        user: String,
        /// Role to give the user (an existing user's role changes, effective on the next
        /// request in every server process).
        #[arg(long)]
        role: Option<Role>,
    },
    /// Revoke one token, or every token of a local user (`--user`); effective on the next
    /// request in every server process. Prints how many tokens were revoked.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["token", "user"])))]
    Revoke {
        /// The token to revoke (as printed by `token create`).
        token: Option<String>,
        /// Revoke every token of this local user instead.
        #[arg(long, conflicts_with = "token")]
        user: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a local group (or find the one of that name); prints only its id.
    Create { name: String },
    /// Add a local user (created if absent) to a group.
    AddMember { group_id: String, user_name: String },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> AppResult<()> {
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(ServeConfig::parse_from_env())));
    match command {
        Command::Schema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Command::Migrate => {
            // Migrates, then puts the built-in assets in place (both idempotent).
            let svc = services(&cli.store, Limits::default()).await?;
            service::builtin::ensure(&svc).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve(cfg) => serve(&cli.store, *cfg).await,
        Command::Fsck { json } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let violations = service::maintenance::fsck(&svc).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&violations).map_err(AppError::internal)?
                );
            } else {
                for v in &violations {
                    println!("{} {}: {}", v.invariant, v.subject, v.detail);
                }
                eprintln!("fsck: {} violation(s)", violations.len());
            }
            if violations.is_empty() {
                Ok(())
            } else {
                Err(AppError::Conflict(format!(
                    "{} invariant violation(s)",
                    violations.len()
                )))
            }
        }
        Command::Gc {
            dry_run,
            grace_secs,
            history_keep_all_days,
            history_keep_daily_days,
        } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let retention = service::history::Retention {
                keep_all: Duration::from_secs(history_keep_all_days * 86_400),
                keep_daily: Duration::from_secs(
                    history_keep_daily_days.max(history_keep_all_days) * 86_400,
                ),
            };
            let report = service::maintenance::gc_with(
                &svc,
                Duration::from_secs(grace_secs),
                dry_run,
                retention,
            )
            .await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for (key, size) in &report.removed {
                println!("{verb} {key} ({size} bytes)");
            }
            println!(
                "{verb} {} blob(s), {} bytes; kept {} referenced, {} younger than {grace_secs}s",
                report.removed.len(),
                report.bytes_freed,
                report.kept_referenced,
                report.kept_young
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { user, role },
        } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let (_, token) = service::identity::create_user_token(&svc, &user, role).await?;
            println!("{token}");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { token, user },
        } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let revoked = match (token, user) {
                (_, Some(user)) => service::identity::revoke_user_tokens(&svc, &user).await?,
                (Some(token), None) => {
                    service::identity::revoke_token(&svc, &token).await?;
                    1
                }
                (None, None) => return Err(AppError::bad_input("token", "give TOKEN or --user")),
            };
            println!("revoked {revoked} token(s)");
            Ok(())
        }
        Command::Group {
            command: GroupCommand::Create { name },
        } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let group = service::identity::create_local_group(&svc, &name).await?;
            println!("{}", group.id);
            Ok(())
        }
        Command::Group {
            command:
                GroupCommand::AddMember {
                    group_id,
                    user_name,
                },
        } => {
            let svc = services(&cli.store, Limits::default()).await?;
            let group = GroupId::parse(&group_id, "group_id")?;
            service::identity::add_local_member(&svc, group, &user_name).await
        }
        Command::Import(args) => import(&cli.store, args).await,
    }
}

/// `atelier import`: runs in this process against the database, staging in a directory of
/// its own, so it is safe next to running servers on the same data dir.
async fn import(store: &StoreConfig, args: ImportArgs) -> AppResult<()> {
    use service::imports::{FileStatus, ImportOptions};
    let limits = Limits {
        max_content_bytes: args.max_content_bytes,
        max_asset_bytes: args.max_asset_bytes,
        ..Limits::default()
    };
    let svc = services(store, limits).await?;
    // An import killed before (kill -9 between its COMMIT and the publish of its staged blobs)
    // left committed rows whose blobs are still in its staging directory: settle such dead
    // directories first, as a server start does. Live processes' directories are untouched.
    service::maintenance::recover(&svc).await?;
    let owner = service::imports::local_owner(&svc, &args.owner).await?;
    let (files, missing) = service::imports::collect_files(&args.paths);
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        // Drawn only on a terminal: quiet in scripts and logs.
        indicatif::ProgressBar::with_draw_target(
            Some(files.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        )
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files  {elapsed_precise}  {msg}",
        )
        .map_err(AppError::internal)?,
    );
    let opts = ImportOptions {
        // Four per CPU: a file waits on disk and database round trips as much as it computes.
        concurrency: args.concurrency.unwrap_or_else(|| {
            4 * std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        }),
        batch: args.batch,
        lease: Duration::from_secs(args.lease_secs),
    };
    let mut summary = service::imports::import_files(&svc, owner, files, opts, |r| {
        bar.inc(1);
        if r.status == FileStatus::Failed {
            bar.set_message(format!("failed: {}", r.path));
        }
    })
    .await?;
    bar.finish_and_clear();
    summary.failed += missing.len();
    summary.files.extend(missing);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(AppError::internal)?
        );
    } else {
        for f in &summary.files {
            match f.status {
                FileStatus::Failed => {
                    println!("failed   {}: {}", f.path, f.reason.as_deref().unwrap_or(""))
                }
                FileStatus::Taken => println!("taken    {} (another import holds it)", f.path),
                _ => {}
            }
        }
        println!(
            "imported {}, skipped {} (already imported), taken {} (in progress elsewhere), failed {}",
            summary.imported, summary.skipped, summary.taken, summary.failed
        );
    }
    svc.db.close().await;
    if summary.failed > 0 {
        return Err(AppError::bad_input(
            "paths",
            format!("{} file(s) failed to import", summary.failed),
        ));
    }
    Ok(())
}

impl ServeConfig {
    /// `atelier` with no subcommand serves with flags from the environment only.
    fn parse_from_env() -> ServeConfig {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            cfg: ServeConfig,
        }
        Only::parse_from(["atelier"]).cfg
    }
}

/// Connects, migrates and opens the blob store: what every data command needs.
async fn services(store: &StoreConfig, limits: Limits) -> AppResult<Services> {
    let db = Db::connect(store).await?;
    db::migrate(&db).await?;
    let blobs = BlobStore::open(&store.data_dir).map_err(|e| {
        AppError::Unavailable(format!(
            "cannot open data dir {}: {e}",
            store.data_dir.display()
        ))
    })?;
    Ok(Services::new(db, blobs, limits))
}

async fn serve(store: &StoreConfig, cfg: ServeConfig) -> AppResult<()> {
    tracing::info!(config = ?store, listen = %cfg.listen, "starting");
    // Checked before anything starts: a bad template is a config error, not a late surprise.
    let upstream = asset_upstream(&cfg)?;
    let svc = services(
        store,
        Limits {
            max_content_bytes: cfg.max_content_bytes,
            max_asset_bytes: cfg.max_asset_bytes,
            asset_access: cfg.asset_access,
            backpack_max_items: cfg.backpack_max_items,
            backpack_max_bytes: cfg.backpack_max_bytes,
        },
    )
    .await?
    .with_jobs(service::jobs::JobRunner::new(
        cfg.export_workers,
        Duration::from_millis(cfg.job_lease_ms),
        Duration::from_millis(cfg.job_poll_ms.max(10)),
    ));
    // Bound before anything else that needs the address: with port 0, the default public
    // URL (OIDC redirect, cookie and origin checks) is the one actually bound.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AppError::Unavailable(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(AppError::internal)?;
    let public_url = cfg.auth.public_url(addr);
    let svc = Services {
        oidc: oidc(&cfg.auth, &public_url, &store.data_dir)?,
        upstream,
        editor: service::editor::EditorSettings {
            session_ttl: Duration::from_secs(cfg.editor_session_ttl_secs.max(1)),
            project_token_ttl: Duration::from_secs(cfg.project_token_ttl_secs.max(1)),
            public_url: public_url.clone(),
        },
        subscriptions: std::sync::Arc::new(service::subscriptions::Subscriptions::new(
            service::subscriptions::Caps {
                per_connection: cfg.ws_max_subscriptions,
                per_user: cfg.ws_max_user_subscriptions,
            },
        )),
        ..svc
    };
    service::maintenance::recover(&svc).await?;
    service::builtin::ensure(&svc).await?;
    let sweeper = tokio::spawn(sweep_forever(
        svc.clone(),
        Duration::from_secs(cfg.sweep_interval_secs.max(1)),
        Duration::from_secs(cfg.pending_grace_secs),
        Duration::from_secs(cfg.idempotency_ttl_hours * 3600),
    ));
    if svc.db.backend() == sea_orm::DbBackend::Postgres {
        // One listening connection for the process. The token cache is used only while it
        // hears every authority change: wait briefly for its first connection so the cache
        // works from the first request; the server starts without it (reading every token
        // from the database) if it fails.
        let first = svc.listener().spawn(store.database_url());
        let _ = tokio::time::timeout(Duration::from_secs(5), first).await;
    }
    // Exports left pending or running by a process that died are taken up from the start.
    let job_sweeper = tokio::spawn(service::jobs::sweep_forever(svc.clone()));
    let state = http::AppState {
        schema: graphql::build_schema(svc.clone(), cfg.query_limits()),
        documents: std::sync::Arc::new(graphql::DocumentCache::new(
            graphql::DOCUMENT_CACHE_ENTRIES,
            svc.db.metrics.clone(),
        )),
        services: svc.clone(),
        max_request_bytes: cfg.max_request_bytes,
        max_batch: cfg.max_batch.max(1),
        ws_send_queue: cfg.ws_send_queue.max(1),
        web: std::sync::Arc::new(http::WebConfig::new(&public_url, &cfg.auth.cors_origins)?),
        editor_dist: cfg
            .editor_dir
            .as_ref()
            .map(|d| std::sync::Arc::new(d.join("dist"))),
    };
    tracing::info!(%addr, "listening");
    // The one line for humans and scripts (tests read the port from it).
    println!("Atelier is listening on http://{addr} (GraphiQL: http://{addr}/graphql)");
    http::serve(
        listener,
        state,
        Duration::from_secs(cfg.shutdown_grace_secs),
    )
    .await
    .map_err(AppError::internal)?;
    sweeper.abort();
    job_sweeper.abort();
    svc.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The upstream asset host, when `ATELIER_ASSET_UPSTREAM` is set.
fn asset_upstream(
    cfg: &ServeConfig,
) -> AppResult<Option<std::sync::Arc<service::upstream::Upstream>>> {
    let Some(raw) = cfg
        .asset_upstream
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    else {
        tracing::info!("asset pull-through is off (ATELIER_ASSET_UPSTREAM is not set)");
        return Ok(None);
    };
    // Not an http(s) URL with `{md5ext}`: a config error naming the setting.
    let template = service::upstream::UpstreamSettings::check_template(raw)
        .map_err(|e| AppError::bad_input("ATELIER_ASSET_UPSTREAM", e))?;
    let settings = service::upstream::UpstreamSettings {
        template,
        max_bytes: cfg.asset_upstream_max_bytes.unwrap_or(cfg.max_asset_bytes),
        timeout: Duration::from_millis(cfg.asset_upstream_timeout_ms.max(1)),
        connect_timeout: Duration::from_millis(cfg.asset_upstream_connect_timeout_ms.max(1)),
        concurrency: cfg.asset_upstream_concurrency.max(1),
        negative_ttl: Duration::from_secs(cfg.asset_upstream_negative_ttl_secs),
        anonymous_per_minute: cfg.asset_upstream_anonymous_per_minute,
    };
    tracing::info!(
        upstream = %settings.template,
        max_bytes = settings.max_bytes,
        timeout_ms = settings.timeout.as_millis() as u64,
        concurrency = settings.concurrency,
        "asset pull-through is on"
    );
    let upstream = service::upstream::Upstream::new(settings)
        .map_err(|e| AppError::bad_input("ATELIER_ASSET_UPSTREAM", e))?;
    Ok(Some(std::sync::Arc::new(upstream)))
}

/// The OpenID Connect relying party, when an issuer is configured.
fn oidc(
    auth: &crate::config::AuthConfig,
    public_url: &str,
    data_dir: &std::path::Path,
) -> AppResult<Option<std::sync::Arc<service::oidc::Oidc>>> {
    let Some(issuer) = auth.oidc_issuer.as_deref().filter(|i| !i.trim().is_empty()) else {
        tracing::info!("OpenID Connect sign-in is off (ATELIER_OIDC_ISSUER is not set)");
        return Ok(None);
    };
    let client_id = auth
        .oidc_client_id
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            AppError::bad_input(
                "ATELIER_OIDC_CLIENT_ID",
                "ATELIER_OIDC_CLIENT_ID is required when ATELIER_OIDC_ISSUER is set",
            )
        })?;
    let settings = service::oidc::OidcSettings {
        issuer: issuer.trim().to_owned(),
        client_id,
        client_secret: auth.oidc_client_secret.clone().filter(|s| !s.is_empty()),
        redirect_url: format!("{public_url}/auth/callback"),
        scopes: std::iter::once("openid")
            .chain(auth.oidc_scopes.split_whitespace())
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        prompt: auth
            .oidc_prompt
            .iter()
            .flat_map(|p| p.split_whitespace())
            .map(str::to_owned)
            .collect(),
        groups_claim: auth.oidc_groups_claim.clone(),
        teacher_groups: auth
            .oidc_teacher_groups
            .iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect(),
    };
    let secrets = service::secrets::SecretBox::load(auth.secret_key.as_deref(), data_dir)?;
    let max_age = chrono::Duration::hours(auth.session_max_age_hours.max(1) as i64);
    tracing::info!(issuer = %settings.issuer, redirect = %settings.redirect_url, "OpenID Connect sign-in is on");
    Ok(Some(std::sync::Arc::new(service::oidc::Oidc::new(
        settings,
        secrets,
        public_url.to_owned(),
        max_age,
    )?)))
}

/// The running server's housekeeping: settles staged files no request owns (see
/// `maintenance::sweep`) and forgets expired idempotency keys. Failures are logged and tried
/// again next time: nothing here is needed for a request to succeed.
async fn sweep_forever(svc: Services, every: Duration, pending_grace: Duration, key_ttl: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = service::maintenance::sweep(&svc, pending_grace).await {
            tracing::warn!(error = %e, "staging_sweep_failed");
        }
        match service::idempotency::expire(&svc, key_ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(idempotency.expired = n, "idempotency_keys_expired"),
            Err(e) => tracing::warn!(error = %e, "idempotency_expiry_failed"),
        }
    }
}
