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
        app.import_ok(
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
            .request(method.parse().unwrap(), path)
            .as_superadmin() // a bearer is not the cookie
            .send()
            .await;
        assert_eq!(response.status(), 303, "{method} {path}");
        assert_eq!(response.headers()["location"], "/admin/login");
    }
    let wrong = |token: String| {
        let request = app.post("/admin/login").form(&[("token", token)]);
        async move {
            let r = request.send().await;
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
        .post("/admin/login")
        .form(&[("token", app.admin.clone())])
        .send()
        .await;
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_string();
    let status = app.get("/admin").header("cookie", &cookie).send().await;
    assert_eq!(status.status(), 200);
    let html = status.text().await.unwrap();
    let attention = html.find("id=\"attention\"").unwrap();
    assert!(html[attention..].contains("broken-7"));
    assert!(!html.contains("<script"));
    let health = app.get("/healthz").send().await;
    assert_eq!(health.status(), 200);
    let health: Value = json_of(health).await;
    assert_eq!(health, serde_json::json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_sees_the_broken_connection_first_makes_a_link_and_signs_out() {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = spawn_app(Some(&provider)).await;
    seed(&app).await;
    let screenshots = crate::helpers::fresh_screenshot_dir("admin");
    let out = crate::helpers::output_within(
        Command::new("node")
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
            .arg(&screenshots),
        None,
        crate::helpers::COMMAND_DEADLINE,
    );
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

/// Signs in with `token`: the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let login = app
        .post("/admin/login")
        .form(&[("token", token)])
        .send()
        .await;
    assert_eq!(login.status(), 303, "signed in");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    app.remember_secret(cookie.split_once('=').unwrap().1);
    cookie
}

/// GET /admin with the cookie: (status, page).
async fn status_page(app: &TestApp, cookie: &str) -> (u16, String) {
    let r = app.get("/admin").header("cookie", cookie).send().await;
    (r.status().as_u16(), r.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[start..].split('"').next().unwrap().to_string()
}

/// Issue 11, item 9: the cookie carried the raw service-account token and sign-out only
/// cleared the browser's copy. Now: a random session id, ended on the server at sign-out;
/// forms need the session's CSRF token and cross-site posts are refused.
pub async fn the_admin_cookie_is_a_server_side_session_and_cross_site_posts_are_refused(
    backend: crate::helpers::Backend,
) {
    let provider = crate::helpers::FakeProvider::start().await;
    let app = crate::helpers::spawn_app_on(backend, Some(&provider)).await;
    seed(&app).await;
    let cookie = sign_in(&app, &app.admin).await;
    let value = cookie.split_once('=').unwrap().1.to_string();
    assert!(
        !value.contains(&app.admin) && !app.admin.contains(&value),
        "the cookie does not carry the account token"
    );
    assert_eq!(
        app.query_strings("SELECT account FROM admin_sessions")
            .await,
        vec!["laputa".to_string()]
    );
    let (status, html) = status_page(&app, &cookie).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&html);
    assert_ne!(csrf, value, "the CSRF token is not the session id");

    // Cross-site posts of the "new link" form: refused, no link created.
    let post = |extra: Vec<(&'static str, String)>, headers: Vec<(&'static str, String)>| {
        let mut form = vec![
            ("app_id", "broken-7".to_string()),
            ("connector_type", "acme".to_string()),
        ];
        form.extend(extra);
        let mut request = app
            .post("/admin/connect-links")
            .header("cookie", &cookie)
            .form(&form);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let r = request.send().await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (what, extra, headers) in [
        ("no CSRF token", vec![], vec![]),
        ("a wrong CSRF token", vec![("csrf", "A".repeat(43))], vec![]),
        (
            "a foreign Origin",
            vec![("csrf", csrf.clone())],
            vec![("origin", "http://evil.example".to_string())],
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![("csrf", csrf.clone())],
            vec![("sec-fetch-site", "cross-site".to_string())],
        ),
    ] {
        let (status, html) = post(extra, headers).await;
        assert_eq!(status, 403, "{what}");
        assert!(
            html.contains("data-error=\"cross_site_request\""),
            "{what}: {html}"
        );
    }
    assert!(
        app.query_strings("SELECT app_id FROM connect_links")
            .await
            .is_empty(),
        "no link was created"
    );
    // The page's own form, as a browser sends it.
    let (status, html) = post(
        vec![("csrf", csrf.clone())],
        vec![
            ("origin", app.address.clone()),
            ("sec-fetch-site", "same-origin".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    let start = html.find("id=\"link\"").unwrap();
    let link = html[start..]
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    app.remember_secret(link.rsplit('/').next().unwrap());

    // A login form posted from another site is refused too (login CSRF).
    let response = app
        .post("/admin/login")
        .header("origin", "http://evil.example")
        .form(&[("token", app.admin.clone())])
        .send()
        .await;
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());

    // Sign-out without the CSRF token does nothing; with it, the session ends on the server.
    let logout = |fields: Vec<(&'static str, String)>| {
        let request = app
            .post("/admin/logout")
            .header("cookie", &cookie)
            .form(&fields);
        async move { request.send().await.status().as_u16() }
    };
    assert_eq!(logout(vec![]).await, 403);
    assert_eq!(status_page(&app, &cookie).await.0, 200, "still signed in");
    assert_eq!(logout(vec![("csrf", csrf.clone())]).await, 303);
    // The old cookie, replayed: refused by the server.
    let (status, _) = status_page(&app, &cookie).await;
    assert_eq!(status, 303, "the old cookie is refused after sign-out");
    let (status, _) = post(vec![("csrf", csrf.clone())], vec![]).await;
    assert_eq!(status, 303);
    assert!(app
        .query_strings("SELECT account FROM admin_sessions")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_session_expires_after_its_configured_lifetime() {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        extra_config: "admin_session_seconds = 3\n".into(),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let login = app
        .post("/admin/login")
        .form(&[("token", app.admin.clone())])
        .send()
        .await;
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("Max-Age=3"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    app.remember_secret(cookie.split_once('=').unwrap().1);
    assert_eq!(status_page(&app, &cookie).await.0, 200);
    // The client keeps sending the cookie; the server refuses it once the session expired.
    assert!(
        crate::helpers::holds_eventually(|| async { status_page(&app, &cookie).await.0 == 303 })
            .await,
        "the session never expired"
    );
}

/// Issue 11, item 14: /admin accepted expired accounts, and refusals of real accounts were
/// audited as `anonymous`. Sessions also end when their account expires or is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sign_in_refuses_expired_accounts_and_refusals_are_audited_by_name() {
    let app = crate::helpers::spawn_app(None).await;
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["service-account", "create", name, "--role", "admin"];
        args.extend_from_slice(extra);
        let token = crate::helpers::cli_ok(&app.config_path, &args, None)
            .trim()
            .to_string();
        app.remember_secret(&token);
        token
    };
    let old = create("old-admin", &["--expires-in", "3600"]);
    let scoped = create("scoped-admin", &["--apps", "x-*"]);
    app.execute_sql(&format!(
        "UPDATE service_accounts SET expires_at = {} WHERE name = 'old-admin'",
        crate::helpers::now() - 10
    ))
    .await;
    let audit = || async {
        app.get("/audit?limit=1000")
            .as_superadmin()
            .send()
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
    };
    let refused_as = |events: &[Value], principal: &str, action: &str| {
        events
            .iter()
            .any(|e| e["principal"] == principal && e["action"] == action && e["outcome"] != "ok")
    };
    for (token, name) in [(&old, "old-admin"), (&scoped, "scoped-admin")] {
        assert!(
            crate::helpers::holds_eventually(|| async {
                let response = app
                    .post("/admin/login")
                    .form(&[("token", token.as_str())])
                    .send()
                    .await;
                assert_eq!(response.status(), 401, "{name} may not sign in");
                assert!(response.headers().get("set-cookie").is_none());
                refused_as(&audit().await, name, "admin.login")
            })
            .await,
            "the refusal of {name} is audited under its name"
        );
    }
    // The API: an expired account at the token endpoint, an admin on a superadmin route.
    let response = app
        .post("/oauth/token")
        .basic_auth("old-admin", Some(&old))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        app.get_token_as(&app.admin, "a", "github", "")
            .await
            .status(),
        403
    );
    assert!(
        crate::helpers::holds_eventually(|| async {
            let events = audit().await;
            refused_as(&events, "old-admin", "client_credentials.token")
                && refused_as(&events, "laputa", "token.read")
        })
        .await,
        "API refusals of real accounts are audited under their names: {:#?}",
        audit().await
    );

    // A session ends when its account is revoked, or expires.
    for (name, end) in [("gone-admin", "revoke"), ("ageing-admin", "expire")] {
        let token = create(name, &[]);
        let cookie = sign_in(&app, &token).await;
        assert_eq!(status_page(&app, &cookie).await.0, 200);
        if end == "revoke" {
            crate::helpers::cli_ok(&app.config_path, &["service-account", "revoke", name], None);
        } else {
            app.execute_sql(&format!(
                "UPDATE service_accounts SET expires_at = {} WHERE name = '{name}'",
                crate::helpers::now() - 1
            ))
            .await;
        }
        assert!(
            crate::helpers::holds_eventually(|| async {
                status_page(&app, &cookie).await.0 == 303
            })
            .await,
            "{name}: the session outlived its account"
        );
    }
}

/// Issue 11, item 14: a key file readable by others was accepted without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_warned_about_at_startup() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = crate::helpers::spawn_app(None).await;
    let warning = "encryption key file can be read or written by its group or by others";
    assert!(!app.logs().contains(warning), "mode 0600: no warning");
    let key = app.dir.join("encryption.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    app.restart();
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("no warning: {logs}"));
    assert!(
        line.contains("WARN") && line.contains("0644") && line.contains("chmod 600"),
        "{line}"
    );
}
