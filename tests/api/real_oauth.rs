//! Single flight, replicas, `invalid_grant`, revocation and `client_auth = "body"` against a
//! real OAuth server we did not write (`oidc-provider`, `tests/e2e/oidc-server.mjs`).
//!
//! The server rotates the refresh token on every use and revokes the whole grant when a spent
//! one is presented again, so a double spend fails loudly: the grant's access tokens stop
//! working and every later refresh is refused. Its loopback-only shortcuts stand in for the
//! browser (the headless-browser path is `e2e.rs`): they complete the login and consent, mint a
//! grant whose refresh token the test knows, and count the token requests the server saw.

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::{
    json_of, location, now, spawn_app_with, unique, wait_until, AppOptions, Backend, OidcClient,
    OidcServer, TestApp,
};

/// A port for tokenbox, known before the server registers its redirect URI.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server with one-hour access tokens (only tokenbox's view of expiry is aged), and the
/// callback of a tokenbox on `port`.
fn oidc_for(port: u16) -> OidcServer {
    OidcServer::start(
        "tokenbox-real",
        &unique("oidc-basic-secret"),
        &format!("http://127.0.0.1:{port}/oauth/callback"),
        3600,
    )
}

async fn app_for(oidc: &OidcServer, port: u16, backend: Backend, extra: &str) -> TestApp {
    let app = spawn_app_with(AppOptions {
        backend,
        listen: format!("127.0.0.1:{port}"),
        extra_config: format!(
            "{extra}\n{}\n{}",
            oidc.connector_type("oidc", &oidc.basic, "basic"),
            oidc.connector_type("oidcpost", &oidc.post, "body"),
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&oidc.basic.secret);
    app.remember_secret(&oidc.post.secret);
    app
}

/// A fresh grant of `client`, imported into tokenbox as `app_id`/`connector_type` with an
/// access token tokenbox believes expired (`expired`) or good for its real lifetime. Returns
/// the token answer (the test knows its refresh token).
async fn import_grant(
    app: &TestApp,
    oidc: &OidcServer,
    client: &OidcClient,
    app_id: &str,
    connector_type: &str,
    expired: bool,
) -> Value {
    let grant = oidc.grant(client).await;
    let expires_at = if expired {
        now() - 10
    } else {
        now() + grant["expires_in"].as_i64().unwrap()
    };
    app.import_ok(
        app_id,
        connector_type,
        &json!({
            "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"],
            "expires_at": expires_at,
            "scope": grant["scope"],
        }),
    )
    .await;
    grant
}

/// `n` concurrent token requests: (status, body) of each.
async fn concurrent(app: &TestApp, n: usize, path: &str) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = app.get(path).as_superadmin();
        set.spawn(async move {
            let response = request.send().await;
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        });
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        out.push(result.unwrap());
    }
    out
}

/// Every answer is a 200 with one and the same access token, which is returned.
fn one_token(app: &TestApp, oidc: &OidcServer, answers: &[(u16, Value)]) -> String {
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n--- oidc-server ---\n{}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(3)],
        oidc.logs()
    );
    let mut tokens: Vec<&str> = answers
        .iter()
        .map(|(_, body)| body["access_token"].as_str().unwrap())
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    for token in &tokens {
        app.remember_secret(token);
    }
    assert_eq!(tokens.len(), 1, "every caller got the same access token");
    tokens[0].to_string()
}

/// A forced refresh through `app` answers 200 with a token the provider accepts, and no grant
/// was revoked; returns the token.
async fn refresh_ok(app: &TestApp, oidc: &OidcServer, path: &str) -> String {
    let response = app
        .get(&format!("{path}?force_refresh=true"))
        .as_superadmin()
        .send()
        .await;
    let status = response.status().as_u16();
    let body = json_of(response).await;
    assert_eq!(
        status,
        200,
        "a later refresh still succeeds: {body}\n{}",
        oidc.logs()
    );
    let token = body["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&token);
    assert_eq!(oidc.userinfo(&token).await, 200);
    assert_eq!(
        oidc.stats().await["grants_revoked"],
        0,
        "no refresh token was spent twice\n{}",
        oidc.logs()
    );
    token
}

/// The grant is intact: the served token is accepted, and tokenbox can still refresh (with
/// the refresh token it stored last); returns the refreshed token.
async fn grant_intact(app: &TestApp, oidc: &OidcServer, token: &str, path: &str) -> String {
    assert_eq!(
        oidc.stats().await["grants_revoked"],
        0,
        "the server revoked the grant: a refresh token was presented twice\n{}",
        oidc.logs()
    );
    assert_eq!(
        oidc.userinfo(token).await,
        200,
        "the served token is accepted by the provider\n{}",
        oidc.logs()
    );
    let refreshed = refresh_ok(app, oidc, path).await;
    assert_ne!(refreshed, token);
    refreshed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_one_refresh_at_the_real_server() {
    let port = free_port();
    let oidc = oidc_for(port);
    let app = app_for(&oidc, port, Backend::Sqlite, "").await;
    let path = "/acme/oidc/binb-token";

    // An expired token: fifty callers at once need one refresh, and get it.
    import_grant(&app, &oidc, &oidc.basic, "acme", "oidc", true).await;
    let before = oidc.refreshes().await;
    let answers = concurrent(&app, 50, path).await;
    let token = one_token(&app, &oidc, &answers);
    let refreshes = oidc.refreshes().await - before;
    let token = grant_intact(&app, &oidc, &token, path).await;
    assert_eq!(
        refreshes,
        1,
        "one refresh-token grant for fifty callers\n{}",
        oidc.logs()
    );

    // Fifty concurrent force_refresh calls: those that overlap share a refresh; none presents
    // a spent refresh token (the server would revoke the grant).
    let before = oidc.refreshes().await;
    let answers = concurrent(&app, 50, &format!("{path}?force_refresh=true")).await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}\n{}", oidc.logs());
    let mut served: Vec<&str> = answers
        .iter()
        .map(|(_, body)| body["access_token"].as_str().unwrap())
        .collect();
    served.sort_unstable();
    served.dedup();
    for t in &served {
        app.remember_secret(t);
    }
    let refreshes = oidc.refreshes().await - before;
    eprintln!(
        "50 concurrent force_refresh calls: {refreshes} refresh-token grants, {} distinct tokens",
        served.len()
    );
    assert!(
        !served.contains(&token.as_str()),
        "every forced caller got a new token"
    );
    assert!(
        (served.len() as u64) <= refreshes && refreshes < 50,
        "forced callers share refreshes ({refreshes} grants for 50 callers)"
    );
    let last = served[0].to_string();
    grant_intact(&app, &oidc, &last, path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_refresh_at_the_real_server() {
    let port = free_port();
    let oidc = oidc_for(port);
    // The replicas listen on their own ports (no signup here: the grant is imported).
    let first = app_for(&oidc, 0, Backend::Postgres, "").await;
    let second = first.replica();
    let path = "/acme/oidc/binb-token";
    import_grant(&first, &oidc, &oidc.basic, "acme", "oidc", true).await;

    let before = oidc.refreshes().await;
    let (a, b) = tokio::join!(concurrent(&first, 50, path), concurrent(&second, 50, path));
    let all: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(all.len(), 100);
    let token = one_token(&first, &oidc, &all);
    second.remember_secret(&token);
    let refreshes = oidc.refreshes().await - before;
    let refreshed = grant_intact(&second, &oidc, &token, path).await;
    assert_eq!(
        refreshes,
        1,
        "one refresh-token grant across both replicas\n{}",
        oidc.logs()
    );
    first.remember_secret(&refreshed);
    // The first replica, forced, serves the second one's refresh or refreshes with what the
    // second stored: either way the grant holds.
    let again = refresh_ok(&first, &oidc, path).await;
    second.remember_secret(&again);
}

/// A webhook receiver that records the event types it gets.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let router = Router::new().route(
        "/hook",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&body).unwrap());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_refresh_token_gets_invalid_grant_and_409_reauthorization_required() {
    let port = free_port();
    let oidc = oidc_for(port);
    let (hook, events) = webhook_receiver().await;
    let app = app_for(
        &oidc,
        port,
        Backend::Sqlite,
        &format!(
            "[[webhooks]]\nurl = \"{hook}\"\nsecret = \"{}\"\n",
            unique("whsec")
        ),
    )
    .await;
    let path = "/acme/oidc/binb-token";

    // tokenbox refreshes once: the imported refresh token is spent, its successor stored.
    let grant = import_grant(&app, &oidc, &oidc.basic, "acme", "oidc", true).await;
    let spent = grant["refresh_token"].as_str().unwrap();
    let response = app.get(path).as_superadmin().send().await;
    assert_eq!(response.status(), 200);
    let live = json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    app.remember_secret(&live);
    assert_eq!(oidc.userinfo(&live).await, 200);

    // The older refresh token comes back (a restored backup, a stale migration).
    app.import_ok(
        "acme",
        "oidc",
        &json!({"access_token": unique("stale-at"), "refresh_token": spent, "expires_at": now() - 10}),
    )
    .await;
    let before = oidc.refreshes().await;
    let response = app.get(path).as_superadmin().send().await;
    assert_eq!(response.status(), 409, "{}", oidc.logs());
    let body = json_of(response).await;
    assert_eq!(body["error"], "reauthorization_required", "{body}");
    assert_eq!(oidc.refreshes().await - before, 1);

    // The server saw the reuse and revoked the whole grant: the live token is dead too.
    assert_eq!(oidc.stats().await["grants_revoked"], 1, "{}", oidc.logs());
    assert!(
        oidc.logs().contains("refresh token already used"),
        "{}",
        oidc.logs()
    );
    assert_eq!(oidc.userinfo(&live).await, 401);

    // The connection says so, and the webhook tells the backend; no further provider call.
    let view = json_of(app.get("/acme/oidc/connection").as_admin().send().await).await;
    assert_eq!(view["status"], "reauthorization_required", "{view}");
    assert_eq!(app.get(path).as_superadmin().send().await.status(), 409);
    assert_eq!(
        oidc.refreshes().await - before,
        1,
        "no provider call after the refusal"
    );
    wait_until("the connection.reauthorization_required webhook", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "connection.reauthorization_required")
    })
    .await;
    let events = events.lock().unwrap().clone();
    let event = events
        .iter()
        .find(|e| e["type"] == "connection.reauthorization_required")
        .unwrap();
    assert_eq!(event["data"]["app_id"], "acme");
    assert_eq!(event["data"]["connector_type"], "oidc");
    assert!(!event.to_string().contains(spent), "no token in a webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_revokes_the_grant_at_the_real_server_with_client_auth() {
    let port = free_port();
    let oidc = oidc_for(port);
    let app = app_for(&oidc, port, Backend::Sqlite, "").await;
    let grant = import_grant(&app, &oidc, &oidc.basic, "acme", "oidc", false).await;
    // A second grant of the same client, left alone: the control that a direct refresh works.
    let control = oidc.grant(&oidc.basic).await;
    let before = oidc.stats().await;

    let response = app.delete("/acme/oidc/connection").as_admin().send().await;
    assert_eq!(response.status(), 200);
    let deleted = json_of(response).await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(
        deleted["revoked_at_provider"],
        true,
        "{deleted}\n{}",
        oidc.logs()
    );
    let after = oidc.stats().await;
    assert_eq!(
        after["revocations"].as_u64(),
        before["revocations"].as_u64().map(|n| n + 1)
    );
    assert_eq!(after["grants_revoked"], 1, "{}", oidc.logs());
    assert_eq!(after["auth_method_refused"], 0, "{}", oidc.logs());

    // The test presents the refresh token itself: refused; the control grant still refreshes.
    let (status, body) = oidc
        .refresh_directly(&oidc.basic, grant["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(
        oidc.userinfo(grant["access_token"].as_str().unwrap()).await,
        401
    );
    let (status, body) = oidc
        .refresh_directly(&oidc.basic, control["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "the control grant is untouched: {body}");
}

/// The signup through Connect, the provider (approved by the shortcut) and the callback:
/// the callback's status and page.
async fn signup(
    app: &TestApp,
    oidc: &OidcServer,
    app_id: &str,
    connector_type: &str,
) -> (u16, String) {
    let response = app.create_link(app_id, connector_type, &json!({})).await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    let to_provider = app.click_connect(&link).await;
    assert_eq!(to_provider.status(), 303);
    let callback = oidc.approve(&location(&to_provider)).await;
    assert!(
        callback.starts_with(&format!("{}/oauth/callback?", app.address)),
        "the provider redirects to tokenbox: {callback}"
    );
    if let Some(state) = crate::helpers::query_param(&callback, "state") {
        app.remember_secret(&state);
    }
    if let Some(code) = crate::helpers::query_param(&callback, "code") {
        app.remember_secret(&code);
    }
    let done = app.callback(&callback).await;
    let status = done.status().as_u16();
    (status, done.text().await.unwrap())
}

fn set_client_auth(app: &TestApp, from: &str, to: &str) {
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    let marker = "[connector_types.oidcpost]";
    let (head, table) = config.split_once(marker).unwrap();
    let table = table.replacen(
        &format!("client_auth = \"{from}\""),
        &format!("client_auth = \"{to}\""),
        1,
    );
    std::fs::write(&app.config_path, format!("{head}{marker}{table}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_body_signs_up_refreshes_and_revokes_and_basic_is_refused() {
    let port = free_port();
    let oidc = oidc_for(port);
    let mut app = app_for(&oidc, port, Backend::Sqlite, "").await;
    let path = "/acme/oidcpost/binb-token";

    // client_auth = "body": the code exchange and the refresh send the secret in the form.
    let (status, page) = signup(&app, &oidc, "acme", "oidcpost").await;
    assert_eq!(status, 200, "{page}\n{}", oidc.logs());
    assert!(page.contains("data-status=\"connected\""), "{page}");
    let first = json_of(app.get_token("acme", "oidcpost", "").await).await;
    let first = first["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&first);
    assert_eq!(oidc.userinfo(&first).await, 200);
    let second = grant_intact(&app, &oidc, &first, path).await;
    assert_eq!(
        oidc.stats().await["auth_method_refused"],
        0,
        "{}",
        oidc.logs()
    );

    // Negative control: the same client with client_auth = "basic" is refused by the server.
    // (tokenbox's copy of the token is aged, or it would serve it while the refresh fails.)
    set_client_auth(&app, "body", "basic");
    app.execute_sql(&format!(
        "UPDATE connections SET expires_at = {} WHERE connector_type = 'oidcpost'",
        now() - 10
    ))
    .await;
    app.restart();
    let response = app.get_token("acme", "oidcpost", "").await;
    let status = response.status().as_u16();
    let body = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "provider_error", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("invalid_client"),
        "{body}"
    );
    assert_eq!(
        oidc.stats().await["auth_method_refused"],
        1,
        "{}",
        oidc.logs()
    );
    let (status, page) = signup(&app, &oidc, "other", "oidcpost").await;
    assert_eq!(status, 502, "the code exchange is refused too: {page}");
    assert_eq!(
        oidc.stats().await["auth_method_refused"],
        2,
        "{}",
        oidc.logs()
    );
    assert_eq!(app.get_token("other", "oidcpost", "").await.status(), 404);

    // Back to "body": the stored refresh token was never spent by the refused attempt.
    // (The failure's back-off is cleared, or tokenbox would wait before calling again.)
    set_client_auth(&app, "basic", "body");
    app.execute_sql("UPDATE connections SET backoff_until = NULL")
        .await;
    app.restart();
    let third = grant_intact(&app, &oidc, &second, path).await;

    // DELETE revokes with the secret in the body; the grant's tokens die with it.
    let revocations = oidc.stats().await["revocations"].as_u64().unwrap();
    let response = app
        .delete("/acme/oidcpost/connection")
        .as_admin()
        .send()
        .await;
    let deleted = json_of(response).await;
    assert_eq!(
        deleted["revoked_at_provider"],
        true,
        "{deleted}\n{}",
        oidc.logs()
    );
    let stats = oidc.stats().await;
    assert_eq!(stats["revocations"].as_u64(), Some(revocations + 1));
    assert_eq!(stats["grants_revoked"], 1, "{}", oidc.logs());
    assert_eq!(stats["auth_method_refused"], 2, "{}", oidc.logs());
    assert_eq!(oidc.userinfo(&third).await, 401);
}
