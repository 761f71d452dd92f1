//! The connection listing: filters, pagination, and nothing secret.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::{cli, json_of, now, spawn_app_on, unique, Backend, TestApp};

async fn page(app: &TestApp, query: &str) -> Value {
    let response = app
        .get(&format!("/connections?{query}"))
        .as_admin()
        .send()
        .await;
    assert_eq!(response.status(), 200, "{query}");
    json_of(response).await
}

pub async fn the_listing_filters_pages_without_gaps_and_shows_no_secret(backend: Backend) {
    let app = spawn_app_on(backend, None).await;
    // 2,500 connections: 2,400 github ones written straight into the table (the listing never
    // decrypts, so a placeholder ciphertext does), and 100 hubspot ones imported with real tokens.
    let blob = if app.pg.is_some() {
        "'\\x01'::bytea"
    } else {
        "X'01'"
    };
    for chunk in (0..2400).collect::<Vec<_>>().chunks(400) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('app-{i:04}', 'github', 'active', {blob}, {}, 1, 1, '{{}}')",
                    now() + 86400
                )
            })
            .collect();
        app.execute_sql(&format!(
            "INSERT INTO connections (app_id, connector_type, status, access_token, expires_at, \
             created_at, updated_at, metadata) VALUES {}",
            values.join(", ")
        ))
        .await;
    }
    let mut secrets = Vec::new();
    for i in 0..100 {
        let token = unique("soon-at");
        app.import_ok(
            &format!("zz-{i:03}"),
            "hubspot",
            &json!({"access_token": token, "expires_at": now() + 600}),
        )
        .await;
        secrets.push(token);
    }
    for s in &secrets {
        app.remember_secret(s);
    }
    // Two of them broken.
    app.execute_sql("UPDATE connections SET status = 'reauthorization_required', last_error = 'revoked' WHERE app_id IN ('app-0007', 'zz-042')")
        .await;

    // Every page, in order, no gap, no duplicate.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=1000&cursor={c}"),
            None => "limit=1000".to_string(),
        };
        let body = page(&app, &query).await;
        pages += 1;
        let text = body.to_string();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a token appears in the listing");
        }
        for c in body["connections"].as_array().unwrap() {
            assert!(c.get("access_token").is_none() && c.get("refresh_token").is_none());
            seen.push(format!(
                "{}/{}",
                c["app_id"].as_str().unwrap(),
                c["connector_type"].as_str().unwrap()
            ));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2500);
    let unique_seen: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique_seen.len(), 2500, "no duplicates");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "stable order");

    // Filters.
    let broken = page(&app, "status=reauthorization_required").await;
    let broken: Vec<&str> = broken["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["app_id"].as_str().unwrap())
        .collect();
    assert_eq!(broken, ["app-0007", "zz-042"]);
    let hubspot = page(&app, "connector_type=hubspot&limit=1000").await;
    assert_eq!(hubspot["connections"].as_array().unwrap().len(), 100);
    let prefixed = page(&app, "app_id_prefix=app-001&limit=1000").await;
    assert_eq!(
        prefixed["connections"].as_array().unwrap().len(),
        10,
        "app-0010 to app-0019"
    );
    let expiring = page(&app, "expiring_within=3600&limit=1000").await;
    assert_eq!(
        expiring["connections"].as_array().unwrap().len(),
        100,
        "the hubspot ones"
    );
    // Absurd windows are not an overflow.
    let all = page(&app, "expiring_within=9223372036854775807&limit=1000").await;
    assert!(!all["connections"].as_array().unwrap().is_empty());
    for bad in [
        "limit=0",
        "limit=1001",
        "status=broken",
        "cursor=nope",
        "app_id_prefix=A%2F",
    ] {
        let response = app
            .get(&format!("/connections?{bad}"))
            .as_admin()
            .send()
            .await;
        assert_eq!(response.status(), 400, "{bad}");
    }

    // The CLI: an aligned table, or JSON lines.
    let (code, table, _) = cli(
        &app.config_path,
        &["connection", "list", "--status", "reauthorization_required"],
        None,
        &[],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("APP")
            && lines[1].contains("app-0007")
            && lines[1].contains("revoked")
    );
    let (code, json_lines, _) = cli(
        &app.config_path,
        &[
            "connection",
            "list",
            "--connector-type",
            "hubspot",
            "--format",
            "json",
        ],
        None,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(json_lines.lines().count(), 100);
    for s in &secrets {
        assert!(!json_lines.contains(s.as_str()) && !table.contains(s.as_str()));
    }
}
