//! The PostgreSQL backend: several stateless replicas on one database.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Postgres};

use super::crypto::KeyRing;
use super::{migrate_error, resolve_keys, EmbeddedMigrations};
use crate::config::Config;
use crate::secret::redact_url;

const MIGRATIONS: &[(i64, &str, &str)] = &super::embedded_migrations!("postgres");

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    keys: Arc<KeyRing>,
    /// This process, as the holder of refresh leases.
    owner: Arc<str>,
}

super::sql::sql_store!(PostgresStore, Postgres, PgRow);

impl PostgresStore {
    /// The current epoch second in refresh-lease statements: replicas share the database's
    /// clock, so their own clocks need not agree.
    const NOW_SQL: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)";

    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(&config.database_url)
            .with_context(|| {
                format!(
                    "database_url {} is not a valid postgres:// URL",
                    redact_url(&config.database_url)
                )
            })?
            .application_name("tokenbox")
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(10))
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
            owner: super::lease_owner(),
        })
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
