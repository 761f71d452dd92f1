//! The proxy mode: `/{app_id}/{connector_type}/proxy/{*path}` sends a job's request to the
//! connector's API with the connection's credential, so the job never holds it, and applies the
//! provider etiquette once for everyone (a fresh token after a 401, a shared pause after a 429).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use hyper::body::Frame;

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::{AppState, SmallApp};
use crate::connectors::{ConnectorType, RefreshError};
use crate::domain::{now_epoch, ConnectionKey, TokenSet};
use crate::refresh::TokenRequest;

/// The header a caller sets to allow the retry after a 401 of a non-idempotent request.
pub const RETRY_UNSAFE: &str = "tokenbox-retry-unsafe";

/// Bodies up to this size are kept, so that a request can be sent again after a 401.
const REPLAYABLE_BODY: usize = 1024 * 1024;

/// A pause asked for by a provider is capped (a wrong header must not stop a connection for a
/// day).
const MAX_PAUSE: i64 = 3600;

/// Headers that belong to one hop (RFC 9110 §7.6.1) or to the caller's session with tokenbox;
/// never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Caller headers that are tokenbox's and not the provider's.
const CALLER_ONLY: &[&str] = &["authorization", "cookie", RETRY_UNSAFE];

/// `ANY /{app_id}/{connector_type}/proxy/{*path}` — role superadmin (or an account scoped to
/// this app and type). Not in the OpenAPI document: it forwards whatever the provider's API
/// takes.
pub async fn forward(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    SmallApp(key): SmallApp,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let ct = state.keeper.connector_type(&key)?.clone();
    refuse_while_paused(&state, &key).await?;
    let served = state
        .keeper
        .retrieve_token(&key, TokenRequest::default())
        .await?;
    let base = ct
        .api_base_url_for(&served.connection.tokens.metadata)
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "connector type '{}' has no api_base_url: its API cannot be reached through the proxy",
                ct.name
            ))
        })?;
    let rest = proxied_path(parts.uri.path()).ok_or(ApiError::NotFound)?;
    let target = proxy_target(&base, rest, parts.uri.query()).map_err(ApiError::InvalidRequest)?;
    let mut body = Payload::of(&parts, body).await?;
    let outgoing = Outgoing {
        state: &state,
        ct: &ct,
        method: &parts.method,
        target: &target,
        forwarded: forwarded_headers(&parts.headers),
    };
    let mut answer = outgoing.send(&served.connection.tokens, &mut body).await?;
    if answer.status() == StatusCode::UNAUTHORIZED && body.replayable() {
        // The provider refused a token tokenbox thought valid: one forced refresh, one retry.
        let forced = TokenRequest {
            min_validity: None,
            force_refresh: true,
        };
        let fresh = state.keeper.retrieve_token(&key, forced).await?;
        answer = outgoing.send(&fresh.connection.tokens, &mut body).await?;
    }
    pause_when_asked(&state, &key, &answer).await?;
    record(&state, &principal, &key, &parts.method, rest, &answer).await;
    Ok(stream_back(answer, state.config.proxy_max_body_bytes))
}

/// `429 rate_limited` while the provider's pause of this connection lasts (any replica may
/// have recorded it).
async fn refuse_while_paused(state: &AppState, key: &ConnectionKey) -> Result<(), ApiError> {
    let now = now_epoch();
    let paused = state.keeper.store().proxy_paused_until(key).await?;
    match paused.filter(|until| *until > now) {
        None => Ok(()),
        Some(until) => Err(ApiError::RateLimited {
            message: format!(
                "the provider asked to slow down; calls of this connection are paused for {} seconds, for every caller",
                until - now
            ),
            retry_after: (until - now) as u64,
        }),
    }
}

/// Records the pause a provider asked for with a 429 or a 503.
async fn pause_when_asked(
    state: &AppState,
    key: &ConnectionKey,
    answer: &reqwest::Response,
) -> Result<(), ApiError> {
    let status = answer.status().as_u16();
    if !matches!(status, 429 | 503) {
        return Ok(());
    }
    if let Some(wait) = provider_wait(answer.headers(), now_epoch()) {
        state
            .keeper
            .store()
            .pause_proxy(key, now_epoch() + wait)
            .await?;
        tracing::warn!(app_id = %key.app_id, connector_type = %key.connector_type, status, pause_seconds = wait, "the provider asked to slow down: proxied calls of this connection paused");
    }
    Ok(())
}

/// A proxied request's body: kept for a retry, or streamed once.
enum Payload {
    Replayable(Bytes),
    Stream(Option<Body>),
}

impl Payload {
    /// A body small enough to keep when the request may be retried after a 401 (an idempotent
    /// method, or the caller's opt-in); otherwise streamed once.
    async fn of(parts: &axum::http::request::Parts, body: Body) -> Result<Self, ApiError> {
        let retry_allowed = is_idempotent(&parts.method)
            || parts
                .headers
                .get(RETRY_UNSAFE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let bodiless = length.is_none() && !parts.headers.contains_key(header::TRANSFER_ENCODING);
        let small = length.is_some_and(|n| n <= REPLAYABLE_BODY)
            || matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE) && bodiless;
        if !(retry_allowed && small) {
            return Ok(Self::Stream(Some(body)));
        }
        axum::body::to_bytes(body, REPLAYABLE_BODY)
            .await
            .map(Self::Replayable)
            .map_err(|_| ApiError::PayloadTooLarge)
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Replayable(_))
    }

    fn take(&mut self) -> reqwest::Body {
        match self {
            Self::Replayable(bytes) => reqwest::Body::from(bytes.clone()),
            Self::Stream(body) => match body.take() {
                Some(body) => reqwest::Body::wrap_stream(body.into_data_stream()),
                None => reqwest::Body::from(Bytes::new()),
            },
        }
    }
}

/// A proxied request, sent once or again after a refresh with the connection's credential.
struct Outgoing<'a> {
    state: &'a AppState,
    ct: &'a ConnectorType,
    method: &'a Method,
    target: &'a reqwest::Url,
    /// The caller's headers that go on to the provider.
    forwarded: HeaderMap,
}

impl Outgoing<'_> {
    async fn send(
        &self,
        tokens: &TokenSet,
        body: &mut Payload,
    ) -> Result<reqwest::Response, ApiError> {
        let (state, ct) = (self.state, self.ct);
        let (credential, query) = ct.credential_headers(tokens);
        let mut headers = self.forwarded.clone();
        for (name, value) in &credential {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let mut url = self.target.clone();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(&query);
        }
        state
            .keeper
            .provider()
            .forward(ct, self.method.clone(), url, headers, body.take())
            .await
            .map_err(|error| match error {
                RefreshError::Unavailable { reason, .. } => ApiError::ProviderUnavailable {
                    message: format!("the provider's API is unavailable: {reason}"),
                    retry_after: 5,
                },
                other => ApiError::ProviderError {
                    message: format!("the provider's API could not be reached: {other}"),
                    retry_after: None,
                },
            })
    }
}

/// What follows `/{app_id}/{connector_type}/proxy` in the raw (still percent-encoded) path.
fn proxied_path(path: &str) -> Option<&str> {
    let mut rest = path;
    for _ in 0..3 {
        rest = rest.strip_prefix('/')?;
        rest = &rest[rest.find('/').unwrap_or(rest.len())..];
    }
    Some(rest)
}

/// The provider URL for a proxied path: under the API base URL, on its host, or an error
/// naming the refused form. `rest` is raw (percent-encoded), `/` or empty for the base itself.
pub fn proxy_target(base: &str, rest: &str, query: Option<&str>) -> Result<reqwest::Url, String> {
    let refused = |why: &str| Err(format!("the proxied path is refused: {why}"));
    if rest.contains("//") || rest.contains('\\') || rest.contains('@') {
        return refused("it holds '//', '\\' or '@'");
    }
    if rest.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return refused("it holds control characters");
    }
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| "the proxied path is refused: it is not UTF-8 once decoded")?;
    if decoded.contains('%') {
        return refused("it is encoded twice, or holds a '%' that encodes nothing");
    }
    if decoded.contains("//") || decoded.contains('\\') || decoded.contains('@') {
        return refused("it holds an encoded '//', '\\' or '@'");
    }
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return refused("it holds a '.' or '..' segment");
    }
    if decoded.bytes().any(|b| b.is_ascii_control()) {
        return refused("it holds encoded control characters");
    }
    let base_url = reqwest::Url::parse(base).map_err(|_| "the API base URL is not valid")?;
    let mut url = base_url.clone();
    let path = format!("{}{}", base_url.path().trim_end_matches('/'), rest);
    url.set_path(if path.is_empty() { "/" } else { &path });
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    let same_origin = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin
        || !url
            .path()
            .starts_with(base_url.path().trim_end_matches('/'))
    {
        return refused("it leaves the API host");
    }
    Ok(url)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The caller's headers that go on to the provider.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let lower = name.as_str();
        if !HOP_BY_HOP.contains(&lower) && !CALLER_ONLY.contains(&lower) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// How long the provider asked to be left alone: `Retry-After` (seconds or an HTTP date),
/// `RateLimit-Reset` (seconds) or `X-RateLimit-Reset` (seconds, or an epoch time when large).
fn provider_wait(headers: &HeaderMap, now: i64) -> Option<i64> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |v: &str| v.parse::<i64>().ok();
    let wait = get("retry-after")
        .and_then(|v| {
            seconds(v).or_else(|| {
                chrono::DateTime::parse_from_rfc2822(v)
                    .ok()
                    .map(|t| t.timestamp() - now)
            })
        })
        .or_else(|| get("ratelimit-reset").and_then(seconds))
        .or_else(|| {
            get("x-ratelimit-reset").and_then(seconds).map(|v| {
                if v > 1_000_000_000 {
                    v - now
                } else {
                    v
                }
            })
        })?;
    (wait > 0).then_some(wait.min(MAX_PAUSE))
}

/// One audit event per proxied call: method, path without its query, status, size when known.
async fn record(
    state: &AppState,
    principal: &Principal,
    key: &ConnectionKey,
    method: &Method,
    path: &str,
    answer: &reqwest::Response,
) {
    let path: String = path.chars().take(200).collect();
    let size = answer
        .content_length()
        .map(|n| format!("{n} bytes"))
        .unwrap_or_else(|| "streamed".into());
    let mut event = crate::audit::event(
        &principal.name,
        "proxy.call",
        Some(key),
        if answer.status().is_success() {
            "ok"
        } else {
            "provider_status"
        },
        None,
    );
    event.subject = Some(format!(
        "{method} {} -> {}, {size}",
        if path.is_empty() { "/" } else { &path },
        answer.status().as_u16()
    ));
    state.audit.record(event).await;
}

/// The provider's answer, streamed back: status, end-to-end headers, and at most `cap` bytes.
fn stream_back(answer: reqwest::Response, cap: u64) -> Response {
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        let lower = name.as_str();
        if !HOP_BY_HOP.contains(&lower) && lower != "set-cookie" || lower == "content-length" {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = Body::new(Capped {
        inner: reqwest::Body::from(answer),
        left: cap,
    });
    let mut response = (status, body).into_response();
    *response.headers_mut() = headers;
    response
}

/// A body that stops with an error after `left` more bytes.
struct Capped {
    inner: reqwest::Body,
    left: u64,
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(axum::Error::new(
                            "the provider's answer exceeds proxy_max_body_bytes",
                        ))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(axum::Error::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://api.example.com/v1";

    #[test]
    fn a_path_stays_under_the_api_base_or_is_refused() {
        let ok = proxy_target(BASE, "/calls", Some("page=2&per_page=50")).unwrap();
        assert_eq!(
            ok.as_str(),
            "https://api.example.com/v1/calls?page=2&per_page=50"
        );
        assert_eq!(
            proxy_target(BASE, "/a%20b/c", None).unwrap().as_str(),
            "https://api.example.com/v1/a%20b/c"
        );
        assert_eq!(
            proxy_target(BASE, "", None).unwrap().as_str(),
            "https://api.example.com/v1"
        );
        for evil in [
            "//evil.example.com/x",
            "/@evil.example.com",
            "/..//evil",
            "/../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/%2f%2fevil.example.com",
            "/%5c%5cevil",
            "/%40evil.example.com",
            "/%252e%252e/admin",
            "/a/./b",
            "/\\evil",
            "/%00",
            "/%zz",
        ] {
            assert!(proxy_target(BASE, evil, None).is_err(), "{evil}");
        }
    }

    #[test]
    fn the_provider_wait_is_read_from_every_header_and_capped() {
        let now = 1_800_000_000;
        let h = |name: &'static str, v: &str| {
            let mut m = HeaderMap::new();
            m.insert(name, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(provider_wait(&h("retry-after", "30"), now), Some(30));
        assert_eq!(provider_wait(&h("ratelimit-reset", "12"), now), Some(12));
        assert_eq!(
            provider_wait(&h("x-ratelimit-reset", &(now + 40).to_string()), now),
            Some(40)
        );
        assert_eq!(provider_wait(&h("x-ratelimit-reset", "7"), now), Some(7));
        assert_eq!(
            provider_wait(&h("retry-after", "999999"), now),
            Some(MAX_PAUSE)
        );
        assert_eq!(provider_wait(&h("retry-after", "0"), now), None);
        assert_eq!(provider_wait(&HeaderMap::new(), now), None);
        assert!(provider_wait(&h("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"), now).is_none());
    }

    #[test]
    fn hop_by_hop_and_caller_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer tbx_secret"),
            ("cookie", "a=b"),
            ("connection", "close"),
            ("accept", "application/json"),
            ("x-custom", "1"),
            (RETRY_UNSAFE, "true"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h);
        assert_eq!(out.len(), 2);
        assert!(out.contains_key("accept") && out.contains_key("x-custom"));
    }
}
