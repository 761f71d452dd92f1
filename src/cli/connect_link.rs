//! `tokenbox connect-link create`: the signup URL sent to a tenant.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{audit_cli, connection_key};
use crate::config::Config;
use crate::signup::NewLink;

#[derive(Subcommand)]
pub enum ConnectLinkCommand {
    /// Create a link and print its URL (uses public_url from the configuration).
    Create {
        app_id: String,
        connector_type: String,
        /// A per-connection value for the connector type's placeholders, e.g. subdomain=acme.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Lifetime of the link in seconds (default 7 days).
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<i64>,
        /// Where to send the tenant after the signup (must match allowed_return_urls).
        #[arg(long, value_name = "URL")]
        return_to: Option<String>,
    },
}

/// `NAME=VALUE` arguments as a map.
fn parse_params(params: Vec<String>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for param in params {
        let (k, v) = param
            .split_once('=')
            .with_context(|| format!("--param {param}: expected NAME=VALUE"))?;
        values.insert(k.to_string(), v.to_string());
    }
    Ok(values)
}

pub async fn run(command: ConnectLinkCommand, config: Config) -> anyhow::Result<()> {
    let ConnectLinkCommand::Create {
        app_id,
        connector_type,
        params,
        expires_in,
        return_to,
    } = command;
    let key = connection_key(&app_id, &connector_type)?;
    let params = parse_params(params)?;
    if config.public_url.is_none() && config.listen.ends_with(":0") {
        bail!("set public_url (or TOKENBOX_PUBLIC_URL): links need the address tenants reach the service at");
    }
    // The keeper knows the catalog the link is checked against.
    let state = crate::build_state(config, None).await?;
    let created = crate::signup::create_link(
        &state.keeper,
        &state.config,
        &state.public_url,
        &key,
        NewLink {
            expires_in,
            return_to,
            params,
            client: None,
            same_account: false,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    audit_cli(
        state.keeper.store(),
        "connect_link.create",
        Some(&key),
        None,
    )
    .await;
    println!("{}", created.url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_name_equals_value() {
        let values = parse_params(vec!["subdomain=acme".into(), "x=a=b".into()]).unwrap();
        assert_eq!(values["subdomain"], "acme");
        assert_eq!(values["x"], "a=b");
        assert!(parse_params(vec!["subdomain".into()]).is_err());
    }
}
