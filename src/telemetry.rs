//! Logging: readable lines in a terminal, JSON in production; filter from `TOKENBOX_LOG`. With
//! `otlp_endpoint`, the OpenTelemetry layer beside it (`crate::tracing_otel`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};
use crate::tracing_otel;

/// Installs the global subscriber, writing to stderr. `default` is the filter used when neither
/// `TOKENBOX_LOG` nor `RUST_LOG` is set.
pub fn init(format: LogFormat, default: &str) {
    // Without an exporter there is nothing to fail.
    drop(install(format, default, None));
}

/// [`init`], plus the export of traces when the configuration names an OTLP endpoint.
pub fn init_with_traces(config: &Config, default: &str) -> anyhow::Result<()> {
    let settings = config
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| tracing_otel::Settings {
            endpoint,
            service_name: &config.otlp_service_name,
            batch_delay: std::time::Duration::from_millis(config.otlp_batch_delay_millis),
        });
    install(config.log_format, default, settings.as_ref())
}

fn install(
    format: LogFormat,
    default: &str,
    traces: Option<&tracing_otel::Settings<'_>>,
) -> anyhow::Result<()> {
    let filter = std::env::var("TOKENBOX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
        // The spans exported as traces never shape a log line; without traces they are
        // disabled at their call sites.
        .add_directive(
            format!("{}=off", tracing_otel::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let Some(traces) = traces else {
        // Without traces, the subscriber of old: one global filter, nothing more per event.
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
        return Ok(());
    };
    // With traces, each layer has its own filter: the log filter never hides a span from the
    // exporter.
    let builder = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
    };
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![logs, tracing_otel::layer(traces)?];
    drop(Registry::default().with(layers).try_init());
    Ok(())
}
