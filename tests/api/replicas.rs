//! Several replicas on one PostgreSQL: refreshes are coordinated through the database alone.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    json_of, now, spawn_app_on, spawn_app_with, unique, wait_until, AppOptions, Backend,
    FakeProvider, TestApp,
};

async fn hammer(app: &TestApp, n: usize, app_id: &str) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = app
            .get(&format!("/{app_id}/acme/binb-token"))
            .as_superadmin();
        set.spawn(async move {
            let response = request.send().await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_and_a_hundred_callers_cause_one_provider_call() {
    let provider = FakeProvider::start().await;
    provider.set_delay(Duration::from_millis(500));
    let first = spawn_app_on(Backend::Postgres, Some(&provider)).await;
    let second = first.replica();
    first.import_expired("acme").await;

    let (a, b) = tokio::join!(hammer(&first, 50, "acme"), hammer(&second, 50, "acme"));
    let all: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(all.len(), 100);
    let errors: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(
        provider.calls(),
        1,
        "exactly one provider call across replicas"
    );
    assert_eq!(provider.reuses(), 0);
    let issued = provider.issued_access_tokens();
    assert_eq!(issued.len(), 1);
    assert!(
        all.iter()
            .all(|(_, body)| body["access_token"] == issued[0].as_str()),
        "every caller holds the token the provider issued (and accepts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_during_a_refresh_loses_nothing() {
    let provider = FakeProvider::start().await;
    // The provider holds its answers until the test releases them.
    provider.hold();
    // The dead replica's lease ends after four seconds; the survivor waits for it.
    let mut first = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        provider: Some(provider.clone()),
        extra_config: "refresh_lease_seconds = 4\n".into(),
        ..AppOptions::default()
    })
    .await;
    let second = first.replica();
    first.import_expired("acme").await;

    // The first replica starts a refresh and dies while the provider is still answering.
    let request = first
        .get("/acme/acme/binb-token")
        .as_superadmin()
        .try_send();
    let in_flight = tokio::spawn(request);
    wait_until("the refresh to reach the provider", || {
        provider.calls() == 1
    })
    .await;
    first.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed replica never answered"
    );
    // Let the provider finish the request the dead replica sent (it rotated the token).
    provider.release();
    wait_until("the provider to end the dead replica's request", || {
        provider.pending() == 0
    })
    .await;

    // The dead replica's lease expires: the survivor takes it over (and notes the interruption).
    provider.set_delay(Duration::ZERO);
    let response = second.get_token("acme", "acme", "").await;
    // The provider had rotated the refresh token before the replica died, and the new one was
    // never stored: the stored one is spent. The survivor presents it once, the provider
    // refuses it, and the connection says reauthorization_required instead of failing
    // vaguely. (No database can save a token that never reached it; the row lock guarantees
    // only that no second refresh ran concurrently.)
    assert_eq!(response.status(), 409);
    let body = json_of(response).await;
    assert_eq!(body["error"], "reauthorization_required");
    assert!(
        body["message"].as_str().unwrap().contains("interrupted"),
        "the answer names the likely cause: {body}"
    );
    assert_eq!(provider.calls(), 2);
    assert_eq!(
        provider.reuses(),
        1,
        "the spent token was presented once, by the survivor"
    );
    let view = second.get("/acme/acme/connection").as_admin().send().await;
    let view = json_of(view).await;
    assert_eq!(view["status"], "reauthorization_required");
    // And it stays that way without further provider calls.
    assert_eq!(second.get_token("acme", "acme", "").await.status(), 409);
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_split_the_background_refreshes_and_refresh_each_connection_once() {
    let provider = FakeProvider::start().await;
    // Slow enough that both replicas' passes overlap.
    provider.set_delay(Duration::from_millis(100));
    let first = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        refresher: true,
        provider: Some(provider.clone()),
        extra_config: "refresher_interval_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    let second = first.replica();
    for i in 0..200 {
        first
            .import_ok(
                &format!("tenant-{i}"),
                "acme",
                &serde_json::json!({
                    "access_token": unique("soon-expiring"),
                    "refresh_token": provider.new_refresh_token(),
                    "expires_at": now() + 300,
                }),
            )
            .await;
    }
    wait_until("200 background refreshes", || provider.calls() >= 200).await;
    // Two more passes of each replica: nothing is refreshed twice.
    let (a, b) = (first.refresher_passes(), second.refresher_passes());
    wait_until("two more passes of each replica", || {
        first.refresher_passes() >= a + 2 && second.refresher_passes() >= b + 2
    })
    .await;
    assert_eq!(
        provider.calls(),
        200,
        "each connection refreshed exactly once"
    );
    assert_eq!(
        provider.reuses(),
        0,
        "no provider call failed on a spent token"
    );
    let done = |app: &TestApp| app.logs().matches("outcome=\"refreshed\"").count();
    let (a, b) = (done(&first), done(&second));
    assert_eq!(a + b, 200, "first {a}, second {b}");
    assert!(
        a > 0 && b > 0,
        "both replicas did part of the work: first {a}, second {b}"
    );
    assert!(
        !first.logs().contains("outcome=\"failed\"")
            && !second.logs().contains("outcome=\"failed\"")
    );
    // Jobs now find fresh tokens without a provider call.
    let body = json_of(
        second
            .get_token("tenant-7", "acme", "min_validity=1800")
            .await,
    )
    .await;
    assert!(body["expires_in"].as_i64().unwrap() > 3000);
    assert_eq!(provider.calls(), 200);
}

/// Issue 11, item 4: a provider that hangs holds no database connection. Fifty refreshes of fifty
/// connections wait on it while another app's token (read from the database on every request:
/// no cache) and `/healthz` keep answering 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_provider_does_not_starve_the_database_pool() {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        provider: Some(provider.clone()),
        extra_config: "cache_ttl_seconds = 0\n".into(),
        ..AppOptions::default()
    })
    .await;
    let steady = unique("steady-at");
    app.import_ok(
        "steady",
        "acme",
        &serde_json::json!({"access_token": steady, "expires_in": 3600}),
    )
    .await;
    for i in 0..50 {
        app.import_expired(&format!("hang-{i}")).await;
    }
    // The provider now takes longer to answer than the whole test.
    provider.set_delay(Duration::from_secs(600));
    let mut hanging = tokio::task::JoinSet::new();
    for i in 0..50 {
        let request = app
            .get(&format!("/hang-{i}/acme/binb-token"))
            .as_superadmin();
        hanging.spawn(async move { request.try_send().await });
    }
    // More refreshes wait on the provider than the pool has connections (16).
    crate::helpers::wait_until("refreshes to reach the hanging provider", || {
        provider.calls() >= 16
    })
    .await;
    for _ in 0..40 {
        let response = app.get_token("steady", "acme", "").await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let body = json_of(response).await;
        assert_eq!(body["access_token"], steady.as_str());
        let health = app.get("/healthz").send().await;
        assert_eq!(health.status(), 200);
    }
    assert_eq!(hanging.len(), 50);
    assert!(
        hanging.try_join_next().is_none(),
        "the hanging refreshes were still pending throughout"
    );
    hanging.abort_all();
}
