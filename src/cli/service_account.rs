//! `tokenbox service-account create | list | revoke`: the accounts that call the API.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use super::{audit_cli, parse_duration};
use crate::config::Config;
use crate::domain::{now_epoch, AppId, ConnectorTypeName};
use crate::store::{AccountScope, Role, SecretsStore, ServiceAccount};
use crate::token::ServiceToken;

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Superadmin,
    Admin,
}

#[derive(Subcommand)]
pub enum ServiceAccountCommand {
    /// Create an account and print its bearer token (shown once) as the only line on stdout.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Restrict the account to these app-id patterns (`*` wildcard), comma-separated.
        #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
        apps: Vec<String>,
        /// Restrict the account to these connector types, comma-separated.
        #[arg(long, value_name = "TYPES", value_delimiter = ',')]
        connector_types: Vec<String>,
        /// The account stops working after this long: seconds, or 30m, 12h, 90d.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List accounts (never their tokens).
    List,
    /// Delete an account: its token stops working.
    Revoke { name: String },
}

/// A new account as given on the command line, checked.
struct NewAccount {
    name: String,
    role: Role,
    scope: Option<AccountScope>,
    expires_at: Option<i64>,
}

/// Service-account commands need only the store: no background worker is started.
pub async fn run(command: ServiceAccountCommand, config: Config) -> anyhow::Result<()> {
    let opened = crate::open_command_store(config).await?;
    let store = &opened.store;
    match command {
        ServiceAccountCommand::Create {
            name,
            role,
            apps,
            connector_types,
            expires_in,
        } => {
            let account = check(name, role, apps, connector_types, expires_in.as_deref())?;
            create(store, account).await
        }
        ServiceAccountCommand::List => list(store).await,
        ServiceAccountCommand::Revoke { name } => {
            if !store.delete_service_account(&name).await? {
                bail!("no service account named '{name}'");
            }
            audit_cli(store, "service_account.revoke", None, Some(&name)).await;
            eprintln!("service account '{name}' revoked");
            Ok(())
        }
    }
}

/// Checks the arguments of `create` in the order the command always has.
fn check(
    name: String,
    role: RoleArg,
    apps: Vec<String>,
    connector_types: Vec<String>,
    expires_in: Option<&str>,
) -> anyhow::Result<NewAccount> {
    for pattern in &apps {
        let literal = pattern.replace('*', "a");
        AppId::parse(&literal).map_err(|_| {
            anyhow::anyhow!("--apps {pattern}: an app-id pattern is an app id with '*' wildcards")
        })?;
    }
    for ct in &connector_types {
        ConnectorTypeName::parse(ct).map_err(anyhow::Error::msg)?;
    }
    let scope = (!apps.is_empty() || !connector_types.is_empty()).then_some(AccountScope {
        apps,
        connector_types,
    });
    let expires_at = expires_in
        .map(|d| match parse_duration(d)? {
            s if s > 0 => Ok(now_epoch() + s),
            _ => bail!("--expires-in must be positive"),
        })
        .transpose()?;
    check_account_name(&name)?;
    let role = match role {
        RoleArg::Superadmin => Role::Superadmin,
        RoleArg::Admin => Role::Admin,
    };
    Ok(NewAccount {
        name,
        role,
        scope,
        expires_at,
    })
}

fn check_account_name(name: &str) -> anyhow::Result<()> {
    if !crate::domain::is_account_name(name) {
        bail!("a service account name has 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// Stores the account and prints its token, shown once, as the only line on stdout.
async fn create(
    store: &std::sync::Arc<dyn SecretsStore>,
    account: NewAccount,
) -> anyhow::Result<()> {
    let token = ServiceToken::generate();
    store
        .create_service_account(&ServiceAccount {
            name: account.name.clone(),
            role: account.role,
            token_hash: token.hash(),
            created_at: now_epoch(),
            scope: account.scope,
            expires_at: account.expires_at,
        })
        .await?;
    audit_cli(store, "service_account.create", None, Some(&account.name)).await;
    println!("{}", token.expose());
    Ok(())
}

async fn list(store: &std::sync::Arc<dyn SecretsStore>) -> anyhow::Result<()> {
    println!(
        "{:<24} {:<11} {:<11} {:<11} SCOPE",
        "NAME", "ROLE", "CREATED", "EXPIRES"
    );
    for a in store.list_service_accounts().await? {
        println!(
            "{:<24} {:<11} {:<11} {:<11} {}",
            a.name,
            a.role.as_str(),
            a.created_at,
            a.expires_at.map_or("never".to_string(), |e| e.to_string()),
            super::table::scope(a.scope.as_ref()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_short_and_plain() {
        assert!(check_account_name("job-runner_1.a").is_ok());
        assert!(check_account_name("").is_err());
        assert!(check_account_name(&"a".repeat(65)).is_err());
        assert!(check_account_name("a b").is_err());
    }
}
