//! Configuration: defaults in code, then the TOML file, then `TOKENBOX_*` environment variables.
//!
//! [`Config`] is the file format: each key is one field (its doc comment, its default in
//! `Default`), and `TOKENBOX_<KEY>` (the key upper-cased) sets it too. The environment is turned
//! into a TOML table keyed by the same names, laid over the file's, and the result deserialized
//! once; the type of each key's default says how its variable is read (a number, `true`/`false`,
//! a comma-separated list, or text). Secret keys (`SECRET_KEYS`) can also be read from the file
//! named by `TOKENBOX_<KEY>_FILE`. Nested tables (`[[webhooks]]`, `[connector_types.*]`,
//! `[[trusted_issuers]]`) are file-only. An unknown key or `TOKENBOX_*` variable is refused
//! with its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::connectors::ConnectorTypeSpec;
use crate::secret::{DatabaseUrl, Secret};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tokenbox-data/tokenbox.db";
pub const DEFAULT_KEY_FILE: &str = "tokenbox-data/encryption.key";

/// Keys whose value is secret: `TOKENBOX_<KEY>_FILE` names a file holding the value. (The
/// encryption key's file is the `encryption_key_file` key, `TOKENBOX_ENCRYPTION_KEY_FILE`.)
const SECRET_KEYS: &[&str] = &["database_url"];

/// `TOKENBOX_*` variables that are not configuration keys (read by the CLI, the logger, the
/// clients or the test harnesses), so accepted.
const OTHER_ENV: &[&str] = &[
    "TOKENBOX_CONFIG",
    "TOKENBOX_URL",
    "TOKENBOX_TOKEN",
    "TOKENBOX_LOG",
    // Read by the Python client.
    "TOKENBOX_CLIENT_ID",
    "TOKENBOX_CLIENT_SECRET",
    "TOKENBOX_WORKLOAD_TOKEN_FILE",
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

/// The signature algorithms a trusted issuer's tokens may use when none are configured.
pub const DEFAULT_WORKLOAD_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];
/// Every algorithm `algorithms` may name: asymmetric ones only (no `none`, no HMAC).
pub const WORKLOAD_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// An issuer of workload identities whose JWTs tokenbox accepts as credentials
/// (`[[trusted_issuers]]`, file only): Kubernetes service-account tokens, GitHub Actions or
/// GitLab CI OIDC tokens, a cloud's workload identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerSpec {
    /// The `iss` of its tokens, compared exactly.
    pub issuer: String,
    /// Where its public keys are (a JSON Web Key Set); or `discovery`.
    pub jwks_url: Option<String>,
    /// Read `jwks_uri` from `{issuer}/.well-known/openid-configuration` (whose `issuer` must
    /// be this one).
    #[serde(default)]
    pub discovery: bool,
    /// The `aud` its tokens must contain (required).
    pub audience: Option<String>,
    /// The signature algorithms accepted (default RS256, ES256, EdDSA).
    #[serde(default = "default_workload_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// How long fetched keys are used before the key set is fetched again.
    #[serde(default = "default_jwks_cache")]
    pub jwks_cache_seconds: u64,
    /// A token signed by an unknown key (`kid`) makes the key set be fetched again, at most
    /// once per this many seconds; a failed fetch is retried no more often either.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// While the key set cannot be fetched, the keys fetched last keep verifying for this
    /// long after that fetch; then the issuer's tokens are refused.
    #[serde(default = "default_jwks_max_stale")]
    pub jwks_max_stale_seconds: u64,
    /// The key set may be on a private network address (an in-cluster Kubernetes API server).
    #[serde(default)]
    pub private_network: bool,
    /// Which tokens map to which service account: the first matching rule wins; a token that
    /// matches none is refused.
    #[serde(default)]
    pub rules: Vec<TrustedIssuerRule>,
}

/// One `[[trusted_issuers.rules]]`: the tokens it matches act as `account`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerRule {
    /// A pattern of the token's `sub`: `*` matches any run of characters.
    pub subject: String,
    /// The service account the token acts as (its role and scope).
    pub account: String,
    /// Claims that must all be equal to these values (`repository = "acme/jobs"`); a nested
    /// claim is named by its dotted path (`"kubernetes.io.namespace"`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

fn default_workload_algorithms() -> Vec<String> {
    DEFAULT_WORKLOAD_ALGORITHMS
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn default_leeway() -> u64 {
    60
}

fn default_jwks_cache() -> u64 {
    300
}

fn default_jwks_min_refetch() -> u64 {
    10
}

fn default_jwks_max_stale() -> u64 {
    86_400
}

impl TrustedIssuerSpec {
    /// Every problem of the entry, each as one sentence (`loopback`: `allow_insecure_loopback`).
    pub fn problems(&self, loopback: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &self.issuer;
        let url_problem = |what: &str, url: &str| -> Option<String> {
            let Ok(parsed) = oauth2::url::Url::parse(url) else {
                return Some(format!("{what} {url} is not a URL"));
            };
            let on_loopback = matches!(
                parsed.host(),
                Some(oauth2::url::Host::Ipv4(ip)) if ip.is_loopback()
            ) || matches!(
                parsed.host(),
                Some(oauth2::url::Host::Ipv6(ip)) if ip.is_loopback()
            ) || parsed.host_str() == Some("localhost");
            match parsed.scheme() {
                "https" => None,
                "http" if loopback && on_loopback => None,
                _ => Some(format!(
                    "{what} {url} must be an https URL (http only on loopback with allow_insecure_loopback)"
                )),
            }
        };
        problems.extend(url_problem("issuer", &self.issuer));
        match (&self.jwks_url, self.discovery) {
            (Some(url), false) => problems.extend(url_problem("jwks_url", url)),
            (None, true) => {}
            (Some(_), true) => problems.push("set jwks_url or discovery = true, not both".into()),
            (None, false) => problems.push("jwks_url or discovery = true is required".into()),
        }
        if self.audience.as_deref().is_none_or(|a| a.trim().is_empty()) {
            problems.push("audience is required (the aud its tokens are issued for)".into());
        }
        if self.algorithms.is_empty() {
            problems.push("algorithms must name at least one algorithm".into());
        }
        for alg in &self.algorithms {
            if !WORKLOAD_ALGORITHMS.contains(&alg.as_str()) {
                problems.push(format!(
                    "algorithm {alg} is not accepted (one of {}; never none or an HMAC algorithm)",
                    WORKLOAD_ALGORITHMS.join(", ")
                ));
            }
        }
        if self.leeway_seconds > 3600 {
            problems.push("leeway_seconds must be at most 3600".into());
        }
        if self.rules.is_empty() {
            problems.push("no [[trusted_issuers.rules]]: every token would be refused".into());
        }
        for (n, rule) in self.rules.iter().enumerate() {
            if rule.subject.is_empty() {
                problems.push(format!("rule #{}: subject must not be empty", n + 1));
            }
            if !crate::domain::is_account_name(&rule.account) {
                problems.push(format!(
                    "rule #{}: account '{}' is not a service account name (1 to 64 letters, digits, '-', '_' or '.')",
                    n + 1,
                    rule.account
                ));
            }
            if rule.claims.keys().any(|k| k.is_empty()) {
                problems.push(format!("rule #{}: a claim name is empty", n + 1));
            }
        }
        problems
            .into_iter()
            .map(|p| format!("[[trusted_issuers]] {name}: {p}"))
            .collect()
    }
}

/// Settings of the background refresher (a view of the `refresh*` keys of [`Config`]).
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
    /// `health_check_interval_seconds` (0: no health checks).
    pub health_check_interval_seconds: i64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The configuration: the file format, and what the code reads. Every key is optional.
/// Keys ending in `_seconds` are read into `Duration`s where the code wants one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// Base URL users reach the service at (used for links and redirect URIs).
    pub public_url: Option<String>,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB` (its password never printed).
    pub database_url: DatabaseUrl,
    /// The key file: one base64 AES-256 key per line, the last one encrypts.
    pub encryption_key_file: PathBuf,
    /// The key file's content, instead of the file.
    #[serde(serialize_with = "redacted")]
    pub encryption_key: Option<Secret>,
    /// A token is refreshed when it expires within this many seconds.
    pub refresh_margin_seconds: i64,
    /// How long a decrypted token may be served from memory before the store is read again.
    #[serde(rename = "cache_ttl_seconds", with = "seconds")]
    pub cache_ttl: Duration,
    /// Connections the token cache holds at most (the least useful are evicted beyond).
    pub cache_max_entries: u64,
    /// PostgreSQL: how often a replica checks that its change listener still hears the
    /// database; after three silent periods it reads through until the listener is back.
    #[serde(rename = "cache_listener_heartbeat_seconds", with = "seconds")]
    pub cache_listener_heartbeat: Duration,
    /// No request waits longer than this.
    #[serde(rename = "request_timeout_seconds", with = "seconds")]
    pub request_timeout: Duration,
    /// Timeout of one call to a provider.
    #[serde(rename = "provider_timeout_seconds", with = "seconds")]
    pub provider_timeout: Duration,
    pub log_format: LogFormat,
    /// Where a connect link may send the tenant back after the signup (URL prefixes).
    pub allowed_return_urls: Vec<String>,
    /// Run the background refresher (in every replica), which keeps tokens fresh ahead of the jobs.
    pub refresher_enabled: bool,
    /// The refresher refreshes connections expiring within this many seconds.
    pub refresh_window_seconds: i64,
    /// The refresher refreshes connections with a refresh token not refreshed for this long
    /// (keep-alive, for providers whose refresh tokens expire when unused).
    pub refresh_keepalive_seconds: i64,
    /// How often a replica's refresher looks for due work (with jitter).
    #[serde(rename = "refresher_interval_seconds", with = "seconds")]
    pub refresher_interval: Duration,
    /// Refreshes the refresher runs at once in one replica.
    pub refresher_concurrency: usize,
    /// A `connection.reauthorization_due` webhook (once per connection and deadline) when a
    /// refresh token will expire within this many days.
    pub reauthorization_warning_days: i64,
    /// Check each connection's grant with the connector type's identity request
    /// (`userinfo_url`) at most once per this many seconds, on the background refresher's
    /// passes; 0 (the default) turns the health checks off.
    pub health_check_interval_seconds: i64,
    /// After a failed refresh, the connection is left alone this long (doubling with each
    /// further failure, up to an hour, and at least the provider's Retry-After).
    pub refresh_backoff_seconds: i64,
    /// Accept plain-http provider URLs on loopback hosts (tests, local development only).
    pub allow_insecure_loopback: bool,
    /// Requests per second each service account may make (bursts of twice that); 0 = no limit.
    pub rate_limit_per_second: u32,
    /// How long a client may take to send its request headers, and then its body.
    #[serde(rename = "slow_client_timeout_seconds", with = "seconds")]
    pub slow_client_timeout: Duration,
    /// How long a client may take to send its whole request body (counted from its headers).
    #[serde(rename = "body_timeout_seconds", with = "seconds")]
    pub body_timeout: Duration,
    /// Connections served at once; further ones are answered 503 and closed. 0 = no limit.
    pub max_connections: usize,
    /// Audit events older than this many days are deleted (0: kept for ever).
    pub audit_retention_days: u64,
    /// Identical token reads (same account, app, connector type, outcome, client address)
    /// within this window are written as one audit row with their count (0: one row each).
    #[serde(rename = "audit_coalesce_seconds", with = "seconds")]
    pub audit_coalesce: Duration,
    /// Delivered webhooks older than this many days are deleted (0: kept for ever).
    pub webhook_retention_days: u64,
    /// The first retry of a failed webhook delivery waits this long, doubling per attempt up to
    /// an hour (20 attempts at most); 0 retries at once.
    pub webhook_retry_seconds: u64,
    /// How often old audit events and webhook deliveries are pruned.
    #[serde(rename = "prune_interval_seconds", with = "seconds")]
    pub prune_interval: Duration,
    /// Lifetime of the JWTs of the client-credentials grant.
    pub jwt_lifetime_seconds: i64,
    /// How long a rotated-out signing key keeps verifying.
    pub jwt_key_overlap_seconds: i64,
    /// The `aud` of the JWTs.
    pub jwt_audience: String,
    /// How often a process re-reads the JWT signing keys (another replica may have rotated
    /// them).
    #[serde(rename = "jwt_keys_cache_seconds", with = "seconds")]
    pub jwt_keys_cache: Duration,
    /// How long the in-memory list of service accounts is trusted; a change made by another
    /// process (a CLI revoke, another replica) takes effect within this time.
    #[serde(rename = "accounts_cache_seconds", with = "seconds")]
    pub accounts_cache: Duration,
    /// How long a refresh holds its connection's lease; a refresh (waiting for a provider-call
    /// slot, then the provider call) is cut a few seconds before it ends. At most a day.
    pub refresh_lease_seconds: i64,
    /// Provider calls for refreshes running at once in this process, all hosts together.
    pub max_concurrent_refreshes: usize,
    /// Provider calls for refreshes running at once in this process toward one token host.
    pub max_concurrent_refreshes_per_host: usize,
    /// After SIGTERM, how long requests and refreshes in flight may take to finish.
    #[serde(rename = "shutdown_grace_seconds", with = "seconds")]
    pub shutdown_grace: Duration,
    /// Lifetime of a session of the /admin page (it also ends at sign-out, and when its
    /// account expires or is revoked).
    pub admin_session_seconds: i64,
    /// The proxy mode: the largest request body passed through, and the most bytes of an
    /// answer streamed back (a longer answer is cut).
    pub proxy_max_body_bytes: u64,
    /// The proxy mode: the longest wait for the provider's next bytes (an export may stream
    /// for long; this bounds a stalled one).
    #[serde(rename = "proxy_timeout_seconds", with = "seconds")]
    pub proxy_timeout: Duration,
    /// Mount the built-in sandbox OAuth provider under /sandbox/ (demo, local development).
    pub sandbox: bool,
    /// The OpenTelemetry collector's OTLP/HTTP base URL (`http://collector:4318`): when set,
    /// `serve` sends its traces to `{otlp_endpoint}/v1/traces` (protobuf). Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported traces.
    pub otlp_service_name: String,
    /// How long a finished span waits in the exporter's batch before it is sent, in
    /// milliseconds.
    pub otlp_batch_delay_millis: u64,
    /// Endpoints that receive connection events (file only).
    #[serde(skip_serializing)]
    pub webhooks: Vec<WebhookSpec>,
    /// Connector types from the config file: custom entries or overrides of catalog entries
    /// (file only).
    #[serde(skip_serializing)]
    pub connector_types: BTreeMap<String, ConnectorTypeSpec>,
    /// Issuers of workload identities whose JWTs act as service accounts (file only).
    #[serde(skip_serializing)]
    pub trusted_issuers: Vec<TrustedIssuerSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            public_url: None,
            database_url: DEFAULT_DATABASE_URL.into(),
            encryption_key_file: PathBuf::from(DEFAULT_KEY_FILE),
            encryption_key: None,
            refresh_margin_seconds: 300,
            cache_ttl: Duration::from_secs(10),
            cache_max_entries: 20_000,
            cache_listener_heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            provider_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            allowed_return_urls: Vec::new(),
            refresher_enabled: true,
            refresh_window_seconds: 600,
            refresh_keepalive_seconds: 86_400,
            refresher_interval: Duration::from_secs(30),
            refresher_concurrency: 8,
            reauthorization_warning_days: 7,
            health_check_interval_seconds: 0,
            refresh_backoff_seconds: 15,
            allow_insecure_loopback: false,
            rate_limit_per_second: 1000,
            slow_client_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            max_connections: 1000,
            audit_retention_days: 365,
            audit_coalesce: Duration::from_secs(10),
            webhook_retention_days: 30,
            webhook_retry_seconds: 1,
            prune_interval: Duration::from_secs(3600),
            jwt_lifetime_seconds: 900,
            jwt_key_overlap_seconds: 1800,
            jwt_keys_cache: Duration::from_secs(5),
            accounts_cache: Duration::from_secs(2),
            jwt_audience: "tokenbox".into(),
            refresh_lease_seconds: 60,
            max_concurrent_refreshes: 64,
            max_concurrent_refreshes_per_host: 16,
            shutdown_grace: Duration::from_secs(30),
            admin_session_seconds: 43_200,
            proxy_max_body_bytes: 1 << 30,
            proxy_timeout: Duration::from_secs(60),
            sandbox: false,
            otlp_endpoint: None,
            otlp_service_name: "tokenbox".into(),
            otlp_batch_delay_millis: 5000,
            webhooks: Vec::new(),
            connector_types: BTreeMap::new(),
            trusted_issuers: Vec::new(),
        }
    }
}

/// A `Duration` written as whole seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

fn redacted<S: serde::Serializer>(
    value: &Option<Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_ref().map(|_| "[redacted]").serialize(serializer)
}

impl Config {
    /// Loads the file (when given) and applies the environment. Returns the warnings to log
    /// once logging is set up (none at present: an unknown variable is an error).
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Self, Vec<String>)> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                parse_file(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TOKENBOX_"))
            .collect();
        Ok((Self::resolve(file, &env)?, Vec::new()))
    }

    /// Parses configuration text (for tests and `load`).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Self::resolve(parse_file(text)?, &[])
    }

    /// The file's table with the environment laid over it, deserialized and checked.
    fn resolve(mut table: toml::Table, env: &[(String, String)]) -> anyhow::Result<Self> {
        let named = named_variables(&table);
        table.extend(env_overlay(env, &named)?);
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("{}", e.message().trim()))?;
        config.refresh_lease_seconds = config.refresh_lease_seconds.min(86_400);
        config.validate()?;
        Ok(config)
    }

    /// The refresher's settings.
    pub fn refresher(&self) -> RefresherConfig {
        RefresherConfig {
            enabled: self.refresher_enabled,
            window_seconds: self.refresh_window_seconds,
            keepalive_seconds: self.refresh_keepalive_seconds,
            interval: self.refresher_interval,
            concurrency: self.refresher_concurrency,
            backoff_base_seconds: self.refresh_backoff_seconds,
            health_check_interval_seconds: self.health_check_interval_seconds,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(anyhow!(problem)),
            None => Ok(()),
        }
    }

    /// Checks a configuration file and the environment as `load` does, but collects every
    /// problem instead of stopping at the first (`tokenbox config check`): the file's syntax,
    /// each unknown or ill-typed key, each `TOKENBOX_*` variable (and `*_FILE`), each
    /// `[[webhooks]]` and `[connector_types.*]` entry's fields, then the values' ranges. The
    /// configuration is returned when the keys left after dropping the bad ones resolve.
    pub fn check(path: Option<&Path>) -> (Option<Self>, Vec<String>) {
        let text = match path {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) => {
                    return (
                        None,
                        vec![format!("cannot read config file {}: {e}", path.display())],
                    )
                }
            },
            None => String::new(),
        };
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TOKENBOX_"))
            .collect();
        Self::check_text(&text, &env)
    }

    fn check_text(text: &str, env: &[(String, String)]) -> (Option<Self>, Vec<String>) {
        let message = |e: toml::de::Error| e.message().trim().to_string();
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(table) => table,
            Err(e) => {
                return (
                    None,
                    vec![format!("the file is not valid TOML: {}", message(e))],
                )
            }
        };
        let mut problems = Vec::new();
        let known = keys();
        for (key, value) in table.clone() {
            let bad = match key.as_str() {
                "webhooks" => {
                    let items = value.as_array().cloned().unwrap_or_default();
                    let mut bad = !value.is_array();
                    for (n, item) in items.into_iter().enumerate() {
                        if let Err(e) = item.try_into::<WebhookSpec>() {
                            problems.push(format!("[[webhooks]] #{}: {}", n + 1, message(e)));
                            bad = true;
                        }
                    }
                    bad
                }
                "trusted_issuers" => {
                    let items = value.as_array().cloned().unwrap_or_default();
                    let mut bad = !value.is_array();
                    for (n, item) in items.into_iter().enumerate() {
                        if let Err(e) = item.try_into::<TrustedIssuerSpec>() {
                            problems.push(format!(
                                "[[trusted_issuers]] #{}: {}",
                                n + 1,
                                message(e)
                            ));
                            bad = true;
                        }
                    }
                    bad
                }
                "connector_types" => {
                    let mut entries = value.as_table().cloned().unwrap_or_default();
                    for (name, spec) in entries.clone() {
                        if let Err(e) = spec.try_into::<ConnectorTypeSpec>() {
                            problems.push(format!("[connector_types.{name}]: {}", message(e)));
                            entries.remove(&name);
                        }
                    }
                    table.insert(key.clone(), toml::Value::Table(entries));
                    false
                }
                _ if !known.contains_key(&key) => {
                    problems.push(format!("unknown key `{key}`"));
                    true
                }
                _ => toml::Table::from_iter([(key.clone(), value)])
                    .try_into::<Config>()
                    .map_err(|e| problems.push(format!("{key}: {}", message(e))))
                    .is_err(),
            };
            if bad {
                table.remove(&key);
            }
        }
        if problems.iter().any(|p| p.starts_with("[[webhooks]]")) {
            problems.push("[[webhooks]]: skipped while an entry is invalid".into());
        }
        if problems
            .iter()
            .any(|p| p.starts_with("[[trusted_issuers]]"))
        {
            problems.push("[[trusted_issuers]]: skipped while an entry is invalid".into());
        }
        let named = named_variables(&table);
        for pair in env {
            match env_overlay(std::slice::from_ref(pair), &named) {
                Ok(overlay) => table.extend(overlay),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        match table.try_into::<Config>() {
            Ok(mut config) => {
                config.refresh_lease_seconds = config.refresh_lease_seconds.min(86_400);
                problems.extend(config.problems());
                (Some(config), problems)
            }
            Err(e) => {
                problems.push(message(e));
                (None, problems)
            }
        }
    }

    /// Every out-of-range value, each as one sentence.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        macro_rules! bail {
            ($($arg:tt)*) => {
                problems.push(format!($($arg)*))
            };
        }
        if self.health_check_interval_seconds < 0 {
            bail!("health_check_interval_seconds must not be negative");
        }
        if !(0..=3650).contains(&self.reauthorization_warning_days) {
            bail!("reauthorization_warning_days must be between 0 and 3650");
        }
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
            || self.cache_listener_heartbeat.is_zero()
        {
            bail!("request_timeout_seconds, provider_timeout_seconds, slow_client_timeout_seconds, body_timeout_seconds, prune_interval_seconds and cache_listener_heartbeat_seconds must be positive");
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
        if self.refresher_interval.is_zero()
            || self.refresher_concurrency == 0
            || self.refresh_window_seconds < 0
        {
            bail!("refresher_interval_seconds and refresher_concurrency must be positive, refresh_window_seconds not negative");
        }
        if self.refresh_keepalive_seconds <= 0 || self.refresh_backoff_seconds < 0 {
            bail!("refresh_keepalive_seconds must be positive and refresh_backoff_seconds not negative");
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
        if let Some(url) = &self.otlp_endpoint {
            if let Err(problem) = check_otlp_endpoint(url) {
                bail!("otlp_endpoint {problem}");
            }
        }
        if self.otlp_service_name.trim().is_empty() {
            bail!("otlp_service_name must not be empty");
        }
        if !(1..=600_000).contains(&self.otlp_batch_delay_millis) {
            bail!("otlp_batch_delay_millis must be between 1 and 600000 (10 minutes)");
        }
        for (n, issuer) in self.trusted_issuers.iter().enumerate() {
            problems.extend(issuer.problems(self.allow_insecure_loopback));
            if self.trusted_issuers[..n]
                .iter()
                .any(|other| other.issuer == issuer.issuer)
            {
                bail!("[[trusted_issuers]] {} is listed twice", issuer.issuer);
            }
        }
        problems
    }

    /// The base URL of the service, without a trailing slash.
    pub fn public_base_url(&self, bound: std::net::SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

/// An OTLP/HTTP base URL: http(s), a host, nothing that is not sent as it is (a query, a
/// fragment) and no credentials (a collector's token goes in `OTEL_EXPORTER_OTLP_HEADERS`).
fn check_otlp_endpoint(text: &str) -> Result<(), &'static str> {
    let url = oauth2::url::Url::parse(text).map_err(|_| "is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment (it is a base URL: /v1/traces is added)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials (set OTEL_EXPORTER_OTLP_HEADERS instead)");
    }
    Ok(())
}

/// The file's text as a table, after checking that it deserializes on its own (so that its
/// errors, an unknown key among them, are reported as the file's).
fn parse_file(text: &str) -> anyhow::Result<toml::Table> {
    let message = |e: toml::de::Error| anyhow!("{}", e.message().trim());
    toml::from_str::<Config>(text).map_err(message)?;
    toml::from_str(text).map_err(message)
}

/// The keys settable by a variable, each with its default (whose type says how to read the
/// variable), from the serialized defaults: every key but the file-only tables.
fn keys() -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(keys)) => keys,
        _ => unreachable!("Config serializes to a map"),
    }
}

/// `TOKENBOX_<KEY>` and `TOKENBOX_<KEY>_FILE` as TOML values keyed by their config key. Each is
/// checked on its own, so that an error names the variable.
fn env_overlay(env: &[(String, String)], accepted: &[String]) -> anyhow::Result<toml::Table> {
    let keys = keys();
    let variable = |key: &str| format!("TOKENBOX_{}", key.to_ascii_uppercase());
    let mut overlay = toml::Table::new();
    for (name, raw) in env {
        let (key, text) = if let Some(key) = keys.keys().find(|k| variable(k) == *name) {
            (key.as_str(), raw.clone())
        } else if let Some(key) = SECRET_KEYS
            .iter()
            .find(|k| format!("{}_FILE", variable(k)) == *name)
        {
            let text = std::fs::read_to_string(raw)
                .with_context(|| format!("{name}: cannot read the file {raw}"))?;
            (*key, text.trim_end_matches(['\r', '\n']).to_string())
        } else if OTHER_ENV.contains(&name.as_str()) || accepted.contains(name) {
            continue;
        } else if name.starts_with("TOKENBOX_") {
            bail!(
                "unknown environment variable {name} (configuration variables: {}; see the \
                 README's configuration reference)",
                keys.keys()
                    .map(|k| variable(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        } else {
            continue;
        };
        let value = env_value(name, &text, &keys[key])?;
        toml::Table::from_iter([(key.to_string(), value.clone())])
            .try_into::<Config>()
            .map_err(|e| anyhow!("{name}: {}", e.message().trim()))?;
        if overlay.insert(key.to_string(), value).is_some() {
            bail!("{name}: {key} is set by two variables; keep one");
        }
    }
    Ok(overlay)
}

/// A variable's text as a TOML value of the type of the key's default.
fn env_value(name: &str, text: &str, default: &serde_json::Value) -> anyhow::Result<toml::Value> {
    use serde_json::Value;
    Ok(match default {
        Value::Bool(_) => match text.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => bail!("{name} must be true or false"),
        },
        Value::Number(_) => toml::Value::Integer(
            text.trim()
                .parse()
                .with_context(|| format!("{name} must be a whole number"))?,
        ),
        Value::Array(_) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    })
}

/// The variables the file names for secrets (`secret_env` of `[[webhooks]]`, `client_secret_env`
/// of connector types: any `*_env` key), accepted even when they start with `TOKENBOX_`.
fn named_variables(table: &toml::Table) -> Vec<String> {
    let mut names = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::String(name) if key.ends_with("_env") => names.push(name.clone()),
            toml::Value::Table(inner) => names.extend(named_variables(inner)),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        names.extend(named_variables(inner));
                    }
                }
            }
            _ => {}
        }
    }
    names
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

    fn resolve(file: &str, pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::resolve(parse_file(file)?, &env(pairs))
    }

    #[test]
    fn defaults_need_no_file() {
        let c = resolve("", &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(
            c.database_url.as_str(),
            "sqlite://tokenbox-data/tokenbox.db"
        );
        assert_eq!(c.refresh_margin_seconds, 300);
        assert_eq!(
            c.refresher(),
            RefresherConfig {
                enabled: true,
                window_seconds: 600,
                keepalive_seconds: 86_400,
                interval: Duration::from_secs(30),
                concurrency: 8,
                backoff_base_seconds: 15,
                health_check_interval_seconds: 0,
            }
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = resolve(
            "listen = \"127.0.0.1:1\"\nrefresh_margin_seconds = 60\n",
            &[("TOKENBOX_LISTEN", "127.0.0.1:2"), ("TOKENBOX_TOKEN", "x")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.refresh_margin_seconds, 60);
    }

    #[test]
    fn unknown_variables_are_refused_with_their_name() {
        let err = resolve("", &[("TOKENBOX_LISTN", "typo")]).unwrap_err();
        assert!(format!("{err:#}").contains("TOKENBOX_LISTN"), "{err:#}");
        // The CLI's, the clients' and the harnesses' variables are not configuration keys.
        for name in OTHER_ENV {
            resolve("", &[(name, "x")]).unwrap();
        }
        // Nor are the variables the file names for secrets.
        let file = "[[webhooks]]\nurl = \"https://h.example.com/\"\nsecret_env = \"TOKENBOX_WEBHOOK_SECRET\"\n\
                    [connector_types.acme]\nclient_secret_env = \"TOKENBOX_ACME_SECRET\"\n";
        resolve(
            file,
            &[
                ("TOKENBOX_WEBHOOK_SECRET", "s"),
                ("TOKENBOX_ACME_SECRET", "s"),
            ],
        )
        .unwrap();
        // A file-only table has no variable.
        let err = resolve("", &[("TOKENBOX_WEBHOOKS", "x")]).unwrap_err();
        assert!(format!("{err:#}").contains("TOKENBOX_WEBHOOKS"), "{err:#}");
    }

    #[test]
    fn a_bad_value_is_refused_with_its_variable() {
        for (name, value) in [
            ("TOKENBOX_LOG_FORMAT", "yaml"),
            ("TOKENBOX_REFRESHER_ENABLED", "maybe"),
            ("TOKENBOX_CACHE_TTL_SECONDS", "ten"),
            ("TOKENBOX_CACHE_TTL_SECONDS", "-1"),
            ("TOKENBOX_RATE_LIMIT_PER_SECOND", "99999999999"),
        ] {
            let err = resolve("", &[(name, value)]).unwrap_err();
            assert!(format!("{err:#}").contains(name), "{name}={value}: {err:#}");
        }
        let c = resolve("", &[("TOKENBOX_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn every_documented_variable_is_read() {
        let c = resolve(
            "",
            &[
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
            ],
        )
        .unwrap();
        assert_eq!(c.rate_limit_per_second, 7);
        assert_eq!(c.slow_client_timeout, Duration::from_secs(3));
        assert_eq!(c.jwt_lifetime_seconds, 60);
        assert_eq!(c.jwt_key_overlap_seconds, 120);
        assert_eq!(c.refresher().backoff_base_seconds, 2);
        assert_eq!(c.body_timeout, Duration::from_secs(4));
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.audit_retention_days, 7);
        assert_eq!(c.webhook_retention_days, 0);
        assert_eq!(c.prune_interval, Duration::from_secs(60));
    }

    /// Every key (but the file-only tables) is set by its `TOKENBOX_<KEY>` variable, and by it
    /// alone.
    #[test]
    fn every_key_is_settable_by_its_variable() {
        let defaults = keys();
        assert!(defaults.len() >= 33, "{:?}", defaults.keys());
        for (key, default) in &defaults {
            let name = format!("TOKENBOX_{}", key.to_ascii_uppercase());
            let url = "http://127.0.0.1:9/sample";
            let (text, expected) = match default {
                serde_json::Value::Bool(b) => ((!b).to_string(), serde_json::json!(!b)),
                serde_json::Value::Number(n) => {
                    let n = n.as_i64().unwrap() + 1;
                    (n.to_string(), serde_json::json!(n))
                }
                serde_json::Value::Array(_) => (
                    format!("{url}, {url}2"),
                    serde_json::json!([url, format!("{url}2")]),
                ),
                _ if key == "log_format" => ("json".into(), serde_json::json!("json")),
                _ => (url.into(), serde_json::json!(url)),
            };
            let config = resolve("", &[(&name, &text)]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let mut set = match serde_json::to_value(&config).unwrap() {
                serde_json::Value::Object(map) => map,
                _ => unreachable!(),
            };
            let value = set.remove(key).unwrap();
            if value == "[redacted]" {
                assert_eq!(key, "encryption_key");
                assert_eq!(config.encryption_key.as_ref().unwrap().expose(), url);
            } else {
                assert_eq!(value, expected, "{name}={text}");
            }
            let mut others = defaults.clone();
            others.remove(key);
            assert_eq!(set, others, "{name} set only {key}");
        }
    }

    /// Every key (but the file-only tables) has a row in the README's configuration reference
    /// naming its `TOKENBOX_<KEY>` variable, and every key documented there exists.
    #[test]
    fn every_key_and_its_variable_is_in_the_readme() {
        let defaults = keys();
        let readme = include_str!("../README.md");
        let table = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("a Configuration section")
            .split("| key | environment | default | meaning |\n")
            .nth(1)
            .expect("the configuration reference table");
        let rows: Vec<(&str, &str)> = table
            .lines()
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cells = l.split('|').skip(1).map(str::trim);
                Some((cells.next()?, cells.next()?))
            })
            .collect();
        for key in defaults.keys() {
            let name = format!("`TOKENBOX_{}`", key.to_ascii_uppercase());
            let row = rows.iter().find(|(k, _)| *k == format!("`{key}`"));
            let (_, variables) = row.unwrap_or_else(|| panic!("README: no row for `{key}`"));
            assert!(
                variables.contains(&name),
                "README: the row of `{key}` does not name {name}"
            );
        }
        // And no row documents a key that does not exist.
        for (key, _) in &rows {
            if let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) {
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    assert!(
                        defaults.contains_key(key),
                        "README documents an unknown key `{key}`"
                    );
                }
            }
        }
    }

    #[test]
    fn a_secret_key_can_be_read_from_a_file() {
        let path = std::env::temp_dir().join(format!("tokenbox-db-url-{}", std::process::id()));
        std::fs::write(&path, "postgres://u:pa55word@127.0.0.1/db\n").unwrap();
        let file = path.to_str().unwrap();
        let c = resolve("", &[("TOKENBOX_DATABASE_URL_FILE", file)]).unwrap();
        assert_eq!(
            c.database_url.as_str(),
            "postgres://u:pa55word@127.0.0.1/db"
        );
        let err = resolve(
            "",
            &[
                ("TOKENBOX_DATABASE_URL_FILE", file),
                ("TOKENBOX_DATABASE_URL", "sqlite://x"),
            ],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("database_url"), "{err:#}");
        std::fs::remove_file(&path).unwrap();
        let err = resolve("", &[("TOKENBOX_DATABASE_URL_FILE", file)]).unwrap_err();
        assert!(
            format!("{err:#}").contains("TOKENBOX_DATABASE_URL_FILE"),
            "{err:#}"
        );
        // The key file keeps its own variable: a path, read (or created) when the store opens.
        let c = resolve("", &[("TOKENBOX_ENCRYPTION_KEY_FILE", file)]).unwrap();
        assert_eq!(c.encryption_key_file, path);
        assert!(c.encryption_key.is_none());
    }

    #[test]
    fn the_lease_is_at_most_a_day() {
        let c = resolve("refresh_lease_seconds = 999999", &[]).unwrap();
        assert_eq!(c.refresh_lease_seconds, 86_400);
        let c = resolve("", &[("TOKENBOX_REFRESH_LEASE_SECONDS", "999999")]).unwrap();
        assert_eq!(c.refresh_lease_seconds, 86_400);
    }

    #[test]
    fn the_otlp_endpoint_is_an_http_base_url_without_credentials() {
        for good in [
            "http://127.0.0.1:4318",
            "https://collector.example.com/otlp/",
        ] {
            let c = resolve(&format!("otlp_endpoint = \"{good}\""), &[]).unwrap();
            assert_eq!(c.otlp_endpoint.as_deref(), Some(good));
        }
        assert!(
            resolve("", &[]).unwrap().otlp_endpoint.is_none(),
            "off by default"
        );
        for (bad, why) in [
            ("collector:4318", "http:// or https://"),
            ("http://", "not a URL"),
            ("http://c.example.com:4318/?key=1", "query"),
            ("http://c.example.com:4318/#x", "fragment"),
            ("http://user:pa55@c.example.com:4318", "credentials"),
        ] {
            let err = resolve(&format!("otlp_endpoint = \"{bad}\""), &[]).unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains("otlp_endpoint") && err.contains(why),
                "{bad}: {err}"
            );
            assert!(!err.contains("pa55"), "{err}");
        }
        // `config check` lists each problem of the traces' keys with the others.
        let (_, problems) = Config::check_text(
            "otlp_endpoint = \"nope\"\notlp_service_name = \" \"\notlp_batch_delay_millis = 0\n",
            &[],
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn trusted_issuers_are_read_with_their_rules_and_checked() {
        let c = resolve(
            r#"
[[trusted_issuers]]
issuer = "https://issuer.example"
jwks_url = "https://issuer.example/jwks"
audience = "tokenbox"
[[trusted_issuers.rules]]
subject = "system:serviceaccount:extract:*"
account = "extraction"
claims = { repository = "acme/jobs", "kubernetes.io.namespace" = "extract" }

[[trusted_issuers]]
issuer = "https://token.actions.githubusercontent.com"
discovery = true
audience = "tokenbox"
algorithms = ["RS256"]
[[trusted_issuers.rules]]
subject = "repo:acme/jobs:*"
account = "gha-jobs"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(c.trusted_issuers.len(), 2);
        let first = &c.trusted_issuers[0];
        assert_eq!(first.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(first.leeway_seconds, 60);
        assert_eq!(first.rules[0].claims["kubernetes.io.namespace"], "extract");
        assert!(c.trusted_issuers[1].discovery);

        let problems = |entry: &str| -> String {
            match resolve(&format!("[[trusted_issuers]]\n{entry}"), &[]) {
                Ok(_) => String::new(),
                Err(e) => format!("{e:#}"),
            }
        };
        let rule = "[[trusted_issuers.rules]]\nsubject = \"*\"\naccount = \"extraction\"\n";
        let good = "issuer = \"https://i.example\"\njwks_url = \"https://i.example/k\"\naudience = \"tokenbox\"\n";
        assert_eq!(problems(&format!("{good}{rule}")), "");
        for (entry, expected) in [
            (
                "issuer = \"https://i.example\"\njwks_url = \"https://i.example/k\"\n".to_string() + rule,
                "audience is required",
            ),
            (format!("{good}algorithms = [\"HS256\"]\n{rule}"), "algorithm HS256"),
            (format!("{good}algorithms = [\"none\"]\n{rule}"), "algorithm none"),
            (format!("{good}discovery = true\n{rule}"), "not both"),
            (
                "issuer = \"https://i.example\"\naudience = \"a\"\n".to_string() + rule,
                "jwks_url or discovery",
            ),
            (
                "issuer = \"http://i.example\"\ndiscovery = true\naudience = \"a\"\n".to_string() + rule,
                "must be an https URL",
            ),
            (good.to_string(), "no [[trusted_issuers.rules]]"),
            (
                format!("{good}[[trusted_issuers.rules]]\nsubject = \"*\"\naccount = \"no such/name\"\n"),
                "is not a service account name",
            ),
            (format!("{good}jwks_ur = \"x\"\n{rule}"), "jwks_ur"),
        ] {
            let found = problems(&entry);
            assert!(found.contains(expected), "{entry}: {found}");
        }
        // Plain http on loopback only with allow_insecure_loopback.
        let local = "issuer = \"http://127.0.0.1:9\"\ndiscovery = true\naudience = \"a\"\n";
        assert!(problems(&format!("{local}{rule}")).contains("https"));
        let c = resolve(
            &format!("allow_insecure_loopback = true\n[[trusted_issuers]]\n{local}{rule}"),
            &[],
        );
        assert!(c.is_ok(), "{c:?}");
        // Listed twice.
        let twice = format!("[[trusted_issuers]]\n{good}{rule}[[trusted_issuers]]\n{good}{rule}");
        let err = resolve(&twice, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("listed twice"), "{err:#}");
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

    #[test]
    fn debug_shows_every_key_and_hides_the_secrets() {
        let c = resolve(
            "",
            &[
                ("TOKENBOX_ENCRYPTION_KEY", "k3y-material"),
                (
                    "TOKENBOX_DATABASE_URL",
                    "postgres://u:pa55word@127.0.0.1/db",
                ),
            ],
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("pa55word") && !debug.contains("k3y-material"),
            "{debug}"
        );
        for field in [
            "refresh_keepalive_seconds",
            "jwt_audience",
            "sandbox",
            "allow_insecure_loopback",
            "cache_ttl",
            "webhooks",
        ] {
            assert!(debug.contains(field), "{field} missing from {debug}");
        }
    }
}
