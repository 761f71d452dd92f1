//! The connector catalog (data compiled into the binary) and the per-type OAuth settings.

mod assertion;
pub mod identity;
mod netguard;
mod provider;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use crate::domain::Kind;
use crate::domain::{ConnectorTypeName, Metadata, TokenSet};
use crate::secret::Secret;

pub use assertion::RsaSigningKey;
pub use provider::{Provider, RefreshError};

const CATALOG: &str = include_str!("catalog.toml");

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with the url-encoded client id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RequestBody {
    #[default]
    Form,
    Json,
}

/// How a placeholder value is validated: it can never change the host part of a URL
/// beyond the characters a host label allows.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PlaceholderPattern {
    /// One DNS label: letters, digits and '-'.
    DnsLabel,
    /// A host name: DNS labels separated by dots.
    Hostname,
    /// A DNS label or a UUID (Microsoft tenants).
    DnsLabelOrUuid,
}

impl PlaceholderPattern {
    pub fn accepts(self, value: &str) -> bool {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        match self {
            Self::DnsLabel | Self::DnsLabelOrUuid => label(value),
            // A DNS host name, never an IP address in any form (see `netguard`).
            Self::Hostname => netguard::is_dns_hostname(value),
        }
    }

    /// What a value must look like, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::DnsLabel => "DNS label (letters, digits, '-')",
            Self::Hostname => "DNS host name (lowercase labels of letters, digits and '-', at least one dot, a top-level label starting with a letter; never an IP address)",
            Self::DnsLabelOrUuid => "DNS label or UUID",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlaceholderSpec {
    pub pattern: PlaceholderPattern,
    #[serde(default)]
    pub default: Option<String>,
}

/// A connector type as written in the catalog or in the config file. In the config file every
/// key is optional and overrides the catalog entry of the same name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorTypeSpec {
    /// `oauth2` (the default), `client_credentials`, `api_key`, `basic`.
    pub kind: Option<Kind>,
    pub display_name: Option<String>,
    /// Where the provider's API lives (may hold {placeholders}): served with the token.
    pub api_base_url: Option<String>,
    /// Fixed headers every API request carries (`Notion-Version`).
    pub api_headers: Option<BTreeMap<String, String>>,
    /// `api_key`: the header that carries the key (default `Authorization`).
    pub api_key_header: Option<String>,
    /// `api_key`: the query parameter that carries the key, instead of a header.
    pub api_key_query: Option<String>,
    /// `api_key`: what precedes the key in its header (`Bearer `, `Token token=`).
    pub api_key_prefix: Option<String>,
    /// `api_key`, `basic`: a GET with the credential that answers 2xx when it is valid.
    pub verify_url: Option<String>,
    /// The identity request: a GET with the access token that answers who the account is
    /// (OpenID Connect userinfo or the provider's "me" endpoint; id from `sub` or `id`).
    pub userinfo_url: Option<String>,
    /// The field of the identity answer that names the account's organisation (Slack's
    /// `https://slack.com/team_id`), when the provider has one.
    pub userinfo_organisation_field: Option<String>,
    /// Where the entry's facts come from (the provider's documentation).
    pub docs_url: Option<String>,
    /// `jwt_bearer`: the assertion's `aud` (default: the token URL).
    pub assertion_audience: Option<String>,
    /// `jwt_bearer`: how long an assertion is valid (default 3600, at most 3600; Salesforce
    /// wants at most 180).
    pub assertion_lifetime_seconds: Option<i64>,
    /// `github_app`: the GitHub App's id (the app JWT's `iss`).
    pub app_id: Option<String>,
    /// `github_app`, `jwt_bearer` with the operator's key (Salesforce): a PEM RSA private key
    /// file, or the environment variable that holds the PEM.
    pub private_key_file: Option<String>,
    pub private_key_env: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_env: Option<String>,
    /// Several secrets during a rotation, the newest last: the newest is used, the older ones
    /// are tried when the provider answers `invalid_client`.
    pub client_secrets: Option<Vec<Secret>>,
    pub scopes: Option<Vec<String>>,
    pub scope_separator: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub pkce: Option<bool>,
    pub authorization_params: Option<BTreeMap<String, String>>,
    pub token_params: Option<BTreeMap<String, String>>,
    pub token_headers: Option<BTreeMap<String, String>>,
    pub token_request_body: Option<RequestBody>,
    pub token_path: Option<String>,
    pub metadata_fields: Option<Vec<String>>,
    pub callback_params: Option<Vec<String>>,
    pub expires: Option<bool>,
    pub default_expires_in: Option<i64>,
    /// The refresh token's absolute lifetime from its issue (consent), when the provider sends
    /// no `refresh_token_expires_in`.
    pub refresh_token_lifetime_seconds: Option<i64>,
    /// The refresh token dies after this long unused; each refresh extends it.
    pub refresh_token_idle_seconds: Option<i64>,
    pub placeholders: Option<BTreeMap<String, PlaceholderSpec>>,
    /// Per placeholder, the host names its values may take: `*.example.com` (any name under
    /// it), `example.com` (that name) or `*` (any).
    pub placeholder_suffixes: Option<BTreeMap<String, Vec<String>>>,
    /// The provider lives in the operator's private network: its hosts may resolve to private
    /// addresses (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7).
    pub private_network: Option<bool>,
    /// Send the W3C trace context (`traceparent`, `tracestate`) with requests to the provider,
    /// when traces are exported (default `false`: a provider learns nothing of our traces).
    pub propagate_trace: Option<bool>,
    /// `api_key`, `basic`: the connect form's labels, instead of "API key", "Username",
    /// "Password".
    pub field_labels: Option<FieldLabels>,
    /// `api_key`, `basic`: a sentence on the connect form telling the tenant what to enter.
    pub help: Option<String>,
    /// `api_key`, `basic`: where the tenant finds the key (may hold {placeholders}).
    pub help_url: Option<String>,
}

/// The labels of the connect form's fields (`api_key` for the `api_key` kind, `username` and
/// `password` for `basic`); a field left out keeps its default label.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FieldLabels {
    pub api_key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The labels the connect form shows, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormLabels {
    pub api_key: String,
    pub username: String,
    pub password: String,
}

/// A resolved connector type: catalog entry and configuration merged.
#[derive(Debug)]
pub struct ConnectorType {
    pub name: ConnectorTypeName,
    pub kind: Kind,
    pub api_base_url: Option<String>,
    pub api_headers: BTreeMap<String, String>,
    /// `api_key`: the header carrying the key, unless `api_key_query` is set.
    pub api_key_header: String,
    pub api_key_query: Option<String>,
    pub api_key_prefix: String,
    pub verify_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub userinfo_organisation_field: Option<String>,
    pub docs_url: Option<String>,
    pub assertion_audience: Option<String>,
    pub assertion_lifetime: i64,
    pub app_id: Option<String>,
    /// The operator's RSA key (`github_app`; `jwt_bearer` when connections bring none).
    pub private_key: Option<Arc<RsaSigningKey>>,
    pub display_name: String,
    /// Whether this entry comes from the built-in catalog.
    pub from_catalog: bool,
    pub authorization_url: String,
    pub token_url: String,
    pub revocation_url: Option<String>,
    pub client_id: Option<String>,
    /// The newest client secret.
    pub client_secret: Option<Secret>,
    /// Older client secrets still accepted during a rotation, newest first.
    pub older_client_secrets: Vec<Secret>,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    pub authorization_params: BTreeMap<String, String>,
    pub token_params: BTreeMap<String, String>,
    pub token_headers: BTreeMap<String, String>,
    pub token_request_body: RequestBody,
    pub token_path: Option<String>,
    pub metadata_fields: Vec<String>,
    pub callback_params: Vec<String>,
    pub expires: bool,
    pub default_expires_in: Option<i64>,
    pub refresh_token_lifetime_seconds: Option<i64>,
    pub refresh_token_idle_seconds: Option<i64>,
    pub placeholders: BTreeMap<String, PlaceholderSpec>,
    /// Per placeholder, the allowed host names (`*.example.com`, `example.com`, `*`); a
    /// placeholder without an entry takes any value its pattern accepts.
    pub placeholder_suffixes: BTreeMap<String, Vec<String>>,
    /// Whether provider requests may reach private networks (never link-local or reserved
    /// ranges; loopback only with `allow_insecure_loopback`).
    pub private_network: bool,
    /// Whether requests to the provider carry the W3C trace context (with traces on).
    pub propagate_trace: bool,
    /// The connect form of a static kind: labels (defaults filled in), help text and link.
    pub field_labels: FormLabels,
    pub help: Option<String>,
    pub help_url: Option<String>,
}

impl ConnectorType {
    /// Whether the connector type has what tokenbox needs besides the tenant's credential:
    /// client credentials for the OAuth kinds, nothing for static keys.
    pub fn has_credentials(&self) -> bool {
        match self.kind {
            Kind::ApiKey | Kind::Basic | Kind::JwtBearer => true,
            Kind::GithubApp => self.app_id.is_some() && self.private_key.is_some(),
            Kind::Oauth2 | Kind::ClientCredentials => self.client_id.is_some(),
        }
    }

    /// The headers (and, for a key sent in the query, the query parameters) an API request
    /// to this provider carries with this credential.
    pub fn credential_headers(
        &self,
        tokens: &TokenSet,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut headers = self.api_headers.clone();
        let mut query = BTreeMap::new();
        let secret = tokens.access_token.expose();
        match self.kind {
            Kind::ApiKey => match &self.api_key_query {
                Some(param) => {
                    query.insert(param.clone(), secret.to_string());
                }
                None => {
                    headers.insert(
                        self.api_key_header.clone(),
                        format!("{}{secret}", self.api_key_prefix),
                    );
                }
            },
            Kind::Basic => {
                headers.insert("Authorization".into(), format!("Basic {secret}"));
            }
            _ => {
                headers.insert(
                    "Authorization".into(),
                    format!("{} {secret}", self.token_type(tokens)),
                );
            }
        }
        (headers, query)
    }

    /// The `token_type` served with a credential: `ApiKey` and `Basic` for static kinds;
    /// otherwise the provider's, with `bearer` spelled `Bearer` (RFC 6750).
    pub fn token_type(&self, tokens: &TokenSet) -> String {
        match self.kind {
            Kind::ApiKey => "ApiKey".into(),
            Kind::Basic => "Basic".into(),
            _ => match tokens.token_type.as_deref() {
                None => "Bearer".into(),
                Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".into(),
                Some(t) => t.to_string(),
            },
        }
    }

    /// The API base URL for a connection, placeholders filled from its metadata.
    /// Without a catalog URL, a provider that names the connection's API host in its token
    /// answer (Salesforce's `instance_url`) gives it.
    pub fn api_base_url_for(&self, metadata: &Metadata) -> Option<String> {
        match &self.api_base_url {
            Some(template) => self.expand_url(template, metadata).ok(),
            None => metadata
                .get("instance_url")
                .and_then(|v| v.as_str())
                .filter(|url| url.starts_with("https://"))
                .map(str::to_string),
        }
    }

    /// Fills `{placeholders}` of a URL from connection metadata or the defaults; every value is
    /// checked against its pattern, so it cannot change the URL's host beyond a label.
    pub fn expand_url(&self, template: &str, values: &Metadata) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {template}"))?
                + start;
            let name = &rest[start + 1..end];
            let spec = self
                .placeholders
                .get(name)
                .ok_or_else(|| format!("undeclared placeholder {{{name}}}"))?;
            let value = values
                .get(name)
                .and_then(|v| v.as_str().map(str::to_string))
                .or_else(|| spec.default.clone())
                .ok_or_else(|| format!("the connection has no value for {{{name}}}"))?;
            self.check_placeholder(name, &value)?;
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        // Whatever the patterns, a host built from a placeholder is a name, never an address.
        if host_has_placeholder(template) {
            let host = oauth2::url::Url::parse(&out)
                .ok()
                .and_then(|u| u.host().map(|h| h.to_owned()));
            if !matches!(host, Some(oauth2::url::Host::Domain(_))) {
                return Err(
                    "the URL built from this connection's values has no valid host name".into(),
                );
            }
        }
        Ok(out)
    }

    /// Checks one placeholder value: declared, accepted by its pattern, and matching the
    /// placeholder's allow-list when it has one. The message never repeats the value.
    pub fn check_placeholder(&self, name: &str, value: &str) -> Result<(), String> {
        let spec = self
            .placeholders
            .get(name)
            .ok_or_else(|| format!("undeclared placeholder {{{name}}}"))?;
        if !spec.pattern.accepts(value) {
            return Err(format!(
                "the value of {{{name}}} is not valid: it must be a {}",
                spec.pattern.describe()
            ));
        }
        if let Some(allowed) = self.placeholder_suffixes.get(name) {
            if !allowed.iter().any(|p| netguard::suffix_matches(p, value)) {
                return Err(format!(
                    "the value of {{{name}}} is not allowed for connector type '{}': it must match one of its placeholder_suffixes ({})",
                    self.name,
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Checks the placeholder values a connection's metadata carries (import, signup): each
    /// one must be a string that `check_placeholder` accepts.
    pub fn check_metadata(&self, metadata: &Metadata) -> Result<(), String> {
        for name in self.placeholders.keys() {
            match metadata.get(name) {
                None => {}
                Some(serde_json::Value::String(value)) => self.check_placeholder(name, value)?,
                Some(_) => return Err(format!("metadata '{name}' must be a string")),
            }
        }
        Ok(())
    }

    fn resolve(
        name: &str,
        catalog: Option<&ConnectorTypeSpec>,
        config: Option<&ConnectorTypeSpec>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let empty = ConnectorTypeSpec::default();
        let base = catalog.unwrap_or(&empty);
        let over = config.unwrap_or(&empty);
        macro_rules! pick {
            ($field:ident) => {
                over.$field.clone().or_else(|| base.$field.clone())
            };
        }
        let type_name = ConnectorTypeName::parse(name).map_err(|e| anyhow::anyhow!(e))?;
        let kind = pick!(kind).unwrap_or_default();
        let token_url = match kind {
            Kind::Oauth2 | Kind::ClientCredentials | Kind::JwtBearer => pick!(token_url).with_context(|| {
                format!("connector type '{name}' has no token_url (custom types need authorization_url and token_url)")
            })?,
            _ => pick!(token_url).unwrap_or_default(),
        };
        let authorization_url = match kind {
            Kind::Oauth2 => pick!(authorization_url)
                .with_context(|| format!("connector type '{name}' has no authorization_url"))?,
            _ => pick!(authorization_url).unwrap_or_default(),
        };
        if kind != Kind::ApiKey
            && (pick!(api_key_header).is_some()
                || pick!(api_key_query).is_some()
                || pick!(api_key_prefix).is_some())
        {
            bail!("connector type '{name}': api_key_header, api_key_query and api_key_prefix are for kind api_key");
        }
        if pick!(api_key_header).is_some() && pick!(api_key_query).is_some() {
            bail!("connector type '{name}': set api_key_header or api_key_query, not both");
        }
        if over.client_secrets.is_some()
            && (over.client_secret.is_some() || over.client_secret_env.is_some())
        {
            bail!("connector type '{name}': set one of client_secret, client_secret_env or client_secrets");
        }
        let mut older_client_secrets: Vec<Secret> = over.client_secrets.clone().unwrap_or_default();
        let newest = older_client_secrets.pop();
        older_client_secrets.reverse();
        let client_secret = match (&over.client_secret, &over.client_secret_env) {
            _ if newest.is_some() => newest,
            (Some(_), Some(_)) => {
                bail!("connector type '{name}': set client_secret or client_secret_env, not both")
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(var)) => Some(Secret::new(env(var).with_context(|| {
                format!("connector type '{name}': environment variable {var} (client_secret_env) is not set")
            })?)),
            (None, None) => None,
        };
        let client_id = over.client_id.clone();
        if client_secret.is_some() && client_id.is_none() {
            bail!("connector type '{name}': client_secret is set but client_id is missing");
        }
        let scope_separator = pick!(scope_separator).unwrap_or_else(|| " ".to_string());
        if scope_separator != " " && scope_separator != "," {
            bail!("connector type '{name}': scope_separator must be \" \" or \",\"");
        }
        let api_key_header = pick!(api_key_header);
        let private_key = match (&over.private_key_file, &over.private_key_env) {
            (Some(_), Some(_)) => {
                bail!("connector type '{name}': set private_key_file or private_key_env, not both")
            }
            (Some(path), None) => Some(std::fs::read_to_string(path).with_context(|| {
                format!("connector type '{name}': private_key_file {path} cannot be read")
            })?),
            (None, Some(var)) => Some(env(var).with_context(|| {
                format!("connector type '{name}': environment variable {var} (private_key_env) is not set")
            })?),
            (None, None) => None,
        }
        .map(|pem| {
            RsaSigningKey::from_pem(&pem)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("connector type '{name}': {e}"))
        })
        .transpose()?;
        let app_id = pick!(app_id);
        if kind == Kind::GithubApp && (app_id.is_none() != private_key.is_none()) {
            bail!("connector type '{name}' of kind github_app needs both app_id and private_key_file (or private_key_env)");
        }
        let assertion_lifetime = pick!(assertion_lifetime_seconds).unwrap_or(3600);
        if !(1..=3600).contains(&assertion_lifetime) {
            bail!("connector type '{name}': assertion_lifetime_seconds must be between 1 and 3600");
        }
        let api_base_url = pick!(api_base_url)
            .or_else(|| (kind == Kind::GithubApp).then(|| "https://api.github.com".to_string()));
        let ct = ConnectorType {
            name: type_name,
            kind,
            api_base_url,
            assertion_audience: pick!(assertion_audience),
            assertion_lifetime,
            app_id,
            private_key,
            api_headers: pick!(api_headers).unwrap_or_default(),
            api_key_prefix: pick!(api_key_prefix).unwrap_or_else(|| {
                if api_key_header.is_none() {
                    "Bearer ".into()
                } else {
                    String::new()
                }
            }),
            api_key_header: api_key_header.unwrap_or_else(|| "Authorization".into()),
            api_key_query: pick!(api_key_query),
            verify_url: pick!(verify_url),
            userinfo_url: pick!(userinfo_url),
            userinfo_organisation_field: pick!(userinfo_organisation_field),
            docs_url: pick!(docs_url),
            display_name: pick!(display_name).unwrap_or_else(|| name.to_string()),
            from_catalog: catalog.is_some(),
            authorization_url,
            token_url,
            revocation_url: pick!(revocation_url),
            client_id,
            client_secret,
            older_client_secrets,
            scopes: pick!(scopes).unwrap_or_default(),
            scope_separator,
            client_auth: pick!(client_auth).unwrap_or_default(),
            pkce: pick!(pkce).unwrap_or(true),
            authorization_params: pick!(authorization_params).unwrap_or_default(),
            token_params: pick!(token_params).unwrap_or_default(),
            token_headers: pick!(token_headers).unwrap_or_default(),
            token_request_body: pick!(token_request_body).unwrap_or_default(),
            token_path: pick!(token_path),
            metadata_fields: pick!(metadata_fields).unwrap_or_default(),
            callback_params: pick!(callback_params).unwrap_or_default(),
            expires: pick!(expires).unwrap_or(true),
            default_expires_in: pick!(default_expires_in),
            refresh_token_lifetime_seconds: pick!(refresh_token_lifetime_seconds),
            refresh_token_idle_seconds: pick!(refresh_token_idle_seconds),
            placeholders: pick!(placeholders).unwrap_or_default(),
            placeholder_suffixes: pick!(placeholder_suffixes).unwrap_or_default(),
            private_network: pick!(private_network).unwrap_or(false),
            propagate_trace: pick!(propagate_trace).unwrap_or(false),
            field_labels: form_labels(pick!(field_labels).unwrap_or_default()),
            help: pick!(help),
            help_url: pick!(help_url),
        };
        ct.check_placeholder_suffixes()?;
        for url in ct.urls() {
            ct.check_url_template(url)?;
        }
        Ok(ct)
    }

    /// The allow-lists name declared placeholders, hold well-formed entries, and admit the
    /// placeholders' defaults.
    fn check_placeholder_suffixes(&self) -> anyhow::Result<()> {
        let name = &self.name;
        for (placeholder, allowed) in &self.placeholder_suffixes {
            let Some(spec) = self.placeholders.get(placeholder) else {
                bail!("connector type '{name}': placeholder_suffixes names {{{placeholder}}}, which is not declared under placeholders");
            };
            if allowed.is_empty() {
                bail!("connector type '{name}': placeholder_suffixes.{placeholder} is empty (use [\"*\"] to allow any host name)");
            }
            for entry in allowed {
                let base = entry.strip_prefix("*.").unwrap_or(entry);
                let well_formed = entry == "*"
                    || netguard::is_dns_hostname(base)
                    || (entry.starts_with("*.") && netguard::is_dns_label(base));
                if !well_formed {
                    bail!("connector type '{name}': placeholder_suffixes.{placeholder}: '{entry}' is not a host name, '*.' followed by one, or '*'");
                }
            }
            if let Some(default) = &spec.default {
                if !allowed.iter().any(|p| netguard::suffix_matches(p, default)) {
                    bail!("connector type '{name}': the default of {{{placeholder}}} ({default}) does not match its placeholder_suffixes");
                }
            }
        }
        // Inside a private network, a host chosen per connection must be held to a list:
        // otherwise a link could aim the token request at any internal service.
        if self.private_network {
            for url in self.urls() {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let mut host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                while let Some(start) = host.find('{') {
                    let end = host[start..].find('}').map_or(host.len(), |e| e + start);
                    let placeholder = &host[start + 1..end];
                    if !self.placeholder_suffixes.contains_key(placeholder)
                        || self.placeholder_suffixes[placeholder]
                            .iter()
                            .any(|p| p == "*")
                    {
                        bail!("connector type '{name}' is a private_network one: {{{placeholder}}} in its host needs placeholder_suffixes (not \"*\")");
                    }
                    host = &host[(end + 1).min(host.len())..];
                }
            }
        }
        Ok(())
    }

    /// Every URL template of the connector type (the empty ones of kinds that have none are
    /// left out).
    fn urls(&self) -> impl Iterator<Item = &String> {
        [
            Some(&self.authorization_url),
            Some(&self.token_url),
            self.revocation_url.as_ref(),
            self.api_base_url.as_ref(),
            self.verify_url.as_ref(),
            self.userinfo_url.as_ref(),
            self.help_url.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|url| !url.is_empty())
    }

    fn check_url_template(&self, url: &str) -> anyhow::Result<()> {
        let name = &self.name;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("connector type '{name}': {url} is not an http(s) URL");
        }
        let mut rest = url;
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').with_context(|| {
                format!("connector type '{name}': unclosed placeholder in {url}")
            })? + start;
            let placeholder = &rest[start + 1..end];
            if !self.placeholders.contains_key(placeholder) {
                bail!("connector type '{name}': {url} uses {{{placeholder}}}, which is not declared under placeholders");
            }
            rest = &rest[end + 1..];
        }
        Ok(())
    }
}

/// Whether the authority (host) part of a URL template holds a placeholder.
/// The connect form's labels with the defaults filled in.
fn form_labels(labels: FieldLabels) -> FormLabels {
    let label = |value: Option<String>, default: &str| {
        value
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    FormLabels {
        api_key: label(labels.api_key, "API key"),
        username: label(labels.username, "Username"),
        password: label(labels.password, "Password"),
    }
}

fn host_has_placeholder(template: &str) -> bool {
    let rest = template.split_once("://").map_or(template, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .contains('{')
}

/// All connector types known to this deployment.
#[derive(Debug, Clone)]
pub struct Catalog {
    types: Arc<BTreeMap<ConnectorTypeName, Arc<ConnectorType>>>,
}

impl Catalog {
    /// The built-in catalog merged with the configured entries. Provider URLs must be https;
    /// plain http is accepted only for loopback hosts, and only with `allow_insecure_loopback`
    /// (tests and local development).
    pub fn build(
        configured: &BTreeMap<String, ConnectorTypeSpec>,
        allow_insecure_loopback: bool,
    ) -> anyhow::Result<Self> {
        Self::build_with_env(
            configured,
            &|var| std::env::var(var).ok(),
            allow_insecure_loopback,
        )
    }

    pub fn build_with_env(
        configured: &BTreeMap<String, ConnectorTypeSpec>,
        env: &dyn Fn(&str) -> Option<String>,
        allow_insecure_loopback: bool,
    ) -> anyhow::Result<Self> {
        let builtin = builtin_specs()?;
        let mut types = BTreeMap::new();
        let names: std::collections::BTreeSet<&String> =
            builtin.keys().chain(configured.keys()).collect();
        for name in names {
            let ct = ConnectorType::resolve(name, builtin.get(name), configured.get(name), env)?;
            for url in ct.urls() {
                check_transport(&ct.name, url, allow_insecure_loopback)?;
            }
            types.insert(ct.name.clone(), Arc::new(ct));
        }
        Ok(Self {
            types: Arc::new(types),
        })
    }

    pub fn get(&self, name: &ConnectorTypeName) -> Option<&Arc<ConnectorType>> {
        self.types.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ConnectorType>> {
        self.types.values()
    }
}

/// Provider URLs are https. Plain http would send client secrets and refresh tokens in clear:
/// it is allowed only towards loopback (127.0.0.1, [::1], localhost, *.localhost) and only when
/// the operator says so.
fn check_transport(
    name: &ConnectorTypeName,
    url: &str,
    allow_insecure_loopback: bool,
) -> anyhow::Result<()> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .map(|authority| authority.rsplit_once('@').map_or(authority, |(_, h)| h))
        .map(|host_port| {
            if host_port.starts_with('[') {
                host_port
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches('[')
            } else {
                host_port.split(':').next().unwrap_or_default()
            }
        })
        .unwrap_or_default();
    let loopback =
        host == "127.0.0.1" || host == "::1" || host == "localhost" || host.ends_with(".localhost");
    if loopback && allow_insecure_loopback {
        return Ok(());
    }
    if loopback {
        bail!("connector type '{name}': {url} uses plain http; set allow_insecure_loopback = true to allow it for a provider on this machine (tests, local development)");
    }
    bail!("connector type '{name}': {url} must use https (plain http would send client secrets and tokens in clear)");
}

fn builtin_specs() -> anyhow::Result<BTreeMap<String, ConnectorTypeSpec>> {
    toml::from_str(CATALOG).context("the built-in catalog is invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_builtin_catalog_carries_the_documented_providers() {
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &no_env, true).unwrap();
        let names: Vec<String> = catalog.iter().map(|c| c.name.to_string()).collect();
        for expected in [
            "aircall",
            "github",
            "hubspot",
            "google",
            "salesforce",
            "microsoft",
            "slack",
            "linear",
            "notion",
            "zendesk",
            "intercom",
            "pipedrive",
            "quickbooks",
            "xero",
            "gitlab",
            "atlassian",
            "zoom",
            "asana",
            "shopify",
            "dropbox",
        ] {
            assert!(names.contains(&expected.to_string()), "{expected} missing");
        }
        let aircall = catalog
            .get(&ConnectorTypeName::parse("aircall").unwrap())
            .unwrap();
        assert!(!aircall.expires);
        assert!(!aircall.has_credentials());
    }

    #[test]
    fn config_overrides_catalog_fields_and_adds_custom_types() {
        let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            r#"
            [acme]
            authorization_url = "http://127.0.0.1:9000/authorize"
            token_url = "http://127.0.0.1:9000/token"
            client_id = "acme-client"
            client_secret = "acme-secret"
            scopes = ["read"]
            client_auth = "basic"
            [github]
            client_id = "gh"
            client_secret_env = "GH_SECRET"
            "#,
        )
        .unwrap();
        let env = |v: &str| (v == "GH_SECRET").then(|| "from-env".to_string());
        let catalog = Catalog::build_with_env(&configured, &env, true).unwrap();
        let acme = catalog
            .get(&ConnectorTypeName::parse("acme").unwrap())
            .unwrap();
        assert_eq!(acme.client_secret.as_ref().unwrap().expose(), "acme-secret");
        assert!(!acme.from_catalog);
        let gh = catalog
            .get(&ConnectorTypeName::parse("github").unwrap())
            .unwrap();
        assert_eq!(gh.client_secret.as_ref().unwrap().expose(), "from-env");
        assert_eq!(gh.token_url, "https://github.com/login/oauth/access_token");
    }

    #[test]
    fn several_client_secrets_mean_the_last_is_the_newest() {
        let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            "[github]\nclient_id = \"x\"\nclient_secrets = [\"oldest\", \"older\", \"newest\"]",
        )
        .unwrap();
        let catalog = Catalog::build_with_env(&configured, &no_env, true).unwrap();
        let gh = catalog
            .get(&ConnectorTypeName::parse("github").unwrap())
            .unwrap();
        assert_eq!(gh.client_secret.as_ref().unwrap().expose(), "newest");
        let older: Vec<&str> = gh.older_client_secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(older, ["older", "oldest"]);
        let both: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            "[github]\nclient_id = \"x\"\nclient_secret = \"a\"\nclient_secrets = [\"b\"]",
        )
        .unwrap();
        assert!(Catalog::build_with_env(&both, &no_env, true).is_err());
    }

    #[test]
    fn provider_urls_must_be_https_except_loopback_when_allowed() {
        let spec = |url: &str| -> BTreeMap<String, ConnectorTypeSpec> {
            toml::from_str(&format!(
                "[custom]\nauthorization_url = \"{url}/a\"\ntoken_url = \"{url}/t\"\n"
            ))
            .unwrap()
        };
        for ok in ["https://auth.example.com", "https://{sub}.example.com"] {
            let mut s = spec(ok);
            if ok.contains("{sub}") {
                s.get_mut("custom").unwrap().placeholders = Some(
                    [(
                        "sub".to_string(),
                        PlaceholderSpec {
                            pattern: PlaceholderPattern::DnsLabel,
                            default: None,
                        },
                    )]
                    .into(),
                );
            }
            assert!(Catalog::build_with_env(&s, &no_env, false).is_ok(), "{ok}");
        }
        for local in [
            "http://127.0.0.1:9",
            "http://localhost:9",
            "http://[::1]:9",
            "http://x.localhost:9",
        ] {
            let err = Catalog::build_with_env(&spec(local), &no_env, false).unwrap_err();
            assert!(
                format!("{err:#}").contains("allow_insecure_loopback"),
                "{local}"
            );
            assert!(
                Catalog::build_with_env(&spec(local), &no_env, true).is_ok(),
                "{local}"
            );
        }
        for remote in [
            "http://auth.example.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            "http://user@127.0.0.1.evil.com",
        ] {
            let err = Catalog::build_with_env(&spec(remote), &no_env, true).unwrap_err();
            assert!(format!("{err:#}").contains("must use https"), "{remote}");
        }
        // Every built-in entry is https.
        assert!(Catalog::build_with_env(&BTreeMap::new(), &no_env, false).is_ok());
    }

    #[test]
    fn a_missing_secret_variable_is_an_error_naming_it() {
        let configured: BTreeMap<String, ConnectorTypeSpec> =
            toml::from_str("[github]\nclient_id = \"x\"\nclient_secret_env = \"NOPE_SECRET\"")
                .unwrap();
        let err = Catalog::build_with_env(&configured, &no_env, true).unwrap_err();
        assert!(format!("{err:#}").contains("NOPE_SECRET"));
    }

    #[test]
    fn placeholders_cannot_change_the_host() {
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &no_env, true).unwrap();
        let zendesk = catalog
            .get(&ConnectorTypeName::parse("zendesk").unwrap())
            .unwrap();
        let mut values = Metadata::new();
        values.insert("subdomain".into(), "acme".into());
        assert_eq!(
            zendesk.expand_url(&zendesk.token_url, &values).unwrap(),
            "https://acme.zendesk.com/oauth/tokens"
        );
        for evil in ["evil.com/x?", "a@b", "a.b", "", "a/b"] {
            values.insert("subdomain".into(), evil.into());
            assert!(
                zendesk.expand_url(&zendesk.token_url, &values).is_err(),
                "{evil}"
            );
        }
        values.clear();
        assert!(zendesk.expand_url(&zendesk.token_url, &values).is_err());
    }

    #[test]
    fn placeholder_suffixes_are_checked_when_built_and_at_use() {
        let build = |extra: &str| {
            let configured: BTreeMap<String, ConnectorTypeSpec> =
                toml::from_str(&format!("[gitlab]\n{extra}")).unwrap();
            Catalog::build_with_env(&configured, &no_env, false)
        };
        let catalog =
            build("placeholder_suffixes = { host = [\"*.gitlab.example.com\", \"gitlab.com\"] }")
                .unwrap();
        let gitlab = catalog
            .get(&ConnectorTypeName::parse("gitlab").unwrap())
            .unwrap();
        let mut values = Metadata::new();
        for (host, ok) in [
            ("git.gitlab.example.com", true),
            ("gitlab.com", true),
            ("gitlab.example.com", false),
            ("evil.com", false),
            ("git.gitlab.example.com.evil.com", false),
        ] {
            values.insert("host".into(), host.into());
            assert_eq!(
                gitlab.expand_url(&gitlab.token_url, &values).is_ok(),
                ok,
                "{host}"
            );
            assert_eq!(gitlab.check_metadata(&values).is_ok(), ok, "{host}");
        }
        // The default must be allowed, entries well-formed, placeholders declared.
        for bad in [
            "placeholder_suffixes = { host = [\"*.gitlab.example.com\"] }",
            "placeholder_suffixes = { host = [] }",
            "placeholder_suffixes = { host = [\"gitlab.com\", \"10.0.0.0/8\"] }",
            "placeholder_suffixes = { host = [\"gitlab.com\", \"*gitlab.com\"] }",
            "placeholder_suffixes = { hots = [\"gitlab.com\"] }",
        ] {
            assert!(build(bad).is_err(), "{bad}");
        }
        assert!(build("placeholder_suffixes = { host = [\"*\"] }").is_ok());
        // The catalog's own lists admit its defaults and the usual hosts.
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &no_env, false).unwrap();
        let salesforce = catalog
            .get(&ConnectorTypeName::parse("salesforce").unwrap())
            .unwrap();
        values.insert("host".into(), "acme.my.salesforce.com".into());
        assert!(salesforce
            .expand_url(&salesforce.token_url, &values)
            .is_ok());
        values.insert("host".into(), "gitlab.example.com".into());
        assert!(salesforce
            .expand_url(&salesforce.token_url, &values)
            .is_err());
    }

    #[test]
    fn a_private_network_type_needs_an_allow_list_for_a_per_connection_host() {
        let build = |extra: &str| {
            let configured: BTreeMap<String, ConnectorTypeSpec> =
                toml::from_str(&format!("[gitlab]\nprivate_network = true\n{extra}")).unwrap();
            Catalog::build_with_env(&configured, &no_env, false)
        };
        assert!(build("").is_err());
        assert!(build("placeholder_suffixes = { host = [\"*\"] }").is_err());
        let catalog =
            build("placeholder_suffixes = { host = [\"gitlab.com\", \"*.corp.example\"] }")
                .unwrap();
        let gitlab = catalog
            .get(&ConnectorTypeName::parse("gitlab").unwrap())
            .unwrap();
        assert!(gitlab.private_network);
        // A fixed internal host needs no list.
        let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            "[sso]\nprivate_network = true\nauthorization_url = \"https://sso.corp.example/a\"\ntoken_url = \"https://sso.corp.example/t\"\n",
        )
        .unwrap();
        assert!(Catalog::build_with_env(&configured, &no_env, false).is_ok());
    }

    #[test]
    fn a_label_placeholder_that_makes_the_whole_host_cannot_be_an_address() {
        let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            "[custom]\nauthorization_url = \"https://{sub}/a\"\ntoken_url = \"https://{sub}/t\"\nplaceholders = { sub = { pattern = \"dns_label\" } }\n",
        )
        .unwrap();
        let catalog = Catalog::build_with_env(&configured, &no_env, false).unwrap();
        let custom = catalog
            .get(&ConnectorTypeName::parse("custom").unwrap())
            .unwrap();
        let mut values = Metadata::new();
        for evil in ["2130706433", "0x7f000001", "017700000001"] {
            values.insert("sub".into(), evil.into());
            assert!(
                custom.expand_url(&custom.token_url, &values).is_err(),
                "{evil}"
            );
        }
        values.insert("sub".into(), "intranet".into());
        assert!(custom.expand_url(&custom.token_url, &values).is_ok());
    }

    #[test]
    fn every_entry_of_another_kind_has_its_source_base_url_and_check() {
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &no_env, false).unwrap();
        let mut values = Metadata::new();
        for (k, v) in [
            ("subdomain", "acme"),
            ("domain", "acme"),
            ("site", "acme"),
            ("dc", "us21"),
            ("tenant", "acme"),
        ] {
            values.insert(k.into(), v.into());
        }
        let (mut statics, mut minting) = (0, 0);
        for ct in catalog.iter().filter(|ct| ct.kind != Kind::Oauth2) {
            let name = &ct.name;
            assert!(
                ct.docs_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
                "{name}: docs_url"
            );
            let mut with_instance = values.clone();
            with_instance.insert(
                "instance_url".into(),
                "https://acme.my.salesforce.com".into(),
            );
            let base = ct
                .api_base_url_for(&with_instance)
                .unwrap_or_else(|| panic!("{name}: api_base_url"));
            assert!(
                ct.api_base_url.is_some() || ct.metadata_fields.iter().any(|f| f == "instance_url"),
                "{name}: api_base_url or an instance_url in the answer"
            );
            assert!(
                base.starts_with("https://") && !base.contains('{'),
                "{name}: {base}"
            );
            if ct.kind.is_static() {
                statics += 1;
                let verify = ct
                    .expand_url(ct.verify_url.as_ref().unwrap(), &values)
                    .unwrap();
                assert!(
                    verify.starts_with(&base) || verify.starts_with("https://"),
                    "{name}: {verify}"
                );
                assert!(
                    ct.has_credentials(),
                    "{name}: a static kind needs no client"
                );
            } else {
                minting += 1;
                // A service-account key comes with each connection; a client or an app key is
                // the operator's, so the catalog alone does not configure those kinds.
                assert_eq!(
                    ct.has_credentials(),
                    ct.kind == Kind::JwtBearer,
                    "{name}: configured without the operator"
                );
                ct.expand_url(&ct.token_url, &values).unwrap();
            }
        }
        assert!(statics >= 12, "{statics} API-key and basic entries");
        assert!(
            minting >= 3,
            "{minting} client-credentials and assertion entries"
        );
    }

    #[test]
    fn each_kind_says_which_headers_carry_its_credential() {
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &no_env, false).unwrap();
        let get = |n: &str| {
            catalog
                .get(&ConnectorTypeName::parse(n).unwrap())
                .unwrap()
                .clone()
        };
        let tokens = |secret: &str, token_type: Option<&str>| TokenSet {
            refresh_expires_at: None,
            access_token: Secret::new(secret.to_string()),
            refresh_token: None,
            token_type: token_type.map(str::to_string),
            expires_at: None,
            scope: None,
            metadata: Metadata::new(),
            client: None,
        };
        let (h, q) = get("stripe").credential_headers(&tokens("sk_1", None));
        assert_eq!(h["Authorization"], "Bearer sk_1");
        assert!(q.is_empty());
        let (h, _) = get("notion-internal").credential_headers(&tokens("secret_1", None));
        assert_eq!(h["Notion-Version"], "2022-06-28");
        assert_eq!(h["Authorization"], "Bearer secret_1");
        let (h, _) = get("gitlab-token").credential_headers(&tokens("glpat", None));
        assert_eq!(h["PRIVATE-TOKEN"], "glpat");
        assert!(!h.contains_key("Authorization"));
        let (h, q) = get("pipedrive-api-token").credential_headers(&tokens("pd", None));
        assert_eq!(q["api_token"], "pd");
        assert!(h.is_empty());
        let basic = get("freshdesk");
        let (h, _) = basic.credential_headers(&tokens("a2V5Olg=", None));
        assert_eq!(h["Authorization"], "Basic a2V5Olg=");
        assert_eq!(basic.token_type(&tokens("x", None)), "Basic");
        let github = get("github");
        let (h, _) = github.credential_headers(&tokens("gho", Some("bearer")));
        assert_eq!(h["Authorization"], "Bearer gho");
        assert_eq!(github.token_type(&tokens("x", Some("MAC"))), "MAC");
    }

    #[test]
    fn every_catalog_entry_builds_a_valid_authorization_url() {
        let names: Vec<String> = builtin_specs().unwrap().keys().cloned().collect();
        let configured: BTreeMap<String, ConnectorTypeSpec> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    ConnectorTypeSpec {
                        client_id: Some(format!("{n}-client")),
                        client_secret: Some(Secret::new("s")),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let catalog = Catalog::build_with_env(&configured, &no_env, true).unwrap();
        let provider = Provider::new(std::time::Duration::from_secs(1), false).unwrap();
        let mut values = Metadata::new();
        for (k, v) in [("subdomain", "acme"), ("shop", "acme-shop")] {
            values.insert(k.into(), v.into());
        }
        for ct in catalog.iter().filter(|ct| ct.kind == Kind::Oauth2) {
            let (url, verifier) = provider
                .authorization_url(
                    ct,
                    None,
                    &values,
                    "https://tokens.example.com/oauth/callback",
                    "st4te",
                )
                .unwrap_or_else(|e| panic!("{}: {e}", ct.name));
            let parsed = oauth2::url::Url::parse(&url).unwrap();
            assert_eq!(parsed.scheme(), "https", "{}", ct.name);
            let host = parsed.host_str().unwrap();
            assert!(
                !host.contains('{') && !url.contains("%7B"),
                "{}: {url}",
                ct.name
            );
            let query: BTreeMap<String, String> = parsed.query_pairs().into_owned().collect();
            assert_eq!(query["client_id"], format!("{}-client", ct.name));
            assert_eq!(query["response_type"], "code");
            assert_eq!(query["state"], "st4te");
            assert_eq!(
                query["redirect_uri"],
                "https://tokens.example.com/oauth/callback"
            );
            if ct.scopes.is_empty() {
                assert!(!query.contains_key("scope"), "{}", ct.name);
            } else {
                assert_eq!(
                    query["scope"],
                    ct.scopes.join(&ct.scope_separator),
                    "{}",
                    ct.name
                );
            }
            for (k, v) in &ct.authorization_params {
                assert_eq!(query.get(k), Some(v), "{}: {k}", ct.name);
            }
            assert_eq!(verifier.is_some(), ct.pkce, "{}", ct.name);
            assert_eq!(query.contains_key("code_challenge"), ct.pkce, "{}", ct.name);
            // Every placeholder of the token URL expands too.
            ct.expand_url(&ct.token_url, &values).unwrap();
        }
        let slack = catalog
            .get(&ConnectorTypeName::parse("slack").unwrap())
            .unwrap();
        let (url, _) = provider
            .authorization_url(slack, None, &values, "https://t/cb", "s")
            .unwrap();
        assert!(
            url.contains("scope=channels%3Ahistory%2Cchannels%3Aread"),
            "{url}"
        );
        let zendesk = catalog
            .get(&ConnectorTypeName::parse("zendesk").unwrap())
            .unwrap();
        let (url, _) = provider
            .authorization_url(zendesk, None, &values, "https://t/cb", "s")
            .unwrap();
        assert!(
            url.starts_with("https://acme.zendesk.com/oauth/authorizations/new?"),
            "{url}"
        );
        values.insert("subdomain".into(), "evil.com/x".into());
        assert!(provider
            .authorization_url(zendesk, None, &values, "https://t/cb", "s")
            .is_err());
    }

    #[test]
    fn connect_form_labels_default_and_come_from_the_catalog_or_the_config() {
        let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(
            "[aircall-basic]\nfield_labels = { password = \"Token\" }\n\
             [mine]\nkind = \"api_key\"\nverify_url = \"https://api.example.com/me\"\n\
             help_url = \"https://{sub}.example.com/keys\"\nplaceholders = { sub = { pattern = \"dns_label\" } }\n",
        )
        .unwrap();
        let catalog = Catalog::build_with_env(&configured, &no_env, false).unwrap();
        let get = |n: &str| catalog.get(&ConnectorTypeName::parse(n).unwrap()).unwrap();
        let stripe = get("stripe");
        assert_eq!(stripe.field_labels.api_key, "Secret or restricted key");
        assert!(stripe.help_url.as_deref().unwrap().starts_with("https://"));
        let zendesk = get("zendesk-basic");
        assert_eq!(zendesk.field_labels.password, "API token");
        // A deployment's table replaces the catalog's; a label it leaves out is the default.
        let aircall = get("aircall-basic");
        assert_eq!(aircall.field_labels.password, "Token");
        assert_eq!(aircall.field_labels.username, "Username");
        let mine = get("mine");
        assert_eq!(mine.field_labels.api_key, "API key");
        let mut values = Metadata::new();
        values.insert("sub".into(), "acme".into());
        assert_eq!(
            mine.expand_url(mine.help_url.as_ref().unwrap(), &values)
                .unwrap(),
            "https://acme.example.com/keys"
        );
        // A help link is a provider URL like the others: https, declared placeholders only.
        for bad in ["http://example.com/keys", "https://{nope}.example.com/"] {
            let configured: BTreeMap<String, ConnectorTypeSpec> = toml::from_str(&format!(
                "[mine]\nkind = \"api_key\"\nhelp_url = \"{bad}\"\n"
            ))
            .unwrap();
            assert!(
                Catalog::build_with_env(&configured, &no_env, false).is_err(),
                "{bad}"
            );
        }
    }
}
