//! The connector catalog as this deployment sees it.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;

use crate::api::auth::Principal;
use crate::api::AppState;
use crate::connectors::ConnectorType;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectorTypeView {
    pub name: String,
    pub display_name: String,
    /// `oauth2`, `client_credentials`, `api_key` or `basic`.
    pub kind: &'static str,
    pub source: &'static str,
    /// Whether client credentials are configured (signups and refreshes work).
    pub configured: bool,
    /// Empty for kinds without a browser consent.
    pub authorization_url: String,
    /// Empty for kinds without a token endpoint.
    pub token_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs_url: Option<String>,
    pub scopes: Vec<String>,
    pub pkce: bool,
    pub placeholders: Vec<String>,
    pub metadata_fields: Vec<String>,
}

impl From<&ConnectorType> for ConnectorTypeView {
    fn from(c: &ConnectorType) -> Self {
        Self {
            name: c.name.to_string(),
            display_name: c.display_name.clone(),
            kind: c.kind.as_str(),
            source: if c.from_catalog { "catalog" } else { "config" },
            configured: c.has_credentials(),
            authorization_url: c.authorization_url.clone(),
            token_url: c.token_url.clone(),
            revocation_url: c.revocation_url.clone(),
            api_base_url: c.api_base_url.clone(),
            docs_url: c.docs_url.clone(),
            scopes: c.scopes.clone(),
            pkce: c.pkce,
            placeholders: c.placeholders.keys().cloned().collect(),
            metadata_fields: c.metadata_fields.clone(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/connector-types",
    tag = "connections",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every connector type", body = Vec<ConnectorTypeView>),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody)
    )
)]
/// `GET /connector-types` — role admin or superadmin. Every catalog entry and custom type,
/// never a client secret.
pub async fn list(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
) -> Json<Vec<ConnectorTypeView>> {
    Json(
        state
            .keeper
            .catalog()
            .iter()
            .map(|c| ConnectorTypeView::from(c.as_ref()))
            .collect(),
    )
}
