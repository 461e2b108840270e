//! Logging setup: human lines on a terminal, JSON lines for log shippers; Prometheus metrics in [`metrics`].

pub mod metrics;

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the configured level when set, so an operator
/// can raise verbosity for one run without editing the config.
pub fn init(format: &LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    // A second init (tests, demo inside a process that already logs) keeps the first subscriber.
    let _ = result;
}
