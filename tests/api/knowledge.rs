//! Knowing each connection (issue 16): its granted scopes, when its refresh token dies, and the
//! early warning before it does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, json_of, now, spawn_app_with, unique, wait_until, AppOptions, Backend,
    FakeProvider, Mode, TestApp, CLIENT_ID,
};

const DAY: i64 = 86_400;

/// Webhook events received, by type (signatures are checked in `webhooks.rs`).
type Events = Arc<Mutex<Vec<(String, Value)>>>;

async fn hook(State(events): State<Events>, headers: HeaderMap, body: String) -> StatusCode {
    let kind = headers["tokenbox-event"].to_str().unwrap().to_string();
    events
        .lock()
        .unwrap()
        .push((kind, serde_json::from_str(&body).unwrap()));
    StatusCode::NO_CONTENT
}

async fn receiver() -> (String, Events) {
    let events = Events::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(events.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, events)
}

fn of_type(events: &Events, kind: &str) -> Vec<Value> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, b)| b.clone())
        .collect()
}

async fn app_with(backend: Backend, provider: &FakeProvider, extra: &str) -> TestApp {
    spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        refresher: true,
        extra_config: format!("refresher_interval_seconds = 1\n{extra}"),
        ..AppOptions::default()
    })
    .await
}

/// Must-show 4, black box: a refresh token of 10 days and a warning window of 11 days: the
/// `connection.reauthorization_due` event fires at import, once (passes of the background
/// refresher do not repeat it), the gauge shows 1 and the listing filter finds it.
pub async fn a_refresh_token_dying_within_the_window_is_warned_about_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (url, events) = receiver().await;
    let secret = unique("whsec");
    let app = app_with(
        backend,
        &provider,
        &format!(
            "reauthorization_warning_days = 11\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
        ),
    )
    .await;
    let before = now();
    app.import_ok(
        "acme",
        "acme",
        &json!({
            "access_token": unique("at"), "refresh_token": unique("rt"),
            "expires_in": 3600, "refresh_token_expires_in": 10 * DAY,
        }),
    )
    .await;
    let connection = json_of(app.get("/acme/acme/connection").as_admin().send().await).await;
    let deadline = connection["refresh_expires_at"]
        .as_i64()
        .expect("refresh_expires_at");
    assert!(
        (before + 10 * DAY..=now() + 10 * DAY).contains(&deadline),
        "{connection}"
    );

    wait_until("the reauthorization_due event", || {
        !of_type(&events, "connection.reauthorization_due").is_empty()
    })
    .await;
    // Three more passes of the background refresher: still one event.
    let passes = app.refresher_passes();
    wait_until("three more refresher passes", || {
        app.refresher_passes() >= passes + 3
    })
    .await;
    let due = of_type(&events, "connection.reauthorization_due");
    assert_eq!(due.len(), 1, "exactly one warning: {due:?}");
    assert_eq!(due[0]["data"]["app_id"], "acme");
    assert_eq!(due[0]["data"]["connector_type"], "acme");

    let metrics = app.get("/metrics").send().await.text().await.unwrap();
    assert!(
        metrics.contains("tokenbox_connections_reauthorization_due{connector_type=\"acme\"} 1"),
        "{metrics}"
    );
    let listed = |within: i64| {
        let app = &app;
        async move {
            let page = json_of(
                app.get(&format!("/connections?reauthorization_due_within={within}"))
                    .as_admin()
                    .send()
                    .await,
            )
            .await;
            page["connections"].as_array().unwrap().len()
        }
    };
    assert_eq!(listed(11 * DAY).await, 1);
    assert_eq!(listed(DAY).await, 0);
    app.assert_logs_clean();
}

/// A connection whose token lives for years is not warned about.
pub async fn a_distant_refresh_deadline_is_not_warned_about(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (url, events) = receiver().await;
    let app = app_with(
        backend,
        &provider,
        &format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"s\"\n"),
    )
    .await;
    app.import_ok(
        "acme",
        "acme",
        &json!({"access_token": unique("at"), "refresh_token": unique("rt"),
                "refresh_token_expires_in": 10 * DAY}),
    )
    .await;
    wait_until("the created event", || {
        !of_type(&events, "connection.created").is_empty()
    })
    .await;
    let passes = app.refresher_passes();
    wait_until("two more refresher passes", || {
        app.refresher_passes() >= passes + 2
    })
    .await;
    assert!(of_type(&events, "connection.reauthorization_due").is_empty());
}

/// Must-show 2: granted fewer scopes than a job needs: 409 `insufficient_scope` naming the
/// missing one; the listing's `missing_scope` filter finds the connection (and a LIKE
/// wildcard in the filter is a literal).
pub async fn a_connection_without_a_required_scope_is_refused_and_listed(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app_with(backend, &provider, "").await;
    // As the provider returned it: fewer scopes than the connector type asks (read, write).
    app.import_ok(
        "narrow",
        "acme",
        &json!({"access_token": unique("at"), "scope": "read,repo"}),
    )
    .await;
    app.import_ok(
        "wide",
        "acme",
        &json!({"access_token": unique("at"), "scope": "read write repo"}),
    )
    .await;

    let ok = app
        .get_token("wide", "acme", "required_scopes=read,write")
        .await;
    assert_eq!(ok.status(), 200);
    let refused = app
        .get_token("narrow", "acme", "required_scopes=read,write")
        .await;
    assert_eq!(refused.status(), 409);
    let body = json_of(refused).await;
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert_eq!(body["missing_scopes"], json!(["write"]), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("write"),
        "{body}"
    );
    assert!(body.get("access_token").is_none());

    // A refresh where the provider grants fewer scopes than the connection had (the fake
    // answers `"scope": "read"`): the answer's scope is stored, and the job is refused.
    app.import_ok(
        "shrunk",
        "acme",
        &json!({"access_token": unique("at"), "refresh_token": provider.new_refresh_token(),
                "expires_at": now() - 10, "scope": "read write"}),
    )
    .await;
    let refused = app
        .get_token("shrunk", "acme", "required_scopes=write")
        .await;
    assert_eq!(refused.status(), 409);
    assert_eq!(json_of(refused).await["missing_scopes"], json!(["write"]));
    assert_eq!(provider.calls(), 1, "refreshed once");

    let lacking = |scope: &'static str| {
        let app = &app;
        async move {
            let page = json_of(
                app.get(&format!("/connections?missing_scope={scope}"))
                    .as_admin()
                    .send()
                    .await,
            )
            .await;
            page["connections"]
                .as_array()
                .unwrap_or_else(|| panic!("{page}"))
                .iter()
                .map(|c| c["app_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(lacking("write").await, ["narrow", "shrunk"]);
    assert_eq!(lacking("repo").await, ["shrunk"]);
    // `_` is a literal, not "any character": `r_po` is missing from all.
    assert_eq!(lacking("r_po").await, ["narrow", "shrunk", "wide"]);
}

/// A provider's identity endpoint: 200 until the grant is revoked, then 401.
#[derive(Default)]
struct Userinfo {
    revoked: AtomicBool,
    calls: AtomicUsize,
}

async fn userinfo(State(u): State<Arc<Userinfo>>, headers: HeaderMap) -> (StatusCode, String) {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if !bearer || u.revoked.load(Ordering::SeqCst) {
        return (StatusCode::UNAUTHORIZED, "{}".into());
    }
    (StatusCode::OK, json!({"sub": "user-1"}).to_string())
}

/// Must-show 5: with health checks on, a grant revoked at the provider (the identity request
/// answers 401, the forced refresh `invalid_grant`) is marked `reauthorization_required` with
/// its webhook, while no job asked for the token.
pub async fn a_revoked_grant_is_found_by_the_health_check_before_any_job_asks(backend: Backend) {
    let provider = FakeProvider::start().await;
    let state = Arc::new(Userinfo::default());
    let router = Router::new()
        .route("/userinfo", get(userinfo))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let userinfo_url = format!("http://{}/userinfo", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (url, events) = receiver().await;
    let app = app_with(
        backend,
        &provider,
        &format!(
            "health_check_interval_seconds = 1
[[webhooks]]
url = \"{url}\"
secret = \"s\"
\
             [connector_types.watched]
authorization_url = \"{p}/authorize\"
\
             token_url = \"{p}/token\"
client_id = \"{CLIENT_ID}\"
\
             client_secret = \"{secret}\"
client_auth = \"basic\"
\
             userinfo_url = \"{userinfo_url}\"
",
            p = provider.url,
            secret = provider.state.client_secret,
        ),
    )
    .await;
    app.import_ok(
        "acme",
        "watched",
        &json!({"access_token": unique("at"), "refresh_token": unique("rt"), "expires_in": 3600}),
    )
    .await;
    wait_until("a passing health check", || {
        state.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let connection = json_of(app.get("/acme/watched/connection").as_admin().send().await).await;
    assert_eq!(connection["status"], "active", "{connection}");
    let refreshes = provider.calls();

    state.revoked.store(true, Ordering::SeqCst);
    provider.set_mode(Mode::Revoked);
    wait_until("the reauthorization_required event", || {
        !of_type(&events, "connection.reauthorization_required").is_empty()
    })
    .await;
    let connection = json_of(app.get("/acme/watched/connection").as_admin().send().await).await;
    assert_eq!(
        connection["status"], "reauthorization_required",
        "{connection}"
    );
    assert!(
        provider.calls() > refreshes,
        "a forced refresh was tried before marking it"
    );
    let event = &of_type(&events, "connection.reauthorization_required")[0];
    assert_eq!(event["data"]["connector_type"], "watched");
    // No job asked: no token was ever served (the audit trail has no token.read). The audit
    // writer batches its rows: wait until the import's row is there.
    let actions: Vec<String> = eventually("the import in the audit trail", || {
        let request = app.get("/audit?app_id=acme").as_superadmin();
        async move {
            let audit = json_of(request.send().await).await;
            let actions: Vec<String> = audit
                .as_array()?
                .iter()
                .filter_map(|e| e["action"].as_str().map(str::to_string))
                .collect();
            actions
                .iter()
                .any(|a| a == "connection.import")
                .then_some(actions)
        }
    })
    .await;
    assert!(!actions.iter().any(|a| a == "token.read"), "{actions:?}");
}
