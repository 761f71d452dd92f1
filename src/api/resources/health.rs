//! Liveness: answers 200 when the database does.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::AppState;

/// `GET /healthz` — no authentication.
pub async fn get(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.keeper.store().ping().await.map_err(|e| {
        tracing::error!(error = %e, "health check: database does not answer");
        ApiError::Unavailable
    })?;
    Ok(Json(json!({ "status": "ok" })))
}
