//! The `tokenbox` command line, one file per command group: `main.rs` parses the arguments
//! into [`Cli`] and calls [`run`], which loads the configuration and calls into the library.
//!
//! This module never imports the HTTP layer, `api` (`src/architecture.rs` checks it): what the
//! command line shares with it (token generation, the token-set input) lives below both, and
//! the HTTP service itself is reached through the crate root (`Application`, `route_table`).

mod audit;
mod backup;
mod config_check;
mod connect_link;
mod connection;
mod connector_types;
mod demo;
mod keys;
mod serve;
mod service_account;
mod table;
mod token;
mod webhooks;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::domain::{now_epoch, AppId, ConnectionKey, ConnectorTypeName};
use crate::store::SecretsStore;
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "tokenbox",
    version,
    about = "Keeps OAuth tokens for many tenants and hands a valid access token to extraction jobs"
)]
pub struct Cli {
    /// Configuration file (TOML). Every key can also be set by a TOKENBOX_* variable.
    #[arg(long, global = true, env = "TOKENBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (applies pending migrations first).
    Serve,
    /// Try tokenbox in one minute: a server with a built-in sandbox provider, a superadmin
    /// account and a connect link, and the commands that fetch the token afterwards.
    Demo {
        /// Address to bind; TOKENBOX_LISTEN when the flag is absent.
        #[arg(long, env = "TOKENBOX_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo keeps its database and key (delete it to start afresh).
        #[arg(long, default_value = "tokenbox-demo")]
        data_dir: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Back up the database while servers run (SQLite: a consistent copy, VACUUM INTO), with
    /// FILE.manifest.json naming the key ids it needs. Keep the key file apart.
    Backup {
        /// Do not back up: decrypt every value of the backup FILE in a scratch copy and report
        /// counts.
        #[arg(long)]
        verify: bool,
        file: PathBuf,
    },
    /// Restore a backup into the configured database (stop the servers first). Refused when
    /// the configured key file lacks a key the backup needs, or when the database is not empty.
    Restore {
        file: PathBuf,
        /// Replace a database that holds data.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), generated from
    /// this command line's definition.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line's definition:
    /// `tokenbox man > /usr/local/share/man/man1/tokenbox.1`.
    Man,
    /// Check the configuration before a deploy.
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    /// Print the route table (path, methods, access) as JSON.
    Routes,
    /// Show webhook deliveries (newest first): what was delivered, what failed and why.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Read the audit trail (newest first).
    Audit {
        /// Only this app.
        #[arg(long = "app", value_name = "APP_ID")]
        app: Option<String>,
        /// Since this time: epoch seconds, or a duration ago like 30m, 12h, 7d (default 24h).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage the service accounts that call the API.
    #[command(subcommand)]
    ServiceAccount(service_account::ServiceAccountCommand),
    /// Manage connections (token sets).
    #[command(subcommand)]
    Connection(connection::ConnectionCommand),
    /// Manage encryption keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage connect links (the signup URLs sent to tenants).
    #[command(subcommand)]
    ConnectLink(connect_link::ConnectLinkCommand),
    /// Show the connector catalog.
    #[command(subcommand)]
    ConnectorTypes(connector_types::ConnectorTypesCommand),
    /// Print a valid access token, asking a running tokenbox (for shell extraction scripts).
    Token {
        app_id: String,
        connector_type: String,
        /// The token must stay valid at least this many seconds.
        #[arg(long, value_name = "SECONDS")]
        min_validity: Option<u64>,
        /// Refresh even if the stored token looks valid.
        #[arg(long)]
        force_refresh: bool,
        /// Base URL of the tokenbox service.
        #[arg(long, env = "TOKENBOX_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A superadmin service-account token.
        #[arg(long, env = "TOKENBOX_TOKEN", hide_env_values = true)]
        token: String,
    },
}

/// Runs a parsed command line. Commands that need no configuration (`token`, `routes`, `demo`)
/// run first; the others load it, set up logging and call their command group.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Command::Token {
            app_id,
            connector_type,
            min_validity,
            force_refresh,
            url,
            token,
        } => {
            let request = token::TokenRequest {
                app_id,
                connector_type,
                min_validity,
                force_refresh,
            };
            return token::fetch_token(&url, &token, &request).await;
        }
        Command::Routes => return serve::routes(),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "tokenbox", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(command) => return Ok(config_check::run(command, cli.config.as_deref())),
        Command::Demo { listen, data_dir } => return demo::run(&listen, &data_dir).await,
        command => command,
    };
    let config = load_config(cli.config.as_deref(), matches!(command, Command::Serve))?;
    dispatch(command, config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Loads the configuration and sets up logging (`info` for the server, `warn` otherwise).
fn load_config(path: Option<&Path>, serving: bool) -> anyhow::Result<Config> {
    let (config, warnings) = Config::load(path)?;
    if serving {
        telemetry::init_with_traces(&config, "info,sqlx=warn")?;
    } else {
        telemetry::init(config.log_format, "warn,sqlx=warn");
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve::serve(config).await,
        Command::Migrate => serve::migrate(config).await,
        Command::Backup {
            verify: false,
            file,
        } => backup::backup(&config, &file).await,
        Command::Backup { verify: true, file } => backup::verify(&config, &file).await,
        Command::Restore { file, force } => backup::restore(&config, &file, force).await,
        Command::ServiceAccount(command) => service_account::run(command, config).await,
        Command::Connection(command) => connection::run(command, config).await,
        Command::Audit {
            app,
            since,
            limit,
            json,
        } => audit::run(app.as_deref(), since.as_deref(), limit, json, config).await,
        Command::Webhooks(command) => webhooks::run(command, config).await,
        Command::Keys(command) => keys::run(command, config).await,
        Command::ConnectLink(command) => connect_link::run(command, config).await,
        Command::ConnectorTypes(command) => connector_types::run(command, config),
        Command::Token { .. }
        | Command::Routes
        | Command::Demo { .. }
        | Command::Config(_)
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("handled by run")
        }
    }
}

/// The connection named by two command-line arguments.
fn connection_key(app_id: &str, connector_type: &str) -> anyhow::Result<ConnectionKey> {
    Ok(ConnectionKey::new(
        AppId::parse(app_id).map_err(anyhow::Error::msg)?,
        ConnectorTypeName::parse(connector_type).map_err(anyhow::Error::msg)?,
    ))
}

/// `--since`: epoch seconds, or a duration ago (`30m`, `12h`, `7d`); default 24 hours ago.
fn parse_since(since: Option<&str>) -> anyhow::Result<i64> {
    let Some(since) = since else {
        return Ok(now_epoch() - 86_400);
    };
    if let Ok(epoch) = since.parse::<i64>() {
        return Ok(epoch);
    }
    Ok(now_epoch() - parse_duration(since)?)
}

/// A duration in seconds: a number, or a number with `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: i64 = number
        .parse()
        .with_context(|| format!("{text}: expected seconds or 30m, 12h, 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{text}: expected seconds or 30m, 12h, 7d"),
    };
    Ok(number * seconds)
}

/// Records an action taken by the command line.
async fn audit_cli(
    store: &Arc<dyn SecretsStore>,
    action: &str,
    key: Option<&ConnectionKey>,
    subject: Option<&str>,
) {
    let mut event = crate::audit::event("cli", action, key, "ok", None);
    event.subject = subject.map(str::to_string);
    if let Err(e) = store.record_audit(&[event]).await {
        eprintln!("tokenbox: warning: the audit event could not be written: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_a_unit() {
        assert_eq!(parse_duration("45").unwrap(), 45);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("12h").unwrap(), 43_200);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
