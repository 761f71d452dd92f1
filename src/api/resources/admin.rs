//! `/admin`: a read-only status page for operators. Sign-in with an admin token pasted once;
//! the browser then holds only a random session id (`HttpOnly`, `SameSite=Strict` cookie),
//! stored hashed on the server, expiring, ended at sign-out and when its account expires or is
//! revoked. Forms carry a per-session CSRF token and cross-site posts are refused.
//! Server-rendered, no scripts, no external assets.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::auth::Principal;
use crate::api::pages::{escape, page, request_cookie};
use crate::api::resources::connect::secure_flag;
use crate::api::{AppState, PrincipalName, RequestBody};
use crate::domain::{
    now_epoch, AppId, ConnectionFilter, ConnectionKey, ConnectionStatus, ConnectorTypeName,
};
use crate::signup::{self, NewLink};
use crate::store::{AdminSession, Role};

const COOKIE: &str = "tokenbox_admin";

/// A signed-in operator: the account, and the session's id (from the cookie).
struct Session {
    principal: Principal,
    id: String,
}

impl Session {
    /// The CSRF token of this session's forms: derived from the session id, which only the
    /// signed-in browser holds, so another site cannot know it.
    fn csrf(&self) -> String {
        csrf_token(&self.id)
    }
}

fn csrf_token(session_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("tokenbox admin csrf:{session_id}").as_bytes(),
    ))
}

fn session_hash(id: &str) -> [u8; 32] {
    Sha256::digest(format!("tokenbox admin session:{id}").as_bytes()).into()
}

/// Why an account may not use /admin; `None` when it may.
fn refusal(principal: &Principal) -> Option<&'static str> {
    if principal.role < Role::Admin {
        Some("role")
    } else if principal.scope.is_some() {
        Some("scoped account")
    } else if principal.expires_at.is_some_and(|at| at <= now_epoch()) {
        Some("expired")
    } else {
        None
    }
}

/// The session behind the cookie, if it is live and its account may still use /admin (the
/// same account: a re-created one with the same name has another token hash).
async fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let id = request_cookie(headers, COOKIE).filter(|v| !v.is_empty() && v.len() <= 64)?;
    let hash = session_hash(&id);
    let stored = state
        .keeper
        .store()
        .admin_session(&hash, now_epoch())
        .await
        .ok()
        .flatten()?;
    let account = state.auth.account(&stored.account).await.ok()?;
    let principal = match account {
        Some((token_hash, principal))
            if bool::from(token_hash.ct_eq(&stored.account_token_hash))
                && refusal(&principal).is_none() =>
        {
            principal
        }
        _ => {
            // The account is gone, expired or no longer allowed: the session ends with it.
            let _ = state.keeper.store().delete_admin_session(&hash).await;
            return None;
        }
    };
    Some(Session { principal, id })
}

/// Whether a form post comes from this site: a browser says so in `Sec-Fetch-Site`, and its
/// `Origin` (when sent) names this host. These pages send `Referrer-Policy: no-referrer`, so a
/// browser posts their forms with `Origin: null`; `Sec-Fetch-Site` decides then (and the
/// session's forms also need their CSRF token).
pub(crate) fn same_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|v| v != "same-origin" && v != "none") {
        return false;
    }
    let Some(origin) = headers
        .get(header::ORIGIN)
        .filter(|o| o.as_bytes() != b"null")
    else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| oauth2::url::Url::parse(o).ok())
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        });
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn cross_site() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        "<h1>Refused</h1><p id=\"error\" data-error=\"cross_site_request\">This form was not sent \
         from this site's own page. Open <a href=\"/admin\">the status page</a> and try again.</p>",
    )
}

/// A form post of a signed-in page: the session's CSRF token must come with it.
fn csrf_ok(session: &Session, fields: &[(String, String)]) -> bool {
    field(fields, "csrf").is_some_and(|t| bool::from(t.as_bytes().ct_eq(session.csrf().as_bytes())))
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
            "<h1>tokenbox status</h1>{error}<p>Paste an admin service-account token. This browser \
             then holds a session until you sign out (or it expires); the token itself is not \
             kept.</p>\
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
    (status = 401, description = "the token was not accepted", content_type = "text/html"),
    (status = 403, description = "a cross-site form post", content_type = "text/html")
))]
/// `POST /admin/login` — checks the pasted token and starts a session. A wrong token gets the
/// same answer whether or not the account exists; a real account that may not sign in (not an
/// unrestricted admin, or expired) gets that answer too, and is audited under its name.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let fields = form_fields(&body);
    let Some(token) = field(&fields, "token")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return login_page(StatusCode::BAD_REQUEST, Some("Paste a token first."));
    };
    let refused = || {
        login_page(
            StatusCode::UNAUTHORIZED,
            Some("This token was not accepted."),
        )
    };
    let Some(principal) = state.auth.authenticate(token).await.ok().flatten() else {
        return refused();
    };
    if let Some(reason) = refusal(&principal) {
        tracing::info!(principal = %principal.name, reason, "admin sign-in refused");
        let mut response = refused();
        response
            .extensions_mut()
            .insert(PrincipalName(principal.name));
        return response;
    }
    // The account's stored token hash (a JWT signs in as its account).
    let account_token_hash = match state.auth.account(&principal.name).await {
        Ok(Some((hash, _))) => hash,
        _ => crate::token::hash(token),
    };
    let id = crate::token::random_token("");
    let now = now_epoch();
    let mut expires_at = now.saturating_add(state.config.admin_session_seconds);
    if let Some(at) = principal.expires_at {
        expires_at = expires_at.min(at);
    }
    let stored = AdminSession {
        id_hash: session_hash(&id),
        account: principal.name.clone(),
        account_token_hash,
        created_at: now,
        expires_at,
    };
    if let Err(e) = state.keeper.store().create_admin_session(&stored).await {
        tracing::error!(error = %e, "cannot store an admin session");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign in",
            "<h1>The database does not answer</h1>",
        );
    }
    let cookie = format!(
        "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        expires_at - now,
        secure_flag(&state.public_url)
    );
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .extensions_mut()
        .insert(PrincipalName(principal.name));
    response
}

#[utoipa::path(post, path = "/admin/logout", tag = "admin", responses(
    (status = 303, description = "signed out: to /admin/login"),
    (status = 403, description = "a cross-site form post, or no CSRF token", content_type = "text/html")
))]
/// `POST /admin/logout` — ends the session on the server and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    if let Some(session) = session(&state, &headers).await {
        if !same_site(&headers) || !csrf_ok(&session, &form_fields(&body)) {
            return cross_site();
        }
        if let Err(e) = state
            .keeper
            .store()
            .delete_admin_session(&session_hash(&session.id))
            .await
        {
            tracing::error!(error = %e, "cannot end an admin session");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign out",
                "<h1>The database does not answer</h1><p>You are still signed in.</p>",
            );
        }
    }
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
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    let csrf = escape(&session.csrf());
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
    // Whose account each one is, so the operator knows whom to ask to reconnect.
    let mut accounts: std::collections::HashMap<_, _> = match (broken.first(), broken.last()) {
        (Some(first), Some(last)) => store
            .connection_accounts_between(&first.key, &last.key)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect(),
        _ => Default::default(),
    };
    let mut attention = String::new();
    for c in &broken {
        let account = accounts
            .remove(&c.key)
            .map(|a| a.account)
            .and_then(|a| a.email.or(a.name).or(a.id))
            .unwrap_or_default();
        attention.push_str(&format!(
            "<tr class=\"attention\"><td>{app}</td><td>{ct}</td><td class=\"account\">{account}</td><td><span class=\"status bad\">reconnect</span></td>\
             <td>{refreshed}</td><td>{error}</td><td><form method=\"post\" action=\"/admin/connect-links\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"app_id\" value=\"{app}\"><input type=\"hidden\" name=\"connector_type\" value=\"{ct}\">\
             <button class=\"new-link\" type=\"submit\" style=\"padding:6px 10px;font-size:.85rem\">New connect link</button></form></td></tr>",
            app = escape(c.key.app_id.as_str()),
            ct = escape(c.key.connector_type.as_str()),
            account = escape(&account),
            refreshed = ago(now, c.refreshed_at),
            error = escape(&c.last_error.clone().unwrap_or_default().chars().take(80).collect::<String>()),
        ));
    }
    // Issue 16: refresh tokens that die within `reauthorization_warning_days`.
    let due = store
        .list_connections(&ConnectionFilter {
            refresh_expiring_before: Some(now.saturating_add(state.keeper.warning_window())),
            limit: 200,
            ..ConnectionFilter::default()
        })
        .await
        .unwrap_or_default();
    for c in &due {
        attention.push_str(&format!(
            "<tr class=\"attention due\"><td>{app}</td><td>{ct}</td><td><span class=\"status\">reconnect soon</span></td>\
             <td>{refreshed}</td><td>the refresh token expires in {days} day(s)</td><td></td></tr>",
            app = escape(c.key.app_id.as_str()),
            ct = escape(c.key.connector_type.as_str()),
            refreshed = ago(now, c.refreshed_at),
            days = (c.refresh_expires_at.unwrap_or(now) - now).max(0) / 86_400,
        ));
    }
    if attention.is_empty() {
        attention = "<tr><td colspan=\"7\">Nothing needs attention.</td></tr>".into();
    }
    let mut response = page(
        StatusCode::OK,
        "Status",
        &format!(
            "<style>main{{width:min(1100px,calc(100vw - 32px))}} table{{width:100%;border-collapse:collapse;margin:0 0 24px;font-size:.9rem}} \
             td,th{{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e9ef;vertical-align:middle}} th{{color:#6b7587;font-weight:600}}</style>\
             <form method=\"post\" action=\"/admin/logout\" style=\"float:right\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button id=\"logout\" type=\"submit\" \
             style=\"width:auto;padding:6px 12px;font-size:.85rem;background:#8a93a5\">Sign out</button></form>\
             <h1>Connections</h1><p><strong>{total}</strong> connections, <strong id=\"broken-count\">{broken_total}</strong> need their tenant to reconnect.</p>\
             <h2 style=\"font-size:1.05rem\">Need attention</h2>\
             <table id=\"attention\"><tr><th>App</th><th>Connector</th><th>Account</th><th>Status</th><th>Last refresh</th><th>Last error</th><th></th></tr>{attention}</table>\
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
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    let fields = form_fields(&body);
    if !same_site(&headers) || !csrf_ok(&session, &fields) {
        return cross_site();
    }
    let principal = session.principal;
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
