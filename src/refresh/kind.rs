//! The credential-kind seam: how a fresh credential is obtained for a connection.
//!
//! `SecretsKeeper` owns everything around the provider call, written once for every kind: the
//! flight, the row lease, the decision step, the cache, the back-off, the circuit breaker, the
//! provider-call slots, the audit event and the webhooks. A kind owns only the call itself and
//! what it needs from the connection. Today's kind is the refresh-token grant of an OAuth
//! authorization-code connection; a minting kind (client credentials, a signed assertion, a
//! GitHub App installation token) implements the same trait and chooses itself in [`of`].

use std::time::Duration;

use async_trait::async_trait;

use crate::connectors::{ConnectorType, Kind, Provider, RefreshError, RsaSigningKey};
use crate::domain::{StoredConnection, TokenSet};

/// One way of obtaining a fresh credential for a connection.
#[async_trait]
pub trait CredentialKind: Send + Sync {
    /// The kind's name, as the catalog spells it.
    fn name(&self) -> &'static str;

    /// Whether the connection holds what this kind needs to obtain a fresh credential without
    /// the tenant. When it does not and the stored credential has expired, the connection is
    /// marked `reauthorization_required`.
    fn renewable(&self, current: &StoredConnection) -> bool;

    /// The URL the call goes to, placeholders filled from the connection's metadata: its host
    /// names the circuit breaker and the provider-call slots. By default the token endpoint.
    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String> {
        ct.expand_url(&ct.token_url, &current.tokens.metadata).ok()
    }

    /// Calls the provider. `budget` is what is left before the row lease ends; the keeper
    /// also cuts the call at that deadline.
    /// `current` is what the connection holds (for a new connection: its metadata only).
    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError>;

    /// What is stored: the provider's answer completed with what the connection already held.
    fn merge(&self, current: &TokenSet, obtained: TokenSet) -> TokenSet;
}

/// The metadata the connection held, completed (or updated) by what the provider sent.
fn keep_metadata(current: &TokenSet, obtained: &mut TokenSet) {
    let mut metadata = current.metadata.clone();
    metadata.append(&mut obtained.metadata);
    obtained.metadata = metadata;
}

/// The kind of a connector type's connections.
pub fn of(ct: &ConnectorType) -> &'static dyn CredentialKind {
    match ct.kind {
        Kind::Oauth2 => &RefreshTokenGrant,
        Kind::ClientCredentials => &ClientCredentialsGrant,
        Kind::JwtBearer => &JwtBearerGrant,
        Kind::GithubApp => &GithubAppInstallation,
        Kind::ApiKey | Kind::Basic => &StaticCredential,
    }
}

/// The client-credentials grant (RFC 6749 §4.4): a token minted with the operator's client,
/// whenever the stored one is within the margin. Nothing to rotate, nothing the tenant holds.
pub struct ClientCredentialsGrant;

#[async_trait]
impl CredentialKind for ClientCredentialsGrant {
    fn name(&self) -> &'static str {
        "client_credentials"
    }

    fn renewable(&self, _current: &StoredConnection) -> bool {
        true
    }

    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        provider
            .client_credentials(ct, current.client.as_ref(), &current.metadata, budget)
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        // A refresh token sent with a client-credentials answer is not kept (RFC 6749 §4.4.3
        // says none should be issued): the next token is minted again.
        obtained.refresh_token = None;
        keep_metadata(current, &mut obtained);
        obtained
    }
}

/// RFC 7523 §2.1: an access token obtained with an RS256 assertion. The key is the
/// connection's (a Google service-account key, kept encrypted as its renewal secret) or the
/// operator's (`private_key_file`, Salesforce's connected app, with `client_id` as `iss`).
pub struct JwtBearerGrant;

/// What a `jwt_bearer` connection keeps as its renewal secret.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    subject: Option<String>,
}

impl JwtBearerGrant {
    /// The signed assertion for this connection, valid `assertion_lifetime` seconds.
    fn assertion(ct: &ConnectorType, current: &TokenSet) -> Result<String, RefreshError> {
        let renewal: ServiceAccount = current
            .refresh_token
            .as_ref()
            .and_then(|r| serde_json::from_str(r.expose()).ok())
            .ok_or_else(|| RefreshError::Revoked {
                code: "no service-account key".into(),
            })?;
        let own_key;
        let (key, issuer, kid) = match (&renewal.private_key, &renewal.client_email) {
            (Some(pem), Some(email)) => {
                own_key = RsaSigningKey::from_pem(pem).map_err(|e| RefreshError::Revoked {
                    code: format!("service-account key: {e}"),
                })?;
                (&own_key, email.clone(), renewal.private_key_id.clone())
            }
            _ => match (&ct.private_key, &ct.client_id) {
                (Some(key), Some(client_id)) => (key.as_ref(), client_id.clone(), None),
                _ => {
                    return Err(RefreshError::NotConfigured(format!(
                        "connector type '{}' has no key: a connection must bring a service-account key, or the operator must set private_key_file and client_id",
                        ct.name
                    )))
                }
            },
        };
        let audience = match &ct.assertion_audience {
            Some(aud) => aud.clone(),
            None => ct
                .expand_url(&ct.token_url, &current.metadata)
                .map_err(RefreshError::NotConfigured)?,
        };
        let now = crate::domain::now_epoch();
        let mut claims = serde_json::json!({
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ct.assertion_lifetime,
        });
        if !ct.scopes.is_empty() {
            claims["scope"] = ct.scopes.join(" ").into();
        }
        if let Some(subject) = &renewal.subject {
            claims["sub"] = subject.clone().into();
        }
        key.sign(kid.as_deref(), &claims)
            .map_err(RefreshError::NotConfigured)
    }
}

#[async_trait]
impl CredentialKind for JwtBearerGrant {
    fn name(&self) -> &'static str {
        "jwt_bearer"
    }

    fn renewable(&self, current: &StoredConnection) -> bool {
        current.tokens.refresh_token.is_some()
    }

    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let assertion = Self::assertion(ct, current)?;
        provider
            .jwt_bearer(ct, &assertion, &current.metadata, budget)
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        // The renewal secret is the key, never anything the provider sends.
        obtained.refresh_token = current.refresh_token.clone();
        keep_metadata(current, &mut obtained);
        obtained
    }
}

/// GitHub App installation access tokens, minted with the app's JWT (`iss` the app id, at most
/// ten minutes) for the installation the connection names.
pub struct GithubAppInstallation;

impl GithubAppInstallation {
    fn app_jwt(ct: &ConnectorType) -> Result<String, RefreshError> {
        let (Some(key), Some(app_id)) = (&ct.private_key, &ct.app_id) else {
            return Err(RefreshError::NotConfigured(format!(
                "connector type '{}' needs app_id and private_key_file",
                ct.name
            )));
        };
        let now = crate::domain::now_epoch();
        // Issued a minute in the past against clock drift; GitHub allows at most ten minutes.
        let claims = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": app_id});
        key.sign(None, &claims).map_err(RefreshError::NotConfigured)
    }

    fn installation_id(metadata: &crate::domain::Metadata) -> Option<u64> {
        metadata.get("installation_id").and_then(|v| v.as_u64())
    }

    /// An installation token limited by `scope` (GitHub's `{"repositories", "permissions"}`).
    pub async fn mint_scoped(
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        scope: &serde_json::Value,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let installation =
            Self::installation_id(&current.metadata).ok_or_else(|| RefreshError::Revoked {
                code: "no installation_id".into(),
            })?;
        let jwt = Self::app_jwt(ct)?;
        provider
            .installation_token(ct, installation, &jwt, Some(scope), budget)
            .await
    }
}

#[async_trait]
impl CredentialKind for GithubAppInstallation {
    fn name(&self) -> &'static str {
        "github_app"
    }

    fn renewable(&self, current: &StoredConnection) -> bool {
        Self::installation_id(&current.tokens.metadata).is_some()
    }

    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String> {
        ct.api_base_url_for(&current.tokens.metadata)
    }

    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let installation =
            Self::installation_id(&current.metadata).ok_or_else(|| RefreshError::Revoked {
                code: "no installation_id".into(),
            })?;
        let jwt = Self::app_jwt(ct)?;
        provider
            .installation_token(ct, installation, &jwt, None, budget)
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        obtained.refresh_token = None;
        keep_metadata(current, &mut obtained);
        obtained
    }
}

/// An API key or a username and password: served as stored, never renewed by tokenbox.
pub struct StaticCredential;

#[async_trait]
impl CredentialKind for StaticCredential {
    fn name(&self) -> &'static str {
        "static"
    }

    fn renewable(&self, _current: &StoredConnection) -> bool {
        false
    }

    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String> {
        let url = ct.verify_url.as_ref()?;
        ct.expand_url(url, &current.tokens.metadata).ok()
    }

    async fn obtain(
        &self,
        _provider: &Provider,
        _ct: &ConnectorType,
        _current: &TokenSet,
        _budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        Err(RefreshError::NotConfigured(
            "a static credential cannot be renewed by tokenbox; the tenant must replace it".into(),
        ))
    }

    fn merge(&self, _current: &TokenSet, obtained: TokenSet) -> TokenSet {
        obtained
    }
}

/// The refresh-token grant (RFC 6749 §6) of an authorization-code connection.
pub struct RefreshTokenGrant;

#[async_trait]
impl CredentialKind for RefreshTokenGrant {
    fn name(&self) -> &'static str {
        "oauth2"
    }

    fn renewable(&self, current: &StoredConnection) -> bool {
        current.tokens.refresh_token.is_some()
    }

    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let Some(refresh_token) = current.refresh_token.as_ref() else {
            return Err(RefreshError::Revoked {
                code: "no refresh token".into(),
            });
        };
        provider
            .refresh(
                ct,
                current.client.as_ref(),
                refresh_token,
                &current.metadata,
                budget,
            )
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        // A provider that does not rotate returns no refresh token: keep ours.
        if obtained.refresh_token.is_none() {
            obtained.refresh_token = current.refresh_token.clone();
        }
        keep_metadata(current, &mut obtained);
        if obtained.scope.is_none() {
            obtained.scope = current.scope.clone();
        }
        obtained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, ConnectionKey, ConnectionStatus, ConnectorTypeName};
    use crate::secret::Secret;

    fn stored(refresh_token: Option<&str>) -> StoredConnection {
        StoredConnection {
            warned_refresh_expires_at: None,
            key: ConnectionKey::new(
                AppId::parse("acme").unwrap(),
                ConnectorTypeName::parse("github").unwrap(),
            ),
            tokens: TokenSet {
                refresh_expires_at: None,
                access_token: Secret::new("old".to_string()),
                refresh_token: refresh_token.map(|t| Secret::new(t.to_string())),
                token_type: None,
                expires_at: Some(1),
                scope: Some("read".into()),
                metadata: [("instance_url".to_string(), "https://a.example".into())]
                    .into_iter()
                    .collect(),
                client: None,
            },
            status: ConnectionStatus::Active,
            version: 1,
            created_at: 0,
            updated_at: 0,
            refreshed_at: None,
            last_error: None,
            backoff_until: None,
            refresh_failures: 0,
            last_error_kind: None,
            refresh_interrupted_at: None,
        }
    }

    fn answer(refresh_token: Option<&str>) -> TokenSet {
        TokenSet {
            refresh_expires_at: None,
            access_token: Secret::new("new".to_string()),
            refresh_token: refresh_token.map(|t| Secret::new(t.to_string())),
            token_type: Some("bearer".into()),
            expires_at: Some(100),
            scope: None,
            metadata: Default::default(),
            client: None,
        }
    }

    #[test]
    fn the_refresh_grant_keeps_what_the_provider_did_not_send_again() {
        let kind = RefreshTokenGrant;
        let current = stored(Some("rt1"));
        assert!(kind.renewable(&current));
        assert!(!kind.renewable(&stored(None)));

        let kept = kind.merge(&current.tokens, answer(None));
        assert_eq!(kept.access_token.expose(), "new");
        assert_eq!(kept.refresh_token.unwrap().expose(), "rt1");
        assert_eq!(kept.scope.as_deref(), Some("read"));
        assert_eq!(kept.metadata["instance_url"], "https://a.example");

        let rotated = kind.merge(&current.tokens, answer(Some("rt2")));
        assert_eq!(rotated.refresh_token.unwrap().expose(), "rt2");
    }
}
