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

use crate::connectors::{ConnectorType, Kind, Provider, RefreshError};
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
    /// names the circuit breaker and the provider-call slots.
    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String>;

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

/// The kind of a connector type's connections.
pub fn of(ct: &ConnectorType) -> &'static dyn CredentialKind {
    match ct.kind {
        Kind::Oauth2 => &RefreshTokenGrant,
        Kind::ClientCredentials => &ClientCredentialsGrant,
        Kind::ApiKey | Kind::Basic | Kind::JwtBearer | Kind::GithubApp => &StaticCredential,
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

    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String> {
        ct.expand_url(&ct.token_url, &current.tokens.metadata).ok()
    }

    async fn obtain(
        &self,
        provider: &Provider,
        ct: &ConnectorType,
        current: &TokenSet,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        provider
            .client_credentials(ct, &current.metadata, budget)
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        // A refresh token sent with a client-credentials answer is not kept (RFC 6749 §4.4.3
        // says none should be issued): the next token is minted again.
        obtained.refresh_token = None;
        let mut metadata = current.metadata.clone();
        metadata.append(&mut obtained.metadata);
        obtained.metadata = metadata;
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

    fn endpoint(&self, ct: &ConnectorType, current: &StoredConnection) -> Option<String> {
        ct.expand_url(&ct.token_url, &current.tokens.metadata).ok()
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
            .refresh(ct, refresh_token, &current.metadata, budget)
            .await
    }

    fn merge(&self, current: &TokenSet, mut obtained: TokenSet) -> TokenSet {
        // A provider that does not rotate returns no refresh token: keep ours.
        if obtained.refresh_token.is_none() {
            obtained.refresh_token = current.refresh_token.clone();
        }
        let mut metadata = current.metadata.clone();
        metadata.append(&mut obtained.metadata);
        obtained.metadata = metadata;
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
            key: ConnectionKey::new(
                AppId::parse("acme").unwrap(),
                ConnectorTypeName::parse("github").unwrap(),
            ),
            tokens: TokenSet {
                access_token: Secret::new("old".to_string()),
                refresh_token: refresh_token.map(|t| Secret::new(t.to_string())),
                token_type: None,
                expires_at: Some(1),
                scope: Some("read".into()),
                metadata: [("instance_url".to_string(), "https://a.example".into())]
                    .into_iter()
                    .collect(),
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
            access_token: Secret::new("new".to_string()),
            refresh_token: refresh_token.map(|t| Secret::new(t.to_string())),
            token_type: Some("bearer".into()),
            expires_at: Some(100),
            scope: None,
            metadata: Default::default(),
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
