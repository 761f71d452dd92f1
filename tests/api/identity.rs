//! Whose account each connection is: the ID token or the userinfo endpoint of the real OAuth
//! server (`tests/e2e/oidc-server.mjs`) after a signup, a small "me" endpoint after an import,
//! `connection.account_changed` on a reconnection with another account, and `same_account`
//! links that refuse one and keep the old tokens.

use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::helpers::{
    eventually, json_of, location, query_param, spawn_app_with, unique, AppOptions, Backend,
    OidcServer, TestApp,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real server and a tokenbox on `port` with its `oidc` connector type; `userinfo` adds the
/// server's userinfo endpoint as the identity request (else the ID token names the account).
async fn real(userinfo: bool) -> (OidcServer, TestApp) {
    let port = free_port();
    let oidc = OidcServer::start(
        "tokenbox-identity",
        &unique("oidc-basic-secret"),
        &format!("http://127.0.0.1:{port}/oauth/callback"),
        3600,
    );
    let mut table = oidc.connector_type("oidc", &oidc.basic, "basic");
    if userinfo {
        table.push_str(&format!(
            "userinfo_url = \"{}\"\n",
            oidc.url("userinfo_url")
        ));
    }
    let app = spawn_app_with(AppOptions {
        backend: Backend::Sqlite,
        listen: format!("127.0.0.1:{port}"),
        extra_config: format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{}\"\n{table}",
            unique("whsec")
        ),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&oidc.basic.secret);
    (oidc, app)
}

/// A signup through a link created with `body`, approved at the provider as `login`: the
/// callback's status and page.
async fn signup_as(app: &TestApp, oidc: &OidcServer, login: &str, body: &Value) -> (u16, String) {
    let response = app.create_link("acme", "oidc", body).await;
    assert_eq!(response.status(), 201);
    let link = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());
    let to_provider = app.click_connect(&link).await;
    assert_eq!(to_provider.status(), 303);
    let callback = oidc.approve_as(&location(&to_provider), login).await;
    for name in ["state", "code"] {
        if let Some(v) = query_param(&callback, name) {
            app.remember_secret(&v);
        }
    }
    let done = app.callback(&callback).await;
    (done.status().as_u16(), done.text().await.unwrap())
}

async fn connection(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).as_superadmin().send().await;
    assert_eq!(response.status(), 200);
    json_of(response).await
}

/// The queued webhook events of the app, as `type` and body.
async fn events(app: &TestApp) -> Vec<(String, Value)> {
    app.query_strings("SELECT body FROM webhook_deliveries ORDER BY id")
        .await
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_stores_the_account_of_the_id_token() {
    let (oidc, app) = real(false).await;
    let (status, page) = signup_as(&app, &oidc, "alice", &json!({})).await;
    assert_eq!(status, 200, "{page}\n{}", app.logs());
    let view = connection(&app, "/acme/oidc/connection").await;
    assert_eq!(view["account"]["id"], "alice", "{view}");
    assert!(view.get("previous_account").is_none(), "{view}");
    let created = events(&app).await;
    assert_eq!(created[0].0, "connection.created");
    assert_eq!(
        created[0].1["data"]["account"]["id"], "alice",
        "{created:?}"
    );
    app.assert_logs_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_another_account_is_recorded_and_same_account_refuses_it() {
    let (oidc, app) = real(true).await;
    let (status, page) = signup_as(&app, &oidc, "alice", &json!({})).await;
    assert_eq!(status, 200, "{page}\n{}", app.logs());
    let view = connection(&app, "/acme/oidc/connection").await;
    // The userinfo endpoint answered (its `sub`; `name` needs the profile scope).
    assert_eq!(view["account"], json!({"id": "alice"}), "{view}");
    assert_eq!(app.log_lines_containing("the identity request failed"), 0);

    // Another account through a plain link: accepted, recorded, announced.
    let (status, page) = signup_as(&app, &oidc, "bob", &json!({})).await;
    assert_eq!(status, 200, "{page}");
    let view = connection(&app, "/acme/oidc/connection").await;
    assert_eq!(view["account"]["id"], "bob", "{view}");
    assert_eq!(view["previous_account"]["id"], "alice", "{view}");
    let changed: Vec<_> = events(&app)
        .await
        .into_iter()
        .filter(|(t, _)| t == "connection.account_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].1["data"]["account"]["id"], "bob");
    // The audit trail names the accounts by id (written in batches: polled).
    let expected = ["connection.account:alice", "connection.account_changed:bob"];
    eventually("the audit events of the accounts", || async {
        let audited = app
            .query_strings(
                "SELECT action || ':' || subject FROM audit_events \
                 WHERE action LIKE 'connection.account%' ORDER BY id",
            )
            .await;
        (audited == expected).then_some(())
    })
    .await;
    let listed = connection(&app, "/connections").await;
    assert_eq!(listed["connections"][0]["account"]["id"], "bob", "{listed}");

    // A link that requires the same account refuses a third one and keeps bob's tokens.
    let before = connection(&app, "/acme/oidc/binb-token").await["access_token"].clone();
    let (status, page) = signup_as(&app, &oidc, "carol", &json!({"same_account": true})).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("account_mismatch"), "{page}");
    assert!(
        page.contains("not the account of this connection"),
        "{page}"
    );
    let view = connection(&app, "/acme/oidc/connection").await;
    assert_eq!(view["account"]["id"], "bob", "{view}");
    let after = connection(&app, "/acme/oidc/binb-token").await["access_token"].clone();
    assert_eq!(before, after, "the old tokens are kept");
    assert_eq!(oidc.userinfo(after.as_str().unwrap()).await, 200);

    // The same account through such a link is accepted.
    let (status, page) = signup_as(&app, &oidc, "bob", &json!({"same_account": true})).await;
    assert_eq!(status, 200, "{page}");
    app.assert_logs_clean();
}

/// A provider's "me" endpoint in the style of GitHub's: a numeric `id` and a `login`.
async fn me(headers: HeaderMap) -> (axum::http::StatusCode, Json<Value>) {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer imported-token") => (
            axum::http::StatusCode::OK,
            Json(json!({"id": 583231, "login": "octocat", "email": "octo@example.com"})),
        ),
        _ => (axum::http::StatusCode::UNAUTHORIZED, Json(json!({}))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stores_the_account_of_the_me_endpoint() {
    import_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stores_the_account_of_the_me_endpoint_on_postgres() {
    import_on(Backend::Postgres).await;
}

/// Imports into `backend`: the account from the "me" endpoint, then one it refuses; the
/// listing shows both connections with what is known.
async fn import_on(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/user", get(me)))
            .await
            .unwrap()
    });
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: format!(
            "[connector_types.hub]\nauthorization_url = \"{base}/authorize\"\n\
             token_url = \"{base}/token\"\nuserinfo_url = \"{base}/user\"\n\
             client_id = \"hub-client\"\nclient_secret = \"{}\"\n",
            unique("hub-secret")
        ),
        ..AppOptions::default()
    })
    .await;
    let imported = app
        .import_ok(
            "acme",
            "hub",
            &json!({"access_token": "imported-token", "refresh_token": "r1"}),
        )
        .await;
    assert_eq!(imported["account"]["id"], "583231", "{imported}");
    let view = connection(&app, "/acme/hub/connection").await;
    assert_eq!(
        view["account"],
        json!({"id": "583231", "name": "octocat", "email": "octo@example.com"}),
        "{view}"
    );

    // A token the endpoint refuses: the import still succeeds, the account is unknown.
    let imported = app
        .import_ok("other", "hub", &json!({"access_token": "someone-else"}))
        .await;
    assert!(imported.get("account").is_none(), "{imported}");
    let listed = connection(&app, "/connections").await;
    assert_eq!(
        listed["connections"][0]["account"]["id"], "583231",
        "{listed}"
    );
    assert!(
        listed["connections"][1].get("account").is_none(),
        "{listed}"
    );

    // /admin names the account of a connection that needs its tenant to reconnect.
    app.execute_sql(
        "UPDATE connections SET status = 'reauthorization_required' WHERE app_id = 'acme'",
    )
    .await;
    let login = app
        .post("/admin/login")
        .form(&[("token", app.admin.clone())])
        .send()
        .await;
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let html = app
        .get("/admin")
        .header("cookie", &cookie)
        .send()
        .await
        .text()
        .await
        .unwrap();
    let attention = &html[html.find("id=\"attention\"").unwrap()..];
    assert!(
        attention.contains("<td class=\"account\">octo@example.com</td>"),
        "{attention}"
    );
}
