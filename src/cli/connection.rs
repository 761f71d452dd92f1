//! `tokenbox connection list | import`.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::table::human_duration;
use super::{audit_cli, connection_key};
use crate::config::Config;
use crate::domain::{
    now_epoch, ConnectionFilter, ConnectionStatus, ConnectionSummary, ConnectorTypeName,
    ImportTokenSet,
};
use crate::store::SecretsStore;

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum ConnectionCommand {
    /// List connections (never a token): app, connector type, status, expiry, last refresh,
    /// last error.
    List {
        /// active or reauthorization_required
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        connector_type: Option<String>,
        /// Only apps whose id starts with this.
        #[arg(long)]
        app_prefix: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Import a JSON token set read on stdin:
    /// {"access_token", "refresh_token", "expires_at" | "expires_in", "scope"}.
    Import {
        app_id: String,
        connector_type: String,
    },
}

pub async fn run(command: ConnectionCommand, config: Config) -> anyhow::Result<()> {
    match command {
        ConnectionCommand::List {
            status,
            connector_type,
            app_prefix,
            format,
        } => {
            let store = crate::store::open_store(&config).await?;
            let filter = ConnectionFilter {
                status: status
                    .map(|s| {
                        ConnectionStatus::parse(&s)
                            .context("--status must be active or reauthorization_required")
                    })
                    .transpose()?,
                connector_type: connector_type
                    .map(|c| ConnectorTypeName::parse(&c).map_err(anyhow::Error::msg))
                    .transpose()?,
                app_id_prefix: app_prefix,
                expiring_before: None,
                refresh_expiring_before: None,
                missing_scope: None,
                after: None,
                limit: 1000,
            };
            list(&store, filter, format).await
        }
        ConnectionCommand::Import {
            app_id,
            connector_type,
        } => import(&app_id, &connector_type, config).await,
    }
}

/// Prints every matching connection, a page at a time.
async fn list(
    store: &Arc<dyn SecretsStore>,
    mut filter: ConnectionFilter,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let now = now_epoch();
    if let OutputFormat::Table = format {
        println!(
            "{:<24} {:<14} {:<25} {:<12} {:<12} LAST ERROR",
            "APP", "CONNECTOR", "STATUS", "EXPIRES IN", "REFRESHED"
        );
    }
    loop {
        let page = store.list_connections(&filter).await?;
        for c in &page {
            match format {
                OutputFormat::Json => println!("{}", json_line(c)),
                OutputFormat::Table => println!("{}", table_row(c, now)),
            }
        }
        if (page.len() as i64) < filter.limit {
            break;
        }
        filter.after = page.last().map(|c| c.key.clone());
    }
    Ok(())
}

fn json_line(c: &ConnectionSummary) -> serde_json::Value {
    serde_json::json!({
        "app_id": c.key.app_id,
        "connector_type": c.key.connector_type,
        "status": c.status.as_str(),
        "expires_at": c.expires_at,
        "refreshed_at": c.refreshed_at,
        "last_error": c.last_error,
    })
}

fn table_row(c: &ConnectionSummary, now: i64) -> String {
    format!(
        "{:<24} {:<14} {:<25} {:<12} {:<12} {}",
        c.key.app_id.as_str(),
        c.key.connector_type.as_str(),
        c.status.as_str(),
        c.expires_at
            .map_or("never".into(), |at| human_duration(at - now)),
        c.refreshed_at
            .map_or("-".into(), |at| format!("{} ago", human_duration(now - at))),
        c.last_error
            .as_deref()
            .map(|e| e.chars().take(60).collect::<String>())
            .unwrap_or_default()
    )
}

/// Imports the JSON token set read on stdin; the connection becomes active.
async fn import(app_id: &str, connector_type: &str, config: Config) -> anyhow::Result<()> {
    let key = connection_key(app_id, connector_type)?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read stdin")?;
    let tokens = ImportTokenSet::from_json(&input)
        .and_then(|t| t.into_token_set(now_epoch()))
        .map_err(anyhow::Error::msg)?;
    // The keeper checks the token set against the connector type and emits the webhook event.
    let state = crate::build_state(config, None).await?;
    let stored = state
        .keeper
        .save_connection(&key, &tokens)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    audit_cli(state.keeper.store(), "connection.import", Some(&key), None).await;
    eprintln!(
        "imported {key} (status active{})",
        stored
            .tokens
            .expires_at
            .map(|at| format!(", expires at {at}"))
            .unwrap_or_default()
    );
    Ok(())
}
