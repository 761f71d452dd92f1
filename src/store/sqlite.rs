//! The SQLite backend (WAL mode): the embedded default for one process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Sqlite;

use super::crypto::{create_private_dir, KeyRing};
use super::{migrate_error, resolve_keys, EmbeddedMigrations};
use crate::config::Config;

const MIGRATIONS: &[(i64, &str, &str)] = &super::embedded_migrations!("sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The pool for refresh leases: the same file, committed with `synchronous = NORMAL`
    /// (see `open`).
    lease_pool: SqlitePool,
    keys: Arc<KeyRing>,
    /// This process, as the holder of refresh leases.
    owner: Arc<str>,
    /// Commits refresh outcomes together (one transaction for those that queue meanwhile).
    committer: RefreshCommitter,
}

super::sql::sql_store!(SqliteStore, Sqlite, SqliteRow);

impl SqliteStore {
    /// The current epoch second in refresh-lease statements: one process owns a SQLite
    /// database, so its clock is the clock.
    const NOW_SQL: &str = "$4";

    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&config.database_url)
            .context("database_url is not a valid sqlite:// URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives a power loss too; writes happen only on refresh and import.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            // 1 MiB of page cache per connection instead of SQLite's 2 MiB: the hot path reads
            // tokenbox's own cache of decrypted connections, not the database, and the OS keeps
            // the file's pages anyway (resident memory, `bench/RESULTS.md`).
            .pragma("cache_size", "-1024");
        // Refresh leases commit with NORMAL: in WAL mode that survives a crash of the process,
        // and only a power loss can undo it, which can lose nothing but the diagnostic that a
        // refresh was interrupted (`refresh_interrupted_at`): the lease's owner is gone too.
        // The token write that follows a lease commits with FULL, which makes the lease
        // durable with it. One fsync per refresh instead of two (`bench/RESULTS.md`).
        let lease_options = options.clone().synchronous(SqliteSynchronous::Normal);
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
        let lease_pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .connect_lazy_with(lease_options);
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
        }
        let keys = Arc::new(keys);
        Ok(Self {
            committer: RefreshCommitter::start(pool.clone(), keys.clone()),
            pool,
            lease_pool,
            keys,
            owner: super::lease_owner(),
        })
    }

    /// Where refresh leases are taken and given back.
    fn lease_pool(&self) -> &SqlitePool {
        &self.lease_pool
    }

    fn claim_webhooks_sql() -> String {
        format!(
            "UPDATE webhook_deliveries SET claimed_until = $3 WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE {} ORDER BY id LIMIT $2) RETURNING {}",
            sql::WEBHOOK_DUE,
            sql::WEBHOOK_COLUMNS
        )
    }

    fn claim_due_sql() -> String {
        format!(
            "UPDATE connections SET refresh_claimed_until = $5 WHERE rowid IN \
             (SELECT rowid FROM connections WHERE {} ORDER BY expires_at LIMIT $4) \
             RETURNING {}",
            sql::DUE_WHERE,
            sql::CONNECTION_COLUMNS
        )
    }
}

/// One node: no change feed (the cache's TTL bounds what other processes' changes can hide).
impl super::ChangeFeed for SqliteStore {}
