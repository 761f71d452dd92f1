//! The PostgreSQL backend: several stateless replicas on one database.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Postgres, Transaction};

use super::crypto::KeyRing;
use super::{
    migrate_error, resolve_keys, EmbeddedMigrations, RefreshGuard, RefreshWrite, StoreError,
};
use crate::config::Config;
use crate::domain::{ConnectionKey, StoredConnection};
use crate::secret::redact_url;

const MIGRATIONS: &[(i64, &str, &str)] = &super::embedded_migrations!("postgres");

/// How long a refresh waits for another replica's row lock (longer than any provider call).
const LOCK_TIMEOUT: &str = "35s";

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    keys: Arc<KeyRing>,
}

super::sql::sql_store!(PostgresStore, Postgres, PgRow);

impl PostgresStore {
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(&config.database_url)
            .with_context(|| {
                format!(
                    "database_url {} is not a valid postgres:// URL",
                    redact_url(&config.database_url)
                )
            })?
            .application_name("tokenbox")
            // A refresh may wait on another replica's row lock for as long as a provider call:
            // that is expected, not a slow statement worth a warning.
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(40))
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            // Requests fail fast when the database is gone, rather than queueing.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {}",
                    redact_url(&config.database_url)
                )
            })?;
        sqlx::migrate::Migrator::new(EmbeddedMigrations(MIGRATIONS))
            .await
            .map_err(migrate_error)?
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        let check = Self::read_key_check(&pool).await?;
        let (keys, new_check) = resolve_keys(config, check.as_deref())?;
        if let Some(check) = new_check {
            Self::write_key_check(&pool, check).await?;
            // Another replica may have written its check first: ours must then match it.
            let stored = Self::read_key_check(&pool).await?.unwrap_or_default();
            keys.decrypt(&stored, super::crypto::KEY_CHECK_AAD)
                .map_err(|_| {
                    anyhow::anyhow!(
                        "another replica initialised this database with a different encryption key"
                    )
                })?;
        }
        Ok(Self {
            pool,
            keys: Arc::new(keys),
        })
    }

    /// Locks the connection's row (`SELECT ... FOR UPDATE`) in a transaction that lives until
    /// the outcome is written: another replica waits, then re-reads what this one stored.
    /// A crashed replica's lock goes with its connection; it can never expire mid-refresh.
    async fn hold_for_refresh(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<Box<dyn RefreshGuard>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&sql::select_connection(" FOR UPDATE"))
            .bind(key.app_id.as_str())
            .bind(key.connector_type.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let current = decode(&self.keys, &row)?;
        Ok(Some(Box::new(PgRefresh {
            tx,
            keys: self.keys.clone(),
            current,
        })))
    }

    fn claim_webhooks_sql() -> String {
        format!(
            "UPDATE webhook_deliveries SET claimed_until = $3 WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE {} ORDER BY id LIMIT $2 \
              FOR UPDATE SKIP LOCKED) RETURNING {}",
            sql::WEBHOOK_DUE,
            sql::WEBHOOK_COLUMNS
        )
    }

    fn claim_due_sql() -> String {
        format!(
            "UPDATE connections AS c SET refresh_claimed_until = $5 FROM \
             (SELECT app_id AS due_app, connector_type AS due_type FROM connections \
              WHERE {} ORDER BY expires_at NULLS LAST LIMIT $4 FOR UPDATE SKIP LOCKED) AS due \
             WHERE c.app_id = due.due_app AND c.connector_type = due.due_type \
             RETURNING {}",
            sql::DUE_WHERE,
            sql::CONNECTION_COLUMNS
                .split(", ")
                .map(|c| format!("c.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

struct PgRefresh {
    tx: Transaction<'static, Postgres>,
    keys: Arc<KeyRing>,
    current: StoredConnection,
}

#[async_trait]
impl RefreshGuard for PgRefresh {
    fn current(&self) -> &StoredConnection {
        &self.current
    }

    async fn finish(
        self: Box<Self>,
        write: RefreshWrite,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let PgRefresh {
            mut tx,
            keys,
            current,
        } = *self;
        let written = write_refresh(&mut *tx, &keys, &current, write).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn release(self: Box<Self>) {
        let _ = self.tx.rollback().await;
    }
}
