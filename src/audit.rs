//! The audit trail, written off the hot path: callers hand events to a bounded channel and a
//! writer task stores them in batches. When the channel is full (the database cannot keep up)
//! events are dropped and counted rather than slowing token requests down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::{now_epoch, AuditEvent, ConnectionKey};
use crate::secrets::SecretsStore;

const CHANNEL: usize = 50_000;
const BATCH: usize = 2000;

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
    }
}

async fn write_batches(store: Arc<dyn SecretsStore>, mut receiver: mpsc::Receiver<AuditEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        // Gather what arrives within a short while, up to a batch.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        let mut attempt = 0;
        loop {
            match store.record_audit(&batch).await {
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
        batch.clear();
    }
}
