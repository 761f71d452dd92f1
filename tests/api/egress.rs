//! Where provider requests may go (issue 11, item 7): placeholder values are DNS host names,
//! never IP literals in any form; names must resolve to public addresses when the connection is
//! made (loopback only with `allow_insecure_loopback`); placeholders may have a suffix
//! allow-list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::helpers::{json_of, now, spawn_app_with, unique, AppOptions, FakeProvider, TestApp};

/// Every form of an IP literal or internal name a reviewer tried, or could try, as `{host}`.
const EVIL_HOSTS: &[&str] = &[
    "169.254.169.254",
    "2130706433",
    "0x7f000001",
    "10.0.0.1",
    "127.1",
    "127.0.0.1",
    "127.0.0.1.",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f.0x0.0x0.0x1",
    "192.168.0.1.",
    "::1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "::ffff:a9fe:a9fe",
    "[fd00::1]",
    "fe80::1%25eth0",
    "127%2e0%2e0%2e1",
    "%31%32%37.0.0.1",
    "user@127.0.0.1",
    "gitlab.example.com@127.0.0.1",
    "gitlab.example.com:8443",
    "gitlab.example.com/x",
    "localhost",
    "metadata",
    "",
];

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (and never answers).
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted)
}

async fn app_with_gitlab(extra: &str) -> TestApp {
    let provider = FakeProvider::start().await;
    let secret = unique("gitlab-secret");
    let app = spawn_app_with(AppOptions {
        provider: Some(provider),
        extra_config: format!(
            "[connector_types.gitlab]\nclient_id = \"gl\"\nclient_secret = \"{secret}\"\n{extra}"
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&secret);
    app
}

async fn import_with_host(app: &TestApp, app_id: &str, host: &str) -> reqwest::Response {
    app.import(
        app_id,
        "gitlab",
        &json!({
            "access_token": unique("gl-at"),
            "refresh_token": unique("gl-rt"),
            "expires_at": now() + 3600,
            "metadata": {"host": host},
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_and_internal_names_are_refused_as_hosts_at_link_creation_and_import() {
    let app = app_with_gitlab("").await;
    for evil in EVIL_HOSTS {
        let response = app
            .create_link("t", "gitlab", &json!({"params": {"host": evil}}))
            .await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, 400, "link for {evil:?}: {body}");
        assert_eq!(body["error"], "invalid_request", "{evil:?}");
        assert!(
            body["message"].as_str().unwrap().contains("host name"),
            "{evil:?}: {body}"
        );

        let response = import_with_host(&app, "t", evil).await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, 400, "import with {evil:?}: {body}");
        assert_eq!(body["error"], "invalid_request", "{evil:?}");
    }
    assert!(
        app.query_strings("SELECT app_id FROM connections")
            .await
            .is_empty(),
        "nothing was imported"
    );
    // A DNS host name is accepted, for a link and for an import.
    let response = app
        .create_link(
            "t",
            "gitlab",
            &json!({"params": {"host": "gitlab.example.com"}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let url = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(url.rsplit('/').next().unwrap());
    assert_eq!(
        import_with_host(&app, "t", "gitlab.example.com")
            .await
            .status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_never_connects_to_a_loopback_or_private_host() {
    let (port, accepted) = counting_listener().await;
    let secret = unique("internal-secret");
    let app = spawn_app_with(AppOptions {
        allow_insecure_loopback: false,
        extra_config: format!(
            "provider_timeout_seconds = 2\ncache_ttl_seconds = 0\n\
             [connector_types.internal]\nauthorization_url = \"https://localhost:{port}/authorize\"\n\
             token_url = \"https://localhost:{port}/token\"\nclient_id = \"internal\"\nclient_secret = \"{secret}\"\n\
             [connector_types.selfhosted]\nauthorization_url = \"https://{{host}}:{port}/authorize\"\n\
             token_url = \"https://{{host}}:{port}/token\"\nclient_id = \"sh\"\nclient_secret = \"{secret}\"\n\
             placeholders = {{ host = {{ pattern = \"hostname\" }} }}\n"
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&secret);
    let expired = |metadata: serde_json::Value| {
        json!({
            "access_token": unique("int-at"),
            "refresh_token": unique("int-rt"),
            "expires_at": now() - 10,
            "metadata": metadata,
        })
    };

    // A name that resolves to 127.0.0.1, with allow_insecure_loopback off.
    app.import_ok("a", "internal", &expired(json!({}))).await;
    let response = app.get_token("a", "internal", "").await;
    let status = response.status();
    let body = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "provider_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("private, loopback or reserved address"),
        "{body}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection to 127.0.0.1"
    );

    // A stored host that bypassed validation (a row written before the check): refused at use.
    app.import_ok(
        "b",
        "selfhosted",
        &expired(json!({"host": "gitlab.example.com"})),
    )
    .await;
    app.execute_sql(
        "UPDATE connections SET metadata = '{\"host\":\"127.0.0.1\"}' WHERE app_id = 'b'",
    )
    .await;
    let response = app.get_token("b", "selfhosted", "").await;
    let status = response.status();
    let body = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "provider_error");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection to 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_reached_with_allow_insecure_loopback() {
    // The control of the test above: the same kind of name works when loopback is allowed.
    let provider = FakeProvider::start().await;
    let port = provider.url.rsplit(':').next().unwrap().to_string();
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "[connector_types.local]\nauthorization_url = \"http://localhost:{port}/authorize\"\n\
             token_url = \"http://localhost:{port}/token\"\nclient_id = \"acme-client\"\n\
             client_secret = \"{}\"\nclient_auth = \"basic\"\n",
            provider.state.client_secret
        ),
        ..AppOptions::default()
    })
    .await;
    let refresh = provider.new_refresh_token();
    app.import_ok(
        "c",
        "local",
        &json!({"access_token": unique("local-at"), "refresh_token": refresh, "expires_at": now() - 10}),
    )
    .await;
    let response = app.get_token("c", "local", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_suffix_allow_list_accepts_matching_hosts_only() {
    let app = app_with_gitlab(
        "placeholder_suffixes = { host = [\"*.gitlab.example.com\", \"gitlab.com\"] }\n",
    )
    .await;
    for ok in [
        "git.gitlab.example.com",
        "a.b.gitlab.example.com",
        "gitlab.com",
    ] {
        let response = app
            .create_link("t", "gitlab", &json!({"params": {"host": ok}}))
            .await;
        assert_eq!(response.status(), 201, "{ok}");
        let url = json_of(response).await["url"].as_str().unwrap().to_string();
        app.remember_secret(url.rsplit('/').next().unwrap());
    }
    // The default (gitlab.com) is in the list: a link without a host is fine.
    let response = app.create_link("t", "gitlab", &json!({})).await;
    assert_eq!(response.status(), 201);
    let url = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(url.rsplit('/').next().unwrap());
    for refused in [
        "gitlab.example.com",
        "evilgitlab.example.com",
        "gitlab.example.com.evil.com",
        "git.gitlab.example.com.evil.com",
        "www.gitlab.com",
        "evil.com",
    ] {
        let response = app
            .create_link("t", "gitlab", &json!({"params": {"host": refused}}))
            .await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("placeholder_suffixes"),
            "{body}"
        );
        let response = import_with_host(&app, "t", refused).await;
        assert_eq!(response.status(), 400, "import with {refused}");
    }
    assert_eq!(
        import_with_host(&app, "t", "git.gitlab.example.com")
            .await
            .status(),
        201
    );
}
