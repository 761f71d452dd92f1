//! A built-in sandbox OAuth provider, for `tokenbox demo` and for developing extraction jobs
//! locally. It exists only when `sandbox = true` (the demo sets it); never by default.
//!
//! `/sandbox/authorize` shows an Approve and a Deny button; `/sandbox/token` runs the
//! authorization-code grant (PKCE S256 checked) and the refresh-token grant (short-lived access
//! tokens, rotating refresh tokens); `/sandbox/api/me` is a resource that checks the token.
//! Everything lives in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::pages::{escape, page};
use crate::domain::now_epoch;

/// The sandbox's client credentials (it trusts only tokenbox's own demo configuration).
pub const CLIENT_ID: &str = "tokenbox-sandbox";
/// Access tokens of the sandbox live this long, so refreshes are easy to watch.
pub const ACCESS_TOKEN_LIFETIME: i64 = 300;

#[derive(Default)]
struct Sandbox {
    client_secret: String,
    codes: HashMap<String, (String, Option<String>)>,
    access: HashMap<String, i64>,
    refresh: HashMap<String, ()>,
}

#[derive(Clone)]
pub struct SandboxState(Arc<Mutex<Sandbox>>);

fn random(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The sandbox's routes, under `/sandbox/`.
pub fn router(client_secret: &str) -> Router {
    let state = SandboxState(Arc::new(Mutex::new(Sandbox {
        client_secret: client_secret.to_string(),
        ..Sandbox::default()
    })));
    Router::new()
        .route("/sandbox/authorize", get(authorize_page).post(decide))
        .route("/sandbox/token", post(token))
        .route("/sandbox/api/me", get(me))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    code_challenge: Option<String>,
}

async fn authorize_page(
    query: Result<Query<AuthorizeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sandbox",
            "<h1>Invalid authorization request</h1>",
        );
    };
    if q.client_id != CLIENT_ID {
        return page(
            StatusCode::BAD_REQUEST,
            "Sandbox",
            "<h1>Unknown client</h1>",
        );
    }
    let hidden = |name: &str, value: &str| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        )
    };
    let fields = [
        hidden("redirect_uri", &q.redirect_uri),
        hidden("state", &q.state),
        hidden("code_challenge", q.code_challenge.as_deref().unwrap_or("")),
    ]
    .concat();
    page(
        StatusCode::OK,
        "Sandbox provider",
        &format!(
            "<h1>Sandbox provider</h1><p>tokenbox asks for access to your sandbox account \
             (scope <strong>{scope}</strong>). This provider is built into tokenbox for trying it \
             out: no real account is involved.</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"decision\" value=\"approve\">{fields}\
             <button id=\"approve\" type=\"submit\">Approve</button></form>\
             <form method=\"post\" style=\"margin-top:12px\"><input type=\"hidden\" name=\"decision\" value=\"deny\">{fields}\
             <button id=\"deny\" type=\"submit\" style=\"background:#8a93a5\">Deny</button></form>",
            scope = escape(q.scope.as_deref().unwrap_or("-")),
        ),
    )
}

#[derive(Debug, Deserialize)]
struct Decision {
    decision: String,
    redirect_uri: String,
    state: String,
    #[serde(default)]
    code_challenge: String,
}

async fn decide(State(s): State<SandboxState>, Form(d): Form<Decision>) -> Response {
    let separator = if d.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let state = d.state.clone();
    if d.decision != "approve" {
        return Redirect::to(&format!(
            "{}{separator}error=access_denied&error_description=The+sandbox+user+denied+access&state={}",
            d.redirect_uri,
            urlencode(&state)
        ))
        .into_response();
    }
    let code = random("sbx-code-");
    let challenge = (!d.code_challenge.is_empty()).then(|| d.code_challenge.clone());
    s.0.lock()
        .expect("poisoned")
        .codes
        .insert(code.clone(), (d.redirect_uri.clone(), challenge));
    Redirect::to(&format!(
        "{}{separator}code={code}&state={}",
        d.redirect_uri,
        urlencode(&state)
    ))
    .into_response()
}

fn urlencode(s: &str) -> String {
    oauth2::url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

async fn token(
    State(s): State<SandboxState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut sandbox = s.0.lock().expect("poisoned");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{}", sandbox.client_secret))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((redirect_uri, challenge)) = sandbox.codes.remove(&code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if form.get("redirect_uri") != Some(&redirect_uri) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if let Some(challenge) = challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
            }
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            // Rotating: a refresh token works once.
            if sandbox.refresh.remove(&presented).is_none() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let access = random("sbx-at-");
    let refresh = random("sbx-rt-");
    sandbox
        .access
        .insert(access.clone(), now_epoch() + ACCESS_TOKEN_LIFETIME);
    sandbox.refresh.insert(refresh.clone(), ());
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ACCESS_TOKEN_LIFETIME,
        "refresh_token": refresh,
        "scope": "profile",
    }))
    .into_response()
}

async fn me(State(s): State<SandboxState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let valid =
        s.0.lock()
            .expect("poisoned")
            .access
            .get(token)
            .is_some_and(|exp| *exp > now_epoch());
    if valid {
        Json(json!({ "user": "sandbox-user", "name": "Sandbox User" })).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        )
            .into_response()
    }
}
