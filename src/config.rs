//! Configuration: defaults in code, then the TOML file, then `TOKENBOX_*` environment variables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::connectors::ConnectorTypeSpec;
use crate::secret::{redact_url, Secret};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tokenbox-data/tokenbox.db";
pub const DEFAULT_KEY_FILE: &str = "tokenbox-data/encryption.key";

/// Environment variables read by the server (each overrides the config key of the same name).
const SERVER_ENV: &[(&str, &str)] = &[
    ("TOKENBOX_LISTEN", "listen"),
    ("TOKENBOX_PUBLIC_URL", "public_url"),
    ("TOKENBOX_DATABASE_URL", "database_url"),
    ("TOKENBOX_ENCRYPTION_KEY_FILE", "encryption_key_file"),
    ("TOKENBOX_REFRESH_MARGIN_SECONDS", "refresh_margin_seconds"),
    ("TOKENBOX_CACHE_TTL_SECONDS", "cache_ttl_seconds"),
    (
        "TOKENBOX_REQUEST_TIMEOUT_SECONDS",
        "request_timeout_seconds",
    ),
    (
        "TOKENBOX_PROVIDER_TIMEOUT_SECONDS",
        "provider_timeout_seconds",
    ),
    ("TOKENBOX_LOG_FORMAT", "log_format"),
    ("TOKENBOX_ALLOWED_RETURN_URLS", "allowed_return_urls"),
    ("TOKENBOX_REFRESHER_ENABLED", "refresher_enabled"),
    ("TOKENBOX_REFRESH_WINDOW_SECONDS", "refresh_window_seconds"),
    (
        "TOKENBOX_REFRESHER_INTERVAL_SECONDS",
        "refresher_interval_seconds",
    ),
    ("TOKENBOX_REFRESHER_CONCURRENCY", "refresher_concurrency"),
    (
        "TOKENBOX_REFRESH_BACKOFF_SECONDS",
        "refresh_backoff_seconds",
    ),
    ("TOKENBOX_RATE_LIMIT_PER_SECOND", "rate_limit_per_second"),
    (
        "TOKENBOX_SLOW_CLIENT_TIMEOUT_SECONDS",
        "slow_client_timeout_seconds",
    ),
    ("TOKENBOX_BODY_TIMEOUT_SECONDS", "body_timeout_seconds"),
    ("TOKENBOX_MAX_CONNECTIONS", "max_connections"),
    ("TOKENBOX_AUDIT_RETENTION_DAYS", "audit_retention_days"),
    ("TOKENBOX_WEBHOOK_RETENTION_DAYS", "webhook_retention_days"),
    ("TOKENBOX_PRUNE_INTERVAL_SECONDS", "prune_interval_seconds"),
    ("TOKENBOX_JWT_LIFETIME_SECONDS", "jwt_lifetime_seconds"),
    (
        "TOKENBOX_JWT_KEY_OVERLAP_SECONDS",
        "jwt_key_overlap_seconds",
    ),
    ("TOKENBOX_REFRESH_LEASE_SECONDS", "refresh_lease_seconds"),
    (
        "TOKENBOX_MAX_CONCURRENT_REFRESHES",
        "max_concurrent_refreshes",
    ),
    (
        "TOKENBOX_MAX_CONCURRENT_REFRESHES_PER_HOST",
        "max_concurrent_refreshes_per_host",
    ),
    ("TOKENBOX_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds"),
    ("TOKENBOX_ADMIN_SESSION_SECONDS", "admin_session_seconds"),
];

/// Other `TOKENBOX_*` variables that are known (read by the CLI or the logger), so not reported.
const OTHER_ENV: &[&str] = &[
    "TOKENBOX_CONFIG",
    "TOKENBOX_URL",
    "TOKENBOX_TOKEN",
    "TOKENBOX_LOG",
    "TOKENBOX_ENCRYPTION_KEY",
    // Read by the test harnesses, not by the server.
    "TOKENBOX_BIN",
    "TOKENBOX_TEST_DATABASE_URL",
];

/// A webhook endpoint, as configured (`[[webhooks]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    /// The event types to send; all when absent.
    pub events: Option<Vec<String>>,
}

/// Settings of the background refresher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefresherConfig {
    pub enabled: bool,
    /// Connections expiring within this many seconds are refreshed.
    pub window_seconds: i64,
    /// Connections with a refresh token not refreshed for this long are refreshed (keep-alive).
    pub keepalive_seconds: i64,
    /// How often a replica looks for due work (with jitter).
    pub interval: Duration,
    /// Refreshes running at once in one replica.
    pub concurrency: usize,
    /// After a failed refresh, the connection is left alone this long (doubling with each
    /// further failure, up to an hour, and at least the provider's Retry-After).
    pub backoff_base_seconds: i64,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_seconds: 600,
            keepalive_seconds: 86_400,
            interval: Duration::from_secs(30),
            concurrency: 8,
            backoff_base_seconds: 15,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The configuration file, as written by the operator. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    public_url: Option<String>,
    database_url: Option<String>,
    encryption_key_file: Option<PathBuf>,
    refresh_margin_seconds: Option<i64>,
    cache_ttl_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
    provider_timeout_seconds: Option<u64>,
    log_format: Option<LogFormat>,
    allowed_return_urls: Option<Vec<String>>,
    refresher_enabled: Option<bool>,
    refresh_window_seconds: Option<i64>,
    refresher_interval_seconds: Option<u64>,
    refresher_concurrency: Option<usize>,
    refresh_backoff_seconds: Option<u64>,
    allow_insecure_loopback: Option<bool>,
    rate_limit_per_second: Option<u32>,
    slow_client_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    audit_retention_days: Option<u64>,
    webhook_retention_days: Option<u64>,
    prune_interval_seconds: Option<u64>,
    jwt_lifetime_seconds: Option<u64>,
    jwt_key_overlap_seconds: Option<u64>,
    jwt_audience: Option<String>,
    refresh_lease_seconds: Option<u64>,
    max_concurrent_refreshes: Option<usize>,
    max_concurrent_refreshes_per_host: Option<usize>,
    shutdown_grace_seconds: Option<u64>,
    admin_session_seconds: Option<u64>,
    #[serde(default)]
    webhooks: Vec<WebhookSpec>,
    sandbox: Option<bool>,
    #[serde(default)]
    connector_types: BTreeMap<String, ConnectorTypeSpec>,
}

/// The resolved configuration.
#[derive(Clone)]
pub struct Config {
    /// Address to bind, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// Base URL users reach the service at (used for links and redirect URIs).
    pub public_url: Option<String>,
    pub database_url: String,
    pub encryption_key_file: PathBuf,
    /// A base64 key given through `TOKENBOX_ENCRYPTION_KEY` instead of a key file.
    pub encryption_key: Option<Secret>,
    /// A token is refreshed when it expires within this many seconds.
    pub refresh_margin_seconds: i64,
    /// How long a decrypted token may be served from memory before the store is read again.
    pub cache_ttl: Duration,
    /// No request waits longer than this.
    pub request_timeout: Duration,
    /// Timeout of one call to a provider.
    pub provider_timeout: Duration,
    pub log_format: LogFormat,
    /// Where a connect link may send the tenant back after the signup (URL prefixes).
    pub allowed_return_urls: Vec<String>,
    /// The background refresher (in every replica) keeps tokens fresh ahead of the jobs.
    pub refresher: RefresherConfig,
    /// Accept plain-http provider URLs on loopback hosts (tests, local development only).
    pub allow_insecure_loopback: bool,
    /// Requests per second each service account may make (bursts of twice that); 0 = no limit.
    pub rate_limit_per_second: u32,
    /// How long a client may take to send its request headers, and then its body.
    pub slow_client_timeout: Duration,
    /// How long a client may take to send its whole request body (counted from its headers).
    pub body_timeout: Duration,
    /// Connections served at once; further ones are answered 503 and closed. 0 = no limit.
    pub max_connections: usize,
    /// Audit events older than this many days are deleted (0: kept for ever).
    pub audit_retention_days: u64,
    /// Delivered webhooks older than this many days are deleted (0: kept for ever).
    pub webhook_retention_days: u64,
    /// How often old audit events and webhook deliveries are pruned.
    pub prune_interval: Duration,
    /// Lifetime of the JWTs of the client-credentials grant.
    pub jwt_lifetime_seconds: i64,
    /// How long a rotated-out signing key keeps verifying.
    pub jwt_key_overlap_seconds: i64,
    /// The `aud` of the JWTs.
    pub jwt_audience: String,
    /// How long a refresh holds its connection's lease; a refresh (waiting for a provider-call
    /// slot, then the provider call) is cut a few seconds before it ends.
    pub refresh_lease_seconds: i64,
    /// Provider calls for refreshes running at once in this process, all hosts together.
    pub max_concurrent_refreshes: usize,
    /// Provider calls for refreshes running at once in this process toward one token host.
    pub max_concurrent_refreshes_per_host: usize,
    /// After SIGTERM, how long requests and refreshes in flight may take to finish.
    pub shutdown_grace: Duration,
    /// Lifetime of a session of the /admin page (it also ends at sign-out, and when its
    /// account expires or is revoked).
    pub admin_session_seconds: i64,
    /// Endpoints that receive connection events.
    pub webhooks: Vec<WebhookSpec>,
    /// Mount the built-in sandbox OAuth provider under /sandbox/ (demo, local development).
    pub sandbox: bool,
    /// Connector types from the config file: custom entries or overrides of catalog entries.
    pub connector_types: BTreeMap<String, ConnectorTypeSpec>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("database_url", &redact_url(&self.database_url))
            .field("encryption_key_file", &self.encryption_key_file)
            .field("encryption_key", &self.encryption_key)
            .field("refresh_margin_seconds", &self.refresh_margin_seconds)
            .field("cache_ttl", &self.cache_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("provider_timeout", &self.provider_timeout)
            .field("allowed_return_urls", &self.allowed_return_urls)
            .field("refresher", &self.refresher)
            .field("refresh_lease_seconds", &self.refresh_lease_seconds)
            .field("max_concurrent_refreshes", &self.max_concurrent_refreshes)
            .field(
                "max_concurrent_refreshes_per_host",
                &self.max_concurrent_refreshes_per_host,
            )
            .field("shutdown_grace", &self.shutdown_grace)
            .field("connector_types", &self.connector_types.keys())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            public_url: None,
            database_url: DEFAULT_DATABASE_URL.to_string(),
            encryption_key_file: PathBuf::from(DEFAULT_KEY_FILE),
            encryption_key: None,
            refresh_margin_seconds: 300,
            cache_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            provider_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            allowed_return_urls: Vec::new(),
            refresher: RefresherConfig::default(),
            allow_insecure_loopback: false,
            rate_limit_per_second: 1000,
            slow_client_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            max_connections: 1000,
            audit_retention_days: 365,
            webhook_retention_days: 30,
            prune_interval: Duration::from_secs(3600),
            jwt_lifetime_seconds: 900,
            jwt_key_overlap_seconds: 1800,
            jwt_audience: "tokenbox".into(),
            refresh_lease_seconds: 60,
            max_concurrent_refreshes: 64,
            max_concurrent_refreshes_per_host: 16,
            shutdown_grace: Duration::from_secs(30),
            admin_session_seconds: 43_200,
            webhooks: Vec::new(),
            sandbox: false,
            connector_types: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Loads the file (when given) and applies the environment. Returns the warnings to log
    /// once logging is set up (unknown `TOKENBOX_*` variables).
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Self, Vec<String>)> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Self::parse_file(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TOKENBOX_"))
            .collect();
        Self::resolve(file, &env)
    }

    /// Parses configuration text (for tests and `load`).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(Self::resolve(Self::parse_file(text)?, &[])?.0)
    }

    fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message().trim()))
    }

    fn resolve(file: FileConfig, env: &[(String, String)]) -> anyhow::Result<(Self, Vec<String>)> {
        let mut c = Config::default();
        let mut warnings = Vec::new();
        if let Some(v) = file.listen {
            c.listen = v;
        }
        c.public_url = file.public_url;
        if let Some(v) = file.database_url {
            c.database_url = v;
        }
        if let Some(v) = file.encryption_key_file {
            c.encryption_key_file = v;
        }
        if let Some(v) = file.refresh_margin_seconds {
            c.refresh_margin_seconds = v;
        }
        if let Some(v) = file.cache_ttl_seconds {
            c.cache_ttl = Duration::from_secs(v);
        }
        if let Some(v) = file.request_timeout_seconds {
            c.request_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.provider_timeout_seconds {
            c.provider_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.log_format {
            c.log_format = v;
        }
        if let Some(v) = file.allowed_return_urls {
            c.allowed_return_urls = v;
        }
        if let Some(v) = file.refresher_enabled {
            c.refresher.enabled = v;
        }
        if let Some(v) = file.refresh_window_seconds {
            c.refresher.window_seconds = v;
        }
        if let Some(v) = file.refresher_interval_seconds {
            c.refresher.interval = Duration::from_secs(v);
        }
        if let Some(v) = file.refresher_concurrency {
            c.refresher.concurrency = v;
        }
        if let Some(v) = file.jwt_lifetime_seconds {
            c.jwt_lifetime_seconds = v as i64;
        }
        if let Some(v) = file.jwt_key_overlap_seconds {
            c.jwt_key_overlap_seconds = v as i64;
        }
        if let Some(v) = file.jwt_audience {
            c.jwt_audience = v;
        }
        if let Some(v) = file.refresh_lease_seconds {
            c.refresh_lease_seconds = v.min(86_400) as i64;
        }
        if let Some(v) = file.max_concurrent_refreshes {
            c.max_concurrent_refreshes = v;
        }
        if let Some(v) = file.max_concurrent_refreshes_per_host {
            c.max_concurrent_refreshes_per_host = v;
        }
        if let Some(v) = file.shutdown_grace_seconds {
            c.shutdown_grace = Duration::from_secs(v);
        }
        if let Some(v) = file.admin_session_seconds {
            c.admin_session_seconds = i64::try_from(v).unwrap_or(i64::MAX);
        }
        c.webhooks = file.webhooks;
        c.sandbox = file.sandbox.unwrap_or(false);
        if let Some(v) = file.slow_client_timeout_seconds {
            c.slow_client_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.body_timeout_seconds {
            c.body_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = file.audit_retention_days {
            c.audit_retention_days = v;
        }
        if let Some(v) = file.webhook_retention_days {
            c.webhook_retention_days = v;
        }
        if let Some(v) = file.prune_interval_seconds {
            c.prune_interval = Duration::from_secs(v);
        }
        if let Some(v) = file.rate_limit_per_second {
            c.rate_limit_per_second = v;
        }
        if let Some(v) = file.allow_insecure_loopback {
            c.allow_insecure_loopback = v;
        }
        if let Some(v) = file.refresh_backoff_seconds {
            c.refresher.backoff_base_seconds = v as i64;
        }
        c.connector_types = file.connector_types;

        for (name, value) in env {
            let key = SERVER_ENV.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
            let parse_secs = |v: &str| -> anyhow::Result<u64> {
                v.trim()
                    .parse()
                    .with_context(|| format!("{name} must be a whole number of seconds"))
            };
            match key {
                Some("listen") => c.listen = value.clone(),
                Some("public_url") => c.public_url = Some(value.clone()),
                Some("database_url") => c.database_url = value.clone(),
                Some("encryption_key_file") => c.encryption_key_file = PathBuf::from(value),
                Some("refresh_margin_seconds") => {
                    c.refresh_margin_seconds = parse_secs(value)? as i64
                }
                Some("cache_ttl_seconds") => c.cache_ttl = Duration::from_secs(parse_secs(value)?),
                Some("request_timeout_seconds") => {
                    c.request_timeout = Duration::from_secs(parse_secs(value)?)
                }
                Some("provider_timeout_seconds") => {
                    c.provider_timeout = Duration::from_secs(parse_secs(value)?)
                }
                Some("allowed_return_urls") => {
                    c.allowed_return_urls = value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                Some("refresher_enabled") => {
                    c.refresher.enabled = match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => bail!("TOKENBOX_REFRESHER_ENABLED must be true or false"),
                    }
                }
                Some("refresh_window_seconds") => {
                    c.refresher.window_seconds = parse_secs(value)? as i64
                }
                Some("refresher_interval_seconds") => {
                    c.refresher.interval = Duration::from_secs(parse_secs(value)?)
                }
                Some("jwt_lifetime_seconds") => c.jwt_lifetime_seconds = parse_secs(value)? as i64,
                Some("jwt_key_overlap_seconds") => {
                    c.jwt_key_overlap_seconds = parse_secs(value)? as i64
                }
                Some("admin_session_seconds") => {
                    c.admin_session_seconds = i64::try_from(parse_secs(value)?).unwrap_or(i64::MAX)
                }
                Some("slow_client_timeout_seconds") => {
                    c.slow_client_timeout = Duration::from_secs(parse_secs(value)?)
                }
                Some("body_timeout_seconds") => {
                    c.body_timeout = Duration::from_secs(parse_secs(value)?)
                }
                Some("max_connections") => {
                    c.max_connections = value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name} must be a whole number"))?
                }
                Some("audit_retention_days") => {
                    c.audit_retention_days = value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name} must be a whole number of days"))?
                }
                Some("webhook_retention_days") => {
                    c.webhook_retention_days = value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name} must be a whole number of days"))?
                }
                Some("prune_interval_seconds") => {
                    c.prune_interval = Duration::from_secs(parse_secs(value)?)
                }
                Some("rate_limit_per_second") => {
                    c.rate_limit_per_second = parse_secs(value)? as u32
                }
                Some("refresh_backoff_seconds") => {
                    c.refresher.backoff_base_seconds = parse_secs(value)? as i64
                }
                Some("refresh_lease_seconds") => {
                    c.refresh_lease_seconds = parse_secs(value)?.min(86_400) as i64
                }
                Some("max_concurrent_refreshes") => {
                    c.max_concurrent_refreshes = parse_secs(value)? as usize
                }
                Some("max_concurrent_refreshes_per_host") => {
                    c.max_concurrent_refreshes_per_host = parse_secs(value)? as usize
                }
                Some("shutdown_grace_seconds") => {
                    c.shutdown_grace = Duration::from_secs(parse_secs(value)?)
                }
                Some("refresher_concurrency") => {
                    c.refresher.concurrency = parse_secs(value)? as usize
                }
                Some("log_format") => {
                    c.log_format = match value.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => bail!("TOKENBOX_LOG_FORMAT must be 'text' or 'json'"),
                    }
                }
                _ if name == "TOKENBOX_ENCRYPTION_KEY" => {
                    c.encryption_key = Some(Secret::new(value.clone()))
                }
                _ if OTHER_ENV.contains(&name.as_str()) => {}
                _ => warnings.push(format!(
                    "unknown environment variable {name} ignored (known: {})",
                    SERVER_ENV
                        .iter()
                        .map(|(n, _)| *n)
                        .chain(OTHER_ENV.iter().copied())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        c.validate()?;
        Ok((c, warnings))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.refresh_lease_seconds < 2 {
            bail!("refresh_lease_seconds must be at least 2");
        }
        if self.max_concurrent_refreshes == 0 || self.max_concurrent_refreshes_per_host == 0 {
            bail!(
                "max_concurrent_refreshes and max_concurrent_refreshes_per_host must be at least 1"
            );
        }
        if self.refresh_margin_seconds < 0 {
            bail!("refresh_margin_seconds must not be negative");
        }
        if self.request_timeout.is_zero()
            || self.provider_timeout.is_zero()
            || self.slow_client_timeout.is_zero()
            || self.body_timeout.is_zero()
            || self.prune_interval.is_zero()
        {
            bail!("request_timeout_seconds, provider_timeout_seconds, slow_client_timeout_seconds, body_timeout_seconds and prune_interval_seconds must be positive");
        }
        if self.jwt_lifetime_seconds <= 0 || self.jwt_key_overlap_seconds < 0 {
            bail!("jwt_lifetime_seconds must be positive and jwt_key_overlap_seconds not negative");
        }
        if !(1..=30 * 86_400).contains(&self.admin_session_seconds) {
            bail!("admin_session_seconds must be between 1 and 2592000 (30 days)");
        }
        if self.jwt_audience.trim().is_empty() {
            bail!("jwt_audience must not be empty");
        }
        if self.refresher.interval.is_zero()
            || self.refresher.concurrency == 0
            || self.refresher.window_seconds < 0
        {
            bail!("refresher_interval_seconds and refresher_concurrency must be positive, refresh_window_seconds not negative");
        }
        for url in &self.allowed_return_urls {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bail!("allowed_return_urls: {url} is not an http(s) URL");
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("public_url must start with http:// or https://");
            }
        }
        Ok(())
    }

    /// The base URL of the service, without a trailing slash.
    pub fn public_base_url(&self, bound: std::net::SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let (c, warnings) = Config::resolve(FileConfig::default(), &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://tokenbox-data/tokenbox.db");
        assert_eq!(c.refresh_margin_seconds, 300);
        assert!(warnings.is_empty());
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_variables_are_reported() {
        let file =
            Config::parse_file("listen = \"127.0.0.1:1\"\nrefresh_margin_seconds = 60\n").unwrap();
        let (c, warnings) = Config::resolve(
            file,
            &env(&[
                ("TOKENBOX_LISTEN", "127.0.0.1:2"),
                ("TOKENBOX_TOKEN", "x"),
                ("TOKENBOX_LISTN", "typo"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.refresh_margin_seconds, 60);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("TOKENBOX_LISTN"));
    }

    #[test]
    fn every_documented_variable_is_read() {
        let (c, warnings) = Config::resolve(
            FileConfig::default(),
            &env(&[
                ("TOKENBOX_RATE_LIMIT_PER_SECOND", "7"),
                ("TOKENBOX_SLOW_CLIENT_TIMEOUT_SECONDS", "3"),
                ("TOKENBOX_JWT_LIFETIME_SECONDS", "60"),
                ("TOKENBOX_JWT_KEY_OVERLAP_SECONDS", "120"),
                ("TOKENBOX_REFRESH_BACKOFF_SECONDS", "2"),
                ("TOKENBOX_BODY_TIMEOUT_SECONDS", "4"),
                ("TOKENBOX_MAX_CONNECTIONS", "5"),
                ("TOKENBOX_AUDIT_RETENTION_DAYS", "7"),
                ("TOKENBOX_WEBHOOK_RETENTION_DAYS", "0"),
                ("TOKENBOX_PRUNE_INTERVAL_SECONDS", "60"),
            ]),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.rate_limit_per_second, 7);
        assert_eq!(c.slow_client_timeout, Duration::from_secs(3));
        assert_eq!(c.jwt_lifetime_seconds, 60);
        assert_eq!(c.jwt_key_overlap_seconds, 120);
        assert_eq!(c.refresher.backoff_base_seconds, 2);
        assert_eq!(c.body_timeout, Duration::from_secs(4));
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.audit_retention_days, 7);
        assert_eq!(c.webhook_retention_days, 0);
        assert_eq!(c.prune_interval, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("lisen = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err = Config::from_toml("[connector_types.acme]\ntokn_url = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("tokn_url"), "{err:#}");
    }

    #[test]
    fn debug_hides_the_database_password() {
        let c = Config {
            database_url: "postgres://u:pa55word@127.0.0.1/db".into(),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("pa55word"));
    }
}
