use serde_json::json;

use crate::helpers::{
    json_of, location, query_param, spawn_app_on, spawn_app_with, unique, AppOptions, Backend,
    FakeProvider,
};

fn result_status(html: &str) -> Option<String> {
    let start = html.find("id=\"result\" data-status=\"")? + "id=\"result\" data-status=\"".len();
    Some(html[start..].split('"').next()?.to_string())
}

async fn connection_status(app: &crate::helpers::TestApp, app_id: &str) -> u16 {
    app.get(&format!("/{app_id}/acme/connection"))
        .as_admin()
        .send()
        .await
        .status()
        .as_u16()
}

pub async fn a_tenant_connects_through_the_link_and_the_job_gets_the_issued_token(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;

    let response = app
        .create_link("tenant-a", "acme", &json!({"expires_in": 600}))
        .await;
    assert_eq!(response.status(), 201);
    let created = json_of(response).await;
    let link = created["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    assert!(
        link.starts_with(&format!("{}/connect/", app.address)),
        "{link}"
    );
    let expires_at = created["expires_at"].as_i64().unwrap();
    assert!((expires_at - crate::helpers::now() - 600).abs() <= 5);

    // The page names the app and the provider, with one Connect button and no script.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("tenant-a") && html.contains("acme"));
    assert!(html.contains("<form method=\"post\">") && html.contains("id=\"connect\""));
    assert!(!html.contains("<script"));

    // Connect: 303 to the provider with state and PKCE S256.
    let to_provider = app.click_connect(&link).await;
    assert_eq!(to_provider.status(), 303);
    let authorize = location(&to_provider);
    assert!(authorize.starts_with(&format!("{}/authorize?", provider.url)));
    assert_eq!(
        query_param(&authorize, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&authorize, "scope").as_deref(),
        Some("read write")
    );
    assert_eq!(
        query_param(&authorize, "prompt").as_deref(),
        Some("consent")
    );
    assert_eq!(
        query_param(&authorize, "redirect_uri"),
        Some(format!("{}/oauth/callback", app.address))
    );
    let state = query_param(&authorize, "state").unwrap();
    app.remember_secret(&state);
    assert!(state.len() >= 32);

    // The provider redirects back; the callback exchanges the code (verifier checked).
    let back = app.client.get(&authorize).send().await.unwrap();
    let callback = location(&back);
    let done = app.callback(&callback).await;
    assert_eq!(done.status(), 200);
    let html = done.text().await.unwrap();
    assert_eq!(result_status(&html).as_deref(), Some("connected"), "{html}");

    let body = json_of(app.get_token("tenant-a", "acme", "").await).await;
    let issued = provider.issued_access_tokens();
    assert_eq!(body["access_token"], issued[0].as_str());
    assert_eq!(body["scope"], "read write");
    assert_eq!(
        body["metadata"]["instance_url"],
        "https://acme-instance.example.com"
    );
    assert_eq!(body["metadata"]["realmId"], "123");
    assert!(
        body["metadata"].get("id_token").is_none(),
        "only declared fields are kept"
    );

    let view = json_of(app.get("/tenant-a/acme/connection").as_admin().send().await).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["has_refresh_token"], true);
    assert!(view.get("access_token").is_none());
    assert!(!view.to_string().contains(issued[0].as_str()));

    // The link is spent.
    let again = app.client.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(
        result_status(&again.text().await.unwrap()).as_deref(),
        Some("invalid")
    );
}

pub async fn a_replayed_unknown_or_missing_state_is_refused_and_nothing_is_stored(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let link = app.new_link("tenant-b").await;
    let to_provider = app.click_connect(&link).await;
    let back = app.client.get(location(&to_provider)).send().await.unwrap();
    let callback = location(&back);
    app.remember_secret(&query_param(&callback, "state").unwrap());
    let code = query_param(&callback, "code").unwrap();

    for url in [
        format!("{}/oauth/callback?code={code}", app.address),
        format!(
            "{}/oauth/callback?code={code}&state={}",
            app.address,
            "x".repeat(43)
        ),
        format!("{}/oauth/callback?code={code}&state=short", app.address),
    ] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 400, "{url}");
        let html = response.text().await.unwrap();
        assert_eq!(result_status(&html).as_deref(), Some("invalid"));
        assert!(html.contains("no longer valid"));
    }
    assert_eq!(connection_status(&app, "tenant-b").await, 404);

    // The real callback works once; its replay is refused.
    assert_eq!(app.callback(&callback).await.status(), 200);
    let replay = app.callback(&callback).await;
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("no longer valid"));
    assert_eq!(
        provider.issued_access_tokens().len(),
        1,
        "the replay exchanged nothing"
    );
}

pub async fn access_denied_stores_nothing_and_the_link_can_be_used_again(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let link = app.new_link("tenant-c").await;

    *provider.state.deny.lock().unwrap() = true;
    let response = app.run_signup(&link).await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert_eq!(result_status(&html).as_deref(), Some("denied"));
    assert!(
        html.contains("not connected") && html.contains("denied"),
        "{html}"
    );
    assert_eq!(connection_status(&app, "tenant-c").await, 404);

    // Same link, second try, approved.
    let response = app.run_signup(&link).await;
    assert_eq!(
        result_status(&response.text().await.unwrap()).as_deref(),
        Some("connected")
    );
    assert_eq!(connection_status(&app, "tenant-c").await, 200);
}

pub async fn expired_and_spent_links_show_a_clear_page_without_redirect(backend: Backend) {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app_on(backend, Some(&provider)).await;
    let link = app.new_link("tenant-d").await;
    assert_eq!(app.run_signup(&link).await.status(), 200);
    for response in [
        app.client.get(&link).send().await.unwrap(),
        app.click_connect(&link).await,
    ] {
        assert_eq!(response.status(), 400, "a spent link");
        assert!(response.headers().get("location").is_none());
        assert!(response.text().await.unwrap().contains("no longer valid"));
    }

    // An expired link: age it in the database.
    let expiring = app.new_link("tenant-e").await;
    app.stop();
    app.execute_sql("UPDATE connect_links SET expires_at = 1 WHERE app_id = 'tenant-e'")
        .await;
    app.restart();
    // The restarted server listens on a new port.
    let expiring = format!(
        "{}/connect/{}",
        app.address,
        expiring.rsplit('/').next().unwrap()
    );
    for response in [
        app.client.get(&expiring).send().await.unwrap(),
        app.click_connect(&expiring).await,
    ] {
        assert_eq!(response.status(), 400, "an expired link");
        assert!(response.headers().get("location").is_none());
        assert!(response.text().await.unwrap().contains("no longer valid"));
    }
    let unknown = format!("{}/connect/{}", app.address, "A".repeat(43));
    assert_eq!(app.client.get(&unknown).send().await.unwrap().status(), 400);
    assert_eq!(connection_status(&app, "tenant-e").await, 404);
}

pub async fn link_creation_checks_return_to_params_and_the_connector_type(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;

    let response = app
        .create_link(
            "t",
            "acme",
            &json!({"return_to": "https://evil.example.com/connected"}),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert!(json_of(response).await["message"]
        .as_str()
        .unwrap()
        .contains("allowed_return_urls"));

    let response = app
        .create_link("t", "acme", &json!({"params": {"subdomain": "x"}}))
        .await;
    assert_eq!(response.status(), 400, "acme takes no parameter");

    // A catalog type with a placeholder: zendesk's subdomain. Not configured here: 409.
    let response = app
        .create_link("t", "zendesk", &json!({"params": {"subdomain": "acme"}}))
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_of(response).await["error"], "connector_not_configured");

    let response = app.create_link("t", "nope", &json!({})).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["error"], "unknown_connector_type");

    let response = app
        .create_link("t", "acme", &json!({"expires_in": 5}))
        .await;
    assert_eq!(response.status(), 400);

    // Only admins create links.
    let response = app
        .post("/t/acme/connect-links")
        .json(&json!({}))
        .send()
        .await;
    assert_eq!(response.status(), 401);
}

pub async fn a_bad_placeholder_is_refused_and_a_good_one_reaches_the_provider_host(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        extra_config: format!(
            "[connector_types.zendesk]\nauthorization_url = \"http://{{subdomain}}.localhost:{port}/authorize\"\ntoken_url = \"http://{{subdomain}}.localhost:{port}/token\"\nclient_id = \"zd\"\nclient_secret = \"{secret}\"\n",
            port = provider.url.rsplit(':').next().unwrap(),
            secret = unique("zd-secret"),
        ),
        ..AppOptions::default()
    })
    .await;
    for evil in ["evil.com/", "a.b", "x@y", "-x", ""] {
        let response = app
            .create_link("t", "zendesk", &json!({"params": {"subdomain": evil}}))
            .await;
        assert_eq!(response.status(), 400, "{evil:?}");
        assert_eq!(json_of(response).await["error"], "invalid_request");
    }
    let response = app.create_link("t", "zendesk", &json!({})).await;
    assert_eq!(response.status(), 400, "the subdomain is required");

    let response = app
        .create_link("t", "zendesk", &json!({"params": {"subdomain": "acme"}}))
        .await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    let to_provider = app.click_connect(&link).await;
    let authorize = location(&to_provider);
    assert!(
        authorize.starts_with("http://acme.localhost:"),
        "{authorize}"
    );
    app.remember_secret(&query_param(&authorize, "state").unwrap());
}

pub async fn return_to_gets_a_303_after_the_signup_and_delete_removes_the_connection(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let response = app
        .create_link(
            "t",
            "acme",
            &json!({"return_to": "https://app.example.com/connected/t"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    let done = app.run_signup(&link).await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), "https://app.example.com/connected/t");

    let response = app.delete("/t/acme/connection").as_admin().send().await;
    assert_eq!(response.status(), 200);
    let deleted = json_of(response).await;
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["revoked_at_provider"], true);
    let revoked = provider.state.revoked.lock().unwrap().clone();
    assert_eq!(
        revoked.len(),
        1,
        "the refresh token was revoked at the provider"
    );
    assert!(revoked[0].starts_with("fake-rt"));
    assert_eq!(app.get_token("t", "acme", "").await.status(), 404);
    assert_eq!(connection_status(&app, "t").await, 404);
}

pub async fn connector_types_lists_the_catalog_and_whether_credentials_are_configured(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let response = app.get("/connector-types").as_admin().send().await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&provider.state.client_secret),
        "never a client secret"
    );
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = list.as_array().unwrap();
    assert!(list.len() >= 21);
    let find = |name: &str| list.iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(find("acme")["configured"], true);
    assert_eq!(find("acme")["source"], "config");
    assert_eq!(find("github")["configured"], false);
    assert_eq!(find("zendesk")["placeholders"], json!(["subdomain"]));
    let anonymous = app.get("/connector-types").send().await;
    assert_eq!(anonymous.status(), 401);
}

pub async fn the_cli_creates_connect_links(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let (code, stdout, stderr) = crate::helpers::cli(
        &app.config_path,
        &[
            "connect-link",
            "create",
            "tenant-z",
            "acme",
            "--expires-in",
            "3600",
        ],
        None,
        &[("TOKENBOX_PUBLIC_URL", "https://tokens.example.com/")],
    );
    assert_eq!(code, 0, "{stderr}");
    let url = stdout.trim();
    assert!(
        url.starts_with("https://tokens.example.com/connect/"),
        "{url}"
    );
    assert_eq!(stdout.lines().count(), 1);
    app.remember_secret(url.rsplit('/').next().unwrap());
    let (code, _, stderr) = crate::helpers::cli(
        &app.config_path,
        &[
            "connect-link",
            "create",
            "tenant-z",
            "acme",
            "--param",
            "nope=1",
        ],
        None,
        &[("TOKENBOX_PUBLIC_URL", "https://tokens.example.com")],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("no parameter"), "{stderr}");
}

/// The attack of issue 11, item 2: a tenant starts a flow from their own link and sends the
/// authorization URL to someone else; the provider approves silently and the victim's browser
/// lands on the callback. Without the cookie of the browser that clicked Connect (or with
/// another one) nothing is exchanged or stored.
pub async fn a_callback_from_a_browser_that_did_not_click_connect_is_refused(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let link = app.new_link("tenant-a").await;

    // The attacker clicks Connect: the flow is bound to a cookie of their browser.
    let to_provider = app.click_connect(&link).await;
    assert_eq!(to_provider.status(), 303);
    let set_cookie = to_provider.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for flag in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/oauth/callback",
        "Max-Age=",
    ] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "the test server is http");
    let authorize = location(&to_provider);
    let state = query_param(&authorize, "state").unwrap();
    app.remember_secret(&state);
    assert!(!set_cookie.contains(&state), "the cookie is not the state");

    // The victim's browser (no cookie) follows the URL it was sent; the provider approves.
    let victim = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let back = victim.get(&authorize).send().await.unwrap();
    let callback = location(&back);
    let refused = victim.get(&callback).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let html = refused.text().await.unwrap();
    assert_eq!(result_status(&html).as_deref(), Some("invalid"), "{html}");
    assert!(html.contains("data-error=\"browser_mismatch\""), "{html}");
    assert!(html.contains("another browser"), "{html}");
    assert_eq!(connection_status(&app, "tenant-a").await, 404);
    assert!(
        provider.issued_access_tokens().is_empty(),
        "the victim's code was not exchanged"
    );
    // The state is spent: the attacker cannot complete it either.
    assert_eq!(app.callback(&callback).await.status(), 400);

    // A victim whose browser holds a cookie of its own (another value under this flow's
    // cookie name, or another flow's cookie) is refused the same way; one flow each, since a
    // refusal spends the state.
    let other = unique("other-browser");
    for variant in ["same name, other value", "another flow's cookie"] {
        let to_provider = app.click_connect(&link).await;
        let authorize = location(&to_provider);
        app.remember_secret(&query_param(&authorize, "state").unwrap());
        let name = crate::helpers::set_cookies(&to_provider)[0].0.clone();
        let cookie = if variant == "same name, other value" {
            format!("{name}={other}")
        } else {
            format!("tokenbox_signup_000000000000={other}")
        };
        let back = victim.get(&authorize).send().await.unwrap();
        let refused = victim
            .get(location(&back))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{variant}");
        assert!(
            refused
                .text()
                .await
                .unwrap()
                .contains("data-error=\"browser_mismatch\""),
            "{variant}"
        );
    }
    assert_eq!(connection_status(&app, "tenant-a").await, 404);
    assert!(provider.issued_access_tokens().is_empty());

    // The link was not spent: the tenant connects from their own browser.
    let done = app.run_signup(&link).await;
    assert_eq!(done.status(), 200);
    assert_eq!(
        result_status(&done.text().await.unwrap()).as_deref(),
        Some("connected")
    );
    assert_eq!(connection_status(&app, "tenant-a").await, 200);
}

/// Issue 11, item 13: `return_to` was checked after parsing but stored raw, so a control
/// character gave a 500 at the callback, after the connection was saved. It is refused when
/// the link is created; what is stored and sent is the normalised URL.
pub async fn a_return_to_with_a_control_character_is_refused_and_one_with_unicode_is_normalised(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    for bad in [
        "https://app.example.com/connected/t\u{1}x",
        "https://app.example.com/connected/t\r\nSet-Cookie: x=y",
        "https://app.example.com/connected/t\tx",
        "https://app.example.com/connected/t\u{7f}",
    ] {
        let response = app
            .create_link("t-ctl", "acme", &json!({ "return_to": bad }))
            .await;
        assert_eq!(response.status(), 400, "{bad:?}");
        let body = json_of(response).await;
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("control characters"),
            "{body}"
        );
    }
    assert!(
        app.query_strings("SELECT app_id FROM connect_links")
            .await
            .is_empty(),
        "no link was saved"
    );

    // Non-ASCII is kept, percent-encoded as the URL parser normalises it.
    let response = app
        .create_link(
            "t-uni",
            "acme",
            &json!({"return_to": "https://app.example.com/connected/é?q=ü"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    assert_eq!(
        app.query_strings("SELECT return_to FROM connect_links WHERE app_id = 't-uni'")
            .await,
        vec!["https://app.example.com/connected/%C3%A9?q=%C3%BC".to_string()]
    );
    let done = app.run_signup(&link).await;
    assert_eq!(done.status(), 303);
    assert_eq!(
        location(&done),
        "https://app.example.com/connected/%C3%A9?q=%C3%BC"
    );
    assert_eq!(connection_status(&app, "t-uni").await, 200);
}
