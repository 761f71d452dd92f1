//! Access control: every route of the table, by every kind of caller.

use serde_json::Value;

use crate::helpers::{cli, cli_ok, spawn_app};

/// Routes that need no credential. A route made public must be added here on purpose.
const PUBLIC: &[&str] = &[
    "/connect/{secret}",
    "/oauth/callback",
    "/healthz",
    "/readyz",
    "/metrics",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_its_declared_role_says() {
    let app = spawn_app(None).await;
    // A revoked account, revoked before the server ever loaded the accounts.
    let revoked = cli_ok(
        &app.config_path,
        &["service-account", "create", "gone", "--role", "superadmin"],
        None,
    );
    let revoked = revoked.trim().to_string();
    app.remember_secret(&revoked);
    let (code, _, _) = cli(
        &app.config_path,
        &["service-account", "revoke", "gone"],
        None,
        &[],
    );
    assert_eq!(code, 0);

    let (code, table, _) = cli(&app.config_path, &["routes"], None, &[]);
    assert_eq!(code, 0);
    let table: Vec<Value> = serde_json::from_str(&table).unwrap();
    assert!(table.len() >= 7, "the table lists the routes");
    let callers: [(&str, Option<&str>); 5] = [
        ("no credential", None),
        ("wrong credential", Some("tbx_not_a_real_token")),
        ("revoked account", Some(revoked.as_str())),
        ("admin", Some(app.admin.as_str())),
        ("superadmin", Some(app.superadmin.as_str())),
    ];
    let mut checked = 0;
    for route in &table {
        let template = route["path"].as_str().unwrap();
        let access = route["access"].as_str().unwrap();
        if access == "public" {
            assert!(
                PUBLIC.contains(&template),
                "{template} is public but not in the allow-list"
            );
        }
        let path = template
            .replace("{app_id}", "acme")
            .replace("{connector_type}", "github")
            .replace("{secret}", &"x".repeat(43));
        for method in route["methods"].as_array().unwrap() {
            let method = reqwest::Method::from_bytes(method.as_str().unwrap().as_bytes()).unwrap();
            for (who, bearer) in callers {
                let mut request = app
                    .client
                    .request(method.clone(), format!("{}{path}", app.address))
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(token) = bearer {
                    request = request.bearer_auth(token);
                }
                let status = request.send().await.unwrap().status().as_u16();
                let denied = status == 401 || status == 403;
                let expected_denial = match (access, who) {
                    ("public", _) => None,
                    (_, "no credential" | "wrong credential" | "revoked account") => Some(401),
                    ("superadmin", "admin") => Some(403),
                    _ => None,
                };
                match expected_denial {
                    Some(code) => assert_eq!(status, code, "{method} {template} as {who}"),
                    None => assert!(!denied, "{method} {template} as {who} got {status}"),
                }
                assert_ne!(status, 405, "{method} {template}: declared but not routed");
                checked += 1;
            }
        }
    }
    assert!(checked >= 50, "{checked} checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_refreshes_and_connections_without_tenant_data() {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = spawn_app(Some(&provider)).await;
    app.import_expired("tenant-secret-name").await;
    assert_eq!(
        app.get_token("tenant-secret-name", "acme", "")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_token("tenant-secret-name", "acme", "")
            .await
            .status(),
        200
    );
    assert_eq!(app.get_token("nobody", "acme", "").await.status(), 404);
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for line in [
        "tokenbox_token_requests_total{outcome=\"refreshed\"} 1",
        "tokenbox_token_requests_total{outcome=\"served\"} 1",
        "tokenbox_token_requests_total{outcome=\"not_connected\"} 1",
        "tokenbox_refreshes_total{connector_type=\"acme\",outcome=\"success\"} 1",
        "tokenbox_connections{connector_type=\"acme\",status=\"active\"} 1",
        "tokenbox_refresh_duration_seconds_count{connector_type=\"acme\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(!text.contains("tenant-secret-name"), "no app id in metrics");
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
