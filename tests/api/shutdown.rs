//! Issue 11, item 1: a deploy (SIGTERM) never costs a tenant its grant. A refresh that reached a
//! rotating provider finishes and stores the new refresh token before the process exits.

use std::time::Duration;

use crate::helpers::{
    json_of, spawn_app_on, spawn_app_with, wait_until, AppOptions, Backend, FakeProvider, TestApp,
};

/// Sends SIGTERM while the provider holds its answer, releases the answer once the server has
/// begun shutting down, and returns the exit code.
async fn terminate_then_release(app: &mut TestApp, provider: &FakeProvider) -> Option<i32> {
    app.sigterm();
    wait_until("the server to begin shutting down", || {
        app.log_lines_containing("shutting down") > 0
    })
    .await;
    assert_eq!(provider.answered(), 0, "the provider still held its answer");
    provider.release();
    tokio::task::block_in_place(|| app.wait_exit(Duration::from_secs(60)))
}

pub async fn sigterm_during_a_refresh_stores_the_rotated_token_before_exit(backend: Backend) {
    let provider = FakeProvider::start().await;
    // The provider rotates at once and holds its answer until the test releases it, after
    // SIGTERM; the job gives up after one second (request_timeout), so no request is in
    // progress when SIGTERM comes: only the refresh.
    provider.hold();
    let mut app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: "request_timeout_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_expired("acme").await;

    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 503, "the refresh outlived the request");
    assert_eq!(provider.calls(), 1, "and it reached the provider");
    // The provider has spent the stored refresh token; the new one is on its way.
    let code = terminate_then_release(&mut app, &provider).await;
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");

    // After the restart the refreshed token is served without a provider call, and a new
    // refresh presents the rotated refresh token: the provider sees no reuse.
    app.start_again();
    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(
        provider.issued_access_tokens(),
        vec![body["access_token"].as_str().unwrap().to_string()],
        "the token issued before the shutdown was stored"
    );
    assert_eq!(provider.calls(), 1);
    let response = app.get_token("acme", "acme", "force_refresh=true").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.calls(), 2);
    assert_eq!(
        provider.reuses(),
        0,
        "the spent refresh token was never presented again"
    );
}

/// A request still waiting on its refresh at SIGTERM is answered before the process exits.
pub async fn sigterm_answers_the_request_waiting_on_a_refresh(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.hold();
    let mut app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;

    let request = app.get("/acme/acme/binb-token").as_superadmin().try_send();
    let in_flight = tokio::spawn(request);
    wait_until("the refresh to reach the provider", || {
        provider.calls() == 1
    })
    .await;
    let code = terminate_then_release(&mut app, &provider).await;
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");
    let answered = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(answered.status(), 200);
    app.start_again();
    let response = app.get_token("acme", "acme", "force_refresh=true").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.reuses(), 0);
}

/// The background refresher's refresh in flight is not aborted either.
pub async fn sigterm_during_a_background_refresh_stores_the_rotated_token(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.hold();
    let mut app = spawn_app_with(AppOptions {
        backend,
        refresher: true,
        provider: Some(provider.clone()),
        extra_config: "refresher_interval_seconds = 1\n".into(),
        ..Default::default()
    })
    .await;
    app.import_expired("acme").await;
    wait_until("the background refresh to reach the provider", || {
        provider.calls() == 1
    })
    .await;
    let code = terminate_then_release(&mut app, &provider).await;
    assert_eq!(code, Some(0));

    app.start_again();
    let response = app.get_token("acme", "acme", "force_refresh=true").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.reuses(), 0, "the rotated refresh token was stored");
}
