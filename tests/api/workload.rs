//! Workload identity: the JWTs of trusted issuers (`[[trusted_issuers]]`) as credentials on
//! `binb-token` and as the subject token of the RFC 8693 token exchange at `POST /oauth/token`.
//!
//! The issuers are in-test HTTP servers on loopback serving an OpenID discovery document and a
//! JSON Web Key Set, with keys generated here (Ed25519 and ECDSA P-256 through `ring`; RS256
//! is covered by the Python tests, signed with `cryptography`). A test can rotate an issuer's
//! keys and take its endpoints down; the issuer counts the fetches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::helpers::{
    cli_ok, eventually, json_of, now, spawn_app_with, unique, AppOptions, Backend, TestApp,
};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A signing key of a fake issuer.
enum Signer {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

struct TestKey {
    kid: String,
    signer: Signer,
}

impl TestKey {
    fn ed25519(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    fn p256(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::P256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            ),
        }
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed25519(_) => "EdDSA",
            Signer::P256(_) => "ES256",
        }
    }

    fn public_key(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
            Signer::P256(pair) => pair.public_key().as_ref().to_vec(),
        }
    }

    /// The public key as a JWK (RFC 7517; OKP of RFC 8037, EC of RFC 7518).
    fn jwk(&self) -> Value {
        let public = self.public_key();
        match self.signer {
            Signer::Ed25519(_) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public),
                "kid": self.kid, "use": "sig", "alg": "EdDSA",
            }),
            // An uncompressed point: 0x04, then x and y.
            Signer::P256(_) => json!({
                "kty": "EC", "crv": "P-256",
                "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65]),
                "kid": self.kid, "use": "sig",
            }),
        }
    }

    /// A JWT with this key's algorithm and kid.
    fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// Signs whatever header it is given (a forged `kid`, say).
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        let signature = match &self.signer {
            Signer::Ed25519(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::P256(pair) => pair
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(signature))
    }
}

#[derive(Default)]
struct IssuerState {
    /// The issuer's URL (its `jwks_uri` is there).
    issuer: Mutex<String>,
    /// Another issuer for the discovery document to name (an impostor's).
    named_issuer: Mutex<Option<String>>,
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    /// Requests for the key set, answered or not.
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
}

/// An identity issuer on loopback: `/.well-known/openid-configuration` and `/jwks`.
#[derive(Clone)]
struct FakeIssuer {
    url: String,
    state: Arc<IssuerState>,
}

impl FakeIssuer {
    async fn start() -> Self {
        let state = Arc::new(IssuerState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.issuer.lock().unwrap() = url.clone();
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    /// Publishes exactly these keys (a rotation replaces the set).
    fn publish(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// The claims of a token of this issuer for `sub`, valid for ten minutes.
    fn claims(&self, sub: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url, "sub": sub, "aud": ["tokenbox"],
            "iat": now, "nbf": now, "exp": now + 600, "jti": unique("jti"),
        })
    }
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    state.discovery_requests.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let url = state.issuer.lock().unwrap().clone();
    let named = state.named_issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": named.unwrap_or_else(|| url.clone()),
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = state.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

/// A `[[trusted_issuers]]` entry for `issuer` with its extra keys and rules (its key set found
/// through discovery, unless `settings` names a `jwks_url`).
fn trusted(issuer: &FakeIssuer, settings: &str, rules: &[(&str, &str, &str)]) -> String {
    let discovery = if settings.contains("jwks_url") {
        ""
    } else {
        "discovery = true\n"
    };
    let mut entry = format!(
        "\n[[trusted_issuers]]\nissuer = \"{}\"\n{discovery}audience = \"tokenbox\"\n{settings}\n",
        issuer.url
    );
    for (subject, account, claims) in rules {
        entry.push_str(&format!(
            "[[trusted_issuers.rules]]\nsubject = \"{subject}\"\naccount = \"{account}\"\n"
        ));
        if !claims.is_empty() {
            entry.push_str(&format!("claims = {claims}\n"));
        }
    }
    entry
}

/// The token exchange for `resource` with `subject_token`.
async fn exchange(app: &TestApp, subject_token: &str, resource: &str) -> reqwest::Response {
    app.post("/oauth/token")
        .form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", JWT_TYPE),
            ("resource", resource),
        ])
        .send()
        .await
}

/// The exchange's JSON answer, which must be `status` with `error` (RFC 6749 §5.2).
async fn exchange_refused(
    app: &TestApp,
    token: &str,
    resource: &str,
    status: u16,
    error: &str,
) -> Value {
    let response = exchange(app, token, resource).await;
    assert_eq!(response.status(), status, "exchange for {resource}");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_of(response).await;
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].as_str().is_some(), "{body}");
    body
}

/// `token` is refused: 401 `unauthorized` on `binb-token`, `invalid_grant` on the exchange.
async fn assert_refused(app: &TestApp, token: &str, what: &str) -> String {
    app.remember_secret(token);
    let response = app.get_token_as(token, "acme", "github", "").await;
    assert_eq!(response.status(), 401, "{what}: binb-token");
    assert_eq!(json_of(response).await["error"], "unauthorized", "{what}");
    let body = exchange_refused(
        app,
        token,
        "tokenbox:connection:acme/github",
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(body["tokenbox_error"], "unauthorized", "{what}: {body}");
    body["error_description"].as_str().unwrap().to_string()
}

/// Must-show 1: a local issuer (keys, JWKS and discovery served by the test); a mapped
/// subject reads a token with `binb-token` and through the exchange, and the audit trail
/// shows the workload beside the account; an unmapped subject, a wrong audience, an expired
/// token, a wrong issuer, a key outside the JWKS, `alg: none` and HS256 signed with the
/// public key are each refused; a mapping to a missing account, to an admin and to a scope
/// that does not cover the connection too.
pub async fn a_trusted_workload_reads_a_token_with_binb_token_and_through_the_exchange(
    backend: Backend,
) {
    let issuer = FakeIssuer::start().await;
    let ed = TestKey::ed25519("k-ed");
    let ec = TestKey::p256("k-ec");
    issuer.publish(&[&ed, &ec]);
    let config = format!(
        "accounts_cache_seconds = 0\n{}",
        trusted(
            &issuer,
            "jwks_min_refetch_seconds = 0",
            &[
                ("system:serviceaccount:extract:*", "extraction", ""),
                ("system:serviceaccount:ghost:*", "ghost", ""),
                ("system:serviceaccount:reporting:*", "laputa", ""),
                ("system:serviceaccount:hubspot:*", "hubspot-only", ""),
            ],
        )
    );
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: config,
        ..AppOptions::default()
    })
    .await;
    crate::helpers::create_superadmin(&app, "hubspot-only", &["--connector-types", "hubspot"]);
    let provider_token = unique("gh-access");
    app.import_ok(
        "acme",
        "github",
        &json!({"access_token": provider_token, "expires_in": 3600, "scope": "repo"}),
    )
    .await;

    // A mapped subject, with either algorithm, on binb-token and through the exchange.
    let runner = "system:serviceaccount:extract:runner";
    for key in [&ed, &ec] {
        let token = key.token(&issuer.claims(runner));
        app.remember_secret(&token);
        let response = app.get_token_as(&token, "acme", "github", "").await;
        assert_eq!(response.status(), 200, "{}", key.alg());
        assert_eq!(
            json_of(response).await["access_token"],
            provider_token.as_str()
        );

        let response = exchange(&app, &token, "tokenbox:connection:acme/github").await;
        assert_eq!(response.status(), 200, "{}", key.alg());
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = json_of(response).await;
        assert_eq!(body["access_token"], provider_token.as_str());
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], "repo");
        // binb-token's fields come along: the headers a job sends to the provider.
        assert!(
            body["headers"].to_string().contains(&provider_token),
            "{body}"
        );
        let expires_in = body["expires_in"].as_i64().unwrap();
        assert!((1..=3600).contains(&expires_in), "{body}");
    }
    let good = ed.token(&issuer.claims(runner));
    app.remember_secret(&good);

    // Each refusal on its own.
    let mut claims = issuer.claims("system:serviceaccount:other:runner");
    let why = assert_refused(&app, &ed.token(&claims), "an unmapped subject").await;
    assert!(why.contains("no rule"), "{why}");
    claims = issuer.claims(runner);
    claims["aud"] = json!(["someone-else"]);
    let why = assert_refused(&app, &ed.token(&claims), "a wrong audience").await;
    assert!(why.contains("audience"), "{why}");
    claims = issuer.claims(runner);
    claims["aud"] = json!("someone-else");
    assert_refused(&app, &ed.token(&claims), "a wrong audience (string)").await;
    claims = issuer.claims(runner);
    claims["exp"] = json!(now() - 3600);
    claims["iat"] = json!(now() - 7200);
    claims["nbf"] = json!(now() - 7200);
    let why = assert_refused(&app, &ed.token(&claims), "an expired token").await;
    assert!(why.contains("expired"), "{why}");
    claims = issuer.claims(runner);
    claims.as_object_mut().unwrap().remove("exp");
    assert_refused(&app, &ed.token(&claims), "a token without exp").await;
    claims = issuer.claims(runner);
    claims["nbf"] = json!(now() + 3600);
    assert_refused(&app, &ed.token(&claims), "a token not valid yet").await;
    claims = issuer.claims(runner);
    claims["iss"] = json!("http://127.0.0.1:9/another-issuer");
    assert_refused(&app, &ed.token(&claims), "a wrong issuer").await;
    let rogue = TestKey::ed25519("k-rogue");
    let why = assert_refused(
        &app,
        &rogue.token(&issuer.claims(runner)),
        "a key outside the JWKS",
    )
    .await;
    assert!(why.contains("key set"), "{why}");
    let forged = rogue.sign(
        &json!({"alg": "EdDSA", "kid": ed.kid}),
        &issuer.claims(runner),
    );
    let why = assert_refused(
        &app,
        &forged,
        "a key outside the JWKS, claiming a known kid",
    )
    .await;
    assert!(why.contains("signature"), "{why}");
    let with_jwk = rogue.sign(
        &json!({"alg": "EdDSA", "kid": "k-rogue", "jwk": rogue.jwk()}),
        &issuer.claims(runner),
    );
    assert_refused(&app, &with_jwk, "a key sent in the token's own jwk header").await;
    let unsigned = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(serde_json::to_vec(&issuer.claims(runner)).unwrap())
    );
    let why = assert_refused(&app, &unsigned, "alg none").await;
    assert!(why.contains("algorithm"), "{why}");
    // HS256 with the issuer's public key (as published, raw and in its JWK text) as the
    // HMAC secret: the classic algorithm confusion.
    for secret in [ed.public_key(), serde_json::to_vec(&ed.jwk()).unwrap()] {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&json!({"alg": "HS256", "kid": ed.kid})).unwrap()),
            B64.encode(serde_json::to_vec(&issuer.claims(runner)).unwrap())
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let hs256 = format!("{input}.{}", B64.encode(tag.as_ref()));
        let why = assert_refused(&app, &hs256, "HS256 signed with the public key").await;
        assert!(why.contains("HS256"), "{why}");
    }

    // Mapped to an account that does not exist: refused.
    let ghost = ed.token(&issuer.claims("system:serviceaccount:ghost:runner"));
    let why = assert_refused(&app, &ghost, "a mapping to a missing account").await;
    assert!(why.contains("does not exist"), "{why}");
    // Mapped to an admin: binb-token is forbidden, the exchange's target too.
    let admin = ed.token(&issuer.claims("system:serviceaccount:reporting:job"));
    app.remember_secret(&admin);
    let response = app.get_token_as(&admin, "acme", "github", "").await;
    assert_eq!(response.status(), 403);
    let body = exchange_refused(
        &app,
        &admin,
        "tokenbox:connection:acme/github",
        400,
        "invalid_target",
    )
    .await;
    assert_eq!(body["tokenbox_error"], "forbidden");
    // Mapped to a scoped account: its scope holds on both paths; an unknown connection in its
    // scope is an invalid target too.
    let hubspot = ed.token(&issuer.claims("system:serviceaccount:hubspot:job"));
    app.remember_secret(&hubspot);
    assert_eq!(
        app.get_token_as(&hubspot, "acme", "github", "")
            .await
            .status(),
        403
    );
    exchange_refused(
        &app,
        &hubspot,
        "tokenbox:connection:acme/github",
        400,
        "invalid_target",
    )
    .await;
    let body = exchange_refused(
        &app,
        &hubspot,
        "tokenbox:connection:acme/hubspot",
        400,
        "invalid_target",
    )
    .await;
    assert_eq!(body["tokenbox_error"], "not_connected");

    // One of tokenbox's own JWTs (client-credentials grant) is a subject token too.
    let response = app
        .post("/oauth/token")
        .basic_auth("extraction", Some(&app.superadmin))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let own = json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    app.remember_secret(&own);
    let response = app
        .post("/oauth/token")
        .form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", own.as_str()),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("resource", "tokenbox:connection:acme/github"),
        ])
        .send()
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await["access_token"],
        provider_token.as_str()
    );

    // Malformed requests.
    for (form, expected) in [
        (
            vec![
                ("subject_token_type", JWT_TYPE),
                ("resource", "tokenbox:connection:acme/github"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("resource", "tokenbox:connection:acme/github"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", "urn:x"),
                ("resource", "tokenbox:connection:acme/github"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", JWT_TYPE),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("resource", "acme/github"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("resource", "tokenbox:connection:ACME/github"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("resource", "tokenbox:connection:acme/github"),
                ("resource", "tokenbox:connection:acme/hubspot"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", good.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("resource", "tokenbox:connection:acme/github"),
                ("actor_token", good.as_str()),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("subject_token", app.superadmin.as_str()),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("resource", "tokenbox:connection:acme/github"),
            ],
            "invalid_grant",
        ),
    ] {
        let mut form = form;
        form.insert(0, ("grant_type", EXCHANGE));
        let response = app.post("/oauth/token").form(&form).send().await;
        assert_eq!(response.status(), 400, "{form:?}");
        assert_eq!(json_of(response).await["error"], expected, "{form:?}");
    }

    // A static token's read and the workload's are two rows of the audit trail: the
    // workload's names its subject and issuer beside the account.
    assert_eq!(app.get_token("acme", "github", "").await.status(), 200);
    let rows = |action: &'static str| {
        let app = &app;
        move || async move {
            let events: Vec<Value> = app
                .get("/audit?app_id=acme&limit=1000")
                .as_superadmin()
                .send()
                .await
                .json()
                .await
                .ok()?;
            let rows: Vec<Value> = events
                .into_iter()
                .filter(|e| e["action"] == action && e["principal"] == "extraction")
                .collect();
            (rows.iter().any(|e| e["workload_subject"] == runner)
                && (action != "token.read" || rows.iter().any(|e| e["workload_subject"].is_null())))
            .then_some(rows)
        }
    };
    let reads = eventually(
        "the workload's token reads in the audit trail",
        rows("token.read"),
    )
    .await;
    let workload_read = reads
        .iter()
        .find(|e| e["workload_subject"] == runner && e["outcome"] == "ok")
        .expect("the workload's served read");
    assert_eq!(workload_read["workload_issuer"], issuer.url.as_str());
    assert_eq!(workload_read["outcome"], "ok");
    let exchanges = eventually("the exchanges in the audit trail", rows("token.exchange")).await;
    let workload_exchange = exchanges
        .iter()
        .find(|e| e["workload_subject"] == runner && e["outcome"] == "ok")
        .expect("the workload's exchange");
    assert_eq!(workload_exchange["connector_type"], "github");
    assert_eq!(workload_exchange["workload_issuer"], issuer.url.as_str());
    // ... and in the CLI's listing.
    let table = cli_ok(&app.config_path, &["audit", "--app", "acme"], None);
    assert!(
        table
            .lines()
            .any(|l| l.contains("token.exchange") && l.contains(runner)),
        "{table}"
    );
}

/// Must-show 2: a key rotation at the issuer (a new `kid`) is picked up without a restart, by
/// one fetch for many concurrent callers; while the key set is unreachable, tokens signed by
/// the cached keys still verify, for `jwks_max_stale_seconds` at most; a refetch on an unknown
/// `kid` happens at most once per `jwks_min_refetch_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_issuer_key_is_picked_up_and_cached_keys_outlive_an_outage_for_a_bounded_time() {
    let rotating = FakeIssuer::start().await;
    let tolerant = FakeIssuer::start().await;
    let strict = FakeIssuer::start().await;
    let limited = FakeIssuer::start().await;
    let impostor = FakeIssuer::start().await;
    let rule = [("system:serviceaccount:extract:*", "extraction", "")];
    let config = [
        trusted(
            &rotating,
            "jwks_cache_seconds = 3600\njwks_min_refetch_seconds = 0",
            &rule,
        ),
        trusted(
            &tolerant,
            "jwks_cache_seconds = 0\njwks_min_refetch_seconds = 0\njwks_max_stale_seconds = 3600",
            &rule,
        ),
        trusted(
            &strict,
            "jwks_cache_seconds = 0\njwks_min_refetch_seconds = 0\njwks_max_stale_seconds = 0",
            &rule,
        ),
        trusted(
            &limited,
            &format!(
                "jwks_url = \"{}/jwks\"\njwks_cache_seconds = 3600\njwks_min_refetch_seconds = 3600",
                limited.url
            ),
            &rule,
        ),
        trusted(&impostor, "", &rule),
    ]
    .concat();
    let app = spawn_app_with(AppOptions {
        extra_config: config,
        ..AppOptions::default()
    })
    .await;
    let provider_token = unique("gh-access");
    app.import_ok("acme", "github", &json!({"access_token": provider_token}))
        .await;
    let runner = "system:serviceaccount:extract:runner";
    let status = |token: String| {
        app.remember_secret(&token);
        let app = &app;
        async move {
            app.get_token_as(&token, "acme", "github", "")
                .await
                .status()
                .as_u16()
        }
    };

    // Rotation: the first key, then a new kid replaces it at the issuer.
    let first = TestKey::ed25519("2024-01");
    rotating.publish(&[&first]);
    assert_eq!(status(first.token(&rotating.claims(runner))).await, 200);
    assert_eq!(rotating.jwks_requests(), 1);
    let second = TestKey::p256("2024-02");
    rotating.publish(&[&second]);
    let token = second.token(&rotating.claims(runner));
    app.remember_secret(&token);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let request = app.get("/acme/github/binb-token").bearer(&token);
            tokio::spawn(async move { request.send().await.status().as_u16() })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), 200);
    }
    assert_eq!(
        rotating.jwks_requests(),
        2,
        "twenty callers with a new kid: one fetch of the key set"
    );
    // The retired key is gone from the set: its tokens are refused now.
    assert_eq!(status(first.token(&rotating.claims(runner))).await, 401);

    // An outage of the key set: the cached key keeps verifying (the fetch is tried and fails)...
    let key = TestKey::ed25519("tolerant-1");
    tolerant.publish(&[&key]);
    assert_eq!(status(key.token(&tolerant.claims(runner))).await, 200);
    tolerant.set_down(true);
    let tried = tolerant.jwks_requests() + tolerant.state.discovery_requests.load(Ordering::SeqCst);
    assert_eq!(status(key.token(&tolerant.claims(runner))).await, 200);
    assert!(
        tolerant.jwks_requests() + tolerant.state.discovery_requests.load(Ordering::SeqCst) > tried,
        "the expired cache was fetched again, and that failed"
    );
    // ... for jwks_max_stale_seconds only (0 here): then the issuer's tokens are refused, until
    // the key set is back.
    let key = TestKey::ed25519("strict-1");
    strict.publish(&[&key]);
    assert_eq!(status(key.token(&strict.claims(runner))).await, 200);
    strict.set_down(true);
    assert_eq!(status(key.token(&strict.claims(runner))).await, 401);
    strict.set_down(false);
    assert_eq!(status(key.token(&strict.claims(runner))).await, 200);

    // A refetch on an unknown kid waits for jwks_min_refetch_seconds (an hour here).
    let old = TestKey::ed25519("limited-1");
    limited.publish(&[&old]);
    assert_eq!(status(old.token(&limited.claims(runner))).await, 200);
    let new = TestKey::ed25519("limited-2");
    limited.publish(&[&old, &new]);
    assert_eq!(status(new.token(&limited.claims(runner))).await, 401);
    assert_eq!(status(new.token(&limited.claims(runner))).await, 401);
    assert_eq!(limited.jwks_requests(), 1, "no refetch within the interval");

    // A discovery document that names another issuer is not trusted for this one.
    let key = TestKey::ed25519("impostor-1");
    impostor.publish(&[&key]);
    *impostor.state.named_issuer.lock().unwrap() = Some("https://issuer.example".into());
    assert_eq!(status(key.token(&impostor.claims(runner))).await, 401);
    assert_eq!(impostor.jwks_requests(), 0, "its jwks_uri is not followed");
    assert!(app.log_lines_containing("the issuer's key set could not be fetched") > 0);
}

/// Must-show 4: a Kubernetes projected service-account token and a GitHub Actions OIDC token,
/// each with its real claim layout, mapped by a rule with claim conditions (a nested claim by
/// its dotted path); a token whose claims do not match is refused, and the first matching rule
/// wins.
pub async fn kubernetes_and_github_actions_tokens_are_mapped_by_their_rules(backend: Backend) {
    let cluster = FakeIssuer::start().await;
    let actions = FakeIssuer::start().await;
    let cluster_key = TestKey::p256("k8s-sa-key");
    let actions_key = TestKey::p256("gha-1");
    cluster.publish(&[&cluster_key]);
    actions.publish(&[&actions_key]);
    let config = format!(
        "accounts_cache_seconds = 0\n{}{}",
        trusted(
            &cluster,
            "",
            &[(
                "system:serviceaccount:extract:*",
                "extraction",
                r#"{ "kubernetes.io.namespace" = "extract", "kubernetes.io.serviceaccount.name" = "runner" }"#,
            )],
        ),
        trusted(
            &actions,
            "",
            &[
                (
                    "repo:acme/jobs:ref:refs/heads/main",
                    "gha-jobs",
                    r#"{ repository = "acme/jobs", repository_owner = "acme", ref = "refs/heads/main" }"#,
                ),
                ("repo:acme/*", "laputa", r#"{ repository_owner = "acme" }"#),
            ],
        ),
    );
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: config,
        ..AppOptions::default()
    })
    .await;
    crate::helpers::create_superadmin(&app, "gha-jobs", &["--apps", "acme"]);
    let provider_token = unique("gh-access");
    app.import_ok("acme", "github", &json!({"access_token": provider_token}))
        .await;
    app.import_ok(
        "beta",
        "github",
        &json!({"access_token": unique("beta-access")}),
    )
    .await;

    // Kubernetes: a projected service-account token (audience tokenbox) as the kubelet
    // writes it.
    let now = now();
    let pod = |namespace: &str, account: &str| {
        json!({
            "aud": ["tokenbox"],
            "exp": now + 3607,
            "iat": now,
            "iss": cluster.url,
            "jti": unique("k8s-jti"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "worker-3", "uid": "0f1e7c4b-6b0b-4d8e-9a43-1c2d3e4f5a6b"},
                "pod": {"name": "extract-28391-xk2lp", "uid": "9b2c1a7e-3f4d-4e5f-8a9b-0c1d2e3f4a5b"},
                "serviceaccount": {"name": account, "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"},
                "warnafter": now + 3600
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
        })
    };
    let token = cluster_key.token(&pod("extract", "runner"));
    app.remember_secret(&token);
    let response = exchange(&app, &token, "tokenbox:connection:acme/github").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await["access_token"],
        provider_token.as_str()
    );
    assert_eq!(
        app.get_token_as(&token, "acme", "github", "")
            .await
            .status(),
        200
    );
    // The subject matches, a nested claim does not (another service account's name).
    let mut mismatched = pod("extract", "runner");
    mismatched["kubernetes.io"]["serviceaccount"]["name"] = json!("builder");
    assert_refused(
        &app,
        &cluster_key.token(&mismatched),
        "a Kubernetes claim mismatch",
    )
    .await;
    assert_refused(
        &app,
        &cluster_key.token(&pod("default", "runner")),
        "another namespace",
    )
    .await;

    // GitHub Actions: the OIDC token of a scheduled workflow on main, audience tokenbox.
    let workflow = |repository: &str, git_ref: &str| {
        json!({
            "jti": unique("gha-jti"),
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "aud": "tokenbox",
            "ref": git_ref,
            "sha": "6d2c3f1a9b8e7d6c5b4a39281706f5e4d3c2b1a0",
            "repository": repository,
            "repository_owner": "acme",
            "repository_owner_id": "1234567",
            "run_id": "9876543210",
            "run_number": "42",
            "run_attempt": "1",
            "repository_visibility": "private",
            "repository_id": "7654321",
            "actor_id": "2345678",
            "actor": "octocat",
            "workflow": "extract",
            "head_ref": "",
            "base_ref": "",
            "event_name": "schedule",
            "ref_protected": "true",
            "ref_type": "branch",
            "workflow_ref": format!("{repository}/.github/workflows/extract.yml@{git_ref}"),
            "workflow_sha": "6d2c3f1a9b8e7d6c5b4a39281706f5e4d3c2b1a0",
            "job_workflow_ref": format!("{repository}/.github/workflows/extract.yml@{git_ref}"),
            "job_workflow_sha": "6d2c3f1a9b8e7d6c5b4a39281706f5e4d3c2b1a0",
            "runner_environment": "github-hosted",
            "iss": actions.url,
            "nbf": now - 5,
            "exp": now + 295,
            "iat": now - 5,
        })
    };
    let main = actions_key.token(&workflow("acme/jobs", "refs/heads/main"));
    app.remember_secret(&main);
    let response = exchange(&app, &main, "tokenbox:connection:acme/github").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await["access_token"],
        provider_token.as_str()
    );
    // The rule's account (gha-jobs) is scoped to the app acme.
    exchange_refused(
        &app,
        &main,
        "tokenbox:connection:beta/github",
        400,
        "invalid_target",
    )
    .await;
    // The subject matches the first rule but `repository` does not: the second rule (an admin)
    // maps it, and an admin may not read tokens.
    let mut other_repository = workflow("acme/jobs", "refs/heads/main");
    other_repository["repository"] = json!("acme/other");
    let other = actions_key.token(&other_repository);
    app.remember_secret(&other);
    let response = app.get_token_as(&other, "acme", "github", "").await;
    assert_eq!(
        response.status(),
        403,
        "mapped by the second rule, to an admin"
    );
    // A feature branch: the first rule's subject does not match either.
    let feature = actions_key.token(&workflow("acme/jobs", "refs/heads/feature"));
    app.remember_secret(&feature);
    assert_eq!(
        app.get_token_as(&feature, "acme", "github", "")
            .await
            .status(),
        403
    );
    // Another owner: no rule at all.
    let mut stranger = workflow("evil/jobs", "refs/heads/main");
    stranger["repository_owner"] = json!("evil");
    assert_refused(
        &app,
        &actions_key.token(&stranger),
        "another owner's repository",
    )
    .await;

    // The audit trail names both workloads beside their accounts.
    eventually("both workloads in the audit trail", || async {
        let events: Vec<Value> = app
            .get("/audit?app_id=acme&limit=1000")
            .as_superadmin()
            .send()
            .await
            .json()
            .await
            .ok()?;
        let seen = |principal: &str, subject: &str| {
            events
                .iter()
                .any(|e| e["principal"] == principal && e["workload_subject"] == subject)
        };
        (seen("extraction", "system:serviceaccount:extract:runner")
            && seen("gha-jobs", "repo:acme/jobs:ref:refs/heads/main"))
        .then_some(())
    })
    .await;
}
