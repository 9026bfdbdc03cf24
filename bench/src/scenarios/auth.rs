//! A1 (R1's reads with session cookies from real sign-ins, against R1's reads with a bearer
//! token, same run) and A2 (a storm of first logins of different users into shared groups).
//! Both sign in through the fake OpenID Provider the run started (`atelier-testkit`), the
//! whole dance each time: `/auth/login` → the provider's authorize → `/auth/callback`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use atelier_testkit::oidc::{Browser, FakeProvider};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use super::{Ctx, Measured, reads::project_readers_as};
use crate::{
    client::Credential,
    error::{Context, Result, bail},
    load::Latencies,
    postgres,
    report::{Row, rate},
    rss::RssSampler,
};

/// Same clients as R1.
const A1_CLIENTS: usize = super::reads::R1_CLIENTS;
/// Cookie throughput must reach this share of bearer throughput in the same run.
const A1_TARGET: f64 = 0.9;
/// Sign-ins A1 makes before its load, concurrently (setup, not measured).
const A1_SIGN_IN_CONCURRENCY: usize = 16;
/// Provider access tokens outlive any run by far: a refresh (a provider round trip under the
/// session row lock) is not what A1 measures. The run checks that none happened.
const A1_TOKEN_LIFETIME_SECS: u64 = 6 * 3600;

const A2_LOGINS: usize = 100;
const A2_GROUPS: [&str; 3] = ["a2-class-7a", "a2-class-7b", "a2-class-7c"];
/// A login that takes longer than this counts as failed (the dance must not hang).
const A2_LOGIN_TIMEOUT: Duration = Duration::from_secs(120);

fn provider<'a>(ctx: &Ctx<'a>) -> Result<&'a FakeProvider> {
    ctx.provider
        .context("no OpenID Provider was started for this run")
}

/// Runs one SQL statement against the server's database, read with `psql` or `sqlite3`
/// (unaligned, no headers); returns what it printed.
async fn sql(ctx: &Ctx<'_>, statement: &str) -> Result<String> {
    if let Some(url) = &ctx.store.database_url {
        return postgres::psql(url, statement).await;
    }
    let db = ctx.store.data_dir.join("atelier.db");
    let out = tokio::process::Command::new("sqlite3")
        // The server holds the database open (WAL): wait for its write lock, never fail.
        .args(["-batch", "-cmd", ".timeout 30000"])
        .arg(&db)
        .arg(statement)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running sqlite3 (is the SQLite shell installed?)")?;
    if !out.status.success() {
        bail!(
            "sqlite3 {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn sql_count(ctx: &Ctx<'_>, statement: &str) -> Result<u64> {
    let out = sql(ctx, statement).await?;
    out.parse()
        .context(format_args!("`{statement}` printed {out:?}, not a count"))
}

/// One sign-in through the whole dance, in a browser of its own; returns the session token
/// the server set.
async fn sign_in(base: &str, subject: &str) -> Result<String, String> {
    let (base, subject) = (base.to_owned(), subject.to_owned());
    // A task of its own: the test browser panics on a transport error, which must count as
    // this sign-in's failure instead of ending the run.
    let task = tokio::spawn(async move {
        let browser = Browser::default();
        browser
            .sign_in_to(&base, &subject, None)
            .await
            .map_err(|(status, body)| format!("HTTP {status}: {}", body.trim()))?;
        browser
            .session()
            .ok_or_else(|| "signed in, but no session cookie was set".to_owned())
    });
    task.await
        .unwrap_or_else(|e| Err(format!("the sign-in failed: {e}")))
}

/// A1: R1's workload (the same seeded projects, the same 64 clients, the same random ids per
/// client), with R1's bearer API token and with session cookies of 64 users who signed in
/// through the provider, one per client, alternating. The cookie row's baseline is the bearer
/// row.
///
/// R1 reads as an admin (every project is visible), so the signed-in users are made admins
/// after signing in, directly in the database, before any of their sessions is used: a
/// provider cannot make an admin (only teachers and students), and an admin stays an admin
/// on the next sign-in. No session has been resolved yet, so no cache holds the old role.
pub async fn a1(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let provider = provider(ctx)?;
    provider.set_expires_in(A1_TOKEN_LIFETIME_SECS);
    let ids = ctx.read_ids().await?;
    let admin = ctx.token("bench-admin", "admin").await?;

    let subjects: Vec<String> = (0..A1_CLIENTS).map(|i| format!("a1-reader-{i}")).collect();
    for subject in &subjects {
        provider.set_user(subject, &format!("A1 reader {subject}"), json!([]));
    }
    let base = ctx.server.base().to_owned();
    let sessions: Vec<String> = futures::stream::iter(subjects.iter())
        .map(|subject| {
            let base = base.clone();
            async move {
                sign_in(&base, subject)
                    .await
                    .map_err(|e| crate::error::Error::msg(format!("signing in {subject}: {e}")))
            }
        })
        .buffered(A1_SIGN_IN_CONCURRENCY)
        .try_collect()
        .await?;
    sql(
        ctx,
        "UPDATE users SET role = 'admin' WHERE subject LIKE 'a1-reader-%'",
    )
    .await
    .context("making A1's signed-in users admins")?;
    let refreshes_before = provider.refresh_calls();

    let bearer = [Credential::Bearer(admin.as_str().into())];
    let cookies: Vec<Credential> = sessions
        .iter()
        .map(|s| Credential::SessionCookie(s.as_str().into()))
        .collect();
    // Bearer, cookie, cookie, bearer, each half of R1's phases: on a shared machine the load
    // drifts, and this order gives both the same share of early and late minutes.
    let half = ctx.profile.short_phases();
    let mut by_token: Option<Measured> = None;
    let mut by_cookie: Option<Measured> = None;
    for round in 0..4 {
        let (credentials, slot) = if round == 0 || round == 3 {
            (&bearer[..], &mut by_token)
        } else {
            (&cookies[..], &mut by_cookie)
        };
        let readers = project_readers_as(&ctx.api, credentials, &ids, A1_CLIENTS);
        let m = ctx.measure(readers, half).await?;
        match slot {
            Some(sum) => sum.merge(m),
            None => *slot = Some(m),
        }
    }
    let (by_token, by_cookie) = (
        by_token.context("no bearer run")?,
        by_cookie.context("no cookie run")?,
    );
    let refreshes = provider.refresh_calls() - refreshes_before;

    let bearer_rps = by_token.load.ops_per_sec();
    let mut bearer_row = ctx.load_row(
        "A1",
        format!("project(id), {A1_CLIENTS} clients, bearer API token (R1)"),
        &by_token,
    );
    bearer_row.value = rate(bearer_rps, "req/s");
    bearer_row.target = "0 errors (the baseline of the cookie row)".into();
    bearer_row.met = by_token.load.errors.total() == 0;

    let cookie_rps = by_cookie.load.ops_per_sec();
    let mut cookie_row = ctx.load_row(
        "A1",
        format!(
            "project(id), {A1_CLIENTS} clients, session cookies of {} signed-in users",
            sessions.len()
        ),
        &by_cookie,
    );
    cookie_row.value = rate(cookie_rps, "req/s");
    cookie_row.baseline = Some(format!("{bearer_rps:.0} req/s (bearer, same run)"));
    let ratio = (bearer_rps > 0.0).then(|| cookie_rps / bearer_rps);
    cookie_row.ratio = ratio;
    cookie_row.target = format!("≥ {A1_TARGET} × bearer, 0 errors, 0 provider refreshes");
    cookie_row.met = by_cookie.load.errors.total() == 0
        && refreshes == 0
        && ratio.is_some_and(|r| r >= A1_TARGET);
    if refreshes > 0 {
        cookie_row
            .notes
            .push(format!("{refreshes} provider refreshes during the load"));
    }
    Ok(vec![bearer_row, cookie_row])
}

/// What one storm login ended with.
struct Login {
    took: Duration,
    outcome: Result<String, String>,
}

/// A2: 100 users who never signed in before sign in at the same moment, every one a member of
/// the same 3 groups (so every login's transaction gets-or-creates the same 3 group rows and
/// adds memberships to them). Per-login latency is the whole dance as the browser sees it.
/// Afterwards the database must hold exactly 100 such users, 3 such groups and 300
/// memberships, and every login must have ended with a session that answers `viewer`.
pub async fn a2(ctx: &mut Ctx<'_>) -> Result<Vec<Row>> {
    let provider = provider(ctx)?;
    let groups = json!(A2_GROUPS);
    let subjects: Vec<String> = (0..A2_LOGINS).map(|i| format!("a2-storm-{i}")).collect();
    for subject in &subjects {
        provider.set_user(subject, &format!("Storm {subject}"), groups.clone());
    }
    let base: Arc<str> = ctx.server.base().into();

    let before = ctx.api.counters().await?;
    let rss = RssSampler::start(ctx.server.pid());
    let began = Instant::now();
    // Each login in a task of its own, all released at once.
    let start = Arc::new(tokio::sync::Barrier::new(A2_LOGINS));
    let tasks: Vec<_> = subjects
        .iter()
        .map(|subject| {
            let (base, subject, start) = (Arc::clone(&base), subject.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(A2_LOGIN_TIMEOUT, sign_in(&base, &subject))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {A2_LOGIN_TIMEOUT:?}")));
                Login {
                    took: t0.elapsed(),
                    outcome,
                }
            })
        })
        .collect();
    let mut logins = Vec::with_capacity(A2_LOGINS);
    for task in futures::future::join_all(tasks).await {
        logins.push(task.unwrap_or_else(|e| Login {
            took: Duration::ZERO,
            outcome: Err(format!("the login panicked: {e}")),
        }));
    }
    let total = began.elapsed();
    let peak_rss = rss.finish();
    let after = ctx.api.counters().await?;

    let mut errors: Vec<String> = logins
        .iter()
        .filter_map(|l| l.outcome.as_ref().err().cloned())
        .collect();
    let latencies = Latencies::from_unsorted(
        logins
            .iter()
            .filter(|l| l.outcome.is_ok())
            .map(|l| l.took.as_micros() as u64)
            .collect(),
    );
    // Every session works: each answers `viewer` with its own user and the 3 groups.
    let mut viewers = std::collections::HashSet::new();
    for login in &logins {
        let Ok(session) = &login.outcome else {
            continue;
        };
        let credential = Credential::SessionCookie(session.as_str().into());
        match ctx
            .api
            .graphql_as(&credential, "{ viewer { id groups { id } } }", json!({}))
            .await
        {
            Ok(data) if data["viewer"]["groups"].as_array().map(Vec::len) == Some(3) => {
                viewers.insert(data["viewer"]["id"].clone());
            }
            Ok(data) => errors.push(format!("viewer after sign-in: {data}")),
            Err(e) => errors.push(format!("viewer after sign-in: {e}")),
        }
    }

    let users = sql_count(
        ctx,
        "SELECT count(*) FROM users WHERE subject LIKE 'a2-storm-%'",
    )
    .await?;
    let group_rows = sql_count(
        ctx,
        "SELECT count(*) FROM groups WHERE external_id LIKE 'a2-class-%'",
    )
    .await?;
    let memberships = sql_count(
        ctx,
        "SELECT count(*) FROM group_members gm JOIN groups g ON g.id = gm.group_id \
         JOIN users u ON u.id = gm.user_id \
         WHERE g.external_id LIKE 'a2-class-%' AND u.subject LIKE 'a2-storm-%'",
    )
    .await?;
    let sessions = sql_count(
        ctx,
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE u.subject LIKE 'a2-storm-%' AND s.ended_at IS NULL",
    )
    .await?;

    // The server's statements per request over the storm: two requests per login (login and
    // callback); the counters' own /metrics request is left out.
    let requests = after.requests.saturating_sub(before.requests + 1);
    let statements = after.statements.saturating_sub(before.statements);
    let n = A2_LOGINS as u64;
    let mut row = Row::new(
        ctx.backend,
        "A2",
        format!(
            "{A2_LOGINS} concurrent first logins (login → authorize → callback), 3 shared groups"
        ),
    );
    row.value = format!(
        "{:.1} s for {A2_LOGINS} ({})",
        total.as_secs_f64(),
        rate(logins.len() as f64 / total.as_secs_f64(), "logins/s")
    );
    row.p50 = latencies.quantile(0.50);
    row.p99 = latencies.quantile(0.99);
    row.errors = Some(errors.len() as u64);
    row.peak_rss = Some(peak_rss);
    row.stmts_per_req = Some(statements as f64 / requests.max(1) as f64);
    row.target = format!(
        "0 errors; {A2_LOGINS} users, 3 groups, {} memberships, {A2_LOGINS} sessions",
        3 * A2_LOGINS
    );
    row.met = errors.is_empty()
        && users == n
        && group_rows == 3
        && memberships == 3 * n
        && sessions == n
        && viewers.len() == A2_LOGINS;
    row.notes.push(format!(
        "database after the storm: {users} users, {group_rows} groups, {memberships} memberships, \
         {sessions} live sessions; {} distinct viewers",
        viewers.len()
    ));
    row.notes.push(format!(
        "{:.1} statements per login",
        statements as f64 / n as f64
    ));
    if let Some(first) = errors.first() {
        row.notes.push(format!(
            "{} failed logins or checks (first: {first})",
            errors.len()
        ));
    }
    Ok(vec![row])
}
