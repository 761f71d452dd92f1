//! Access control: every route of the table, by every kind of caller.

use serde_json::Value;

use crate::helpers::{cli, cli_ok, holds_eventually, spawn_app};

/// Routes that need no credential. A route made public must be added here on purpose.
const PUBLIC: &[&str] = &[
    "/connect/{secret}",
    "/connect/{secret}/credential",
    "/oauth/callback",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/oauth/token",
    "/.well-known/jwks.json",
    "/admin",
    "/admin/login",
    "/admin/logout",
    "/admin/connect-links",
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
                    .request(method.clone(), &path)
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(token) = bearer {
                    request = request.bearer(token);
                }
                let status = request.send().await.status().as_u16();
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
    let response = app.get("/metrics").send().await;
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
    let ready = app.get("/readyz").send().await;
    assert_eq!(ready.status(), 200);
}

pub async fn the_audit_trail_records_each_action_and_reads_it_back(
    backend: crate::helpers::Backend,
) {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = crate::helpers::spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("audited").await; // connection.import (admin)
    assert_eq!(app.get_token("audited", "acme", "").await.status(), 200); // token.read + token.refresh
    assert_eq!(app.get_token("nobody", "acme", "").await.status(), 404); // token.read, not_connected
    let link = app.new_link("audited").await; // connect_link.create
    assert_eq!(app.run_signup(&link).await.status(), 200); // connection.connect (tenant)
    let deleted = app
        .delete("/audited/acme/connection")
        .as_admin()
        .send()
        .await;
    assert_eq!(deleted.status(), 200); // connection.delete

    let wanted = [
        ("laputa", "connection.import", "ok"),
        ("extraction", "token.read", "ok"),
        ("tokenbox", "token.refresh", "success"),
        ("laputa", "connect_link.create", "ok"),
        ("tenant", "connection.connect", "ok"),
        ("laputa", "connection.delete", "ok"),
    ];
    let audited = || async {
        let response = app
            .get("/audit?app_id=audited&limit=1000")
            .as_superadmin()
            .send()
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Vec<Value>>().await.unwrap()
    };
    // The audit writer batches: wait for the events, then check them (with their context).
    let _ = holds_eventually(|| async {
        let events = audited().await;
        wanted.iter().all(|w| has(&events, *w))
    })
    .await;
    let events = audited().await;
    for w in wanted {
        assert!(has(&events, w), "missing {w:?} in {events:#?}");
    }
    assert!(
        events.iter().all(|e| e["app_id"] == "audited"),
        "filtered by app"
    );
    let read = events.iter().find(|e| e["action"] == "token.read").unwrap();
    assert_eq!(read["client_addr"], "127.0.0.1");
    assert_eq!(read["connector_type"], "acme");
    assert!(read["at"].as_i64().unwrap() > 1_700_000_000);
    let text = serde_json::to_string(&events).unwrap();
    for secret in app.all_secrets() {
        assert!(!text.contains(&secret), "no secret in the audit trail");
    }

    // The failed read of another app, and the service accounts created by the CLI.
    // Token reads are coalesced for a moment before their row is written: wait for it.
    let out = crate::helpers::eventually("the failed read in the audit trail", || async {
        let (code, out, _) = cli(
            &app.config_path,
            &["audit", "--app", "nobody", "--json"],
            None,
            &[],
        );
        assert_eq!(code, 0);
        out.contains("\"outcome\":\"not_connected\"").then_some(out)
    })
    .await;
    assert!(out.contains("\"outcome\":\"not_connected\""), "{out}");
    let (code, out, _) = cli(&app.config_path, &["audit", "--since", "1h"], None, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("service_account.create") && out.contains("extraction"),
        "{out}"
    );
    let (code, out, _) = cli(
        &app.config_path,
        &["audit", "--since", "2000000000"],
        None,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().count(),
        1,
        "only the header: nothing after that time"
    );

    // Only superadmins read it.
    let response = app.get("/audit").as_admin().send().await;
    assert_eq!(response.status(), 403);
}

fn has(events: &[Value], (principal, action, outcome): (&str, &str, &str)) -> bool {
    events
        .iter()
        .any(|e| e["principal"] == principal && e["action"] == action && e["outcome"] == outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_is_rate_limited_with_retry_after() {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        rate_limit: 5,
        ..crate::helpers::AppOptions::default()
    })
    .await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": crate::helpers::unique("t")}),
    )
    .await;
    let mut limited = None;
    let mut ok = 0;
    for _ in 0..40 {
        let response = app.get_token("acme", "github", "").await;
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited = Some(response);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let limited = limited.expect("the 40 requests in a row were limited");
    assert!(ok >= 10, "the burst (twice the rate) passes: {ok}");
    assert!(crate::binb_token::retry_after_of(&limited) >= 1);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // The limit is per account: the admin still gets through.
    let other = app.get("/acme/github/connection").as_admin().send().await;
    assert_eq!(other.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_oversized_requests_and_odd_paths_are_cut_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        extra_config: "slow_client_timeout_seconds = 1\n".into(),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_string();

    // Headers that never finish: the connection is closed after the timeout (the deadline of
    // the read only guards against a hang).
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        slow.read_to_end(&mut buf),
    )
    .await
    .expect("the server closed the connection");
    assert!(read.is_ok());

    // A body that never finishes: 408.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /acme/github/connection HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n{{\"access",
        app.admin
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), slow.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body over the limit: 413.
    let big = format!("{{\"access_token\": \"{}\"}}", "x".repeat(100 * 1024));
    let response = app
        .put("/acme/github/connection")
        .as_admin()
        .body(big)
        .send()
        .await;
    assert_eq!(response.status(), 413);

    // Headers over the limit (16 KiB): refused before any handler, with a 431.
    let mut oversized = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nx-padding: {}\r\n\r\n",
        "y".repeat(20 * 1024)
    );
    oversized.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        oversized.read_to_end(&mut answer),
    )
    .await
    .expect("an answer to oversized headers");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized headers: {answer:?}"
    );

    // Path segments: too long or outside the charset.
    for path in [
        format!("/{}/github/binb-token", "a".repeat(64)),
        "/a%2Fb/github/binb-token".to_string(),
    ] {
        let response = app.get(&path).as_superadmin().send().await;
        assert_eq!(response.status(), 400, "{path}");
    }
    // The server still serves.
    let health = app.get("/healthz").send().await;
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_of_the_table() {
    let app = spawn_app(None).await;
    let doc: Value = app.get("/openapi.json").send().await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let (_, table, _) = cli(&app.config_path, &["routes"], None, &[]);
    let table: Vec<Value> = serde_json::from_str(&table).unwrap();
    for route in &table {
        let path = route["path"].as_str().unwrap();
        let described = &doc["paths"][path];
        if route["passthrough"] == true {
            // The proxy passes the provider's API through: documented in the README, not here.
            assert!(described.is_null(), "{path} passes through");
            continue;
        }
        assert!(
            described.is_object(),
            "{path} is not in the OpenAPI document"
        );
        for method in route["methods"].as_array().unwrap() {
            let method = method.as_str().unwrap().to_lowercase();
            let operation = &described[&method];
            assert!(operation.is_object(), "{method} {path} is not described");
            let secured = operation["security"].is_array();
            assert_eq!(
                secured,
                route["access"] != "public",
                "{method} {path}: security"
            );
        }
    }
    let documented: usize = doc["paths"].as_object().unwrap().len();
    let passthrough = table.iter().filter(|r| r["passthrough"] == true).count();
    assert_eq!(passthrough, 1, "the proxy is the one passthrough route");
    assert_eq!(
        documented,
        table.len() - passthrough,
        "the document describes no route the table lacks"
    );
}

pub async fn scoped_and_expiring_service_accounts_are_held_to_their_scope(
    backend: crate::helpers::Backend,
) {
    // The server reads the accounts on every request: the CLI's changes apply at once.
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        extra_config: "accounts_cache_seconds = 0\n".into(),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    for (app_id, ct) in [
        ("acme-1", "github"),
        ("beta", "github"),
        ("acme-1", "hubspot"),
    ] {
        app.import_ok(
            app_id,
            ct,
            &serde_json::json!({"access_token": crate::helpers::unique("t")}),
        )
        .await;
    }
    let scoped = cli_ok(
        &app.config_path,
        &[
            "service-account",
            "create",
            "acme-jobs",
            "--role",
            "superadmin",
            "--apps",
            "acme-*",
            "--connector-types",
            "github",
        ],
        None,
    )
    .trim()
    .to_string();
    app.remember_secret(&scoped);
    let (_, listing, _) = cli(&app.config_path, &["service-account", "list"], None, &[]);
    assert!(
        listing.contains("apps=acme-* connector_types=github"),
        "{listing}"
    );

    assert_eq!(
        app.get_token_as(&scoped, "acme-1", "github", "")
            .await
            .status(),
        200
    );
    for (app_id, ct, reason) in [
        ("beta", "github", "outside the account's apps"),
        ("acme-1", "hubspot", "outside the account's connector types"),
    ] {
        let response = app.get_token_as(&scoped, app_id, ct, "").await;
        assert_eq!(response.status(), 403, "{app_id}/{ct}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
    for path in ["/audit", "/connector-types"] {
        let response = app.get(path).bearer(&scoped).send().await;
        assert_eq!(response.status(), 403, "{path}");
    }
    // The unrestricted superadmin still reads everything.
    assert_eq!(app.get_token("beta", "github", "").await.status(), 200);

    // An expired account is refused.
    let expiring = cli_ok(
        &app.config_path,
        &[
            "service-account",
            "create",
            "short-lived",
            "--role",
            "superadmin",
            "--expires-in",
            "3600",
        ],
        None,
    )
    .trim()
    .to_string();
    app.remember_secret(&expiring);
    let response = app.get_token_as(&expiring, "beta", "github", "").await;
    assert_eq!(response.status(), 200, "valid until it expires");
    // Its expiry comes: brought forward in the database rather than waited for.
    app.execute_sql(&format!(
        "UPDATE service_accounts SET expires_at = {} WHERE name = 'short-lived'",
        crate::helpers::now() - 1
    ))
    .await;
    let response = app.get_token_as(&expiring, "beta", "github", "").await;
    assert_eq!(response.status(), 401, "refused once expired");
    let (code, _, stderr) = cli(
        &app.config_path,
        &[
            "service-account",
            "create",
            "x",
            "--role",
            "admin",
            "--apps",
            "Not/Valid",
        ],
        None,
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("--apps"), "{stderr}");
}
