//! The signup as a browser runs it, step by step, with no automatic redirects.

use serde_json::{json, Value};

use super::{json_of, location, query_param, TestApp};

impl TestApp {
    /// `POST /{app}/{connector_type}/connect-links` as the admin.
    pub async fn create_link(
        &self,
        app: &str,
        connector_type: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.post(&format!("/{app}/{connector_type}/connect-links"))
            .as_admin()
            .json(body)
            .send()
            .await
    }

    /// Creates a link for `app` on the fake provider's connector type and returns its URL.
    pub async fn new_link(&self, app: &str) -> String {
        let response = self.create_link(app, "acme", &json!({})).await;
        assert_eq!(response.status(), 201);
        let url = json_of(response).await["url"].as_str().unwrap().to_string();
        self.remember_secret(url.rsplit('/').next().unwrap());
        url
    }

    /// Clicks Connect on the link's page: returns the provider URL tokenbox redirects to. Keeps
    /// the cookie that binds the flow to this browser, as a browser does.
    pub async fn click_connect(&self, link: &str) -> reqwest::Response {
        let response = self.client.post(link).send().await.unwrap();
        for (name, value) in set_cookies(&response) {
            self.remember_secret(&value);
            let mut jar = self.browser_cookies.lock().unwrap();
            jar.retain(|(n, _)| *n != name);
            jar.push((name, value));
        }
        response
    }

    /// The browser's signup cookies, as a `Cookie` header value.
    pub fn browser_cookie_header(&self) -> String {
        self.browser_cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Follows the provider's redirect to the callback from the browser that clicked Connect.
    pub async fn callback(&self, url: &str) -> reqwest::Response {
        let cookies = self.browser_cookie_header();
        let mut request = self.client.get(url);
        if !cookies.is_empty() {
            request = request.header("cookie", cookies);
        }
        request.send().await.unwrap()
    }

    /// Follows a link through Connect, the provider and the callback; returns the final response.
    pub async fn run_signup(&self, link: &str) -> reqwest::Response {
        let to_provider = self.click_connect(link).await;
        assert_eq!(
            to_provider.status(),
            303,
            "Connect redirects to the provider"
        );
        let authorize = location(&to_provider);
        let back = self.client.get(&authorize).send().await.unwrap();
        assert!(
            back.status().is_redirection(),
            "the provider redirects back"
        );
        let callback = location(&back);
        self.remember_secret(&query_param(&callback, "state").unwrap_or_default());
        self.callback(&callback).await
    }
}

/// The (name, value) of every cookie a response sets with a value.
pub fn set_cookies(response: &reqwest::Response) -> Vec<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .filter(|(_, value)| !value.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}
