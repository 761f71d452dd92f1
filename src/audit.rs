//! The audit trail, written off the hot path, without loss.
//!
//! Token reads (`token.read`, `token.exchange`) are the bulk of it: identical reads (same
//! action, account, workload, app, connector type, outcome and client address) within a short
//! window (`audit_coalesce_seconds`) are counted in memory and written as one row with the
//! count, the first time (`at`) and the last one (`last_at`). Every other event (refreshes, connects, deletions, administrative actions)
//! is one row, handed to a bounded channel. A writer task stores both in batches.
//!
//! Nothing is dropped when the database is slow: the channel and the table of counted reads
//! are bounded, and when either is full the caller waits (back-pressure) until the writer has
//! made room. Only a caller that has waited `WAIT_FOR_ROOM` (a stuck database) gives up and
//! counts the event as dropped (`tokenbox_audit_dropped`, a guard that stays 0).
//!
//! Anonymous refusals (no credential, a wrong one) are not written one by one: the writer
//! counts them per action, outcome and client address and writes one row per window with the
//! count, so a flood of bad requests costs a few rows. Old rows are pruned (`prune_periodically`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::domain::{now_epoch, AuditEvent, ConnectionKey};
use crate::store::SecretsStore;

const CHANNEL: usize = 50_000;
const BATCH: usize = 2000;
/// Distinct kinds of token read counted at once, before the next write; beyond, a read of a
/// new kind waits for the writer.
const PENDING_READS: usize = 100_000;
/// How long a caller waits for room before its event is counted as dropped (a stuck database).
const WAIT_FOR_ROOM: Duration = Duration::from_secs(30);
/// Anonymous refusals of one kind are written as one row per window.
const ANONYMOUS_WINDOW: Duration = Duration::from_secs(60);
/// Distinct (action, outcome, client address) kept apart within a window; beyond, refusals
/// are counted without their address.
const ANONYMOUS_KEYS: usize = 1000;
/// The principal of a request that did not authenticate.
pub const ANONYMOUS: &str = "anonymous";
/// The action of a token read (`binb-token`).
pub const TOKEN_READ: &str = "token.read";
/// The action of a token read through the token exchange (RFC 8693).
pub const TOKEN_EXCHANGE: &str = "token.exchange";
/// The actions whose identical events are coalesced: the token reads.
const COALESCED: &[&str] = &[TOKEN_READ, TOKEN_EXCHANGE];

/// What makes two token reads the same row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReadKey {
    principal: String,
    /// The workload acting as the account (issuer, subject), when there is one: two
    /// workloads mapped to one account are two rows.
    workload: Option<(String, String)>,
    /// `token.read` or `token.exchange`.
    action: String,
    app_id: Option<String>,
    connector_type: Option<String>,
    outcome: String,
    client_addr: Option<String>,
}

impl ReadKey {
    fn of(event: AuditEvent) -> Self {
        Self {
            principal: event.principal,
            workload: event.workload_issuer.zip(event.workload_subject),
            action: event.action,
            app_id: event.app_id,
            connector_type: event.connector_type,
            outcome: event.outcome,
            client_addr: event.client_addr,
        }
    }
}

/// Token reads counted since the last write: per kind, first time, last time and count.
#[derive(Default)]
struct Reads {
    pending: Mutex<HashMap<ReadKey, (i64, i64, i64)>>,
    /// Woken when the writer took the pending reads.
    room: Notify,
}

impl Reads {
    /// Counts a read of kind `key`; gives the key back when the table is full and the kind
    /// new.
    fn add(&self, key: ReadKey, at: i64, count: i64) -> Result<(), Box<ReadKey>> {
        let mut pending = self.pending.lock().expect("audit reads poisoned");
        if let Some(entry) = pending.get_mut(&key) {
            entry.1 = entry.1.max(at);
            entry.2 += count;
            return Ok(());
        }
        if pending.len() >= PENDING_READS {
            return Err(Box::new(key));
        }
        pending.insert(key, (at, at, count));
        Ok(())
    }

    fn take(&self) -> Vec<AuditEvent> {
        let taken = std::mem::take(&mut *self.pending.lock().expect("audit reads poisoned"));
        self.room.notify_waiters();
        taken
            .into_iter()
            .map(|(key, (at, last, count))| {
                let (workload_issuer, workload_subject) = key.workload.unzip();
                AuditEvent {
                    at,
                    last_at: (last != at).then_some(last),
                    principal: key.principal,
                    action: key.action,
                    app_id: key.app_id,
                    connector_type: key.connector_type,
                    outcome: key.outcome,
                    client_addr: key.client_addr,
                    subject: None,
                    workload_issuer,
                    workload_subject,
                    count,
                }
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct Audit {
    sender: mpsc::Sender<AuditEvent>,
    /// Token reads counted until the next write; `None` when reads are not coalesced.
    reads: Option<Arc<Reads>>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// Starts the writer; it stops (after writing what it holds) when every `Audit` is dropped.
    /// Identical token reads within `coalesce` are written as one row (`0`: one row each).
    pub fn start(store: Arc<dyn SecretsStore>, coalesce: Duration) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let reads = (!coalesce.is_zero()).then(|| Arc::new(Reads::default()));
        let writer = tokio::spawn(write_batches(store, receiver, reads.clone(), coalesce));
        (
            Self {
                sender,
                reads,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        )
    }

    /// Records `event`. Waits while the writer cannot keep up (back-pressure), at most
    /// `WAIT_FOR_ROOM`.
    pub async fn record(&self, event: AuditEvent) {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_ROOM;
        if let Some(reads) = self
            .reads
            .as_ref()
            .filter(|_| COALESCED.contains(&event.action.as_str()) && event.principal != ANONYMOUS)
        {
            let (at, count) = (event.at, event.count);
            let mut key = ReadKey::of(event);
            loop {
                // Registered before the attempt, so a write in between is not missed.
                let room = reads.room.notified();
                key = match reads.add(key, at, count) {
                    Ok(()) => return,
                    Err(key) => *key,
                };
                if tokio::time::timeout_at(deadline, room).await.is_err() {
                    break;
                }
            }
        } else {
            let sent = match self.sender.try_send(event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(event)) => {
                    tokio::time::timeout_at(deadline, self.sender.send(event))
                        .await
                        .is_ok_and(|sent| sent.is_ok())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
            if sent {
                return;
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!("an audit event was dropped: the audit writer is stuck");
    }

    /// Events lost because the writer was stuck (also a metric; stays 0).
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
        last_at: None,
        principal: principal.to_string(),
        action: action.to_string(),
        app_id: key.map(|k| k.app_id.to_string()),
        connector_type: key.map(|k| k.connector_type.to_string()),
        outcome: outcome.to_string(),
        client_addr,
        subject: None,
        workload_issuer: None,
        workload_subject: None,
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
                last_at: None,
                principal: ANONYMOUS.to_string(),
                action,
                app_id: None,
                connector_type: None,
                outcome,
                client_addr,
                subject: None,
                workload_issuer: None,
                workload_subject: None,
                count,
            })
            .collect()
    }
}

async fn write_batches(
    store: Arc<dyn SecretsStore>,
    mut receiver: mpsc::Receiver<AuditEvent>,
    reads: Option<Arc<Reads>>,
    coalesce: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut anonymous = Aggregate::default();
    let mut tick = tokio::time::interval(coalesce.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let window_end = anonymous.deadline();
        let first = tokio::select! {
            received = receiver.recv() => received,
            _ = tick.tick(), if reads.is_some() => {
                if let Some(reads) = &reads {
                    write(&store, &reads.take()).await;
                }
                continue;
            }
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
    if let Some(reads) = &reads {
        write(&store, &reads.take()).await;
    }
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
