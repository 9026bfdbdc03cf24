//! Test harness: starts the real `atelier` binary on a random port against a fresh data dir,
//! and for PostgreSQL a fresh database (created from `TEST_DATABASE_URL`, dropped afterwards;
//! see `atelier_testkit::pg`).
//!
//! - `server`: a running `atelier serve` ([`TestServer`]): start, restart, kill, other
//!   processes on the same data, the CLI, direct database reads, metrics, files;
//! - `invariants`: what every test leaves behind, checked when a [`TestServer`] drops;
//! - `client`: GraphQL over HTTP ([`Client`], [`KeyedClient`] with an `Idempotency-Key`);
//! - `fixtures`: users and tokens, small valid projects and asset bytes.
//!
//! Every test proves the storage invariants: dropping a [`TestServer`] stops it cleanly, runs
//! `atelier fsck` on its data and asserts that I1–I3 hold and that no staging file is left
//! once a restart's recovery ran (I4, I7; the invariants are defined in docs/ARCHITECTURE.md).
//! Tests that break the data on purpose opt out with [`TestServer::skip_invariant_check`].
//!
//! PostgreSQL tests are marked `#[ignore]` unless the build saw `TEST_DATABASE_URL` (or
//! `CI=true`): see `build.rs`. A test that did not run is reported as `ignored`, never `ok`.

#![allow(dead_code)] // helpers used by some scenarios only

mod client;
mod fixtures;
mod invariants;
mod server;

pub use atelier_testkit::pg::PgDatabase;
#[allow(unused_imports)] // `KeyedClient` is named by no test yet, only returned
pub use client::{Client, KeyedClient, code};
pub use fixtures::{UPLOAD, empty_project, md5_hex, png, svg, wav};
pub use server::{TestServer, signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_atelier");

/// The release binary for tests that must drive it (crash tests), built by `.ci/run` before
/// `cargo test`; falls back to the test build, saying so.
pub fn release_bin() -> String {
    let release = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/atelier");
    let fresh = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (fresh(release), fresh(BIN)) {
        (Some(r), Some(d)) if r >= d => release.to_owned(),
        _ => {
            eprintln!(
                "!!! target/release/atelier missing or older than the test build: using {BIN} (run `cargo build --release` first)"
            );
            BIN.to_owned()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario (an `async fn(TestServer)` in the calling module) on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let server = $crate::harness::TestServer::start($crate::harness::Backend::Sqlite).await;
                super::$name(server).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(atelier_pg_tests), ignore = "set TEST_DATABASE_URL to run the PostgreSQL variant")]
            async fn postgres() {
                let server = $crate::harness::TestServer::start($crate::harness::Backend::Postgres).await;
                super::$name(server).await;
            }
        }
    )*};
}
