//! `tokenbox serve`, `tokenbox migrate` and `tokenbox routes`.

use std::process::ExitCode;

use crate::config::Config;
use crate::Application;

/// `tokenbox serve`: the HTTP service with its background workers, until SIGINT or SIGTERM;
/// then the last spans are sent (with `otlp_endpoint`).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let result = app.run_until_stopped().await;
    let _ = tokio::task::spawn_blocking(crate::tracing_otel::shutdown).await;
    result
}

/// `tokenbox migrate`: opening the store applies pending migrations.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    crate::store::open_store(&config).await?;
    eprintln!(
        "database schema is up to date ({})",
        crate::secret::redact_url(&config.database_url)
    );
    Ok(())
}

/// `tokenbox routes`: the route table (path, methods, access) as JSON.
pub fn routes() -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&crate::route_table())?);
    Ok(ExitCode::SUCCESS)
}
