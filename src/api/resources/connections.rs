//! The connection listing, for operators and backends.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::resources::connection::ConnectionView;
use crate::api::AppState;
use crate::domain::{
    now_epoch, AppId, ConnectionFilter, ConnectionKey, ConnectionStatus, ConnectorTypeName,
};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    connector_type: Option<String>,
    app_id_prefix: Option<String>,
    expiring_within: Option<i64>,
    reauthorization_due_within: Option<i64>,
    missing_scope: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionView>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn encode_cursor(key: &ConnectionKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}/{}", key.app_id, key.connector_type))
}

fn decode_cursor(cursor: &str) -> Option<ConnectionKey> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (app, ct) = text.split_once('/')?;
    Some(ConnectionKey::new(
        AppId::parse(app).ok()?,
        ConnectorTypeName::parse(ct).ok()?,
    ))
}

/// Parses and checks the query of a listing.
pub fn filter_of(query: ListQuery) -> Result<ConnectionFilter, ApiError> {
    let bad = |m: &str| ApiError::InvalidRequest(m.to_string());
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit must be between 1 and 1000"));
    }
    Ok(ConnectionFilter {
        status: query
            .status
            .map(|s| {
                ConnectionStatus::parse(&s)
                    .ok_or_else(|| bad("status must be active or reauthorization_required"))
            })
            .transpose()?,
        connector_type: query
            .connector_type
            .map(|c| ConnectorTypeName::parse(&c).map_err(ApiError::InvalidRequest))
            .transpose()?,
        app_id_prefix: query
            .app_id_prefix
            .map(|p| {
                if p.len() <= 63
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
                {
                    Ok(p)
                } else {
                    Err(bad("app_id_prefix uses the characters of an app id"))
                }
            })
            .transpose()?,
        expiring_before: query
            .expiring_within
            .map(|s| {
                if s >= 0 {
                    Ok(now_epoch().saturating_add(s))
                } else {
                    Err(bad("expiring_within must not be negative"))
                }
            })
            .transpose()?,
        refresh_expiring_before: query
            .reauthorization_due_within
            .map(|s| {
                if s >= 0 {
                    Ok(now_epoch().saturating_add(s))
                } else {
                    Err(bad("reauthorization_due_within must not be negative"))
                }
            })
            .transpose()?,
        missing_scope: query
            .missing_scope
            .map(|s| {
                if !s.is_empty()
                    && s.len() <= 255
                    && !s.chars().any(|c| c.is_whitespace() || c == ',' || c.is_control())
                {
                    Ok(s)
                } else {
                    Err(bad("missing_scope must be one scope: 1 to 255 characters, no space, comma or control character"))
                }
            })
            .transpose()?,
        after: query
            .cursor
            .map(|c| decode_cursor(&c).ok_or_else(|| bad("cursor is not one this service issued")))
            .transpose()?,
        limit,
    })
}

#[utoipa::path(
    get,
    path = "/connections",
    tag = "connections",
    security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "active or reauthorization_required"),
        ("connector_type" = Option<String>, Query),
        ("app_id_prefix" = Option<String>, Query),
        ("expiring_within" = Option<i64>, Query, description = "seconds"),
        ("reauthorization_due_within" = Option<i64>, Query, description = "seconds: active connections whose refresh token expires within them"),
        ("missing_scope" = Option<String>, Query, description = "connections whose granted scopes lack this one"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, description = "a page of connections, never a token", body = ConnectionPage),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody)
    )
)]
/// `GET /connections` — role admin or superadmin. Keyset pagination in (app, type) order.
pub async fn list(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
    let filter = filter_of(query)?;
    let rows = state.keeper.store().list_connections(&filter).await?;
    let next_cursor = (rows.len() as i64 == filter.limit)
        .then(|| rows.last().map(|r| encode_cursor(&r.key)))
        .flatten();
    let mut accounts: std::collections::HashMap<_, _> = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => state
            .keeper
            .store()
            .connection_accounts_between(&first.key, &last.key)
            .await?
            .into_iter()
            .collect(),
        _ => Default::default(),
    };
    Ok(Json(ConnectionPage {
        connections: rows
            .iter()
            .map(|r| ConnectionView::from(r).with_account(accounts.remove(&r.key)))
            .collect(),
        next_cursor,
    }))
}
