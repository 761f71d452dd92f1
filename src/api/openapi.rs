//! The OpenAPI 3 document, generated from the handlers' annotations and types
//! (`GET /openapi.json`).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::resources::{
    admin, audit, binb_token, connect, connection, connections, connector_types, health,
    oauth_token,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a service-account token (tokenbox service-account create)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenbox",
        description = "Keeps OAuth tokens for many tenants and hands a valid access token to extraction jobs."
    ),
    paths(
        binb_token::get,
        connection::get,
        connection::put,
        connection::delete,
        connection::check,
        connect::create,
        connect::show,
        connect::start,
        connect::submit,
        connect::callback,
        connector_types::list,
        connections::list,
        audit::list,
        admin::status,
        admin::login_form,
        admin::login,
        admin::logout,
        admin::new_link,
        oauth_token::token,
        oauth_token::jwks,
        health::get,
        health::ready,
        health::metrics,
        openapi_json,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "this document")
))]
/// `GET /openapi.json` — no authentication.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
