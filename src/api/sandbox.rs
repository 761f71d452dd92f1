//! A built-in sandbox OAuth provider, for `tokenbox demo` and for developing extraction jobs
//! locally. It exists only when `sandbox = true` (the demo sets it); never by default.
//!
//! `/sandbox/authorize` shows an Approve and a Deny button; `/sandbox/token` runs the
//! authorization-code grant (PKCE S256 checked) and the refresh-token grant (short-lived access
//! tokens, rotating refresh tokens); `/sandbox/api/me` is a resource that checks the token.
//! Everything lives in memory, bounded: authorization codes expire after `CODE_TTL` and at
//! most `MAX_CODES` wait at once; the only redirect URI accepted is this server's own callback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::pages::{escape, page};
use crate::domain::now_epoch;

/// The sandbox's client credentials (it trusts only tokenbox's own demo configuration).
pub const CLIENT_ID: &str = "tokenbox-sandbox";
/// Access tokens of the sandbox live this long, so refreshes are easy to watch.
pub const ACCESS_TOKEN_LIFETIME: i64 = 300;
/// An authorization code must be exchanged within this many seconds.
pub const CODE_TTL: i64 = 60;
/// Codes waiting to be exchanged, at most.
pub const MAX_CODES: usize = 1000;

/// An issued code: the redirect URI it was issued for, its PKCE challenge, its expiry.
struct Grant {
    redirect_uri: String,
    challenge: Option<String>,
    expires_at: i64,
}

#[derive(Default)]
struct Sandbox {
    client_secret: String,
    /// The only redirect URI accepted: tokenbox's own callback.
    redirect_uri: String,
    codes: HashMap<String, Grant>,
    access: HashMap<String, i64>,
    refresh: HashMap<String, ()>,
}

impl Sandbox {
    /// Keeps a new code; `false` when `MAX_CODES` unexpired codes are already waiting.
    fn issue_code(&mut self, code: String, grant: Grant, now: i64) -> bool {
        if self.codes.len() >= MAX_CODES {
            self.codes.retain(|_, g| g.expires_at > now);
            if self.codes.len() >= MAX_CODES {
                return false;
            }
        }
        self.codes.insert(code, grant);
        true
    }

    /// Spends a code; `None` when unknown, spent or expired.
    fn take_code(&mut self, code: &str, now: i64) -> Option<Grant> {
        self.codes.remove(code).filter(|g| g.expires_at > now)
    }
}

#[derive(Clone)]
pub struct SandboxState(Arc<Mutex<Sandbox>>);

fn random(prefix: &str) -> String {
    crate::token::random_text::<24>(prefix)
}

/// The sandbox's routes, under `/sandbox/`. `redirect_uri` is tokenbox's own callback, the
/// only one the sandbox sends codes to.
pub fn router(client_secret: &str, redirect_uri: &str) -> Router {
    let state = SandboxState(Arc::new(Mutex::new(Sandbox {
        client_secret: client_secret.to_string(),
        redirect_uri: redirect_uri.to_string(),
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

fn unregistered_redirect() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Sandbox",
        "<h1>Invalid authorization request</h1><p id=\"error\" data-error=\"invalid_redirect_uri\">\
         The redirect URI is not this server's OAuth callback.</p>",
    )
}

async fn authorize_page(
    State(s): State<SandboxState>,
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
    if q.redirect_uri != s.0.lock().expect("poisoned").redirect_uri {
        return unregistered_redirect();
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
    // Never redirect (with a code or an error) anywhere but tokenbox's own callback.
    if d.redirect_uri != s.0.lock().expect("poisoned").redirect_uri {
        return unregistered_redirect();
    }
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
    let now = now_epoch();
    let issued = s.0.lock().expect("poisoned").issue_code(
        code.clone(),
        Grant {
            redirect_uri: d.redirect_uri.clone(),
            challenge,
            expires_at: now + CODE_TTL,
        },
        now,
    );
    if !issued {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sandbox",
            "<h1>Too many authorizations in flight</h1><p id=\"error\" data-error=\"too_many_codes\">\
             Try again in a minute.</p>",
        );
    }
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
            let Some(Grant {
                redirect_uri,
                challenge,
                ..
            }) = sandbox.take_code(&code, now_epoch())
            else {
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
    let now = now_epoch();
    sandbox.access.retain(|_, expires_at| *expires_at > now);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_at: i64) -> Grant {
        Grant {
            redirect_uri: "http://127.0.0.1:1/oauth/callback".into(),
            challenge: None,
            expires_at,
        }
    }

    #[test]
    fn codes_expire_and_are_bounded() {
        let mut sandbox = Sandbox::default();
        assert!(sandbox.issue_code("a".into(), grant(100 + CODE_TTL), 100));
        assert!(
            sandbox.take_code("a", 100 + CODE_TTL).is_none(),
            "an expired code is refused"
        );
        assert!(sandbox.issue_code("b".into(), grant(100 + CODE_TTL), 100));
        assert!(sandbox.take_code("b", 101).is_some());
        assert!(sandbox.take_code("b", 101).is_none(), "spent");

        for i in 0..MAX_CODES {
            assert!(sandbox.issue_code(format!("c{i}"), grant(200 + CODE_TTL), 200));
        }
        assert!(
            !sandbox.issue_code("over".into(), grant(200 + CODE_TTL), 200),
            "no more than MAX_CODES wait at once"
        );
        // Once they expired, room is made.
        assert!(sandbox.issue_code("later".into(), grant(300 + CODE_TTL), 200 + CODE_TTL));
        assert_eq!(sandbox.codes.len(), 1);
    }
}
