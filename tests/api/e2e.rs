//! End to end with a real OAuth server we did not write: the npm package `oidc-provider` as the
//! upstream provider, driven through its own login and consent pages by headless Chromium
//! (`tests/e2e/*.mjs`; `scripts/e2e-setup.sh` installs both).

use serde_json::json;

use crate::helpers::{
    browse, fresh_screenshot_dir, holds_eventually, json_of, spawn_app_with, unique, userinfo,
    AppOptions, OidcServer, TestApp,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_oauth_server_through_a_real_browser_and_rotating_refresh_tokens() {
    // tokenbox's address must be known before the provider registers its redirect URI.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client_secret = unique("oidc-client-secret");
    let oidc = OidcServer::start(
        "tokenbox-e2e",
        &client_secret,
        &format!("http://127.0.0.1:{port}/oauth/callback"),
        5,
    );
    let app = spawn_app_with(AppOptions {
        listen: format!("127.0.0.1:{port}"),
        extra_config: format!(
            "refresh_margin_seconds = 2\n\
             [connector_types.oidc]\n\
             display_name = \"Example OIDC\"\n\
             authorization_url = \"{auth}\"\n\
             token_url = \"{token}\"\n\
             client_id = \"tokenbox-e2e\"\n\
             client_secret = \"{client_secret}\"\n\
             scopes = [\"openid\", \"offline_access\"]\n\
             client_auth = \"basic\"\n\
             authorization_params = {{ prompt = \"consent\" }}\n",
            auth = oidc.discovery["authorization_url"].as_str().unwrap(),
            token = oidc.discovery["token_url"].as_str().unwrap(),
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&client_secret);
    let userinfo_url = oidc.discovery["userinfo_url"].as_str().unwrap().to_string();
    let screenshots = fresh_screenshot_dir("signup");

    // A tenant who cancels at the provider: nothing is connected.
    let link = new_link(&app).await;
    let denied = browse(&link, &screenshots.join("denied"), true);
    assert_eq!(denied["status"], "denied", "{denied}");
    assert_eq!(app.get_token("tenant-e2e", "oidc", "").await.status(), 404);

    // The same link, approved this time.
    let result = browse(&link, &screenshots, false);
    assert_eq!(result["status"], "connected", "{result}");
    assert!(result["text"].as_str().unwrap().contains("Example OIDC"));
    assert!(screenshots.join("connect-page.png").exists());
    assert!(screenshots.join("result-page.png").exists());

    // At least 4 of its 5 seconds left, so the provider still accepts it just below.
    let first = json_of(app.get_token("tenant-e2e", "oidc", "min_validity=4").await).await;
    let first_token = first["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&first_token);
    assert!(first["expires_in"].as_i64().unwrap() <= 5);
    assert!(first["scope"].as_str().unwrap().contains("offline_access"));
    assert_eq!(userinfo(&app, &userinfo_url, &first_token).await, 200);

    // Past the access token's lifetime (5 s) the provider refuses it; then tokenbox refreshes
    // with the (rotating) refresh token.
    assert!(
        holds_eventually(|| async { userinfo(&app, &userinfo_url, &first_token).await == 401 })
            .await,
        "the old token expired at the provider"
    );
    let second = json_of(app.get_token("tenant-e2e", "oidc", "").await).await;
    let second_token = second["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&second_token);
    assert_ne!(second_token, first_token);
    assert_eq!(userinfo(&app, &userinfo_url, &second_token).await, 200);

    // Once more: the rotated refresh token was stored (a reused one would revoke the grant).
    let third = json_of(
        app.get_token("tenant-e2e", "oidc", "force_refresh=true")
            .await,
    )
    .await;
    let third_token = third["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&third_token);
    assert_ne!(third_token, second_token);
    assert_eq!(userinfo(&app, &userinfo_url, &third_token).await, 200);
}

async fn new_link(app: &TestApp) -> String {
    let response = app.create_link("tenant-e2e", "oidc", &json!({})).await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    link
}
