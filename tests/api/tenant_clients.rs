//! Per-tenant OAuth clients: a connection or a connect link that brings the tenant's own
//! `client_id` and `client_secret` (a self-managed GitLab, a customer's Salesforce connected
//! app). Against an in-test provider that knows several clients, binds every grant and token
//! to the client it was issued to, and records which client authenticated each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{
    cli, location, now, query_param, spawn_app_with, unique, AppOptions, Backend, TestApp,
};

/// One call that reached the provider: the endpoint, the grant (or the revocation's token
/// hint), and the client that authenticated it (`None`: refused, `invalid_client`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    endpoint: &'static str,
    grant: String,
    client: Option<String>,
}

#[derive(Default)]
struct ClientsState {
    /// The clients this provider knows: id -> secret.
    clients: HashMap<String, String>,
    calls: Mutex<Vec<Call>>,
    /// Every refresh or access token -> the client it was issued to.
    owners: Mutex<HashMap<String, String>>,
    /// Refresh tokens not yet spent (the provider rotates them).
    live_refresh: Mutex<Vec<String>>,
    /// Authorization codes -> (client, redirect URI).
    codes: Mutex<HashMap<String, (String, String)>>,
    /// The `client_id` of every authorization request.
    authorized: Mutex<Vec<String>>,
    /// Tokens revoked: (client, token).
    revoked: Mutex<Vec<(String, String)>>,
}

/// A provider with several OAuth clients, each with its own secret.
#[derive(Clone)]
struct ClientsProvider {
    url: String,
    state: Arc<ClientsState>,
}

/// A client as the tests hand it out: its id and secret.
#[derive(Clone)]
struct Client {
    id: String,
    secret: String,
}

impl ClientsProvider {
    async fn start(names: &[&str]) -> (Self, Vec<Client>) {
        let clients: Vec<Client> = names
            .iter()
            .map(|n| Client {
                id: unique(&format!("{n}-client")),
                secret: unique(&format!("{n}-secret")),
            })
            .collect();
        let state = Arc::new(ClientsState {
            clients: clients
                .iter()
                .map(|c| (c.id.clone(), c.secret.clone()))
                .collect(),
            ..ClientsState::default()
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route("/revoke", post(revoke_endpoint))
            .route("/authorize", get(authorize_endpoint))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Self { url, state }, clients)
    }

    /// A refresh token issued to `client`, as if the tenant had signed up elsewhere.
    fn issue_refresh_token(&self, client: &Client) -> String {
        let token = unique("rt");
        self.state
            .owners
            .lock()
            .unwrap()
            .insert(token.clone(), client.id.clone());
        self.state.live_refresh.lock().unwrap().push(token.clone());
        token
    }

    /// Which client a token was issued to.
    fn owner(&self, token: &str) -> Option<String> {
        self.state.owners.lock().unwrap().get(token).cloned()
    }

    /// The clients that authenticated the calls of one grant, in order.
    fn clients_of(&self, grant: &str) -> Vec<Option<String>> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.endpoint == "token" && c.grant == grant)
            .map(|c| c.client.clone())
            .collect()
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    fn revoked(&self) -> Vec<(String, String)> {
        self.state.revoked.lock().unwrap().clone()
    }

    fn authorized(&self) -> Vec<String> {
        self.state.authorized.lock().unwrap().clone()
    }

    /// Every token this provider issued (for the log and response checks).
    fn tokens(&self) -> Vec<String> {
        self.state.owners.lock().unwrap().keys().cloned().collect()
    }

    /// Connector types on this provider: `selfhosted` (authorization code, with an operator
    /// client, Basic client auth), `selfhosted-own` (the same without any operator client),
    /// `machine` (client credentials with an operator client, body client auth).
    fn config(&self, operator: &Client) -> String {
        let url = &self.url;
        let (id, secret) = (&operator.id, &operator.secret);
        format!(
            r#"
[connector_types.selfhosted]
authorization_url = "{url}/authorize"
token_url = "{url}/token"
revocation_url = "{url}/revoke"
client_id = "{id}"
client_secret = "{secret}"
client_auth = "basic"
scopes = ["api"]

[connector_types.selfhosted-own]
authorization_url = "{url}/authorize"
token_url = "{url}/token"
revocation_url = "{url}/revoke"
client_auth = "basic"
scopes = ["api"]

[connector_types.machine]
kind = "client_credentials"
token_url = "{url}/token"
client_id = "{id}"
client_secret = "{secret}"
client_auth = "body"
scopes = ["read"]
"#
        )
    }
}

/// The client that authenticated a request: HTTP Basic (RFC 6749 §2.3.1, the id and secret
/// form-encoded first) or `client_id` and `client_secret` in the body.
fn authenticate(
    state: &ClientsState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<String> {
    let decode = |s: &str| -> String { oauth2_form_decode(s).unwrap_or_default() };
    let (id, secret) = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) => {
            let encoded = value.strip_prefix("Basic ")?;
            let pair = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            let pair = String::from_utf8(pair).ok()?;
            let (id, secret) = pair.split_once(':')?;
            if form.contains_key("client_secret") {
                return None; // one method per request (RFC 6749 §2.3)
            }
            (decode(id), decode(secret))
        }
        None => (
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ),
    };
    (state.clients.get(&id) == Some(&secret)).then_some(id)
}

fn oauth2_form_decode(s: &str) -> Option<String> {
    oauth2::url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

/// Issues an access token (and a refresh token unless minted) owned by `client`.
fn issue(state: &ClientsState, client: &str, with_refresh: bool) -> Response {
    let access = unique("at");
    let mut owners = state.owners.lock().unwrap();
    owners.insert(access.clone(), client.to_string());
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    if with_refresh {
        let refresh = unique("rt");
        owners.insert(refresh.clone(), client.to_string());
        state.live_refresh.lock().unwrap().push(refresh.clone());
        body["refresh_token"] = json!(refresh);
    }
    Json(body).into_response()
}

/// The token endpoint: refresh, authorization-code and client-credentials grants, each only
/// for the client that owns the grant.
async fn token_endpoint(
    State(state): State<Arc<ClientsState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let client = authenticate(&state, &headers, &form);
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    state.calls.lock().unwrap().push(Call {
        endpoint: "token",
        grant: grant.clone(),
        client: client.clone(),
    });
    let Some(client) = client else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    match grant.as_str() {
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            // A refresh token works once, and only for the client it was issued to.
            let mut live = state.live_refresh.lock().unwrap();
            let owned = state.owners.lock().unwrap().get(&presented) == Some(&client);
            let Some(at) = live.iter().position(|t| *t == presented) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if !owned {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            live.remove(at);
            drop(live);
            issue(&state, &client, true)
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((owner, redirect)) = state.codes.lock().unwrap().remove(&code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if owner != client || form.get("redirect_uri") != Some(&redirect) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            issue(&state, &client, true)
        }
        "client_credentials" => issue(&state, &client, false),
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// RFC 7009 revocation: only the client a token was issued to may revoke it.
async fn revoke_endpoint(
    State(state): State<Arc<ClientsState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let client = authenticate(&state, &headers, &form);
    state.calls.lock().unwrap().push(Call {
        endpoint: "revoke",
        grant: form.get("token_type_hint").cloned().unwrap_or_default(),
        client: client.clone(),
    });
    let Some(client) = client else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let token = form.get("token").cloned().unwrap_or_default();
    if state.owners.lock().unwrap().get(&token) != Some(&client) {
        return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client");
    }
    state.revoked.lock().unwrap().push((client, token));
    StatusCode::OK.into_response()
}

/// The authorization page, reduced to its decision: a known client gets a code bound to it.
async fn authorize_endpoint(
    State(state): State<Arc<ClientsState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let client = query.get("client_id").cloned().unwrap_or_default();
    state.authorized.lock().unwrap().push(client.clone());
    if !state.clients.contains_key(&client) {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    let redirect = query.get("redirect_uri").cloned().unwrap_or_default();
    let csrf = query.get("state").cloned().unwrap_or_default();
    let code = unique("code");
    state
        .codes
        .lock()
        .unwrap()
        .insert(code.clone(), (client, redirect.clone()));
    Redirect::to(&format!("{redirect}?code={code}&state={csrf}")).into_response()
}

async fn spawn(backend: Backend, provider: &ClientsProvider, operator: &Client) -> TestApp {
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: provider.config(operator),
        ..AppOptions::default()
    })
    .await;
    app.remember_secret(&operator.secret);
    app
}

/// Every response text of a test, to search for secrets at the end.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn text(&mut self, response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.0.push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn assert_free_of(&self, secrets: &[&str]) {
        for text in &self.0 {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "a client secret appeared in a response: {}",
                    text.replace(secret, "[the secret]")
                );
            }
        }
    }
}

/// Where the database keeps its bytes: the SQLite file (with its WAL), or on PostgreSQL the
/// raw bytes of every column that could hold a secret of the two tables.
async fn stored_bytes(app: &TestApp) -> Vec<Vec<u8>> {
    match &app.pg {
        None => std::fs::read_dir(&app.dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("tokenbox.db"))
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect(),
        Some(_) => {
            let mut all = Vec::new();
            for column in ["client_secret", "access_token", "refresh_token"] {
                all.extend(app.raw_column(column).await);
            }
            for text in app
                .query_strings(
                    "SELECT concat_ws('|', app_id, connector_type, client_id, metadata, scope, \
                     token_type, last_error) FROM connections",
                )
                .await
            {
                all.push(text.into_bytes());
            }
            for text in app
                .query_strings(
                    "SELECT concat_ws('|', client_id, encode(client_secret, 'escape'), params) \
                     FROM connect_links",
                )
                .await
            {
                all.push(text.into_bytes());
            }
            all
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Asserts that no secret is in the database's bytes, and that the search works: the client
/// ids (stored in plain text) are found.
async fn assert_database_free_of(app: &TestApp, secrets: &[&str], plain: &[&str]) {
    let stored = stored_bytes(app).await;
    assert!(!stored.is_empty());
    for secret in secrets {
        assert!(
            !stored.iter().any(|b| contains(b, secret)),
            "a client secret is stored in clear in the database"
        );
    }
    for id in plain {
        assert!(
            stored.iter().any(|b| contains(b, id)),
            "the search finds a client id stored in plain text"
        );
    }
}

/// Imports an expired connection whose refresh token was issued to `client`, with that
/// client as the connection's own (`own`), or with none (the operator's).
async fn import_with(
    app: &TestApp,
    seen: &mut Seen,
    provider: &ClientsProvider,
    tenant: &str,
    client: &Client,
    own: bool,
) {
    let refresh = provider.issue_refresh_token(client);
    app.remember_secret(&refresh);
    let mut body = json!({
        "access_token": unique("imported-at"),
        "refresh_token": refresh,
        "expires_at": now() - 10,
    });
    if own {
        body["client_id"] = json!(client.id);
        body["client_secret"] = json!(client.secret);
    }
    let response = app
        .put(&format!("/{tenant}/selfhosted/connection"))
        .as_admin()
        .json(&body)
        .send()
        .await;
    let (status, view) = seen.text(response).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["own_client"], json!(own.then_some(true)), "{view}");
    assert_eq!(
        view["client_id"],
        json!(own.then_some(&client.id)),
        "{view}"
    );
}

/// Must-show 5: two tenants of one connector type with their own OAuth clients. Each refresh
/// and each revocation authenticates with the tenant's own client (the provider binds tokens
/// to clients and records who called); a third tenant keeps the operator's; neither secret
/// appears in a response, the server log or the database.
pub async fn two_tenants_refresh_and_revoke_with_their_own_clients(backend: Backend) {
    let (provider, clients) = ClientsProvider::start(&["operator", "tenant-a", "tenant-b"]).await;
    let [operator, a, b] = [&clients[0], &clients[1], &clients[2]];
    let app = spawn(backend, &provider, operator).await;
    app.remember_secret(&a.secret);
    app.remember_secret(&b.secret);
    let mut seen = Seen::default();

    import_with(&app, &mut seen, &provider, "tenant-a", a, true).await;
    import_with(&app, &mut seen, &provider, "tenant-b", b, true).await;
    import_with(&app, &mut seen, &provider, "tenant-c", operator, false).await;

    // Two rounds: the expired import, then a forced refresh with the rotated token.
    for query in ["", "force_refresh=true"] {
        for (tenant, client) in [("tenant-a", a), ("tenant-b", b), ("tenant-c", operator)] {
            let (status, body) = seen
                .text(app.get_token(tenant, "selfhosted", query).await)
                .await;
            assert_eq!(status, 200, "{tenant}: {body}");
            let token = body["access_token"].as_str().unwrap();
            assert_eq!(
                provider.owner(token).as_deref(),
                Some(client.id.as_str()),
                "{tenant} is served a token issued to its own client"
            );
        }
    }
    let refreshes = provider.clients_of("refresh_token");
    let count = |c: &Client| {
        refreshes
            .iter()
            .filter(|r| r.as_deref() == Some(&c.id))
            .count()
    };
    assert_eq!(
        (count(a), count(b), count(operator), refreshes.len()),
        (2, 2, 2, 6),
        "each tenant's two refreshes authenticated with its own client: {refreshes:?}"
    );

    // What admins see: that the connection has its own client, and its id at most.
    let (_, view) = seen
        .text(
            app.get("/tenant-a/selfhosted/connection")
                .as_admin()
                .send()
                .await,
        )
        .await;
    assert_eq!(view["own_client"], true);
    assert_eq!(view["client_id"], a.id.as_str());
    let (_, view) = seen
        .text(
            app.get("/tenant-c/selfhosted/connection")
                .as_admin()
                .send()
                .await,
        )
        .await;
    assert!(view.get("own_client").is_none() && view.get("client_id").is_none());
    let (status, _) = seen
        .text(app.get("/connections").as_admin().send().await)
        .await;
    assert_eq!(status, 200);

    assert_database_free_of(&app, &[&a.secret, &b.secret], &[&a.id, &b.id]).await;

    // Deleting revokes each grant with the client it was issued to.
    for tenant in ["tenant-a", "tenant-b", "tenant-c"] {
        let (status, body) = seen
            .text(
                app.delete(&format!("/{tenant}/selfhosted/connection"))
                    .as_admin()
                    .send()
                    .await,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["revoked_at_provider"], true, "{tenant}: {body}");
    }
    let revoked = provider.revoked();
    let revokers: Vec<&str> = revoked.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        revokers,
        [a.id.as_str(), b.id.as_str(), operator.id.as_str()],
        "each revocation authenticated with the connection's own client"
    );
    assert!(
        provider.calls().iter().all(|c| c.client.is_some()),
        "no call was refused: {:?}",
        provider.calls()
    );

    seen.assert_free_of(&[&a.secret, &b.secret, &operator.secret]);
    for token in provider.tokens() {
        app.remember_secret(&token);
    }
    app.assert_logs_clean();
}

/// A connect link with the tenant's own client on a connector type that has no operator
/// client: the authorization URL carries that client id, the callback exchanges the code with
/// that client, and the connection keeps it for its refreshes.
pub async fn a_connect_link_with_its_own_client_signs_up_and_refreshes_with_it(backend: Backend) {
    let (provider, clients) = ClientsProvider::start(&["operator", "tenant-a"]).await;
    let [operator, a] = [&clients[0], &clients[1]];
    let app = spawn(backend, &provider, operator).await;
    app.remember_secret(&a.secret);
    let mut seen = Seen::default();

    // Without a client of its own, a link of this connector type cannot work.
    let (status, body) = seen
        .text(
            app.create_link("tenant-a", "selfhosted-own", &json!({}))
                .await,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "connector_not_configured");
    // A secret without an id is refused, without repeating it.
    let (status, body) = seen
        .text(
            app.create_link(
                "tenant-a",
                "selfhosted-own",
                &json!({"client_secret": a.secret}),
            )
            .await,
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = seen
        .text(
            app.create_link(
                "tenant-a",
                "selfhosted-own",
                &json!({"client_id": a.id, "client_secret": a.secret}),
            )
            .await,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let link = body["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());

    let to_provider = app.click_connect(&link).await;
    assert_eq!(to_provider.status(), 303);
    let authorize = location(&to_provider);
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some(a.id.as_str()),
        "the authorization URL names the tenant's client"
    );
    let back = app.client.get(&authorize).send().await.unwrap();
    assert!(
        back.status().is_redirection(),
        "the provider knows the client"
    );
    let callback = location(&back);
    app.remember_secret(&query_param(&callback, "state").unwrap_or_default());
    app.remember_secret(&query_param(&callback, "code").unwrap_or_default());
    let (status, _) = seen.text(app.callback(&callback).await).await;
    assert_eq!(status, 200, "the signup succeeded");
    assert_eq!(provider.authorized(), std::slice::from_ref(&a.id));
    assert_eq!(
        provider.clients_of("authorization_code"),
        [Some(a.id.clone())],
        "the code was exchanged with the tenant's client"
    );

    let (_, view) = seen
        .text(
            app.get("/tenant-a/selfhosted-own/connection")
                .as_admin()
                .send()
                .await,
        )
        .await;
    assert_eq!(view["own_client"], true, "{view}");
    assert_eq!(view["client_id"], a.id.as_str());

    let (status, body) = seen
        .text(
            app.get_token("tenant-a", "selfhosted-own", "force_refresh=true")
                .await,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        provider.clients_of("refresh_token"),
        [Some(a.id.clone())],
        "the refresh used the client the link brought"
    );
    assert_database_free_of(&app, &[&a.secret], &[&a.id]).await;
    seen.assert_free_of(&[&a.secret]);
    for token in provider.tokens() {
        app.remember_secret(&token);
    }
    app.assert_logs_clean();
}

/// `client_credentials` with the tenant's own client: the first mint and every later one use
/// it; a wrong secret is refused at connect with nothing stored.
pub async fn client_credentials_with_the_tenants_own_client_mint_with_it(backend: Backend) {
    let (provider, clients) = ClientsProvider::start(&["operator", "tenant-a"]).await;
    let [operator, a] = [&clients[0], &clients[1]];
    let app = spawn(backend, &provider, operator).await;
    app.remember_secret(&a.secret);
    let mut seen = Seen::default();

    let wrong = unique("wrong-secret");
    app.remember_secret(&wrong);
    let (status, body) = seen
        .text(
            app.put("/tenant-x/machine/connection")
                .as_admin()
                .json(&json!({"client_id": a.id, "client_secret": wrong}))
                .send()
                .await,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_credentials");
    let (status, _) = seen
        .text(
            app.get("/tenant-x/machine/connection")
                .as_admin()
                .send()
                .await,
        )
        .await;
    assert_eq!(status, 404, "nothing was stored");

    for (tenant, body) in [
        (
            "tenant-a",
            json!({"client_id": a.id, "client_secret": a.secret}),
        ),
        ("tenant-b", json!({})),
    ] {
        let (status, view) = seen
            .text(
                app.put(&format!("/{tenant}/machine/connection"))
                    .as_admin()
                    .json(&body)
                    .send()
                    .await,
            )
            .await;
        assert_eq!(status, 201, "{view}");
    }
    for tenant in ["tenant-a", "tenant-b"] {
        let (status, body) = seen
            .text(app.get_token(tenant, "machine", "force_refresh=true").await)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        provider.clients_of("client_credentials"),
        [
            None,
            Some(a.id.clone()),
            Some(operator.id.clone()),
            Some(a.id.clone()),
            Some(operator.id.clone()),
        ],
        "the wrong secret was refused, then tenant-a's mints used its own client and tenant-b's the operator's"
    );
    assert_database_free_of(&app, &[&a.secret, &wrong], &[&a.id]).await;
    seen.assert_free_of(&[&a.secret, &wrong, &operator.secret]);
    for token in provider.tokens() {
        app.remember_secret(&token);
    }
}

/// `keys rotate` re-encrypts the tenants' client secrets (of connections and of connect
/// links): once the old key is removed, both still work.
pub async fn keys_rotate_re_encrypts_the_tenant_clients(backend: Backend) {
    let (provider, clients) = ClientsProvider::start(&["operator", "tenant-a", "tenant-b"]).await;
    let [operator, a, b] = [&clients[0], &clients[1], &clients[2]];
    let mut app = spawn(backend, &provider, operator).await;
    app.remember_secret(&a.secret);
    app.remember_secret(&b.secret);
    let mut seen = Seen::default();
    import_with(&app, &mut seen, &provider, "tenant-a", a, true).await;
    let (status, body) = seen
        .text(
            app.create_link(
                "tenant-b",
                "selfhosted-own",
                &json!({"client_id": b.id, "client_secret": b.secret}),
            )
            .await,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let link = body["url"].as_str().unwrap().to_string();
    app.remember_secret(link.rsplit('/').next().unwrap());

    let (code, _, stderr) = cli(&app.config_path, &["keys", "add"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = cli(&app.config_path, &["keys", "rotate"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    let key_file = app.dir.join("encryption.key");
    let newest = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string();
    std::fs::write(&key_file, format!("{newest}\n")).unwrap();
    app.restart();

    let (status, body) = seen
        .text(app.get_token("tenant-a", "selfhosted", "").await)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(provider.clients_of("refresh_token"), [Some(a.id.clone())]);
    // The restarted server listens on another port: the link's secret is what matters.
    let link = format!(
        "{}/connect/{}",
        app.address,
        link.rsplit('/').next().unwrap()
    );
    let response = app.run_signup(&link).await;
    let (status, _) = seen.text(response).await;
    assert_eq!(status, 200, "the link's client secret still decrypts");
    assert_eq!(
        provider.clients_of("authorization_code"),
        [Some(b.id.clone())]
    );
    seen.assert_free_of(&[&a.secret, &b.secret]);
    for token in provider.tokens() {
        app.remember_secret(&token);
    }
}
