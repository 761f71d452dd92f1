//! A connection's token set: import (migration from another store).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::{AppState, Outcome, RequestBody, SmallApp};
use crate::domain::{
    AccountIdentity, ConnectionAccount, ConnectionSummary, CredentialInput, ImportTokenSet,
    Metadata, StoredConnection,
};
use crate::refresh::CheckOutcome;

/// A connection as shown to admins: never a token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub app_id: String,
    pub connector_type: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub has_refresh_token: bool,
    /// When the refresh token dies (epoch seconds): from `refresh_token_expires_in` or the
    /// catalog's refresh-token lifetimes; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// Whether the connection uses the tenant's own OAuth client instead of the operator's
    /// (shown by `GET .../connection`; its secret is never shown).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own_client: bool,
    /// The id of the connection's own OAuth client, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Whose account the connection is (`id`, `name`, `email`, `organisation`; each absent
    /// when unknown), from the identity request or the ID token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountIdentity>,
    /// The account the connection had before it was reconnected with a different one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_account: Option<AccountIdentity>,
}

impl ConnectionView {
    /// The view with the connection's stored identity.
    pub fn with_account(mut self, account: Option<ConnectionAccount>) -> Self {
        if let Some(a) = account {
            self.previous_account = a.previous_account_id.map(|id| AccountIdentity {
                id: Some(id),
                ..Default::default()
            });
            self.account = Some(a.account);
        }
        self
    }
}

impl From<&StoredConnection> for ConnectionView {
    fn from(c: &StoredConnection) -> Self {
        Self {
            app_id: c.key.app_id.to_string(),
            connector_type: c.key.connector_type.to_string(),
            status: c.status.as_str(),
            expires_at: c.tokens.expires_at,
            scope: c.tokens.scope.clone(),
            has_refresh_token: c.tokens.refresh_token.is_some(),
            refresh_expires_at: c.tokens.refresh_expires_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
            refreshed_at: c.refreshed_at,
            last_error: c.last_error.clone(),
            metadata: c.tokens.metadata.clone(),
            own_client: c.tokens.client.is_some(),
            client_id: c.tokens.client.as_ref().map(|c| c.client_id.clone()),
            account: None,
            previous_account: None,
        }
    }
}

impl From<&ConnectionSummary> for ConnectionView {
    fn from(c: &ConnectionSummary) -> Self {
        Self {
            app_id: c.key.app_id.to_string(),
            connector_type: c.key.connector_type.to_string(),
            status: c.status.as_str(),
            expires_at: c.expires_at,
            scope: c.scope.clone(),
            has_refresh_token: c.has_refresh_token,
            refresh_expires_at: c.refresh_expires_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
            refreshed_at: c.refreshed_at,
            last_error: c.last_error.clone(),
            metadata: Metadata::new(),
            own_client: false,
            client_id: None,
            account: None,
            previous_account: None,
        }
    }
}

#[utoipa::path(
    put,
    path = "/{app_id}/{connector_type}/connection",
    tag = "connections",
    security(("bearer" = [])),
    params(("app_id" = String, Path), ("connector_type" = String, Path)),
    request_body = ImportTokenSet,
    responses(
        (status = 200, description = "replaced", body = ConnectionView),
        (status = 201, description = "created", body = ConnectionView),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody),
        (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
        (status = 422, description = "invalid_credentials: the provider refused the credential; nothing stored", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody),
        (status = 502, description = "provider_error", body = crate::api::error::ErrorBody),
        (status = 503, description = "provider_unavailable", body = crate::api::error::ErrorBody)
    )
)]
/// `PUT /{app_id}/{connector_type}/connection` — role admin or superadmin. Saves a connection:
/// for `oauth2`, a token set obtained elsewhere; for `api_key`, `{"api_key"}`; for `basic`,
/// `{"username", "password"}` (both checked with the catalog's `verify_url` first); for
/// `client_credentials`, `{}` (the first token is minted now). 201 when it is new, 200 when
/// replaced; 422 `invalid_credentials` when the provider refuses, with nothing stored.
pub async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    SmallApp(key): SmallApp,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let kind = state.keeper.connector_type(&key)?.kind;
    let input = CredentialInput::from_json(kind, &body).map_err(ApiError::InvalidRequest)?;
    let stored = state.keeper.connect(&key, input).await?;
    tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, principal = %principal.name, "connection imported");
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let account = state.keeper.connection_account(&key).await?;
    let view = ConnectionView::from(stored.as_ref()).with_account(account);
    let mut response = (status, Json(view)).into_response();
    response.extensions_mut().insert(Outcome {
        outcome: "imported",
        refreshed: false,
    });
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/{app_id}/{connector_type}/connection",
    tag = "connections",
    security(("bearer" = [])),
    params(("app_id" = String, Path), ("connector_type" = String, Path)),
    responses(
        (status = 200, description = "the connection, never a token", body = ConnectionView),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody),
        (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody)
    )
)]
/// `GET /{app_id}/{connector_type}/connection` — role admin or superadmin. Status, scope,
/// expiry, times and last error; never a token.
pub async fn get(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
    SmallApp(key): SmallApp,
) -> Result<Json<ConnectionView>, ApiError> {
    state.keeper.connector_type(&key)?;
    let connection = state.keeper.store().load(&key).await?.ok_or_else(|| {
        ApiError::NotConnected(format!(
            "app '{}' has no {} connection",
            key.app_id, key.connector_type
        ))
    })?;
    let account = state.keeper.connection_account(&key).await?;
    Ok(Json(
        ConnectionView::from(&connection).with_account(account),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: bool,
    revoked_at_provider: bool,
}

#[utoipa::path(
    delete,
    path = "/{app_id}/{connector_type}/connection",
    tag = "connections",
    security(("bearer" = [])),
    params(("app_id" = String, Path), ("connector_type" = String, Path)),
    responses(
        (status = 200, description = "deleted (and revoked at the provider when it can)", body = Deleted),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody),
        (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody)
    )
)]
/// `DELETE /{app_id}/{connector_type}/connection` — role admin or superadmin. Removes the
/// connection and revokes the grant at the provider (RFC 7009) when the catalog has an endpoint.
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    SmallApp(key): SmallApp,
) -> Result<Json<Deleted>, ApiError> {
    let revoked = state.keeper.delete_connection(&key).await?.ok_or_else(|| {
        ApiError::NotConnected(format!(
            "app '{}' has no {} connection",
            key.app_id, key.connector_type
        ))
    })?;
    tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, principal = %principal.name, revoked_at_provider = revoked, "connection deleted");
    Ok(Json(Deleted {
        deleted: true,
        revoked_at_provider: revoked,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checked {
    /// Whether the provider accepts the stored credential.
    valid: bool,
    /// `active`, or `reauthorization_required` when the provider refuses it.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/{app_id}/{connector_type}/connection/check",
    tag = "connections",
    security(("bearer" = [])),
    params(("app_id" = String, Path), ("connector_type" = String, Path)),
    responses(
        (status = 200, description = "the outcome of the check", body = Checked),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden", body = crate::api::error::ErrorBody),
        (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
        (status = 409, description = "connector_not_configured", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody),
        (status = 502, description = "provider_error", body = crate::api::error::ErrorBody),
        (status = 503, description = "provider_unavailable", body = crate::api::error::ErrorBody)
    )
)]
/// `POST /{app_id}/{connector_type}/connection/check` — role admin or superadmin. Checks the
/// stored credential at the provider now: an API key or Basic credential with the catalog's
/// `verify_url` (refused: the connection becomes `reauthorization_required` and the webhook
/// event is sent), other kinds by obtaining a valid token.
pub async fn check(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
    SmallApp(key): SmallApp,
) -> Result<Json<Checked>, ApiError> {
    Ok(Json(match state.keeper.check_connection(&key).await? {
        CheckOutcome::Valid => Checked {
            valid: true,
            status: "active",
            reason: None,
        },
        CheckOutcome::ReauthorizationRequired(reason) => Checked {
            valid: false,
            status: "reauthorization_required",
            reason: Some(reason),
        },
    }))
}
