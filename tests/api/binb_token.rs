use serde_json::json;

use crate::helpers::{
    eventually, json_of, now, spawn_app_on, spawn_app_with, unique, AppOptions, Backend,
    FakeProvider, Mode, TestApp,
};

pub async fn an_imported_connection_is_served_with_the_documented_json_and_headers(
    backend: Backend,
) {
    let app = spawn_app_on(backend, None).await;
    let access = unique("gho-imported");
    let response = app
        .import(
            "acme",
            "github",
            &json!({"access_token": access, "refresh_token": unique("rt"), "expires_in": 3600, "scope": "repo read:org"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let view = json_of(response).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["has_refresh_token"], true);
    assert!(view.get("access_token").is_none() && view.get("refresh_token").is_none());

    let response = app.get_token("acme", "github", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_of(response).await;
    assert_eq!(body["access_token"], access.as_str());
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "repo read:org");
    assert_eq!(body["app_id"], "acme");
    assert_eq!(body["connector_type"], "github");
    let expires_at = body["expires_at"]
        .as_i64()
        .expect("expires_at is an integer");
    assert!((expires_at - (now() + 3600)).abs() <= 5);
    let expires_in = body["expires_in"]
        .as_i64()
        .expect("expires_in is an integer");
    assert!((3590..=3600).contains(&expires_in));
    assert!(
        body.get("refresh_token").is_none(),
        "the refresh token is never returned"
    );
    assert_eq!(
        body["headers"],
        json!({"Authorization": format!("Bearer {access}")}),
        "the headers a job sends to the provider"
    );
    assert_eq!(body["api_base_url"], "https://api.github.com");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 9, "unexpected fields: {keys:?}");
}

pub async fn a_token_without_expiry_is_served_as_it_is_without_expires_fields(backend: Backend) {
    let app = spawn_app_on(backend, None).await;
    let access = unique("aircall-token");
    app.import_ok("tenant-1", "aircall", &json!({"access_token": access}))
        .await;
    let body = json_of(
        app.get_token("tenant-1", "aircall", "min_validity=86400")
            .await,
    )
    .await;
    assert_eq!(body["access_token"], access.as_str());
    assert!(body.get("expires_at").is_none());
    assert!(body.get("expires_in").is_none());
}

pub async fn binb_token_answers_401_without_or_with_a_wrong_token_and_403_to_an_admin(
    backend: Backend,
) {
    let app = spawn_app_on(backend, None).await;
    app.import_ok("acme", "github", &json!({"access_token": unique("t")}))
        .await;

    let response = app.get("/acme/github/binb-token").send().await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(json_of(response).await["error"], "unauthorized");

    let response = app.get_token_as("tbx_wrong", "acme", "github", "").await;
    assert_eq!(response.status(), 401);
    assert_eq!(json_of(response).await["error"], "unauthorized");

    let response = app.get_token_as(&app.admin, "acme", "github", "").await;
    assert_eq!(response.status(), 403);
    let body = json_of(response).await;
    assert_eq!(body["error"], "forbidden");
    assert!(body["message"].as_str().unwrap().contains("superadmin"));

    // Import needs admin or superadmin: no token, no import.
    let response = app
        .put("/acme/github/connection")
        .json(&json!({"access_token": "x"}))
        .send()
        .await;
    assert_eq!(response.status(), 401);
}

pub async fn unknown_connector_types_and_missing_connections_answer_404_with_their_codes(
    backend: Backend,
) {
    let app = spawn_app_on(backend, None).await;
    let response = app.get_token("acme", "no-such-provider", "").await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["error"], "unknown_connector_type");

    let response = app.get_token("acme", "github", "").await;
    assert_eq!(response.status(), 404);
    let body = json_of(response).await;
    assert_eq!(body["error"], "not_connected");
    assert!(body["message"].as_str().unwrap().contains("acme"));
}

pub async fn bad_input_gets_a_clear_400_json_error(backend: Backend) {
    let app = spawn_app_on(backend, None).await;
    app.import_ok("acme", "github", &json!({"access_token": unique("t")}))
        .await;
    for (app_id, query) in [
        ("Acme", ""),
        ("a.b", ""),
        (&"a".repeat(64) as &str, ""),
        ("acme", "min_validity=soon"),
        ("acme", "min_validity=-5"),
        ("acme", "force_refresh=maybe"),
    ] {
        let response = app.get_token(app_id, "github", query).await;
        assert_eq!(response.status(), 400, "{app_id} {query}");
        let body = json_of(response).await;
        assert_eq!(body["error"], "invalid_request");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let secret_like = unique("gho-should-not-echo");
    for body in [
        "not json".to_string(),
        json!({"refresh_token": "x"}).to_string(),
        json!({"access_token": "x", "expires_at": secret_like}).to_string(),
        json!({"access_token": "x", "expires_in": 5, "expires_at": 5}).to_string(),
        json!({"access_token": "x", "surprise": 1}).to_string(),
    ] {
        let response = app
            .put("/acme/github/connection")
            .as_admin()
            .body(body.clone())
            .send()
            .await;
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains("invalid_request"), "{text}");
        assert!(!text.contains(&secret_like), "the error repeats the input");
    }
    let response = app.get("/no/such/route/here").send().await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["error"], "not_found");
}

pub async fn healthz_answers_without_authentication(backend: Backend) {
    let app = spawn_app_on(backend, None).await;
    let response = app.get("/healthz").send().await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["status"], "ok");
}

pub async fn a_revoked_grant_answers_409_and_the_provider_is_not_called_again(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    provider.set_mode(Mode::Revoked);

    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 409);
    let body = json_of(response).await;
    assert_eq!(body["error"], "reauthorization_required");
    assert!(body["message"].as_str().unwrap().contains("reconnect"));
    assert_eq!(provider.calls(), 1);

    for _ in 0..3 {
        let response = app.get_token("acme", "acme", "force_refresh=true").await;
        assert_eq!(response.status(), 409);
    }
    assert_eq!(provider.calls(), 1, "no provider call once revoked");

    // Re-importing brings the connection back.
    provider.set_mode(Mode::Rotating);
    let fresh = unique("reimported-at");
    app.import_ok(
        "acme",
        "acme",
        &json!({"access_token": fresh, "expires_in": 3600}),
    )
    .await;
    let body = json_of(app.get_token("acme", "acme", "").await).await;
    assert_eq!(body["access_token"], fresh.as_str());
}

pub async fn a_provider_that_is_down_gives_503_with_retry_after_when_no_valid_token_remains(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: "refresh_backoff_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_expired("acme").await;
    provider.set_mode(Mode::Down);

    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 503);
    let retry_after = retry_after_of(&response);
    assert!(
        retry_after >= 2,
        "the provider's Retry-After (2 s) is honoured"
    );
    let body = json_of(response).await;
    assert_eq!(body["error"], "provider_unavailable");
    // Bounded retries: more than one attempt, never more than three.
    let calls = provider.calls();
    assert!((2..=3).contains(&calls), "{calls} provider calls");

    // During the back-off, callers get the same answer without a new provider call.
    let response = app.get_token("acme", "acme", "force_refresh=true").await;
    assert_eq!(response.status(), 503);
    let wait = retry_after_of(&response);
    assert!(wait >= 1);
    assert_eq!(
        provider.calls(),
        calls,
        "no provider call during the back-off"
    );

    // An HTML page instead of JSON is a provider fault too, classified once (not retried:
    // issue 11, item 6).
    // Answered from the back-off (503, no call) until it ends.
    provider.set_mode(Mode::Html);
    let response = past_the_back_off(&app, 503).await;
    assert_eq!(response.status(), 502);
    assert!(retry_after_of(&response) >= 1);
    assert_eq!(json_of(response).await["error"], "provider_error");
    assert_eq!(provider.calls(), calls + 1);

    // The connection is not marked revoked: once the provider is back, it refreshes.
    provider.set_mode(Mode::Rotating);
    let response = past_the_back_off(&app, 502).await;
    assert_eq!(response.status(), 200);
}

/// Asks for acme/acme until the answer is no longer the back-off's `status` (each answered
/// without a provider call), and returns the first other answer.
async fn past_the_back_off(app: &TestApp, status: u16) -> reqwest::Response {
    let provider = app.provider.as_ref().unwrap();
    let calls = provider.calls();
    eventually("the back-off to end", || async {
        let response = app.get_token("acme", "acme", "").await;
        if response.status().as_u16() == status {
            assert_eq!(
                provider.calls(),
                calls,
                "no provider call during the back-off"
            );
            return None;
        }
        Some(response)
    })
    .await
}

pub fn retry_after_of(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn a_still_valid_token_is_served_while_the_provider_is_down_unless_min_validity_cannot_be_met(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let access = unique("soon-expiring-at");
    app.import_ok(
        "acme",
        "acme",
        &json!({"access_token": access, "refresh_token": provider.new_refresh_token(), "expires_in": 120}),
    )
    .await;
    provider.set_mode(Mode::Down);

    // Inside the 300 s margin: a refresh is tried, fails, and the valid token is served.
    let response = app.get_token("acme", "acme", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["access_token"], access.as_str());
    assert!(provider.calls() >= 1);

    let response = app.get_token("acme", "acme", "min_validity=60").await;
    assert_eq!(response.status(), 200);

    let response = app.get_token("acme", "acme", "min_validity=600").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

pub async fn an_expired_token_of_an_unconfigured_connector_type_is_an_operator_problem(
    backend: Backend,
) {
    let app = spawn_app_on(backend, None).await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("gh"), "refresh_token": unique("rt"), "expires_at": 1}),
    )
    .await;
    for _ in 0..2 {
        let response = app.get_token("acme", "github", "").await;
        assert_eq!(response.status(), 409);
        let body = json_of(response).await;
        assert_eq!(body["error"], "connector_not_configured");
        assert!(body["message"].as_str().unwrap().contains("client_id"));
    }
    // No back-off was recorded: it is not the provider's failure.
    let view = json_of(app.get("/acme/github/connection").as_admin().send().await).await;
    assert!(view.get("last_error").is_none(), "{view}");
}
