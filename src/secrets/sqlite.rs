//! The SQLite backend (WAL mode): the embedded default for one process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::crypto::{connection_aad, create_private_dir, oauth_state_aad, KeyRing};
use super::{
    migrate_error, resolve_keys, EmbeddedMigrations, RefreshGuard, RefreshWrite, Role,
    SecretsStore, ServiceAccount, StoreError,
};
use crate::config::Config;
use crate::domain::{
    now_epoch, AppId, ConnectLink, ConnectionKey, ConnectionStatus, ConnectorTypeName, Metadata,
    OAuthState, StoredConnection, TokenSet,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "signup",
        include_str!("../../migrations/sqlite/0002_signup.sql"),
    ),
];

const COLUMNS: &str = "app_id, connector_type, status, access_token, refresh_token, token_type, \
     expires_at, scope, metadata, version, created_at, updated_at, refreshed_at, last_error, \
     backoff_until";

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    keys: Arc<KeyRing>,
}

/// Ciphertexts and encoded columns of a token set, ready to bind.
struct Sealed {
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    metadata: String,
}

fn seal(keys: &KeyRing, key: &ConnectionKey, tokens: &TokenSet) -> Sealed {
    let (app, ct) = (key.app_id.as_str(), key.connector_type.as_str());
    Sealed {
        access_token: keys.encrypt_secret(
            &tokens.access_token,
            &connection_aad(app, ct, "access_token"),
        ),
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|t| keys.encrypt_secret(t, &connection_aad(app, ct, "refresh_token"))),
        metadata: serde_json::to_string(&tokens.metadata).unwrap_or_else(|_| "{}".into()),
    }
}

fn decode(keys: &KeyRing, row: &SqliteRow) -> Result<StoredConnection, StoreError> {
    let app: String = row.try_get("app_id")?;
    let ct: String = row.try_get("connector_type")?;
    let key = ConnectionKey::new(
        AppId::parse(&app).map_err(StoreError::Corrupt)?,
        ConnectorTypeName::parse(&ct).map_err(StoreError::Corrupt)?,
    );
    let access: Vec<u8> = row.try_get("access_token")?;
    let refresh: Option<Vec<u8>> = row.try_get("refresh_token")?;
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(StoredConnection {
        tokens: TokenSet {
            access_token: keys
                .decrypt_secret(&access, &connection_aad(&app, &ct, "access_token"))?,
            refresh_token: refresh
                .map(|b| keys.decrypt_secret(&b, &connection_aad(&app, &ct, "refresh_token")))
                .transpose()?,
            token_type: row.try_get("token_type")?,
            expires_at: row.try_get("expires_at")?,
            scope: row.try_get("scope")?,
            metadata: serde_json::from_str::<Metadata>(&metadata)
                .map_err(|_| StoreError::Corrupt("connection metadata is not JSON".into()))?,
        },
        status: ConnectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status {status}")))?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        refreshed_at: row.try_get("refreshed_at")?,
        last_error: row.try_get("last_error")?,
        backoff_until: row.try_get("backoff_until")?,
        key,
    })
}

impl SqliteStore {
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&config.database_url)
            .context("database_url is not a valid sqlite:// URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives a power loss too; writes happen only on refresh and import.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            create_private_dir(dir)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options)
            .await
            .context("cannot open the SQLite database")?;
        sqlx::migrate::Migrator::new(EmbeddedMigrations(MIGRATIONS))
            .await
            .map_err(migrate_error)?
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        let check: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM tokenbox_meta WHERE key = 'key_check'")
                .fetch_optional(&pool)
                .await?;
        let (keys, new_check) = resolve_keys(config, check.as_deref())?;
        if let Some(check) = new_check {
            sqlx::query("INSERT OR IGNORE INTO tokenbox_meta (key, value) VALUES ('key_check', ?)")
                .bind(check)
                .execute(&pool)
                .await?;
        }
        Ok(Self {
            pool,
            keys: Arc::new(keys),
        })
    }
}

#[async_trait]
impl SecretsStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn load(&self, key: &ConnectionKey) -> Result<Option<StoredConnection>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connections WHERE app_id = ? AND connector_type = ?"
        ))
        .bind(key.app_id.as_str())
        .bind(key.connector_type.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| decode(&self.keys, &r)).transpose()
    }

    async fn upsert_connection(
        &self,
        key: &ConnectionKey,
        tokens: &TokenSet,
    ) -> Result<StoredConnection, StoreError> {
        let sealed = seal(&self.keys, key, tokens);
        let now = now_epoch();
        let row = sqlx::query(&format!(
            "INSERT INTO connections (app_id, connector_type, status, access_token, refresh_token, \
             token_type, expires_at, scope, metadata, version, created_at, updated_at) \
             VALUES (?, ?, 'active', ?, ?, ?, ?, ?, ?, 1, ?, ?) \
             ON CONFLICT (app_id, connector_type) DO UPDATE SET status = 'active', \
             access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
             token_type = excluded.token_type, expires_at = excluded.expires_at, \
             scope = excluded.scope, metadata = excluded.metadata, \
             version = connections.version + 1, updated_at = excluded.updated_at, \
             last_error = NULL, last_error_at = NULL, backoff_until = NULL \
             RETURNING {COLUMNS}"
        ))
        .bind(key.app_id.as_str())
        .bind(key.connector_type.as_str())
        .bind(sealed.access_token)
        .bind(sealed.refresh_token)
        .bind(tokens.token_type.as_deref())
        .bind(tokens.expires_at)
        .bind(tokens.scope.as_deref())
        .bind(sealed.metadata)
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        decode(&self.keys, &row)
    }

    async fn begin_refresh(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<Box<dyn RefreshGuard>>, StoreError> {
        Ok(self.load(key).await?.map(|current| {
            Box::new(SqliteRefresh {
                store: self.clone(),
                current,
            }) as Box<dyn RefreshGuard>
        }))
    }

    async fn delete_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let row = sqlx::query(&format!(
            "DELETE FROM connections WHERE app_id = ? AND connector_type = ? RETURNING {COLUMNS}"
        ))
        .bind(key.app_id.as_str())
        .bind(key.connector_type.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| decode(&self.keys, &r)).transpose()
    }

    async fn create_connect_link(&self, link: &ConnectLink) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connect_links (secret_hash, app_id, connector_type, params, return_to, \
             created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&link.secret_hash[..])
        .bind(link.key.app_id.as_str())
        .bind(link.key.connector_type.as_str())
        .bind(serde_json::to_string(&link.params).unwrap_or_else(|_| "{}".into()))
        .bind(link.return_to.as_deref())
        .bind(link.created_at)
        .bind(link.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn connect_link(
        &self,
        secret_hash: &[u8; 32],
    ) -> Result<Option<ConnectLink>, StoreError> {
        let row = sqlx::query(
            "SELECT app_id, connector_type, params, return_to, created_at, expires_at, spent_at \
             FROM connect_links WHERE secret_hash = ?",
        )
        .bind(&secret_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let app: String = row.try_get("app_id")?;
        let ct: String = row.try_get("connector_type")?;
        let params: String = row.try_get("params")?;
        Ok(Some(ConnectLink {
            secret_hash: *secret_hash,
            key: ConnectionKey::new(
                AppId::parse(&app).map_err(StoreError::Corrupt)?,
                ConnectorTypeName::parse(&ct).map_err(StoreError::Corrupt)?,
            ),
            params: serde_json::from_str(&params)
                .map_err(|_| StoreError::Corrupt("connect link params are not JSON".into()))?,
            return_to: row.try_get("return_to")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            spent_at: row.try_get("spent_at")?,
        }))
    }

    async fn spend_connect_link(
        &self,
        secret_hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE connect_links SET spent_at = ? \
             WHERE secret_hash = ? AND spent_at IS NULL AND expires_at > ?",
        )
        .bind(now)
        .bind(&secret_hash[..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn unspend_connect_link(&self, secret_hash: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("UPDATE connect_links SET spent_at = NULL WHERE secret_hash = ?")
            .bind(&secret_hash[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_oauth_state(
        &self,
        state_hash: &[u8; 32],
        state: &OAuthState,
    ) -> Result<(), StoreError> {
        let now = now_epoch();
        let verifier = state
            .pkce_verifier
            .as_ref()
            .map(|v| self.keys.encrypt_secret(v, &oauth_state_aad(state_hash)));
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM oauth_states WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO oauth_states (state_hash, link_hash, pkce_verifier, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&state_hash[..])
        .bind(&state.link_hash[..])
        .bind(verifier)
        .bind(now)
        .bind(state.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_oauth_state(
        &self,
        state_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM oauth_states WHERE state_hash = ? \
             RETURNING link_hash, pkce_verifier, expires_at",
        )
        .bind(&state_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= now {
            return Ok(None);
        }
        let link_hash: Vec<u8> = row.try_get("link_hash")?;
        let verifier: Option<Vec<u8>> = row.try_get("pkce_verifier")?;
        Ok(Some(OAuthState {
            link_hash: link_hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("link hash is not 32 bytes".into()))?,
            pkce_verifier: verifier
                .map(|v| self.keys.decrypt_secret(&v, &oauth_state_aad(state_hash)))
                .transpose()?,
            expires_at,
        }))
    }

    async fn create_service_account(&self, account: &ServiceAccount) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO service_accounts (name, role, token_hash, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&account.name)
        .bind(account.role.as_str())
        .bind(&account.token_hash[..])
        .bind(account.created_at)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "service account '{}'",
                account.name
            )));
        }
        Ok(())
    }

    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, token_hash, created_at FROM service_accounts ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                let hash: Vec<u8> = row.try_get("token_hash")?;
                Ok(ServiceAccount {
                    name: row.try_get("name")?,
                    role: Role::parse(&role)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role}")))?,
                    token_hash: hash
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_service_account(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM service_accounts WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

/// A refresh on SQLite: exclusivity comes from the in-process single flight (one process owns a
/// SQLite database); the write is conditional on the version read, so a concurrent import wins.
struct SqliteRefresh {
    store: SqliteStore,
    current: StoredConnection,
}

#[async_trait]
impl RefreshGuard for SqliteRefresh {
    fn current(&self) -> &StoredConnection {
        &self.current
    }

    async fn finish(
        self: Box<Self>,
        write: RefreshWrite,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let SqliteRefresh { store, current } = *self;
        let key = &current.key;
        let now = now_epoch();
        let mut next = current.clone();
        next.version += 1;
        next.updated_at = now;
        let query = match write {
            RefreshWrite::Refreshed(tokens) => {
                let sealed = seal(&store.keys, key, &tokens);
                next.tokens = tokens;
                next.status = ConnectionStatus::Active;
                next.refreshed_at = Some(now);
                next.last_error = None;
                next.backoff_until = None;
                sqlx::query(
                    "UPDATE connections SET status = 'active', access_token = ?, refresh_token = ?, \
                     token_type = ?, expires_at = ?, scope = ?, metadata = ?, version = version + 1, \
                     updated_at = ?, refreshed_at = ?, last_error = NULL, last_error_at = NULL, \
                     backoff_until = NULL \
                     WHERE app_id = ? AND connector_type = ? AND version = ?",
                )
                .bind(sealed.access_token)
                .bind(sealed.refresh_token)
                .bind(next.tokens.token_type.clone())
                .bind(next.tokens.expires_at)
                .bind(next.tokens.scope.clone())
                .bind(sealed.metadata)
                .bind(now)
                .bind(now)
            }
            RefreshWrite::Revoked { reason } => {
                next.status = ConnectionStatus::ReauthorizationRequired;
                next.last_error = Some(reason.clone());
                sqlx::query(
                    "UPDATE connections SET status = 'reauthorization_required', last_error = ?, \
                     last_error_at = ?, version = version + 1, updated_at = ? \
                     WHERE app_id = ? AND connector_type = ? AND version = ?",
                )
                .bind(reason)
                .bind(now)
                .bind(now)
            }
            RefreshWrite::Failed {
                reason,
                backoff_until,
            } => {
                next.last_error = Some(reason.clone());
                next.backoff_until = Some(backoff_until);
                sqlx::query(
                    "UPDATE connections SET last_error = ?, last_error_at = ?, backoff_until = ?, \
                     version = version + 1, updated_at = ? \
                     WHERE app_id = ? AND connector_type = ? AND version = ?",
                )
                .bind(reason)
                .bind(now)
                .bind(backoff_until)
                .bind(now)
            }
        };
        let result = query
            .bind(key.app_id.as_str())
            .bind(key.connector_type.as_str())
            .bind(current.version)
            .execute(&store.pool)
            .await?;
        Ok((result.rows_affected() == 1).then_some(next))
    }

    async fn release(self: Box<Self>) {}
}
