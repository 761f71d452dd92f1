//! `BinBToken`: the token an extraction job asks for, refreshed first when needed.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::{AppState, Outcome, SmallApp};
use crate::domain::ConnectionKey;
use crate::domain::{now_epoch, Metadata};
use crate::refresh::scoped::GithubScope;
use crate::refresh::{ServedToken, TokenRequest};
use crate::store::Role;

/// The resource of the design note: `GET /{app_id}/{connector_type}/binb-token`, served by
/// [`get`].
pub struct BinBToken;

impl BinBToken {
    /// The resource's name under `/{app_id}/{connector_type}/`.
    pub const RESOURCE: &'static str = "binb-token";
    /// The role that reads a connection's token, here and through the token exchange.
    pub const ROLE: Role = Role::Superadmin;
}

#[derive(Debug, Deserialize)]
pub struct BinBTokenQuery {
    min_validity: Option<String>,
    force_refresh: Option<String>,
    repositories: Option<String>,
    permissions: Option<String>,
    required_scopes: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BinBTokenResponse {
    pub access_token: String,
    pub token_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub app_id: String,
    pub connector_type: String,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// The exact HTTP headers a job sends to the provider's API with this credential.
    pub headers: BTreeMap<String, String>,
    /// Query parameters a job adds to every API request (an API key sent in the query).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// The provider's API base URL for this connection, when the catalog knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

impl BinBTokenQuery {
    /// `required_scopes=a,b`: the scopes the job needs (commas or spaces between them).
    fn required_scopes(&self) -> Result<Vec<String>, ApiError> {
        let Some(raw) = self.required_scopes.as_deref() else {
            return Ok(Vec::new());
        };
        let scopes: Vec<String> = raw
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if scopes.is_empty()
            || scopes.len() > 50
            || scopes
                .iter()
                .any(|s| s.len() > 255 || s.chars().any(char::is_control))
        {
            return Err(ApiError::InvalidRequest(
                "required_scopes must be 1 to 50 comma-separated scopes of at most 255 characters"
                    .into(),
            ));
        }
        Ok(scopes)
    }

    /// The GitHub App scope asked for, if any.
    fn scope(&self) -> Result<Option<GithubScope>, ApiError> {
        GithubScope::parse(self.repositories.as_deref(), self.permissions.as_deref())
            .map_err(ApiError::InvalidRequest)
    }

    fn parse(self) -> Result<TokenRequest, ApiError> {
        token_request(self.min_validity.as_deref(), self.force_refresh.as_deref())
    }
}

/// `min_validity` and `force_refresh` as a job sends them: in `binb-token`'s query, or in the
/// token exchange's form.
pub fn token_request(
    min_validity: Option<&str>,
    force_refresh: Option<&str>,
) -> Result<TokenRequest, ApiError> {
    let min_validity = min_validity
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| (0..=31_536_000).contains(v))
                .ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "min_validity must be a whole number of seconds between 0 and 31536000"
                            .into(),
                    )
                })
        })
        .transpose()?;
    let force_refresh = match force_refresh {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "force_refresh must be true or false".into(),
            ))
        }
    };
    Ok(TokenRequest {
        min_validity,
        force_refresh,
    })
}

/// The token of a connection for a job, through `SecretsKeeper::retrieve_token` (refreshed
/// first when needed), checked against the scopes the job needs, and counted in the metrics:
/// what `binb-token` and the token exchange (`POST /oauth/token`) share.
pub async fn retrieve(
    state: &AppState,
    key: &ConnectionKey,
    request: TokenRequest,
    scope: Option<&GithubScope>,
    required_scopes: &[String],
) -> Result<ServedToken, ApiError> {
    let served = match scope {
        Some(scope) => state.keeper.retrieve_scoped(key, request, scope).await,
        None => state.keeper.retrieve_token(key, request).await,
    };
    let served = match served {
        Ok(served) => served,
        Err(e) => {
            let error = ApiError::from(e);
            state.metrics.token_request(error.code());
            return Err(error);
        }
    };
    let missing = served.connection.tokens.missing_scopes(required_scopes);
    if !missing.is_empty() {
        let error = ApiError::InsufficientScope {
            message: format!(
                "the connection was not granted the scope(s) {}: the tenant must reconnect and consent to them",
                missing.join(", ")
            ),
            missing,
        };
        state.metrics.token_request(error.code());
        return Err(error);
    }
    state.metrics.token_request(if served.refreshed {
        "refreshed"
    } else {
        "served"
    });
    Ok(served)
}

/// The JSON body of a served token (also used by the benchmark's floor, `bench/bench.rs`).
pub fn response_body(
    keeper: &crate::refresh::SecretsKeeper,
    key: &crate::domain::ConnectionKey,
    served: &crate::refresh::ServedToken,
) -> Result<BinBTokenResponse, ApiError> {
    let c = &served.connection;
    let now = now_epoch();
    let ct = keeper.connector_type(key)?;
    let (headers, query) = ct.credential_headers(&c.tokens);
    Ok(BinBTokenResponse {
        access_token: c.tokens.access_token.expose().to_string(),
        token_type: ct.token_type(&c.tokens),
        expires_at: c.tokens.expires_at,
        expires_in: c.tokens.expires_at.map(|at| (at - now).max(0)),
        scope: c.tokens.scope.clone(),
        app_id: key.app_id.to_string(),
        connector_type: key.connector_type.to_string(),
        metadata: c.tokens.metadata.clone(),
        headers,
        query,
        api_base_url: ct.api_base_url_for(&c.tokens.metadata),
    })
}

#[utoipa::path(
    get,
    path = "/{app_id}/{connector_type}/binb-token",
    tag = "tokens",
    security(("bearer" = [])),
    params(
        ("app_id" = String, Path, description = "the small app, [a-z0-9][a-z0-9_-]{0,62}"),
        ("connector_type" = String, Path, description = "a connector type of the catalog or the configuration"),
        ("min_validity" = Option<i64>, Query, description = "seconds the token must stay valid (0 to 31536000)"),
        ("force_refresh" = Option<bool>, Query, description = "refresh even if the stored token looks valid"),
        ("repositories" = Option<String>, Query, description = "github_app: comma-separated repository names the token is limited to"),
        ("permissions" = Option<String>, Query, description = "github_app: comma-separated name:level permissions the token is limited to (contents:read)"),
        ("required_scopes" = Option<String>, Query, description = "comma-separated scopes the job needs: 409 insufficient_scope naming the ones the connection was not granted"),
    ),
    responses(
        (status = 200, description = "a valid access token", body = BinBTokenResponse),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
    (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
    (status = 403, description = "forbidden", body = crate::api::error::ErrorBody),
    (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
    (status = 409, description = "reauthorization_required, or insufficient_scope (with missing_scopes)", body = crate::api::error::ErrorBody),
    (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody),
    (status = 502, description = "provider_error", body = crate::api::error::ErrorBody),
    (status = 503, description = "provider_unavailable (Retry-After)", body = crate::api::error::ErrorBody)
    )
)]
/// `GET /{app_id}/{connector_type}/binb-token` — role superadmin. Returns an access token
/// valid for at least `min_validity` seconds (default: the refresh margin), refreshing it with
/// the refresh-token grant (RFC 6749 §6) first when needed.
pub async fn get(
    State(state): State<AppState>,
    Extension(_principal): Extension<Principal>,
    SmallApp(key): SmallApp,
    query: Result<Query<BinBTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
    let scope = query.scope()?;
    let required_scopes = query.required_scopes()?;
    let request = query.parse()?;
    let served = retrieve(&state, &key, request, scope.as_ref(), &required_scopes).await?;
    let body = response_body(&state.keeper, &key, &served)?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    let mut response = (headers, Json(body)).into_response();
    response.extensions_mut().insert(Outcome {
        outcome: "served",
        refreshed: served.refreshed,
    });
    Ok(response)
}
