//! The route table: every route with who may call it, in one screen.

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use super::auth::{require_role, Authenticator};
use super::error::ApiError;
use super::resources::binb_token::BinBToken;
use super::resources::{connect, connection, connector_types, health};
use super::{access_log, AppState};
use crate::secrets::Role;

/// Largest request body accepted (a token set is a few kilobytes at most).
const BODY_LIMIT: usize = 64 * 1024;

/// Who may call a route. Every route declares one; there is no default.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// No credential: health checks, and the tenant's signup pages (whose URL holds a secret).
    Public,
    /// A service account with at least this role.
    Role(Role),
}

const SUPERADMIN: Access = Access::Role(Role::Superadmin);
const ADMIN: Access = Access::Role(Role::Admin);

pub fn router(state: AppState) -> Router {
    let auth = state.auth.clone();
    let mut r = Router::new();
    r = add_smallapp_resource(r, &auth, "binb-token", SUPERADMIN, get(BinBToken::get));
    r = add_smallapp_resource(
        r,
        &auth,
        "connection",
        ADMIN,
        get(connection::get)
            .put(connection::put)
            .delete(connection::delete),
    );
    r = add_smallapp_resource(r, &auth, "connect-links", ADMIN, post(connect::create));
    r = add_resource(
        r,
        &auth,
        "/connector-types",
        ADMIN,
        get(connector_types::list),
    );
    r = add_resource(
        r,
        &auth,
        "/connect/{secret}",
        Access::Public,
        get(connect::show).post(connect::start),
    );
    r = add_resource(
        r,
        &auth,
        "/oauth/callback",
        Access::Public,
        get(connect::callback),
    );
    r = add_resource(r, &auth, "/healthz", Access::Public, get(health::get));
    r.fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn(access_log))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .with_state(state)
}

/// Declares `/{app_id}/{connector_type}/{resource}`: the one place that applies what every
/// small-app resource shares (path shape, role check, access log fields).
pub fn add_smallapp_resource(
    router: Router<AppState>,
    auth: &Arc<Authenticator>,
    resource: &str,
    access: Access,
    method_router: MethodRouter<AppState>,
) -> Router<AppState> {
    add_resource(
        router,
        auth,
        &format!("/{{app_id}}/{{connector_type}}/{resource}"),
        access,
        method_router,
    )
}

/// Declares a route with its access rule; methods it does not serve answer 405 in JSON.
pub fn add_resource(
    router: Router<AppState>,
    auth: &Arc<Authenticator>,
    path: &str,
    access: Access,
    method_router: MethodRouter<AppState>,
) -> Router<AppState> {
    let method_router = method_router.fallback(|| async { ApiError::MethodNotAllowed });
    let guarded = match access {
        Access::Public => method_router,
        Access::Role(role) => {
            let auth = auth.clone();
            method_router.route_layer(middleware::from_fn(move |request, next| {
                require_role(auth.clone(), role, request, next)
            }))
        }
    };
    router.route(path, guarded)
}
