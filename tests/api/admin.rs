//! The /admin status page: cookie login, the connections that need attention first, new
//! links, logout; in a real headless Chromium too.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{json_of, spawn_app, unique, TestApp};

async fn seed(app: &TestApp) {
    for (app_id, ct) in [
        ("healthy-1", "github"),
        ("healthy-2", "hubspot"),
        ("broken-7", "acme"),
    ] {
        app.import(
            app_id,
            ct,
            &serde_json::json!({"access_token": unique("t"), "expires_in": 3600}),
        )
        .await;
    }
    app.execute_sql(
        "UPDATE connections SET status = 'reauthorization_required', \
         last_error = 'the provider refused the refresh token (invalid_grant)' WHERE app_id = 'broken-7'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_need_the_cookie_and_a_wrong_token_says_nothing_more() {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = spawn_app(Some(&provider)).await;
    seed(&app).await;
    for (method, path) in [("GET", "/admin"), ("POST", "/admin/connect-links")] {
        let response = app
            .client
            .request(method.parse().unwrap(), format!("{}{path}", app.address))
            .bearer_auth(&app.superadmin) // a bearer is not the cookie
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{method} {path}");
        assert_eq!(response.headers()["location"], "/admin/login");
    }
    let wrong = |token: String| {
        let client = app.client.clone();
        let url = format!("{}/admin/login", app.address);
        async move {
            let r = client
                .post(url)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status_unknown, page_unknown) = wrong("tbx_does_not_exist".into()).await;
    let (status_bad, page_bad) = wrong(format!("{}x", app.admin)).await;
    assert_eq!((status_unknown, status_bad), (401, 401));
    assert_eq!(
        page_unknown, page_bad,
        "the same answer whether the account exists or not"
    );

    let login = app
        .client
        .post(format!("{}/admin/login", app.address))
        .form(&[("token", app.admin.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_string();
    let status = app
        .client
        .get(format!("{}/admin", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let html = status.text().await.unwrap();
    let attention = html.find("id=\"attention\"").unwrap();
    assert!(html[attention..].contains("broken-7"));
    assert!(!html.contains("<script"));
    let _: Value = json_of(
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_sees_the_broken_connection_first_makes_a_link_and_signs_out() {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = spawn_app(Some(&provider)).await;
    seed(&app).await;
    let screenshots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e");
    let out = Command::new("node")
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/e2e/admin-browser.mjs"),
        )
        .args([
            "--base",
            &app.address,
            "--token",
            &app.admin,
            "--screenshots",
        ])
        .arg(&screenshots)
        .output()
        .expect("node (scripts/e2e-setup.sh installs the browser tooling)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert!(
        result["first_attention"]
            .as_str()
            .unwrap()
            .contains("broken-7"),
        "{result}"
    );
    let link = result["link"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/connect/", app.address)),
        "{link}"
    );
    app.remember_secret(link.rsplit('/').next().unwrap());
    assert!(result["after_logout"]
        .as_str()
        .unwrap()
        .ends_with("/admin/login"));
    assert!(result["admin_after_logout"]
        .as_str()
        .unwrap()
        .ends_with("/admin/login"));
    for shot in ["admin-login.png", "admin-status.png", "admin-new-link.png"] {
        assert!(screenshots.join(shot).exists(), "{shot}");
    }
    // The link works: its page names the app.
    let page = app
        .client
        .get(link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("broken-7"));
}
