//! Requests to the server under test: one builder for every route, sent anonymously or as one of
//! the app's service accounts, and the helpers of the token routes (read, import).

use reqwest::Method;
use serde_json::{json, Value};

use super::{now, unique, TestApp};

/// A request to the server under test, from a path such as `/audit?limit=10`. It carries no
/// credentials unless asked: `.as_superadmin()`, `.as_admin()` or `.bearer(token)`.
///
/// It owns what it needs (no borrow of the app), so it can be sent from a spawned task.
#[must_use = "a request does nothing until it is sent"]
pub struct ApiRequest {
    builder: reqwest::RequestBuilder,
    superadmin: String,
    admin: String,
}

// `as_superadmin()` reads as "sent as the superadmin": a builder step, not a conversion.
#[allow(clippy::wrong_self_convention)]
impl ApiRequest {
    /// Authenticates as the app's superadmin service account (`extraction`).
    pub fn as_superadmin(self) -> Self {
        let token = self.superadmin.clone();
        self.bearer(&token)
    }

    /// Authenticates as the app's admin service account (`laputa`).
    pub fn as_admin(self) -> Self {
        let token = self.admin.clone();
        self.bearer(&token)
    }

    /// Authenticates with any bearer token (another account's, a JWT, a wrong one).
    pub fn bearer(mut self, token: &str) -> Self {
        self.builder = self.builder.bearer_auth(token);
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        self.builder = self.builder.header(name, value.as_ref());
        self
    }

    /// A JSON body (with its content type).
    pub fn json(mut self, body: &Value) -> Self {
        self.builder = self.builder.json(body);
        self
    }

    /// A form body (`application/x-www-form-urlencoded`), as a browser posts it.
    pub fn form<T: serde::Serialize + ?Sized>(mut self, form: &T) -> Self {
        self.builder = self.builder.form(form);
        self
    }

    /// HTTP Basic credentials (a service account's name and token at `/oauth/token`).
    pub fn basic_auth(mut self, name: &str, secret: Option<&str>) -> Self {
        self.builder = self.builder.basic_auth(name, secret);
        self
    }

    /// A raw body, sent as it is (no content type added).
    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    /// A copy to send again (`None` for a streamed body, as in reqwest).
    pub fn try_clone(&self) -> Option<Self> {
        Some(Self {
            builder: self.builder.try_clone()?,
            superadmin: self.superadmin.clone(),
            admin: self.admin.clone(),
        })
    }

    /// Sends the request; panics when no response comes back (the server is down or hangs).
    pub async fn send(self) -> reqwest::Response {
        self.builder
            .send()
            .await
            .expect("a response from the server under test")
    }

    /// Sends the request; the transport error, when there is one, is the caller's to check.
    pub async fn try_send(self) -> reqwest::Result<reqwest::Response> {
        self.builder.send().await
    }
}

impl TestApp {
    /// A request to `path` (which starts with `/`) on this server, not yet authenticated.
    pub fn request(&self, method: Method, path: &str) -> ApiRequest {
        assert!(path.starts_with('/'), "a path on the server, not {path:?}");
        ApiRequest {
            builder: self
                .client
                .request(method, format!("{}{path}", self.address)),
            superadmin: self.superadmin.clone(),
            admin: self.admin.clone(),
        }
    }

    pub fn get(&self, path: &str) -> ApiRequest {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> ApiRequest {
        self.request(Method::POST, path)
    }

    pub fn put(&self, path: &str) -> ApiRequest {
        self.request(Method::PUT, path)
    }

    pub fn delete(&self, path: &str) -> ApiRequest {
        self.request(Method::DELETE, path)
    }

    /// `GET /{app}/{connector_type}/binb-token?{query}` as the superadmin.
    pub async fn get_token(
        &self,
        app: &str,
        connector_type: &str,
        query: &str,
    ) -> reqwest::Response {
        self.get_token_as(&self.superadmin.clone(), app, connector_type, query)
            .await
    }

    /// `GET /{app}/{connector_type}/binb-token?{query}` with the given bearer token.
    pub async fn get_token_as(
        &self,
        bearer: &str,
        app: &str,
        connector_type: &str,
        query: &str,
    ) -> reqwest::Response {
        let sep = if query.is_empty() { "" } else { "?" };
        self.get(&format!("/{app}/{connector_type}/binb-token{sep}{query}"))
            .bearer(bearer)
            .send()
            .await
    }

    /// `PUT /{app}/{connector_type}/connection` as the admin: imports a token set, whatever the
    /// outcome (the tokens are remembered as secrets the logs must not show).
    pub async fn import(&self, app: &str, connector_type: &str, body: &Value) -> reqwest::Response {
        for field in ["access_token", "refresh_token"] {
            if let Some(s) = body[field].as_str() {
                self.remember_secret(s);
            }
        }
        self.put(&format!("/{app}/{connector_type}/connection"))
            .as_admin()
            .json(body)
            .send()
            .await
    }

    /// Imports a token set that must be accepted (201 new or 200 replaced); returns the
    /// connection's view. Panics with the status and body when tokenbox refuses it.
    pub async fn import_ok(&self, app: &str, connector_type: &str, body: &Value) -> Value {
        let response = self.import(app, connector_type, body).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "import of {app}/{connector_type} failed: {status} {text}"
        );
        serde_json::from_str(&text).expect("the imported connection as JSON")
    }

    /// Imports a connection whose access token has expired and whose refresh token the fake
    /// provider accepts.
    pub async fn import_expired(&self, app: &str) -> String {
        let provider = self.provider.as_ref().expect("a provider");
        let access = unique("imported-at");
        let refresh = provider.new_refresh_token();
        self.import_ok(
            app,
            "acme",
            &json!({
                "access_token": access,
                "refresh_token": refresh,
                "expires_at": now() - 10,
                "scope": "read",
            }),
        )
        .await;
        access
    }
}
