//! Tells the integration tests whether their PostgreSQL variants are expected to run.
//!
//! `cfg(atelier_pg_tests)` is set when `TEST_DATABASE_URL` is set (or `CI=true`) at build
//! time. Without it, every PostgreSQL test is marked `#[ignore]` with the reason, so
//! `cargo test` reports them as `ignored` instead of counting a test that did not run as
//! passed. With `CI=true` and no `TEST_DATABASE_URL` they are not ignored: they run and fail,
//! so CI can never go green without PostgreSQL. Cargo re-runs this script (and rebuilds the
//! tests) whenever either variable changes.
//!
//! It also sets `cfg(atelier_root_tests)` when building as root (tests that mount a tmpfs),
//! `cfg(atelier_node_tests)` when Node.js runs here or `CI=true` (the sign-in against a real
//! OpenID Provider). (The PostgreSQL template database is named by `testkit/build.rs`.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(atelier_pg_tests)");
    println!("cargo::rustc-check-cfg=cfg(atelier_root_tests)");
    println!("cargo::rustc-check-cfg=cfg(atelier_node_tests)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo::rerun-if-env-changed=CI");
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if set("TEST_DATABASE_URL") || ci {
        println!("cargo::rustc-cfg=atelier_pg_tests");
    }
    // The end-to-end sign-in against a real OpenID Provider (tests/oidc-provider) needs Node:
    // it runs where `node` runs, and always in CI, where a missing Node fails it. (Installing
    // Node later needs a rebuild of the tests: `touch build.rs`.)
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node || ci {
        println!("cargo::rustc-cfg=atelier_node_tests");
    }
    // Tests that mount a filesystem (a real full disk) run as root only; elsewhere they are
    // reported ignored.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    if root {
        println!("cargo::rustc-cfg=atelier_root_tests");
    }
}
