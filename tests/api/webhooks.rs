//! Webhooks: signed, delivered at least once, retried, and kept across a restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use crate::helpers::{
    cli, eventually, spawn_app_with, unique, wait_until, AppOptions, FakeProvider, Mode, TestApp,
};

struct Receiver {
    secret: String,
    /// Requests to fail (500) before succeeding.
    fail_first: AtomicUsize,
    attempts: AtomicUsize,
    /// Delivered events: (type, body), signatures checked.
    events: Mutex<Vec<(String, Value)>>,
    bad_signatures: AtomicUsize,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    r.attempts.fetch_add(1, Ordering::SeqCst);
    let timestamp = headers["tokenbox-timestamp"].to_str().unwrap();
    let signature = headers["tokenbox-signature"].to_str().unwrap();
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(r.secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("v1={hex}")
    };
    if signature != expected {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if r.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let event = headers["tokenbox-event"].to_str().unwrap().to_string();
    r.events
        .lock()
        .unwrap()
        .push((event, serde_json::from_str(&body).unwrap()));
    StatusCode::NO_CONTENT
}

async fn receiver(fail_first: usize) -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver {
        secret: unique("whsec"),
        fail_first: AtomicUsize::new(fail_first),
        attempts: AtomicUsize::new(0),
        events: Mutex::new(Vec::new()),
        bad_signatures: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

async fn app_with_hook(provider: &FakeProvider, url: &str, secret: &str) -> TestApp {
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "refresh_backoff_seconds = 1\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(secret);
    app
}

/// The outbox rows as `event_type:attempts:delivered` (the app's database, as stored).
async fn outbox(app: &TestApp) -> Vec<String> {
    app.query_strings(
        "SELECT event_type || ':' || CAST(attempts AS TEXT) || ':' || \
         CASE WHEN delivered_at IS NULL THEN 'pending' ELSE 'delivered' END \
         FROM webhook_deliveries ORDER BY id",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_event_is_delivered_once_with_a_valid_signature() {
    let provider = FakeProvider::start().await;
    let (url, hooks) = receiver(0).await;
    let app = app_with_hook(&provider, &url, &hooks.secret.clone()).await;

    app.import_expired("acme").await; // connection.created
    provider.set_mode(Mode::Down);
    assert_eq!(app.get_token("acme", "acme", "").await.status(), 503); // refresh_failed
    provider.set_mode(Mode::Rotating);
    // Answered from the back-off until it ends, then refreshed.
    let recovered = eventually("the back-off to end", || async {
        let status = app.get_token("acme", "acme", "").await.status();
        (status != 503).then_some(status)
    })
    .await;
    assert_eq!(recovered, 200); // recovered
    let calls = provider.calls();
    assert_eq!(app.get_token("acme", "acme", "").await.status(), 200); // no event
    assert_eq!(provider.calls(), calls, "served without a refresh");
    provider.set_mode(Mode::Revoked);
    assert_eq!(
        app.get_token("acme", "acme", "force_refresh=true")
            .await
            .status(),
        409
    ); // reauthorization_required

    wait_until("four events", || hooks.events.lock().unwrap().len() >= 4).await;
    // Every outbox row delivered: nothing more will come.
    let rows = eventually("the outbox to be delivered", || async {
        let rows = outbox(&app).await;
        rows.iter()
            .all(|r| r.ends_with(":delivered"))
            .then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let events = hooks.events.lock().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "connection.created",
            "connection.refresh_failed",
            "connection.recovered",
            "connection.reauthorization_required"
        ],
        "each event once, in order"
    );
    assert_eq!(hooks.bad_signatures.load(Ordering::SeqCst), 0);
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    for (kind, body) in &events {
        assert_eq!(body["type"], kind.as_str());
        assert_eq!(body["data"]["app_id"], "acme");
        assert_eq!(body["data"]["connector_type"], "acme");
        let text = body.to_string();
        for secret in app.all_secrets() {
            assert!(!text.contains(&secret), "no secret in a webhook body");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_event_on_the_third_try_even_across_a_restart() {
    let provider = FakeProvider::start().await;
    let (url, hooks) = receiver(2).await;
    let mut app = app_with_hook(&provider, &url, &hooks.secret.clone()).await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("t")}),
    )
    .await;

    // The first attempt fails and is recorded; tokenbox stops before the retry.
    eventually("a failed attempt recorded in the outbox", || async {
        let rows = outbox(&app).await;
        (rows.len() == 1 && !rows[0].starts_with("connection.created:0:")).then_some(())
    })
    .await;
    app.stop();
    let failed = hooks.attempts.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&failed),
        "{failed} failed attempts before the restart"
    );
    assert!(hooks.events.lock().unwrap().is_empty(), "not delivered yet");
    assert_eq!(
        outbox(&app).await,
        [format!("connection.created:{failed}:pending")],
        "the outbox records the failed attempts"
    );
    app.start_again();
    wait_until("the delivery", || !hooks.events.lock().unwrap().is_empty()).await;
    assert_eq!(
        hooks.attempts.load(Ordering::SeqCst),
        3,
        "two failures, then delivered"
    );
    let events = hooks.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "connection.created");

    // The operator sees the history.
    let (code, out, _) = cli(&app.config_path, &["webhooks", "list"], None, &[]);
    assert_eq!(code, 0);
    let line = out.lines().nth(1).unwrap();
    assert!(
        line.contains("connection.created") && line.contains(" 3 "),
        "{out}"
    );
    let (_, failed, _) = cli(
        &app.config_path,
        &["webhooks", "list", "--failed"],
        None,
        &[],
    );
    assert_eq!(
        failed.lines().count(),
        1,
        "nothing left undelivered: {failed}"
    );
}

/// A receiver that never answers; it records whether tokenbox gave up on the request (the
/// handler is dropped when the client closes the connection).
struct Stuck {
    attempts: AtomicUsize,
    abandoned: std::sync::atomic::AtomicBool,
}

struct DropFlag(Arc<Stuck>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
    }
}

async fn stuck_hook(State(s): State<Arc<Stuck>>) -> StatusCode {
    s.attempts.fetch_add(1, Ordering::SeqCst);
    let _flag = DropFlag(s.clone());
    std::future::pending::<()>().await;
    StatusCode::NO_CONTENT
}

/// Issue 11 (from reading): deliveries were serial, so one slow endpoint delayed every other
/// endpoint by its whole timeout. The endpoints are now served side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_the_others() {
    let provider = FakeProvider::start().await;
    let stuck = Arc::new(Stuck {
        attempts: AtomicUsize::new(0),
        abandoned: std::sync::atomic::AtomicBool::new(false),
    });
    let router = Router::new()
        .route("/hook", post(stuck_hook))
        .with_state(stuck.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (url, hooks) = receiver(0).await;
    let stuck_secret = unique("whsec");
    // The stuck endpoint comes first: its delivery is claimed first.
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "[[webhooks]]\nurl = \"{stuck_url}\"\nsecret = \"{stuck_secret}\"\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{}\"\n",
            hooks.secret
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&stuck_secret);
    app.remember_secret(&hooks.secret);

    app.import_expired("acme").await; // connection.created, for both endpoints
    wait_until("the fast endpoint's event", || {
        hooks.events.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(stuck.attempts.load(Ordering::SeqCst), 1);
    assert!(
        !stuck.abandoned.load(Ordering::SeqCst),
        "the fast endpoint got its event while the slow one's attempt was still running"
    );
    app.assert_logs_clean();
}
