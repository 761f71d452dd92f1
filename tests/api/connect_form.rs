//! The connect link of an `api_key` or `basic` connector type: a form with the catalog's
//! labelled fields, bound to the browser that opened it, that verifies the credential with the
//! provider before storing it (`KindsProvider` checks what it receives).

use serde_json::json;

use crate::helpers::{
    json_of, location, set_cookies, spawn_app_with, AppOptions, Backend, TestApp,
};
use crate::kinds::KindsProvider;

/// The connector types of these tests, on the provider's `/keyed` and `/basic` APIs.
fn form_config(provider: &KindsProvider) -> String {
    let url = &provider.url;
    format!(
        r#"{base}
[connector_types.form-key]
kind = "api_key"
display_name = "Keyed API"
api_base_url = "{url}/keyed"
api_key_header = "X-Api-Key"
verify_url = "{url}/keyed/me"
api_headers = {{ Api-Version = "2024-01" }}
placeholders = {{ region = {{ pattern = "dns_label" }} }}
help = "Find the key under Settings, then API."
help_url = "{url}/help/{{region}}/api-keys"

[connector_types.form-basic]
kind = "basic"
display_name = "Basic API"
api_base_url = "{url}/basic"
verify_url = "{url}/basic/me"
field_labels = {{ username = "API ID", password = "API token" }}
"#,
        base = provider.config()
    )
}

pub(crate) async fn app_for(backend: Backend, provider: &KindsProvider) -> TestApp {
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: form_config(provider),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&provider.api_key());
    app.remember_secret(&provider.password());
    app
}

pub(crate) async fn new_link(
    app: &TestApp,
    app_id: &str,
    connector_type: &str,
    body: serde_json::Value,
) -> String {
    let response = app.create_link(app_id, connector_type, &body).await;
    assert_eq!(response.status(), 201, "a link for {connector_type}");
    let url = json_of(response).await["url"].as_str().unwrap().to_string();
    app.remember_secret(url.rsplit('/').next().unwrap());
    url
}

/// The form as one browser sees it: its page, its single-use token and its cookie.
struct Form {
    html: String,
    token: String,
    cookie: (String, String),
}

impl Form {
    fn cookie_header(&self) -> String {
        format!("{}={}", self.cookie.0, self.cookie.1)
    }
}

/// Reads the form out of a page that shows it (the link's page, or the form shown again).
async fn form_of(app: &TestApp, response: reqwest::Response) -> Form {
    let cookies = set_cookies(&response);
    let html = response.text().await.unwrap();
    let marker = "name=\"form_token\" value=\"";
    let start = html.find(marker).expect("the form carries its token") + marker.len();
    let token = html[start..][..html[start..].find('"').unwrap()].to_string();
    let cookie = cookies
        .into_iter()
        .find(|(name, _)| name.starts_with("tokenbox_signup_"))
        .expect("the form comes with the cookie that binds it to this browser");
    app.remember_secret(&token);
    app.remember_secret(&cookie.1);
    Form {
        html,
        token,
        cookie,
    }
}

async fn open(app: &TestApp, link: &str) -> Form {
    let response = app.client.get(link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    form_of(app, response).await
}

/// Posts the form's fields as a browser does, with `cookie` (or none).
async fn post(
    app: &TestApp,
    link: &str,
    cookie: Option<String>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app.client.post(format!("{link}/credential")).form(fields);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

async fn not_stored(app: &TestApp, app_id: &str, connector_type: &str) {
    assert_eq!(
        app.get_token(app_id, connector_type, "").await.status(),
        404,
        "nothing was stored for {app_id}/{connector_type}"
    );
}

pub async fn a_wrong_api_key_shows_the_form_again_and_the_right_one_is_stored_and_served(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let app = app_for(backend, &provider).await;
    let key = provider.api_key();
    let link = new_link(
        &app,
        "acme",
        "form-key",
        json!({"params": {"region": "eu"}}),
    )
    .await;
    let secret = link.rsplit('/').next().unwrap().to_string();

    // The page: one labelled password field, the help with its link (placeholder filled from
    // the link's params), the headers of every page, and a cookie only the form's post gets.
    let response = app.client.get(&link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let set_cookie = headers["set-cookie"].to_str().unwrap().to_string();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        &format!("Path=/connect/{secret}/credential"),
    ] {
        assert!(set_cookie.contains(part), "{part} in {set_cookie}");
    }
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let form = form_of(&app, response).await;
    assert!(
        form.html.contains(
            "<label for=\"api_key\">API key</label><input id=\"api_key\" name=\"api_key\" type=\"password\""
        ),
        "{}",
        form.html
    );
    assert!(!form.html.contains("name=\"username\""));
    assert!(form.html.contains("Find the key under Settings, then API."));
    assert!(form
        .html
        .contains(&format!("href=\"{}/help/eu/api-keys\"", provider.url)));
    let action = format!("method=\"post\" action=\"/connect/{secret}/credential\"");
    assert!(form.html.contains(&action), "{}", form.html);

    // A wrong key: the form again with the reason, the key not echoed, nothing stored.
    let wrong = "wrong-key-typed-by-the-tenant";
    app.remember_secret(wrong);
    let response = post(
        &app,
        &link,
        Some(form.cookie_header()),
        &[("form_token", &form.token), ("api_key", wrong)],
    )
    .await;
    assert_eq!(response.status(), 422);
    let again = form_of(&app, response).await;
    assert!(
        again.html.contains("The provider refused this key"),
        "{}",
        again.html
    );
    assert!(again.html.contains("data-error=\"invalid_credentials\""));
    assert!(!again.html.contains(wrong), "the typed key is never echoed");
    assert_ne!(again.token, form.token, "a new single-use token");
    assert!(
        again.html.contains(&action),
        "the form shown again posts to the same path"
    );
    assert_eq!(provider.verifications(), 1, "the provider checked the key");
    not_stored(&app, "acme", "form-key").await;

    // The spent form token cannot be replayed, even with its cookie.
    let replay = post(
        &app,
        &link,
        Some(form.cookie_header()),
        &[("form_token", &form.token), ("api_key", &key)],
    )
    .await;
    assert_eq!(replay.status(), 400);
    not_stored(&app, "acme", "form-key").await;

    // The link is still usable: the right key (pasted with a trailing newline) is stored.
    let response = post(
        &app,
        &link,
        Some(again.cookie_header()),
        &[
            ("form_token", &again.token),
            ("api_key", &format!("{key}\n")),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let cleared = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cleared.contains("Max-Age=0"),
        "the cookie is forgotten: {cleared}"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("data-status=\"connected\""), "{page}");
    assert!(page.contains("Keyed API"));
    assert!(!page.contains(&key));
    assert_eq!(provider.verifications(), 2);

    // binb-token serves it with the headers a job sends, and the region from the link.
    let served = json_of(app.get_token("acme", "form-key", "").await).await;
    assert_eq!(served["access_token"], key.as_str());
    assert_eq!(served["token_type"], "ApiKey");
    assert_eq!(served["headers"]["X-Api-Key"], key.as_str());
    assert_eq!(served["headers"]["Api-Version"], "2024-01");
    assert_eq!(served["metadata"]["region"], "eu", "{served}");

    // The link is spent now.
    let spent = app.client.get(&link).send().await.unwrap();
    assert_eq!(spent.status(), 400);

    // The audit trail names the connection, as for an OAuth signup: the refusal, then the
    // success.
    let events = crate::helpers::eventually("the audit events of the form", || async {
        let events = json_of(app.get("/audit?limit=1000").as_superadmin().send().await).await;
        let events: Vec<_> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "connection.connect")
            .cloned()
            .collect();
        (events.len() >= 2).then_some(events)
    })
    .await;
    for outcome in ["ok", "error"] {
        assert!(
            events.iter().any(|e| e["outcome"] == outcome
                && e["principal"] == "tenant"
                && e["app_id"] == "acme"
                && e["connector_type"] == "form-key"),
            "{outcome}: {events:?}"
        );
    }
}

pub async fn a_basic_form_shows_its_labels_refuses_a_wrong_password_then_returns_to_the_app(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let app = app_for(backend, &provider).await;
    let return_to = "https://app.example.com/connected/acme";
    let link = new_link(&app, "acme", "form-basic", json!({"return_to": return_to})).await;

    let form = open(&app, &link).await;
    assert!(form
        .html
        .contains("<label for=\"username\">API ID</label><input id=\"username\" name=\"username\" type=\"text\""));
    assert!(form
        .html
        .contains("<label for=\"password\">API token</label><input id=\"password\" name=\"password\" type=\"password\""));

    let username = provider.username();
    let response = post(
        &app,
        &link,
        Some(form.cookie_header()),
        &[
            ("form_token", &form.token),
            ("username", &username),
            ("password", "not-the-token"),
        ],
    )
    .await;
    assert_eq!(response.status(), 422);
    let again = form_of(&app, response).await;
    assert!(again
        .html
        .contains("The provider refused this username and password"));
    assert!(!again.html.contains("not-the-token"));
    not_stored(&app, "acme", "form-basic").await;

    // An empty password is refused before the provider is asked.
    let asked = provider.verifications();
    let response = post(
        &app,
        &link,
        Some(again.cookie_header()),
        &[
            ("form_token", &again.token),
            ("username", &username),
            ("password", ""),
        ],
    )
    .await;
    assert_eq!(response.status(), 400);
    let again = form_of(&app, response).await;
    assert!(
        again.html.contains("API token must not be empty"),
        "{}",
        again.html
    );
    assert_eq!(provider.verifications(), asked);

    let response = post(
        &app,
        &link,
        Some(again.cookie_header()),
        &[
            ("form_token", &again.token),
            ("username", &username),
            ("password", &provider.password()),
        ],
    )
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), return_to);
    let served = json_of(app.get_token("acme", "form-basic", "").await).await;
    assert_eq!(served["token_type"], "Basic");
    assert!(served["headers"]["Authorization"]
        .as_str()
        .unwrap()
        .starts_with("Basic "));
}

pub async fn a_form_post_from_another_browser_or_site_is_refused_and_stores_nothing(
    backend: Backend,
) {
    let provider = KindsProvider::start().await;
    let app = app_for(backend, &provider).await;
    let key = provider.api_key();
    let link = new_link(
        &app,
        "acme",
        "form-key",
        json!({"params": {"region": "eu"}}),
    )
    .await;

    // Another browser posts a form token it saw, without the cookie of the browser it was
    // given to.
    let form = open(&app, &link).await;
    let response = post(
        &app,
        &link,
        None,
        &[("form_token", &form.token), ("api_key", &key)],
    )
    .await;
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    assert!(page.contains("data-error=\"browser_mismatch\""), "{page}");
    not_stored(&app, "acme", "form-key").await;

    // ... or with its own cookie, under the name of the first browser's form.
    let first = open(&app, &link).await;
    let other = open(&app, &link).await;
    let response = post(
        &app,
        &link,
        Some(format!("{}={}", first.cookie.0, other.cookie.1)),
        &[("form_token", &first.token), ("api_key", &key)],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("data-error=\"browser_mismatch\""));
    not_stored(&app, "acme", "form-key").await;

    // A cross-site post is refused, even with the right token and cookie.
    let response = app
        .client
        .post(format!("{link}/credential"))
        .header("cookie", other.cookie_header())
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example.com")
        .form(&[
            ("form_token", other.token.as_str()),
            ("api_key", key.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("data-error=\"cross_site_request\""));

    // A form of one link does not open another link.
    let second = new_link(
        &app,
        "beta",
        "form-key",
        json!({"params": {"region": "eu"}}),
    )
    .await;
    let response = post(
        &app,
        &second,
        Some(other.cookie_header()),
        &[("form_token", &other.token), ("api_key", &key)],
    )
    .await;
    assert_eq!(response.status(), 400);
    not_stored(&app, "beta", "form-key").await;
    not_stored(&app, "acme", "form-key").await;
    assert_eq!(
        provider.verifications(),
        0,
        "no refused post reached the provider"
    );

    // A static link has no OAuth flow to start.
    let start = app.client.post(&link).send().await.unwrap();
    assert_eq!(start.status(), 400);

    // Nothing was spent by the refusals: the tenant's own browser connects.
    let mine = open(&app, &link).await;
    let response = post(
        &app,
        &link,
        Some(mine.cookie_header()),
        &[("form_token", &mine.token), ("api_key", &key)],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(app.get_token("acme", "form-key", "").await).await["access_token"],
        key.as_str()
    );
}

/// The form in headless Chromium (`tests/e2e/connect-form-browser.mjs`, set up by
/// `scripts/e2e-setup.sh`): the field found by its label, a refused key, then the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_form_in_a_real_browser_refuses_a_wrong_key_then_connects() {
    let provider = KindsProvider::start().await;
    let app = app_for(Backend::Sqlite, &provider).await;
    let key = provider.api_key();
    let wrong = crate::helpers::unique("wrong-key");
    app.remember_secret(&wrong);
    let link = new_link(
        &app,
        "acme",
        "form-key",
        json!({"params": {"region": "eu"}}),
    )
    .await;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshots = root.join("target/e2e/connect-form");
    std::fs::create_dir_all(&screenshots).unwrap();

    // The values travel in the environment, not the command line; the child is killed when
    // its handle is dropped, which the deadline below does.
    let child = tokio::process::Command::new("node")
        .arg(root.join("tests/e2e/connect-form-browser.mjs"))
        .args(["--url", &link, "--label", "API key", "--timeout", "90"])
        .arg("--screenshots")
        .arg(&screenshots)
        .env("E2E_WRONG", &wrong)
        .env("E2E_RIGHT", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (scripts/e2e-setup.sh)");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    .expect("the browser run ended before its deadline")
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line");

    assert_eq!(result["field_type"], "password", "{result}");
    assert_eq!(result["error_code"], "invalid_credentials", "{result}");
    assert!(
        result["error_text"]
            .as_str()
            .unwrap()
            .contains("The provider refused this key"),
        "{result}"
    );
    assert_eq!(result["field_after_error"], "", "the form comes back empty");
    assert_eq!(result["status"], "connected", "{result}");
    assert!(result["text"].as_str().unwrap().contains("Keyed API"));
    for shot in ["form-page.png", "form-error.png", "form-result.png"] {
        assert!(screenshots.join(shot).exists(), "{shot}");
    }
    assert_eq!(provider.verifications(), 2, "each submission was checked");
    let served = json_of(app.get_token("acme", "form-key", "").await).await;
    assert_eq!(served["headers"]["X-Api-Key"], key.as_str());
}
