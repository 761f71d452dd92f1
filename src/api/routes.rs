//! The route table: every route with its role, in one screen.

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, MethodRouter};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use super::auth::{require_role, Authenticator};
use super::error::ApiError;
use super::resources::binb_token::BinBToken;
use super::resources::{connection, health};
use super::{access_log, AppState};
use crate::secrets::Role;

/// Largest request body accepted (a token set is a few kilobytes at most).
const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let auth = state.auth.clone();
    let mut router = Router::new();
    router = add_smallapp_resource(
        router,
        &auth,
        "binb-token",
        Role::Superadmin,
        get(BinBToken::get),
    );
    router = add_smallapp_resource(
        router,
        &auth,
        "connection",
        Role::Admin,
        axum::routing::put(connection::put),
    );
    router
        .route("/healthz", get(health::get))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn(access_log))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .with_state(state)
}

/// Declares `/{app_id}/{connector_type}/{resource}`: the one place that applies what every
/// small-app resource shares. The role is not optional: a route cannot be declared without one.
pub fn add_smallapp_resource(
    router: Router<AppState>,
    auth: &Arc<Authenticator>,
    resource: &str,
    role: Role,
    method_router: MethodRouter<AppState>,
) -> Router<AppState> {
    let auth = auth.clone();
    let guarded = method_router
        .fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(middleware::from_fn(move |request, next| {
            require_role(auth.clone(), role, request, next)
        }));
    router.route(
        &format!("/{{app_id}}/{{connector_type}}/{resource}"),
        guarded,
    )
}
