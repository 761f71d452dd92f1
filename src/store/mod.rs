//! Storage of connections, links, accounts, audit events and webhook deliveries: one narrow
//! trait per concern (`ConnectionStore`, `LinkStore`, `AuditStore`, `WebhookStore`,
//! `SigningKeyStore`, `AccountStore`, `MaintenanceStore`), `SecretsStore`, which is all of them,
//! its SQLite and PostgreSQL backends, and the encryption of secrets.

pub mod crypto;
mod postgres;
mod sql;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use async_trait::async_trait;

use crate::config::Config;
use crate::domain::{
    AuditEvent, ConnectLink, ConnectionFilter, ConnectionKey, ConnectionSummary, OAuthState,
    StoredConnection, TokenSet,
};
use crypto::{KeyRing, KEY_CHECK_AAD};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors of the storage layer. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Superadmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Superadmin => "superadmin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "superadmin" => Some(Self::Superadmin),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub name: String,
    pub role: Role,
    pub token_hash: [u8; 32],
    pub created_at: i64,
    /// What the account may use; `None` is unrestricted.
    pub scope: Option<AccountScope>,
    /// After this (epoch seconds) the account is refused.
    pub expires_at: Option<i64>,
}

/// The apps and connector types a scoped service account may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountScope {
    /// App-id patterns: `*` matches any run of characters (`acme-*`). Empty: any app.
    pub apps: Vec<String>,
    /// Connector types. Empty: any type.
    pub connector_types: Vec<String>,
}

impl AccountScope {
    /// `Err(reason)` when the connection is outside the scope.
    pub fn allows(&self, app_id: &str, connector_type: &str) -> Result<(), String> {
        if !self.apps.is_empty() && !self.apps.iter().any(|p| glob_match(p, app_id)) {
            return Err(format!(
                "app '{app_id}' is outside the account's apps ({})",
                self.apps.join(", ")
            ));
        }
        if !self.connector_types.is_empty()
            && !self.connector_types.iter().any(|c| c == connector_type)
        {
            return Err(format!(
                "connector type '{connector_type}' is outside the account's connector types ({})",
                self.connector_types.join(", ")
            ));
        }
        Ok(())
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn app_patterns_use_stars_and_types_are_exact() {
        assert!(glob_match("acme-*", "acme-prod"));
        assert!(glob_match("acme-*", "acme-"));
        assert!(!glob_match("acme-*", "acme"));
        assert!(!glob_match("acme-*", "beta-acme-x"));
        assert!(glob_match("*-prod", "acme-prod"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"), "the two ends must not overlap");
        let scope = AccountScope {
            apps: vec!["acme-*".into()],
            connector_types: vec!["github".into(), "hubspot".into()],
        };
        assert!(scope.allows("acme-1", "github").is_ok());
        assert!(scope.allows("beta", "github").unwrap_err().contains("apps"));
        assert!(scope
            .allows("acme-1", "slack")
            .unwrap_err()
            .contains("connector types"));
    }
}

/// A webhook delivery as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WebhookDelivery {
    pub id: i64,
    pub endpoint_url: String,
    pub event_type: String,
    pub body: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
}

/// A JWT signing key as stored.
#[derive(Clone)]
pub struct JwtKeyRecord {
    pub kid: String,
    /// PKCS#8 document of the Ed25519 key pair.
    pub pkcs8: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    /// Verifies until then; `None` while it is the signing key.
    pub retire_at: Option<i64>,
}

impl std::fmt::Debug for JwtKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyRecord")
            .field("kid", &self.kid)
            .field("pkcs8", &"[redacted]")
            .field("retire_at", &self.retire_at)
            .finish()
    }
}

/// Progress of one re-encryption batch.
#[derive(Debug, Default)]
pub struct Reencrypted {
    pub scanned: u64,
    pub rotated: u64,
    /// Rows written by someone else between read and update (checked again by the next pass).
    pub raced: u64,
    /// Where the next batch starts.
    pub last: Option<ConnectionKey>,
}

/// What a refresh writes back while it holds the connection.
#[derive(Clone, Debug)]
pub enum RefreshWrite {
    /// A new token set; the connection becomes active and its error is cleared.
    Refreshed(TokenSet),
    /// The grant is gone: status `reauthorization_required`.
    Revoked { reason: String },
    /// A transient or provider failure, remembered with a back-off.
    Failed {
        reason: String,
        /// `unavailable` (transient) or `provider_error`.
        kind: crate::domain::FailureKind,
        backoff_until: i64,
    },
}

/// Exclusive hold on one connection during a refresh: a lease (owner, expiry) in the row, so
/// that no database connection or transaction is held while the provider answers (a hanging
/// provider cannot exhaust the pool). The write checks the row's version and clears the lease;
/// a lease whose holder died expires by itself and is then noted as an interrupted refresh.
#[async_trait]
pub trait RefreshGuard: Send {
    /// The connection as read under the hold.
    fn current(&self) -> &StoredConnection;
    /// Writes the outcome. `Ok(None)` means another writer changed the row meanwhile; the caller
    /// re-reads it.
    async fn finish(
        self: Box<Self>,
        write: RefreshWrite,
    ) -> Result<Option<StoredConnection>, StoreError>;
    /// Releases the hold without writing.
    async fn release(self: Box<Self>);
}

/// A name for this process as the holder of refresh leases: unique per start, so a lease left
/// by a previous run of the same host is recognised as interrupted.
pub(crate) fn lease_owner() -> Arc<str> {
    format!("{}-{}", std::process::id(), crate::token::random_hex::<8>()).into()
}

/// Connections: their token sets, the refresh lease, the background refresher's claims.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn load(&self, key: &ConnectionKey) -> Result<Option<StoredConnection>, StoreError>;

    /// Inserts or replaces a connection's token set (import, signup); status becomes active.
    /// `obtained_at`: when tokenbox got the token from the provider (the signup), which becomes
    /// `refreshed_at`; `None` for an import (a re-import keeps the previous `refreshed_at`).
    async fn upsert_connection(
        &self,
        key: &ConnectionKey,
        tokens: &TokenSet,
        obtained_at: Option<i64>,
    ) -> Result<StoredConnection, StoreError>;

    /// Takes the hold for a refresh; `None` when the connection does not exist.
    /// Takes the connection's refresh lease for `lease_seconds`, waiting while another holder
    /// (this process or another replica) has it; `None` when the connection does not exist.
    async fn begin_refresh(
        &self,
        key: &ConnectionKey,
        lease_seconds: i64,
    ) -> Result<Option<Box<dyn RefreshGuard>>, StoreError>;

    /// Claims up to `limit` connections due for a background refresh (see `sql::DUE_WHERE`)
    /// until `lease_until`, so that concurrent passes (other replicas) pick other ones.
    async fn claim_due(
        &self,
        now: i64,
        window: i64,
        idle_before: i64,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<StoredConnection>, StoreError>;

    /// Connections matching the filter, in (app_id, connector_type) order, without secrets.
    async fn list_connections(
        &self,
        filter: &ConnectionFilter,
    ) -> Result<Vec<ConnectionSummary>, StoreError>;

    /// Connections by (connector type, status), for metrics.
    async fn count_connections(&self) -> Result<Vec<(String, String, i64)>, StoreError>;

    /// Records that the `reauthorization_due` warning for `deadline` is sent; `false` when it
    /// already was (by this or another replica) or the deadline changed meanwhile.
    async fn mark_reauthorization_warned(
        &self,
        key: &ConnectionKey,
        deadline: i64,
    ) -> Result<bool, StoreError>;

    /// Active connections whose refresh token dies before `before` and whose warning for that
    /// deadline is not sent yet: (connection, deadline), at most `limit`.
    async fn unwarned_reauthorizations(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(ConnectionKey, i64)>, StoreError>;

    /// Active connections whose refresh token dies before `before`, by connector type.
    async fn count_reauthorization_due(
        &self,
        before: i64,
    ) -> Result<Vec<(String, i64)>, StoreError>;

    /// Claims up to `limit` active connections of `connector_types` not health-checked since
    /// `checked_before`, the longest unchecked first, and records `now` as their check time
    /// (so other replicas pick other ones).
    async fn claim_health_checks(
        &self,
        connector_types: &[String],
        now: i64,
        checked_before: i64,
        limit: i64,
    ) -> Result<Vec<ConnectionKey>, StoreError>;

    /// Deletes a connection; returns it as it was, for revocation at the provider.
    async fn delete_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<StoredConnection>, StoreError>;
}

/// Connect links and the OAuth states of the signups they start.
#[async_trait]
pub trait LinkStore: Send + Sync {
    async fn create_connect_link(&self, link: &ConnectLink) -> Result<(), StoreError>;

    async fn connect_link(&self, secret_hash: &[u8; 32])
        -> Result<Option<ConnectLink>, StoreError>;

    /// Marks a usable link spent; `false` when it was spent or expired already.
    async fn spend_connect_link(
        &self,
        secret_hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Makes a spent link usable again (the signup failed after it was spent).
    async fn unspend_connect_link(&self, secret_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Records an authorization request; the PKCE verifier is encrypted, bound to the state.
    async fn create_oauth_state(
        &self,
        state_hash: &[u8; 32],
        state: &OAuthState,
    ) -> Result<(), StoreError>;

    /// Consumes an authorization request: a state is usable once, before it expires.
    async fn take_oauth_state(
        &self,
        state_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends audit events (one transaction).
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;

    /// Reads audit events, newest first.
    async fn read_audit(
        &self,
        app_id: Option<&str>,
        since: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}

/// The webhook outbox.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Queues a webhook delivery.
    async fn enqueue_webhook(
        &self,
        endpoint_url: &str,
        event_type: &str,
        body: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Claims due deliveries until `lease_until` (other replicas skip them).
    async fn claim_webhooks(
        &self,
        now: i64,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Records an attempt: delivered, or the next attempt's time.
    async fn finish_webhook(
        &self,
        id: i64,
        delivered_at: Option<i64>,
        next_attempt_at: i64,
        status: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Recent deliveries, newest first (`failed_only`: not delivered yet).
    async fn list_webhooks(
        &self,
        failed_only: bool,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
}

/// The JWT signing keys.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// The JWT signing keys (private keys decrypted), oldest first.
    async fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError>;

    /// Adds a signing key and retires, at `retire_at`, the ones that were active.
    async fn rotate_jwt_key(&self, key: &JwtKeyRecord, retire_at: i64) -> Result<(), StoreError>;
}

/// Service accounts and the sessions of the /admin page.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn create_service_account(&self, account: &ServiceAccount) -> Result<(), StoreError>;

    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, StoreError>;

    async fn delete_service_account(&self, name: &str) -> Result<bool, StoreError>;

    /// Records a session of the /admin page (and forgets the expired ones).
    async fn create_admin_session(&self, session: &AdminSession) -> Result<(), StoreError>;

    /// The session with this id hash, unless it has expired.
    async fn admin_session(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<AdminSession>, StoreError>;

    /// Ends a session (sign-out, or its account is gone).
    async fn delete_admin_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError>;
}

/// Liveness, re-encryption under the newest key, retention.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Re-encrypts, under the newest key, the connections after `after` (in key order), up to
    /// `limit` rows. A row written meanwhile is skipped (its writer used the newest key).
    async fn reencrypt_connections(
        &self,
        after: Option<&ConnectionKey>,
        limit: i64,
    ) -> Result<Reencrypted, StoreError>;

    /// Re-encrypts the key check value and the PKCE verifiers in flight.
    async fn reencrypt_meta(&self) -> Result<u64, StoreError>;

    /// Deletes audit events older than `before` and webhook deliveries delivered before
    /// `webhooks_before` (`None`: keep them); returns how many rows went.
    async fn prune(
        &self,
        audit_before: Option<i64>,
        webhooks_before: Option<i64>,
    ) -> Result<u64, StoreError>;
}

/// The proxy mode's pauses, shared by the replicas.
#[async_trait]
pub trait ProxyStore: Send + Sync {
    /// Until when proxied calls of a connection are paused (epoch seconds), if they are.
    async fn proxy_paused_until(&self, key: &ConnectionKey) -> Result<Option<i64>, StoreError>;

    /// Pauses proxied calls of a connection until `until` (a later pause already recorded
    /// stays).
    async fn pause_proxy(&self, key: &ConnectionKey, until: i64) -> Result<(), StoreError>;
}

/// Whose account each connection is (migration 0016).
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// The stored identity of a connection, if any.
    async fn connection_account(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<crate::domain::ConnectionAccount>, StoreError>;

    /// Records a connection's identity (replacing the previous one).
    async fn save_connection_account(
        &self,
        key: &ConnectionKey,
        account: &crate::domain::ConnectionAccount,
    ) -> Result<(), StoreError>;

    /// The stored identities of the connections from `first` to `last` inclusive, in
    /// (app, type) order: those of one page of the listing.
    async fn connection_accounts_between(
        &self,
        first: &ConnectionKey,
        last: &ConnectionKey,
    ) -> Result<Vec<(ConnectionKey, crate::domain::ConnectionAccount)>, StoreError>;

    /// Forgets a connection's identity (the connection was deleted).
    async fn delete_connection_account(&self, key: &ConnectionKey) -> Result<(), StoreError>;
}

/// What the change feed of a store reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// The feed listens: every change committed from now on is reported.
    Listening,
    /// The feed lost its connection: changes may go unreported until the next `Listening`.
    Lost,
    /// A connection changed (any process, any replica): `version` is its new version, `None`
    /// when it was deleted.
    Changed {
        key: ConnectionKey,
        version: Option<i64>,
    },
}

/// Changes of connections made by other processes, as they commit (PostgreSQL `LISTEN/NOTIFY`,
/// see migration 0013). A store without a feed (SQLite: one node) relies on cache lifetimes.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Whether `follow_changes` reports anything.
    fn has_change_feed(&self) -> bool {
        false
    }

    /// Reports changes to `on` until `stop` is cancelled, reconnecting by itself after a loss.
    /// A connection that stays silent for three `heartbeat`s counts as lost.
    async fn follow_changes(
        &self,
        _on: &(dyn Fn(FeedEvent) + Send + Sync),
        _heartbeat: std::time::Duration,
        _stop: tokio_util::sync::CancellationToken,
    ) {
    }
}

/// The whole store: every narrow store of one database. Callers hold an `Arc<dyn SecretsStore>`;
/// a part that needs one concern only can take that narrow trait.
pub trait SecretsStore:
    ConnectionStore
    + ChangeFeed
    + LinkStore
    + AuditStore
    + WebhookStore
    + SigningKeyStore
    + AccountStore
    + MaintenanceStore
    + ProxyStore
    + IdentityStore
    + 'static
{
}

impl<
        T: ConnectionStore
            + ChangeFeed
            + LinkStore
            + AuditStore
            + WebhookStore
            + SigningKeyStore
            + AccountStore
            + MaintenanceStore
            + ProxyStore
            + IdentityStore
            + 'static,
    > SecretsStore for T
{
}

/// A signed-in session of the /admin page. Only the SHA-256 of its random id (the cookie) is
/// stored; it belongs to one account, identified by name and token hash.
#[derive(Clone, Debug)]
pub struct AdminSession {
    pub id_hash: [u8; 32],
    pub account: String,
    pub account_token_hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
}

/// Opens the store named by `database_url`, applies migrations, and loads (or, on a new
/// database, creates) the encryption key, checking that it matches the database.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn SecretsStore>> {
    let url = config.database_url.as_str();
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::open(config).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::open(config).await?)),
        _ => bail!("database_url must start with sqlite:// or postgres://; got scheme '{scheme}'"),
    }
}

/// Loads the key ring and checks it against the key check value stored in the database, so a
/// wrong or missing key fails at startup instead of on the first token request. Returns the
/// check value to store when the database has none yet.
fn resolve_keys(
    config: &Config,
    check: Option<&[u8]>,
) -> anyhow::Result<(KeyRing, Option<Vec<u8>>)> {
    let path: &Path = &config.encryption_key_file;
    let ring = match KeyRing::load(path, config.encryption_key.as_ref())? {
        Some(ring) => ring,
        None if check.is_some() => bail!(
            "the database holds encrypted tokens but the encryption key file {} does not exist; restore it (or set TOKENBOX_ENCRYPTION_KEY)",
            path.display()
        ),
        None => KeyRing::create(path)?,
    };
    match check {
        Some(blob) => {
            ring.decrypt(blob, KEY_CHECK_AAD).map_err(|_| {
                let source = if config.encryption_key.is_some() {
                    "TOKENBOX_ENCRYPTION_KEY".to_string()
                } else {
                    path.display().to_string()
                };
                anyhow::anyhow!(
                    "the configured encryption key ({source}) does not match the database: it cannot decrypt the stored tokens"
                )
            })?;
            Ok((ring, None))
        }
        None => {
            let check = ring.encrypt(b"tokenbox", KEY_CHECK_AAD);
            Ok((ring, Some(check)))
        }
    }
}

/// The migrations of one backend's folder (`migrations/<backend>/`), compiled in. Both folders
/// carry the same versions; a new migration is added here once, as a file in each folder.
macro_rules! embedded_migrations {
    ($backend:literal) => {
        [
            (
                1,
                "initial",
                include_str!(concat!("../../migrations/", $backend, "/0001_initial.sql")),
            ),
            (
                2,
                "signup",
                include_str!(concat!("../../migrations/", $backend, "/0002_signup.sql")),
            ),
            (
                3,
                "refresher",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0003_refresher.sql"
                )),
            ),
            (
                4,
                "error_kind",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0004_error_kind.sql"
                )),
            ),
            (
                5,
                "audit",
                include_str!(concat!("../../migrations/", $backend, "/0005_audit.sql")),
            ),
            (
                6,
                "scoped_accounts",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0006_scoped_accounts.sql"
                )),
            ),
            (
                7,
                "jwt_keys",
                include_str!(concat!("../../migrations/", $backend, "/0007_jwt_keys.sql")),
            ),
            (
                8,
                "webhooks",
                include_str!(concat!("../../migrations/", $backend, "/0008_webhooks.sql")),
            ),
            (
                9,
                "refresh_lease",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0009_refresh_lease.sql"
                )),
            ),
            (
                10,
                "browser_binding",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0010_browser_binding.sql"
                )),
            ),
            (
                11,
                "audit_count",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0011_audit_count.sql"
                )),
            ),
            (
                12,
                "tenant_clients",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0012_tenant_clients.sql"
                )),
            ),
            (
                13,
                "coherence_and_scale",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0013_coherence_and_scale.sql"
                )),
            ),
            (
                14,
                "proxy_pauses",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0014_proxy_pauses.sql"
                )),
            ),
            (
                15,
                "audit_last_at",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0015_audit_last_at.sql"
                )),
            ),
            (
                16,
                "connection_accounts",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0016_connection_accounts.sql"
                )),
            ),
            (
                17,
                "expiry",
                include_str!(concat!("../../migrations/", $backend, "/0017_expiry.sql")),
            ),
            (
                18,
                "audit_workload",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0018_audit_workload.sql"
                )),
            ),
        ]
    };
}
pub(crate) use embedded_migrations;

/// Migrations compiled into the binary, handed to sqlx's migrator (which records them in
/// `_sqlx_migrations` and refuses a database that has migrations this binary does not know).
#[derive(Debug)]
pub(crate) struct EmbeddedMigrations(pub &'static [(i64, &'static str, &'static str)]);

impl<'s> sqlx::migrate::MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
                > + Send
                + 's,
        >,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*description).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Turns a migration failure into an operator-facing message.
pub(crate) fn migrate_error(e: sqlx::migrate::MigrateError) -> anyhow::Error {
    match e {
        sqlx::migrate::MigrateError::VersionMissing(v) => anyhow::anyhow!(
            "the database schema has migration {v}, which this tokenbox version does not know: it was written by a newer tokenbox; run that version"
        ),
        other => anyhow::Error::new(other).context("cannot apply database migrations"),
    }
}
