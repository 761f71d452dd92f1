//! Logging: readable lines in a terminal, JSON in production; filter from `TOKENBOX_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr. `default` is the filter used when neither
/// `TOKENBOX_LOG` nor `RUST_LOG` is set.
pub fn init(format: LogFormat, default: &str) {
    let filter = std::env::var("TOKENBOX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    // A second initialisation (tests) keeps the first subscriber.
    drop(result);
}
