//! The fake OAuth provider: a token endpoint that rotates refresh tokens, counts calls and fails
//! on demand (`Mode`), an authorization page that answers at once, and a revocation endpoint.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;

use super::unique;

/// The client id tokenbox is configured with for the fake provider's connector type (`acme`).
pub const CLIENT_ID: &str = "acme-client";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rotates: every refresh spends the refresh token and issues a new one.
    Rotating,
    /// Issues new access tokens but never a new refresh token (HubSpot, Google).
    NonRotating,
    /// Answers 503 with Retry-After.
    Down,
    /// Answers invalid_grant to every refresh (the grant was revoked).
    Revoked,
    /// Answers 200 with an HTML page.
    Html,
    /// Answers 429 with Retry-After: 3.
    TooMany,
    /// Answers 200 with JSON that is not a token response.
    NotToken,
    /// Answers 200 with an error body (Slack's style).
    ErrorIn200,
    /// Answers 200 with a token response lacking the access token.
    NoAccessToken,
    /// Answers 401 invalid_client (our client secret is wrong).
    InvalidClient,
    /// Answers only when released (`FakeProvider::release_hung`): a provider that hangs.
    Hang,
    /// Answers 200 with a JSON content type and a 64 MiB body of spaces, chunked (no length).
    HugeBody,
    /// The same body, announced with a `Content-Length` of 1 TiB.
    HugeContentLength,
}

/// The size of the body of `Mode::HugeBody` and `Mode::HugeContentLength`.
pub const HUGE_BODY: usize = 64 << 20;

/// What became of the huge bodies the fake provider streamed.
#[derive(Default)]
pub struct BodyCounters {
    /// Bytes handed to the connection.
    pub sent: AtomicUsize,
    /// Bodies sent to their end.
    pub completed: AtomicUsize,
    /// Bodies dropped, sent to the end or cut off because the client went away.
    pub dropped: AtomicUsize,
}

/// A body of `HUGE_BODY` spaces, produced 64 KiB at a time as the connection takes them, so
/// that the count says how much the client actually read (plus what the socket buffers).
struct CountingBody {
    counters: Arc<BodyCounters>,
    remaining: usize,
    announced: Option<u64>,
}

impl hyper::body::Body for CountingBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        static CHUNK: [u8; 64 << 10] = [b' '; 64 << 10];
        if self.remaining == 0 {
            self.counters.completed.fetch_add(1, Ordering::SeqCst);
            return std::task::Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len());
        self.remaining -= n;
        self.counters.sent.fetch_add(n, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
            axum::body::Bytes::from_static(&CHUNK[..n]),
        ))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.announced {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn huge_body(counters: &Arc<BodyCounters>, announced: Option<u64>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        axum::body::Body::new(CountingBody {
            counters: counters.clone(),
            remaining: HUGE_BODY,
            announced,
        }),
    )
        .into_response()
}

pub struct ProviderState {
    /// Token requests received, counted on arrival (before any hold or delay).
    pub calls: AtomicUsize,
    /// Token requests answered (after any hold or delay).
    pub answered: AtomicUsize,
    /// Token requests received and not yet answered or abandoned by the client.
    pub pending: AtomicUsize,
    /// While `true`, token answers are held (the request counted and decided), until `release`.
    gate: tokio::sync::watch::Sender<bool>,
    /// While `true`, `Mode::Hang` requests are held (the hung provider), until released.
    hang: tokio::sync::watch::Sender<bool>,
    /// Refresh attempts with a token that was already spent.
    pub reuses: AtomicUsize,
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    expires_in: Mutex<Option<i64>>,
    valid: Mutex<HashSet<String>>,
    spent: Mutex<HashSet<String>>,
    /// Authorization codes issued: code -> (PKCE challenge, redirect URI).
    codes: Mutex<std::collections::HashMap<String, (Option<String>, String)>>,
    /// The query of every authorization request received.
    pub authorize_requests: Mutex<Vec<std::collections::HashMap<String, String>>>,
    /// Tokens received at the revocation endpoint.
    pub revoked: Mutex<Vec<String>>,
    /// The `traceparent` header of every token request, in order (`None`: not sent).
    pub traceparents: Mutex<Vec<Option<String>>>,
    /// Whether the next authorization is denied by the "user".
    pub deny: Mutex<bool>,
    /// Every secret this provider issued or accepted, to look for in logs.
    issued: Mutex<Vec<String>>,
    pub client_secret: String,
    /// The fate of the huge bodies (`Mode::HugeBody`, `Mode::HugeContentLength`).
    pub bodies: Arc<BodyCounters>,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    pub state: Arc<ProviderState>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let state = Arc::new(ProviderState {
            calls: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            gate: tokio::sync::watch::Sender::new(false),
            hang: tokio::sync::watch::Sender::new(true),
            reuses: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Rotating),
            delay: Mutex::new(Duration::ZERO),
            expires_in: Mutex::new(Some(3600)),
            valid: Mutex::new(HashSet::new()),
            spent: Mutex::new(HashSet::new()),
            issued: Mutex::new(Vec::new()),
            codes: Mutex::new(std::collections::HashMap::new()),
            authorize_requests: Mutex::new(Vec::new()),
            deny: Mutex::new(false),
            revoked: Mutex::new(Vec::new()),
            traceparents: Mutex::new(Vec::new()),
            client_secret: unique("acme-client-secret"),
            bodies: Arc::new(BodyCounters::default()),
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route("/authorize", axum::routing::get(authorize_endpoint))
            .route("/revoke", post(revoke_endpoint))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Token requests answered so far (a held request is received but not answered).
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Token requests received and still running in the provider (held, delayed, or hung).
    pub fn pending(&self) -> usize {
        self.state.pending.load(Ordering::SeqCst)
    }

    /// Holds the answer to every token request received from now on (counted in `calls`, its
    /// rotation done) until `release`: the test decides when the provider answers.
    pub fn hold(&self) {
        self.state.gate.send_replace(true);
    }

    /// Lets the held token requests (and later ones) through.
    pub fn release(&self) {
        self.state.gate.send_replace(false);
    }

    /// Lets the requests held by `Mode::Hang` finish (with an error), and later ones at once.
    pub fn release_hung(&self) {
        self.state.hang.send_replace(false);
    }

    pub fn reuses(&self) -> usize {
        self.state.reuses.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// The `expires_in` of the tokens issued from now on (`None`: the field is left out).
    pub fn set_expires_in(&self, expires_in: Option<i64>) {
        *self.state.expires_in.lock().unwrap() = expires_in;
    }

    /// A refresh token this provider will accept once.
    pub fn new_refresh_token(&self) -> String {
        let token = unique("fake-rt");
        self.state.valid.lock().unwrap().insert(token.clone());
        self.state.issued.lock().unwrap().push(token.clone());
        token
    }

    pub fn secrets(&self) -> Vec<String> {
        let mut all = self.state.issued.lock().unwrap().clone();
        all.push(self.state.client_secret.clone());
        all
    }

    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state
            .issued
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.starts_with("fake-at"))
            .cloned()
            .collect()
    }
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": code, "error_description": "fake provider" })),
    )
        .into_response()
}

/// The token endpoint. Like a real provider, it commits its decision (a rotation) first and
/// answers after the configured delay: a caller that dies meanwhile loses the new token.
async fn token_endpoint(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    state.traceparents.lock().unwrap().push(
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
    state.calls.fetch_add(1, Ordering::SeqCst);
    state.pending.fetch_add(1, Ordering::SeqCst);
    let _pending = Pending(&state);
    if *state.mode.lock().unwrap() == Mode::Hang {
        let _ = state.hang.subscribe().wait_for(|hung| !hung).await;
    }
    let response = token_decision(&state, &headers, &form);
    // The decision is committed; a held answer waits for the test's signal (a request whose
    // client went away is dropped here, its rotation done, as with a real provider).
    let _ = state.gate.subscribe().wait_for(|held| !held).await;
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        // Fault injection only (a slow provider): no test waits on this clock.
        tokio::time::sleep(delay).await;
    }
    state.answered.fetch_add(1, Ordering::SeqCst);
    response
}

/// Counts a token request out of `pending` when it ends, answered or dropped.
struct Pending<'a>(&'a ProviderState);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn token_decision(
    state: &ProviderState,
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Response {
    // Client authentication: HTTP Basic (RFC 6749 §2.3.1) as configured for "acme".
    let expected = format!(
        "Basic {}",
        base64_encode(&format!("{CLIENT_ID}:{}", state.client_secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Down => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "2")],
                "<html>maintenance</html>",
            )
                .into_response()
        }
        Mode::Html => {
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html>login</html>",
            )
                .into_response()
        }
        Mode::Revoked => return oauth_error("invalid_grant"),
        Mode::TooMany => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "3")],
                "slow down",
            )
                .into_response()
        }
        Mode::NotToken => return Json(json!({"hello": "world"})).into_response(),
        Mode::ErrorIn200 => {
            return Json(json!({"ok": false, "error": "invalid_refresh_token"})).into_response()
        }
        Mode::NoAccessToken => {
            return Json(json!({"token_type": "bearer", "expires_in": 3600})).into_response()
        }
        Mode::InvalidClient => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client"})),
            )
                .into_response()
        }
        Mode::Hang => return oauth_error("too_late"),
        Mode::HugeBody => return huge_body(&state.bodies, None),
        Mode::HugeContentLength => return huge_body(&state.bodies, Some(1 << 40)),
        Mode::Rotating | Mode::NonRotating => {}
    }
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some("authorization_code") => return code_grant(state, form),
        _ => return oauth_error("unsupported_grant_type"),
    }
    let Some(presented) = form.get("refresh_token") else {
        return oauth_error("invalid_request");
    };
    // Spending is atomic: of two concurrent uses of one refresh token, one is a reuse.
    let accepted = if mode == Mode::Rotating {
        state.valid.lock().unwrap().remove(presented)
    } else {
        state.valid.lock().unwrap().contains(presented)
    };
    if !accepted {
        if state.spent.lock().unwrap().contains(presented) {
            state.reuses.fetch_add(1, Ordering::SeqCst);
        }
        return oauth_error("invalid_grant");
    }
    let access = unique("fake-at");
    state.issued.lock().unwrap().push(access.clone());
    let mut body = json!({
        "access_token": access,
        "token_type": "bearer",
        "scope": "read",
    });
    if mode == Mode::Rotating {
        state.spent.lock().unwrap().insert(presented.clone());
        let refresh = unique("fake-rt");
        state.valid.lock().unwrap().insert(refresh.clone());
        state.issued.lock().unwrap().push(refresh.clone());
        body["refresh_token"] = json!(refresh);
    }
    if let Some(expires_in) = *state.expires_in.lock().unwrap() {
        body["expires_in"] = json!(expires_in);
    }
    Json(body).into_response()
}

/// The provider's authorization page, reduced to its decision: it redirects back at once with a
/// code (or `access_denied`), recording the request and its PKCE challenge.
async fn authorize_endpoint(
    State(state): State<Arc<ProviderState>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    state.authorize_requests.lock().unwrap().push(query.clone());
    let redirect = query.get("redirect_uri").cloned().unwrap_or_default();
    let csrf = query.get("state").cloned().unwrap_or_default();
    let sep = if redirect.contains('?') { '&' } else { '?' };
    if std::mem::take(&mut *state.deny.lock().unwrap()) {
        return axum::response::Redirect::to(&format!(
            "{redirect}{sep}error=access_denied&error_description=The+user+said+no&state={csrf}"
        ))
        .into_response();
    }
    if query.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    let code = unique("fake-code");
    state.issued.lock().unwrap().push(code.clone());
    let challenge = match query.get("code_challenge_method").map(String::as_str) {
        Some("S256") => query.get("code_challenge").cloned(),
        None => None,
        Some(_) => return (StatusCode::BAD_REQUEST, "only S256").into_response(),
    };
    state
        .codes
        .lock()
        .unwrap()
        .insert(code.clone(), (challenge, redirect.clone()));
    axum::response::Redirect::to(&format!(
        "{redirect}{sep}code={code}&state={csrf}&realmId=123"
    ))
    .into_response()
}

/// RFC 7009 revocation: records the token, answers 200 with no body.
async fn revoke_endpoint(
    State(state): State<Arc<ProviderState>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> StatusCode {
    if let Some(token) = form.get("token") {
        state.revoked.lock().unwrap().push(token.clone());
        state.valid.lock().unwrap().remove(token);
    }
    StatusCode::OK
}

/// The authorization-code grant, with the PKCE verifier checked (RFC 7636 §4.6).
fn code_grant(state: &ProviderState, form: &std::collections::HashMap<String, String>) -> Response {
    let code = form.get("code").cloned().unwrap_or_default();
    let Some((challenge, redirect)) = state.codes.lock().unwrap().remove(&code) else {
        return oauth_error("invalid_grant");
    };
    if form.get("redirect_uri") != Some(&redirect) {
        return oauth_error("invalid_grant");
    }
    if let Some(challenge) = challenge {
        use sha2::Digest;
        let Some(verifier) = form.get("code_verifier") else {
            return oauth_error("invalid_grant");
        };
        let computed = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()))
        };
        if computed != challenge {
            return oauth_error("invalid_grant");
        }
    }
    let access = unique("fake-at");
    let refresh = unique("fake-rt");
    state.valid.lock().unwrap().insert(refresh.clone());
    {
        let mut issued = state.issued.lock().unwrap();
        issued.push(access.clone());
        issued.push(refresh.clone());
    }
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh,
        "scope": "read write",
        "instance_url": "https://acme-instance.example.com",
        "id_token": "not-kept",
    }))
    .into_response()
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
