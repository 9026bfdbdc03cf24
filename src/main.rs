//! The `atelier` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    atelier::telemetry::init();
    let cli = atelier::cli::Cli::parse();
    match atelier::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, code = e.code(), "command failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
