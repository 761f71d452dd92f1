//! The background refresher: every replica runs one. It claims connections that expire within
//! the window (or have been idle for a day) and refreshes them before a job asks, through the
//! same single flight and row lock as requests.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RefresherConfig;
use crate::domain::now_epoch;
use crate::refresh::SecretsKeeper;

/// How long a claim keeps other replicas away from a connection (a refresh takes at most the
/// request timeout; the row lock, not this lease, is what prevents double refreshes).
const LEASE_SECONDS: i64 = 120;

/// Runs until `stop` is cancelled. A pass in progress then claims nothing more, but the
/// refreshes it started run to their end (a provider may already have rotated the refresh
/// token: the new one must be stored), so it is never aborted: await the task instead.
pub async fn run(keeper: SecretsKeeper, config: RefresherConfig, stop: CancellationToken) {
    let semaphore = Arc::new(Semaphore::new(config.concurrency));
    // The first pass comes soon after start, spread across replicas.
    let mut wait = jittered(config.interval.min(Duration::from_secs(5)), 0.0, 1.0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        match pass(&keeper, &config, &semaphore, &stop).await {
            Ok(()) => tracing::debug!("background refresh pass done"),
            Err(e) => tracing::warn!(error = %e, "background refresh pass failed"),
        }
        // The early warning rides on the same pass, not on a slower timer of its own.
        if let Err(e) = keeper.warn_due_reauthorizations().await {
            tracing::warn!(error = %e, "reauthorization warnings failed");
        }
        if config.health_check_interval_seconds > 0 {
            let limit = (config.concurrency * 4) as i64;
            if let Err(e) = keeper
                .run_health_checks(config.health_check_interval_seconds, limit)
                .await
            {
                tracing::warn!(error = %e, "health checks failed");
            }
        }
        wait = jittered(config.interval, 0.8, 1.2);
    }
}

fn jittered(base: Duration, low: f64, high: f64) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(low..high))
}

/// Claims and refreshes due connections in batches until none is left.
async fn pass(
    keeper: &SecretsKeeper,
    config: &RefresherConfig,
    semaphore: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Result<(), crate::store::StoreError> {
    let batch = (config.concurrency * 4) as i64;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let now = now_epoch();
        let keepalive_before = now - config.keepalive_seconds;
        let claimed = keeper
            .store()
            .claim_due(
                now,
                config.window_seconds,
                keepalive_before,
                batch,
                now + LEASE_SECONDS,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        let full = claimed.len() as i64 == batch;
        let mut tasks = JoinSet::new();
        for connection in claimed {
            if stop.is_cancelled() {
                // The rest of the batch keeps its claim until the claim expires.
                break;
            }
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let keeper = keeper.clone();
            let window = config.window_seconds;
            tasks.spawn(async move {
                let _permit = permit;
                let key = connection.key.clone();
                match keeper
                    .refresh_claimed(&connection, window, keepalive_before)
                    .await
                {
                    Ok(true) => tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, outcome = "refreshed", "background refresh"),
                    Ok(false) => tracing::debug!(app_id = %key.app_id, connector_type = %key.connector_type, outcome = "skipped", "background refresh"),
                    Err(e) => tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, outcome = "failed", error = %e, "background refresh"),
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        if !full {
            return Ok(());
        }
    }
}
