//! The `tokenbox` command line: parses arguments and calls into the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use tokenbox::api::auth::{generate_token, hash_token};
use tokenbox::api::resources::connection::ImportTokenSet;
use tokenbox::config::Config;
use tokenbox::domain::{now_epoch, AppId, ConnectionKey, ConnectorTypeName};
use tokenbox::secrets::{Role, ServiceAccount};
use tokenbox::{build_state, telemetry, Application};

#[derive(Parser)]
#[command(
    name = "tokenbox",
    version,
    about = "Keeps OAuth tokens for many tenants and hands a valid access token to extraction jobs"
)]
struct Cli {
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
    /// Print the route table (path, methods, access) as JSON.
    Routes,
    /// Show webhook deliveries (newest first): what was delivered, what failed and why.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
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
    ServiceAccount(ServiceAccountCommand),
    /// Manage connections (token sets).
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Manage encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage connect links (the signup URLs sent to tenants).
    #[command(subcommand)]
    ConnectLink(ConnectLinkCommand),
    /// Show the connector catalog.
    #[command(subcommand)]
    ConnectorTypes(ConnectorTypesCommand),
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

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Superadmin,
    Admin,
}

#[derive(Subcommand)]
enum ServiceAccountCommand {
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

#[derive(Subcommand)]
enum WebhooksCommand {
    /// List deliveries.
    List {
        /// Only the ones not delivered yet.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Append a new key to the key file. Restart every server (so they encrypt with it), then
    /// run `keys rotate`.
    Add,
    /// Re-encrypt every stored secret under the newest key, in batches, while servers run.
    /// Safe to interrupt and run again. Afterwards older keys can be removed from the file.
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Start signing JWTs with a new key; the previous one keeps verifying for
    /// jwt_key_overlap_seconds. Servers pick the new key up within 5 seconds.
    RotateSigning,
}

#[derive(Subcommand)]
enum ConnectLinkCommand {
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

#[derive(Subcommand)]
enum ConnectorTypesCommand {
    /// List every connector type and whether its client credentials are configured.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum ConnectionCommand {
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

/// Exit codes of `tokenbox token`, so shell scripts can tell failures apart.
fn exit_code_for(error: &str) -> u8 {
    match error {
        "reauthorization_required" => 3,
        "not_connected" => 4,
        "provider_unavailable" | "provider_error" => 5,
        "unauthorized" | "forbidden" => 6,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokenbox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tokenbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Token {
        app_id,
        connector_type,
        min_validity,
        force_refresh,
        url,
        token,
    } = &cli.command
    {
        return fetch_token(
            url,
            token,
            app_id,
            connector_type,
            *min_validity,
            *force_refresh,
        )
        .await;
    }
    if let Command::Routes = cli.command {
        println!(
            "{}",
            serde_json::to_string_pretty(&tokenbox::api::routes::describe())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Demo { listen, data_dir } = &cli.command {
        return demo(listen, data_dir).await;
    }
    let (config, warnings) = Config::load(cli.config.as_deref())?;
    let serving = matches!(cli.command, Command::Serve);
    telemetry::init(
        config.log_format,
        if serving {
            "info,sqlx=warn"
        } else {
            "warn,sqlx=warn"
        },
    );
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            tokenbox::secrets::open_store(&config).await?;
            eprintln!(
                "database schema is up to date ({})",
                tokenbox::secret::redact_url(&config.database_url)
            );
        }
        Command::ServiceAccount(command) => {
            let state = build_state(config, None).await?;
            let store = state.keeper.store();
            match command {
                ServiceAccountCommand::Create {
                    name,
                    role,
                    apps,
                    connector_types,
                    expires_in,
                } => {
                    for pattern in &apps {
                        let literal = pattern.replace('*', "a");
                        AppId::parse(&literal).map_err(|_| {
                            anyhow::anyhow!("--apps {pattern}: an app-id pattern is an app id with '*' wildcards")
                        })?;
                    }
                    for ct in &connector_types {
                        ConnectorTypeName::parse(ct).map_err(anyhow::Error::msg)?;
                    }
                    let scope = (!apps.is_empty() || !connector_types.is_empty()).then(|| {
                        tokenbox::secrets::AccountScope {
                            apps: apps.clone(),
                            connector_types: connector_types.clone(),
                        }
                    });
                    let expires_at = expires_in
                        .as_deref()
                        .map(|d| match parse_duration(d)? {
                            s if s > 0 => Ok(now_epoch() + s),
                            _ => bail!("--expires-in must be positive"),
                        })
                        .transpose()?;
                    check_account_name(&name)?;
                    let name_for_audit = name.clone();
                    let token = generate_token();
                    store
                        .create_service_account(&ServiceAccount {
                            name,
                            role: match role {
                                RoleArg::Superadmin => Role::Superadmin,
                                RoleArg::Admin => Role::Admin,
                            },
                            token_hash: hash_token(&token),
                            created_at: now_epoch(),
                            scope,
                            expires_at,
                        })
                        .await?;
                    audit_cli(store, "service_account.create", None, Some(&name_for_audit)).await;
                    println!("{token}");
                }
                ServiceAccountCommand::List => {
                    println!(
                        "{:<24} {:<11} {:<11} {:<11} SCOPE",
                        "NAME", "ROLE", "CREATED", "EXPIRES"
                    );
                    for a in store.list_service_accounts().await? {
                        let scope = match &a.scope {
                            None => "unrestricted".to_string(),
                            Some(s) => format!(
                                "apps={} connector_types={}",
                                if s.apps.is_empty() {
                                    "*".into()
                                } else {
                                    s.apps.join(",")
                                },
                                if s.connector_types.is_empty() {
                                    "*".into()
                                } else {
                                    s.connector_types.join(",")
                                }
                            ),
                        };
                        println!(
                            "{:<24} {:<11} {:<11} {:<11} {scope}",
                            a.name,
                            a.role.as_str(),
                            a.created_at,
                            a.expires_at.map_or("never".to_string(), |e| e.to_string()),
                        );
                    }
                }
                ServiceAccountCommand::Revoke { name } => {
                    if !store.delete_service_account(&name).await? {
                        bail!("no service account named '{name}'");
                    }
                    audit_cli(store, "service_account.revoke", None, Some(&name)).await;
                    eprintln!("service account '{name}' revoked");
                }
            }
        }
        Command::Connection(ConnectionCommand::List {
            status,
            connector_type,
            app_prefix,
            format,
        }) => {
            let store = tokenbox::secrets::open_store(&config).await?;
            let mut filter = tokenbox::domain::ConnectionFilter {
                status: status
                    .map(|s| {
                        tokenbox::domain::ConnectionStatus::parse(&s)
                            .context("--status must be active or reauthorization_required")
                    })
                    .transpose()?,
                connector_type: connector_type
                    .map(|c| ConnectorTypeName::parse(&c).map_err(anyhow::Error::msg))
                    .transpose()?,
                app_id_prefix: app_prefix,
                expiring_before: None,
                after: None,
                limit: 1000,
            };
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
                        OutputFormat::Json => println!(
                            "{}",
                            serde_json::json!({
                                "app_id": c.key.app_id,
                                "connector_type": c.key.connector_type,
                                "status": c.status.as_str(),
                                "expires_at": c.expires_at,
                                "refreshed_at": c.refreshed_at,
                                "last_error": c.last_error,
                            })
                        ),
                        OutputFormat::Table => println!(
                            "{:<24} {:<14} {:<25} {:<12} {:<12} {}",
                            c.key.app_id.as_str(),
                            c.key.connector_type.as_str(),
                            c.status.as_str(),
                            c.expires_at
                                .map_or("never".into(), |at| human_duration(at - now)),
                            c.refreshed_at.map_or("-".into(), |at| format!(
                                "{} ago",
                                human_duration(now - at)
                            )),
                            c.last_error
                                .as_deref()
                                .map(|e| e.chars().take(60).collect::<String>())
                                .unwrap_or_default()
                        ),
                    }
                }
                if (page.len() as i64) < filter.limit {
                    break;
                }
                filter.after = page.last().map(|c| c.key.clone());
            }
        }
        Command::Connection(ConnectionCommand::Import {
            app_id,
            connector_type,
        }) => {
            let key = ConnectionKey::new(
                AppId::parse(&app_id).map_err(anyhow::Error::msg)?,
                ConnectorTypeName::parse(&connector_type).map_err(anyhow::Error::msg)?,
            );
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read stdin")?;
            let tokens = ImportTokenSet::from_json(&input)
                .and_then(|t| t.into_token_set(now_epoch()))
                .map_err(anyhow::Error::msg)?;
            let state = build_state(config, None).await?;
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
        }
        Command::Audit {
            app,
            since,
            limit,
            json,
        } => {
            let since = parse_since(since.as_deref())?;
            let store = tokenbox::secrets::open_store(&config).await?;
            let events = store.read_audit(app.as_deref(), since, limit).await?;
            if json {
                for e in &events {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                println!(
                    "{:<11} {:<16} {:<20} {:<24} {:<24} CLIENT",
                    "AT", "PRINCIPAL", "ACTION", "SUBJECT", "OUTCOME"
                );
                for e in &events {
                    let connection = match (&e.app_id, &e.connector_type) {
                        (Some(a), Some(c)) => format!("{a}/{c}"),
                        _ => "-".into(),
                    };
                    let target = e.subject.clone().unwrap_or(connection);
                    let outcome = if e.count == 1 {
                        e.outcome.clone()
                    } else {
                        format!("{} x{}", e.outcome, e.count)
                    };
                    println!(
                        "{:<11} {:<16} {:<20} {:<24} {:<24} {}",
                        e.at,
                        e.principal,
                        e.action,
                        target,
                        outcome,
                        e.client_addr.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Command::Webhooks(WebhooksCommand::List { failed, limit }) => {
            let store = tokenbox::secrets::open_store(&config).await?;
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
                    d.last_status.map_or("-".to_string(), |s| s.to_string()),
                    if d.delivered_at.is_some() {
                        "-".to_string()
                    } else {
                        d.next_attempt_at.to_string()
                    },
                    d.endpoint_url,
                    d.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            }
        }
        Command::Keys(KeysCommand::RotateSigning) => {
            let state = build_state(config, None).await?;
            let kid = state.jwt.rotate().await?;
            audit_cli(state.keeper.store(), "jwt_key.rotate", None, Some(&kid)).await;
            eprintln!(
                "JWTs are now signed with key {kid}; the previous key verifies for {} more seconds",
                state.config.jwt_key_overlap_seconds
            );
        }
        Command::Keys(KeysCommand::Add) => {
            if config.encryption_key.is_some() {
                bail!("the keys come from TOKENBOX_ENCRYPTION_KEY: append a new line to its value instead");
            }
            let path = &config.encryption_key_file;
            let mut text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key file {}", path.display()))?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&tokenbox::secrets::crypto::KeyRing::generate_key_line());
            text.push('\n');
            tokenbox::secrets::crypto::KeyRing::parse(&text)?;
            tokenbox::secrets::crypto::replace_key_file(path, &text)?;
            eprintln!(
                "added a key to {}; restart every server, then run `tokenbox keys rotate`",
                path.display()
            );
        }
        Command::Keys(KeysCommand::Rotate { batch }) => {
            let store = tokenbox::secrets::open_store(&config).await?;
            let mut total = 0;
            for pass in 1..=5 {
                let (mut rotated, mut raced) = (0, 0);
                let mut after = None;
                loop {
                    let progress = store
                        .reencrypt_connections(after.as_ref(), batch.max(1))
                        .await?;
                    rotated += progress.rotated;
                    raced += progress.raced;
                    if progress.scanned < batch.max(1) as u64 {
                        break;
                    }
                    after = progress.last;
                }
                total += rotated;
                eprintln!(
                    "pass {pass}: re-encrypted {rotated} connections, {raced} written meanwhile"
                );
                if raced == 0 {
                    break;
                }
            }
            let meta = store.reencrypt_meta().await?;
            eprintln!(
                "done: {total} connections and {meta} other values now use the newest key; older keys can be removed from the key file once every server runs with the newest"
            );
        }
        Command::ConnectLink(ConnectLinkCommand::Create {
            app_id,
            connector_type,
            params,
            expires_in,
            return_to,
        }) => {
            let key = ConnectionKey::new(
                AppId::parse(&app_id).map_err(anyhow::Error::msg)?,
                ConnectorTypeName::parse(&connector_type).map_err(anyhow::Error::msg)?,
            );
            let mut values = std::collections::BTreeMap::new();
            for param in params {
                let (k, v) = param
                    .split_once('=')
                    .with_context(|| format!("--param {param}: expected NAME=VALUE"))?;
                values.insert(k.to_string(), v.to_string());
            }
            if config.public_url.is_none() && config.listen.ends_with(":0") {
                bail!("set public_url (or TOKENBOX_PUBLIC_URL): links need the address tenants reach the service at");
            }
            let state = build_state(config, None).await?;
            let created = tokenbox::signup::create_link(
                &state.keeper,
                &state.config,
                &state.public_url,
                &key,
                tokenbox::signup::NewLink {
                    expires_in,
                    return_to,
                    params: values,
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
        }
        Command::ConnectorTypes(ConnectorTypesCommand::List) => {
            let catalog = tokenbox::connectors::Catalog::build(
                &config.connector_types,
                config.allow_insecure_loopback,
            )?;
            println!(
                "{:<14} {:<30} {:<8} {:<10} TOKEN URL",
                "NAME", "DISPLAY NAME", "SOURCE", "CONFIGURED"
            );
            for ct in catalog.iter() {
                println!(
                    "{:<14} {:<30} {:<8} {:<10} {}",
                    ct.name.as_str(),
                    ct.display_name,
                    if ct.from_catalog { "catalog" } else { "config" },
                    if ct.has_credentials() { "yes" } else { "no" },
                    ct.token_url
                );
            }
        }
        Command::Token { .. } | Command::Routes | Command::Demo { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "3h 12m", "45s", "expired" for a number of seconds.
fn human_duration(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".into();
    }
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
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
    store: &std::sync::Arc<dyn tokenbox::secrets::SecretsStore>,
    action: &str,
    key: Option<&ConnectionKey>,
    subject: Option<&str>,
) {
    let mut event = tokenbox::audit::event("cli", action, key, "ok", None);
    event.subject = subject.map(str::to_string);
    if let Err(e) = store.record_audit(&[event]).await {
        eprintln!("tokenbox: warning: the audit event could not be written: {e}");
    }
}

/// `tokenbox demo`: the one-minute tour.
async fn demo(listen: &str, data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    telemetry::init(tokenbox::config::LogFormat::Text, "warn,sqlx=warn");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (try --listen 127.0.0.1:8081)"))?;
    let address = listener.local_addr()?;
    let dir = data_dir.display();
    let config = Config {
        listen: address.to_string(),
        public_url: Some(format!("http://{address}")),
        database_url: format!("sqlite://{dir}/tokenbox.db").into(),
        encryption_key_file: data_dir.join("encryption.key"),
        sandbox: true,
        allow_insecure_loopback: true,
        ..Config::default()
    };
    let app = Application::build_with_listener(config, listener).await?;
    let state = app.state().clone();
    let token = generate_token();
    state
        .keeper
        .store()
        .create_service_account(&ServiceAccount {
            name: format!("demo-{}", now_epoch()),
            role: Role::Superadmin,
            token_hash: hash_token(&token),
            created_at: now_epoch(),
            scope: None,
            expires_at: None,
        })
        .await?;
    let key = ConnectionKey::new(
        AppId::parse("demo").expect("valid"),
        ConnectorTypeName::parse("sandbox").expect("valid"),
    );
    let link = tokenbox::signup::create_link(
        &state.keeper,
        &state.config,
        &state.public_url,
        &key,
        tokenbox::signup::NewLink::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = &state.public_url;
    let me = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "tokenbox".into());
    println!(
        "\ntokenbox demo is running at {base} (data in {dir}; Ctrl-C stops it)\n\n\
         1. Open this link in a browser, click Connect, then Approve at the sandbox provider:\n\
         \x20  {url}\n\n\
         2. Fetch the token, as an extraction job would:\n\
         \x20  curl -s -H 'Authorization: Bearer {token}' {base}/demo/sandbox/binb-token\n\
         \x20  TOKENBOX_URL={base} TOKENBOX_TOKEN={token} {me} token demo sandbox\n\n\
         3. The sandbox's API accepts it (tokens last {lifetime} s; tokenbox refreshes them):\n\
         \x20  curl -s -H \"Authorization: Bearer $(TOKENBOX_URL={base} TOKENBOX_TOKEN={token} {me} token demo sandbox)\" {base}/sandbox/api/me\n",
        url = link.url,
        lifetime = tokenbox::api::sandbox::ACCESS_TOKEN_LIFETIME,
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

fn check_account_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        bail!("a service account name has 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

async fn fetch_token(
    url: &str,
    token: &str,
    app_id: &str,
    connector_type: &str,
    min_validity: Option<u64>,
    force_refresh: bool,
) -> anyhow::Result<ExitCode> {
    AppId::parse(app_id).map_err(anyhow::Error::msg)?;
    ConnectorTypeName::parse(connector_type).map_err(anyhow::Error::msg)?;
    let mut query = Vec::new();
    if let Some(s) = min_validity {
        query.push(format!("min_validity={s}"));
    }
    if force_refresh {
        query.push("force_refresh=true".to_string());
    }
    let endpoint = format!(
        "{}/{app_id}/{connector_type}/binb-token{}{}",
        url.trim_end_matches('/'),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    let response = client
        .get(&endpoint)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach tokenbox at {url}"))?;
    let status = response.status();
    let body = response.bytes().await.context("cannot read the answer")?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("tokenbox answered HTTP {status} with a body that is not JSON"))?;
    if status.is_success() {
        let access_token = json["access_token"]
            .as_str()
            .context("the answer has no access_token")?;
        println!("{access_token}");
        return Ok(ExitCode::SUCCESS);
    }
    let error = json["error"].as_str().unwrap_or("error");
    let message = json["message"].as_str().unwrap_or("");
    eprintln!("tokenbox: {error}: {message}");
    Ok(ExitCode::from(exit_code_for(error)))
}
