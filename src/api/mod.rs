//! The HTTP API: the route table, authentication, errors and one module per resource.

pub mod auth;
pub mod error;
pub mod limits;
pub mod openapi;
pub mod pages;
pub mod resources;
pub mod routes;
pub mod sandbox;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::config::Config;
use crate::domain::{AppId, ConnectionKey, ConnectorTypeName};
use crate::refresh::SecretsKeeper;
use auth::Authenticator;
use error::{ApiError, ErrorCode};

/// Shared state of every handler: one reference count per clone (each layer and handler of a
/// request takes one), the fields behind it.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppStateInner {
    pub keeper: SecretsKeeper,
    pub auth: Arc<Authenticator>,
    pub jwt: Arc<crate::jwt::JwtIssuer>,
    pub config: Arc<Config>,
    /// The base URL users reach the service at, without a trailing slash.
    pub public_url: Arc<str>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub audit: crate::audit::Audit,
    /// The audit writer task, awaited at shutdown so that no event is lost.
    pub audit_writer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    pub webhooks: crate::webhooks::Webhooks,
    /// The sandbox provider's client secret, when the sandbox is mounted.
    pub sandbox_secret: Option<String>,
}

/// The `{app_id}/{connector_type}` part of a small-app route, validated.
pub struct SmallApp(pub ConnectionKey);

impl<S: Send + Sync> FromRequestParts<S> for SmallApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Decoded once per request, by the access log (`route_key`), then reused here.
        if let Some(DecodedKey(key)) = parts.extensions.get::<DecodedKey>() {
            return Ok(Self(key.clone()));
        }
        // By name: a route may have more parameters (the proxy's `{*path}`).
        let Path(params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::InvalidRequest("malformed path".into()))?;
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let app_id = AppId::parse(param("app_id")).map_err(ApiError::InvalidRequest)?;
        let connector_type =
            ConnectorTypeName::parse(param("connector_type")).map_err(ApiError::InvalidRequest)?;
        Ok(Self(ConnectionKey::new(app_id, connector_type)))
    }
}

/// The connection a per-app route names (`/{app_id}/{connector_type}/...`), decoded and validated
/// exactly as the handler's `SmallApp` sees it; `None` on other routes or when invalid. The
/// audit record, the access log and the scope check all read this one view, never the raw path
/// (`/%61cme-1/...` is `acme-1` to the handler, so it must be `acme-1` to them too).
///
/// The two parameters are the path's first two segments (the route's template says so),
/// percent-decoded as the `Path` extractor decodes them; the key is kept in the request's
/// extensions, where `SmallApp` finds it.
pub fn route_key(request: &mut Request) -> Option<ConnectionKey> {
    if let Some(DecodedKey(key)) = request.extensions().get::<DecodedKey>() {
        return Some(key.clone());
    }
    let per_app = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().starts_with("/{app_id}/{connector_type}/"));
    if !per_app {
        return None;
    }
    fn decoded(raw: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
        percent_encoding::percent_decode_str(raw?)
            .decode_utf8()
            .ok()
    }
    let mut segments = request.uri().path().split('/').skip(1);
    let app_id = AppId::parse(&decoded(segments.next())?).ok()?;
    let connector_type = ConnectorTypeName::parse(&decoded(segments.next())?).ok()?;
    let key = ConnectionKey::new(app_id, connector_type);
    request.extensions_mut().insert(DecodedKey(key.clone()));
    Some(key)
}

/// The connection of a per-app route, decoded once and kept in the request's extensions for
/// the scope check and the handler.
#[derive(Clone)]
struct DecodedKey(ConnectionKey);

/// A request body, read with JSON errors: 413 when too large, 408 when too slow.
pub struct RequestBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(RequestBody)
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    return ApiError::PayloadTooLarge;
                }
                let mut source: Option<&dyn std::error::Error> = Some(&rejection);
                while let Some(error) = source {
                    if error.is::<tower_http::timeout::TimeoutError>()
                        || error.is::<limits::BodyDeadlineElapsed>()
                    {
                        return ApiError::RequestTimeout;
                    }
                    source = error.source();
                }
                ApiError::InvalidRequest("the request body could not be read".into())
            })
    }
}

/// What a handler tells the access log about a request.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub outcome: &'static str,
    pub refreshed: bool,
}

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(crate::token::request_id)
}

/// The connection a request concerned, when its path does not name it (the OAuth callback).
#[derive(Clone, Debug)]
pub struct AuditKey(pub ConnectionKey);

/// The caller's name, set on the response by the role check (for the access log and audit).
#[derive(Clone, Debug)]
pub struct PrincipalName(pub String);

/// The workload acting as the caller's account (a trusted issuer's token), set on the
/// response beside [`PrincipalName`] and recorded beside it in the audit trail.
#[derive(Clone, Debug)]
pub struct WorkloadCaller(pub crate::workload::WorkloadIdentity);

/// What the access log needs besides the application: the audit actions the route table
/// declares, by route template (a map lookup per request rather than a layer per route).
#[derive(Clone)]
pub struct AccessLogState {
    pub app: AppState,
    pub audited: Arc<std::collections::HashMap<String, Vec<(routes::Method, &'static str)>>>,
}

/// One structured log line per request. It names the route template, never the raw path or
/// query (a connect link's path is a secret), and the app and connector type when valid.
/// Audited actions also go to the audit trail, off the request's path.
pub async fn access_log(
    State(logged_state): State<AccessLogState>,
    request: Request,
    next: Next,
) -> Response {
    let AccessLogState {
        app: state,
        audited,
    } = logged_state;
    let started = Instant::now();
    let id = request_id(&request);
    // The audit action the route table declares for this route and method, if any.
    let declared = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| audited.get(p.as_str()))
        .and_then(|actions| {
            actions
                .iter()
                .find(|(m, _)| m.matches(request.method()))
                .map(|(_, a)| *a)
        });
    // The line's fields are gathered only when the line is written (`tokenbox::access=info`).
    let logged = tracing::enabled!(target: "tokenbox::access", tracing::Level::INFO);
    let method = logged.then(|| request.method().clone());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .filter(|_| logged)
        .map(|p| p.as_str().to_string());
    let mut request = request;
    let path_key = route_key(&mut request);
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let (outcome, refreshed) = match response.extensions().get::<Outcome>() {
        Some(o) => (o.outcome, o.refreshed),
        None => (
            response
                .extensions()
                .get::<ErrorCode>()
                .map(|c| c.0)
                .unwrap_or(if status < 400 { "ok" } else { "error" }),
            false,
        ),
    };
    if let Some(method) = method {
        tracing::info!(
            target: "tokenbox::access",
            request_id = %id,
            method = %method,
            route = route.as_deref().unwrap_or("-"),
            status,
            app_id = path_key.as_ref().map_or("-", |k| k.app_id.as_str()),
            connector_type = path_key.as_ref().map_or("-", |k| k.connector_type.as_str()),
            outcome,
            refreshed,
            latency_ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
    let principal = response
        .extensions()
        .get::<PrincipalName>()
        .map(|p| p.0.clone());
    // A handler serving several actions on one route (the token endpoint's grants) names its
    // own on the response.
    let action = response
        .extensions()
        .get::<routes::AuditAction>()
        .map(|a| a.0)
        .or(declared);
    if let Some(action) = action {
        let audit_outcome = if status < 400 { "ok" } else { outcome };
        let key = path_key.or_else(|| response.extensions().get::<AuditKey>().map(|k| k.0.clone()));
        let principal = principal
            .as_deref()
            .unwrap_or(if action == "connection.connect" {
                "tenant"
            } else {
                crate::audit::ANONYMOUS
            });
        let mut event =
            crate::audit::event(principal, action, key.as_ref(), audit_outcome, client_addr);
        if let Some(WorkloadCaller(workload)) = response.extensions().get::<WorkloadCaller>() {
            event.workload_issuer = Some(workload.issuer.clone());
            event.workload_subject = Some(workload.subject.clone());
        }
        state.audit.record(event).await;
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
