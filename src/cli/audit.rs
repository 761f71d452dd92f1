//! `tokenbox audit`: the audit trail, newest first, as a table or JSON lines.

use super::parse_since;
use super::table::or_dash;
use crate::config::Config;
use crate::domain::AuditEvent;

pub async fn run(
    app: Option<&str>,
    since: Option<&str>,
    limit: i64,
    json: bool,
    config: Config,
) -> anyhow::Result<()> {
    let since = parse_since(since)?;
    let store = crate::store::open_store(&config).await?;
    let events = store.read_audit(app, since, limit).await?;
    if json {
        for e in &events {
            println!("{}", serde_json::to_string(e)?);
        }
        return Ok(());
    }
    println!(
        "{:<11} {:<16} {:<20} {:<24} {:<24} {:<15} WORKLOAD",
        "AT", "PRINCIPAL", "ACTION", "SUBJECT", "OUTCOME", "CLIENT"
    );
    for e in &events {
        println!("{}", table_row(e));
    }
    Ok(())
}

fn table_row(e: &AuditEvent) -> String {
    let connection = match (&e.app_id, &e.connector_type) {
        (Some(a), Some(c)) => format!("{a}/{c}"),
        _ => "-".into(),
    };
    let target = e.subject.clone().unwrap_or(connection);
    let outcome = match (e.count, e.last_at) {
        (1, _) => e.outcome.clone(),
        (n, Some(last)) => format!("{} x{n} to {last}", e.outcome),
        (n, None) => format!("{} x{n}", e.outcome),
    };
    format!(
        "{:<11} {:<16} {:<20} {:<24} {:<24} {:<15} {}",
        e.at,
        e.principal,
        e.action,
        target,
        outcome,
        or_dash(e.client_addr.clone()),
        or_dash(e.workload_subject.clone())
    )
}
