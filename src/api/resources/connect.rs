//! The signup: connect links, the page a tenant opens, and the OAuth callback.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::api::pages::{
    connect_page, credential_form_page, page, request_cookie, result_page, result_page_with_code,
    CredentialFormView,
};
use crate::api::{AppState, AuditKey, RequestBody, SmallApp};
use crate::connectors::Kind;
use crate::secret::Secret;
use crate::signup::{self, LinkView, NewLink, SignupError, TypedCredential};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLinkBody {
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// The tenant's own OAuth client (oauth2 connector types): the authorization URL, the
    /// code exchange, every refresh and the revocation of the connection use it instead of
    /// the operator's. Stored encrypted, never returned.
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    client_secret: Option<Secret>,
    /// Refuse, at the callback, an account other than the connection's current one (the
    /// old tokens stay).
    #[serde(default)]
    same_account: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedLinkBody {
    url: String,
    expires_at: i64,
}

impl From<SignupError> for ApiError {
    fn from(e: SignupError) -> Self {
        match e {
            SignupError::UnknownConnectorType(_) => Self::UnknownConnectorType(e.to_string()),
            SignupError::NotConfigured(_) => Self::ConnectorNotConfigured(e.to_string()),
            SignupError::InvalidRequest(m) => Self::InvalidRequest(m),
            SignupError::Store(s) => s.into(),
            other => Self::InvalidRequest(other.to_string()),
        }
    }
}

#[utoipa::path(
    post,
    path = "/{app_id}/{connector_type}/connect-links",
    tag = "signup",
    security(("bearer" = [])),
    params(("app_id" = String, Path), ("connector_type" = String, Path)),
    request_body(content = CreateLinkBody, description = "all fields optional; an empty body is fine"),
    responses(
        (status = 201, description = "a single-use, expiring link", body = CreatedLinkBody),
        (status = 400, description = "invalid_request", body = crate::api::error::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::error::ErrorBody),
        (status = 403, description = "forbidden: the role or the scope of the account does not allow it", body = crate::api::error::ErrorBody),
        (status = 404, description = "unknown_connector_type or not_connected", body = crate::api::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::error::ErrorBody),
        (status = 409, description = "connector_not_configured", body = crate::api::error::ErrorBody)
    )
)]
/// `POST /{app_id}/{connector_type}/connect-links` — role admin or superadmin. Creates a
/// single-use, expiring link a tenant opens to connect an account.
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    SmallApp(key): SmallApp,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let body: CreateLinkBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateLinkBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            // Only the field names of serde's message are repeated, never a value (the body
            // may carry a client secret).
            let message = e.to_string();
            let reason = if ["unknown field", "missing field", "duplicate field"]
                .iter()
                .any(|p| message.starts_with(p))
            {
                message.split(" at line").next().unwrap_or("malformed JSON")
            } else {
                "malformed JSON or a value of the wrong type"
            };
            ApiError::InvalidRequest(format!(
                "invalid body: {reason}; expected {{\"expires_in\": seconds, \"return_to\": url, \"params\": {{name: value}}, \"client_id\": string, \"client_secret\": string, \"same_account\": bool}}"
            ))
        })?
    };
    let client =
        crate::domain::TenantClient::from_fields(body.client_id, body.client_secret, false)
            .map_err(ApiError::InvalidRequest)?;
    let created = signup::create_link(
        &state.keeper,
        &state.config,
        &state.public_url,
        &key,
        NewLink {
            expires_in: body.expires_in,
            return_to: body.return_to,
            params: body.params,
            client,
            same_account: body.same_account,
        },
    )
    .await?;
    tracing::info!(app_id = %key.app_id, connector_type = %key.connector_type, principal = %principal.name, "connect link created");
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(CreatedLinkBody {
            url: created.url,
            expires_at: created.expires_at,
        }),
    )
        .into_response())
}

fn error_page(error: SignupError) -> Response {
    match error {
        SignupError::LinkInvalid => result_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "This link is no longer valid",
            "The connect link has expired or has already been used. Ask for a new link.",
        ),
        SignupError::StateInvalid => result_page(
            StatusCode::BAD_REQUEST,
            "invalid",
            "This link is no longer valid",
            "This sign-in attempt has expired or was already completed. Open your connect link again.",
        ),
        SignupError::BrowserMismatch => result_page_with_code(
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("browser_mismatch"),
            "This sign-in was started in another browser",
            "Nothing was connected: this sign-in attempt was not started in this browser. \
             Open your connect link in this browser and click Connect again.",
        ),
        SignupError::Denied(reason) => result_page(
            StatusCode::OK,
            "denied",
            "Your account was not connected",
            &format!("Nothing was connected: {reason}. You can try again with the same link while it is valid."),
        ),
        SignupError::CredentialRefused(_) => result_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "error",
            "The provider refused this credential",
            "Nothing was stored. Open your connect link again and check what you enter.",
        ),
        SignupError::ProviderFailed(reason) => result_page(
            StatusCode::BAD_GATEWAY,
            "error",
            "The connection could not be completed",
            &format!("{reason}. Nothing was stored; you can try again with the same link while it is valid."),
        ),
        SignupError::NotConfigured(_) | SignupError::UnknownConnectorType(_) => result_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            "This provider is not available",
            "This provider is not configured on the server. Please contact the app's administrator.",
        ),
        SignupError::InvalidRequest(m) => {
            result_page(StatusCode::BAD_REQUEST, "error", "Invalid request", &m)
        }
        SignupError::AccountMismatch(reason) => result_page_with_code(
            StatusCode::CONFLICT,
            "denied",
            Some("account_mismatch"),
            "This is not the account of this connection",
            &format!("Nothing was changed: {reason}."),
        ),
        SignupError::Store(e) => {
            tracing::error!(error = %e, "storage failure during signup");
            result_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                "Something went wrong",
                "An internal error occurred. Please try again later.",
            )
        }
    }
}

#[utoipa::path(
    get,
    path = "/connect/{secret}",
    tag = "signup",
    params(("secret" = String, Path, description = "the link's secret")),
    responses(
        (status = 200, description = "the page naming the app and the provider, with one Connect button (oauth2), or the labelled form for an API key or a username and password (api_key, basic), which sets the cookie that binds the form to this browser", content_type = "text/html"),
        (status = 400, description = "the link is no longer valid", content_type = "text/html")
    )
)]
/// `GET /connect/{secret}` — public (the link's secret is the credential). The page naming the
/// app and the provider, with one Connect button; for an `api_key` or `basic` connector type,
/// the form that collects the credential.
pub async fn show(State(state): State<AppState>, Path(secret): Path<String>) -> Response {
    match signup::usable_link(&state.keeper, &secret).await {
        Ok(view) if view.connector.kind.has_form() => {
            credential_form(&state, &secret, &view, StatusCode::OK, None).await
        }
        Ok(view) => connect_page(
            view.link.key.app_id.as_str(),
            &view.connector.display_name,
            view.connector.name.as_str(),
            &view.connector.scopes,
        ),
        Err(e) => error_page(e),
    }
}

#[utoipa::path(
    post,
    path = "/connect/{secret}",
    tag = "signup",
    params(("secret" = String, Path, description = "the link's secret")),
    responses(
        (status = 303, description = "to the provider's authorization URL"),
        (status = 400, description = "the link is no longer valid", content_type = "text/html")
    )
)]
/// `POST /connect/{secret}` — public. Starts the authorization-code flow (RFC 6749 §4.1) with
/// a single-use state and PKCE S256 (RFC 7636): 303 to the provider.
pub async fn start(State(state): State<AppState>, Path(secret): Path<String>) -> Response {
    match signup::start(&state.keeper, &state.public_url, &secret).await {
        Ok(started) => {
            let mut response = Redirect::to(&started.url).into_response();
            // The flow is bound to this browser: the callback (a top-level GET navigation from
            // the provider, so SameSite=Lax sends it) must present the same cookie.
            let cookie = format!(
                "{}={}; Path={}; HttpOnly; SameSite=Lax; Max-Age={}{}",
                started.cookie_name,
                started.cookie_value,
                callback_path(&state.public_url),
                signup::STATE_TTL,
                secure_flag(&state.public_url)
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => error_page(e),
    }
}

#[utoipa::path(
    get,
    path = "/oauth/callback",
    tag = "signup",
    params(
        ("code" = Option<String>, Query),
        ("state" = Option<String>, Query),
        ("error" = Option<String>, Query),
        ("error_description" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "connected, or not connected (access denied)", content_type = "text/html"),
        (status = 303, description = "to return_to"),
        (status = 400, description = "the state or the link is no longer valid", content_type = "text/html"),
        (status = 502, description = "the provider refused the code", content_type = "text/html")
    )
)]
/// `GET /oauth/callback` — public. The provider's redirect (RFC 6749 §4.1.2): checks the state,
/// exchanges the code, stores the token set, then a success page or 303 to `return_to`.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_page(SignupError::StateInvalid);
    };
    let cookie_name = query.get("state").map(|s| signup::browser_cookie_name(s));
    let browser = cookie_name
        .as_deref()
        .and_then(|name| request_cookie(&headers, name));
    let mut response =
        match signup::finish(&state.keeper, &state.public_url, &query, browser.as_deref()).await {
            Ok(done) => {
                let key = done.key.clone();
                let mut response = connected_response(done);
                response.extensions_mut().insert(AuditKey(key));
                response
            }
            Err(e) => error_page(e),
        };
    // The flow is over either way (its state is spent): the browser forgets its cookie.
    if let (Some(name), Some(_)) = (cookie_name, browser) {
        let clear = format!(
            "{name}=; Path={}; HttpOnly; SameSite=Lax; Max-Age=0{}",
            callback_path(&state.public_url),
            secure_flag(&state.public_url)
        );
        if let Ok(value) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The credential form of a static-kind link, with a new form token and the cookie that binds
/// it to this browser (sent only with the form's post).
async fn credential_form(
    state: &AppState,
    secret: &str,
    view: &LinkView,
    status: StatusCode,
    error: Option<(&str, String)>,
) -> Response {
    let form = match signup::new_form(&state.keeper, view).await {
        Ok(form) => form,
        Err(e) => return error_page(e),
    };
    let ct = &view.connector;
    let labels = &ct.field_labels;
    let fields = if ct.kind == Kind::ApiKey {
        vec![("api_key", labels.api_key.as_str(), "password")]
    } else if ct.kind == Kind::JwtBearer {
        // The key comes with the connection unless the operator configured one.
        let key = if ct.private_key.is_some() {
            vec![]
        } else {
            vec![(
                "service_account_key",
                "Service account key (the contents of its JSON key file)",
                "textarea",
            )]
        };
        key.into_iter()
            .chain([("subject", "User to act as (optional)", "optional-text")])
            .collect()
    } else {
        vec![
            ("username", labels.username.as_str(), "text"),
            ("password", labels.password.as_str(), "password"),
        ]
    };
    let help_url = ct.help_url.as_ref().and_then(|template| {
        ct.expand_url(template, &signup::params_as_metadata(&view.link.params))
            .ok()
    });
    let mut response = credential_form_page(
        status,
        &CredentialFormView {
            app_id: view.link.key.app_id.as_str(),
            provider: &ct.display_name,
            connector_type: ct.name.as_str(),
            fields,
            help: ct.help.as_deref(),
            help_url,
            // The same path from the link's page and from the form shown again after a post.
            action: form_path(&state.public_url, secret),
            form_token: &form.token,
            error,
            verified: ct.verify_url.is_some(),
        },
    );
    // SameSite=Strict: the form posts from this very page; another site's post never carries
    // the cookie, and without it the post is refused.
    let cookie = format!(
        "{}={}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}{}",
        form.cookie_name,
        form.cookie_value,
        form_path(&state.public_url, secret),
        signup::STATE_TTL,
        secure_flag(&state.public_url)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The last segment of the credential form's route, `/connect/{secret}/credential`.
const FORM_RESOURCE: &str = "credential";

/// The path the credential form posts to, as the browser sees it: its cookie is sent there only.
fn form_path(public_url: &str, secret: &str) -> String {
    oauth2::url::Url::parse(&format!("{public_url}/connect/{secret}/{FORM_RESOURCE}"))
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| format!("/connect/{secret}/{FORM_RESOURCE}"))
}

fn cross_site_form() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        "<div id=\"result\" data-status=\"invalid\" data-error=\"cross_site_request\">\
         <span class=\"status bad\">Refused</span><h1>This form was not sent from its own page</h1>\
         <p>Nothing was stored. Open your connect link and enter the credential there.</p></div>",
    )
}

/// The fields of the credential form; a field sent twice is taken once (the first).
struct CredentialFormBody {
    form_token: Option<String>,
    api_key: Option<Secret>,
    username: Option<Secret>,
    password: Option<Secret>,
    service_account_key: Option<Secret>,
    subject: Option<Secret>,
}

impl CredentialFormBody {
    fn parse(body: &[u8]) -> Self {
        let mut form = Self {
            form_token: None,
            api_key: None,
            username: None,
            password: None,
            service_account_key: None,
            subject: None,
        };
        for (name, value) in oauth2::url::form_urlencoded::parse(body) {
            let value = value.into_owned();
            match name.as_ref() {
                "form_token" if form.form_token.is_none() => form.form_token = Some(value),
                "api_key" if form.api_key.is_none() => form.api_key = Some(Secret::new(value)),
                "username" if form.username.is_none() => form.username = Some(Secret::new(value)),
                "password" if form.password.is_none() => form.password = Some(Secret::new(value)),
                "service_account_key" if form.service_account_key.is_none() => {
                    form.service_account_key = Some(Secret::new(value))
                }
                "subject" if form.subject.is_none() => form.subject = Some(Secret::new(value)),
                _ => {}
            }
        }
        form
    }
}

#[utoipa::path(
    post,
    path = "/connect/{secret}/credential",
    tag = "signup",
    params(("secret" = String, Path, description = "the link's secret")),
    request_body(
        content_type = "application/x-www-form-urlencoded",
        description = "`form_token` (from the form page) and `api_key`, or `username` and `password`; the page's cookie must come with it"
    ),
    responses(
        (status = 200, description = "connected (the result page)", content_type = "text/html"),
        (status = 303, description = "connected: to return_to"),
        (status = 400, description = "the link or the form is no longer valid, it was sent from another browser, or a field is empty (the form again)", content_type = "text/html"),
        (status = 403, description = "a cross-site post", content_type = "text/html"),
        (status = 422, description = "the provider refused the credential: the form again, with the reason; nothing stored", content_type = "text/html"),
        (status = 502, description = "the provider could not check the credential: the form again; nothing stored", content_type = "text/html")
    )
)]
/// `POST /connect/{secret}/credential` — public. The credential form of an `api_key` or
/// `basic` link: checks the form token and this browser's cookie, verifies the credential
/// with the provider (`verify_url`), stores it and spends the link; then the success page or
/// 303 to `return_to`. A refused credential shows the form again and stores nothing.
pub async fn submit(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    if !super::admin::same_site(&headers) {
        tracing::warn!("credential form refused: a cross-site post");
        return cross_site_form();
    }
    let form = CredentialFormBody::parse(&body);
    let cookie_name = form.form_token.as_deref().map(signup::browser_cookie_name);
    let browser = cookie_name
        .as_deref()
        .and_then(|name| request_cookie(&headers, name));
    let typed = TypedCredential {
        api_key: form.api_key,
        username: form.username,
        password: form.password,
        service_account_key: form.service_account_key,
        subject: form.subject,
    };
    let outcome = signup::submit_form(
        &state.keeper,
        &secret,
        form.form_token.as_deref(),
        browser.as_deref(),
        typed,
    )
    .await;
    let mut response = match outcome {
        Ok(done) => {
            let key = done.key.clone();
            let mut response = connected_response(done);
            response.extensions_mut().insert(AuditKey(key));
            response
        }
        Err(
            e @ (SignupError::CredentialRefused(_)
            | SignupError::InvalidRequest(_)
            | SignupError::ProviderFailed(_)),
        ) => form_again(&state, &secret, e).await,
        Err(e) => error_page(e),
    };
    // The form token is spent either way: the browser forgets its cookie.
    if let (Some(name), Some(_)) = (cookie_name, browser) {
        let clear = format!(
            "{name}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0{}",
            form_path(&state.public_url, &secret),
            secure_flag(&state.public_url)
        );
        if let Ok(value) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The form again after a failed attempt, with the reason (never what was typed).
async fn form_again(state: &AppState, secret: &str, error: SignupError) -> Response {
    let view = match signup::usable_link(&state.keeper, secret).await {
        Ok(view) => view,
        Err(e) => return error_page(e),
    };
    let what = if matches!(view.connector.kind, Kind::ApiKey | Kind::JwtBearer) {
        "this key"
    } else {
        "this username and password"
    };
    let (status, code, message) = match error {
        SignupError::CredentialRefused(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_credentials",
            format!(
                "The provider refused {what} ({}). Nothing was stored: check it and try again.",
                view.connector.display_name
            ),
        ),
        SignupError::InvalidRequest(message) => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{message}. Nothing was stored."),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            format!(
                "{} could not check {what} just now. Nothing was stored: try again in a moment.",
                view.connector.display_name
            ),
        ),
    };
    let key = view.link.key.clone();
    let mut response = credential_form(state, secret, &view, status, Some((code, message))).await;
    response.extensions_mut().insert(AuditKey(key));
    response
}

/// The path of the OAuth callback as the browser sees it (`public_url` may carry a prefix when
/// a proxy serves tokenbox under a path): the signup cookie is sent there only.
fn callback_path(public_url: &str) -> String {
    oauth2::url::Url::parse(&signup::redirect_uri(public_url))
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| "/oauth/callback".to_string())
}

/// `; Secure` when the service is reached over https.
pub(crate) fn secure_flag(public_url: &str) -> &'static str {
    if public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn connected_response(done: signup::Connected) -> Response {
    // A return_to stored before it was normalised may not fit a header: the result page then.
    match done
        .return_to
        .filter(|url| HeaderValue::from_str(url).is_ok())
    {
        Some(url) => {
            let mut response = Redirect::to(&url).into_response();
            response.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        None => result_page(
            StatusCode::OK,
            "connected",
            &format!("Your {} account is connected", done.display_name),
            &format!(
                "The app {} can now use your {} account. You can close this window.",
                done.key.app_id, done.display_name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signup_cookie_follows_the_public_url() {
        assert_eq!(callback_path("http://127.0.0.1:8080"), "/oauth/callback");
        assert_eq!(
            callback_path("https://example.com/tokenbox"),
            "/tokenbox/oauth/callback"
        );
        assert_eq!(secure_flag("https://example.com"), "; Secure");
        assert_eq!(secure_flag("http://127.0.0.1:8080"), "");
    }
}
