//! `SecretsKeeper`: serves a token that is valid long enough, refreshing it first when needed,
//! exactly once per connection however many callers ask at the same moment.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::{self, Audit};
use crate::config::Config;
use crate::connectors::{Catalog, ConnectorType, Provider, RefreshError};
use crate::domain::{
    now_epoch, AccountIdentity, ConnectionAccount, ConnectionKey, ConnectionStatus,
    CredentialInput, FailureKind, Kind, StoredConnection, TokenSet,
};
use crate::metrics::Metrics;
use crate::refresh::breaker::Breakers;
use crate::refresh::decision::{self, decide, Decision, Refusal, Situation};
use crate::refresh::kind::{self, CredentialKind};
use crate::refresh::scoped::{GithubScope, ScopedTokens};
use crate::refresh::{Flights, TokenCache};
use crate::secret::Secret;
use crate::store::{RefreshGuard, RefreshWrite, SecretsStore, StoreError};
use crate::tracing_otel;
use crate::webhooks::{ConnectionEvent, Webhooks};

pub use crate::refresh::decision::TokenRequest;

/// Seconds a caller is asked to wait when a refresh outlives the request.
const FAILURE_RETRY_AFTER: u64 = 5;

/// What a check of a stored credential found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The provider accepts it.
    Valid,
    /// The provider refuses it (or already did): the tenant must reconnect. The reason says why.
    ReauthorizationRequired(String),
}

/// What the code exchange adds to the identity check of a connection being saved.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityCheck<'a> {
    /// The exchange's OpenID Connect ID token, whose claims name the account when the
    /// connector type has no identity request.
    pub id_token: Option<&'a Secret>,
    /// Refuse (store nothing) unless the account is the connection's current one.
    pub same_account: bool,
}

/// A token served to a caller.
#[derive(Clone, Debug)]
pub struct ServedToken {
    pub connection: Arc<StoredConnection>,
    /// Whether this request caused (or waited for) a provider call.
    pub refreshed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("connector type '{0}' is not in the catalog or the configuration")]
    UnknownConnectorType(String),
    #[error("app '{0}' has no {1} connection")]
    NotConnected(String, String),
    #[error("{0}")]
    ReauthorizationRequired(String),
    #[error("{message}")]
    ProviderUnavailable { message: String, retry_after: u64 },
    #[error("{message}")]
    ProviderError {
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    InvalidRequest(String),
    /// The provider refused the credential a connection was to be saved with.
    #[error("{0}")]
    InvalidCredentials(String),
    #[error("connector type '{0}' has no client credentials configured, so its tokens cannot be refreshed; an operator must set client_id and client_secret")]
    ConnectorNotConfigured(String),
    /// A connect link required the connection's current account and the provider named
    /// another one (or none could be confirmed): nothing was stored.
    #[error("{0}")]
    AccountMismatch(String),
    #[error("storage failure")]
    Store(#[from] StoreError),
    #[error("internal failure")]
    Internal,
}

/// Slots for provider calls: one pool for all hosts, one per token host, so that a hanging
/// provider cannot take every socket and task of the process.
struct ProviderSlots {
    global: Arc<Semaphore>,
    per_host: usize,
    hosts: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl ProviderSlots {
    fn new(global: usize, per_host: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_host,
            hosts: Default::default(),
        }
    }

    /// Waits for a slot toward `host` (then one of the global pool).
    async fn acquire(&self, host: &str) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let host = {
            let mut hosts = self.hosts.lock().expect("slots poisoned");
            hosts
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        let host = host.acquire_owned().await.expect("never closed");
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        (host, global)
    }
}

struct Inner {
    store: Arc<dyn SecretsStore>,
    metrics: Arc<Metrics>,
    audit: Audit,
    webhooks: Webhooks,
    catalog: Catalog,
    provider: Provider,
    cache: TokenCache,
    flights: Flights,
    /// Scoped-down GitHub App tokens, per connection and scope.
    scoped: ScopedTokens,
    breakers: Breakers,
    refresh_margin: i64,
    request_timeout: Duration,
    backoff_base: i64,
    lease_seconds: i64,
    /// `reauthorization_warning_days`, in seconds.
    warning_window: i64,
    slots: ProviderSlots,
    /// Refreshes started by requests: a shutdown waits for them (a rotated refresh token must
    /// be stored before the process exits).
    tasks: TaskTracker,
}

/// Serves and refreshes tokens. Cheap to clone.
#[derive(Clone)]
pub struct SecretsKeeper {
    inner: Arc<Inner>,
}

impl SecretsKeeper {
    pub fn new(
        store: Arc<dyn SecretsStore>,
        catalog: Catalog,
        provider: Provider,
        metrics: Arc<Metrics>,
        audit: Audit,
        webhooks: Webhooks,
        config: &Config,
    ) -> Self {
        let cache = TokenCache::new(config.cache_ttl, config.cache_max_entries);
        if store.has_change_feed() {
            // Read through until the change feed listens (`follow_changes`).
            cache.set_listening(false);
        }
        Self {
            inner: Arc::new(Inner {
                store,
                metrics,
                audit,
                webhooks,
                catalog,
                provider,
                cache,
                flights: Flights::default(),
                scoped: ScopedTokens::default(),
                breakers: Breakers::new(5, Duration::from_secs(30)),
                refresh_margin: config.refresh_margin_seconds,
                request_timeout: config.request_timeout,
                backoff_base: config.refresh_backoff_seconds,
                lease_seconds: config.refresh_lease_seconds,
                warning_window: config.reauthorization_warning_days.saturating_mul(86_400),
                slots: ProviderSlots::new(
                    config.max_concurrent_refreshes,
                    config.max_concurrent_refreshes_per_host,
                ),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Waits (up to `grace`) for the refreshes in flight, after which no new one starts.
    /// Returns whether they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Keeps the token cache coherent with changes other replicas make, until `stop`: each
    /// change the store's feed reports drops the cached copy; while the feed is not listening,
    /// reads go through to the store. Returns at once for a store without a feed (SQLite).
    pub async fn follow_changes(
        &self,
        heartbeat: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let cache = &self.inner.cache;
        let on = |event: crate::store::FeedEvent| match event {
            crate::store::FeedEvent::Listening => cache.set_listening(true),
            crate::store::FeedEvent::Lost => cache.set_listening(false),
            crate::store::FeedEvent::Changed { key, version } => cache.invalidate(&key, version),
        };
        self.inner.store.follow_changes(&on, heartbeat, stop).await;
    }

    /// Connector types whose circuit breaker is open (for metrics).
    pub fn open_circuits(&self) -> usize {
        self.inner.breakers.open_count()
    }

    pub fn store(&self) -> &Arc<dyn SecretsStore> {
        &self.inner.store
    }

    pub fn provider(&self) -> &Provider {
        &self.inner.provider
    }

    /// Deletes a connection and revokes its grant at the provider when the catalog has a
    /// revocation endpoint. Returns whether it existed and whether the provider confirmed.
    pub async fn delete_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<bool>, KeeperError> {
        let ct = self.connector_type(key)?.clone();
        let _flight = self.inner.flights.acquire(key).await;
        let deleted = self.inner.store.delete_connection(key).await?;
        self.inner.store.delete_connection_account(key).await?;
        self.inner.cache.remove(key);
        self.inner.scoped.forget(key);
        let Some(deleted) = deleted else {
            return Ok(None);
        };
        let client = deleted.tokens.client.as_ref();
        if ct.revocation_url.is_none() || !(ct.has_credentials() || client.is_some()) {
            return Ok(Some(false));
        }
        let revoked = self
            .inner
            .provider
            .revoke(
                &ct,
                client,
                &deleted.tokens.metadata,
                deleted.tokens.refresh_token.as_ref(),
                &deleted.tokens.access_token,
            )
            .await;
        match revoked {
            Ok(confirmed) => Ok(Some(confirmed)),
            Err(error) => {
                tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, error = %error, "revocation at the provider failed; the connection is deleted anyway");
                Ok(Some(false))
            }
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn connector_type(&self, key: &ConnectionKey) -> Result<&Arc<ConnectorType>, KeeperError> {
        self.inner
            .catalog
            .get(&key.connector_type)
            .ok_or_else(|| KeeperError::UnknownConnectorType(key.connector_type.to_string()))
    }

    /// Stores a token set obtained elsewhere (an import) and makes it current at once. When the
    /// token was issued is not known, so neither is its lifetime: the full refresh margin applies.
    pub async fn save_connection(
        &self,
        key: &ConnectionKey,
        tokens: &TokenSet,
    ) -> Result<Arc<StoredConnection>, KeeperError> {
        self.store_connection(key, tokens, None, IdentityCheck::default())
            .await
    }

    /// Stores a token set the provider issued just now (the signup's code exchange): its
    /// lifetime is known, as after a refresh. `identity` carries the ID token of the exchange
    /// and whether the link requires the connection's current account.
    pub async fn save_obtained_connection(
        &self,
        key: &ConnectionKey,
        tokens: &TokenSet,
        identity: IdentityCheck<'_>,
    ) -> Result<Arc<StoredConnection>, KeeperError> {
        self.store_connection(key, tokens, Some(now_epoch()), identity)
            .await
    }

    /// The stored identity of a connection (whose account it is), if known.
    pub async fn connection_account(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionAccount>, KeeperError> {
        Ok(self.inner.store.connection_account(key).await?)
    }

    /// Asks the provider whose account a token set belongs to: the catalog's identity request
    /// (`userinfo_url`) when the connector type has one, else the claims of the exchange's ID
    /// token. `None` when neither is available or the request fails: the identity of a
    /// connection is information, never a reason to refuse it (the failure is logged).
    async fn identify(
        &self,
        key: &ConnectionKey,
        ct: &ConnectorType,
        tokens: &TokenSet,
        id_token: Option<&Secret>,
    ) -> Option<AccountIdentity> {
        use crate::connectors::identity;
        let organisation = ct.userinfo_organisation_field.as_deref();
        if let Some(template) = &ct.userinfo_url {
            let answer = match ct.expand_url(template, &tokens.metadata) {
                Ok(url) => {
                    self.inner
                        .provider
                        .userinfo(ct, &url, &tokens.access_token)
                        .await
                }
                Err(e) => Err(RefreshError::NotConfigured(e)),
            };
            match answer {
                Ok(claims) => return Some(identity::from_claims(&claims, organisation)),
                Err(error) => {
                    tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, error = %error, "the identity request failed; the account of the connection is unknown");
                }
            }
        }
        let claims = identity::id_token_claims(id_token?.expose())?;
        Some(identity::from_claims(&claims, organisation))
    }

    async fn store_connection(
        &self,
        key: &ConnectionKey,
        tokens: &TokenSet,
        obtained_at: Option<i64>,
        check: IdentityCheck<'_>,
    ) -> Result<Arc<StoredConnection>, KeeperError> {
        // Placeholder values (a self-managed host) are checked here too, not only at use.
        let ct = self.connector_type(key)?.clone();
        ct.check_metadata(&tokens.metadata)
            .map_err(KeeperError::InvalidRequest)?;
        // Only a connector type this deployment uses (its client configured, or the
        // connection's own) is asked: an unconfigured one makes no provider call at all.
        let account =
            if ct.kind == Kind::Oauth2 && (ct.has_credentials() || tokens.client.is_some()) {
                self.identify(key, &ct, tokens, check.id_token)
                    .await
                    .filter(|a| !a.is_empty())
            } else {
                None
            };
        let known = self.inner.store.connection_account(key).await?;
        let known_id = known.as_ref().and_then(|k| k.account.id.clone());
        let new_id = account.as_ref().and_then(|a| a.id.clone());
        if check.same_account {
            if let Some(old) = &known_id {
                match &new_id {
                    Some(new) if new == old => {}
                    Some(_) => {
                        return Err(KeeperError::AccountMismatch(
                            "you signed in with another account than the one this connection \
                             belongs to; nothing was changed. Sign in with the same account and \
                             open the link again"
                                .into(),
                        ))
                    }
                    None => {
                        return Err(KeeperError::AccountMismatch(
                            "the provider did not say which account you signed in with, so it \
                             could not be checked against the connection's; nothing was changed"
                                .into(),
                        ))
                    }
                }
            }
        }
        let mut tokens = tokens.clone();
        tokens.refresh_expires_at = match tokens.refresh_token {
            Some(_) => super::lifetime::at_grant(&ct, tokens.refresh_expires_at, now_epoch()),
            None => None,
        };
        let ticket = self.inner.cache.ticket();
        let stored = self
            .inner
            .store
            .upsert_connection(key, &tokens, obtained_at)
            .await?;
        self.inner.scoped.forget(key);
        let changed_from = match (&known_id, &new_id) {
            (Some(old), Some(new)) if old != new && stored.version > 1 => Some(old.clone()),
            _ => None,
        };
        if let Some(account) = &account {
            let previous_account_id = changed_from.clone().or_else(|| {
                // The same account again: a recorded change stays on record.
                known
                    .as_ref()
                    .filter(|_| stored.version > 1 && known_id == new_id)
                    .and_then(|k| k.previous_account_id.clone())
            });
            self.inner
                .store
                .save_connection_account(
                    key,
                    &ConnectionAccount {
                        account: account.clone(),
                        previous_account_id,
                        updated_at: now_epoch(),
                    },
                )
                .await?;
        } else if stored.version == 1 && known.is_some() {
            // A new connection does not inherit the identity of a deleted one.
            self.inner.store.delete_connection_account(key).await?;
        }
        if let Some(id) = account.as_ref().and_then(|a| a.id.as_ref()) {
            // Whose account, in the audit trail: its id only (never the e-mail).
            let action = if changed_from.is_some() {
                "connection.account_changed"
            } else {
                "connection.account"
            };
            let mut event = audit::event("tokenbox", action, Some(key), "ok", None);
            event.subject = Some(id.clone());
            self.inner.audit.record(event).await;
        }
        if stored.version == 1 {
            self.inner
                .webhooks
                .emit_with_account(ConnectionEvent::Created, key, None, account.as_ref())
                .await;
        } else if let Some(previous) = &changed_from {
            tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, "the connection was reconnected with a different account");
            self.inner
                .webhooks
                .emit_with_account(
                    ConnectionEvent::AccountChanged,
                    key,
                    Some(&format!("the account changed from {previous}")),
                    account.as_ref(),
                )
                .await;
        }
        self.warn_if_due(&stored).await;
        Ok(self.inner.cache.put(ticket, stored))
    }

    /// The early-warning window (`reauthorization_warning_days`) in seconds.
    pub fn warning_window(&self) -> i64 {
        self.inner.warning_window
    }

    /// Sends `connection.reauthorization_due` when the connection's refresh token dies within
    /// the warning window and no warning went out for that deadline (by any replica).
    async fn warn_if_due(&self, stored: &StoredConnection) {
        let deadline = stored.tokens.refresh_expires_at;
        if stored.status != crate::domain::ConnectionStatus::Active
            || !super::lifetime::reauthorization_due(
                deadline,
                stored.warned_refresh_expires_at,
                now_epoch(),
                self.inner.warning_window,
            )
        {
            return;
        }
        if let Some(deadline) = deadline {
            self.send_warning(&stored.key, deadline).await;
        }
    }

    async fn send_warning(&self, key: &ConnectionKey, deadline: i64) {
        match self
            .inner
            .store
            .mark_reauthorization_warned(key, deadline)
            .await
        {
            Ok(true) => {
                tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, refresh_expires_at = deadline, "refresh token expires soon: reauthorization due");
                let detail = format!(
                    "the refresh token expires at {deadline} (epoch seconds); the tenant must reconnect before then"
                );
                self.inner
                    .webhooks
                    .emit(ConnectionEvent::ReauthorizationDue, key, Some(&detail))
                    .await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, error = %e, "could not record a reauthorization warning")
            }
        }
    }

    /// The background refresher's pass: warns about every connection whose refresh token
    /// entered the warning window since the last pass. Returns how many were warned about.
    pub async fn warn_due_reauthorizations(&self) -> Result<usize, crate::store::StoreError> {
        let before = now_epoch().saturating_add(self.inner.warning_window);
        let due = self
            .inner
            .store
            .unwarned_reauthorizations(before, 500)
            .await?;
        for (key, deadline) in &due {
            self.send_warning(key, *deadline).await;
        }
        Ok(due.len())
    }

    /// Saves a connection from what `PUT .../connection` carries, by the connector type's
    /// kind: a token set is stored as given; an API key or a username and password is checked
    /// with the catalog's verification request first; a minting kind mints its first token.
    /// Nothing is stored when the provider refuses the credential (`InvalidCredentials`).
    pub async fn connect(
        &self,
        key: &ConnectionKey,
        input: CredentialInput,
    ) -> Result<Arc<StoredConnection>, KeeperError> {
        let ct = self.connector_type(key)?.clone();
        let now = now_epoch();
        let tokens = match input {
            CredentialInput::Tokens(set) => {
                let tokens = set
                    .into_token_set(now)
                    .map_err(KeeperError::InvalidRequest)?;
                return self.save_connection(key, &tokens).await;
            }
            CredentialInput::ApiKey { api_key, metadata } => static_tokens(&ct, api_key, metadata),
            CredentialInput::Basic {
                username,
                password,
                metadata,
            } => {
                use base64::Engine;
                let pair = format!("{}:{}", username.expose(), password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                static_tokens(&ct, crate::secret::Secret::new(encoded), metadata)
            }
            CredentialInput::Mint { metadata, client } => {
                return self.mint_first(key, &ct, None, metadata, client).await
            }
            CredentialInput::ServiceAccount { renewal, metadata } => {
                return self
                    .mint_first(key, &ct, Some(renewal), metadata, None)
                    .await
            }
            CredentialInput::Installation {
                installation_id,
                mut metadata,
            } => {
                metadata.insert("installation_id".into(), installation_id.into());
                return self.mint_first(key, &ct, None, metadata, None).await;
            }
        };
        ct.check_metadata(&tokens.metadata)
            .map_err(KeeperError::InvalidRequest)?;
        if let Some(template) = &ct.verify_url {
            let url = ct
                .expand_url(template, &tokens.metadata)
                .map_err(KeeperError::InvalidRequest)?;
            let (headers, query) = ct.credential_headers(&tokens);
            match self.inner.provider.verify(&ct, &url, &headers, &query).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(KeeperError::InvalidCredentials(format!(
                        "the provider refused this credential for {} (its verification request answered 401 or 403); nothing was stored",
                        ct.display_name
                    )))
                }
                Err(e) => return Err(refused_credential(&ct, e)),
            }
        }
        self.save_obtained_connection(key, &tokens, IdentityCheck::default())
            .await
    }

    /// Mints the first token of a connection of a minting kind, and stores it with the
    /// connection's renewal secret (a service-account key), metadata and own OAuth client
    /// (`client`, used instead of the operator's). Nothing is stored when the provider refuses.
    async fn mint_first(
        &self,
        key: &ConnectionKey,
        ct: &ConnectorType,
        renewal: Option<crate::secret::Secret>,
        metadata: crate::domain::Metadata,
        client: Option<crate::domain::TenantClient>,
    ) -> Result<Arc<StoredConnection>, KeeperError> {
        ct.check_metadata(&metadata)
            .map_err(KeeperError::InvalidRequest)?;
        let seed = TokenSet {
            refresh_expires_at: None,
            access_token: crate::secret::Secret::new(String::new()),
            refresh_token: renewal,
            token_type: None,
            expires_at: None,
            scope: None,
            metadata,
            client,
        };
        let kind = kind::of(ct);
        let minted = kind
            .obtain(&self.inner.provider, ct, &seed, self.inner.request_timeout)
            .await
            .map_err(|e| refused_credential(ct, e))?;
        let mut tokens = kind.merge(&seed, minted);
        tokens.client = seed.client;
        self.save_obtained_connection(key, &tokens, IdentityCheck::default())
            .await
    }

    /// A GitHub App installation token limited to `scope` (`binb-token?repositories=...&
    /// permissions=...`): the connection is served as `retrieve_token` would (so a removed
    /// installation is reported the same way), then the scoped token is taken from this
    /// process's cache or minted, once per connection and scope however many callers ask.
    pub async fn retrieve_scoped(
        &self,
        key: &ConnectionKey,
        request: TokenRequest,
        scope: &GithubScope,
    ) -> Result<ServedToken, KeeperError> {
        let ct = self.connector_type(key)?.clone();
        if ct.kind != crate::connectors::Kind::GithubApp {
            return Err(KeeperError::InvalidRequest(format!(
                "repositories and permissions scope GitHub App tokens; connector type '{}' is of kind {}",
                ct.name,
                ct.kind.as_str()
            )));
        }
        let base = self.retrieve_token(key, TokenRequest::default()).await?;
        let slot = self.inner.scoped.slot(key, scope);
        let mut cached = slot.lock().await;
        let now = now_epoch();
        let within = request
            .min_validity
            .unwrap_or(0)
            .max(self.inner.refresh_margin.min(1800))
            .max(1);
        let fresh = cached
            .as_ref()
            .filter(|t| !request.force_refresh && t.valid_for(now, within));
        let (tokens, refreshed) = match fresh {
            Some(tokens) => (tokens.clone(), false),
            None => {
                let minted = kind::GithubAppInstallation::mint_scoped(
                    &self.inner.provider,
                    &ct,
                    &base.connection.tokens,
                    &scope.body(),
                    self.inner.request_timeout,
                )
                .await
                .map_err(|e| scoped_failure(&ct, e))?;
                let mut tokens = minted;
                tokens.metadata = base.connection.tokens.metadata.clone();
                *cached = Some(tokens.clone());
                (tokens, true)
            }
        };
        let mut connection = (*base.connection).clone();
        connection.tokens = tokens;
        Ok(ServedToken {
            connection: Arc::new(connection),
            refreshed,
        })
    }

    /// The health check of one connection (issue 16): the connector type's identity request
    /// (`userinfo_url`) with the access token. Refused (401 or 403), the token is refreshed
    /// (forced) and asked again: a refresh refused with `invalid_grant` marks the connection
    /// `reauthorization_required` (the refresh path emits its webhook), as does a second
    /// refusal after a successful refresh. Returns whether the grant looked alive.
    pub async fn health_check(&self, key: &ConnectionKey) -> Result<bool, KeeperError> {
        let ct = self.connector_type(key)?.clone();
        let Some(userinfo) = ct.userinfo_url.clone() else {
            return Ok(true);
        };
        let probe = |tokens: crate::domain::TokenSet| {
            let ct = ct.clone();
            let userinfo = userinfo.clone();
            let provider = self.inner.provider.clone();
            async move {
                let url = ct
                    .expand_url(&userinfo, &tokens.metadata)
                    .map_err(KeeperError::InvalidRequest)?;
                let (headers, query) = ct.credential_headers(&tokens);
                provider
                    .verify(&ct, &url, &headers, &query)
                    .await
                    .map_err(|e| refused_credential(&ct, e))
            }
        };
        let served = match self.retrieve_token(key, TokenRequest::default()).await {
            Ok(served) => served,
            Err(KeeperError::ReauthorizationRequired(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if probe(served.connection.tokens.clone()).await? {
            return Ok(true);
        }
        tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, "health check: the identity request refused the access token; refreshing");
        let forced = TokenRequest {
            min_validity: None,
            force_refresh: true,
        };
        let refreshed = match self.retrieve_token(key, forced).await {
            Ok(served) => served,
            Err(KeeperError::ReauthorizationRequired(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if probe(refreshed.connection.tokens.clone()).await? {
            return Ok(true);
        }
        let reason = format!(
            "the provider refused a freshly refreshed access token of {} (its identity request answered 401 or 403): the grant was revoked, the tenant must reconnect",
            ct.display_name
        );
        self.mark_revoked(key, &reason).await?;
        Ok(false)
    }

    /// Marks a connection `reauthorization_required` and emits the webhook event.
    async fn mark_revoked(&self, key: &ConnectionKey, reason: &str) -> Result<(), KeeperError> {
        let inner = &self.inner;
        let _flight = inner.flights.acquire(key).await;
        let Some(guard) = inner.store.begin_refresh(key, inner.lease_seconds).await? else {
            return Err(not_connected(key));
        };
        if guard.current().status == ConnectionStatus::ReauthorizationRequired {
            guard.release().await;
            return Ok(());
        }
        tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, "grant revoked: reauthorization required");
        let written = guard
            .finish(RefreshWrite::Revoked {
                reason: reason.to_string(),
            })
            .await?;
        inner.cache.remove(key);
        if written.is_some() {
            inner
                .webhooks
                .emit(ConnectionEvent::ReauthorizationRequired, key, Some(reason))
                .await;
        }
        Ok(())
    }

    /// The background refresher's pass: claims connections due for a health check (at most
    /// `limit` per pass, the longest unchecked first, so they spread over passes) and runs
    /// them. Returns how many ran.
    pub async fn run_health_checks(
        &self,
        interval_seconds: i64,
        limit: i64,
    ) -> Result<usize, crate::store::StoreError> {
        let types: Vec<String> = self
            .inner
            .catalog
            .iter()
            .filter(|ct| ct.userinfo_url.is_some())
            .map(|ct| ct.name.to_string())
            .collect();
        let now = now_epoch();
        let keys = self
            .inner
            .store
            .claim_health_checks(&types, now, now - interval_seconds, limit)
            .await?;
        for key in &keys {
            match self.health_check(key).await {
                Ok(true) => {
                    tracing::debug!(app_id = %key.app_id, connector_type = %key.connector_type, "health check passed")
                }
                Ok(false) => {
                    tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, "health check: reauthorization required")
                }
                Err(e) => {
                    tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, error = %e, "health check could not run")
                }
            }
        }
        Ok(keys.len())
    }

    /// Checks a connection's credential at the provider now (`POST .../connection/check`). A
    /// static credential (API key, Basic) runs the catalog's verification request: refused
    /// (401 or 403), the connection becomes `reauthorization_required` and the webhook event
    /// is emitted. Other kinds obtain a token as `binb-token` would.
    pub async fn check_connection(&self, key: &ConnectionKey) -> Result<CheckOutcome, KeeperError> {
        let ct = self.connector_type(key)?.clone();
        let verify = match (&ct.verify_url, ct.kind.is_static()) {
            (Some(url), true) => url.clone(),
            _ => {
                return match self.retrieve_token(key, TokenRequest::default()).await {
                    Ok(_) => Ok(CheckOutcome::Valid),
                    Err(KeeperError::ReauthorizationRequired(reason)) => {
                        Ok(CheckOutcome::ReauthorizationRequired(reason))
                    }
                    Err(other) => Err(other),
                }
            }
        };
        let inner = &self.inner;
        let _flight = inner.flights.acquire(key).await;
        let Some(guard) = inner.store.begin_refresh(key, inner.lease_seconds).await? else {
            return Err(not_connected(key));
        };
        let current = guard.current().clone();
        if current.status == ConnectionStatus::ReauthorizationRequired {
            guard.release().await;
            let reason = current.last_error.clone().unwrap_or_default();
            return Ok(CheckOutcome::ReauthorizationRequired(reason));
        }
        let checked = match ct.expand_url(&verify, &current.tokens.metadata) {
            Ok(url) => {
                let (headers, query) = ct.credential_headers(&current.tokens);
                inner.provider.verify(&ct, &url, &headers, &query).await
            }
            Err(e) => Err(RefreshError::NotConfigured(e)),
        };
        match checked {
            Ok(true) => {
                guard.release().await;
                Ok(CheckOutcome::Valid)
            }
            Ok(false) => {
                let reason = format!(
                    "the provider refused the stored credential of {} (its verification request answered 401 or 403): the tenant must give a new one",
                    ct.display_name
                );
                tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, "stored credential refused: reauthorization required");
                let written = guard
                    .finish(RefreshWrite::Revoked {
                        reason: reason.clone(),
                    })
                    .await?;
                inner.cache.remove(key);
                if written.is_some() {
                    inner
                        .webhooks
                        .emit(ConnectionEvent::ReauthorizationRequired, key, Some(&reason))
                        .await;
                }
                Ok(CheckOutcome::ReauthorizationRequired(reason))
            }
            Err(error) => {
                guard.release().await;
                Err(refused_credential(&ct, error))
            }
        }
    }

    /// Returns a token valid for at least `min_validity` (default: the refresh margin), refreshing
    /// it first when it expires within `max(min_validity, refresh_margin)`.
    ///
    /// The hot path (a cached token that is still good) touches neither the database nor the
    /// provider. A refresh runs in its own task, so a caller that gives up (timeout, closed
    /// connection) never cancels a provider call whose rotated refresh token must be stored.
    pub async fn retrieve_token(
        &self,
        key: &ConnectionKey,
        request: TokenRequest,
    ) -> Result<ServedToken, KeeperError> {
        self.connector_type(key)?;
        if let Some(min) = request.min_validity {
            if min < 0 {
                return Err(KeeperError::InvalidRequest(
                    "min_validity must not be negative".into(),
                ));
            }
        }
        let seen = match self.inner.cache.get(key) {
            Some(hit) => Some(hit),
            None => {
                let ticket = self.inner.cache.ticket();
                self.inner
                    .store
                    .load(key)
                    .await?
                    .map(|c| self.inner.cache.put(ticket, c))
            }
        };
        let Some(seen) = seen else {
            return Err(not_connected(key));
        };
        if seen.status == ConnectionStatus::ReauthorizationRequired {
            return Err(reauthorization(&seen));
        }
        if decision::fresh_enough(self.inner.refresh_margin, &seen, request, now_epoch()) {
            return Ok(ServedToken {
                connection: seen,
                refreshed: false,
            });
        }

        let keeper = self.clone();
        let task_key = key.clone();
        let seen_version = seen.version;
        if self.inner.tasks.is_closed() {
            return Err(KeeperError::ProviderUnavailable {
                message: "the server is shutting down; retry on another replica".into(),
                retry_after: 1,
            });
        }
        // The refresh's spans are children of the request's (a disabled span without traces).
        let task = self.inner.tasks.spawn(
            async move {
                keeper
                    .refresh_flow(&task_key, request, None, seen_version)
                    .await
            }
            .instrument(tracing::Span::current()),
        );
        match tokio::time::timeout(self.inner.request_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => {
                tracing::error!(error = %join_error, "refresh task failed");
                Err(KeeperError::Internal)
            }
            Err(_) => Err(KeeperError::ProviderUnavailable {
                message: format!(
                    "the refresh did not finish within {} seconds; it goes on in the background",
                    self.inner.request_timeout.as_secs()
                ),
                retry_after: FAILURE_RETRY_AFTER,
            }),
        }
    }

    /// Refreshes a connection claimed by the background refresher, through the same flight,
    /// lease and re-read as a request. Skips it when someone refreshed it since the claim.
    pub async fn refresh_claimed(
        &self,
        claimed: &StoredConnection,
        window: i64,
        keepalive_before: i64,
    ) -> Result<bool, KeeperError> {
        let now = now_epoch();
        let expiring = claimed
            .tokens
            .expires_at
            .is_some_and(|at| at - now <= window);
        // Refresh when past half the lifetime or within the window, whichever comes later, so
        // short-lived tokens are not refreshed on every pass.
        let refresh_within = match (claimed.tokens.expires_at, claimed.refreshed_at) {
            (Some(at), Some(refreshed)) => window.min((at - refreshed) / 2),
            _ => window,
        };
        let keepalive =
            !expiring && claimed.refreshed_at.unwrap_or(claimed.created_at) <= keepalive_before;
        let request = TokenRequest {
            min_validity: None,
            force_refresh: keepalive,
        };
        let served = self
            .refresh_flow(&claimed.key, request, Some(refresh_within), claimed.version)
            .await?;
        Ok(served.connection.tokens.access_token != claimed.tokens.access_token)
    }

    /// The slow path, one flight per connection at a time: take the lease, decide, act. Every
    /// branch gives the lease back exactly once: `release` without a write, or `finish` with
    /// one.
    async fn refresh_flow(
        &self,
        key: &ConnectionKey,
        request: TokenRequest,
        refresh_within: Option<i64>,
        seen_version: i64,
    ) -> Result<ServedToken, KeeperError> {
        let inner = &self.inner;
        let ct = self.connector_type(key)?.clone();
        tracing::debug!(app_id = %key.app_id, connector_type = %key.connector_type, "joining the refresh flight");
        let _flight = inner.flights.acquire(key).await;
        // A caller that queued behind this process's refresh of the connection is served what
        // it stored, without a lease of its own (two writes each otherwise: a storm's callers
        // would queue on the database rather than on the provider).
        if refresh_within.is_none() {
            if let Some(hit) = inner.cache.get(key).filter(|hit| {
                hit.version != seen_version
                    && decision::fresh_enough(inner.refresh_margin, hit, request, now_epoch())
            }) {
                return Ok(ServedToken {
                    connection: hit,
                    refreshed: true,
                });
            }
        }
        let ticket = inner.cache.ticket();
        let Some(guard) = inner.store.begin_refresh(key, inner.lease_seconds).await? else {
            inner.cache.remove(key);
            return Err(not_connected(key));
        };
        let current = guard.current().clone();
        let kind = kind::of(&ct);
        let decision = decide(&Situation {
            current: &current,
            seen_version,
            request,
            margin: inner.refresh_margin,
            refresh_within,
            // A connection with its own OAuth client needs none of the operator's.
            has_credentials: ct.has_credentials() || current.tokens.client.is_some(),
            renewable: kind.renewable(&current),
            now: now_epoch(),
        });
        match decision {
            Decision::Serve | Decision::ServeStale { .. } => {
                guard.release().await;
                if decision == (Decision::ServeStale { backing_off: true }) {
                    inner.metrics.backoff();
                }
                Ok(ServedToken {
                    connection: inner.cache.put(ticket, current),
                    refreshed: decision == Decision::Serve,
                })
            }
            Decision::Refuse(refusal) => {
                guard.release().await;
                let connection = inner.cache.put(ticket, current);
                Err(self.refusal(refusal, &connection, &ct))
            }
            Decision::MarkRevoked => {
                let reason = "the access token expired and the provider issued no refresh token";
                let write = guard.finish(RefreshWrite::Revoked {
                    reason: reason.into(),
                });
                self.write_revoked(key, write).await
            }
            Decision::CallProvider => {
                let hard_min = decision::hard_min(inner.refresh_margin, &current, request);
                match self.call_provider(kind, &ct, &current).await {
                    Ok(outcome) => self.settle(guard, kind, current, outcome, hard_min).await,
                    Err(busy) => {
                        guard.release().await;
                        Err(busy)
                    }
                }
            }
        }
    }

    /// The answer to a caller refused without a provider call.
    fn refusal(
        &self,
        refusal: Refusal,
        connection: &StoredConnection,
        ct: &ConnectorType,
    ) -> KeeperError {
        match refusal {
            Refusal::ReauthorizationRequired => reauthorization(connection),
            Refusal::BackingOff { retry_after } => {
                self.inner.metrics.backoff();
                failure_during_backoff(connection, retry_after)
            }
            Refusal::MinValidityTooLong {
                min_validity,
                lifetime,
            } => KeeperError::InvalidRequest(format!(
                "min_validity={min_validity} exceeds the lifetime of this provider's access tokens ({lifetime} seconds)"
            )),
            Refusal::ConnectorNotConfigured => {
                KeeperError::ConnectorNotConfigured(ct.name.to_string())
            }
        }
    }

    /// Calls the provider for a fresh credential, within the lease: through the circuit breaker
    /// of the connector type and token host, a provider-call slot, and a deadline a few seconds
    /// before the lease ends. `Err` when no slot could be had (nothing reached the provider).
    async fn call_provider(
        &self,
        kind: &dyn CredentialKind,
        ct: &Arc<ConnectorType>,
        current: &StoredConnection,
    ) -> Result<Result<TokenSet, RefreshError>, KeeperError> {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        // One circuit per connector type and token host: a tenant's broken self-hosted
        // instance (Zendesk, GitLab) does not pause the other tenants of that type.
        let host = kind
            .endpoint(ct, current)
            .and_then(|url| oauth2::url::Url::parse(&url).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let circuit = format!("{}|{host}", ct.name);
        // The span of the call: a child of the request's when a request started the refresh,
        // a root of its own for the background refresher. `attempts` is recorded by the
        // provider client.
        let span = tracing::info_span!(
            target: tracing_otel::TARGET,
            "provider_call",
            otel.status_code = tracing::field::Empty,
            connector_type = %ct.name,
            kind = kind.name(),
            server.address = host.as_str(),
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let outcome = match inner.breakers.check(&circuit) {
            Err(wait) => {
                span.record("outcome", "circuit_open");
                Err(RefreshError::Unavailable {
                    reason: format!(
                        "refreshes of {} are paused after repeated failures (circuit open)",
                        ct.name
                    ),
                    retry_after: Some(wait),
                    retryable: false,
                })
            }
            Ok(()) => {
                let outcome = self
                    .call_within(kind, ct, current, &host, started)
                    .instrument(span.clone())
                    .await
                    .inspect_err(|_| {
                        span.record("outcome", "no_slot");
                        span.record("otel.status_code", "error");
                    })?;
                span.record("outcome", trace_outcome(&outcome));
                inner.breakers.record(
                    &circuit,
                    matches!(outcome, Err(RefreshError::Unavailable { .. })),
                );
                outcome
            }
        };
        if outcome.is_err() {
            span.record("otel.status_code", "error");
        }
        let outcome_name = match &outcome {
            Ok(_) => "success",
            Err(RefreshError::Revoked { .. }) => "revoked",
            Err(RefreshError::Unavailable { .. }) => FailureKind::Unavailable.as_str(),
            Err(RefreshError::InvalidClient) => "invalid_client",
            Err(_) => "error",
        };
        inner.metrics.refresh(
            ct.name.as_str(),
            outcome_name,
            started.elapsed().as_secs_f64(),
        );
        inner
            .audit
            .record(audit::event(
                "tokenbox",
                "token.refresh",
                Some(&current.key),
                outcome_name,
                None,
            ))
            .await;
        Ok(outcome)
    }

    /// The provider call itself: a provider-call slot toward `host` (and one overall), then
    /// the refresh grant, all before the lease ends (`started` is when the call began). `Err`
    /// when no slot could be had: nothing reached the provider, so no back-off is recorded.
    async fn call_within(
        &self,
        kind: &dyn CredentialKind,
        ct: &Arc<ConnectorType>,
        current: &StoredConnection,
        host: &str,
        started: std::time::Instant,
    ) -> Result<Result<TokenSet, RefreshError>, KeeperError> {
        let inner = &self.inner;
        let lease = inner.lease_seconds;
        let deadline = Duration::from_secs((lease - (lease / 4).min(5)).max(1) as u64);
        let wait = deadline.min(inner.request_timeout);
        let Ok(_slots) = tokio::time::timeout(wait, inner.slots.acquire(host)).await else {
            inner.metrics.backoff();
            return Err(KeeperError::ProviderUnavailable {
                message: format!(
                    "too many refreshes toward {} are in progress; retry shortly",
                    ct.name
                ),
                retry_after: FAILURE_RETRY_AFTER,
            });
        };
        let budget = deadline.saturating_sub(started.elapsed());
        let call = kind.obtain(
            &inner.provider,
            ct,
            &current.tokens,
            inner.request_timeout.min(budget),
        );
        Ok(tokio::time::timeout(budget, call)
            .await
            .unwrap_or_else(|_| {
                Err(RefreshError::Unavailable {
                    reason: "the provider did not answer before the refresh lease ended".into(),
                    retry_after: None,
                    retryable: false,
                })
            }))
    }

    /// Writes the provider's answer (which gives the lease back) and answers the caller.
    async fn settle(
        &self,
        guard: Box<dyn RefreshGuard>,
        kind: &dyn CredentialKind,
        current: StoredConnection,
        outcome: Result<TokenSet, RefreshError>,
        hard_min: i64,
    ) -> Result<ServedToken, KeeperError> {
        let inner = &self.inner;
        let key = &current.key;
        match outcome {
            Ok(tokens) => {
                let mut tokens = kind.merge(&current.tokens, tokens);
                tokens.client = current.tokens.client.clone();
                // Never `?` here: a rotated refresh token must be stored whatever happens.
                if let (Some(_), Ok(ct)) = (&tokens.refresh_token, self.connector_type(key)) {
                    let after = super::lifetime::after_refresh(
                        ct,
                        tokens.refresh_expires_at,
                        current.tokens.refresh_expires_at,
                        current.created_at,
                        now_epoch(),
                    );
                    if after.cannot_extend {
                        tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, refresh_expires_at = ?after.refresh_expires_at, "refreshed, but the refresh token's absolute lifetime cannot be extended: the tenant must reconnect before it ends");
                    }
                    tokens.refresh_expires_at = after.refresh_expires_at;
                }
                let ticket = inner.cache.ticket();
                let Some(stored) = guard.finish(RefreshWrite::Refreshed(tokens)).await? else {
                    return self.reread(key, hard_min).await;
                };
                if current.refresh_failures > 0 {
                    inner
                        .webhooks
                        .emit(ConnectionEvent::Recovered, key, None)
                        .await;
                }
                tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, "token refreshed");
                self.warn_if_due(&stored).await;
                let connection = inner.cache.put(ticket, stored);
                if !connection.tokens.is_valid(now_epoch()) {
                    // Stored all the same: a rotated refresh token must never be lost.
                    return Err(KeeperError::ProviderError {
                        message: "the provider issued an access token that has already expired (expires_in of zero or less)".into(),
                        retry_after: Some(FAILURE_RETRY_AFTER),
                    });
                }
                Ok(ServedToken {
                    connection,
                    refreshed: true,
                })
            }
            Err(RefreshError::Revoked { code }) => {
                let interrupted = current.refresh_interrupted_at.is_some();
                tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, code = %code, after_interrupted_refresh = interrupted, "grant revoked: reauthorization required");
                let reason = if interrupted {
                    format!(
                        "the provider refused the refresh token ({code}): an earlier refresh of this connection was interrupted (a process stopped while the provider answered) and most likely spent it; the tenant must reconnect"
                    )
                } else {
                    format!(
                        "the provider refused the refresh token ({code}): the tenant must reconnect"
                    )
                };
                let write = guard.finish(RefreshWrite::Revoked {
                    reason: reason.clone(),
                });
                let result = self.write_revoked(key, write).await;
                if matches!(result, Err(KeeperError::ReauthorizationRequired(_))) {
                    inner
                        .webhooks
                        .emit(ConnectionEvent::ReauthorizationRequired, key, Some(&reason))
                        .await;
                }
                result
            }
            Err(error) => self.settle_failure(guard, current, error, hard_min).await,
        }
    }

    /// Records a failed refresh and its back-off; serves the stored token when it still meets
    /// what the caller needs.
    async fn settle_failure(
        &self,
        guard: Box<dyn RefreshGuard>,
        current: StoredConnection,
        error: RefreshError,
        hard_min: i64,
    ) -> Result<ServedToken, KeeperError> {
        let inner = &self.inner;
        let key = &current.key;
        let (kind, provider_wait) = match &error {
            RefreshError::Unavailable { retry_after, .. } => {
                (FailureKind::Unavailable, *retry_after)
            }
            _ => (FailureKind::ProviderError, None),
        };
        let backoff = backoff_after(
            provider_wait.unwrap_or(0),
            current.refresh_failures,
            inner.backoff_base,
        );
        // Counted from the moment of the failure (the retries took time), rounded up.
        let retry_after = backoff as u64 + 1;
        let as_error = match &error {
            RefreshError::Unavailable { reason, .. } => KeeperError::ProviderUnavailable {
                message: format!("the provider is unavailable: {reason}"),
                retry_after,
            },
            other => KeeperError::ProviderError {
                message: other.to_string(),
                retry_after: Some(retry_after),
            },
        };
        tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, error = %error, "refresh failed");
        let ticket = inner.cache.ticket();
        let written = guard
            .finish(RefreshWrite::Failed {
                reason: error.to_string(),
                kind,
                backoff_until: now_epoch() + retry_after as i64,
            })
            .await;
        if current.refresh_failures == 0 {
            // The first failure after a success; a recovery event will follow it.
            inner
                .webhooks
                .emit(
                    ConnectionEvent::RefreshFailed,
                    key,
                    Some(&error.to_string()),
                )
                .await;
        }
        let connection = match written {
            Ok(Some(stored)) => inner.cache.put(ticket, stored),
            Ok(None) => return self.reread(key, hard_min).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot record a refresh failure");
                Arc::new(current)
            }
        };
        // Serve a token that is still valid rather than fail, unless it cannot meet what the
        // caller asked for.
        if connection.tokens.valid_for(now_epoch(), hard_min) {
            Ok(ServedToken {
                connection,
                refreshed: false,
            })
        } else {
            Err(as_error)
        }
    }

    async fn write_revoked(
        &self,
        key: &ConnectionKey,
        write: impl std::future::Future<Output = Result<Option<StoredConnection>, StoreError>>,
    ) -> Result<ServedToken, KeeperError> {
        // The write is a future not yet started: the ticket comes before it.
        let ticket = self.inner.cache.ticket();
        match write.await? {
            Some(stored) => Err(reauthorization(&self.inner.cache.put(ticket, stored))),
            // Someone else wrote meanwhile (another replica refreshed, or a re-import): the
            // refusal was a lost race, not a revocation.
            None => self.reread(key, 1).await,
        }
    }

    async fn reread(&self, key: &ConnectionKey, hard_min: i64) -> Result<ServedToken, KeeperError> {
        let ticket = self.inner.cache.ticket();
        let Some(stored) = self.inner.store.load(key).await? else {
            self.inner.cache.remove(key);
            return Err(not_connected(key));
        };
        let connection = self.inner.cache.put(ticket, stored);
        if connection.status == ConnectionStatus::ReauthorizationRequired {
            return Err(reauthorization(&connection));
        }
        if !connection.tokens.valid_for(now_epoch(), hard_min) {
            return Err(KeeperError::ProviderUnavailable {
                message: "the token changed during the refresh and is not valid; retry".into(),
                retry_after: 1,
            });
        }
        Ok(ServedToken {
            connection,
            refreshed: true,
        })
    }
}

/// How long a failing connection is left alone (by requests and the background refresher):
/// `base` doubling with each consecutive failure up to an hour, and at least the provider's
/// `Retry-After`.
/// The outcome of a provider call as its span says it: `ok`, the OAuth code of a revoked grant
/// (`invalid_grant`, ...), `transient`, `invalid_client`, `rejected` or `not_configured` (and
/// `circuit_open` or `no_slot` when the provider was not called).
fn trace_outcome(outcome: &Result<TokenSet, RefreshError>) -> &str {
    match outcome {
        Ok(_) => "ok",
        Err(RefreshError::Revoked { code }) => code,
        Err(RefreshError::Unavailable { .. }) => "transient",
        Err(RefreshError::InvalidClient) => "invalid_client",
        Err(RefreshError::Rejected(_)) => "rejected",
        Err(RefreshError::NotConfigured(_)) => "not_configured",
    }
}

fn backoff_after(retry_after: u64, failures: i64, base: i64) -> i64 {
    let exponential = base.max(1).saturating_mul(1 << failures.clamp(0, 12));
    exponential.min(3600).max(retry_after.min(3600) as i64)
}

/// The answer to a caller while a connection backs off after a failed refresh.
fn failure_during_backoff(connection: &StoredConnection, retry_after: u64) -> KeeperError {
    let reason = connection
        .last_error
        .clone()
        .unwrap_or_else(|| "the last refresh failed".into());
    match connection.last_error_kind {
        Some(FailureKind::ProviderError) => KeeperError::ProviderError {
            message: format!("{reason} (retrying in {retry_after} s)"),
            retry_after: Some(retry_after),
        },
        _ => KeeperError::ProviderUnavailable {
            message: format!("the provider is unavailable: {reason} (retrying in {retry_after} s)"),
            retry_after,
        },
    }
}

/// The token set of a static credential: served as given, never expiring.
fn static_tokens(
    ct: &ConnectorType,
    secret: crate::secret::Secret,
    metadata: crate::domain::Metadata,
) -> TokenSet {
    let mut tokens = TokenSet {
        refresh_expires_at: None,
        access_token: secret,
        refresh_token: None,
        token_type: None,
        expires_at: None,
        scope: None,
        metadata,
        client: None,
    };
    tokens.token_type = Some(ct.token_type(&tokens));
    tokens
}

/// The answer to a connection whose credential could not be checked or used at connect time.
fn refused_credential(ct: &ConnectorType, error: RefreshError) -> KeeperError {
    match error {
        RefreshError::InvalidClient | RefreshError::Revoked { .. } => {
            KeeperError::InvalidCredentials(format!(
                "the provider refused the credentials for {}: {error}; nothing was stored",
                ct.display_name
            ))
        }
        RefreshError::Unavailable { reason, .. } => KeeperError::ProviderUnavailable {
            message: format!("{reason}; nothing was stored, retry shortly"),
            retry_after: FAILURE_RETRY_AFTER,
        },
        RefreshError::NotConfigured(m) => KeeperError::InvalidRequest(m),
        RefreshError::Rejected(m) => KeeperError::ProviderError {
            message: format!("{m}; nothing was stored"),
            retry_after: None,
        },
    }
}

/// The answer to a scoped GitHub token request that GitHub refused or could not answer.
fn scoped_failure(ct: &ConnectorType, error: RefreshError) -> KeeperError {
    match error {
        RefreshError::Unavailable { reason, .. } => KeeperError::ProviderUnavailable {
            message: format!("GitHub is unavailable: {reason}"),
            retry_after: FAILURE_RETRY_AFTER,
        },
        RefreshError::Rejected(m) => KeeperError::InvalidRequest(format!(
            "{m}: the repositories or permissions asked for are not granted to this installation of {}",
            ct.display_name
        )),
        other => KeeperError::ProviderError {
            message: other.to_string(),
            retry_after: Some(FAILURE_RETRY_AFTER),
        },
    }
}

fn not_connected(key: &ConnectionKey) -> KeeperError {
    KeeperError::NotConnected(key.app_id.to_string(), key.connector_type.to_string())
}

fn reauthorization(connection: &StoredConnection) -> KeeperError {
    KeeperError::ReauthorizationRequired(format!(
        "the {} connection of app '{}' must be reconnected by its tenant: {}",
        connection.key.connector_type,
        connection.key.app_id,
        connection
            .last_error
            .as_deref()
            .unwrap_or("the grant is no longer valid")
    ))
}
