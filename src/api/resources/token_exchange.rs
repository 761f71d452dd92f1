//! The token exchange (RFC 8693) at `POST /oauth/token`: a job presents its workload identity
//! (a trusted issuer's JWT, or one of tokenbox's own JWTs) as `subject_token` and names a
//! connection as `resource`; it gets the connection's provider access token, served by the
//! same `SecretsKeeper::retrieve_token` as `binb-token` (refresh on demand, audit, errors).
//!
//! `resource` is `tokenbox:connection:<app_id>/<connector_type>`. The subject's service
//! account needs the role `binb-token` requires and a scope that covers the connection.
//! Errors follow RFC 8693 §2.2.2 and RFC 6749 §5.2: `invalid_request` (a parameter missing,
//! repeated or malformed), `invalid_grant` (the subject token refused, or the tenant's grant
//! revoked), `invalid_target` (a connection the subject may not use, or that does not exist),
//! `invalid_scope` (the connection lacks a scope the job asked for). Where tokenbox has its own
//! stable code for the case (what `binb-token` would answer), the answer carries it as
//! `tokenbox_error`. Like `binb-token`, the form may carry `min_validity` and `force_refresh`,
//! and the answer carries `binb-token`'s fields besides RFC 8693's.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::binb_token::{self, BinBToken};
use super::oauth_token::{oauth_error, oauth_error_with, single};
use crate::api::error::ApiError;
use crate::api::routes::AuditAction;
use crate::api::{AppState, AuditKey, Outcome};
use crate::domain::{AppId, ConnectionKey, ConnectorTypeName};
use crate::refresh::TokenRequest;

/// The grant type of the token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A JWT as subject token (RFC 8693 §3).
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An access token: what is issued, and accepted as the type of tokenbox's own JWTs.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// How `resource` names a connection.
pub const RESOURCE_PREFIX: &str = "tokenbox:connection:";

/// `tokenbox:connection:<app_id>/<connector_type>`, validated.
fn connection_of(resource: &str) -> Result<ConnectionKey, String> {
    let form = "resource must be tokenbox:connection:<app_id>/<connector_type>";
    let (app, connector_type) = resource
        .strip_prefix(RESOURCE_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| form.to_string())?;
    Ok(ConnectionKey::new(
        AppId::parse(app).map_err(|e| format!("{form}: {e}"))?,
        ConnectorTypeName::parse(connector_type).map_err(|e| format!("{form}: {e}"))?,
    ))
}

/// A refusal of the exchange (RFC 6749 §5.2) that tokenbox's own error explains: its code as
/// `tokenbox_error` (with `missing_scopes` and `Retry-After` where it has them).
fn refusal(status: StatusCode, error: &'static str, description: &str, own: &ApiError) -> Response {
    let mut more = serde_json::Map::from_iter([("tokenbox_error".to_string(), json!(own.code()))]);
    if let ApiError::InsufficientScope { missing, .. } = own {
        more.insert("missing_scopes".into(), json!(missing));
    }
    let mut response = oauth_error_with(status, error, description, more);
    let retry_after = match own {
        ApiError::ProviderUnavailable { retry_after, .. }
        | ApiError::RateLimited { retry_after, .. }
        | ApiError::ProviderError {
            retry_after: Some(retry_after),
            ..
        } => Some(*retry_after),
        ApiError::Unavailable => Some(5),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An error of `binb-token`'s path, in the exchange's terms.
fn exchange_error(error: ApiError) -> Response {
    let description = error.to_string();
    let (status, code) = match &error {
        ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        ApiError::Unauthorized => (StatusCode::BAD_REQUEST, "invalid_grant"),
        ApiError::ReauthorizationRequired(_) => {
            let description = format!(
                "the tenant's grant for this connection was revoked or has expired; the tenant must reconnect (tokenbox_error reauthorization_required): {description}"
            );
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                &description,
                &error,
            );
        }
        ApiError::Forbidden(_)
        | ApiError::NotConnected(_)
        | ApiError::UnknownConnectorType(_)
        | ApiError::ConnectorNotConfigured(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
        ApiError::InsufficientScope { .. } => (StatusCode::BAD_REQUEST, "invalid_scope"),
        ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        ApiError::ProviderUnavailable { .. } | ApiError::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        ApiError::ProviderError { .. } => (StatusCode::BAD_GATEWAY, "server_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        // Logged with its cause where it arose; the answer stays opaque.
        return refusal(status, code, "an internal error occurred", &error);
    }
    refusal(status, code, &description, &error)
}

/// The exchange's parameters, each sent at most once.
struct Parameters<'f> {
    subject_token: Option<&'f str>,
    subject_token_type: Option<&'f str>,
    requested_token_type: Option<&'f str>,
    resource: Option<&'f str>,
    audience: Option<&'f str>,
    scope: Option<&'f str>,
    min_validity: Option<&'f str>,
    force_refresh: Option<&'f str>,
}

impl<'f> Parameters<'f> {
    #[allow(clippy::result_large_err)]
    fn of(form: &'f [(String, String)]) -> Result<Self, Response> {
        Ok(Self {
            subject_token: single(form, "subject_token")?,
            subject_token_type: single(form, "subject_token_type")?,
            requested_token_type: single(form, "requested_token_type")?,
            resource: single(form, "resource")?,
            audience: single(form, "audience")?,
            scope: single(form, "scope")?,
            min_validity: single(form, "min_validity")?,
            force_refresh: single(form, "force_refresh")?,
        })
    }
}

/// `POST /oauth/token` with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`.
/// No client authentication is needed: the subject token is the credential (client
/// credentials sent along are ignored).
pub async fn exchange(state: &AppState, form: &[(String, String)]) -> Response {
    let bad =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description);
    let p = match Parameters::of(form) {
        Ok(parameters) => parameters,
        Err(refused) => return refused,
    };
    let Some(subject_token) = p.subject_token.filter(|t| !t.is_empty()) else {
        return bad("subject_token is missing");
    };
    match p.subject_token_type {
        Some(JWT_TYPE | ACCESS_TOKEN_TYPE) => {}
        Some(_) => {
            return bad(&format!(
                "subject_token_type must be {JWT_TYPE} (or {ACCESS_TOKEN_TYPE} for a tokenbox JWT)"
            ))
        }
        None => return bad("subject_token_type is missing"),
    }
    if form.iter().any(|(k, _)| k == "actor_token") {
        return bad("actor_token (delegation) is not supported");
    }
    if p.requested_token_type
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return bad(&format!(
            "requested_token_type must be {ACCESS_TOKEN_TYPE} when given"
        ));
    }
    // The connection: `resource`, or `audience` in the same form when `resource` is absent.
    let target = match (p.resource, p.audience) {
        (Some(r), Some(a)) if r != a => {
            return bad("resource and audience name different connections; send resource alone")
        }
        (Some(named), _) | (None, Some(named)) => named,
        (None, None) => {
            return bad("resource is missing: tokenbox:connection:<app_id>/<connector_type>")
        }
    };
    let key = match connection_of(target) {
        Ok(key) => key,
        Err(description) => return bad(&description),
    };
    let required_scopes: Vec<String> = p
        .scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if required_scopes.len() > 50
        || required_scopes
            .iter()
            .any(|s| s.len() > 255 || s.chars().any(char::is_control))
    {
        return bad("scope must be at most 50 space-separated scopes of at most 255 characters");
    }
    let request = match binb_token::token_request(p.min_validity, p.force_refresh) {
        Ok(request) => request,
        Err(error) => return bad(&error.to_string()),
    };

    let refused_subject = |reason: &str| {
        refusal(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            &format!("the subject token is refused: {reason}"),
            &ApiError::Unauthorized,
        )
    };
    let mut response = if !crate::jwt::looks_like_jwt(subject_token) {
        refused_subject("it is not a JWT (a trusted issuer's workload token or a tokenbox JWT)")
    } else {
        match state.auth.authenticate_bearer_jwt(subject_token).await {
            Err(e) => exchange_error(ApiError::from(e)),
            Ok(Err(reason)) => refused_subject(&reason),
            Ok(Ok(principal)) => {
                let mut response = serve(state, &principal, &key, request, &required_scopes).await;
                crate::api::auth::mark(&mut response, &principal);
                response
            }
        }
    };
    let extensions = response.extensions_mut();
    extensions.insert(AuditAction(crate::audit::TOKEN_EXCHANGE));
    extensions.insert(AuditKey(key));
    response
}

/// The checks of `binb-token`'s route for the subject's account (expiry, rate, role, scope),
/// then its token.
async fn serve(
    state: &AppState,
    principal: &crate::api::auth::Principal,
    key: &ConnectionKey,
    request: TokenRequest,
    required_scopes: &[String],
) -> Response {
    if let Err(error) = state.auth.admit(principal, BinBToken::ROLE, Some(key)) {
        return match error {
            ApiError::Unauthorized => refusal(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the subject token is refused: it or its service account has expired",
                &error,
            ),
            error => exchange_error(error),
        };
    }
    let served = match binb_token::retrieve(state, key, request, None, required_scopes).await {
        Ok(served) => served,
        Err(error) => return exchange_error(error),
    };
    // `binb-token`'s body (the headers and query a job sends, the metadata, the API base
    // URL), with the issued token's type of RFC 8693 §2.2.1.
    let body = match binb_token::response_body(&state.keeper, key, &served) {
        Ok(body) => body,
        Err(error) => return exchange_error(error),
    };
    let mut body = match serde_json::to_value(body) {
        Ok(body) => body,
        Err(_) => return exchange_error(ApiError::Internal),
    };
    body["issued_token_type"] = json!(ACCESS_TOKEN_TYPE);
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response.extensions_mut().insert(Outcome {
        outcome: "served",
        refreshed: served.refreshed,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_names_one_valid_connection() {
        let key = connection_of("tokenbox:connection:acme-1/github").unwrap();
        assert_eq!(
            (key.app_id.as_str(), key.connector_type.as_str()),
            ("acme-1", "github")
        );
        for bad in [
            "",
            "acme-1/github",
            "tokenbox:connection:acme-1",
            "tokenbox:connection:/github",
            "tokenbox:connection:acme-1/",
            "tokenbox:connection:ACME/github",
            "tokenbox:connection:acme/git/hub",
            "https://tokenbox.example/acme/github",
        ] {
            assert!(connection_of(bad).is_err(), "{bad:?}");
        }
    }
}
