//! `/admin`: a read-only status page for operators. Login with an admin token pasted once,
//! kept in an `HttpOnly`, `SameSite=Strict` cookie; server-rendered, no scripts, no external
//! assets.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::api::auth::Principal;
use crate::api::pages::{escape, page};
use crate::api::{AppState, RequestBody};
use crate::domain::{
    now_epoch, AppId, ConnectionFilter, ConnectionKey, ConnectionStatus, ConnectorTypeName,
};
use crate::secrets::Role;
use crate::signup::{self, NewLink};

const COOKIE: &str = "tokenbox_admin";

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The admin behind the cookie, if any (an unrestricted admin or superadmin account).
async fn admin(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    let token = cookie_token(headers)?;
    state
        .auth
        .authenticate(&token)
        .await
        .ok()
        .flatten()
        .filter(|p| p.role >= Role::Admin && p.scope.is_none())
        .filter(|p| p.expires_at.is_none_or(|at| at > now_epoch()))
}

fn to_login() -> Response {
    Redirect::to("/admin/login").into_response()
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    oauth2::url::form_urlencoded::parse(body)
        .into_owned()
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"status bad\" id=\"login-error\">{}</p>",
                escape(e)
            )
        })
        .unwrap_or_default();
    page(
        status,
        "Sign in",
        &format!(
            "<h1>tokenbox status</h1>{error}<p>Paste an admin service-account token. It is kept in a \
             cookie of this browser only, until you sign out.</p>\
             <form method=\"post\" action=\"/admin/login\"><p><input id=\"token\" name=\"token\" \
             type=\"password\" autocomplete=\"off\" style=\"width:100%;padding:10px;font-size:1rem\"></p>\
             <button id=\"login\" type=\"submit\">Sign in</button></form>"
        ),
    )
}

#[utoipa::path(get, path = "/admin/login", tag = "admin", responses(
    (status = 200, description = "the sign-in form", content_type = "text/html")
))]
/// `GET /admin/login` — the sign-in form.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[utoipa::path(post, path = "/admin/login", tag = "admin", responses(
    (status = 303, description = "signed in: to /admin"),
    (status = 400, description = "no token given", content_type = "text/html"),
    (status = 401, description = "the token was not accepted", content_type = "text/html")
))]
/// `POST /admin/login` — checks the pasted token and sets the cookie. A wrong token gets the
/// same answer whether or not the account exists.
pub async fn login(State(state): State<AppState>, RequestBody(body): RequestBody) -> Response {
    let fields = form_fields(&body);
    let Some(token) = field(&fields, "token")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return login_page(StatusCode::BAD_REQUEST, Some("Paste a token first."));
    };
    let accepted = state
        .auth
        .authenticate(token)
        .await
        .ok()
        .flatten()
        .filter(|p| p.role >= Role::Admin && p.scope.is_none());
    let Some(principal) = accepted else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("This token was not accepted."),
        );
    };
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=43200{secure}");
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .extensions_mut()
        .insert(crate::api::PrincipalName(principal.name));
    response
}

#[utoipa::path(post, path = "/admin/logout", tag = "admin", responses(
    (status = 303, description = "signed out: to /admin/login")
))]
/// `POST /admin/logout` — clears the cookie.
pub async fn logout() -> Response {
    let mut response = to_login();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tokenbox_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

fn ago(now: i64, at: Option<i64>) -> String {
    match at {
        None => "-".into(),
        Some(at) if now - at < 120 => format!("{} s ago", now - at),
        Some(at) if now - at < 7200 => format!("{} min ago", (now - at) / 60),
        Some(at) => format!("{} h ago", (now - at) / 3600),
    }
}

#[utoipa::path(get, path = "/admin", tag = "admin", responses(
    (status = 200, description = "the status page", content_type = "text/html"),
    (status = 303, description = "not signed in: to /admin/login")
))]
/// `GET /admin` — counts by status and connector type, and the connections that need
/// attention first, each with a button that creates a new connect link.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if admin(&state, &headers).await.is_none() {
        return to_login();
    }
    let store = state.keeper.store();
    let (counts, broken) = match (
        store.count_connections().await,
        store
            .list_connections(&ConnectionFilter {
                status: Some(ConnectionStatus::ReauthorizationRequired),
                limit: 200,
                ..ConnectionFilter::default()
            })
            .await,
    ) {
        (Ok(c), Ok(b)) => (c, b),
        _ => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Status",
                "<h1>The database does not answer</h1>",
            )
        }
    };
    let now = now_epoch();
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    let broken_total: i64 = counts
        .iter()
        .filter(|(_, s, _)| s == "reauthorization_required")
        .map(|(_, _, n)| n)
        .sum();
    let mut rows = String::new();
    for (ct, st, n) in &counts {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td style=\"text-align:right\">{n}</td></tr>",
            escape(ct),
            escape(st)
        ));
    }
    let mut attention = String::new();
    for c in &broken {
        attention.push_str(&format!(
            "<tr class=\"attention\"><td>{app}</td><td>{ct}</td><td><span class=\"status bad\">reconnect</span></td>\
             <td>{refreshed}</td><td>{error}</td><td><form method=\"post\" action=\"/admin/connect-links\">\
             <input type=\"hidden\" name=\"app_id\" value=\"{app}\"><input type=\"hidden\" name=\"connector_type\" value=\"{ct}\">\
             <button class=\"new-link\" type=\"submit\" style=\"padding:6px 10px;font-size:.85rem\">New connect link</button></form></td></tr>",
            app = escape(c.key.app_id.as_str()),
            ct = escape(c.key.connector_type.as_str()),
            refreshed = ago(now, c.refreshed_at),
            error = escape(&c.last_error.clone().unwrap_or_default().chars().take(80).collect::<String>()),
        ));
    }
    if attention.is_empty() {
        attention = "<tr><td colspan=\"6\">Nothing needs attention.</td></tr>".into();
    }
    let mut response = page(
        StatusCode::OK,
        "Status",
        &format!(
            "<style>main{{width:min(1100px,calc(100vw - 32px))}} table{{width:100%;border-collapse:collapse;margin:0 0 24px;font-size:.9rem}} \
             td,th{{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e9ef;vertical-align:middle}} th{{color:#6b7587;font-weight:600}}</style>\
             <form method=\"post\" action=\"/admin/logout\" style=\"float:right\"><button id=\"logout\" type=\"submit\" \
             style=\"width:auto;padding:6px 12px;font-size:.85rem;background:#8a93a5\">Sign out</button></form>\
             <h1>Connections</h1><p><strong>{total}</strong> connections, <strong id=\"broken-count\">{broken_total}</strong> need their tenant to reconnect.</p>\
             <h2 style=\"font-size:1.05rem\">Need attention</h2>\
             <table id=\"attention\"><tr><th>App</th><th>Connector</th><th>Status</th><th>Last refresh</th><th>Last error</th><th></th></tr>{attention}</table>\
             <h2 style=\"font-size:1.05rem\">By connector type and status</h2>\
             <table id=\"counts\"><tr><th>Connector</th><th>Status</th><th style=\"text-align:right\">Connections</th></tr>{rows}</table>"
        ),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    );
    response
}

#[utoipa::path(post, path = "/admin/connect-links", tag = "admin", responses(
    (status = 200, description = "the new link, to send to the tenant", content_type = "text/html"),
    (status = 303, description = "not signed in: to /admin/login")
))]
/// `POST /admin/connect-links` — a new connect link for a connection, from the status page.
pub async fn new_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    let Some(principal) = admin(&state, &headers).await else {
        return to_login();
    };
    let fields = form_fields(&body);
    let key = match (
        field(&fields, "app_id").map(AppId::parse),
        field(&fields, "connector_type").map(ConnectorTypeName::parse),
    ) {
        (Some(Ok(app)), Some(Ok(ct))) => ConnectionKey::new(app, ct),
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "New link",
                "<h1>Invalid request</h1>",
            )
        }
    };
    match signup::create_link(
        &state.keeper,
        &state.config,
        &state.public_url,
        &key,
        NewLink::default(),
    )
    .await
    {
        Ok(link) => {
            let mut response = page(
                StatusCode::OK,
                "New connect link",
                &format!(
                    "<h1>New connect link</h1><p>Send this link to the tenant of <strong>{app}</strong> so \
                     that they reconnect their {ct} account. It works once and expires in 7 days.</p>\
                     <p><code id=\"link\" style=\"word-break:break-all\">{url}</code></p>\
                     <p><a href=\"/admin\">Back to the status page</a></p>",
                    app = escape(key.app_id.as_str()),
                    ct = escape(key.connector_type.as_str()),
                    url = escape(&link.url),
                ),
            );
            response
                .extensions_mut()
                .insert(crate::api::PrincipalName(principal.name));
            response.extensions_mut().insert(crate::api::AuditKey(key));
            response
        }
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            "New link",
            &format!("<h1>No link</h1><p>{}</p>", escape(&e.to_string())),
        ),
    }
}
