//! Test harness: the real `tokenbox` binary on a loopback port with a fresh SQLite file, and an
//! in-test OAuth token endpoint that rotates refresh tokens, counts calls and fails on demand.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenbox");
pub const CLIENT_ID: &str = "acme-client";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value unique to this test process, for tokens and directory names.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// The fake provider
// ---------------------------------------------------------------------------------------------

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
    /// Answers only after 3 seconds.
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
    pub calls: AtomicUsize,
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
    state.calls.fetch_add(1, Ordering::SeqCst);
    if *state.mode.lock().unwrap() == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let response = token_decision(&state, &headers, &form);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
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

// ---------------------------------------------------------------------------------------------
// The application under test
// ---------------------------------------------------------------------------------------------

/// Which database the server under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database for one test, dropped when the last user is gone. The server is
/// `TOKENBOX_TEST_DATABASE_URL` when set, else the local one over TCP.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

fn pg_admin_url() -> String {
    std::env::var("TOKENBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("a postgres:// URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::{ConnectOptions, Connection};
        let admin_url = pg_admin_url();
        let name = unique("tokenbox_test").replace('-', "_");
        let mut admin =
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&admin_url)
                .unwrap()
                .connect()
                .await
                .expect("PostgreSQL must be running (scripts/test.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // A runtime of its own: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use sqlx::{ConnectOptions, Connection};
                if let Ok(mut admin) =
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&admin_url)
                        .unwrap()
                        .connect()
                        .await
                {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: String,
    pub pg: Option<Arc<PgDatabase>>,
    /// Whether this app removes the directory when dropped (replicas share their first's).
    owns_dir: bool,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub superadmin: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub provider: Option<FakeProvider>,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// Secrets that must never appear in the logs (besides the provider's).
    secrets: Mutex<Vec<String>>,
    log_filter: String,
    /// The signup cookies this "browser" holds (name, value), as set by Connect.
    browser_cookies: Mutex<Vec<(String, String)>>,
}

pub struct AppOptions {
    pub backend: Backend,
    /// Whether the background refresher runs (off by default so provider call counts in
    /// tests depend on requests only).
    pub refresher: bool,
    /// The address to listen on (default: a free loopback port).
    pub listen: String,
    /// Requests per second per service account (0: no limit, the default in tests).
    pub rate_limit: u32,
    pub provider: Option<FakeProvider>,
    pub extra_config: String,
    pub log_filter: String,
    /// `allow_insecure_loopback` (on by default: the fake provider is plain http on loopback).
    pub allow_insecure_loopback: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            refresher: false,
            listen: "127.0.0.1:0".into(),
            rate_limit: 0,
            provider: None,
            extra_config: String::new(),
            log_filter: "debug,hyper=info,h2=info,tower=info".into(),
            allow_insecure_loopback: true,
        }
    }
}

pub async fn spawn_app(provider: Option<&FakeProvider>) -> TestApp {
    spawn_app_on(Backend::Sqlite, provider).await
}

pub async fn spawn_app_on(backend: Backend, provider: Option<&FakeProvider>) -> TestApp {
    spawn_app_with(AppOptions {
        backend,
        provider: provider.cloned(),
        ..AppOptions::default()
    })
    .await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let dir = std::env::temp_dir().join(unique("tokenbox-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let pg = match options.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Arc::new(PgDatabase::create().await)),
    };
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.join("tokenbox.db").display()),
    };
    let mut config = format!(
        "listen = \"{listen}\"\nallowed_return_urls = [\"https://app.example.com/connected\"]\ndatabase_url = \"{database_url}\"\nencryption_key_file = \"{}\"\nrefresher_enabled = {}\nallow_insecure_loopback = {}\nrate_limit_per_second = {}\n{}\n",
        dir.join("encryption.key").display(),
        options.refresher,
        options.allow_insecure_loopback,
        options.rate_limit,
        options.extra_config,
        listen = options.listen,
    );
    if let Some(provider) = &options.provider {
        config.push_str(&format!(
            "\n[connector_types.acme]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\nrevocation_url = \"{url}/revoke\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\nscopes = [\"read\", \"write\"]\nclient_auth = \"basic\"\nmetadata_fields = [\"instance_url\"]\ncallback_params = [\"realmId\"]\nauthorization_params = {{ prompt = \"consent\" }}\n",
            url = provider.url,
            secret = provider.state.client_secret,
        ));
    }
    let config_path = dir.join("tokenbox.toml");
    std::fs::write(&config_path, config).unwrap();

    let superadmin = cli_ok(
        &config_path,
        &[
            "service-account",
            "create",
            "extraction",
            "--role",
            "superadmin",
        ],
        None,
    );
    let admin = cli_ok(
        &config_path,
        &["service-account", "create", "laputa", "--role", "admin"],
        None,
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut app = TestApp {
        address: String::new(),
        pg,
        owns_dir: true,
        secrets: Mutex::new(vec![
            superadmin.trim().to_string(),
            admin.trim().to_string(),
        ]),
        superadmin: superadmin.trim().to_string(),
        admin: admin.trim().to_string(),
        dir,
        config_path,
        client,
        provider: options.provider,
        child: None,
        logs: Arc::new(Mutex::new(String::new())),
        log_filter: options.log_filter,
        browser_cookies: Mutex::new(Vec::new()),
    };
    app.start();
    app
}

/// Runs the CLI and returns its stdout; panics with stderr when it fails.
pub fn cli_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (code, stdout, stderr) = cli(config, args, stdin, &[]);
    assert_eq!(code, 0, "tokenbox {args:?} failed: {stderr}");
    stdout
}

/// Runs the CLI: (exit code, stdout, stderr).
pub fn cli(
    config: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    use std::io::Write;
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TOKENBOX_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn tokenbox");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl TestApp {
    fn start(&mut self) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("TOKENBOX_LOG", &self.log_filter)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenbox serve");
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                if let Some(rest) = line.split("tokenbox listening address=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tokenbox did not start: {}", self.logs()));
        self.address = format!("http://{address}");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: the server shuts down gracefully.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `deadline`, a guard against a hang) for the process to
    /// exit; returns its exit code. Panics when it is still running then.
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("the server is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not exit after SIGTERM: {}", self.logs());
    }

    /// Starts the server again (after `terminate` or `kill`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.start();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Registers a secret that must never appear in the logs.
    pub fn remember_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_string());
    }

    pub fn all_secrets(&self) -> Vec<String> {
        let mut all = self.secrets.lock().unwrap().clone();
        if let Some(p) = &self.provider {
            all.extend(p.secrets());
        }
        all
    }

    /// Panics when any known secret appears in the captured log output.
    pub fn assert_logs_clean(&self) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "no log output was captured");
        for secret in self.all_secrets() {
            assert!(
                !logs.contains(&secret),
                "a secret ({}...) appeared in the server log",
                &secret[..secret.len().min(8)]
            );
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("tokenbox.db")
    }

    pub async fn get_token(
        &self,
        app: &str,
        connector_type: &str,
        query: &str,
    ) -> reqwest::Response {
        self.get_token_as(&self.superadmin.clone(), app, connector_type, query)
            .await
    }

    pub async fn get_token_as(
        &self,
        bearer: &str,
        app: &str,
        connector_type: &str,
        query: &str,
    ) -> reqwest::Response {
        let sep = if query.is_empty() { "" } else { "?" };
        self.client
            .get(format!(
                "{}/{app}/{connector_type}/binb-token{sep}{query}",
                self.address
            ))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
    }

    pub async fn import(&self, app: &str, connector_type: &str, body: &Value) -> reqwest::Response {
        for field in ["access_token", "refresh_token"] {
            if let Some(s) = body[field].as_str() {
                self.remember_secret(s);
            }
        }
        self.client
            .put(format!(
                "{}/{app}/{connector_type}/connection",
                self.address
            ))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Imports a connection whose access token has expired and whose refresh token the fake
    /// provider accepts.
    pub async fn import_expired(&self, app: &str) -> String {
        let provider = self.provider.as_ref().expect("a provider");
        let access = unique("imported-at");
        let refresh = provider.new_refresh_token();
        let response = self
            .import(
                app,
                "acme",
                &json!({
                    "access_token": access,
                    "refresh_token": refresh,
                    "expires_at": now() - 10,
                    "scope": "read",
                }),
            )
            .await;
        let status = response.status();
        assert!(
            status.is_success(),
            "import failed: {status} {}",
            response.text().await.unwrap_or_default()
        );
        access
    }
}

/// Waits until `done` holds, polling; the deadline only guards against a hang.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `$body` with `$c` bound to a fresh connection to the app's database, whichever the
/// backend.
macro_rules! with_db {
    ($app:expr, |$c:ident| $body:expr) => {{
        use sqlx::{ConnectOptions, Connection};
        match &$app.pg {
            Some(db) => {
                let mut $c =
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                let out = $body;
                $c.close().await.unwrap();
                out
            }
            None => {
                let mut $c = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(
                    &format!("sqlite://{}", $app.db_path().display()),
                )
                .unwrap()
                .connect()
                .await
                .unwrap();
                let out = $body;
                $c.close().await.unwrap();
                out
            }
        }
    }};
}

impl TestApp {
    /// A second server process on the same database, key and configuration.
    pub fn replica(&self) -> TestApp {
        let mut replica = TestApp {
            address: String::new(),
            pg: self.pg.clone(),
            owns_dir: false,
            dir: self.dir.clone(),
            config_path: self.config_path.clone(),
            superadmin: self.superadmin.clone(),
            admin: self.admin.clone(),
            client: self.client.clone(),
            provider: self.provider.clone(),
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            secrets: Mutex::new(self.secrets.lock().unwrap().clone()),
            log_filter: self.log_filter.clone(),
            browser_cookies: Mutex::new(self.browser_cookies.lock().unwrap().clone()),
        };
        replica.start();
        replica
    }

    /// Sends SIGKILL: no graceful shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a statement directly on the database (to age or tamper with rows).
    pub async fn execute_sql(&self, statement: &str) -> u64 {
        with_db!(self, |c| sqlx::query(statement)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected())
    }

    /// The first column of a query's rows, as text (for state checks).
    pub async fn query_strings(&self, statement: &str) -> Vec<String> {
        with_db!(self, |c| sqlx::query_scalar::<_, String>(statement)
            .fetch_all(&mut c)
            .await
            .unwrap())
    }

    /// The raw bytes of a column of the connections table, as stored.
    pub async fn raw_column(&self, column: &str) -> Vec<Vec<u8>> {
        let statement = format!("SELECT {column} FROM connections WHERE {column} IS NOT NULL");
        with_db!(self, |c| sqlx::query_scalar::<_, Vec<u8>>(&statement)
            .fetch_all(&mut c)
            .await
            .unwrap())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            self.assert_logs_clean();
            if self.owns_dir {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

pub async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// The signup as a browser runs it, step by step, with no automatic redirects.
impl TestApp {
    pub async fn create_link(
        &self,
        app: &str,
        connector_type: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .post(format!(
                "{}/{app}/{connector_type}/connect-links",
                self.address
            ))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a link for `app` on the fake provider's connector type and returns its URL.
    pub async fn new_link(&self, app: &str) -> String {
        let response = self.create_link(app, "acme", &json!({})).await;
        assert_eq!(response.status(), 201);
        let url = json_of(response).await["url"].as_str().unwrap().to_string();
        self.remember_secret(url.rsplit('/').next().unwrap());
        url
    }

    /// Clicks Connect on the link's page: returns the provider URL tokenbox redirects to. Keeps
    /// the cookie that binds the flow to this browser, as a browser does.
    pub async fn click_connect(&self, link: &str) -> reqwest::Response {
        let response = self.client.post(link).send().await.unwrap();
        for (name, value) in set_cookies(&response) {
            self.remember_secret(&value);
            let mut jar = self.browser_cookies.lock().unwrap();
            jar.retain(|(n, _)| *n != name);
            jar.push((name, value));
        }
        response
    }

    /// The browser's signup cookies, as a `Cookie` header value.
    pub fn browser_cookie_header(&self) -> String {
        self.browser_cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Follows the provider's redirect to the callback from the browser that clicked Connect.
    pub async fn callback(&self, url: &str) -> reqwest::Response {
        let cookies = self.browser_cookie_header();
        let mut request = self.client.get(url);
        if !cookies.is_empty() {
            request = request.header("cookie", cookies);
        }
        request.send().await.unwrap()
    }

    /// Follows a link through Connect, the provider and the callback; returns the final response.
    pub async fn run_signup(&self, link: &str) -> reqwest::Response {
        let to_provider = self.click_connect(link).await;
        assert_eq!(
            to_provider.status(),
            303,
            "Connect redirects to the provider"
        );
        let authorize = location(&to_provider);
        let back = self.client.get(&authorize).send().await.unwrap();
        assert!(
            back.status().is_redirection(),
            "the provider redirects back"
        );
        let callback = location(&back);
        self.remember_secret(&query_param(&callback, "state").unwrap_or_default());
        self.callback(&callback).await
    }
}

/// The (name, value) of every cookie a response sets with a value.
pub fn set_cookies(response: &reqwest::Response) -> Vec<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .filter(|(_, value)| !value.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

pub fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
