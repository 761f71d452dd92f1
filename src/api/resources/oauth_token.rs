//! Service accounts as OAuth clients: the client-credentials grant (RFC 6749 §4.4) issuing
//! short-lived JWTs, and the public keys that verify them.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use crate::api::{AppState, RequestBody};

/// An error of the token endpoint, in the shape of RFC 6749 §5.2.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": error, "error_description": description, "message": description })),
    )
        .into_response();
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
        description = "grant_type=client_credentials, with client_id and client_secret (HTTP Basic or form)"),
    responses(
        (status = 200, description = "a JWT access token"),
        (status = 400, description = "invalid_request, unsupported_grant_type (RFC 6749 §5.2)"),
        (status = 401, description = "invalid_client")
    )
)]
/// `POST /oauth/token` — the client authenticates with its credentials. A service account's
/// name is its client id and its bearer token its client secret.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    let form: Vec<(String, String)> = oauth2::url::form_urlencoded::parse(&body)
        .into_owned()
        .collect();
    let (client_id, client_secret) = match client_of(&headers, &form) {
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

/// The grant type and the client's credentials of a token request, or the OAuth error to
/// answer (RFC 6749 §5.2).
#[allow(clippy::result_large_err)]
fn client_of(headers: &HeaderMap, form: &[(String, String)]) -> Result<(String, String), Response> {
    match form
        .iter()
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.as_str())
    {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            ))
        }
        None => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            ))
        }
    }
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
