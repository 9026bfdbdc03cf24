//! Logging setup: `EnvFilter` from `RUST_LOG` (default info), human or JSON lines
//! (`ATELIER_LOG_FORMAT=json`), always to stderr so stdout stays scriptable.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; later calls are no-ops (tests call it repeatedly).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let json = std::env::var("ATELIER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // The filter applies to the log output only: the pool metrics see sqlx's acquire events
    // whatever `RUST_LOG` says.
    let registry = tracing_subscriber::registry().with(crate::metrics::pool_acquire_layer());
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    };
    drop(result);
}
