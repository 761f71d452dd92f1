//! Calls to providers' token endpoints, through the `oauth2` crate, with our own HTTP transport
//! that applies each provider's quirks and classifies failures.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;

use super::netguard::{self, AddressPolicy, PublicOnlyResolver};
use super::{ClientAuth, ConnectorType, RequestBody};
use crate::domain::{now_epoch, Metadata, TenantClient, TokenSet};
use crate::secret::Secret;
use crate::tracing_otel;

/// Ten years: longer lifetimes in a token response are capped.
const MAX_LIFETIME: u64 = 10 * 365 * 86_400;

/// The default longest gap between two reads of a proxied answer.
const DEFAULT_PROXY_IDLE: Duration = Duration::from_secs(60);

/// At most this much of a provider's answer is read (a token answer is a few kilobytes).
pub const MAX_PROVIDER_BODY: usize = 1024 * 1024;

/// OAuth error codes that mean the grant is gone and the tenant must reconnect.
const REVOKED_CODES: &[&str] = &["invalid_grant", "invalid_refresh_token", "token_revoked"];

/// Why a refresh failed. Messages are safe to show: they never hold a token or a response body.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The grant is revoked or expired: the tenant must reconnect.
    #[error("the provider refused the refresh token ({code})")]
    Revoked { code: String },
    /// Our client credentials are wrong: an operator problem, not a tenant one.
    #[error("the provider rejected tokenbox's client credentials for this connector type (invalid_client); an operator must check client_id and client_secret")]
    InvalidClient,
    /// The provider could not be reached or answered with a transient failure.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<u64>,
        /// False when the request may have reached the provider (a timeout): retrying could
        /// present a rotated refresh token twice.
        retryable: bool,
    },
    /// The provider answered, but not with a usable token.
    #[error("{0}")]
    Rejected(String),
    /// The connector type cannot refresh (no client credentials, bad URL).
    #[error("{0}")]
    NotConfigured(String),
}

impl Fault {
    /// The fault's name in a span (`error.type`).
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status { .. } => "status",
            Self::NotJson => "not_json",
            Self::TooLarge => "too_large",
            Self::Blocked => "blocked",
            Self::Other => "other",
        }
    }
}

impl RefreshError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable {
                retryable: true,
                ..
            }
        )
    }
}

/// Failures of the HTTP exchange itself, before OAuth semantics.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("connection to the provider failed")]
    Connect,
    /// The request may have reached the provider: a retry could spend a rotated token twice.
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("the provider answered with a body that is not JSON")]
    NotJson,
    #[error("the provider's answer is larger than 1 MiB; tokenbox stopped reading it")]
    TooLarge,
    #[error("the provider's host resolves to a private, loopback or reserved address; tokenbox does not connect there")]
    Blocked,
    #[error("the request to the provider failed")]
    Other,
}

/// A lenient token response: `token_type` may be missing, `expires_in` may be a string, and every
/// other field is kept so that metadata can be picked from it.
#[derive(Debug, Deserialize, Serialize)]
pub struct ProviderTokenResponse {
    access_token: AccessToken,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default, deserialize_with = "lenient_scope")]
    scope: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

const BEARER: BasicTokenType = BasicTokenType::Bearer;

impl TokenResponse for ProviderTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &BEARER
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_scope<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    })
}

/// A grant tokenbox runs at a token endpoint on its own, without a browser.
#[derive(Clone, Copy)]
enum Grant<'a> {
    Refresh(&'a Secret),
    ClientCredentials,
}

/// The HTTP client handed to the `oauth2` crate: our reqwest client plus the connector type's
/// quirks. `attempt` numbers the request among the retries of one call (for its span).
struct Transport<'a> {
    provider: &'a Provider,
    ct: &'a ConnectorType,
    attempt: u32,
}

type BoxedResponse<'c> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, Fault>> + Send + 'c>>;

impl<'c> oauth2::AsyncHttpClient<'c> for Transport<'_> {
    type Error = Fault;
    type Future = BoxedResponse<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.provider.send(self.ct, request, self.attempt))
    }
}

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// The HTTP side of every provider call. One per process; cheap to clone.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Reaches public addresses only (and loopback with `allow_insecure_loopback`).
    http: reqwest::Client,
    /// Also reaches private networks: for connector types marked `private_network`.
    http_private: reqwest::Client,
    /// The proxy mode's clients (`forward`): no total timeout, an idle one.
    proxy: reqwest::Client,
    proxy_private: reqwest::Client,
    timeout: Duration,
    allow_loopback: bool,
}

impl Provider {
    /// `allow_insecure_loopback` lets requests reach loopback addresses (tests, local
    /// development); private networks are reached only for connector types marked
    /// `private_network`; link-local and other reserved addresses never.
    pub fn new(timeout: Duration, allow_insecure_loopback: bool) -> anyhow::Result<Self> {
        let client = |private: bool| {
            Self::builder(allow_insecure_loopback, private, timeout)
                .timeout(timeout)
                .build()
        };
        let provider = Self {
            http: client(false)?,
            http_private: client(true)?,
            proxy: reqwest::Client::new(),
            proxy_private: reqwest::Client::new(),
            timeout,
            allow_loopback: allow_insecure_loopback,
        };
        provider.with_proxy_timeout(DEFAULT_PROXY_IDLE)
    }

    /// The clients of the proxy mode: the same address policy, no total timeout (an export
    /// may stream for long), but no gap between two reads longer than `idle`.
    pub fn with_proxy_timeout(mut self, idle: Duration) -> anyhow::Result<Self> {
        let client = |private: bool| {
            Self::builder(self.allow_loopback, private, self.timeout)
                .read_timeout(idle)
                .build()
        };
        self.proxy = client(false)?;
        self.proxy_private = client(true)?;
        Ok(self)
    }

    fn builder(loopback: bool, private: bool, timeout: Duration) -> reqwest::ClientBuilder {
        {
            reqwest::Client::builder()
                // A token endpoint that redirects is refused: following it could send our
                // client secret or a refresh token to another host.
                .redirect(reqwest::redirect::Policy::none())
                // Every name is resolved by a resolver that refuses addresses its policy does
                // not allow, at each new connection. A proxy would resolve names itself and
                // bypass that check, so none is used.
                .dns_resolver(std::sync::Arc::new(PublicOnlyResolver {
                    policy: AddressPolicy { loopback, private },
                }))
                .no_proxy()
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .user_agent(concat!("tokenbox/", env!("CARGO_PKG_VERSION")))
        }
    }

    /// The client for a request to `url` of a connector type (the proxy's, or the token
    /// calls'), after checking an IP literal host against the address policy (a name is
    /// checked by the resolver when the connection is made).
    fn client_for(
        &self,
        ct: &ConnectorType,
        url: &reqwest::Url,
        proxy: bool,
    ) -> Result<&reqwest::Client, Fault> {
        self.guarded_client(url, ct.private_network, proxy)
    }

    /// The client for `url` (`private`: private networks allowed), after checking an IP
    /// literal host against the address policy.
    fn guarded_client(
        &self,
        url: &reqwest::Url,
        private: bool,
        proxy: bool,
    ) -> Result<&reqwest::Client, Fault> {
        let literal = match url.host() {
            Some(oauth2::url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(oauth2::url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        let policy = AddressPolicy {
            loopback: self.allow_loopback,
            private,
        };
        if literal.is_some_and(|ip| !netguard::address_allowed(ip, policy)) {
            return Err(Fault::Blocked);
        }
        Ok(match (proxy, private) {
            (true, true) => &self.proxy_private,
            (true, false) => &self.proxy,
            (false, true) => &self.http_private,
            (false, false) => &self.http,
        })
    }

    /// Sends a proxied request to a connector type's API (`url` already checked against its
    /// API host) and returns the answer unread, for streaming. Redirects are not followed.
    pub async fn forward(
        &self,
        ct: &ConnectorType,
        method: http::Method,
        url: reqwest::Url,
        headers: http::HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, RefreshError> {
        let http = self
            .client_for(ct, &url, true)
            .map_err(|fault| RefreshError::Rejected(fault.to_string()))?;
        http.request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let fault = fault_of(&e);
                match fault {
                    Fault::Blocked => RefreshError::Rejected(fault.to_string()),
                    _ => RefreshError::Unavailable {
                        reason: fault.to_string(),
                        retry_after: None,
                        retryable: false,
                    },
                }
            })
    }

    /// Runs the refresh-token grant, retrying transient failures (connection refused, 429, 5xx)
    /// with backoff and jitter while `budget` allows. A timeout is not
    /// retried: the provider may have rotated the refresh token already.
    /// `client` is the connection's own OAuth client, used instead of the operator's.
    pub async fn refresh(
        &self,
        ct: &ConnectorType,
        client: Option<&TenantClient>,
        refresh_token: &Secret,
        metadata: &Metadata,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        self.grant(ct, client, Grant::Refresh(refresh_token), metadata, budget)
            .await
    }

    /// Mints an access token with the client-credentials grant (RFC 6749 §4.4), with the
    /// connector type's scopes, retried like a refresh. `client` is the connection's own
    /// client, used instead of the operator's.
    pub async fn client_credentials(
        &self,
        ct: &ConnectorType,
        client: Option<&TenantClient>,
        metadata: &Metadata,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        self.grant(ct, client, Grant::ClientCredentials, metadata, budget)
            .await
    }

    /// Runs a grant with the newest client secret, then the older ones while the provider
    /// answers `invalid_client` (a client-secret rotation in progress). A connection's own
    /// client has one secret.
    async fn grant(
        &self,
        ct: &ConnectorType,
        tenant: Option<&TenantClient>,
        grant: Grant<'_>,
        metadata: &Metadata,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let (client_id, candidates) = client_candidates(ct, tenant)?;
        let last = candidates.len() - 1;
        let attempts = AtomicU32::new(0);
        for (i, secret) in candidates.into_iter().enumerate() {
            match self
                .grant_with(ct, client_id, secret, grant, metadata, budget, &attempts)
                .await
                .map_err(|e| tenant_refusal(tenant, e))
            {
                Err(RefreshError::InvalidClient) if i < last => {
                    tracing::warn!(connector_type = %ct.name, "a client secret was refused (invalid_client); trying an older one");
                }
                Ok(tokens) if i > 0 => {
                    tracing::warn!(connector_type = %ct.name, "an older client secret was accepted: finish the client-secret rotation");
                    record_attempts(&attempts);
                    return Ok(tokens);
                }
                other => {
                    record_attempts(&attempts);
                    return other;
                }
            }
        }
        unreachable!("the last candidate always returns")
    }

    #[allow(clippy::too_many_arguments)]
    async fn grant_with(
        &self,
        ct: &ConnectorType,
        client_id: &str,
        secret: Option<&Secret>,
        grant: Grant<'_>,
        metadata: &Metadata,
        budget: Duration,
        attempts: &AtomicU32,
    ) -> Result<TokenSet, RefreshError> {
        let client = self.client(ct, metadata, client_id, secret)?;
        let started = Instant::now();
        let timeout = self.timeout;
        let attempt = || async {
            let transport = Transport {
                provider: self,
                ct,
                attempt: attempts.fetch_add(1, Ordering::Relaxed) + 1,
            };
            let response = match grant {
                Grant::Refresh(refresh_token) => {
                    let refresh_token = RefreshToken::new(refresh_token.expose().to_string());
                    let mut request = client.exchange_refresh_token(&refresh_token);
                    for (k, v) in &ct.token_params {
                        request = request.add_extra_param(k.as_str(), v.as_str());
                    }
                    request.request_async(&transport).await
                }
                Grant::ClientCredentials => {
                    let mut request = client.exchange_client_credentials();
                    if !ct.scopes.is_empty() {
                        request =
                            request.add_scope(Scope::new(ct.scopes.join(&ct.scope_separator)));
                    }
                    for (k, v) in &ct.token_params {
                        request = request.add_extra_param(k.as_str(), v.as_str());
                    }
                    request.request_async(&transport).await
                }
            };
            response.map_err(classify)
        };
        let response = attempt
            .retry(retry_policy())
            .when(|e: &RefreshError| {
                e.is_retryable() && started.elapsed() + timeout + Duration::from_secs(2) < budget
            })
            .await?;
        Ok(to_token_set(ct, response, now_epoch()))
    }

    /// Exchanges a signed assertion for an access token (RFC 7523 §2.1), retried like a
    /// refresh while `budget` allows.
    pub async fn jwt_bearer(
        &self,
        ct: &ConnectorType,
        assertion: &str,
        metadata: &Metadata,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let url = ct
            .expand_url(&ct.token_url, metadata)
            .map_err(RefreshError::NotConfigured)?;
        let body = {
            let mut form = oauth2::url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .append_pair("assertion", assertion);
            for (k, v) in &ct.token_params {
                form.append_pair(k, v);
            }
            form.finish().into_bytes()
        };
        let (url, body) = (url.as_str(), &body);
        self.retrying(budget, |attempt| async move {
            let request = http::Request::builder()
                .method(http::Method::POST)
                .uri(url)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(body.clone())
                .map_err(|_| RefreshError::NotConfigured("the token URL is not valid".into()))?;
            let response = self
                .send(ct, request, attempt)
                .await
                .map_err(|fault| classify(RequestTokenError::Request(fault)))?;
            token_answer(ct, &response)
        })
        .await
    }

    /// Mints a GitHub App installation access token: `POST
    /// {api_base_url}/app/installations/{id}/access_tokens` with the app's JWT, optionally
    /// scoped down by `scope` (`{"repositories": [...], "permissions": {...}}`). The answer's
    /// `expires_at` is an ISO 8601 time.
    pub async fn installation_token(
        &self,
        ct: &ConnectorType,
        installation_id: u64,
        app_jwt: &str,
        scope: Option<&Value>,
        budget: Duration,
    ) -> Result<TokenSet, RefreshError> {
        let base = ct.api_base_url_for(&Metadata::new()).ok_or_else(|| {
            RefreshError::NotConfigured("the GitHub API base URL is not set".into())
        })?;
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            base.trim_end_matches('/')
        );
        let body = scope
            .map(|s| s.to_string().into_bytes())
            .unwrap_or_default();
        let (url, body) = (url.as_str(), &body);
        self.retrying(budget, |attempt| async move {
            let mut request = http::Request::builder()
                .method(http::Method::POST)
                .uri(url)
                .header(http::header::AUTHORIZATION, format!("Bearer {app_jwt}"))
                .header(http::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
            if scope.is_some() {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
            }
            let request = request.body(body.clone()).map_err(|_| {
                RefreshError::NotConfigured("the GitHub API URL is not valid".into())
            })?;
            let answer = self
                .send_raw(ct, request, attempt)
                .await
                .map_err(|fault| classify(RequestTokenError::Request(fault)))?;
            installation_answer(&answer)
        })
        .await
    }

    /// Runs `attempt` (given its number, from 1) with the provider-call retry policy: transient
    /// failures are retried with backoff and jitter while `budget` allows; a timeout is not.
    async fn retrying<F, Fut>(
        &self,
        budget: Duration,
        mut attempt: F,
    ) -> Result<TokenSet, RefreshError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<TokenSet, RefreshError>>,
    {
        let started = Instant::now();
        let timeout = self.timeout;
        let attempts = AtomicU32::new(0);
        let result = (|| attempt(attempts.fetch_add(1, Ordering::Relaxed) + 1))
            .retry(retry_policy())
            .when(|e: &RefreshError| {
                e.is_retryable() && started.elapsed() + timeout + Duration::from_secs(2) < budget
            })
            .await;
        record_attempts(&attempts);
        result
    }

    /// Checks a static credential with the connector type's verification request: a GET of
    /// `url` with the credential's headers and query parameters. `Ok(true)` on 2xx,
    /// `Ok(false)` on 401 or 403 (the credential is refused), an error otherwise.
    pub async fn verify(
        &self,
        ct: &ConnectorType,
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        query: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, RefreshError> {
        let mut url = oauth2::url::Url::parse(url).map_err(|_| {
            RefreshError::NotConfigured("the verification URL is not a valid URL".into())
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Vec::new()).map_err(|_| {
            RefreshError::NotConfigured(
                "the verification request could not be built (a header name or value is not valid)"
                    .into(),
            )
        })?;
        match self.send_raw(ct, request, 1).await {
            Ok(answer) if answer.status.is_success() => Ok(true),
            Ok(answer) if matches!(answer.status.as_u16(), 401 | 403) => Ok(false),
            Ok(answer) if answer.status.as_u16() == 429 || answer.status.is_server_error() => {
                Err(RefreshError::Unavailable {
                    reason: format!(
                        "the provider could not verify the credential now (HTTP {})",
                        answer.status.as_u16()
                    ),
                    retry_after: answer.retry_after,
                    retryable: true,
                })
            }
            Ok(answer) => Err(RefreshError::Rejected(format!(
                "the verification request answered HTTP {}",
                answer.status.as_u16()
            ))),
            Err(fault @ (Fault::TooLarge | Fault::Blocked)) => {
                Err(RefreshError::Rejected(fault.to_string()))
            }
            Err(fault) => Err(RefreshError::Unavailable {
                reason: fault.to_string(),
                retry_after: None,
                retryable: true,
            }),
        }
    }

    /// A public JSON document (an identity issuer's discovery document or key set): a GET of
    /// `url` through the same guarded client as every provider call (`private`: the host may
    /// be on a private network), no redirect followed, the body read within the 1 MiB cap.
    /// The error is a sentence safe to log.
    pub async fn fetch_json(&self, url: &str, private: bool) -> Result<Value, String> {
        let url = reqwest::Url::parse(url).map_err(|_| format!("{url} is not a URL"))?;
        let http = self
            .guarded_client(&url, private, false)
            .map_err(|fault| fault.to_string())?;
        let response = http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fault_of(&e).to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(Fault::Status {
                status: status.as_u16(),
                retry_after: None,
            }
            .to_string());
        }
        let body = read_capped(response, MAX_PROVIDER_BODY)
            .await
            .map_err(|fault| fault.to_string())?;
        serde_json::from_slice(&body).map_err(|_| Fault::NotJson.to_string())
    }

    /// The identity request: a GET of `url` with the access token as a bearer token, through
    /// the same guarded client as every provider call. Returns the JSON object it answers.
    pub async fn userinfo(
        &self,
        ct: &ConnectorType,
        url: &str,
        access_token: &Secret,
    ) -> Result<Map<String, Value>, RefreshError> {
        let url = oauth2::url::Url::parse(url).map_err(|_| {
            RefreshError::NotConfigured("the userinfo URL is not a valid URL".into())
        })?;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", access_token.expose()),
            );
        for (name, value) in &ct.api_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Vec::new()).map_err(|_| {
            RefreshError::NotConfigured("the userinfo request could not be built".into())
        })?;
        match self.send_raw(ct, request, 1).await {
            Ok(answer) if answer.status.is_success() => {
                serde_json::from_slice::<Map<String, Value>>(&answer.body).map_err(|_| {
                    RefreshError::Rejected("the userinfo answer is not a JSON object".into())
                })
            }
            Ok(answer) => Err(RefreshError::Rejected(format!(
                "the userinfo request answered HTTP {}",
                answer.status.as_u16()
            ))),
            Err(fault) => Err(RefreshError::Rejected(fault.to_string())),
        }
    }

    /// The URL the tenant's browser is sent to (RFC 6749 §4.1.1), with PKCE S256 (RFC 7636)
    /// unless the connector type disables it. Returns the URL and the PKCE verifier to keep.
    /// `client` is the link's own OAuth client, used instead of the operator's.
    pub fn authorization_url(
        &self,
        ct: &ConnectorType,
        client: Option<&TenantClient>,
        values: &Metadata,
        redirect_uri: &str,
        state: &str,
    ) -> Result<(String, Option<Secret>), RefreshError> {
        let auth_url = ct
            .expand_url(&ct.authorization_url, values)
            .map_err(RefreshError::NotConfigured)?;
        let (client_id, _) = client_candidates(ct, client)?;
        let client = self
            .client(ct, values, client_id, None)?
            .set_auth_uri(AuthUrl::new(auth_url).map_err(|_| {
                RefreshError::NotConfigured("the authorization URL is not a valid URL".into())
            })?)
            .set_redirect_uri(redirect_url(redirect_uri)?);
        let state = state.to_string();
        let mut request = client.authorize_url(move || CsrfToken::new(state));
        if !ct.scopes.is_empty() {
            // The crate joins scopes with spaces; one pre-joined scope honours the separator.
            request = request.add_scope(Scope::new(ct.scopes.join(&ct.scope_separator)));
        }
        for (k, v) in &ct.authorization_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let verifier = if ct.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            Some(Secret::new(verifier.secret().clone()))
        } else {
            None
        };
        let (url, _) = request.url();
        Ok((url.to_string(), verifier))
    }

    /// Exchanges an authorization code for a token set (RFC 6749 §4.1.3), with the OpenID
    /// Connect ID token when the provider sent one. Not retried: a code is single-use. `client` is the link's own OAuth client, used instead of the operator's.
    pub async fn exchange_code(
        &self,
        ct: &ConnectorType,
        client: Option<&TenantClient>,
        values: &Metadata,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: Option<&Secret>,
    ) -> Result<(TokenSet, Option<Secret>), RefreshError> {
        let (client_id, candidates) = client_candidates(ct, client)?;
        let last = candidates.len() - 1;
        for (i, secret) in candidates.into_iter().enumerate() {
            match self
                .exchange_code_with(
                    ct,
                    client_id,
                    secret,
                    values,
                    redirect_uri,
                    code,
                    pkce_verifier,
                )
                .await
                .map_err(|e| tenant_refusal(client, e))
            {
                Err(RefreshError::InvalidClient) if i < last => {
                    tracing::warn!(connector_type = %ct.name, "a client secret was refused (invalid_client); trying an older one");
                }
                other => return other,
            }
        }
        unreachable!("the last candidate always returns")
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange_code_with(
        &self,
        ct: &ConnectorType,
        client_id: &str,
        secret: Option<&Secret>,
        values: &Metadata,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: Option<&Secret>,
    ) -> Result<(TokenSet, Option<Secret>), RefreshError> {
        let client = self
            .client(ct, values, client_id, secret)?
            .set_redirect_uri(redirect_url(redirect_uri)?);
        let code = AuthorizationCode::new(code.to_string());
        let mut request = client.exchange_code(code);
        if let Some(v) = pkce_verifier {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(v.expose().to_string()));
        }
        for (k, v) in &ct.token_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let transport = Transport {
            provider: self,
            ct,
            attempt: 1,
        };
        let response = request.request_async(&transport).await.map_err(classify)?;
        let id_token = response
            .extra
            .get("id_token")
            .and_then(Value::as_str)
            .map(|t| Secret::new(t.to_string()));
        Ok((to_token_set(ct, response, now_epoch()), id_token))
    }

    /// Revokes a token at the provider's RFC 7009 endpoint, when the catalog has one.
    /// Returns whether the provider confirmed. (The `oauth2` crate refuses any non-https
    /// revocation URL; the URL rules are enforced when the catalog is built instead, where
    /// plain http is allowed for loopback test providers only.) `client` is the connection's
    /// own OAuth client, used instead of the operator's.
    pub async fn revoke(
        &self,
        ct: &ConnectorType,
        client: Option<&TenantClient>,
        values: &Metadata,
        refresh_token: Option<&Secret>,
        access_token: &Secret,
    ) -> Result<bool, RefreshError> {
        let Some(template) = &ct.revocation_url else {
            return Ok(false);
        };
        let url = ct
            .expand_url(template, values)
            .map_err(RefreshError::NotConfigured)?;
        let (token, hint) = match refresh_token {
            Some(t) => (t.expose(), "refresh_token"),
            None => (access_token.expose(), "access_token"),
        };
        let (client_id, secrets) = client_candidates(ct, client)?;
        let secret = secrets.into_iter().next().flatten();
        let request = revocation_request(ct, client_id, secret, url, token, hint)?;
        // Only the status matters; the body is still read within the cap (or not at all).
        match self.send_raw(ct, request, 1).await {
            Ok(answer) if answer.status.is_success() => Ok(true),
            Ok(answer) => Err(RefreshError::Rejected(format!(
                "the provider refused the revocation (HTTP {})",
                answer.status.as_u16()
            ))),
            Err(fault @ (Fault::TooLarge | Fault::Blocked)) => {
                Err(RefreshError::Rejected(fault.to_string()))
            }
            Err(fault) => Err(RefreshError::Unavailable {
                reason: fault.to_string(),
                retry_after: None,
                retryable: false,
            }),
        }
    }

    /// The `oauth2` client of one call: `client_id` and `secret` are the operator's or the
    /// connection's own (`client_candidates`).
    fn client(
        &self,
        ct: &ConnectorType,
        metadata: &Metadata,
        client_id: &str,
        secret: Option<&Secret>,
    ) -> Result<OAuthClient, RefreshError> {
        let token_url = ct
            .expand_url(&ct.token_url, metadata)
            .map_err(RefreshError::NotConfigured)?;
        let token_url = TokenUrl::new(token_url)
            .map_err(|_| RefreshError::NotConfigured("the token URL is not a valid URL".into()))?;
        let mut client = oauth2::Client::new(ClientId::new(client_id.to_string()))
            .set_auth_type(match ct.client_auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::Body => AuthType::RequestBody,
            })
            .set_token_uri(token_url);
        if let Some(secret) = secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
        }
        Ok(client)
    }

    /// Sends one request and normalises the answer so that the `oauth2` crate sees a JSON body
    /// with a meaningful status: form-encoded answers become JSON, a nested token set is lifted,
    /// and an error sent with HTTP 200 becomes a 400.
    async fn send(
        &self,
        ct: &ConnectorType,
        req: HttpRequest,
        attempt: u32,
    ) -> Result<HttpResponse, Fault> {
        let answer = self.send_raw(ct, req, attempt).await?;
        normalize(
            ct,
            answer.status,
            answer.is_form,
            answer.retry_after,
            answer.header_scopes.as_deref(),
            &answer.body,
        )
    }

    /// Sends one request, the `attempt`-th of its call, in a span of its own: the connector
    /// type, the method, the host (never the path or the query) and the answer's status.
    async fn send_raw(
        &self,
        ct: &ConnectorType,
        req: HttpRequest,
        attempt: u32,
    ) -> Result<RawAnswer, Fault> {
        let host = req.uri().host().unwrap_or_default();
        let span = tracing::info_span!(
            target: tracing_otel::TARGET,
            "provider_request",
            otel.name = %format_args!("{} {host}", req.method()),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            connector_type = %ct.name,
            http.request.method = %req.method(),
            server.address = host,
            attempt,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let answer = self.exchange(ct, req, &span).instrument(span.clone()).await;
        match &answer {
            Ok(answer) => {
                span.record("http.response.status_code", answer.status.as_u16());
                if answer.status.is_client_error() || answer.status.is_server_error() {
                    span.record("otel.status_code", "error");
                }
            }
            Err(fault) => {
                span.record("error.type", fault.kind());
                span.record("otel.status_code", "error");
            }
        }
        answer
    }

    /// Sends one request and reads at most `MAX_PROVIDER_BODY` of the answer (nothing of a
    /// 429 or 5xx, whose body is never used). Requests go to public addresses only: an IP
    /// literal is checked here, a name by the resolver when the connection is made. The trace
    /// context of `span` goes along when the connector type allows it (`propagate_trace`).
    async fn exchange(
        &self,
        ct: &ConnectorType,
        req: HttpRequest,
        span: &tracing::Span,
    ) -> Result<RawAnswer, Fault> {
        let (mut parts, body) = req.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string()).map_err(|_| Fault::Other)?;
        let http = self.client_for(ct, &url, false)?;
        if ct.propagate_trace {
            tracing_otel::inject(span, &mut parts.headers);
        }
        let mut builder = http.request(parts.method, url).headers(parts.headers);
        for (k, v) in &ct.token_headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let builder = match ct.token_request_body {
            RequestBody::Form => builder.body(body),
            RequestBody::Json => {
                let object: Map<String, Value> = oauth2::url::form_urlencoded::parse(&body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect();
                builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(&object).map_err(|_| Fault::Other)?)
            }
        };
        let response = builder.send().await.map_err(|e| fault_of(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let is_form = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        // GitHub names the granted scopes in a header, not always in the body.
        let header_scopes = response
            .headers()
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| v.len() <= 4096);
        let body = if status.as_u16() == 429 || status.is_server_error() {
            Vec::new()
        } else {
            read_capped(response, MAX_PROVIDER_BODY).await?
        };
        Ok(RawAnswer {
            status,
            is_form,
            retry_after,
            header_scopes,
            body,
        })
    }
}

/// A provider's answer, its body read within the cap.
struct RawAnswer {
    status: http::StatusCode,
    is_form: bool,
    retry_after: Option<u64>,
    /// `X-OAuth-Scopes` (GitHub): the granted scopes, comma-separated.
    header_scopes: Option<String>,
    body: Vec<u8>,
}

/// Reads a body chunk by chunk and stops as soon as it exceeds `cap` bytes: an announced
/// `Content-Length` beyond the cap is refused before reading, and a body that is longer than
/// announced (or not announced, chunked) is cut off when it crosses the cap. Dropping the
/// response closes the connection.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, Fault> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(Fault::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            Fault::Timeout
        } else {
            Fault::Other
        }
    })? {
        if body.len() + chunk.len() > cap {
            return Err(Fault::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The client a call authenticates with: the connection's own when it has one (a single
/// secret), else the operator's with its client secrets to try, newest first (`None` for a
/// public client).
fn client_candidates<'a>(
    ct: &'a ConnectorType,
    tenant: Option<&'a TenantClient>,
) -> Result<(&'a str, Vec<Option<&'a Secret>>), RefreshError> {
    if let Some(tenant) = tenant {
        return Ok((&tenant.client_id, vec![tenant.client_secret.as_ref()]));
    }
    let client_id = ct.client_id.as_deref().ok_or_else(|| {
        RefreshError::NotConfigured(format!(
            "connector type '{}' has no client credentials configured; an operator must set client_id and client_secret (or the connection must bring its own client)",
            ct.name
        ))
    })?;
    let secrets = match &ct.client_secret {
        None => vec![None],
        Some(newest) => std::iter::once(Some(newest))
            .chain(ct.older_client_secrets.iter().map(Some))
            .collect(),
    };
    Ok((client_id, secrets))
}

/// A connection's own client refused by the provider is the tenant's to fix, not the
/// operator's: the connection must be reconnected with a working client.
fn tenant_refusal(tenant: Option<&TenantClient>, error: RefreshError) -> RefreshError {
    match error {
        RefreshError::InvalidClient if tenant.is_some() => RefreshError::Revoked {
            code: "invalid_client".into(),
        },
        other => other,
    }
}

/// An RFC 7009 revocation request, with the connector type's client authentication and the
/// client the connection uses.
fn revocation_request(
    ct: &ConnectorType,
    client_id: &str,
    secret: Option<&Secret>,
    url: String,
    token: &str,
    hint: &str,
) -> Result<HttpRequest, RefreshError> {
    let mut form = oauth2::url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", token)
        .append_pair("token_type_hint", hint);
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    match (ct.client_auth, secret) {
        (ClientAuth::Basic, Some(secret)) => {
            use base64::Engine;
            let encode = |s: &str| -> String {
                oauth2::url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
            };
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(client_id),
                encode(secret.expose())
            ));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        (_, secret) => {
            form.append_pair("client_id", client_id);
            if let Some(secret) = secret {
                form.append_pair("client_secret", secret.expose());
            }
        }
    }
    request
        .body(form.finish().into_bytes())
        .map_err(|_| RefreshError::NotConfigured("the revocation URL is not valid".into()))
}

fn redirect_url(uri: &str) -> Result<RedirectUrl, RefreshError> {
    RedirectUrl::new(uri.to_string()).map_err(|_| {
        RefreshError::NotConfigured("public_url does not make a valid redirect URI".into())
    })
}

/// Turns a provider's answer into what the `oauth2` crate expects: JSON with a meaningful
/// status. Form-encoded bodies become JSON, a nested token set is lifted (`token_path`), and an
/// error sent with HTTP 200 becomes a 400. Transient failures (429, 5xx, a body that is not
/// JSON) are faults. Pure, so that it can be tested on arbitrary input.
fn normalize(
    ct: &ConnectorType,
    status: http::StatusCode,
    is_form: bool,
    retry_after: Option<u64>,
    header_scopes: Option<&str>,
    bytes: &[u8],
) -> Result<HttpResponse, Fault> {
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(Fault::Status {
            status: status.as_u16(),
            retry_after,
        });
    }
    if bytes.is_empty() {
        // Revocation answers 200 with no body; the crate checks the status only.
        return http::Response::builder()
            .status(status)
            .body(Vec::new())
            .map_err(|_| Fault::Other);
    }
    let parsed: Option<Value> = if is_form {
        Some(Value::Object(
            oauth2::url::form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        ))
    } else {
        serde_json::from_slice(bytes).ok()
    };
    let Some(Value::Object(mut object)) = parsed else {
        return Err(if status.is_success() {
            Fault::NotJson
        } else {
            Fault::Status {
                status: status.as_u16(),
                retry_after,
            }
        });
    };
    if let Some(path) = &ct.token_path {
        if let Some(Value::Object(nested)) = object.get(path).cloned() {
            object.extend(nested);
        }
    }
    if let Some(scopes) = header_scopes.filter(|_| status.is_success()) {
        if object.get("scope").is_none_or(Value::is_null) {
            object.insert("scope".into(), Value::String(scopes.to_string()));
        }
    }
    let mut status = status;
    if status.is_success()
        && !object.contains_key("access_token")
        && object.get("error").is_some_and(Value::is_string)
    {
        status = http::StatusCode::BAD_REQUEST;
    }
    let body = serde_json::to_vec(&object).map_err(|_| Fault::Other)?;
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|_| Fault::Other)
}

fn classify(e: RequestTokenError<Fault, BasicErrorResponse>) -> RefreshError {
    match e {
        RequestTokenError::ServerResponse(resp) => {
            let code = match resp.error() {
                BasicErrorResponseType::InvalidClient => return RefreshError::InvalidClient,
                other => other.as_ref().to_string(),
            };
            let safe_code: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .take(64)
                .collect();
            if REVOKED_CODES.contains(&safe_code.as_str()) {
                RefreshError::Revoked { code: safe_code }
            } else {
                RefreshError::Rejected(format!(
                    "the provider refused the refresh with error '{safe_code}'"
                ))
            }
        }
        RequestTokenError::Request(fault) => match fault {
            Fault::Status { status, .. } if !(status == 429 || status >= 500) => {
                RefreshError::Rejected(fault.to_string())
            }
            Fault::Status { retry_after, .. } => RefreshError::Unavailable {
                reason: fault.to_string(),
                retry_after,
                retryable: true,
            },
            // An answer that is not JSON (an HTML page) or too large is classified once: a
            // retry would most likely get the same page, and the provider may have rotated the
            // refresh token already. A refused address is not transient either.
            Fault::Other | Fault::NotJson | Fault::TooLarge | Fault::Blocked => {
                RefreshError::Rejected(fault.to_string())
            }
            Fault::Connect | Fault::Timeout => RefreshError::Unavailable {
                retryable: !matches!(fault, Fault::Timeout),
                reason: fault.to_string(),
                retry_after: None,
            },
        },
        RequestTokenError::Parse(_, _) => RefreshError::Rejected(
            "the provider answered with JSON that is not a token response".to_string(),
        ),
        RequestTokenError::Other(_) => {
            RefreshError::Rejected("the provider's answer could not be used".to_string())
        }
    }
}

/// Records the number of requests a call made as the `attempts` of the calling span (the
/// keeper's `provider_call`; a span without that field ignores it).
fn record_attempts(attempts: &AtomicU32) {
    tracing::Span::current().record("attempts", attempts.load(Ordering::Relaxed));
}

/// What went wrong with a request that got no answer.
fn fault_of(e: &reqwest::Error) -> Fault {
    if netguard::is_blocked(e) {
        Fault::Blocked
    } else if e.is_timeout() {
        Fault::Timeout
    } else if e.is_connect() {
        Fault::Connect
    } else {
        Fault::Other
    }
}

/// The retry policy of every provider call: two retries, 200 ms to 2 s apart, with jitter.
fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(2)
        .with_jitter()
}

/// A token endpoint's normalised answer (see `normalize`): a token set, or the OAuth error it
/// carries, classified like the `oauth2` crate's.
fn token_answer(ct: &ConnectorType, response: &HttpResponse) -> Result<TokenSet, RefreshError> {
    if response.status().is_success() {
        let parsed: ProviderTokenResponse =
            serde_json::from_slice(response.body()).map_err(|_| {
                RefreshError::Rejected(
                    "the provider answered with JSON that is not a token response".into(),
                )
            })?;
        return Ok(to_token_set(ct, parsed, now_epoch()));
    }
    match serde_json::from_slice::<BasicErrorResponse>(response.body()) {
        Ok(error) => Err(classify(RequestTokenError::ServerResponse(error))),
        Err(_) => Err(RefreshError::Rejected(format!(
            "the provider answered HTTP {}",
            response.status().as_u16()
        ))),
    }
}

/// GitHub's answer to an installation-token request.
fn installation_answer(answer: &RawAnswer) -> Result<TokenSet, RefreshError> {
    #[derive(Deserialize)]
    struct Installation {
        token: Secret,
        expires_at: String,
    }
    match answer.status.as_u16() {
        200 | 201 => {
            let parsed: Installation = serde_json::from_slice(&answer.body).map_err(|_| {
                RefreshError::Rejected("GitHub answered without an installation token".into())
            })?;
            let expires_at = chrono::DateTime::parse_from_rfc3339(&parsed.expires_at)
                .map_err(|_| {
                    RefreshError::Rejected("GitHub's expires_at is not an ISO 8601 time".into())
                })?
                .timestamp();
            Ok(TokenSet {
                refresh_expires_at: None,
                access_token: parsed.token,
                refresh_token: None,
                token_type: Some("Bearer".into()),
                expires_at: Some(expires_at),
                scope: None,
                metadata: Metadata::new(),
                client: None,
            })
        }
        401 => Err(RefreshError::InvalidClient),
        404 => Err(RefreshError::Revoked {
            code: "installation_not_found".into(),
        }),
        status @ (429 | 500..=599) => Err(RefreshError::Unavailable {
            reason: format!("GitHub answered HTTP {status}"),
            retry_after: answer.retry_after,
            retryable: true,
        }),
        status => Err(RefreshError::Rejected(format!(
            "GitHub refused the installation token request (HTTP {status})"
        ))),
    }
}

/// Builds our token set from a provider response, applying the connector type's expiry rules
/// and keeping only the declared metadata fields.
fn to_token_set(ct: &ConnectorType, r: ProviderTokenResponse, now: i64) -> TokenSet {
    let access_token = Secret::new(r.access_token.secret().clone());
    let expires_at = access_expires_at(ct, r.expires_in, &access_token, now);
    let refresh_expires_in = r
        .extra
        .get("refresh_token_expires_in")
        .and_then(|v| match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
    // The catalog's lifetimes are applied where the grant is stored (`refresh::lifetime`).
    let refresh_expires_at = refresh_expires_in
        .filter(|s| *s > 0)
        .map(|s| now.saturating_add(s.min(MAX_LIFETIME as i64)));
    let has_refresh = r
        .refresh_token
        .as_ref()
        .is_some_and(|t| !t.secret().is_empty());
    let metadata = ct
        .metadata_fields
        .iter()
        .filter_map(|f| r.extra.get(f).map(|v| (f.clone(), v.clone())))
        .collect();
    TokenSet {
        access_token,
        refresh_token: r
            .refresh_token
            .map(|t| Secret::new(t.secret().clone()))
            .filter(|t| !t.is_empty()),
        token_type: r.token_type,
        expires_at,
        scope: r.scope,
        metadata,
        refresh_expires_at: if has_refresh {
            refresh_expires_at
        } else {
            None
        },
        client: None,
    }
}

/// When an access token expires, from every source in order: the answer's `expires_in`, else
/// the `exp` claim when the access token is a JWT, else the catalog's `default_expires_in`;
/// `None` (unknown) for a connector type whose tokens do not expire, or when nothing says.
pub fn access_expires_at(
    ct: &ConnectorType,
    expires_in: Option<u64>,
    access_token: &Secret,
    now: i64,
) -> Option<i64> {
    if let Some(s) = expires_in {
        // A lifetime beyond ten years is nonsense (or an overflow): cap it.
        return Some(now.saturating_add(s.min(MAX_LIFETIME) as i64));
    }
    if !ct.expires {
        return None;
    }
    jwt_exp(access_token.expose()).or_else(|| ct.default_expires_in.map(|s| now.saturating_add(s)))
}

/// The `exp` claim of a token that is a JWT (three base64url parts, a JSON payload); the
/// signature is not checked: it only tells how long the provider meant the token to live.
pub fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64().filter(|e| *e > 0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::connectors::{Catalog, ConnectorTypeSpec};
    use crate::domain::ConnectorTypeName;

    fn lifetimes(default_expires_in: Option<i64>) -> std::sync::Arc<ConnectorType> {
        let name = ConnectorTypeName::parse("lifetimes").unwrap();
        let spec = ConnectorTypeSpec {
            authorization_url: Some("https://example.com/authorize".into()),
            token_url: Some("https://example.com/token".into()),
            default_expires_in,
            ..Default::default()
        };
        let overrides = BTreeMap::from([(name.to_string(), spec)]);
        let catalog = Catalog::build_with_env(&overrides, &|_| None, false).unwrap();
        catalog.get(&name).unwrap().clone()
    }

    fn jwt_with_exp(exp: i64) -> String {
        use base64::Engine as _;
        let part = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            part(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
            part(serde_json::json!({"sub": "someone", "exp": exp}))
        )
    }

    /// Must-show 3: the access token's expiry from `expires_in`, else a JWT's `exp`, else the
    /// catalog default; at each, the token is served until its expiry and not at it (the clock
    /// is the `now` given, the decision step's `is_valid`).
    #[test]
    fn expiry_comes_from_expires_in_then_jwt_exp_then_catalog_default() {
        let now = 1_000_000;
        let ct = lifetimes(Some(3_600));
        let answer = |body: Value| {
            let r: ProviderTokenResponse = serde_json::from_value(body).unwrap();
            to_token_set(&ct, r, now)
        };
        let jwt = jwt_with_exp(now + 500);
        let cases = [
            // expires_in wins over the JWT's exp and the default.
            (
                answer(serde_json::json!({"access_token": jwt, "expires_in": 60})),
                now + 60,
            ),
            // No expires_in: the JWT's exp.
            (answer(serde_json::json!({"access_token": jwt})), now + 500),
            // Neither: the catalog's default lifetime.
            (
                answer(serde_json::json!({"access_token": "opaque"})),
                now + 3_600,
            ),
        ];
        for (tokens, expiry) in cases {
            assert_eq!(tokens.expires_at, Some(expiry));
            assert!(tokens.is_valid(expiry - 1), "served until {expiry}");
            assert!(!tokens.is_valid(expiry), "not served at {expiry}");
            assert!(
                !tokens.is_valid(expiry + 86_400),
                "not served past {expiry}"
            );
        }
        // Nothing says: unknown.
        let r: ProviderTokenResponse =
            serde_json::from_value(serde_json::json!({"access_token": "opaque"})).unwrap();
        assert_eq!(to_token_set(&lifetimes(None), r, now).expires_at, None);
    }

    /// GitHub's `X-OAuth-Scopes` header fills `scope` when the body has none.
    #[test]
    fn granted_scopes_come_from_the_x_oauth_scopes_header_when_the_body_has_none() {
        let ct = lifetimes(None);
        let status = http::StatusCode::OK;
        let scoped = |header: Option<&str>, body: &[u8]| {
            let normalized = normalize(&ct, status, false, None, header, body).unwrap();
            let r: ProviderTokenResponse = serde_json::from_slice(normalized.body()).unwrap();
            to_token_set(&ct, r, 0)
        };
        let tokens = scoped(Some("repo, read:org"), br#"{"access_token": "a"}"#);
        assert_eq!(tokens.scope.as_deref(), Some("repo, read:org"));
        assert_eq!(
            tokens.missing_scopes(&["read:org".into(), "admin:org".into()]),
            ["admin:org"]
        );
        let body_wins = scoped(Some("repo"), br#"{"access_token": "a", "scope": "user"}"#);
        assert_eq!(body_wins.scope.as_deref(), Some("user"));
    }

    #[test]
    fn jwt_exp_reads_only_well_formed_jwts() {
        assert_eq!(jwt_exp(&jwt_with_exp(42)), Some(42));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(jwt_exp("a.b.c"), None);
        assert_eq!(jwt_exp(&format!("{}.extra", jwt_with_exp(42))), None);
    }

    #[test]
    fn refresh_token_expires_in_is_read_from_the_answer() {
        let now = 1_000_000;
        let r: ProviderTokenResponse = serde_json::from_value(serde_json::json!({
            "access_token": "a", "refresh_token": "r", "refresh_token_expires_in": "864000"
        }))
        .unwrap();
        assert_eq!(
            to_token_set(&lifetimes(None), r, now).refresh_expires_at,
            Some(now + 864_000)
        );
    }

    fn slack() -> std::sync::Arc<ConnectorType> {
        let catalog = Catalog::build_with_env(&BTreeMap::new(), &|_| None, false).unwrap();
        catalog
            .get(&ConnectorTypeName::parse("slack").unwrap())
            .unwrap()
            .clone()
    }

    /// The whole parse of a token answer: normalization, then the token response, then ours.
    fn parse(ct: &ConnectorType, status: u16, is_form: bool, body: &[u8]) -> Option<TokenSet> {
        let status = http::StatusCode::from_u16(status).ok()?;
        let normalized = normalize(ct, status, is_form, None, None, body).ok()?;
        if normalized.status() != http::StatusCode::OK {
            return None;
        }
        let response: ProviderTokenResponse = serde_json::from_slice(normalized.body()).ok()?;
        Some(to_token_set(ct, response, 1_000_000))
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("access_token".to_string()),
                        Just("expires_in".to_string()),
                        Just("refresh_token".to_string()),
                        Just("scope".to_string()),
                        Just("error".to_string()),
                        Just("authed_user".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(status in 100u16..600, is_form: bool, body in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&slack(), status, is_form, &body);
        }

        #[test]
        fn arbitrary_json_answers_parse_to_sane_token_sets(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Some(tokens) = parse(&slack(), 200, false, &body) {
                // An access token came as a string, and the expiry is never in the past nor
                // absurdly far.
                let expected = value.get("access_token").and_then(Value::as_str)
                    .or_else(|| value.get("authed_user").and_then(|u| u.get("access_token")).and_then(Value::as_str));
                prop_assert_eq!(Some(tokens.access_token.expose()), expected);
                if let Some(at) = tokens.expires_at {
                    prop_assert!(at >= 1_000_000 && at <= 1_000_000 + MAX_LIFETIME as i64);
                }
                prop_assert!(tokens.refresh_token.as_ref().is_none_or(|t| !t.is_empty()));
            }
        }

        #[test]
        fn an_error_in_a_200_is_never_a_token(code in "[a-z_]{1,20}") {
            let body = serde_json::to_vec(&serde_json::json!({"ok": false, "error": code})).unwrap();
            prop_assert!(parse(&slack(), 200, false, &body).is_none());
        }

        #[test]
        fn config_and_catalog_parsers_never_panic(text in "[ -~\n]{0,300}") {
            let _ = crate::config::Config::from_toml(&text);
            if let Ok(spec) = toml::from_str::<BTreeMap<String, ConnectorTypeSpec>>(&text) {
                let _ = Catalog::build_with_env(&spec, &|_| None, true);
            }
        }

        #[test]
        fn placeholder_values_never_move_the_host(value in ".{0,40}") {
            let catalog = Catalog::build_with_env(&BTreeMap::new(), &|_| None, false).unwrap();
            let zendesk = catalog.get(&ConnectorTypeName::parse("zendesk").unwrap()).unwrap();
            let mut values = Metadata::new();
            values.insert("subdomain".into(), Value::String(value.clone()));
            if let Ok(url) = zendesk.expand_url(&zendesk.token_url, &values) {
                let parsed = oauth2::url::Url::parse(&url).unwrap();
                prop_assert_eq!(parsed.host_str().unwrap(), format!("{}.zendesk.com", value.to_lowercase()));
                prop_assert_eq!(parsed.path(), "/oauth/tokens");
                prop_assert!(parsed.username().is_empty() && parsed.port().is_none());
            }
        }
    }
}
