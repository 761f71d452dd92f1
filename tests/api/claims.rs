//! One test per README claim that had none (issue 13, "Claimed and untested"). Each test names
//! the README passage it checks; the fake provider and a fake webhook receiver inject faults.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::{
    cli, eventually, exit_within, holds_eventually, json_of, now, spawn_app_on, spawn_app_with,
    unique, wait_until, AppOptions, Backend, FakeProvider, Mode, TestApp, BIN,
};

// --- Harness pieces of this file ---------------------------------------------------------------

/// A webhook receiver that records every attempt (headers, raw body) and answers 204, or 500
/// while `failing` is set.
struct Receiver {
    url: String,
    attempts: AtomicUsize,
    failing: std::sync::atomic::AtomicBool,
    /// (lower-case headers, raw body) of every attempt.
    seen: Mutex<Vec<(HashMap<String, String>, String)>>,
}

impl Receiver {
    async fn start(failing: bool) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            attempts: AtomicUsize::new(0),
            failing: std::sync::atomic::AtomicBool::new(failing),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        state
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The event types received (from the `Tokenbox-Event` header), in order.
    fn types(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h["tokenbox-event"].clone())
            .collect()
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    r.seen.lock().unwrap().push((headers, body));
    r.attempts.fetch_add(1, Ordering::SeqCst);
    if r.failing.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

/// `[[webhooks]]` entries, one per (receiver, secret, events).
fn webhook_config(hooks: &[(&Receiver, &str, Option<&str>)]) -> String {
    hooks
        .iter()
        .map(|(r, secret, events)| {
            let events = events
                .map(|e| format!("events = {e}\n"))
                .unwrap_or_default();
            format!(
                "[[webhooks]]\nurl = \"{}\"\nsecret = \"{secret}\"\n{events}",
                r.url
            )
        })
        .collect()
}

/// A `tokenbox serve` run by hand (another environment or log format than the harness's), killed
/// when dropped. Its stderr lines are collected.
struct Serve {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    address: Option<String>,
}

impl Serve {
    /// Starts `serve` and waits (at most 30 s, a hang guard) until it listens or exits.
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("TOKENBOX_LOG", "debug,hyper=info,h2=info,tower=info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn tokenbox serve");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("tokenbox listening") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Some(listening_address(&line)));
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send(None); // exited without listening
                }
            });
        }
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tokenbox serve neither listened nor exited within 30 s");
        Self {
            child: Some(child),
            lines,
            address: address.map(|a| format!("http://{a}")),
        }
    }

    fn address(&self) -> &str {
        self.address
            .as_deref()
            .unwrap_or_else(|| panic!("serve did not start: {}", self.logs()))
    }

    fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The exit code of a server that refused to start (waited for at most 30 s).
    fn exit_code(&mut self) -> Option<i32> {
        let child = self.child.take().unwrap();
        match exit_within(child, Duration::from_secs(30)) {
            Some(status) => status.code(),
            None => panic!("serve is still running: {}", self.logs()),
        }
    }
}

/// The address of the "tokenbox listening" line, in the text or the JSON log format.
fn listening_address(line: &str) -> String {
    if let Some(rest) = line.split("address=").nth(1) {
        return rest.split_whitespace().next().unwrap().to_string();
    }
    let value: Value = serde_json::from_str(line).expect("a JSON log line");
    find_field(&value, "address")
        .and_then(Value::as_str)
        .expect("an address field")
        .to_string()
}

fn find_field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(name)
            .or_else(|| map.values().find_map(|v| find_field(v, name))),
        _ => None,
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process waited for at most `deadline` (killed then): (exit code, stdout, stderr).
fn run_with_deadline(mut command: Command, deadline: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let code = exit_within(child, deadline)
        .unwrap_or_else(|| panic!("{command:?} did not finish within {deadline:?}"))
        .code();
    (code, out.join().unwrap(), err.join().unwrap())
}

/// The key id of every stored access token, in app order.
async fn key_ids(app: &TestApp) -> Vec<Vec<u8>> {
    raw_query(app, "SELECT access_token FROM connections ORDER BY app_id")
        .await
        .into_iter()
        .map(|blob| blob[1..9].to_vec())
        .collect()
}

fn access_token(body: &Value) -> String {
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_string()
}

/// The stored refresh-token ciphertext of a connection (to see a write happen).
async fn stored_tokens(app: &TestApp, app_id: &str) -> Vec<Vec<u8>> {
    let statement = format!("SELECT refresh_token FROM connections WHERE app_id = '{app_id}'");
    raw_query(app, &statement).await
}

async fn raw_query(app: &TestApp, statement: &str) -> Vec<Vec<u8>> {
    use sqlx::{ConnectOptions, Connection};
    match &app.pg {
        Some(db) => {
            let mut c = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let out = sqlx::query_scalar::<_, Vec<u8>>(statement)
                .fetch_all(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            out
        }
        None => {
            let mut c = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(
                &format!("sqlite://{}", app.db_path().display()),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
            let out = sqlx::query_scalar::<_, Vec<u8>>(statement)
                .fetch_all(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            out
        }
    }
}

/// The PostgreSQL database of a PostgreSQL app: (its name, a URL to the `postgres` database of
/// the same server, for administration).
fn pg_names(app: &TestApp) -> (String, String) {
    let url = &app.pg.as_ref().expect("a PostgreSQL app").url;
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let name = parsed.path().trim_start_matches('/').to_string();
    parsed.set_path("/postgres");
    (name, parsed.to_string())
}

async fn pg_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

// --- Refresh ------------------------------------------------------------------------------------

/// README, binb-token: "`force_refresh=true` ... Concurrent forced calls share one refresh."
/// The provider holds its answer for 2 s, so the forced calls sent together all arrive while the
/// first one's refresh is in flight; they must all get the one new token from one provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_forced_refreshes_share_one_refresh() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(Backend::Sqlite, Some(&provider)).await;
    let imported = unique("valid-at");
    app.import_ok(
        "forced",
        "acme",
        &json!({"access_token": imported, "refresh_token": provider.new_refresh_token(), "expires_in": 3600}),
    )
    .await;
    // The provider holds its answer until every caller has joined the refresh flight (each
    // logs it before queueing): none of them can have come after the refresh finished.
    provider.hold();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = app
            .get("/forced/acme/binb-token?force_refresh=true")
            .as_superadmin();
        requests.spawn(async move {
            let response = request.send().await;
            (response.status().as_u16(), json_of(response).await)
        });
    }
    wait_until("all 20 forced calls joined the flight", || {
        app.log_lines_containing("joining the refresh flight") >= 20
    })
    .await;
    wait_until("the refresh reached the provider", || {
        provider.pending() == 1
    })
    .await;
    provider.release();
    let mut served = std::collections::HashSet::new();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 200, "{body}");
        served.insert(access_token(&body));
    }
    assert_eq!(
        provider.calls(),
        1,
        "20 concurrent forced calls made {} provider calls",
        provider.calls()
    );
    assert_eq!(served.len(), 1, "one new token for all: {served:?}");
    assert!(
        !served.contains(&imported),
        "the forced calls got a new token"
    );
    assert_eq!(provider.reuses(), 0);
}

/// README: "No request waits more than `request_timeout_seconds`; a refresh that outlives its
/// caller still completes and stores its result." (Limits: `503 provider_unavailable`, "a refresh
/// goes on in the background".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_request_timeout_gets_503_and_its_refresh_is_still_stored() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: "request_timeout_seconds = 1\nprovider_timeout_seconds = 10\n".into(),
        ..AppOptions::default()
    })
    .await;
    let imported = app.import_expired("slow").await;
    let before = stored_tokens(&app, "slow").await;
    // The provider answers 3 s after the call; the request gives up after 1 s.
    provider.set_delay(Duration::from_secs(3));
    let response = app.get_token("slow", "acme", "").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = json_of(response).await;
    assert_eq!(body["error"], "provider_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("background"),
        "{body}"
    );
    // The refresh goes on: its rotated refresh token is stored.
    let stored = eventually("the refresh to be stored after its caller gave up", || {
        let app = &app;
        let before = before.clone();
        async move {
            let now = stored_tokens(app, "slow").await;
            (now != before).then_some(now)
        }
    })
    .await;
    assert_eq!(stored.len(), 1);
    provider.set_delay(Duration::ZERO);
    let body = json_of(app.get_token("slow", "acme", "").await).await;
    assert_ne!(access_token(&body), imported);
    assert!(provider
        .issued_access_tokens()
        .contains(&access_token(&body)));
    assert_eq!(
        provider.calls(),
        1,
        "the stored token is served, no new call"
    );
}

/// README, Provider faults: "after 5 consecutive transient failures of one connector type at one
/// token host, its circuit opens ... (one tenant's broken self-hosted instance does not pause the
/// other tenants of that type)". The hosts are names under `.invalid`, which never resolve: every
/// refresh fails as a transient fault, and the message tells an open circuit from a real attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_circuit_per_token_host() {
    let app = spawn_app_with(AppOptions {
        extra_config: "provider_timeout_seconds = 2\n\
             [connector_types.selfhosted]\nauthorization_url = \"https://{host}/oauth/authorize\"\n\
             token_url = \"https://{host}/oauth/token\"\nclient_id = \"selfhosted\"\nclient_secret = \"selfhosted-secret\"\n\
             placeholders = { host = { pattern = \"hostname\" } }\n"
            .into(),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret("selfhosted-secret");
    let import = |app_id: String, host: &'static str| {
        let app = &app;
        async move {
            app.import_ok(
                &app_id,
                "selfhosted",
                &json!({"access_token": unique("sh-at"), "refresh_token": unique("sh-rt"),
                        "expires_at": 1, "metadata": {"host": host}}),
            )
            .await;
        }
    };
    let message = |response: Value| response["message"].as_str().unwrap_or("").to_string();
    for i in 0..5 {
        let app_id = format!("broken-{i}");
        import(app_id.clone(), "broken.tokenbox-test.invalid").await;
        let response = app.get_token(&app_id, "selfhosted", "").await;
        assert_eq!(response.status(), 503);
        let body = json_of(response).await;
        assert!(!message(body.clone()).contains("circuit open"), "{body}");
    }
    // The sixth tenant on the broken host: its circuit is open, no attempt.
    import("broken-next".into(), "broken.tokenbox-test.invalid").await;
    let body = json_of(app.get_token("broken-next", "selfhosted", "").await).await;
    assert!(message(body.clone()).contains("circuit open"), "{body}");
    // A tenant of the same connector type on another host is still tried.
    import("other-host".into(), "other.tokenbox-test.invalid").await;
    let response = app.get_token("other-host", "selfhosted", "").await;
    assert_eq!(response.status(), 503);
    let body = json_of(response).await;
    assert!(
        !message(body.clone()).contains("circuit open"),
        "another host of the same type is not paused: {body}"
    );
}

// --- PostgreSQL: the pool, health ---------------------------------------------------------------

/// README, replicas: "A replica's pool opens at most 16 connections to PostgreSQL; requests fail
/// fast (`503`) when none can be had within 3 s." The test locks the connections table, so
/// every token read holds its pooled connection until the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_pool_opens_at_most_16_connections_and_the_rest_get_503() {
    let app = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        extra_config: "cache_ttl_seconds = 0\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_ok(
        "pooled",
        "github",
        &json!({"access_token": unique("pool-at")}),
    )
    .await;
    let (db, admin_url) = pg_names(&app);
    let mut locker = pg_connect(&app.pg.as_ref().unwrap().url).await;
    let locker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut locker)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE connections IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let request = app.get("/pooled/github/binb-token").as_superadmin();
        requests.spawn(async move {
            let response = request.send().await;
            (response.status().as_u16(), json_of(response).await)
        });
    }
    let monitor = pg_connect(&admin_url).await;
    let count = |waiting_only: bool| {
        format!(
            // The cache listener has a connection of its own, outside the pool.
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> {locker_pid} \
             AND application_name NOT LIKE 'tokenbox-listener-%'{}",
            if waiting_only {
                " AND wait_event_type = 'Lock'"
            } else {
                ""
            }
        )
    };
    // The pool fills up: 16 token reads wait on the lock, each on its own connection; the
    // server never holds more, at any of the looks.
    let monitor = tokio::sync::Mutex::new(monitor);
    let most = std::sync::atomic::AtomicI64::new(0);
    eventually("16 reads waiting on the lock", || async {
        let mut monitor = monitor.lock().await;
        let waiting: i64 = sqlx::query_scalar(&count(true))
            .fetch_one(&mut *monitor)
            .await
            .unwrap();
        let all: i64 = sqlx::query_scalar(&count(false))
            .fetch_one(&mut *monitor)
            .await
            .unwrap();
        most.fetch_max(all, std::sync::atomic::Ordering::SeqCst);
        assert!(all <= 16, "the server holds {all} connections");
        (waiting == 16).then_some(())
    })
    .await;
    let most = most.into_inner();
    let mut monitor = monitor.into_inner();
    // The others cannot get a connection: 503, while the lock still holds.
    let mut unavailable = 0;
    while unavailable == 0 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), requests.join_next())
            .await
            .expect("a request answers while the pool is full")
            .expect("a request is left")
            .unwrap();
        assert_eq!(
            status, 503,
            "no request is served while the table is locked: {body}"
        );
        assert_eq!(body["error"], "unavailable", "{body}");
        unavailable += 1;
    }
    let all: i64 = sqlx::query_scalar(&count(false))
        .fetch_one(&mut monitor)
        .await
        .unwrap();
    assert!(all <= 16, "the server holds {all} connections");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    // The lock is gone: the waiting reads are served.
    let mut served = 0;
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        assert!(status == 200 || status == 503, "{status} {body}");
        served += usize::from(status == 200);
    }
    assert!(served >= 16, "the 16 waiting reads were served ({served})");
    assert!(most <= 16);
}

/// README: "`/healthz`: `200 {"status": "ok"}` when the database answers, `503` otherwise.
/// `/readyz`: the same within 2 seconds". The test database stops accepting connections and
/// the server's are cut (the cluster itself keeps running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_503_while_the_database_is_unreachable() {
    let app = spawn_app_on(Backend::Postgres, None).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(app.get(path).send().await.status(), 200, "{path}");
    }
    let (db, admin_url) = pg_names(&app);
    let mut admin = pg_connect(&admin_url).await;
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    let cut = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    sqlx::query(&cut).execute(&mut admin).await.unwrap();
    for path in ["/healthz", "/readyz"] {
        let response = app.get(path).send().await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"], "unavailable", "{path}: {body}");
    }
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    for path in ["/healthz", "/readyz"] {
        let back = holds_eventually(|| async { app.get(path).send().await.status() == 200 }).await;
        assert!(
            back,
            "{path} answers 200 again once the database accepts connections"
        );
    }
}

// --- Signup -------------------------------------------------------------------------------------

/// README, signup outcomes: "code exchange refused by the provider | `502` page; nothing
/// stored; the link can be used again".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_code_exchange_shows_a_502_page_and_the_link_stays_usable() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(Backend::Sqlite, Some(&provider)).await;
    let link = app.new_link("refused").await;
    provider.set_mode(Mode::Revoked); // the token endpoint answers invalid_grant to the code
    let done = app.run_signup(&link).await;
    assert_eq!(done.status(), 502);
    let html = done.text().await.unwrap();
    assert!(html.contains("data-status=\"error\""), "{html}");
    assert_eq!(
        app.get("/refused/acme/connection")
            .as_admin()
            .send()
            .await
            .status(),
        404,
        "nothing stored"
    );
    provider.set_mode(Mode::Rotating);
    let again = app.run_signup(&link).await;
    assert_eq!(again.status(), 200, "the same link works again");
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("data-status=\"connected\""));
    assert_eq!(app.get_token("refused", "acme", "").await.status(), 200);
}

/// README: "The link is single-use and expires (default 7 days, at most 30)"; the code refuses
/// less than 60 s too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_links_expire_after_7_days_by_default_and_at_most_30() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(Backend::Sqlite, Some(&provider)).await;
    let expires_at = |body: Value| body["expires_at"].as_i64().expect("expires_at");
    let created = |response: reqwest::Response| {
        let app = &app;
        async move {
            assert_eq!(response.status(), 201);
            let body = json_of(response).await;
            app.remember_secret(body["url"].as_str().unwrap().rsplit('/').next().unwrap());
            body
        }
    };
    let default = created(app.create_link("l1", "acme", &json!({})).await).await;
    let week = now() + 7 * 86_400;
    assert!(
        (week - 60..=week + 60).contains(&expires_at(default.clone())),
        "{default}"
    );
    let month = created(
        app.create_link("l2", "acme", &json!({"expires_in": 30 * 86_400}))
            .await,
    )
    .await;
    let at = now() + 30 * 86_400;
    assert!((at - 60..=at + 60).contains(&expires_at(month.clone())));
    created(
        app.create_link("l3", "acme", &json!({"expires_in": 60}))
            .await,
    )
    .await;
    for too_long_or_short in [30 * 86_400 + 1, 59, 0, -1] {
        let response = app
            .create_link("l4", "acme", &json!({"expires_in": too_long_or_short}))
            .await;
        assert_eq!(response.status(), 400, "expires_in {too_long_or_short}");
        assert_eq!(json_of(response).await["error"], "invalid_request");
    }
}

// --- DELETE and revocation ----------------------------------------------------------------------

/// README: "`DELETE` ... removes the connection and revokes the grant at the provider (RFC 7009)
/// when the catalog has a revocation endpoint: `{"deleted": true, "revoked_at_provider":
/// true|false}`": without an endpoint, and with one that fails, the connection is deleted and
/// `revoked_at_provider` is false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_without_a_revocation_endpoint_or_with_a_failing_one_still_deletes() {
    let provider = FakeProvider::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = &provider.url;
    let secret = &provider.state.client_secret;
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "[connector_types.norevoke]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\n\
             client_id = \"acme-client\"\nclient_secret = \"{secret}\"\n\
             [connector_types.refusing]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\n\
             revocation_url = \"{url}/no-such-endpoint\"\nclient_id = \"acme-client\"\nclient_secret = \"{secret}\"\n\
             [connector_types.unreachable]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\n\
             revocation_url = \"http://127.0.0.1:{closed}/revoke\"\nclient_id = \"acme-client\"\nclient_secret = \"{secret}\"\n"
        ),
        ..AppOptions::default()
    })
    .await;
    for (connector_type, revoked) in [
        ("acme", true),
        ("norevoke", false),
        ("refusing", false),
        ("unreachable", false),
    ] {
        let refresh = unique("del-rt");
        app.import_ok(
            "deleted",
            connector_type,
            &json!({"access_token": unique("del-at"), "refresh_token": refresh, "expires_in": 3600}),
        )
        .await;
        let response = app
            .delete(&format!("/deleted/{connector_type}/connection"))
            .as_admin()
            .send()
            .await;
        assert_eq!(response.status(), 200, "{connector_type}");
        let body = json_of(response).await;
        assert_eq!(
            body,
            json!({"deleted": true, "revoked_at_provider": revoked}),
            "{connector_type}"
        );
        assert_eq!(
            app.get(&format!("/deleted/{connector_type}/connection"))
                .as_admin()
                .send()
                .await
                .status(),
            404,
            "{connector_type}: deleted"
        );
        if revoked {
            assert!(provider.state.revoked.lock().unwrap().contains(&refresh));
        }
    }
    assert_eq!(
        provider.state.revoked.lock().unwrap().len(),
        1,
        "only acme's endpoint recorded a revocation"
    );
}

// --- Webhooks -----------------------------------------------------------------------------------

/// README, Webhooks: `events = [...]   # default: all`, on both backends (the PostgreSQL run is
/// the delivery on PostgreSQL). One endpoint takes every event, the other only
/// `connection.reauthorization_required`; each endpoint gets its events in order, so once the
/// filtered one has its event, the earlier `connection.created` would have come first.
async fn the_webhook_events_filter_holds(backend: Backend) {
    let provider = FakeProvider::start().await;
    let all = Receiver::start(false).await;
    let filtered = Receiver::start(false).await;
    let (all_secret, filtered_secret) = (unique("whsec-all"), unique("whsec-filtered"));
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: webhook_config(&[
            (&all, &all_secret, None),
            (
                &filtered,
                &filtered_secret,
                Some("[\"connection.reauthorization_required\"]"),
            ),
        ]),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&all_secret);
    app.remember_secret(&filtered_secret);
    app.import_expired("hooked").await; // connection.created
    provider.set_mode(Mode::Revoked);
    assert_eq!(app.get_token("hooked", "acme", "").await.status(), 409); // reauthorization_required
    wait_until("both events at the unfiltered endpoint", || {
        all.types().len() >= 2
    })
    .await;
    wait_until("the event at the filtered endpoint", || {
        filtered.attempts() >= 1
    })
    .await;
    assert_eq!(
        all.types(),
        ["connection.created", "connection.reauthorization_required"]
    );
    assert_eq!(filtered.types(), ["connection.reauthorization_required"]);
    // Each body is signed with its endpoint's secret.
    for (receiver, secret) in [(&all, &all_secret), (&filtered, &filtered_secret)] {
        for (headers, body) in receiver.seen.lock().unwrap().iter() {
            let expected = hmac_hex(secret, &format!("{}.{body}", headers["tokenbox-timestamp"]));
            assert_eq!(headers["tokenbox-signature"], format!("v1={expected}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_webhook_events_filter_holds() {
    the_webhook_events_filter_holds(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_webhook_events_filter_holds_and_events_are_delivered() {
    the_webhook_events_filter_holds(Backend::Postgres).await
}

fn hmac_hex(secret: &str, message: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// README, Webhooks: "retried with back-off (... 20 attempts)". With `webhook_retry_seconds = 0`
/// the retries follow each other at once. A second event is delivered (and fails) 20 times after
/// the first gave up: had the first not stopped at 20, it would have been claimed alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_delivery_stops_after_20_attempts() {
    let receiver = Receiver::start(true).await;
    let secret = unique("whsec-cap");
    let app = spawn_app_with(AppOptions {
        extra_config: format!(
            "webhook_retry_seconds = 0\n{}",
            webhook_config(&[(&receiver, &secret, None)])
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&secret);
    let attempts_of = |app_id: &str| {
        let statement = format!(
            "SELECT CAST(attempts AS TEXT) FROM webhook_deliveries WHERE body LIKE '%\"{app_id}\"%'"
        );
        let app = &app;
        async move { app.query_strings(&statement).await }
    };
    app.import_ok(
        "first",
        "github",
        &json!({"access_token": unique("cap-at")}),
    )
    .await;
    let first = eventually("20 attempts of the first delivery", || async {
        let attempts = attempts_of("first").await;
        (attempts == ["20"]).then_some(attempts)
    })
    .await;
    assert_eq!(first, ["20"]);
    app.import_ok(
        "second",
        "github",
        &json!({"access_token": unique("cap-at")}),
    )
    .await;
    eventually("20 attempts of the second delivery", || async {
        (attempts_of("second").await == ["20"]).then_some(())
    })
    .await;
    assert_eq!(attempts_of("first").await, ["20"], "the first stayed at 20");
    assert_eq!(receiver.attempts(), 40, "20 attempts per delivery, no more");
    let (code, failed, stderr) = cli(
        &app.config_path,
        &["webhooks", "list", "--failed"],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        failed.lines().count(),
        3,
        "a header and both deliveries: {failed}"
    );
}

/// README, Webhooks: the Python `verify` snippet, run as it is printed, accepts a real delivery
/// and refuses a tampered body or another secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_snippet_verifies_a_real_delivery() {
    let receiver = Receiver::start(false).await;
    let secret = unique("whsec-py");
    let app = spawn_app_with(AppOptions {
        extra_config: webhook_config(&[(&receiver, &secret, None)]),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&secret);
    app.import_ok("py", "github", &json!({"access_token": unique("py-at")}))
        .await;
    wait_until("a delivery", || receiver.attempts() >= 1).await;
    let (headers, body) = receiver.seen.lock().unwrap()[0].clone();

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("Verify it like this:")
        .nth(1)
        .expect("the README's verification snippet");
    let snippet = after
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a python block");
    assert!(snippet.contains("def verify("), "{snippet}");
    let dir = app.dir.join("python-snippet");
    std::fs::create_dir_all(&dir).unwrap();
    let case = json!({
        "secret": secret,
        "headers": {
            "Tokenbox-Timestamp": headers["tokenbox-timestamp"],
            "Tokenbox-Signature": headers["tokenbox-signature"],
        },
        "body": body,
    });
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let script = format!(
        "{snippet}\nimport json, sys\ncase = json.load(open(sys.argv[1]))\nbody = case['body'].encode()\n\
         good = verify(case['secret'], case['headers'], body)\n\
         tampered = verify(case['secret'], case['headers'], body.replace(b'github', b'gitlab'))\n\
         other = verify(case['secret'] + 'x', case['headers'], body)\n\
         print(json.dumps([good, tampered, other]))\n"
    );
    std::fs::write(dir.join("verify.py"), script).unwrap();
    let mut command = Command::new("python3");
    command
        .arg(dir.join("verify.py"))
        .arg(dir.join("case.json"));
    let (code, stdout, stderr) = run_with_deadline(command, Duration::from_secs(60));
    assert_eq!(code, Some(0), "python3 failed: {stderr}");
    assert_eq!(
        stdout.trim(),
        "[true, false, false]",
        "verify(real), verify(tampered body), verify(other secret): {stderr}"
    );
}

// --- CLI, logs, keys ----------------------------------------------------------------------------

/// README, Command line: `tokenbox token` exits with 5 for `provider_unavailable` /
/// `provider_error`, 6 for `unauthorized` / `forbidden`, 1 otherwise, printing
/// `tokenbox: <error>: <message>` on stderr and nothing on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenbox_token_exits_5_6_and_1_as_documented() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(Backend::Sqlite, Some(&provider)).await;
    app.import_expired("down").await;
    app.import_expired("broken").await;
    let run = |bearer: &str, args: &[&str]| {
        let env = [
            ("TOKENBOX_URL", app.address.as_str()),
            ("TOKENBOX_TOKEN", bearer),
        ];
        let mut full = vec!["token"];
        full.extend_from_slice(args);
        cli(&app.config_path, &full, None, &env)
    };
    let superadmin = app.superadmin.clone();
    // (what, bearer, arguments, provider mode, exit code, error code)
    type Case<'a> = (&'a str, String, [&'a str; 2], Mode, i32, &'a str);
    let cases: [Case; 5] = [
        (
            "provider down",
            superadmin.clone(),
            ["down", "acme"],
            Mode::Down,
            5,
            "provider_unavailable",
        ),
        (
            "HTML answer",
            superadmin.clone(),
            ["broken", "acme"],
            Mode::Html,
            5,
            "provider_error",
        ),
        (
            "unknown token",
            unique("tbx_wrong"),
            ["down", "acme"],
            Mode::Rotating,
            6,
            "unauthorized",
        ),
        (
            "admin token",
            app.admin.clone(),
            ["down", "acme"],
            Mode::Rotating,
            6,
            "forbidden",
        ),
        (
            "unknown connector type",
            superadmin.clone(),
            ["down", "nosuchtype"],
            Mode::Rotating,
            1,
            "unknown_connector_type",
        ),
    ];
    for (label, bearer, args, mode, expected, error) in cases {
        provider.set_mode(mode);
        let (code, stdout, stderr) = run(&bearer, &args);
        assert_eq!(code, expected, "{label}: {stderr}");
        assert!(stdout.is_empty(), "{label}: {stdout}");
        assert!(
            stderr.starts_with(&format!("tokenbox: {error}: ")),
            "{label}: {stderr}"
        );
    }
    // No server at all: 1 as well.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{closed}");
    let (code, stdout, _) = cli(
        &app.config_path,
        &["token", "down", "acme"],
        None,
        &[("TOKENBOX_URL", &nowhere), ("TOKENBOX_TOKEN", &superadmin)],
    );
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
}

/// README, Configuration: "`log_format` ... `text` or `json` (one JSON object per line)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let mut app = spawn_app_on(Backend::Sqlite, None).await;
    app.stop();
    let server = Serve::start(&app.config_path, &[("TOKENBOX_LOG_FORMAT", "json")]);
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", server.address()))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let bad = client
        .get(format!("{}/acme/github/binb-token", server.address()))
        .bearer_auth(&app.superadmin)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
    wait_until("the access log line of the request", || {
        server.logs().contains("binb-token")
    })
    .await;
    let logs = server.logs();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(value.is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("tokenbox listening")));
    assert!(
        !logs.contains(&app.superadmin),
        "no bearer token in the logs"
    );
    drop(server);
    app.start_again();
}

/// README, Configuration and replicas: `encryption_key` / `TOKENBOX_ENCRYPTION_KEY` is "the key
/// file's content, instead of the file"; a wrong one fails at startup naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenbox_encryption_key_replaces_the_key_file() {
    let mut app = spawn_app_on(Backend::Sqlite, None).await;
    let token = unique("env-key-at");
    app.import_ok("envkey", "github", &json!({"access_token": token}))
        .await;
    app.stop();
    let key_file = app.dir.join("encryption.key");
    let aside = app.dir.join("encryption.key.aside");
    let key = std::fs::read_to_string(&key_file).unwrap();
    app.remember_secret(key.trim());
    std::fs::rename(&key_file, &aside).unwrap();

    let server = Serve::start(&app.config_path, &[("TOKENBOX_ENCRYPTION_KEY", key.trim())]);
    let body: Value = reqwest::Client::new()
        .get(format!("{}/envkey/github/binb-token", server.address()))
        .bearer_auth(&app.superadmin)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["access_token"],
        token.as_str(),
        "decrypted with the key from the environment"
    );
    assert!(!key_file.exists(), "no key file was created");
    assert!(!server.logs().contains(key.trim()), "the key is not logged");
    drop(server);

    // Another key in the variable: refused at startup, naming the variable.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut refused = Serve::start(&app.config_path, &[("TOKENBOX_ENCRYPTION_KEY", other)]);
    assert!(refused.address.is_none(), "started with a wrong key");
    assert_ne!(refused.exit_code(), Some(0));
    assert!(
        refused.logs().contains("TOKENBOX_ENCRYPTION_KEY")
            && refused.logs().contains("does not match"),
        "{}",
        refused.logs()
    );

    std::fs::rename(&aside, &key_file).unwrap();
    app.start_again();
    assert_eq!(app.get_token("envkey", "github", "").await.status(), 200);
}

/// `tokenbox keys rotate --help`: "Safe to interrupt and run again." A row the rotation cannot
/// decrypt stops it part-way (as an interruption would); the rows before it use the new key, the
/// rest the old one. Once the row is repaired, a second run re-encrypts only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_keys_rotate_resumes_where_it_stopped() {
    let mut app = spawn_app_on(Backend::Sqlite, None).await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        let token = unique("rot-at");
        app.import_ok(
            &format!("app-{i:02}"),
            "github",
            &json!({"access_token": token}),
        )
        .await;
        tokens.push(token);
    }
    let (code, _, stderr) = cli(&app.config_path, &["keys", "add"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    app.stop();
    // app-10's ciphertext is app-09's: bound to another row, it does not decrypt.
    app.execute_sql(
        "UPDATE connections SET access_token = (SELECT access_token FROM connections WHERE app_id = 'app-09') \
         WHERE app_id = 'app-10'",
    )
    .await;
    let before = key_ids(&app).await;
    let (code, _, stderr) = cli(
        &app.config_path,
        &["keys", "rotate", "--batch", "3"],
        None,
        &[],
    );
    assert_ne!(code, 0, "the rotation stops at the bad row: {stderr}");
    let midway = key_ids(&app).await;
    let changed: Vec<usize> = (0..20).filter(|&i| midway[i] != before[i]).collect();
    assert_eq!(
        changed,
        (0..10).collect::<Vec<_>>(),
        "app-00..app-09 were re-encrypted"
    );

    // The operator repairs app-10 (imports it again, under the newest key) and runs it again.
    app.start_again();
    app.import_ok("app-10", "github", &json!({"access_token": tokens[10]}))
        .await;
    let (code, _, stderr) = cli(
        &app.config_path,
        &["keys", "rotate", "--batch", "3"],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("pass 1: re-encrypted 9 connections"),
        "only the rows left are re-encrypted: {stderr}"
    );
    let after = key_ids(&app).await;
    assert!(after.iter().all(|id| *id == after[0]), "one key for all");
    assert_eq!(after[0], midway[0]);
    app.restart();
    for (i, token) in tokens.iter().enumerate() {
        let body = json_of(app.get_token(&format!("app-{i:02}"), "github", "").await).await;
        assert_eq!(body["access_token"], token.as_str());
    }
}

// --- Replicas and the cache ---------------------------------------------------------------------

/// README, replicas: "Each replica keeps decrypted tokens in memory for `cache_ttl_seconds`. A
/// token another replica refreshed is picked up when the cached one no longer meets the caller's
/// `min_validity`, or after that time". Replica B caches the imported token; replica A refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_picks_up_another_replicas_refresh_by_min_validity() {
    let provider = FakeProvider::start().await;
    let a = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        provider: Some(provider.clone()),
        extra_config: "cache_ttl_seconds = 3600\n".into(),
        ..AppOptions::default()
    })
    .await;
    let b = a.replica();
    let imported = unique("cached-at");
    a.import_ok(
        "shared",
        "acme",
        &json!({"access_token": imported, "refresh_token": provider.new_refresh_token(), "expires_in": 1000}),
    )
    .await;
    let cached = json_of(b.get_token("shared", "acme", "").await).await;
    assert_eq!(
        access_token(&cached),
        imported,
        "B caches the imported token"
    );
    let refreshed =
        access_token(&json_of(a.get_token("shared", "acme", "force_refresh=true").await).await);
    assert_eq!(provider.calls(), 1);
    // B's cached token lives 1000 s: too short for min_validity=2000, so B reads the row again
    // (after the lease) and serves A's token, without a call of its own.
    let body = json_of(b.get_token("shared", "acme", "min_validity=2000").await).await;
    assert_eq!(access_token(&body), refreshed);
    assert_eq!(provider.calls(), 1, "B did not refresh again");
    assert_eq!(provider.reuses(), 0);
}

/// The same README passage, its second half: "or after that time" (`cache_ttl_seconds = 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_picks_up_another_replicas_refresh_after_the_cache_ttl() {
    let provider = FakeProvider::start().await;
    let a = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        provider: Some(provider.clone()),
        extra_config: "cache_ttl_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    let b = a.replica();
    let imported = unique("ttl-at");
    a.import_ok(
        "shared",
        "acme",
        &json!({"access_token": imported, "refresh_token": provider.new_refresh_token(), "expires_in": 3600}),
    )
    .await;
    assert_eq!(
        access_token(&json_of(b.get_token("shared", "acme", "").await).await),
        imported
    );
    let refreshed =
        access_token(&json_of(a.get_token("shared", "acme", "force_refresh=true").await).await);
    let seen = eventually("B to serve A's refreshed token", || async {
        let token = access_token(&json_of(b.get_token("shared", "acme", "").await).await);
        (token == refreshed).then_some(token)
    })
    .await;
    assert_eq!(seen, refreshed);
    assert_eq!(provider.calls(), 1, "B made no provider call");
}
