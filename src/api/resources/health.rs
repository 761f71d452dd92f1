//! Health, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "the database answers"),
    (status = 503, description = "it does not", body = crate::api::error::ErrorBody)
))]
/// `GET /healthz` — no authentication.
pub async fn get(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.keeper.store().ping().await.map_err(|e| {
        tracing::error!(error = %e, "health check: database does not answer");
        ApiError::Unavailable
    })?;
    Ok(Json(json!({ "status": "ok" })))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "the database does not answer within 2 s", body = crate::api::error::ErrorBody)
))]
/// `GET /readyz` — no authentication. 200 when the database answers within 2 seconds, so a
/// load balancer stops sending traffic to a replica that lost its database.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), state.keeper.store().ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: database does not answer");
            Err(ApiError::Unavailable)
        }
        Err(_) => {
            tracing::warn!("not ready: database did not answer within 2 s");
            Err(ApiError::Unavailable)
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")
))]
/// `GET /metrics` — no authentication (labels carry connector types and outcomes only).
/// OpenMetrics text, which Prometheus scrapes.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(Ok(counts)) = tokio::time::timeout(
        Duration::from_secs(2),
        state.keeper.store().count_connections(),
    )
    .await
    {
        state.metrics.set_connections(&counts);
    }
    let before = crate::domain::now_epoch().saturating_add(state.keeper.warning_window());
    if let Ok(Ok(due)) = tokio::time::timeout(
        Duration::from_secs(2),
        state.keeper.store().count_reauthorization_due(before),
    )
    .await
    {
        state.metrics.set_reauthorization_due(&due);
    }
    state
        .metrics
        .open_circuits
        .set(state.keeper.open_circuits() as i64);
    state
        .metrics
        .audit_dropped
        .set(state.audit.dropped() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
