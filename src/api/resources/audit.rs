//! The audit trail, read back.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::domain::{AppId, AuditEvent};

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    app_id: Option<String>,
    since: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    security(("bearer" = [])),
    params(
        ("app_id" = Option<String>, Query),
        ("since" = Option<i64>, Query, description = "epoch seconds; default: 24 hours ago"),
        ("limit" = Option<i64>, Query, description = "1 to 1000; default 100"),
    ),
    responses(
        (status = 200, description = "events, newest first", body = Vec<crate::domain::AuditEvent>),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody)
    )
)]
/// `GET /audit?app_id=&since=&limit=` — role superadmin. Newest first; `since` in epoch
/// seconds (default: the last 24 hours); `limit` at most 1000 (default 100).
pub async fn list(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::InvalidRequest(
            "query: app_id (an app id), since (epoch seconds), limit (1 to 1000)".into(),
        )
    })?;
    if let Some(app) = &query.app_id {
        AppId::parse(app).map_err(ApiError::InvalidRequest)?;
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let since = query
        .since
        .unwrap_or_else(|| crate::domain::now_epoch() - 86_400);
    let events = state
        .keeper
        .store()
        .read_audit(query.app_id.as_deref(), since, limit)
        .await?;
    Ok(Json(events))
}
