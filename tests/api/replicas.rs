//! Several replicas on one PostgreSQL: refreshes are coordinated through the database alone.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    json_of, now, spawn_app_on, spawn_app_with, unique, AppOptions, Backend, FakeProvider, TestApp,
};

async fn hammer(app: &TestApp, n: usize, app_id: &str) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = app
            .client
            .get(format!("{}/{app_id}/acme/binb-token", app.address))
            .bearer_auth(&app.superadmin);
        set.spawn(async move {
            let response = request.send().await.unwrap();
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
    provider.set_delay(Duration::from_millis(1500));
    let mut first = spawn_app_on(Backend::Postgres, Some(&provider)).await;
    let second = first.replica();
    first.import_expired("acme").await;

    // The first replica starts a refresh and dies while the provider is still answering.
    let request = first
        .client
        .get(format!("{}/acme/acme/binb-token", first.address))
        .bearer_auth(&first.superadmin)
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.calls(), 1, "the refresh reached the provider");
    first.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed replica never answered"
    );
    // Let the provider finish the request the dead replica sent (it rotates the token).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The row lock died with the replica's connection: the survivor is not blocked.
    provider.set_delay(Duration::ZERO);
    let response = second.get_token("acme", "acme", "").await;
    // The provider had rotated the refresh token before the replica died, and the new one was
    // never stored: the stored one is spent. The survivor presents it once, the provider
    // refuses it, and the connection says reauthorization_required instead of failing
    // vaguely. (No database can save a token that never reached it; the row lock guarantees
    // only that no second refresh ran concurrently.)
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["error"], "reauthorization_required");
    assert_eq!(provider.calls(), 2);
    assert_eq!(
        provider.reuses(),
        1,
        "the spent token was presented once, by the survivor"
    );
    let view = second
        .client
        .get(format!("{}/acme/acme/connection", second.address))
        .bearer_auth(&second.admin)
        .send()
        .await
        .unwrap();
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
        let response = first
            .import(
                &format!("tenant-{i}"),
                "acme",
                &serde_json::json!({
                    "access_token": unique("soon-expiring"),
                    "refresh_token": provider.new_refresh_token(),
                    "expires_at": now() + 300,
                }),
            )
            .await;
        assert!(response.status().is_success());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while provider.calls() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} refreshes",
            provider.calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more passes: nothing is refreshed twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
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
