//! The signup: connect links and the authorization-code flow with state and PKCE.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::connectors::{ConnectorType, Kind, RefreshError};
use crate::domain::{
    now_epoch, ConnectLink, ConnectionKey, CredentialInput, Metadata, OAuthState, TenantClient,
};
use crate::refresh::{IdentityCheck, KeeperError, SecretsKeeper};
use crate::secret::Secret;
use crate::store::StoreError;
use crate::token::hash;

pub const DEFAULT_LINK_TTL: i64 = 7 * 24 * 3600;
pub const MAX_LINK_TTL: i64 = 30 * 24 * 3600;
/// How long the tenant has between clicking Connect and coming back from the provider.
pub const STATE_TTL: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    #[error("connector type '{0}' is not in the catalog or the configuration")]
    UnknownConnectorType(String),
    #[error("connector type '{0}' has no client credentials configured; an operator must set client_id and client_secret")]
    NotConfigured(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// The link is unknown, expired or already used.
    #[error("this connect link is no longer valid")]
    LinkInvalid,
    /// The callback's state is missing, unknown, expired or replayed.
    #[error("this sign-in attempt is no longer valid")]
    StateInvalid,
    /// The callback came from a browser other than the one that clicked Connect (no cookie,
    /// or another one): someone else's authorization must not be stored under this link.
    #[error("this sign-in attempt was started in another browser")]
    BrowserMismatch,
    /// The tenant (or the provider) declined: nothing was connected.
    #[error("the account was not connected: {0}")]
    Denied(String),
    #[error("the provider did not complete the connection: {0}")]
    ProviderFailed(String),
    /// The provider refused the API key or the username and password typed in the form.
    #[error("{0}")]
    CredentialRefused(String),
    /// The link requires the connection's current account and the tenant signed in with
    /// another one: nothing was stored.
    #[error("{0}")]
    AccountMismatch(String),
    #[error("storage failure")]
    Store(#[from] StoreError),
}

impl From<KeeperError> for SignupError {
    fn from(e: KeeperError) -> Self {
        match e {
            KeeperError::UnknownConnectorType(name) => Self::UnknownConnectorType(name),
            KeeperError::Store(s) => Self::Store(s),
            other => Self::ProviderFailed(other.to_string()),
        }
    }
}

/// What an admin asks for when creating a link.
#[derive(Debug, Default)]
pub struct NewLink {
    pub expires_in: Option<i64>,
    pub return_to: Option<String>,
    pub params: BTreeMap<String, String>,
    /// The tenant's own OAuth client: the authorization URL, the code exchange and then the
    /// connection use it instead of the operator's.
    pub client: Option<TenantClient>,
    /// The callback refuses an account other than the connection's current one.
    pub same_account: bool,
}

#[derive(Debug)]
pub struct CreatedLink {
    pub url: String,
    pub expires_at: i64,
}

/// A link ready to be shown to the tenant.
pub struct LinkView {
    pub link: ConnectLink,
    pub connector: Arc<ConnectorType>,
}

/// A started flow: the provider's authorization URL, and the cookie that binds the flow to the
/// browser that clicked Connect (only its hash is stored, with the state).
pub struct Started {
    pub url: String,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// The name of the cookie of the flow with this state: one cookie per flow, so that two
/// signups in one browser do not overwrite each other's.
pub fn browser_cookie_name(state: &str) -> String {
    let h = hash(state);
    format!(
        "tokenbox_signup_{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        h[0], h[1], h[2], h[3], h[4], h[5]
    )
}

/// The outcome of a successful callback.
pub struct Connected {
    pub key: ConnectionKey,
    pub display_name: String,
    pub return_to: Option<String>,
}

fn random_secret() -> String {
    crate::token::random_token("")
}

fn looks_like_secret(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn redirect_uri(public_url: &str) -> String {
    format!("{public_url}/oauth/callback")
}

/// Whether `candidate` is allowed by one of the configured return URL prefixes: same scheme,
/// host and port, and a path under the allowed one.
pub fn return_url_allowed(allowed: &[String], candidate: &str) -> bool {
    let Ok(url) = oauth2::url::Url::parse(candidate) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") || url.username() != "" || url.password().is_some()
    {
        return false;
    }
    allowed.iter().any(|prefix| {
        let Ok(base) = oauth2::url::Url::parse(prefix) else {
            return false;
        };
        if base.origin() != url.origin() {
            return false;
        }
        let base_path = base.path();
        let path = url.path();
        path == base_path
            || (base_path.ends_with('/') && path.starts_with(base_path))
            || path.starts_with(&format!("{}/", base_path.trim_end_matches('/')))
    })
}

/// The connector type of a link: an OAuth one (the tenant consents at the provider) or a
/// static one (the tenant types the key into tokenbox's form). A link with its own OAuth
/// client (`own_client`) needs none of the operator's.
fn connector(
    keeper: &SecretsKeeper,
    key: &ConnectionKey,
    own_client: bool,
) -> Result<Arc<ConnectorType>, SignupError> {
    let ct = keeper.connector_type(key)?.clone();
    if !matches!(ct.kind, Kind::Oauth2 | Kind::GithubApp) && !ct.kind.has_form() {
        return Err(SignupError::InvalidRequest(format!(
            "connector type '{}' is of kind {}: it has nothing for a tenant to enter; save its credential with PUT /{{app_id}}/{}/connection",
            ct.name,
            ct.kind.as_str(),
            ct.name
        )));
    }
    if !ct.has_credentials() && !own_client {
        return Err(SignupError::NotConfigured(ct.name.to_string()));
    }
    Ok(ct)
}

/// Checks the per-connection values against the connector type's placeholders.
fn check_params(ct: &ConnectorType, params: &BTreeMap<String, String>) -> Result<(), SignupError> {
    for (name, value) in params {
        if !ct.placeholders.contains_key(name) {
            return Err(SignupError::InvalidRequest(format!(
                "connector type '{}' takes no parameter '{name}'{}",
                ct.name,
                if ct.placeholders.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it takes: {})",
                        ct.placeholders
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        }
        ct.check_placeholder(name, value)
            .map_err(|e| SignupError::InvalidRequest(format!("parameter '{name}': {e}")))?;
    }
    for (name, spec) in &ct.placeholders {
        if spec.default.is_none() && !params.contains_key(name) {
            return Err(SignupError::InvalidRequest(format!(
                "connector type '{}' needs the parameter '{name}'",
                ct.name
            )));
        }
    }
    Ok(())
}

pub fn params_as_metadata(params: &BTreeMap<String, String>) -> Metadata {
    params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect()
}

pub async fn create_link(
    keeper: &SecretsKeeper,
    config: &Config,
    public_url: &str,
    key: &ConnectionKey,
    request: NewLink,
) -> Result<CreatedLink, SignupError> {
    let ct = connector(keeper, key, request.client.is_some())?;
    if request.client.is_some() && ct.kind != Kind::Oauth2 {
        return Err(SignupError::InvalidRequest(format!(
            "connector type '{}' is of kind {}: only an oauth2 link takes client_id and client_secret",
            ct.name,
            ct.kind.as_str()
        )));
    }
    check_params(&ct, &request.params)?;
    // The URL is stored (and later sent in a Location header) as it was checked: normalised
    // by the URL parser, which percent-encodes what a header cannot carry.
    let return_to = match request.return_to.as_deref() {
        None => None,
        Some(url) if url.chars().any(char::is_control) => {
            return Err(SignupError::InvalidRequest(
                "return_to must not contain control characters".into(),
            ))
        }
        Some(url) => {
            if !return_url_allowed(&config.allowed_return_urls, url) {
                return Err(SignupError::InvalidRequest(
                    "return_to is not allowed: it must start with one of the configured allowed_return_urls"
                        .into(),
                ));
            }
            oauth2::url::Url::parse(url).ok().map(|u| u.to_string())
        }
    };
    let ttl = request.expires_in.unwrap_or(DEFAULT_LINK_TTL);
    if !(60..=MAX_LINK_TTL).contains(&ttl) {
        return Err(SignupError::InvalidRequest(format!(
            "expires_in must be between 60 and {MAX_LINK_TTL} seconds"
        )));
    }
    let secret = random_secret();
    let now = now_epoch();
    let link = ConnectLink {
        secret_hash: hash(&secret),
        key: key.clone(),
        params: request.params,
        return_to,
        created_at: now,
        expires_at: now + ttl,
        spent_at: None,
        client: request.client,
        same_account: request.same_account,
    };
    keeper.store().create_connect_link(&link).await?;
    Ok(CreatedLink {
        url: format!("{public_url}/connect/{secret}"),
        expires_at: link.expires_at,
    })
}

/// The link behind a `/connect/{secret}` URL, if it can still be used.
pub async fn usable_link(keeper: &SecretsKeeper, secret: &str) -> Result<LinkView, SignupError> {
    if !looks_like_secret(secret) {
        return Err(SignupError::LinkInvalid);
    }
    let link = keeper
        .store()
        .connect_link(&hash(secret))
        .await?
        .filter(|l| l.is_usable(now_epoch()))
        .ok_or(SignupError::LinkInvalid)?;
    let connector = connector(keeper, &link.key, link.client.is_some())?;
    Ok(LinkView { link, connector })
}

/// The tenant clicked Connect: records the state, bound to a new browser cookie, and returns
/// the provider's authorization URL with that cookie.
pub async fn start(
    keeper: &SecretsKeeper,
    public_url: &str,
    secret: &str,
) -> Result<Started, SignupError> {
    let LinkView { link, connector } = usable_link(keeper, secret).await?;
    require_oauth(&connector)?;
    let state = random_secret();
    let browser = random_secret();
    let (url, verifier) = if connector.kind == Kind::GithubApp {
        (installation_url(&connector, &state)?, None)
    } else {
        keeper
            .provider()
            .authorization_url(
                &connector,
                link.client.as_ref(),
                &params_as_metadata(&link.params),
                &redirect_uri(public_url),
                &state,
            )
            .map_err(|e| SignupError::ProviderFailed(e.to_string()))?
    };
    keeper
        .store()
        .create_oauth_state(
            &hash(&state),
            &OAuthState {
                link_hash: link.secret_hash,
                pkce_verifier: verifier,
                expires_at: now_epoch() + STATE_TTL,
                browser_hash: Some(hash(&browser)),
            },
        )
        .await?;
    Ok(Started {
        url,
        cookie_name: browser_cookie_name(&state),
        cookie_value: browser,
    })
}

/// Keeps only printable characters of a provider's text, for a page or a log line.
fn sanitize(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The provider sent the tenant back: checks the state and the browser, exchanges the code,
/// stores the tokens. `browser` is the value of the flow's cookie (`browser_cookie_name`), as
/// presented by the client.
pub async fn finish(
    keeper: &SecretsKeeper,
    public_url: &str,
    query: &BTreeMap<String, String>,
    browser: Option<&str>,
) -> Result<Connected, SignupError> {
    let now = now_epoch();
    let flow =
        take_bound_state(keeper, query.get("state").map(String::as_str), browser, now).await?;
    let link = keeper
        .store()
        .connect_link(&flow.link_hash)
        .await?
        .filter(|l| l.is_usable(now))
        .ok_or(SignupError::LinkInvalid)?;
    if let Some(refusal) = provider_refusal(query) {
        return Err(refusal);
    }
    if keeper.connector_type(&link.key)?.kind == Kind::GithubApp {
        return finish_installation(keeper, link, query, now).await;
    }
    let code = query.get("code").filter(|c| !c.is_empty()).ok_or_else(|| {
        SignupError::ProviderFailed("the provider sent no authorization code".into())
    })?;
    let ct = connector(keeper, &link.key, link.client.is_some())?;
    require_oauth(&ct)?;
    if !keeper
        .store()
        .spend_connect_link(&link.secret_hash, now)
        .await?
    {
        return Err(SignupError::LinkInvalid);
    }
    let values = params_as_metadata(&link.params);
    let exchanged = keeper
        .provider()
        .exchange_code(
            &ct,
            link.client.as_ref(),
            &values,
            &redirect_uri(public_url),
            code,
            flow.pkce_verifier.as_ref(),
        )
        .await;
    let (mut tokens, id_token) = match exchanged {
        Ok(answer) => answer,
        Err(error) => {
            // Nothing was stored: the tenant may try the same link again while it is valid.
            keeper
                .store()
                .unspend_connect_link(&link.secret_hash)
                .await?;
            return Err(exchange_failure(error));
        }
    };
    // Per-connection values and callback parameters (QuickBooks' realmId) join the metadata
    // served with the token; the URL placeholders need them for every refresh.
    let mut metadata = values;
    for name in &ct.callback_params {
        if let Some(v) = query.get(name) {
            metadata.insert(name.clone(), serde_json::Value::String(sanitize(v, 200)));
        }
    }
    metadata.append(&mut tokens.metadata);
    tokens.metadata = metadata;
    // The link's own client becomes the connection's: every refresh and the revocation use it.
    tokens.client = link.client.clone();
    let check = IdentityCheck {
        id_token: id_token.as_ref(),
        same_account: link.same_account,
    };
    if let Err(error) = keeper
        .save_obtained_connection(&link.key, &tokens, check)
        .await
    {
        if let KeeperError::AccountMismatch(message) = error {
            // Nothing was stored: the tenant may sign in with the right account and use the
            // same link again while it is valid.
            tracing::warn!(app_id = %link.key.app_id, connector_type = %link.key.connector_type, "a reconnection with another account was refused (same_account)");
            keeper
                .store()
                .unspend_connect_link(&link.secret_hash)
                .await?;
            return Err(SignupError::AccountMismatch(message));
        }
        return Err(error.into());
    }
    tracing::info!(app_id = %link.key.app_id, connector_type = %link.key.connector_type, "connection created through signup");
    Ok(Connected {
        display_name: ct.display_name.clone(),
        key: link.key,
        return_to: link.return_to,
    })
}

/// Spends a state (the callback's OAuth state, or a credential form's token) and checks that
/// it comes back from the browser it was given to (the cookie set with it).
async fn take_bound_state(
    keeper: &SecretsKeeper,
    state: Option<&str>,
    browser: Option<&str>,
    now: i64,
) -> Result<OAuthState, SignupError> {
    let state = state.ok_or(SignupError::StateInvalid)?;
    if !looks_like_secret(state) {
        return Err(SignupError::StateInvalid);
    }
    // The state is spent here, whoever presents it: a state that reached the wrong browser
    // cannot be tried again (the tenant starts over from the link, which stays usable).
    let flow = keeper
        .store()
        .take_oauth_state(&hash(state), now)
        .await?
        .ok_or(SignupError::StateInvalid)?;
    let same_browser = match (&flow.browser_hash, browser) {
        (Some(expected), Some(value)) => bool::from(subtle::ConstantTimeEq::ct_eq(
            &expected[..],
            &hash(value)[..],
        )),
        _ => false,
    };
    if !same_browser {
        tracing::warn!(
            cookie_presented = browser.is_some(),
            "signup refused: not the browser that started the flow"
        );
        return Err(SignupError::BrowserMismatch);
    }
    Ok(flow)
}

/// The GitHub App's installation page (`authorization_url` of a `github_app` type, such as
/// `https://github.com/apps/<slug>/installations/new`) with the flow's state. GitHub sends the
/// browser back to the app's Setup URL (tokenbox's callback) with `installation_id` and the
/// same state.
fn installation_url(ct: &ConnectorType, state: &str) -> Result<String, SignupError> {
    if ct.authorization_url.is_empty() {
        return Err(SignupError::NotConfigured(ct.name.to_string()));
    }
    let mut url = oauth2::url::Url::parse(&ct.authorization_url)
        .map_err(|_| SignupError::ProviderFailed("the installation URL is not valid".into()))?;
    url.query_pairs_mut().append_pair("state", state);
    Ok(url.into())
}

/// The setup redirect of a GitHub App installation: the state was checked (link and
/// browser); the installation id is checked by minting its first token with the app's key,
/// which fails for an installation of another app.
async fn finish_installation(
    keeper: &SecretsKeeper,
    link: ConnectLink,
    query: &BTreeMap<String, String>,
    now: i64,
) -> Result<Connected, SignupError> {
    let installation_id = query
        .get("installation_id")
        .and_then(|id| id.parse::<u64>().ok())
        .ok_or_else(|| SignupError::ProviderFailed("GitHub sent no installation_id".into()))?;
    let ct = connector(keeper, &link.key, false)?;
    if !keeper
        .store()
        .spend_connect_link(&link.secret_hash, now)
        .await?
    {
        return Err(SignupError::LinkInvalid);
    }
    let input = crate::domain::CredentialInput::Installation {
        installation_id,
        metadata: params_as_metadata(&link.params),
    };
    if let Err(error) = keeper.connect(&link.key, input).await {
        keeper
            .store()
            .unspend_connect_link(&link.secret_hash)
            .await?;
        return Err(SignupError::ProviderFailed(format!(
            "the installation could not be used: {error}"
        )));
    }
    tracing::info!(app_id = %link.key.app_id, connector_type = %link.key.connector_type, "GitHub App installation connected through signup");
    Ok(Connected {
        display_name: ct.display_name.clone(),
        key: link.key,
        return_to: link.return_to,
    })
}

fn require_oauth(ct: &ConnectorType) -> Result<(), SignupError> {
    if matches!(ct.kind, Kind::Oauth2 | Kind::GithubApp) {
        Ok(())
    } else {
        Err(SignupError::InvalidRequest(format!(
            "connector type '{}' is of kind {}: its connect link shows a form, it has no OAuth flow",
            ct.name,
            ct.kind.as_str()
        )))
    }
}

/// A credential form (API key, or username and password) bound to the browser it is shown
/// to: a single-use form token in the page, and a cookie set with it. Only their hashes are
/// stored, as an OAuth state without a PKCE verifier.
pub struct CredentialForm {
    pub token: String,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// What the tenant typed into the credential form.
#[derive(Default)]
pub struct TypedCredential {
    pub api_key: Option<Secret>,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    /// `jwt_bearer`: the service-account key file's contents (JSON).
    pub service_account_key: Option<Secret>,
    /// `jwt_bearer`: the user to act as (optional).
    pub subject: Option<Secret>,
}

/// A new credential form for a usable link of a static kind (`api_key`, `basic`).
pub async fn new_form(
    keeper: &SecretsKeeper,
    view: &LinkView,
) -> Result<CredentialForm, SignupError> {
    if !view.connector.kind.has_form() {
        return Err(SignupError::InvalidRequest(format!(
            "connector type '{}' is of kind {}: it has no credential form",
            view.connector.name,
            view.connector.kind.as_str()
        )));
    }
    let token = random_secret();
    let browser = random_secret();
    keeper
        .store()
        .create_oauth_state(
            &hash(&token),
            &OAuthState {
                link_hash: view.link.secret_hash,
                pkce_verifier: None,
                expires_at: now_epoch() + STATE_TTL,
                browser_hash: Some(hash(&browser)),
            },
        )
        .await?;
    Ok(CredentialForm {
        cookie_name: browser_cookie_name(&token),
        token,
        cookie_value: browser,
    })
}

/// The tenant sent the credential form of the link `secret`: checks the form token and the
/// browser, verifies the credential with the provider (`SecretsKeeper::connect`), stores it
/// and spends the link. Nothing is stored when the provider refuses it; the link stays usable.
pub async fn submit_form(
    keeper: &SecretsKeeper,
    secret: &str,
    form_token: Option<&str>,
    browser: Option<&str>,
    typed: TypedCredential,
) -> Result<Connected, SignupError> {
    if !looks_like_secret(secret) {
        return Err(SignupError::LinkInvalid);
    }
    let now = now_epoch();
    let form = take_bound_state(keeper, form_token, browser, now).await?;
    // A form token opens only the link whose page it was shown on.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &form.link_hash[..],
        &hash(secret)[..],
    )) {
        return Err(SignupError::StateInvalid);
    }
    let link = keeper
        .store()
        .connect_link(&form.link_hash)
        .await?
        .filter(|l| l.is_usable(now))
        .ok_or(SignupError::LinkInvalid)?;
    let ct = connector(keeper, &link.key, link.client.is_some())?;
    let input = typed_input(&ct, typed, params_as_metadata(&link.params))?;
    if !keeper
        .store()
        .spend_connect_link(&link.secret_hash, now)
        .await?
    {
        return Err(SignupError::LinkInvalid);
    }
    if let Err(error) = keeper.connect(&link.key, input).await {
        // Nothing was stored: the tenant may try again with the same link.
        keeper
            .store()
            .unspend_connect_link(&link.secret_hash)
            .await?;
        return Err(match error {
            KeeperError::InvalidCredentials(message) => SignupError::CredentialRefused(message),
            KeeperError::InvalidRequest(message) => SignupError::InvalidRequest(message),
            other => other.into(),
        });
    }
    tracing::info!(app_id = %link.key.app_id, connector_type = %link.key.connector_type, "connection created through the credential form");
    Ok(Connected {
        display_name: ct.display_name.clone(),
        key: link.key,
        return_to: link.return_to,
    })
}

/// The form's fields as the `PUT /{app_id}/{connector_type}/connection` body of the kind, so
/// that both ways in check the same things; the messages never repeat a value.
fn typed_input(
    ct: &ConnectorType,
    typed: TypedCredential,
    metadata: Metadata,
) -> Result<CredentialInput, SignupError> {
    let missing = |label: &str| SignupError::InvalidRequest(format!("{label} must not be empty"));
    let present = |value: Option<Secret>| value.filter(|v| !v.expose().trim().is_empty());
    match ct.kind {
        Kind::ApiKey => {
            let api_key =
                present(typed.api_key).ok_or_else(|| missing(&ct.field_labels.api_key))?;
            Ok(CredentialInput::ApiKey {
                api_key: Secret::new(api_key.expose().trim().to_string()),
                metadata,
            })
        }
        Kind::Basic => {
            let username =
                present(typed.username).ok_or_else(|| missing(&ct.field_labels.username))?;
            let password =
                present(typed.password).ok_or_else(|| missing(&ct.field_labels.password))?;
            if username.expose().contains(':') {
                return Err(SignupError::InvalidRequest(format!(
                    "{} must not contain ':'",
                    ct.field_labels.username
                )));
            }
            Ok(CredentialInput::Basic {
                username: Secret::new(username.expose().trim().to_string()),
                password,
                metadata,
            })
        }
        Kind::JwtBearer => {
            let subject = present(typed.subject).map(|s| s.expose().trim().to_string());
            let key = match present(typed.service_account_key) {
                Some(text) => Some(
                    serde_json::from_str::<serde_json::Value>(text.expose()).map_err(|_| {
                        SignupError::InvalidRequest(
                            "the service-account key is not the JSON of a key file".into(),
                        )
                    })?,
                ),
                None if ct.private_key.is_some() => None,
                None => return Err(missing("The service-account key")),
            };
            let body = serde_json::json!({
                "service_account_key": key,
                "subject": subject,
                "metadata": metadata,
            });
            CredentialInput::from_json(Kind::JwtBearer, body.to_string().as_bytes()).map_err(|_| {
                SignupError::InvalidRequest(
                    "the service-account key lacks client_email or private_key".into(),
                )
            })
        }
        other => Err(SignupError::InvalidRequest(format!(
            "connector type '{}' is of kind {}: it has no credential form",
            ct.name,
            other.as_str()
        ))),
    }
}

/// The provider's own refusal in the callback (`error=access_denied`, ...), if any.
fn provider_refusal(query: &BTreeMap<String, String>) -> Option<SignupError> {
    let error = query.get("error")?;
    let description = query
        .get("error_description")
        .map(|d| format!(" ({})", sanitize(d, 200)))
        .unwrap_or_default();
    let reason = match error.as_str() {
        "access_denied" => format!("access was denied at the provider{description}"),
        other => format!(
            "the provider answered '{}'{description}",
            sanitize(other, 64)
        ),
    };
    Some(SignupError::Denied(reason))
}

fn exchange_failure(error: RefreshError) -> SignupError {
    let reason = match error {
        RefreshError::Revoked { code } => {
            format!("the provider refused the authorization code ({code})")
        }
        other => other.to_string(),
    };
    SignupError::ProviderFailed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_must_share_origin_and_path_prefix() {
        let allowed = vec![
            "https://app.example.com/connected".to_string(),
            "http://127.0.0.1:3000/".to_string(),
        ];
        for ok in [
            "https://app.example.com/connected",
            "https://app.example.com/connected/acme?x=1",
            "http://127.0.0.1:3000/anything",
        ] {
            assert!(return_url_allowed(&allowed, ok), "{ok}");
        }
        for bad in [
            "https://app.example.com/connectedevil",
            "https://app.example.com.evil.com/connected",
            "http://app.example.com/connected",
            "https://user@app.example.com/connected",
            "https://app.example.com:444/connected",
            "javascript:alert(1)",
            "/connected",
            "http://127.0.0.1:3001/",
        ] {
            assert!(!return_url_allowed(&allowed, bad), "{bad}");
        }
        assert!(!return_url_allowed(
            &[],
            "https://app.example.com/connected"
        ));
    }
}
