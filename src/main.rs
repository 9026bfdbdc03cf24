//! The `atelier` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    atelier::telemetry::init();
    // Reads FAILPOINTS; a no-op unless built with the `failpoints` feature.
    let _failpoints = fail::FailScenario::setup();
    let cli = atelier::cli::Cli::parse();
    match atelier::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, code = %e.code(), "command failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
