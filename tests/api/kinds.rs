//! Connector kinds other than `oauth2`: API keys (header or query), HTTP Basic and the
//! client-credentials grant, against an in-test provider API that verifies what it receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app_with, unique, AppOptions, Backend, TestApp};

/// A provider API with the four ways of authenticating, each checking exactly what it gets.
#[derive(Clone)]
pub struct KindsProvider {
    pub url: String,
    state: Arc<KindsState>,
}

struct KindsState {
    api_key: Mutex<String>,
    username: String,
    password: String,
    client_secret: String,
    verifications: AtomicUsize,
    mints: AtomicUsize,
    /// `expires_in` of the next minted tokens.
    expires_in: Mutex<i64>,
    /// What each mint received, for the checks: (client auth, client id, scope).
    mint_requests: Mutex<Vec<(String, String, String)>>,
}

const MACHINE_BASIC: &str = "machine-basic-client";
const MACHINE_BODY: &str = "machine-body-client";

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

impl KindsProvider {
    pub async fn start() -> Self {
        let state = Arc::new(KindsState {
            api_key: Mutex::new(unique("key")),
            username: "alice@example.com/token".into(),
            password: unique("pw"),
            client_secret: unique("machine-secret"),
            verifications: AtomicUsize::new(0),
            mints: AtomicUsize::new(0),
            expires_in: Mutex::new(3600),
            mint_requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/keyed/me", get(keyed_me))
            .route("/query/me", get(query_me))
            .route("/basic/me", get(basic_me))
            .route("/token", post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    pub fn api_key(&self) -> String {
        self.state.api_key.lock().unwrap().clone()
    }

    /// The HTTP Basic credential `/basic/me` accepts.
    pub fn username(&self) -> String {
        self.state.username.clone()
    }

    pub fn password(&self) -> String {
        self.state.password.clone()
    }

    pub fn mints(&self) -> usize {
        self.state.mints.load(Ordering::SeqCst)
    }

    pub fn verifications(&self) -> usize {
        self.state.verifications.load(Ordering::SeqCst)
    }

    fn set_expires_in(&self, seconds: i64) {
        *self.state.expires_in.lock().unwrap() = seconds;
    }

    /// The tokenbox configuration of the five connector types this provider serves.
    pub fn config(&self) -> String {
        let url = &self.url;
        let secret = &self.state.client_secret;
        format!(
            r#"
[connector_types.keyed]
kind = "api_key"
api_base_url = "{url}/keyed"
api_key_header = "X-Api-Key"
verify_url = "{url}/keyed/me"
api_headers = {{ Api-Version = "2024-01" }}

[connector_types.queryed]
kind = "api_key"
api_base_url = "{url}/query"
api_key_query = "api_token"
verify_url = "{url}/query/me"

[connector_types.basicauth]
kind = "basic"
api_base_url = "{url}/basic"
verify_url = "{url}/basic/me"

[connector_types.machine]
kind = "client_credentials"
token_url = "{url}/token"
client_id = "{MACHINE_BASIC}"
client_secret = "{secret}"
client_auth = "basic"
scopes = ["read"]
api_base_url = "{url}/api"

[connector_types.machine-body]
kind = "client_credentials"
token_url = "{url}/token"
client_id = "{MACHINE_BODY}"
client_secret = "{secret}"
client_auth = "body"
scopes = ["read", "write"]
"#
        )
    }
}

fn verified(state: &KindsState, ok: bool) -> Response {
    state.verifications.fetch_add(1, Ordering::SeqCst);
    if ok {
        Json(json!({"id": "me"})).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad key"}))).into_response()
    }
}

async fn keyed_me(State(state): State<Arc<KindsState>>, headers: HeaderMap) -> Response {
    let key = state.api_key.lock().unwrap().clone();
    let ok = headers.get("x-api-key").is_some_and(|v| v == key.as_str())
        && headers.get("api-version").is_some_and(|v| v == "2024-01")
        && !headers.contains_key("authorization");
    verified(&state, ok)
}

async fn query_me(
    State(state): State<Arc<KindsState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let key = state.api_key.lock().unwrap().clone();
    verified(&state, query.get("api_token") == Some(&key))
}

async fn basic_me(State(state): State<Arc<KindsState>>, headers: HeaderMap) -> Response {
    let expected = basic(&state.username, &state.password);
    let ok = headers
        .get("authorization")
        .is_some_and(|v| v == expected.as_str());
    verified(&state, ok)
}

/// RFC 6749 §4.4: `grant_type=client_credentials` with the scope, the client authenticated
/// exactly as its connector type says (Basic for one client, the form body for the other).
async fn token(
    State(state): State<Arc<KindsState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (auth, client_id) = match (&header, form.get("client_id")) {
        (Some(h), None) if *h == basic(MACHINE_BASIC, &state.client_secret) => {
            ("basic", MACHINE_BASIC)
        }
        (None, Some(id))
            if id == MACHINE_BODY && form.get("client_secret") == Some(&state.client_secret) =>
        {
            ("body", MACHINE_BODY)
        }
        _ => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client"})),
            )
                .into_response()
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.contains_key("refresh_token")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    state
        .mint_requests
        .lock()
        .unwrap()
        .push((auth.into(), client_id.into(), scope.clone()));
    let n = state.mints.fetch_add(1, Ordering::SeqCst) + 1;
    let expires_in = *state.expires_in.lock().unwrap();
    Json(json!({
        "access_token": format!("minted-{client_id}-{n}"),
        "token_type": "bearer",
        "expires_in": expires_in,
        "scope": scope,
    }))
    .into_response()
}

async fn app_with(backend: Backend, provider: &KindsProvider) -> TestApp {
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: provider.config(),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&provider.api_key());
    app.remember_secret(&provider.state.password);
    app.remember_secret(&provider.state.client_secret);
    app
}

async fn connect(app: &TestApp, app_id: &str, connector_type: &str, body: &Value) -> (u16, Value) {
    let response = app
        .put(&format!("/{app_id}/{connector_type}/connection"))
        .as_admin()
        .json(body)
        .send()
        .await;
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

async fn token_of(app: &TestApp, app_id: &str, connector_type: &str) -> Value {
    let response = app.get_token(app_id, connector_type, "").await;
    assert_eq!(response.status(), 200, "{app_id}/{connector_type}");
    json_of(response).await
}

pub async fn api_keys_and_basic_credentials_are_verified_then_served_with_their_headers(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let app = app_with(backend, &provider).await;
    let key = provider.api_key();

    // A wrong key: 422, nothing stored.
    let (status, body) = connect(&app, "acme", "keyed", &json!({"api_key": "wrong-key"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_credentials");
    assert!(!body.to_string().contains("wrong-key"));
    let missing = app.get_token("acme", "keyed", "").await;
    assert_eq!(missing.status(), 404, "nothing was stored");

    // The right key, in a header with the fixed API-version header beside it.
    let (status, view) = connect(&app, "acme", "keyed", &json!({"api_key": key})).await;
    assert_eq!(status, 201, "{view}");
    assert!(
        !view.to_string().contains(&key),
        "the view never shows the key"
    );
    let served = token_of(&app, "acme", "keyed").await;
    assert_eq!(served["access_token"], key.as_str());
    assert_eq!(served["token_type"], "ApiKey");
    assert_eq!(served["headers"]["X-Api-Key"], key.as_str());
    assert_eq!(served["headers"]["Api-Version"], "2024-01");
    assert_eq!(served["api_base_url"], format!("{}/keyed", provider.url));
    assert!(served.get("expires_at").is_none(), "a key does not expire");

    // A key sent as a query parameter.
    let (status, _) = connect(&app, "acme", "queryed", &json!({"api_key": key})).await;
    assert_eq!(status, 201);
    let served = token_of(&app, "acme", "queryed").await;
    assert_eq!(served["query"]["api_token"], key.as_str());
    assert_eq!(served["headers"], json!({}));

    // HTTP Basic: a wrong password is refused, the right one served as base64(user:password).
    let user = provider.state.username.clone();
    let (status, _) = connect(
        &app,
        "acme",
        "basicauth",
        &json!({"username": user, "password": "nope"}),
    )
    .await;
    assert_eq!(status, 422);
    let password = provider.state.password.clone();
    let (status, _) = connect(
        &app,
        "acme",
        "basicauth",
        &json!({"username": user, "password": password}),
    )
    .await;
    assert_eq!(status, 201);
    let served = token_of(&app, "acme", "basicauth").await;
    let expected = basic(&user, &password);
    assert_eq!(served["token_type"], "Basic");
    assert_eq!(
        format!("Basic {}", served["access_token"].as_str().unwrap()),
        expected
    );
    assert_eq!(served["headers"]["Authorization"], expected.as_str());
    // Each connect with a credential ran the verification once (2 keyed, 1 query, 2 basic).
    assert_eq!(provider.verifications(), 5);

    // A body of the wrong shape for the kind is a 400 that names the expected shape.
    let (status, body) = connect(&app, "acme", "keyed", &json!({"access_token": "x"})).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("api_key"),
        "{body}"
    );
}

pub async fn client_credentials_tokens_are_minted_once_for_fifty_callers_with_either_client_auth(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let app = app_with(backend, &provider).await;

    for (connector_type, client_auth, client_id, scope) in [
        ("machine", "basic", MACHINE_BASIC, "read"),
        ("machine-body", "body", MACHINE_BODY, "read write"),
    ] {
        // The first token is minted at connect; it is issued already expired, so the next
        // read needs a new one.
        provider.set_expires_in(0);
        let before = provider.mints();
        let (status, view) = connect(&app, "acme", connector_type, &json!({})).await;
        assert_eq!(status, 201, "{view}");
        assert_eq!(provider.mints(), before + 1);
        provider.set_expires_in(3600);

        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let request = app
                .get(&format!("/acme/{connector_type}/binb-token"))
                .as_superadmin();
            calls.spawn(async move { request.send().await });
        }
        let mut tokens = std::collections::HashSet::new();
        while let Some(response) = calls.join_next().await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            let body = json_of(response).await;
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(
                body["headers"]["Authorization"],
                format!("Bearer {}", body["access_token"].as_str().unwrap())
            );
            tokens.insert(body["access_token"].as_str().unwrap().to_string());
        }
        assert_eq!(
            provider.mints(),
            before + 2,
            "{connector_type}: 50 callers on an expired token cause exactly one mint"
        );
        assert_eq!(
            tokens.len(),
            1,
            "{connector_type}: every caller got the same token"
        );
        let requests = provider.state.mint_requests.lock().unwrap().clone();
        let last = requests.last().unwrap();
        assert_eq!(
            (last.0.as_str(), last.1.as_str(), last.2.as_str()),
            (client_auth, client_id, scope)
        );
    }
    let served = token_of(&app, "acme", "machine").await;
    assert_eq!(served["api_base_url"], format!("{}/api", provider.url));
}

/// The webhook events received: (type, body).
type Events = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver that records the event types it gets.
async fn event_receiver() -> (String, Events) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(events): State<Events>, headers: HeaderMap, body: String| async move {
                    let event = headers["tokenbox-event"].to_str().unwrap().to_string();
                    let body: Value = serde_json::from_str(&body).unwrap();
                    events.lock().unwrap().push((event, body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(events.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, events)
}

pub async fn a_key_revoked_later_is_found_by_the_check_and_reported_with_its_webhook(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let (hook, events) = event_receiver().await;
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: format!(
            "{}\n[[webhooks]]\nurl = \"{hook}\"\nsecret = \"{}\"\n",
            provider.config(),
            unique("whsec")
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&provider.api_key());
    let (status, _) = connect(
        &app,
        "acme",
        "keyed",
        &json!({"api_key": provider.api_key()}),
    )
    .await;
    assert_eq!(status, 201);
    let check = |app: &TestApp| {
        let request = app.post("/acme/keyed/connection/check").as_admin();
        async move {
            let response = request.send().await;
            (response.status().as_u16(), json_of(response).await)
        }
    };
    assert_eq!(
        check(&app).await,
        (200, json!({"valid": true, "status": "active"}))
    );
    assert_eq!(
        token_of(&app, "acme", "keyed").await["token_type"],
        "ApiKey"
    );

    // The tenant revokes the key at the provider: the next check finds it.
    *provider.state.api_key.lock().unwrap() = unique("rotated-key");
    let (status, body) = check(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["valid"], false);
    assert_eq!(body["status"], "reauthorization_required");
    let response = app.get_token("acme", "keyed", "").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["error"], "reauthorization_required");
    let event = crate::helpers::eventually("the reauthorization webhook", || {
        let events = events.clone();
        async move {
            events
                .lock()
                .unwrap()
                .iter()
                .find(|(t, _)| t == "connection.reauthorization_required")
                .cloned()
        }
    })
    .await;
    assert_eq!(event.1["data"]["app_id"], "acme");
    assert_eq!(event.1["data"]["connector_type"], "keyed");
    // Checking again makes no second provider call's worth of damage: still refused, no
    // second event for the same revocation.
    let before = provider.verifications();
    assert_eq!(check(&app).await.1["status"], "reauthorization_required");
    assert_eq!(
        provider.verifications(),
        before,
        "a revoked connection is not re-verified"
    );
}
