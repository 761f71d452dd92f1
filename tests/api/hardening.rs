//! The HTTP layer under attack: encoded paths, stolen JWTs, slow clients, connection floods,
//! anonymous request floods, and the retention of the audit trail and the webhook outbox.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{cli, create_superadmin, json_of, unique, Backend, TestApp};

async fn client_credentials(app: &TestApp, id: &str, secret: &str) -> reqwest::Response {
    app.post("/oauth/token")
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
}

/// Item 8: a JWT stolen from an account stays dead when the account is revoked and created
/// again under the same name (the name is the client id).
pub async fn a_stolen_jwt_stays_dead_when_its_account_is_recreated_under_the_same_name(
    backend: Backend,
) {
    let app = crate::helpers::spawn_app_on(backend, None).await;
    app.import_ok("acme", "github", &json!({"access_token": unique("t")}))
        .await;
    let first = create_superadmin(&app, "jobs", &[]);
    let response = crate::helpers::eventually("the new account to be known", || async {
        let r = client_credentials(&app, "jobs", &first).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let stolen = json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    app.remember_secret(&stolen);
    assert_eq!(
        app.get_token_as(&stolen, "acme", "github", "")
            .await
            .status(),
        200
    );

    // The account is revoked, then created again under the same name.
    let (code, _, stderr) = cli(
        &app.config_path,
        &["service-account", "revoke", "jobs"],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let second = create_superadmin(&app, "jobs", &[]);
    let response = crate::helpers::eventually("the re-created account to be known", || async {
        let r = client_credentials(&app, "jobs", &second).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let fresh = json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    app.remember_secret(&fresh);

    // The re-created account's JWT works; the stolen one is refused (the server re-reads the
    // accounts within seconds).
    assert_eq!(
        app.get_token_as(&fresh, "acme", "github", "")
            .await
            .status(),
        200
    );
    crate::helpers::eventually("the stolen JWT to be refused", || async {
        let status = app
            .get_token_as(&stolen, "acme", "github", "")
            .await
            .status();
        (status == 401).then_some(())
    })
    .await;
    assert_eq!(
        app.get_token_as(&fresh, "acme", "github", "")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_token_as(&stolen, "acme", "github", "")
            .await
            .status(),
        401
    );
}

/// Item 3: a percent-encoded path is the same connection to the audit trail, the access log
/// and the scope check as to the handler.
pub async fn percent_encoded_paths_are_audited_and_scoped_like_plain_ones(backend: Backend) {
    let app = crate::helpers::spawn_app_on(backend, None).await;
    for app_id in ["acme-1", "foomev", "foodev"] {
        app.import_ok(app_id, "github", &json!({"access_token": unique("t")}))
            .await;
    }

    // The attack on the audit trail: the encoded path reads acme-1's token...
    let response = app.get_token("%61cme-1", "%67ithub", "").await;
    let status = response.status();
    assert!(status == 200 || status == 400, "{status}");
    // ...and is audited as a read of acme-1's github connection (or refused).
    let event = crate::helpers::eventually("the audit event of the encoded read", || async {
        let events = json_of(app.get("/audit?limit=1000").as_superadmin().send().await).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "token.read")
            .cloned()
    })
    .await;
    if status == 200 {
        assert_eq!(event["app_id"], "acme-1", "{event}");
        assert_eq!(event["connector_type"], "github", "{event}");
    }

    // The attack on the scope: an account limited to apps ending in "dev".
    let scoped = create_superadmin(&app, "dev-jobs", &["--apps", "*dev"]);
    crate::helpers::eventually("the scoped account to be known", || async {
        let status = app
            .get_token_as(&scoped, "foodev", "github", "")
            .await
            .status();
        (status == 200).then_some(())
    })
    .await;
    for path in ["foomev", "foo%6dev", "foo%6Dev", "%66oomev"] {
        let response = app.get_token_as(&scoped, path, "github", "").await;
        assert_eq!(response.status(), 403, "/{path}/github/binb-token");
        assert_eq!(json_of(response).await["error"], "forbidden");
    }
    // What the scope allows still works when encoded.
    assert_eq!(
        app.get_token_as(&scoped, "foo%64ev", "github", "")
            .await
            .status(),
        200
    );
}

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or resets it); the deadline only guards
/// against a hang.
async fn read_to_close(stream: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the server neither answered nor closed the connection");
    String::from_utf8_lossy(&received).into_owned()
}

/// Item 10: a client that trickles its body, one byte at a time, well within the gap allowed
/// between two chunks, is cut off by the whole-body deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_is_cut_off() {
    let backend = Backend::Sqlite;
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        extra_config: "body_timeout_seconds = 1\nslow_client_timeout_seconds = 30\n".into(),
        ..Default::default()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(host_port(&app))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n",
        )
        .await
        .unwrap();
    // The attack: one byte every 100 ms, never finishing (an hour and a half of body, under
    // the size limit). The interval is the attacker's pace, not a synchronisation: the test
    // waits for the server to close the connection.
    let trickle = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            pace.tick().await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut reader).await;
    trickle.abort();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "cut off with 408 or a closed connection, got: {answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("\"request_timeout\""), "{answer}");
    }
}

async fn healthz_over(stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncWriteExt;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut reader).await
}

/// Item 10: with `max_connections` = 3, three idle connections held open leave no room for a
/// fourth, which is told so at once (503) and closed; once one is released, new connections
/// are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_until_one_is_released() {
    let backend = Backend::Sqlite;
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        // Idle connections are not cut off during the test.
        extra_config: "max_connections = 3\nslow_client_timeout_seconds = 600\n".into(),
        ..Default::default()
    })
    .await;
    let address = host_port(&app);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // The server accepts in order: the fourth connection finds the three slots taken.
    let fourth = tokio::net::TcpStream::connect(&address).await.unwrap();
    let answer = healthz_over(fourth).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "refused, got: {answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("\"too_many_connections\""), "{answer}");
        assert!(!answer.contains("\"status\":\"ok\""), "{answer}");
    }

    // One of the held connections goes away: a new connection is served.
    drop(held.pop());
    let served =
        crate::helpers::eventually("a connection to be served after one was released", || {
            let address = address.clone();
            async move {
                let stream = tokio::net::TcpStream::connect(&address).await.ok()?;
                let answer = healthz_over(stream).await;
                answer.starts_with("HTTP/1.1 200").then_some(answer)
            }
        })
        .await;
    assert!(served.contains("\"status\":\"ok\""), "{served}");
    drop(held);
}

fn count_of(rows: &[String]) -> i64 {
    rows.first().unwrap().parse().unwrap()
}

/// Item 12: fifty anonymous requests (no token, a wrong token) cost a couple of audit rows,
/// and the count of refusals is still recorded.
pub async fn anonymous_refusals_are_aggregated_in_the_audit_trail(backend: Backend) {
    let mut app = crate::helpers::spawn_app_on(backend, None).await;
    for i in 0..50 {
        let mut request = app.get(&format!("/acme-{i}/github/binb-token"));
        if i % 2 == 0 {
            request = request.bearer("tbx_not-a-real-token");
        }
        assert_eq!(request.send().await.status(), 401);
    }
    // One authenticated, audited action is written as its own row, as before.
    assert_eq!(app.get_token("acme", "github", "").await.status(), 404);
    // A graceful stop writes what the audit writer counted.
    app.stop();
    let rows = app
        .query_strings(
            "SELECT CAST(count AS TEXT) FROM audit_events \
             WHERE principal = 'anonymous' AND action = 'token.read'",
        )
        .await;
    assert!(
        !rows.is_empty() && rows.len() <= 2,
        "50 anonymous refusals in {} rows",
        rows.len()
    );
    let total: i64 = rows.iter().map(|c| c.parse::<i64>().unwrap()).sum();
    assert_eq!(total, 50, "every refusal is counted");
    let outcome = app
        .query_strings(
            "SELECT outcome FROM audit_events WHERE principal = 'anonymous' AND action = 'token.read'",
        )
        .await;
    assert!(outcome.iter().all(|o| o == "unauthorized"), "{outcome:?}");
    assert_eq!(
        count_of(
            &app.query_strings(
                "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events WHERE principal = 'extraction'"
            )
            .await
        ),
        1
    );
}

/// Item 12: audit events and delivered webhooks past their retention are pruned; recent ones
/// and webhooks still to deliver are kept.
pub async fn old_audit_events_and_delivered_webhooks_are_pruned(backend: Backend) {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        extra_config:
            "audit_retention_days = 7\nwebhook_retention_days = 3\nprune_interval_seconds = 1\n"
                .into(),
        ..Default::default()
    })
    .await;
    let now = crate::helpers::now();
    let day = 86_400;
    let (old_audit, recent_audit) = (now - 8 * day, now - 6 * day);
    app.execute_sql(&format!(
        "INSERT INTO audit_events (at, principal, action, outcome) VALUES \
         ({old_audit}, 'old', 'token.read', 'ok'), ({old_audit}, 'old', 'token.read', 'ok'), \
         ({recent_audit}, 'recent', 'token.read', 'ok')"
    ))
    .await;
    let (old_hook, recent_hook) = (now - 4 * day, now - 2 * day);
    app.execute_sql(&format!(
        "INSERT INTO webhook_deliveries (endpoint_url, event_type, body, created_at, \
         next_attempt_at, delivered_at) VALUES \
         ('https://old.example.com/', 'connection.created', '{{}}', {old_hook}, {old_hook}, {old_hook}), \
         ('https://recent.example.com/', 'connection.created', '{{}}', {recent_hook}, {recent_hook}, {recent_hook}), \
         ('https://pending.example.com/', 'connection.created', '{{}}', {old_hook}, {now}, NULL)"
    ))
    .await;
    crate::helpers::eventually("the old rows to be pruned", || async {
        let audit = count_of(
            &app.query_strings(
                "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events WHERE principal = 'old'",
            )
            .await,
        );
        let hooks = count_of(
            &app.query_strings(
                "SELECT CAST(COUNT(*) AS TEXT) FROM webhook_deliveries \
                 WHERE endpoint_url = 'https://old.example.com/'",
            )
            .await,
        );
        (audit == 0 && hooks == 0).then_some(())
    })
    .await;
    let kept = app
        .query_strings("SELECT principal FROM audit_events WHERE principal = 'recent'")
        .await;
    assert_eq!(kept.len(), 1, "a recent audit event is kept");
    let mut hooks = app
        .query_strings("SELECT endpoint_url FROM webhook_deliveries")
        .await;
    hooks.sort();
    assert_eq!(
        hooks,
        [
            "https://pending.example.com/",
            "https://recent.example.com/"
        ],
        "recent and undelivered webhooks are kept"
    );
}
