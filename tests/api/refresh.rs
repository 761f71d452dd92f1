use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    json_of, now, spawn_app_on, spawn_app_with, unique, wait_until, AppOptions, Backend,
    FakeProvider, Mode, TestApp,
};

/// `n` concurrent token requests for acme/acme, each answered 200: the tokens they got. The
/// provider holds its answer until all `n` callers have joined the refresh flight (each logs it
/// before queueing), so none of them can have arrived after the refresh.
async fn concurrent_tokens(app: &TestApp, n: usize) -> Vec<String> {
    let provider = app.provider.as_ref().expect("a provider");
    let joined_before = app.log_lines_containing("joining the refresh flight");
    provider.hold();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = app.get("/acme/acme/binb-token").as_superadmin();
        requests.spawn(async move { request.send().await });
    }
    wait_until("every caller joined the refresh flight", || {
        app.log_lines_containing("joining the refresh flight") >= joined_before + n
    })
    .await;
    wait_until("the refresh reached the provider", || {
        provider.pending() >= 1
    })
    .await;
    provider.release();
    let mut tokens = Vec::new();
    while let Some(response) = requests.join_next().await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let body = json_of(response).await;
        tokens.push(body["access_token"].as_str().unwrap().to_string());
    }
    tokens
}

pub async fn an_expired_token_is_refreshed_once_for_fifty_concurrent_requests(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let old = app.import_expired("acme").await;

    let tokens = concurrent_tokens(&app, 50).await;
    assert_eq!(tokens.len(), 50);
    assert_eq!(provider.calls(), 1, "exactly one provider call");
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "all callers get the same token"
    );
    assert_ne!(tokens[0], old);
    assert_eq!(provider.issued_access_tokens(), vec![tokens[0].clone()]);

    let body = json_of(app.get_token("acme", "acme", "").await).await;
    assert_eq!(body["access_token"], tokens[0].as_str());
    assert_eq!(provider.calls(), 1, "a request afterwards makes no call");
}

pub async fn a_refresh_of_one_connection_does_not_delay_the_others(backend: Backend) {
    let provider = FakeProvider::start().await;
    // The provider holds every refresh until the test releases it; tokenbox waits for it
    // longer than the test's deadline for the other request.
    provider.hold();
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: "provider_timeout_seconds = 120\nrequest_timeout_seconds = 120\n\
                       refresh_lease_seconds = 300\n"
            .into(),
        ..AppOptions::default()
    })
    .await;
    app.import_expired("slow").await;
    let fresh = unique("fresh-at");
    app.import_ok(
        "other",
        "acme",
        &json!({"access_token": fresh, "expires_in": 3600}),
    )
    .await;

    let slow = tokio::spawn(app.get("/slow/acme/binb-token").as_superadmin().send());
    // The slow refresh has reached the provider, which holds it.
    wait_until("the slow refresh to reach the provider", || {
        provider.calls() == 1
    })
    .await;
    // Another connection is served while that refresh is held; the deadline only turns a
    // wait for the held refresh into a clear failure instead of a hang.
    let fast = tokio::time::timeout(Duration::from_secs(20), app.get_token("other", "acme", ""))
        .await
        .unwrap_or_else(|_| {
            panic!("the request for another connection waited for the held refresh of `slow`")
        });
    assert_eq!(fast.status(), 200);
    assert_eq!(json_of(fast).await["access_token"], fresh.as_str());
    assert_eq!(provider.answered(), 0, "the slow refresh was still held");
    assert!(!slow.is_finished(), "the slow request was still waiting");

    provider.release();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(provider.calls(), 1);
}

pub async fn after_rotation_the_old_refresh_token_is_never_presented_again(backend: Backend) {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;

    let first = json_of(app.get_token("acme", "acme", "").await).await;
    assert!(first["access_token"].is_string());
    // Forced refreshes must each present the newest refresh token; the provider rejects reuse.
    let mut seen = vec![first["access_token"].as_str().unwrap().to_string()];
    for _ in 0..3 {
        let response = app.get_token("acme", "acme", "force_refresh=true").await;
        assert_eq!(response.status(), 200);
        seen.push(
            json_of(response).await["access_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // And after a restart, the rotated refresh token was persisted.
    app.restart();
    let response = app.get_token("acme", "acme", "force_refresh=true").await;
    assert_eq!(response.status(), 200);
    seen.push(
        json_of(response).await["access_token"]
            .as_str()
            .unwrap()
            .to_string(),
    );

    assert_eq!(provider.calls(), 5);
    assert_eq!(
        provider.reuses(),
        0,
        "a spent refresh token was presented again"
    );
    seen.dedup();
    assert_eq!(seen.len(), 5, "every refresh produced a new token");
}

pub async fn a_provider_that_returns_no_new_refresh_token_keeps_the_old_one(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::NonRotating);
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    assert_eq!(app.get_token("acme", "acme", "").await.status(), 200);
    // Had the empty answer erased the stored refresh token, these could not call the provider.
    for _ in 0..2 {
        let response = app.get_token("acme", "acme", "force_refresh=true").await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(provider.calls(), 3);
}

pub async fn min_validity_longer_than_the_remaining_lifetime_triggers_a_refresh(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let access = unique("half-life-at");
    app.import_ok(
        "acme",
        "acme",
        &json!({"access_token": access, "refresh_token": provider.new_refresh_token(), "expires_at": now() + 1800}),
    )
    .await;
    let body = json_of(app.get_token("acme", "acme", "min_validity=600").await).await;
    assert_eq!(
        body["access_token"],
        access.as_str(),
        "30 min left is enough for 10 min"
    );
    assert_eq!(provider.calls(), 0);

    let body = json_of(app.get_token("acme", "acme", "min_validity=3000").await).await;
    assert_ne!(body["access_token"], access.as_str());
    assert!(body["expires_in"].as_i64().unwrap() >= 3000);
    assert_eq!(provider.calls(), 1);

    // Asking for more than the provider's lifetime (3600 s) is refused instead of refreshing
    // on every call.
    let response = app.get_token("acme", "acme", "min_validity=7200").await;
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(response).await["error"], "invalid_request");
    assert_eq!(provider.calls(), 1);
}

pub async fn the_background_refresher_refreshes_ahead_and_skips_what_it_must(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        backend,
        refresher: true,
        provider: Some(provider.clone()),
        extra_config: "refresher_interval_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    let fresh = unique("fresh-at");
    // Expiring within the 10-minute window: refreshed ahead.
    app.import_ok(
        "expiring",
        "acme",
        &json!({"access_token": unique("exp-at"), "refresh_token": provider.new_refresh_token(), "expires_at": now() + 400}),
    )
    .await;
    // Valid for an hour: left alone.
    app.import_ok(
        "fresh",
        "acme",
        &json!({"access_token": fresh, "refresh_token": provider.new_refresh_token(), "expires_at": now() + 3600}),
    )
    .await;
    // Without a refresh token: nothing to do.
    app.import_ok(
        "no-refresh",
        "acme",
        &json!({"access_token": unique("nr"), "expires_at": now() + 100}),
    )
    .await;
    // Idle for two days with a refresh token: keep-alive refresh.
    app.import_ok(
        "idle",
        "acme",
        &json!({"access_token": unique("idle-at"), "refresh_token": provider.new_refresh_token(), "expires_at": now() + 7200}),
    )
    .await;
    app.execute_sql(&format!(
        "UPDATE connections SET created_at = {} WHERE app_id = 'idle'",
        now() - 2 * 86_400
    ))
    .await;

    wait_until("two background refreshes", || provider.calls() >= 2).await;
    two_more_passes(&app).await;
    assert_eq!(
        provider.calls(),
        2,
        "the expiring and the idle connections only"
    );
    let body = json_of(app.get_token("expiring", "acme", "min_validity=1800").await).await;
    assert!(
        body["expires_in"].as_i64().unwrap() > 3000,
        "refreshed before the job asked"
    );
    let body = json_of(app.get_token("fresh", "acme", "").await).await;
    assert_eq!(body["access_token"], fresh.as_str());
    assert_eq!(provider.calls(), 2);

    // A revoked grant is not retried by the refresher.
    provider.set_mode(Mode::Revoked);
    app.import_ok(
        "revoked",
        "acme",
        &json!({"access_token": unique("rv"), "refresh_token": provider.new_refresh_token(), "expires_at": now() + 100}),
    )
    .await;
    wait_until("the revoked connection's refresh", || provider.calls() >= 3).await;
    two_more_passes(&app).await;
    assert_eq!(
        provider.calls(),
        3,
        "reauthorization_required connections are skipped"
    );
    assert_eq!(app.get_token("revoked", "acme", "").await.status(), 409);

    // A failing provider is backed off, not hammered every pass.
    provider.set_mode(Mode::Down);
    app.import_ok(
        "down",
        "acme",
        &json!({"access_token": unique("dn"), "refresh_token": provider.new_refresh_token(), "expires_at": now() + 100}),
    )
    .await;
    wait_until("the failing connection's refresh", || provider.calls() > 3).await;
    two_more_passes(&app).await;
    two_more_passes(&app).await;
    let calls = provider.calls() - 3;
    assert!(
        (1..=3).contains(&calls),
        "one pass with its bounded retries, then back-off: {calls}"
    );
}

/// Waits until the background refresher has finished two more passes (the one running now
/// may have claimed its work before the last change).
async fn two_more_passes(app: &TestApp) {
    let passes = app.refresher_passes();
    wait_until("two more refresher passes", || {
        app.refresher_passes() >= passes + 2
    })
    .await;
}

pub async fn the_read_path_writes_nothing_while_the_token_is_good(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    assert_eq!(app.get_token("acme", "acme", "").await.status(), 200);
    const STATE: &str =
        "SELECT CAST(version AS TEXT) || ':' || CAST(updated_at AS TEXT) FROM connections";
    let before = app.query_strings(STATE).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let request = app.get("/acme/acme/binb-token").as_superadmin();
        set.spawn(async move { request.send().await.status() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let after = app.query_strings(STATE).await;
    assert_eq!(before, after, "the row was not written by reads");
    assert_eq!(provider.calls(), 1);
}

/// Issue 11, item 5: with one-minute tokens (shorter than the five-minute refresh margin), the
/// waiters of a flight take what it produced, and later calls do not refresh again.
pub async fn one_minute_tokens_are_refreshed_once_for_concurrent_and_sequential_callers(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    provider.set_expires_in(Some(60));
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;

    let mut tokens = concurrent_tokens(&app, 20).await;
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "twenty callers, one token");
    assert_eq!(provider.calls(), 1, "twenty callers, one provider call");

    for _ in 0..5 {
        let body = json_of(app.get_token("acme", "acme", "").await).await;
        assert_eq!(body["access_token"], tokens[0].as_str());
        assert!(body["expires_in"].as_i64().unwrap() > 0);
    }
    assert_eq!(
        provider.calls(),
        1,
        "sequential calls reuse the fresh token"
    );
}

/// Issue 11, item 5: a token whose whole lifetime (30 s) is shorter than the refresh margin is
/// not refreshed on every request.
pub async fn a_token_shorter_than_the_refresh_margin_is_not_refreshed_on_every_request(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    provider.set_expires_in(Some(30));
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    for _ in 0..5 {
        assert_eq!(app.get_token("acme", "acme", "").await.status(), 200);
    }
    assert_eq!(provider.calls(), 1, "five requests, one refresh");
}

/// Issue 11, item 5: an access token the provider issues already expired (a negative
/// `expires_in`) is never served; the refresh token it rotated is kept all the same.
pub async fn an_access_token_issued_already_expired_is_never_served(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_expires_in(Some(-30));
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 502, "an expired token is not a token");
    let body = json_of(response).await;
    assert_eq!(body["error"], "provider_error");
    assert!(body.get("access_token").is_none());

    provider.set_expires_in(Some(3600));
    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.calls(), 2);
    assert_eq!(provider.reuses(), 0, "the rotated refresh token was stored");
}

/// Refreshes of different connections that finish together share a transaction (the store's
/// group commit, `RefreshCommitter`): each connection keeps exactly its own new tokens, and
/// they are on disk, served after a restart without another provider call.
pub async fn refreshes_finishing_together_each_keep_their_own_tokens_across_a_restart(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app_on(backend, Some(&provider)).await;
    // At most `max_concurrent_refreshes_per_host` (16) reach one provider at once.
    let apps: Vec<String> = (0..12).map(|i| format!("together-{i:02}")).collect();
    for a in &apps {
        app.import_expired(a).await;
    }
    // Every refresh reaches the provider before any is answered, so that their writes arrive
    // at the store together.
    provider.hold();
    let mut requests = tokio::task::JoinSet::new();
    for a in &apps {
        let request = app.get(&format!("/{a}/acme/binb-token")).as_superadmin();
        let a = a.clone();
        requests.spawn(async move { (a, request.send().await) });
    }
    wait_until("every refresh reached the provider", || {
        provider.pending() >= apps.len()
    })
    .await;
    provider.release();
    let mut served = std::collections::BTreeMap::new();
    while let Some(joined) = requests.join_next().await {
        let (a, response) = joined.unwrap();
        assert_eq!(response.status(), 200, "{a}");
        let body = json_of(response).await;
        served.insert(a, body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        provider.calls(),
        apps.len(),
        "one provider call per connection"
    );
    let issued = provider.issued_access_tokens();
    let distinct: std::collections::BTreeSet<&String> = served.values().collect();
    assert_eq!(distinct.len(), apps.len(), "each connection its own token");
    assert!(served.values().all(|t| issued.contains(t)));

    app.restart();
    for (a, token) in &served {
        let body = json_of(app.get_token(a, "acme", "").await).await;
        assert_eq!(body["access_token"], token.as_str(), "{a} after a restart");
    }
    assert_eq!(provider.calls(), apps.len(), "nothing refreshed again");
}
