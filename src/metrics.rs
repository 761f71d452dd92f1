//! Prometheus metrics (OpenMetrics text at `GET /metrics`). Labels never carry an app id, a
//! token or a secret: only connector types and outcomes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub connector_type: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub connector_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub connector_type: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    /// binb-token requests by outcome (`served`, `refreshed`, or the error code).
    pub token_requests: Family<OutcomeLabels, Counter>,
    /// Provider refreshes by connector type and outcome.
    pub refreshes: Family<RefreshLabels, Counter>,
    /// Time of one provider refresh, retries included.
    pub refresh_seconds: Family<TypeLabels, Histogram>,
    /// Stored connections by connector type and status (computed at scrape time).
    pub connections: Family<StatusLabels, Gauge>,
    /// Active connections whose refresh token dies within `reauthorization_warning_days`, by
    /// connector type (computed at scrape time).
    pub reauthorization_due: Family<TypeLabels, Gauge>,
    /// Requests answered from a connection's back-off, without a provider call.
    pub backoffs: Counter,
    /// Connector types whose circuit breaker is open (computed at scrape time).
    pub open_circuits: Gauge,
    /// Audit events dropped because the writer could not keep up (computed at scrape time).
    pub audit_dropped: Gauge,
    /// The counters of the hot path's two outcomes, looked up once (no label set per request).
    served: Counter,
    refreshed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenbox");
        let token_requests = Family::<OutcomeLabels, Counter>::default();
        let refreshes = Family::<RefreshLabels, Counter>::default();
        let refresh_seconds = Family::<TypeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let connections = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "token_requests",
            "binb-token requests by outcome",
            token_requests.clone(),
        );
        registry.register(
            "refreshes",
            "provider refreshes by connector type and outcome",
            refreshes.clone(),
        );
        registry.register(
            "refresh_duration_seconds",
            "time of one provider refresh, retries included",
            refresh_seconds.clone(),
        );
        registry.register(
            "connections",
            "stored connections by connector type and status",
            connections.clone(),
        );
        let reauthorization_due = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "connections_reauthorization_due",
            "active connections whose refresh token expires within the warning window",
            reauthorization_due.clone(),
        );
        let backoffs = Counter::default();
        let open_circuits = Gauge::default();
        registry.register(
            "backoffs",
            "refreshes skipped because the connection backs off after a failure",
            backoffs.clone(),
        );
        registry.register(
            "open_circuits",
            "connector types whose circuit breaker is open",
            open_circuits.clone(),
        );
        let audit_dropped = Gauge::default();
        registry.register(
            "audit_dropped",
            "audit events dropped because the database could not keep up",
            audit_dropped.clone(),
        );
        let outcome = |o: &str| {
            token_requests
                .get_or_create(&OutcomeLabels {
                    outcome: o.to_string(),
                })
                .clone()
        };
        let (served, refreshed) = (outcome("served"), outcome("refreshed"));
        Self {
            served,
            refreshed,
            registry,
            audit_dropped,
            backoffs,
            open_circuits,
            token_requests,
            refreshes,
            refresh_seconds,
            connections,
            reauthorization_due,
        }
    }
}

impl Metrics {
    pub fn token_request(&self, outcome: &str) {
        match outcome {
            "served" => {
                self.served.inc();
                return;
            }
            "refreshed" => {
                self.refreshed.inc();
                return;
            }
            _ => {}
        }
        self.token_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn refresh(&self, connector_type: &str, outcome: &str, seconds: f64) {
        self.refreshes
            .get_or_create(&RefreshLabels {
                connector_type: connector_type.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.refresh_seconds
            .get_or_create(&TypeLabels {
                connector_type: connector_type.to_string(),
            })
            .observe(seconds);
    }

    pub fn backoff(&self) {
        self.backoffs.inc();
    }

    /// Replaces the connection counts.
    pub fn set_connections(&self, counts: &[(String, String, i64)]) {
        self.connections.clear();
        for (connector_type, status, count) in counts {
            self.connections
                .get_or_create(&StatusLabels {
                    connector_type: connector_type.clone(),
                    status: status.clone(),
                })
                .set(*count);
        }
    }

    /// Replaces the counts of connections due for reauthorization.
    pub fn set_reauthorization_due(&self, counts: &[(String, i64)]) {
        self.reauthorization_due.clear();
        for (connector_type, count) in counts {
            self.reauthorization_due
                .get_or_create(&TypeLabels {
                    connector_type: connector_type.clone(),
                })
                .set(*count);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
