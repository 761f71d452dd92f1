//! `tokenbox webhooks list`: deliveries, newest first: what was delivered, what failed and why.

use clap::Subcommand;

use super::table::or_dash;
use crate::config::Config;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// List deliveries.
    List {
        /// Only the ones not delivered yet.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

pub async fn run(command: WebhooksCommand, config: Config) -> anyhow::Result<()> {
    let WebhooksCommand::List { failed, limit } = command;
    let store = crate::store::open_store(&config).await?;
    println!(
        "{:<6} {:<38} {:<9} {:<11} {:<8} {:<11} ENDPOINT",
        "ID", "EVENT", "ATTEMPTS", "DELIVERED", "STATUS", "NEXT"
    );
    for d in store.list_webhooks(failed, limit).await? {
        println!(
            "{:<6} {:<38} {:<9} {:<11} {:<8} {:<11} {}{}",
            d.id,
            d.event_type,
            d.attempts,
            d.delivered_at.map_or("no".to_string(), |t| t.to_string()),
            or_dash(d.last_status.map(|s| s.to_string())),
            if d.delivered_at.is_some() {
                "-".to_string()
            } else {
                d.next_attempt_at.to_string()
            },
            d.endpoint_url,
            d.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    Ok(())
}
