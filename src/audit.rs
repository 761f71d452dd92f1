//! The audit trail, written off the hot path: callers hand events to a bounded channel and a
//! writer task stores them in batches. When the channel is full (the database cannot keep up)
//! events are dropped and counted rather than slowing token requests down.
//!
//! Anonymous refusals (no credential, a wrong one) are not written one by one: the writer
//! counts them per action, outcome and client address and writes one row per window with the
//! count, so a flood of bad requests costs a few rows. Old rows are pruned (`prune_periodically`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::{now_epoch, AuditEvent, ConnectionKey};
use crate::store::SecretsStore;

const CHANNEL: usize = 50_000;
const BATCH: usize = 2000;
/// Anonymous refusals of one kind are written as one row per window.
const ANONYMOUS_WINDOW: Duration = Duration::from_secs(60);
/// Distinct (action, outcome, client address) kept apart within a window; beyond, refusals
/// are counted without their address.
const ANONYMOUS_KEYS: usize = 1000;
/// The principal of a request that did not authenticate.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Clone)]
pub struct Audit {
    sender: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// Starts the writer; it stops (after writing what it holds) when every `Audit` is dropped.
    pub fn start(store: Arc<dyn SecretsStore>) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let writer = tokio::spawn(write_batches(store, receiver));
        (
            Self {
                sender,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        )
    }

    pub fn record(&self, event: AuditEvent) {
        if self.sender.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost because the writer could not keep up (also a metric).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// An event about a connection (or about none, when `key` is `None`).
pub fn event(
    principal: &str,
    action: &str,
    key: Option<&ConnectionKey>,
    outcome: &str,
    client_addr: Option<String>,
) -> AuditEvent {
    AuditEvent {
        at: now_epoch(),
        principal: principal.to_string(),
        action: action.to_string(),
        app_id: key.map(|k| k.app_id.to_string()),
        connector_type: key.map(|k| k.connector_type.to_string()),
        outcome: outcome.to_string(),
        client_addr,
        subject: None,
        count: 1,
    }
}

/// Anonymous refusals counted during the current window.
#[derive(Default)]
struct Aggregate {
    started: Option<tokio::time::Instant>,
    counts: HashMap<(String, String, Option<String>), (i64, i64)>,
}

impl Aggregate {
    fn add(&mut self, event: AuditEvent) {
        self.started.get_or_insert_with(tokio::time::Instant::now);
        let mut key = (event.action, event.outcome, event.client_addr);
        if self.counts.len() >= ANONYMOUS_KEYS && !self.counts.contains_key(&key) {
            key.2 = None;
        }
        let entry = self.counts.entry(key).or_insert((event.at, 0));
        entry.1 += 1;
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.started.map(|t| t + ANONYMOUS_WINDOW)
    }

    /// One row per kind, dated at its first event, with the count.
    fn take(&mut self) -> Vec<AuditEvent> {
        self.started = None;
        self.counts
            .drain()
            .map(|((action, outcome, client_addr), (at, count))| AuditEvent {
                at,
                principal: ANONYMOUS.to_string(),
                action,
                app_id: None,
                connector_type: None,
                outcome,
                client_addr,
                subject: None,
                count,
            })
            .collect()
    }
}

async fn write_batches(store: Arc<dyn SecretsStore>, mut receiver: mpsc::Receiver<AuditEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut anonymous = Aggregate::default();
    loop {
        let window_end = anonymous.deadline();
        let first = tokio::select! {
            received = receiver.recv() => received,
            _ = async {
                match window_end {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                write(&store, &anonymous.take()).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut keep = |event: AuditEvent, batch: &mut Vec<AuditEvent>| {
            if event.principal == ANONYMOUS {
                anonymous.add(event);
            } else {
                batch.push(event);
            }
        };
        keep(first, &mut batch);
        // Gather what arrives within a short while, up to a batch.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(event)) => keep(event, &mut batch),
                _ => break,
            }
        }
        write(&store, &batch).await;
        batch.clear();
    }
    // Every sender is gone (shutdown): what was counted is written too.
    write(&store, &anonymous.take()).await;
}

async fn write(store: &Arc<dyn SecretsStore>, batch: &[AuditEvent]) {
    if batch.is_empty() {
        return;
    }
    let mut attempt = 0;
    loop {
        match store.record_audit(batch).await {
            Ok(()) => break,
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, "audit write failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, lost = batch.len(), "audit events could not be written");
                break;
            }
        }
    }
}

/// Retention: deletes audit events older than `audit_days` and webhook deliveries delivered
/// more than `webhook_days` ago (0: keep for ever), at start and then every `interval`. Every
/// replica may run it; the deletes are idempotent and batched.
pub async fn prune_periodically(
    store: Arc<dyn SecretsStore>,
    audit_days: u64,
    webhook_days: u64,
    interval: Duration,
) {
    let before = |days: u64| (days > 0).then(|| now_epoch() - (days as i64).saturating_mul(86_400));
    loop {
        match store.prune(before(audit_days), before(webhook_days)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "old audit events and webhook deliveries pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning old audit events failed; will retry"),
        }
        tokio::time::sleep(interval).await;
    }
}
