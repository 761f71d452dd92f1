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
    /// Commits refresh outcomes together (one transaction for those that queue meanwhile).
    committer: RefreshCommitter,
    /// How to open the change listener's own connection.
    options: PgConnectOptions,
}

/// The channel on which migration 0013's trigger announces changes of connections, as
/// `app_id connector_type version` (version `-` for a deletion).
const CHANGES_CHANNEL: &str = "tokenbox_connections";

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
        let listener_options = options
            .clone()
            .application_name(&format!("tokenbox-listener-{}", std::process::id()));
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
        let keys = Arc::new(keys);
        Ok(Self {
            committer: RefreshCommitter::start(pool.clone(), keys.clone()),
            pool,
            keys,
            owner: super::lease_owner(),
            options: listener_options,
        })
    }

    /// Opens the listener's connection (a pool of one, named `tokenbox-listener-<pid>` in
    /// `pg_stat_activity`) and subscribes.
    async fn listen(&self) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(self.options.clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        // A lost connection is reported (and the listener dropped), not silently replaced.
        listener.eager_reconnect(false);
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(listener)
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

    /// Where refresh leases are taken and given back: the one pool.
    fn lease_pool(&self) -> &sqlx::PgPool {
        &self.pool
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

/// A notification's payload as a change (`None` for the heartbeat and anything unexpected).
fn parse_change(payload: &str) -> Option<super::FeedEvent> {
    let mut parts = payload.split(' ');
    let (app, ct, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let version = match version {
        "-" => None,
        v => Some(v.parse().ok()?),
    };
    let key = super::sql::parse_key(app, ct).ok()?;
    Some(super::FeedEvent::Changed { key, version })
}

#[async_trait::async_trait]
impl super::ChangeFeed for PostgresStore {
    fn has_change_feed(&self) -> bool {
        true
    }

    async fn follow_changes(
        &self,
        on: &(dyn Fn(super::FeedEvent) + Send + Sync),
        heartbeat: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        use super::FeedEvent;
        // Every replica announces a heartbeat on the channel: a listener that hears nothing,
        // not even that, for three periods has lost its connection without noticing.
        let pinger = spawn_heartbeat(self.pool.clone(), heartbeat, stop.clone());
        let silence = heartbeat * 3;
        let mut pause = Duration::from_millis(100);
        let mut subscriptions: u64 = 0;
        while !stop.is_cancelled() {
            let mut listener = tokio::select! {
                listened = tokio::time::timeout(silence, self.listen()) => match listened {
                    Ok(Ok(listener)) => listener,
                    failed => {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        tracing::warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "cache listener cannot connect; reading through");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.cancelled() => break,
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            subscriptions += 1;
            pause = Duration::from_millis(100);
            tracing::info!(subscriptions, "cache listener subscribed");
            on(FeedEvent::Listening);
            let why = relay(&mut listener, on, silence, &stop).await;
            on(FeedEvent::Lost);
            drop(listener);
            match why {
                Some(why) => {
                    tracing::warn!(reason = %why, "cache listener lost; reading through until it is back")
                }
                None => break,
            }
        }
        pinger.abort();
    }
}

/// Announces a heartbeat on the changes channel every `heartbeat`, until `stop`.
fn spawn_heartbeat(
    pool: sqlx::PgPool,
    heartbeat: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let _ = tokio::time::timeout(
                heartbeat,
                sqlx::query("SELECT pg_notify($1, 'heartbeat')")
                    .bind(CHANGES_CHANNEL)
                    .execute(&pool),
            )
            .await;
        }
    })
}

/// Hands the listener's notifications to `on` until the connection is lost (why) or `stop`
/// (`None`).
async fn relay(
    listener: &mut sqlx::postgres::PgListener,
    on: &(dyn Fn(super::FeedEvent) + Send + Sync),
    silence: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<String> {
    loop {
        let received = tokio::select! {
            r = tokio::time::timeout(silence, listener.try_recv()) => r,
            _ = stop.cancelled() => return None,
        };
        match received {
            Ok(Ok(Some(notification))) => {
                if let Some(change) = parse_change(notification.payload()) {
                    on(change);
                }
            }
            Ok(Ok(None)) => return Some("connection closed".to_string()),
            Ok(Err(e)) => return Some(e.to_string()),
            Err(_) => return Some(format!("nothing heard for {} s", silence.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_become_changes() {
        let key = |a: &str| super::super::sql::parse_key(a, "github").unwrap();
        assert_eq!(
            parse_change("acme github 7"),
            Some(super::super::FeedEvent::Changed {
                key: key("acme"),
                version: Some(7)
            })
        );
        assert_eq!(
            parse_change("acme github -"),
            Some(super::super::FeedEvent::Changed {
                key: key("acme"),
                version: None
            })
        );
        assert_eq!(parse_change("heartbeat"), None);
        assert_eq!(parse_change("acme github x"), None);
        assert_eq!(parse_change("Bad github 1"), None);
    }
}
