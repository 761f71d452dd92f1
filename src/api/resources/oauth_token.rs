//! The token endpoint: service accounts as OAuth clients (the client-credentials grant, RFC
//! 6749 §4.4, issuing short-lived JWTs, and the public keys that verify them), and the token
//! exchange (RFC 8693, `token_exchange.rs`) that trades a workload's JWT for a connection's
//! token.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use super::token_exchange::{exchange, TOKEN_EXCHANGE};
use crate::api::error::ErrorCode;
use crate::api::{AppState, RequestBody};

/// An error of the token endpoint, in the shape of RFC 6749 §5.2 (`message` repeats the
/// description, as in every tokenbox error).
pub(super) fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    oauth_error_with(status, error, description, serde_json::Map::new())
}

/// [`oauth_error`] with more fields in its body.
pub(super) fn oauth_error_with(
    status: StatusCode,
    error: &'static str,
    description: &str,
    more: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = serde_json::Map::from_iter([
        ("error".to_string(), json!(error)),
        ("error_description".to_string(), json!(description)),
        ("message".to_string(), json!(description)),
    ]);
    body.extend(more);
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(ErrorCode(error));
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokenbox\""),
        );
    }
    response
}

/// Client credentials from HTTP Basic (url-encoded id and secret) or from the form body.
fn credentials(headers: &HeaderMap, form: &[(String, String)]) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| -> String {
            oauth2::url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Some((unescape(id), unescape(secret)));
    }
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some((get("client_id")?, get("client_secret")?))
}

#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "clients",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials, with client_id and client_secret (HTTP Basic or form); \
or grant_type=urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693) with subject_token (a trusted \
issuer's workload JWT or a tokenbox JWT), subject_token_type=urn:ietf:params:oauth:token-type:jwt, and \
resource=tokenbox:connection:<app_id>/<connector_type>; optional scope (the scopes the job needs)"),
    responses(
        (status = 200, description = "client_credentials: a JWT access token; token exchange: the connection's provider access token, with issued_token_type urn:ietf:params:oauth:token-type:access_token"),
        (status = 400, description = "invalid_request, unsupported_grant_type, invalid_grant (the subject token or the tenant's grant refused), invalid_target (a connection the subject may not use, or none), invalid_scope (RFC 6749 §5.2, RFC 8693 §2.2.2); tokenbox_error names tokenbox's own code where there is one"),
        (status = 401, description = "invalid_client"),
        (status = 429, description = "rate_limited (Retry-After)"),
        (status = 500, description = "server_error"),
        (status = 502, description = "server_error: the provider answered with an error (tokenbox_error provider_error)"),
        (status = 503, description = "temporarily_unavailable: the provider or the database is unavailable (Retry-After)")
    )
)]
/// `POST /oauth/token` — public; the grant authenticates. `client_credentials` (RFC 6749
/// §4.4): a service account's name is its client id and its bearer token its client secret.
/// The token exchange (RFC 8693): a workload's JWT for a connection's provider token.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    let form: Vec<(String, String)> = oauth2::url::form_urlencoded::parse(&body)
        .into_owned()
        .collect();
    match single(&form, "grant_type") {
        Ok(Some("client_credentials")) => client_credentials(&state, &headers, &form).await,
        Ok(Some(TOKEN_EXCHANGE)) => exchange(&state, &form).await,
        Ok(Some(_)) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant_type must be client_credentials or {TOKEN_EXCHANGE}"),
        ),
        Ok(None) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is missing",
        ),
        Err(refusal) => refusal,
    }
}

/// A parameter of the form, sent at most once (RFC 6749 §3.2).
#[allow(clippy::result_large_err)]
pub(super) fn single<'f>(
    form: &'f [(String, String)],
    name: &str,
) -> Result<Option<&'f str>, Response> {
    let mut values = form
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{name} is sent more than once"),
        ));
    }
    Ok(first)
}

/// The client-credentials grant: a JWT for the authenticated service account.
async fn client_credentials(
    state: &AppState,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Response {
    let (client_id, client_secret) = match client_of(headers, form) {
        Ok(client) => client,
        Err(refusal) => return refusal,
    };
    let principal = match state
        .auth
        .client_credentials(&client_id, &client_secret)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            let mut response = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client, wrong secret, or an expired account",
            );
            // A real account refused (expired) is audited under its name.
            if let Ok(Some(known)) = state.auth.authenticate(&client_secret).await {
                if known.name == client_id {
                    response
                        .extensions_mut()
                        .insert(crate::api::PrincipalName(known.name));
                }
            }
            return response;
        }
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    match state
        .jwt
        .issue(
            &principal.name,
            principal.role,
            principal.scope.clone(),
            principal.expires_at,
            &principal.generation,
        )
        .await
    {
        Ok((jwt, expires_in)) => {
            let mut response = Json(json!({
                "access_token": jwt,
                "token_type": "Bearer",
                "expires_in": expires_in,
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
                .extensions_mut()
                .insert(crate::api::PrincipalName(principal.name));
            response
        }
        Err(e) => crate::api::error::ApiError::from(e).into_response(),
    }
}

/// The client's credentials of a client-credentials request, or the OAuth error to answer
/// (RFC 6749 §5.2).
#[allow(clippy::result_large_err)]
fn client_of(headers: &HeaderMap, form: &[(String, String)]) -> Result<(String, String), Response> {
    let basic = headers.contains_key(header::AUTHORIZATION);
    if basic && form.iter().any(|(k, _)| k == "client_secret") {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "use one client authentication method: HTTP Basic or the form body, not both",
        ));
    }
    credentials(headers, form).ok_or_else(|| {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client credentials are missing (HTTP Basic or client_id and client_secret)",
        )
    })
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "clients", responses(
    (status = 200, description = "the public keys that verify tokenbox's JWTs (RFC 7517)")
))]
/// `GET /.well-known/jwks.json` — public.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.jwt.jwks().await {
        Ok(keys) => {
            let mut response = Json(keys).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
            response
        }
        Err(e) => crate::api::error::ApiError::from(e).into_response(),
    }
}
