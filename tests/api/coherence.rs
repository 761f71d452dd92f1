//! Caches that agree across replicas (PostgreSQL): a change made by one replica reaches the
//! other replicas' caches through `LISTEN/NOTIFY` long before `cache_ttl_seconds`, and a replica
//! whose listener connection dies reads through until the listener is back.

use serde_json::{json, Value};

use crate::helpers::{
    eventually, json_of, spawn_app_with, unique, wait_until, AppOptions, Backend, FakeProvider,
    TestApp,
};

/// The cache would hide a change for ten minutes: anything seen sooner came from the feed.
const LONG_TTL: &str = "cache_ttl_seconds = 600\n";

async fn token(app: &TestApp, query: &str) -> String {
    let body: Value = json_of(app.get_token("shared", "acme", query).await).await;
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token in {body}"))
        .to_string()
}

/// Waits (with the helpers' hang guard) until `app` serves `expected`.
async fn until_served(app: &TestApp, expected: &str, what: &str) {
    eventually(what, || async {
        (token(app, "").await == expected).then_some(())
    })
    .await;
}

/// The application name of a replica's listener connection, in `pg_stat_activity`.
fn listener_name(app: &TestApp) -> String {
    format!("tokenbox-listener-{}", app.pid())
}

async fn listeners_of(app: &TestApp) -> usize {
    app.query_strings(&format!(
        "SELECT pid::text FROM pg_stat_activity WHERE application_name = '{}'",
        listener_name(app)
    ))
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_another_replicas_refresh_at_once_even_after_its_listener_was_killed() {
    let provider = FakeProvider::start().await;
    let a = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        provider: Some(provider.clone()),
        extra_config: LONG_TTL.into(),
        ..AppOptions::default()
    })
    .await;
    let b = a.replica();
    wait_until("both listeners to subscribe", || {
        a.log_lines_containing("cache listener subscribed") == 1
            && b.log_lines_containing("cache listener subscribed") == 1
    })
    .await;
    let imported = unique("imported");
    b.import_ok(
        "shared",
        "acme",
        &json!({"access_token": imported, "refresh_token": provider.new_refresh_token(), "expires_in": 3600}),
    )
    .await;
    until_served(&a, &imported, "A to serve the imported token").await;
    // A caches it: valid for an hour, so only a dropped entry makes A read the row again.
    assert_eq!(token(&a, "").await, imported);

    let refreshed = token(&b, "force_refresh=true").await;
    assert_ne!(refreshed, imported);
    until_served(&a, &refreshed, "A to serve B's refreshed token").await;
    assert_eq!(provider.calls(), 1, "A made no provider call of its own");

    // Kill A's listener from the database side.
    let killed = a
        .query_strings(&format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE application_name = '{}'",
            listener_name(&a)
        ))
        .await;
    assert_eq!(
        killed,
        vec!["true".to_string()],
        "A's listener was found and killed"
    );
    // B refreshes while A's listener is down or coming back: A reads through meanwhile.
    let second = token(&b, "force_refresh=true").await;
    assert_ne!(second, refreshed);
    until_served(&a, &second, "A to serve B's second refresh").await;
    wait_until(
        "A's listener to notice the loss and subscribe again",
        || {
            a.log_lines_containing("cache listener lost") >= 1
                && a.log_lines_containing("cache listener subscribed") >= 2
        },
    )
    .await;
    eventually(
        "A's listener connection to be back in pg_stat_activity",
        || async { (listeners_of(&a).await == 1).then_some(()) },
    )
    .await;

    // Back to caching, and coherent again: A caches the token, B refreshes, A follows.
    assert_eq!(token(&a, "").await, second);
    let third = token(&b, "force_refresh=true").await;
    until_served(&a, &third, "A to serve B's third refresh").await;

    // A deletion reaches A too.
    let deleted = b.delete("/shared/acme/connection").as_admin().send().await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    eventually("A to answer that the connection is gone", || async {
        (a.get_token("shared", "acme", "").await.status() == 404).then_some(())
    })
    .await;
    assert_eq!(provider.calls(), 3, "only B called the provider");
    assert_eq!(provider.reuses(), 0);
}
