//! The proxy mode: a job calls the provider's API through tokenbox and never holds the
//! credential. An in-test provider API checks what it receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    json_of, spawn_app_with, unique, AppOptions, Backend, FakeProvider, TestApp, CLIENT_ID,
};

/// A provider API: answers what it received (method, path, query, body hash, headers), or
/// streams `size` deterministic bytes from `/export`, or answers 429 from `/limited`, or
/// redirects from `/redirect`. Only requests with the expected credential are served.
#[derive(Clone)]
struct Api {
    url: String,
    state: Arc<ApiState>,
}

struct ApiState {
    key: String,
    /// OAuth access tokens it accepts (those the fake provider issued).
    provider: Option<FakeProvider>,
    hits: AtomicUsize,
    limited_hits: AtomicUsize,
    seen: Mutex<Vec<Value>>,
}

/// The byte at `i` of an export: a simple pattern, so the hash is known without storing it.
fn export_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 7) as u8
}

fn export_hash(size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut chunk = Vec::with_capacity(1 << 16);
    for i in 0..size {
        chunk.push(export_byte(i));
        if chunk.len() == chunk.capacity() {
            hasher.update(&chunk);
            chunk.clear();
        }
    }
    hasher.update(&chunk);
    format!("{:x}", hasher.finalize())
}

async fn api_handler(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let authorized = match &state.provider {
        None => headers
            .get("x-api-key")
            .is_some_and(|v| v == state.key.as_str()),
        Some(provider) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| provider.issued_access_tokens().iter().any(|i| i == t)),
    };
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized"})),
        )
            .into_response();
    }
    let path = uri.path();
    if path.ends_with("/limited") {
        state.limited_hits.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            Json(json!({"error": "slow down"})),
        )
            .into_response();
    }
    if path.ends_with("/redirect") {
        let target = query.get("to").cloned().unwrap_or_default();
        return (StatusCode::FOUND, [("location", target)]).into_response();
    }
    if path.ends_with("/export") {
        let size: u64 = query.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
        return Response::new(Body::new(ExportBody { next: 0, size }));
    }
    let seen = json!({
        "method": method.as_str(),
        "path": path,
        "query": uri.query(),
        "body_sha256": format!("{:x}", Sha256::digest(&body)),
        "body_len": body.len(),
        "has_authorization": headers.contains_key("authorization"),
        "x_api_key": headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        "x_custom": headers.get("x-custom").and_then(|v| v.to_str().ok()),
        "cookie": headers.contains_key("cookie"),
        "user_agent": headers.get("user-agent").is_some(),
    });
    state.seen.lock().unwrap().push(seen.clone());
    Json(seen).into_response()
}

/// The body of an export: `size` pattern bytes, produced 64 KiB at a time as they are read.
struct ExportBody {
    next: u64,
    size: u64,
}

impl axum::body::HttpBody for ExportBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.next >= self.size {
            return std::task::Poll::Ready(None);
        }
        let end = (self.next + (1 << 16)).min(self.size);
        let chunk: Vec<u8> = (self.next..end).map(export_byte).collect();
        self.next = end;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
    }
}

impl Api {
    async fn start(provider: Option<FakeProvider>) -> Self {
        let state = Arc::new(ApiState {
            key: unique("proxy-key"),
            provider,
            hits: AtomicUsize::new(0),
            limited_hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/api/{*rest}", any(api_handler))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// A tokenbox with an API-key connector type `keyed` whose API is `api`, and the connection
/// `acme/keyed` saved.
async fn keyed_app(backend: Backend, api: &Api) -> TestApp {
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: format!(
            "[connector_types.keyed]\nkind = \"api_key\"\napi_key_header = \"X-Api-Key\"\napi_base_url = \"{}/api/v1\"\n",
            api.url
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&api.state.key);
    for app_id in ["acme", "other"] {
        let response = app
            .put(&format!("/{app_id}/keyed/connection"))
            .as_admin()
            .json(&json!({"api_key": api.state.key}))
            .send()
            .await;
        assert_eq!(response.status(), 201);
    }
    app
}

/// Sends a request line as written (no client-side normalisation of `..` or `%2e`), returns the
/// status code.
async fn raw_status(app: &TestApp, path: &str) -> u16 {
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.superadmin
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer within the deadline")
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub async fn the_proxy_adds_the_credential_and_passes_everything_else_through(backend: Backend) {
    let api = Api::start(None).await;
    let app = keyed_app(backend, &api).await;

    // A GET with a query and a custom header; the caller's token and cookie stay with tokenbox.
    let response = app
        .get("/acme/keyed/proxy/calls?page=2&per_page=50&q=a%20b")
        .as_superadmin()
        .header("x-custom", "kept")
        .header("cookie", "session=tokenbox-only")
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let seen = json_of(response).await;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/api/v1/calls");
    assert_eq!(seen["query"], "page=2&per_page=50&q=a%20b");
    assert_eq!(
        seen["x_api_key"],
        api.state.key.as_str(),
        "the credential the job never saw"
    );
    assert_eq!(
        seen["has_authorization"], false,
        "the caller's Authorization is not forwarded"
    );
    assert_eq!(seen["cookie"], false);
    assert_eq!(seen["x_custom"], "kept");
    assert_eq!(seen["user_agent"], true);

    // A POST body goes through intact (8 MiB, hashed on both sides).
    let body: Vec<u8> = (0..8u64 << 20).map(export_byte).collect();
    let expected = format!("{:x}", Sha256::digest(&body));
    let response = app
        .post("/acme/keyed/proxy/uploads")
        .as_superadmin()
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let seen = json_of(response).await;
    assert_eq!(seen["body_sha256"], expected);
    assert_eq!(seen["body_len"], 8 << 20);

    // A large answer streams back byte for byte (48 MiB here; bench/ measures 100 MB and RSS).
    let size: u64 = 48 << 20;
    let response = app
        .get(&format!("/acme/keyed/proxy/export?size={size}"))
        .as_superadmin()
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), export_hash(size));

    // Each call is in the audit trail: method, path without query, status.
    let audit = crate::helpers::eventually("the proxied calls in the audit trail", || {
        let request = app.get("/audit?app_id=acme").as_superadmin();
        async move {
            let events = json_of(request.send().await).await;
            let calls: Vec<String> = events
                .as_array()?
                .iter()
                .filter(|e| e["action"] == "proxy.call")
                .filter_map(|e| e["subject"].as_str().map(str::to_string))
                .collect();
            (calls.len() >= 3).then_some(calls)
        }
    })
    .await;
    assert!(
        audit.iter().any(|s| s.starts_with("GET /calls -> 200")),
        "{audit:?}"
    );
    assert!(
        audit.iter().all(|s| !s.contains("page=2")),
        "no query in the audit trail"
    );
}

pub async fn a_401_is_retried_once_with_a_fresh_token_and_a_post_only_when_the_caller_opts_in(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let api = Api::start(Some(provider.clone())).await;
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: format!(
            "[connector_types.oauthapi]\ntoken_url = \"{p}/token\"\nauthorization_url = \"{p}/authorize\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{s}\"\napi_base_url = \"{a}/api\"\n",
            p = provider.url,
            s = provider.state.client_secret,
            a = api.url,
        ),
        ..AppOptions::default()
    })
    .await;
    // A token the API does not accept (revoked at the provider, say), still valid for tokenbox.
    let stale = || json!({"access_token": unique("stale"), "refresh_token": provider.new_refresh_token(), "expires_in": 3600});
    app.import_ok("acme", "oauthapi", &stale()).await;
    let response = app
        .get("/acme/oauthapi/proxy/me")
        .as_superadmin()
        .send()
        .await;
    assert_eq!(response.status(), 200, "the caller sees the retry's answer");
    assert_eq!(provider.calls(), 1, "one forced refresh");
    assert_eq!(api.hits(), 2, "one retry");

    // A POST is not retried: the caller gets the 401.
    app.import_ok("acme", "oauthapi", &stale()).await;
    let before = (provider.calls(), api.hits());
    let response = app
        .post("/acme/oauthapi/proxy/things")
        .as_superadmin()
        .json(&json!({"a": 1}))
        .send()
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!((provider.calls(), api.hits()), (before.0, before.1 + 1));

    // ... unless the caller opts in.
    let response = app
        .post("/acme/oauthapi/proxy/things")
        .as_superadmin()
        .header("tokenbox-retry-unsafe", "true")
        .json(&json!({"a": 1}))
        .send()
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!((provider.calls(), api.hits()), (before.0 + 1, before.1 + 3));
    let seen = api.state.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen["body_sha256"],
        format!("{:x}", Sha256::digest(br#"{"a":1}"#)),
        "the body was sent again"
    );
}

pub async fn a_429_pauses_the_connection_for_every_caller_on_every_replica(backend: Backend) {
    let api = Api::start(None).await;
    let app = keyed_app(backend, &api).await;
    let other_replica = (backend == Backend::Postgres).then(|| app.replica());

    let response = app
        .get("/acme/keyed/proxy/limited")
        .as_superadmin()
        .send()
        .await;
    assert_eq!(response.status(), 429, "the provider's own answer");
    assert_eq!(api.state.limited_hits.load(Ordering::SeqCst), 1);
    let before = api.hits();
    for replica in [Some(&app), other_replica.as_ref()].into_iter().flatten() {
        for path in ["/acme/keyed/proxy/limited", "/acme/keyed/proxy/calls"] {
            let response = replica.get(path).as_superadmin().send().await;
            assert_eq!(response.status(), 429);
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=30).contains(&retry_after), "{retry_after}");
            assert_eq!(json_of(response).await["error"], "rate_limited");
        }
    }
    assert_eq!(api.hits(), before, "paused calls never reach the provider");
    // Another connection is not paused.
    let response = app
        .get("/other/keyed/proxy/calls")
        .as_superadmin()
        .send()
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(api.hits(), before + 1);
}

pub async fn paths_that_leave_the_api_host_are_refused(backend: Backend) {
    let api = Api::start(None).await;
    let elsewhere = Api::start(None).await;
    let app = keyed_app(backend, &api).await;
    for evil in [
        "/acme/keyed/proxy//evil.example.com/x",
        "/acme/keyed/proxy/@evil.example.com",
        "/acme/keyed/proxy/..%2f..%2fadmin",
        "/acme/keyed/proxy/%2e%2e/%2e%2e/admin",
        "/acme/keyed/proxy/%2E%2E/admin",
        "/acme/keyed/proxy/%2f%2fevil.example.com",
        "/acme/keyed/proxy/%5c%5cevil.example.com",
        "/acme/keyed/proxy/%40evil.example.com",
        "/acme/keyed/proxy/%252e%252e/admin",
        "/acme/keyed/proxy/a/../../../admin",
        "/acme/keyed/proxy/a/./b",
        "/acme/keyed/proxy/%00",
    ] {
        let status = raw_status(&app, evil).await;
        assert!(
            status == 400 || status == 404,
            "{evil} answered {status}, not a refusal"
        );
    }
    assert_eq!(api.hits(), 0, "no refused form reached the provider");
    // A redirect to another host (here loopback, outside the API host) is not followed.
    let to = format!("{}/api/v1/steal", elsewhere.url);
    let response = app
        .get(&format!("/acme/keyed/proxy/redirect?to={to}"))
        .as_superadmin()
        .send()
        .await;
    assert_eq!(response.status(), 302, "passed back, not followed");
    assert_eq!(elsewhere.hits(), 0);
    // Only the superadmin (or an account scoped to this connection) may use it.
    let response = app.get("/acme/keyed/proxy/calls").as_admin().send().await;
    assert_eq!(response.status(), 403);
}
