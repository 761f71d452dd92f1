//! The route table: every route with its methods and who may call it, in one screen.
//! `tokenbox routes` prints it; the role-matrix test checks every line against the server.

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, on, post, MethodFilter, MethodRouter};
use axum::Router;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::auth::{require_role, Authenticator};
use super::error::ApiError;
use super::resources::binb_token::{self, BinBToken};
use super::resources::{
    admin, audit, connect, connection, connections, connector_types, health, oauth_token, proxy,
};
use super::{access_log, AppState};
use crate::store::Role;

/// Largest request body accepted (a token set is a few kilobytes at most).
const BODY_LIMIT: usize = 64 * 1024;

/// Who may call a route. Every route declares one; there is no default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential: health checks, and the tenant's signup pages (whose URL holds a secret).
    Public,
    /// A service account with at least this role.
    Role(Role),
}

const SUPERADMIN: Access = Access::Role(Role::Superadmin);
const ADMIN: Access = Access::Role(Role::Admin);
const PUBLIC: Access = Access::Public;

/// The table itself.
fn declare(t: &mut RouteTable) {
    use Method::*;
    t.add_smallapp_resource(
        BinBToken::RESOURCE,
        &[Get],
        Access::Role(BinBToken::ROLE),
        get(binb_token::get),
    )
    .audit(Get, "token.read");
    t.add_smallapp_resource(
        "connection",
        &[Get, Put, Delete],
        ADMIN,
        get(connection::get)
            .put(connection::put)
            .delete(connection::delete),
    )
    .audit(Put, "connection.import")
    .audit(Delete, "connection.delete");
    t.add_smallapp_resource("connection/check", &[Post], ADMIN, post(connection::check))
        .audit(Post, "connection.check");
    // The proxy mode streams bodies of any size (up to `proxy_max_body_bytes`), outside the
    // JSON API's body limit; it records its own audit event per call.
    t.add_smallapp_resource(
        "proxy/{*path}",
        &[Get, Post, Put, Patch, Delete],
        SUPERADMIN,
        on(
            MethodFilter::GET
                .or(MethodFilter::POST)
                .or(MethodFilter::PUT)
                .or(MethodFilter::PATCH)
                .or(MethodFilter::DELETE),
            proxy::forward,
        ),
    )
    .streaming();
    t.add_smallapp_resource("connect-links", &[Post], ADMIN, post(connect::create))
        .audit(Post, "connect_link.create");
    t.add_resource(
        "/connector-types",
        &[Get],
        ADMIN,
        get(connector_types::list),
    );
    t.add_resource("/audit", &[Get], SUPERADMIN, get(audit::list))
        .audit(Get, "audit.read");
    t.add_resource("/connections", &[Get], ADMIN, get(connections::list));
    t.add_resource(
        "/connect/{secret}",
        &[Get, Post],
        PUBLIC,
        get(connect::show).post(connect::start),
    );
    t.add_resource(
        "/connect/{secret}/credential",
        &[Post],
        PUBLIC,
        post(connect::submit),
    )
    .audit(Post, "connection.connect");
    t.add_resource("/oauth/callback", &[Get], PUBLIC, get(connect::callback))
        .audit(Get, "connection.connect");
    t.add_resource("/oauth/token", &[Post], PUBLIC, post(oauth_token::token))
        .audit(Post, "client_credentials.token");
    t.add_resource(
        "/.well-known/jwks.json",
        &[Get],
        PUBLIC,
        get(oauth_token::jwks),
    );
    // The status page authenticates with its own cookie (an admin token), not a bearer.
    t.add_resource("/admin", &[Get], PUBLIC, get(admin::status));
    t.add_resource(
        "/admin/login",
        &[Get, Post],
        PUBLIC,
        get(admin::login_form).post(admin::login),
    )
    .audit(Post, "admin.login");
    t.add_resource("/admin/logout", &[Post], PUBLIC, post(admin::logout));
    t.add_resource(
        "/admin/connect-links",
        &[Post],
        PUBLIC,
        post(admin::new_link),
    )
    .audit(Post, "connect_link.create");
    t.add_resource("/healthz", &[Get], PUBLIC, get(health::get));
    t.add_resource("/readyz", &[Get], PUBLIC, get(health::ready));
    t.add_resource("/metrics", &[Get], PUBLIC, get(health::metrics));
    t.add_resource(
        "/openapi.json",
        &[Get],
        PUBLIC,
        get(super::openapi::openapi_json),
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// One line of the table, as `tokenbox routes` prints it.
#[derive(Debug, Serialize)]
pub struct RouteEntry {
    pub path: String,
    pub methods: Vec<Method>,
    /// `public`, `admin` or `superadmin`.
    pub access: &'static str,
    /// The audit action recorded for a method, when the method is audited.
    #[serde(skip)]
    pub audit: Vec<(Method, &'static str)>,
    /// Whether the route streams large bodies outside the JSON API's body limit and passes a
    /// provider's API through (the proxy): not in the OpenAPI document, which describes the
    /// JSON API.
    #[serde(rename = "passthrough")]
    pub streaming: bool,
}

impl Method {
    pub(crate) fn matches(self, method: &axum::http::Method) -> bool {
        use axum::http::Method as M;
        matches!(
            (self, method),
            (Self::Get, &M::GET)
                | (Self::Post, &M::POST)
                | (Self::Put, &M::PUT)
                | (Self::Patch, &M::PATCH)
                | (Self::Delete, &M::DELETE)
        )
    }
}

/// The audit action of a request when its handler names it on the response (a route serving
/// several actions); otherwise the access log takes the one the route declared.
#[derive(Clone, Copy, Debug)]
pub struct AuditAction(pub &'static str);

/// A route just declared, to which audit actions can be attached.
pub struct Declared<'t> {
    table: &'t mut RouteTable,
}

impl Declared<'_> {
    /// Records `action` in the audit trail for every `method` request of this route, refusals
    /// included.
    pub fn audit(self, method: Method, action: &'static str) -> Self {
        if let Some(entry) = self.table.entries.last_mut() {
            entry.audit.push((method, action));
        }
        self
    }

    /// Serves this route outside the JSON API's body limit, with the proxy's own.
    pub fn streaming(self) -> Self {
        if let Some(entry) = self.table.entries.last_mut() {
            entry.streaming = true;
        }
        self
    }
}

/// Collects the declared routes into a router (with the role checks) and a description.
pub struct RouteTable {
    router: Router<AppState>,
    /// The streaming routes (the proxy), under their own body limit.
    streaming: Router<AppState>,
    auth: Option<Arc<Authenticator>>,
    entries: Vec<RouteEntry>,
    /// The last declared route, added to the router once its audit actions are known.
    pending: Option<MethodRouter<AppState>>,
}

impl RouteTable {
    /// Declares `/{app_id}/{connector_type}/{resource}`: the one place that applies what every
    /// small-app resource shares (path shape, role check, access log fields).
    pub fn add_smallapp_resource(
        &mut self,
        resource: &str,
        methods: &[Method],
        access: Access,
        method_router: MethodRouter<AppState>,
    ) -> Declared<'_> {
        self.add_resource(
            &format!("/{{app_id}}/{{connector_type}}/{resource}"),
            methods,
            access,
            method_router,
        )
    }

    /// Declares a route with its access rule; methods it does not serve answer 405 in JSON.
    pub fn add_resource(
        &mut self,
        path: &str,
        methods: &[Method],
        access: Access,
        method_router: MethodRouter<AppState>,
    ) -> Declared<'_> {
        self.flush();
        self.entries.push(RouteEntry {
            path: path.to_string(),
            methods: methods.to_vec(),
            access: match access {
                Access::Public => "public",
                Access::Role(role) => role.as_str(),
            },
            audit: Vec::new(),
            streaming: false,
        });
        if let Some(auth) = &self.auth {
            self.pending = Some(guard(auth, access, method_router));
        }
        Declared { table: self }
    }

    /// Adds the last declared route to the router, marked with its audit actions.
    fn flush(&mut self) {
        let Some(method_router) = self.pending.take() else {
            return;
        };
        let entry = self.entries.last().expect("a pending route has its entry");
        if entry.streaming {
            let router = std::mem::take(&mut self.streaming);
            self.streaming = router.route(&entry.path, method_router);
        } else {
            let router = std::mem::take(&mut self.router);
            self.router = router.route(&entry.path, method_router);
        }
    }
}

/// A route's handlers behind its access rule; methods it does not serve answer 405 in JSON.
fn guard(
    auth: &Arc<Authenticator>,
    access: Access,
    method_router: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    {
        let method_router = method_router.fallback(|| async { ApiError::MethodNotAllowed });
        match access {
            Access::Public => method_router,
            Access::Role(role) => {
                let auth = auth.clone();
                method_router.route_layer(middleware::from_fn(move |request, next| {
                    require_role(auth.clone(), role, request, next)
                }))
            }
        }
    }
}

/// The application's router: the table, the JSON 404, the access log and the body limit.
pub fn router(state: AppState) -> Router {
    let mut table = RouteTable {
        router: Router::new(),
        streaming: Router::new(),
        auth: Some(state.auth.clone()),
        entries: Vec::new(),
        pending: None,
    };
    declare(&mut table);
    table.flush();
    let audited = table
        .entries
        .iter()
        .filter(|e| !e.audit.is_empty())
        .map(|e| (e.path.clone(), e.audit.clone()))
        .collect();
    let sandbox = state
        .sandbox_secret
        .as_deref()
        .map(|secret| {
            super::sandbox::router(secret, &crate::signup::redirect_uri(&state.public_url))
        })
        .unwrap_or_default();
    let slow_client_timeout = state.config.slow_client_timeout;
    let body_timeout = state.config.body_timeout;
    // The sandbox (when mounted) sits inside the same layers as the API.
    let proxy_limit = usize::try_from(state.config.proxy_max_body_bytes).unwrap_or(usize::MAX);
    let streaming = table
        .streaming
        .with_state(state.clone())
        .layer(RequestBodyLimitLayer::new(proxy_limit));
    let router = table
        .router
        .fallback(|| async { ApiError::NotFound })
        .with_state(state.clone())
        .merge(sandbox)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .merge(streaming)
        .layer(middleware::from_fn_with_state(
            super::AccessLogState {
                app: state,
                audited: Arc::new(audited),
            },
            access_log,
        ))
        // A client that sends its body slowly gets 408 instead of holding the request open.
        .layer(RequestBodyTimeoutLayer::new(slow_client_timeout))
        // ... and a whole-body deadline, however steadily it trickles in.
        .layer(middleware::from_fn(move |request, next| {
            super::limits::body_deadline(body_timeout, request, next)
        }));
    // The request spans, when traces are exported (the router is untouched otherwise).
    crate::tracing_otel::with_request_spans(router)
}

/// The table without a server, for `tokenbox routes` and documentation.
pub fn describe() -> Vec<RouteEntry> {
    let mut table = RouteTable {
        router: Router::new(),
        streaming: Router::new(),
        auth: None,
        entries: Vec::new(),
        pending: None,
    };
    declare(&mut table);
    table.entries
}
