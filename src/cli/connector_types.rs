//! `tokenbox connector-types list`: the connector catalog and what is configured.

use clap::Subcommand;

use crate::config::Config;
use crate::connectors::Catalog;

#[derive(Subcommand)]
pub enum ConnectorTypesCommand {
    /// List every connector type and whether its client credentials are configured.
    List,
}

pub fn run(command: ConnectorTypesCommand, config: Config) -> anyhow::Result<()> {
    let ConnectorTypesCommand::List = command;
    let catalog = Catalog::build(&config.connector_types, config.allow_insecure_loopback)?;
    println!(
        "{:<14} {:<30} {:<18} {:<8} {:<10} TOKEN URL",
        "NAME", "DISPLAY NAME", "KIND", "SOURCE", "CONFIGURED"
    );
    for ct in catalog.iter() {
        println!(
            "{:<14} {:<30} {:<18} {:<8} {:<10} {}",
            ct.name.as_str(),
            ct.display_name,
            ct.kind.as_str(),
            if ct.from_catalog { "catalog" } else { "config" },
            if ct.has_credentials() { "yes" } else { "no" },
            ct.token_url
        );
    }
    Ok(())
}
