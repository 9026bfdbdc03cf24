//! Test hooks only: the places where integration tests pause the server.
//!
//! A test starts the server with `FAILPOINTS=<name>=return(<ms>)` (or `1*return(<ms>)` for
//! one pause), and [`hold`] waits that long at the point called `<name>`, e.g. to kill the
//! process mid-build or to let readers pile up behind a statement. Other actions of the
//! `fail` crate work too (`1*panic` kills whoever passes). Unless the binary is built with
//! the `failpoints` feature (never a release build; `cargo test` turns it on), `hold` does
//! nothing.
//!
//! Points that inject an error rather than a pause stay `fail::fail_point!` calls where the
//! error is made (`storage::*`, `db::before_commit`, `export::build`).

/// Waits `ms` milliseconds if the failpoint `name` is set to `return(ms)`, logging
/// `failpoint_hold` first so that a test can tell the pause has begun.
// Without the `fail` crate's `failpoints` feature the macro expands to nothing: `name` is then
// unused and the closure trivial.
#[allow(unused_variables, clippy::redundant_closure_call)]
pub async fn hold(name: &str) {
    let ms: Option<u64> = (|| {
        fail::fail_point!(name, |ms: Option<String>| ms.and_then(|m| m.parse().ok()));
        None
    })();
    if let Some(ms) = ms {
        tracing::info!(failpoint = name, ms, "failpoint_hold");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
