//! Domain types shared by the API, the storage and the refresh logic.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Seconds since the Unix epoch.
pub fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Validates an identifier of the form `[a-z0-9][a-z0-9_-]{0,62}`.
fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

macro_rules! identifier {
    ($name:ident, $what:literal) => {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates; the error is a human sentence that is safe to show.
            pub fn parse(s: &str) -> Result<Self, String> {
                if is_identifier(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(format!(
                        "{} must match [a-z0-9][a-z0-9_-]{{0,62}} (lowercase letters, digits, '_' and '-', at most 63 characters)",
                        $what
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(AppId, "app_id");
identifier!(ConnectorTypeName, "connector_type");

/// One connection: an app and a connector type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub app_id: AppId,
    pub connector_type: ConnectorTypeName,
}

impl ConnectionKey {
    pub fn new(app_id: AppId, connector_type: ConnectorTypeName) -> Self {
        Self {
            app_id,
            connector_type,
        }
    }
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app_id, self.connector_type)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    ReauthorizationRequired,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::ReauthorizationRequired => "reauthorization_required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "reauthorization_required" => Some(Self::ReauthorizationRequired),
            _ => None,
        }
    }
}

/// Whether `name` is a valid service-account name: 1 to 64 letters, digits, '-', '_' or '.'.
pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Non-secret values a provider returns with a token that jobs need (`instance_url`, ...).
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// A token set as received from a provider or imported.
#[derive(Clone, Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub token_type: Option<String>,
    /// Epoch seconds; `None` when the token does not expire.
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub metadata: Metadata,
    /// When the refresh token dies (epoch seconds): from `refresh_token_expires_in`, else the
    /// catalog's absolute or idle refresh-token lifetime; `None` when unknown.
    pub refresh_expires_at: Option<i64>,
    /// The tenant's own OAuth client, when the connection brought one: every call for this
    /// connection (refresh, mint, revocation) authenticates with it instead of the operator's.
    /// Stored with the connection (the secret encrypted), never returned.
    pub client: Option<TenantClient>,
}

/// Whose account a connection is, as the provider's identity request (or the ID token) told.
/// Every field is absent when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountIdentity {
    /// The provider's stable id of the account (`sub`, else `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
}

impl AccountIdentity {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.name.is_none() && self.email.is_none()
    }
}

/// The stored identity of a connection: its account, and the account it had before its last
/// reconnection with a different one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionAccount {
    pub account: AccountIdentity,
    pub previous_account_id: Option<String>,
    pub updated_at: i64,
}

/// A tenant's own OAuth client (a self-managed GitLab's application, a customer's Salesforce
/// connected app), used for its connection instead of the operator's `client_id` and
/// `client_secret`. `Debug` never shows the secret.
#[derive(Clone, Debug)]
pub struct TenantClient {
    pub client_id: String,
    /// `None` for a public client (PKCE only).
    pub client_secret: Option<Secret>,
}

impl TenantClient {
    /// The client given with a connection or a link: `client_id` (and `client_secret`) both
    /// absent is no client; a secret without an id is refused, as is a missing secret when
    /// `secret_required`. The error is a sentence that never repeats a value.
    pub fn from_fields(
        client_id: Option<String>,
        client_secret: Option<Secret>,
        secret_required: bool,
    ) -> Result<Option<Self>, String> {
        let client_secret = client_secret.filter(|s| !s.is_empty());
        let Some(client_id) = client_id else {
            return match client_secret {
                Some(_) => Err("client_secret was given without client_id".into()),
                None => Ok(None),
            };
        };
        if client_id.trim().is_empty()
            || client_id.len() > 255
            || client_id.chars().any(char::is_control)
        {
            return Err("client_id must be 1 to 255 characters with no control character".into());
        }
        if client_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() > 4096 || s.expose().chars().any(char::is_control))
        {
            return Err(
                "client_secret must be at most 4096 characters with no control character".into(),
            );
        }
        if secret_required && client_secret.is_none() {
            return Err("client_id was given without client_secret".into());
        }
        Ok(Some(Self {
            client_id,
            client_secret,
        }))
    }
}

impl TokenSet {
    /// Whether the access token stays valid for at least `seconds` from `now`.
    pub fn valid_for(&self, now: i64, seconds: i64) -> bool {
        match self.expires_at {
            None => true,
            Some(at) => at - now >= seconds,
        }
    }

    /// The scopes of `required` that the granted `scope` lacks (items separated by spaces or
    /// commas, as providers write them), in the order asked.
    pub fn missing_scopes(&self, required: &[String]) -> Vec<String> {
        let granted: std::collections::BTreeSet<&str> = self
            .scope
            .as_deref()
            .unwrap_or("")
            .split([' ', ',', '\t', '\n'])
            .filter(|s| !s.is_empty())
            .collect();
        required
            .iter()
            .filter(|r| !granted.contains(r.as_str()))
            .cloned()
            .collect()
    }

    /// Whether the access token is still valid at all.
    pub fn is_valid(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The kind of credential a connector type holds (`kind` in the catalog and the config).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A tenant's authorization-code grant, refreshed with its refresh token.
    #[default]
    Oauth2,
    /// RFC 6749 §4.4: tokens minted with a client's own credentials.
    ClientCredentials,
    /// A static API key, sent in a header or a query parameter.
    ApiKey,
    /// HTTP Basic with a username and a password (or an API token).
    Basic,
    /// RFC 7523 §2.1 signed assertions (Google service accounts, Salesforce JWT bearer).
    JwtBearer,
    /// GitHub App installation access tokens.
    GithubApp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oauth2 => "oauth2",
            Self::ClientCredentials => "client_credentials",
            Self::ApiKey => "api_key",
            Self::Basic => "basic",
            Self::JwtBearer => "jwt_bearer",
            Self::GithubApp => "github_app",
        }
    }

    /// Whether tokenbox mints this kind's access tokens itself (no tenant grant to refresh).
    pub fn mints(self) -> bool {
        matches!(
            self,
            Self::ClientCredentials | Self::JwtBearer | Self::GithubApp
        )
    }

    /// Whether the credential is a static secret the tenant hands over.
    pub fn is_static(self) -> bool {
        matches!(self, Self::ApiKey | Self::Basic)
    }

    /// Whether a connect link shows tokenbox's form, where the tenant types or pastes the
    /// credential (an API key, a username and password, a service-account key).
    pub fn has_form(self) -> bool {
        matches!(self, Self::ApiKey | Self::Basic | Self::JwtBearer)
    }
}

/// What `PUT /{app_id}/{connector_type}/connection` carries, by the connector type's kind.
#[derive(Debug)]
pub enum CredentialInput {
    /// `oauth2`: a token set obtained elsewhere.
    Tokens(ImportTokenSet),
    /// `api_key`: `{"api_key": "..."}`.
    ApiKey { api_key: Secret, metadata: Metadata },
    /// `basic`: `{"username": "...", "password": "..."}`.
    Basic {
        username: Secret,
        password: Secret,
        metadata: Metadata,
    },
    /// A minting kind: `{}` (the operator's client) or `{"client_id", "client_secret"}` (the
    /// tenant's own client), optionally `metadata`.
    Mint {
        metadata: Metadata,
        client: Option<TenantClient>,
    },
    /// `jwt_bearer`: a service-account key (Google's JSON) and an optional subject (the user
    /// impersonated with domain-wide delegation; Salesforce's username). The key is kept as
    /// the connection's renewal secret: `{"client_email", "private_key", "private_key_id",
    /// "subject"}`.
    ServiceAccount { renewal: Secret, metadata: Metadata },
    /// `github_app`: the installation to mint tokens for.
    Installation {
        installation_id: u64,
        metadata: Metadata,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAccountBody {
    #[serde(default)]
    service_account_key: Option<ServiceAccountKey>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

/// The fields of a Google service-account key file that tokenbox uses (the others are
/// ignored, not refused: the file has a dozen).
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: Secret,
    #[serde(default)]
    private_key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallationBody {
    installation_id: u64,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    api_key: Secret,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicBody {
    username: Secret,
    password: Secret,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<Secret>,
}

impl CredentialInput {
    /// Parses the body for a connector type of `kind`; the error is a sentence that never
    /// repeats the input's values.
    pub fn from_json(kind: Kind, bytes: &[u8]) -> Result<Self, String> {
        fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T, String> {
            serde_json::from_slice(bytes).map_err(|e| {
                let message = e.to_string();
                let short = message.split(" at line").next().unwrap_or(&message);
                if message.starts_with("unknown field") || message.starts_with("missing field") {
                    format!("invalid credential: {short}; expected {shape}")
                } else {
                    format!("invalid credential JSON: expected {shape}")
                }
            })
        }
        match kind {
            Kind::Oauth2 => ImportTokenSet::from_json(bytes).map(Self::Tokens),
            Kind::ApiKey => {
                let body: ApiKeyBody = parse(bytes, r#"{"api_key": string}"#)?;
                if body.api_key.expose().trim().is_empty() {
                    return Err("api_key must not be empty".into());
                }
                Ok(Self::ApiKey {
                    api_key: body.api_key,
                    metadata: body.metadata,
                })
            }
            Kind::Basic => {
                let body: BasicBody = parse(bytes, r#"{"username": string, "password": string}"#)?;
                if body.username.expose().is_empty() || body.username.expose().contains(':') {
                    return Err("username must be non-empty and hold no ':' (RFC 7617)".into());
                }
                Ok(Self::Basic {
                    username: body.username,
                    password: body.password,
                    metadata: body.metadata,
                })
            }
            Kind::ClientCredentials => {
                let body: MintBody = parse(
                    bytes,
                    r#"{} (the operator's client) or {"client_id": string, "client_secret": string} (the tenant's own)"#,
                )?;
                Ok(Self::Mint {
                    client: TenantClient::from_fields(body.client_id, body.client_secret, true)?,
                    metadata: body.metadata,
                })
            }
            Kind::JwtBearer => {
                let body: ServiceAccountBody = parse(
                    bytes,
                    r#"{"service_account_key": {...the key file's JSON...}, "subject": string (optional)}"#,
                )?;
                let subject = body.subject.filter(|s| !s.is_empty());
                let renewal = match body.service_account_key {
                    Some(key) => serde_json::json!({
                        "client_email": key.client_email,
                        "private_key": key.private_key.expose(),
                        "private_key_id": key.private_key_id,
                        "subject": subject,
                    }),
                    None => serde_json::json!({ "subject": subject }),
                };
                Ok(Self::ServiceAccount {
                    renewal: Secret::new(renewal.to_string()),
                    metadata: body.metadata,
                })
            }
            Kind::GithubApp => {
                let body: InstallationBody = parse(bytes, r#"{"installation_id": integer}"#)?;
                Ok(Self::Installation {
                    installation_id: body.installation_id,
                    metadata: body.metadata,
                })
            }
        }
    }
}

/// What kind of failure a connection's last refresh met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient: the provider is down, slow or rate-limiting (503 to callers).
    Unavailable,
    /// The provider answered something unusable (502 to callers).
    ProviderError,
    /// The provider refused the grant: the tenant must reconnect (409).
    Revoked,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::ProviderError => "provider_error",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Unavailable, Self::ProviderError, Self::Revoked]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A connection as stored, decrypted.
#[derive(Clone, Debug)]
pub struct StoredConnection {
    pub key: ConnectionKey,
    pub tokens: TokenSet,
    pub status: ConnectionStatus,
    /// Incremented on every write; used for optimistic concurrency.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub refreshed_at: Option<i64>,
    pub last_error: Option<String>,
    /// A failed refresh asks callers to wait until then before the provider is called again.
    pub backoff_until: Option<i64>,
    /// Consecutive failed refreshes (reset by a success).
    pub refresh_failures: i64,
    /// What the last failure was.
    pub last_error_kind: Option<FailureKind>,
    /// When a refresh of this connection was found interrupted (its holder stopped mid-call,
    /// its lease expired): the provider may have rotated the refresh token we still hold.
    /// Cleared by the next successful refresh or import.
    pub refresh_interrupted_at: Option<i64>,
    /// The refresh-token deadline a `connection.reauthorization_due` warning was sent for.
    pub warned_refresh_expires_at: Option<i64>,
}

/// Which connections a listing returns.
#[derive(Clone, Debug, Default)]
pub struct ConnectionFilter {
    pub status: Option<ConnectionStatus>,
    pub connector_type: Option<ConnectorTypeName>,
    pub app_id_prefix: Option<String>,
    /// Only connections that expire before this time (epoch seconds).
    pub expiring_before: Option<i64>,
    /// Only active connections whose refresh token dies before this time (epoch seconds).
    pub refresh_expiring_before: Option<i64>,
    /// Only connections whose granted scopes lack this one.
    pub missing_scope: Option<String>,
    /// Keyset pagination: connections after this one.
    pub after: Option<ConnectionKey>,
    pub limit: i64,
}

/// A connection without its secrets, for listings.
#[derive(Clone, Debug)]
pub struct ConnectionSummary {
    pub key: ConnectionKey,
    pub status: ConnectionStatus,
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub has_refresh_token: bool,
    pub refresh_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub refreshed_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// When it happened; for a row that counts several token reads, the first of them.
    pub at: i64,
    /// The last of the token reads a row counts (absent when one, or all in the same second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_at: Option<i64>,
    /// The service account, `tenant` (signup), `refresher` or `cli`.
    pub principal: String,
    /// `token.read`, `token.refresh`, `connection.import`, `connection.connect`,
    /// `connection.delete`, `connect_link.create`, `service_account.create`, ...
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_type: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// What the action was about when it is not a connection (a service account's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The workload that acted as `principal` with a trusted issuer's token: the token's
    /// issuer ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_issuer: Option<String>,
    /// ... and its subject (`sub`, such as `system:serviceaccount:extract:runner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_subject: Option<String>,
    /// How many events this row stands for (absent when 1): identical token reads are
    /// counted per window, account, workload, app, connector type, outcome and client address;
    /// anonymous refusals per window, action, outcome and client address.
    #[serde(skip_serializing_if = "is_one")]
    pub count: i64,
}

fn is_one(n: &i64) -> bool {
    *n == 1
}

/// A connect link as stored (its secret is only known to whoever received the URL).
#[derive(Clone, Debug)]
pub struct ConnectLink {
    pub secret_hash: [u8; 32],
    pub key: ConnectionKey,
    /// Per-connection values for the connector type's placeholders (`subdomain`, ...).
    pub params: BTreeMap<String, String>,
    pub return_to: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub spent_at: Option<i64>,
    /// The tenant's own OAuth client, handed to the connection at the callback (its secret
    /// stored encrypted with the link).
    pub client: Option<TenantClient>,
    /// The callback refuses an account other than the connection's current one.
    pub same_account: bool,
}

impl ConnectLink {
    pub fn is_usable(&self, now: i64) -> bool {
        self.spent_at.is_none() && self.expires_at > now
    }
}

/// An authorization request in flight, consumed by the callback.
#[derive(Clone, Debug)]
pub struct OAuthState {
    pub link_hash: [u8; 32],
    pub pkce_verifier: Option<Secret>,
    pub expires_at: i64,
    /// SHA-256 of the cookie value of the browser that started the flow; `None` for a state
    /// recorded before browsers were bound (it is refused).
    pub browser_hash: Option<[u8; 32]>,
}

/// A token set to import, as JSON: `{"access_token", "refresh_token", "expires_at" |
/// "expires_in", "scope", "token_type", "metadata"}`; only `access_token` is required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportTokenSet {
    #[schema(value_type = String)]
    access_token: Secret,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    refresh_token: Option<Secret>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    expires_in: Option<i64>,
    /// Seconds the refresh token lives from now, as GitHub, Microsoft or Spotify send it; else
    /// the catalog's refresh-token lifetimes apply.
    #[serde(default)]
    refresh_token_expires_in: Option<i64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Metadata>,
    /// The tenant's own OAuth client: refreshes and the revocation use it instead of the
    /// operator's. Stored encrypted, never returned.
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    client_secret: Option<Secret>,
}

impl ImportTokenSet {
    /// Parses the JSON text; the error is a sentence that never repeats the input's values.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| {
            let message = e.to_string();
            if message.starts_with("unknown field") || message.starts_with("missing field") {
                let short = message.split(" at line").next().unwrap_or(&message);
                format!("invalid token set: {short}")
            } else {
                format!(
                    "invalid token set JSON at line {} column {}: expected {{\"access_token\": string, \"refresh_token\": string, \"expires_at\": integer | \"expires_in\": integer, \"scope\": string}}",
                    e.line(),
                    e.column()
                )
            }
        })
    }

    pub fn into_token_set(self, now: i64) -> Result<TokenSet, String> {
        if self.access_token.expose().trim().is_empty() {
            return Err("access_token must not be empty".into());
        }
        let expires_at = match (self.expires_at, self.expires_in) {
            (Some(_), Some(_)) => return Err("give expires_at or expires_in, not both".into()),
            (Some(at), None) if at <= 0 => return Err("expires_at must be positive".into()),
            (Some(at), None) => Some(at),
            (None, Some(s)) if s < 0 => return Err("expires_in must not be negative".into()),
            (None, Some(s)) => Some(now.saturating_add(s)),
            (None, None) => None,
        };
        let refresh_expires_at = match self.refresh_token_expires_in {
            Some(s) if s <= 0 => return Err("refresh_token_expires_in must be positive".into()),
            Some(s) => Some(now.saturating_add(s)),
            None => None,
        };
        let client = TenantClient::from_fields(self.client_id, self.client_secret, false)?;
        Ok(TokenSet {
            refresh_expires_at,
            access_token: self.access_token,
            refresh_token: self.refresh_token.filter(|t| !t.is_empty()),
            token_type: self.token_type,
            expires_at,
            scope: self.scope,
            metadata: self.metadata.unwrap_or_default(),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_documented_pattern() {
        for ok in ["acme", "a", "0", "acme-prod_2", &"a".repeat(63)] {
            assert!(AppId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "_a",
            "a b",
            "a/b",
            "a.b",
            "é",
            "a%2f",
            &"a".repeat(64),
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validity_compares_expiry_with_the_requested_time() {
        let t = TokenSet {
            refresh_expires_at: None,
            access_token: Secret::new("x"),
            refresh_token: None,
            token_type: None,
            expires_at: Some(1_000),
            scope: None,
            metadata: Metadata::new(),
            client: None,
        };
        assert!(t.valid_for(500, 500));
        assert!(!t.valid_for(501, 500));
        assert!(t.is_valid(999));
        assert!(!t.is_valid(1_000));
        let forever = TokenSet {
            expires_at: None,
            ..t
        };
        assert!(forever.valid_for(i64::MAX / 2, 1_000_000));
    }
}
