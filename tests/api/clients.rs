//! Service accounts as OAuth clients: the client-credentials grant and its JWTs.

use base64::Engine;
use serde_json::Value;

use crate::helpers::{
    cli, cli_ok, holds_eventually, json_of, spawn_app_with, unique, AppOptions, Backend, TestApp,
};

async fn token_request(
    app: &TestApp,
    basic: Option<(&str, &str)>,
    form: &str,
) -> reqwest::Response {
    let mut request = app
        .post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    request.send().await
}

async fn jwt_for(app: &TestApp, id: &str, secret: &str) -> String {
    let response = token_request(app, Some((id, secret)), "grant_type=client_credentials").await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["token_type"], "Bearer");
    let jwt = body["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&jwt);
    jwt
}

fn kid_of(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

pub async fn a_service_account_obtains_a_jwt_and_uses_it_on_the_token_routes(backend: Backend) {
    // The server reads the accounts on every request: the CLI's changes apply at once.
    let app = spawn_app_with(AppOptions {
        backend,
        extra_config: "accounts_cache_seconds = 0\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("t")}),
    )
    .await;

    // HTTP Basic and form-body credentials.
    let jwt = jwt_for(&app, "extraction", &app.superadmin).await;
    assert_eq!(jwt.split('.').count(), 3);
    let form = format!(
        "grant_type=client_credentials&client_id=laputa&client_secret={}",
        app.admin
    );
    let response = token_request(&app, None, &form).await;
    assert_eq!(response.status(), 200);
    let admin_jwt = json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    app.remember_secret(&admin_jwt);

    // The JWT works where the static token does, with the account's role.
    assert_eq!(
        app.get_token_as(&jwt, "acme", "github", "").await.status(),
        200
    );
    assert_eq!(
        app.get_token_as(&admin_jwt, "acme", "github", "")
            .await
            .status(),
        403
    );

    // The JWKS publishes the key that signed it.
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .send()
        .await
        .json()
        .await
        .unwrap();
    let kid = kid_of(&jwt);
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == kid.as_str() && k["kty"] == "OKP" && k["crv"] == "Ed25519"));

    // A bad signature, a wrong secret, an unsupported grant: RFC 6749 §5.2 errors.
    let mut forged = jwt.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        app.get_token_as(&forged, "acme", "github", "")
            .await
            .status(),
        401
    );
    let response = token_request(
        &app,
        Some(("extraction", "tbx_wrong")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(json_of(response).await["error"], "invalid_client");
    let response = token_request(
        &app,
        Some(("laputa", &app.superadmin)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(response.status(), 401, "another account's secret");
    let response = token_request(
        &app,
        Some(("extraction", &app.superadmin)),
        "grant_type=password",
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(response).await["error"], "unsupported_grant_type");
    let response = token_request(&app, Some(("extraction", &app.superadmin)), "").await;
    assert_eq!(json_of(response).await["error"], "invalid_request");

    // A scoped account's JWT carries its scope.
    let scoped = cli_ok(
        &app.config_path,
        &[
            "service-account",
            "create",
            "gh-only",
            "--role",
            "superadmin",
            "--connector-types",
            "hubspot",
        ],
        None,
    )
    .trim()
    .to_string();
    app.remember_secret(&scoped);
    let scoped_jwt = jwt_for(&app, "gh-only", &scoped).await;
    assert_eq!(
        app.get_token_as(&scoped_jwt, "acme", "github", "")
            .await
            .status(),
        403
    );

    // A revoked account's JWTs stop working.
    let (code, _, _) = cli(
        &app.config_path,
        &["service-account", "revoke", "gh-only"],
        None,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        app.get_token_as(&scoped_jwt, "acme", "hubspot", "")
            .await
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_jwt_is_refused() {
    let app = spawn_app_with(AppOptions {
        extra_config: "jwt_lifetime_seconds = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("t")}),
    )
    .await;
    let response = token_request(
        &app,
        Some(("extraction", &app.superadmin)),
        "grant_type=client_credentials",
    )
    .await;
    let body = json_of(response).await;
    assert_eq!(body["expires_in"], 1);
    let jwt = body["access_token"].as_str().unwrap().to_string();
    app.remember_secret(&jwt);
    assert_eq!(
        app.get_token_as(&jwt, "acme", "github", "").await.status(),
        200
    );
    // It expires (one second, plus the one-second leeway): refused from then on.
    assert!(
        holds_eventually(|| async {
            app.get_token_as(&jwt, "acme", "github", "").await.status() == 401
        })
        .await,
        "the expired JWT is refused"
    );
    assert_eq!(
        app.get_token_as(&jwt, "acme", "github", "").await.status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_signing_key_rotation_the_previous_key_works_during_the_overlap_only() {
    let app = spawn_app_with(AppOptions {
        extra_config: "jwt_key_overlap_seconds = 9\njwt_keys_cache_seconds = 0\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("t")}),
    )
    .await;
    let old = jwt_for(&app, "extraction", &app.superadmin).await;
    let (code, _, stderr) = cli(&app.config_path, &["keys", "rotate-signing"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    // The server reads the keys on every use (`jwt_keys_cache_seconds = 0`).
    let new = jwt_for(&app, "extraction", &app.superadmin).await;
    assert_ne!(kid_of(&new), kid_of(&old), "signed with the new key");
    assert_eq!(
        app.get_token_as(&old, "acme", "github", "").await.status(),
        200,
        "overlap"
    );
    assert_eq!(
        app.get_token_as(&new, "acme", "github", "").await.status(),
        200
    );
    // The old key retires at the end of the overlap (9 s); then it no longer verifies. The
    // end is brought forward in the database rather than waited for.
    let overlap = app
        .query_strings(&format!(
            "SELECT CAST(o.retire_at - n.created_at AS TEXT) FROM jwt_keys o, jwt_keys n \
             WHERE o.kid = '{}' AND n.kid = '{}'",
            kid_of(&old),
            kid_of(&new)
        ))
        .await;
    let overlap: i64 = overlap[0].parse().unwrap();
    assert!(
        (9..=10).contains(&overlap),
        "the old key retires 9 s after the new one was made: {overlap}"
    );
    app.execute_sql(&format!(
        "UPDATE jwt_keys SET retire_at = {} WHERE kid = '{}'",
        crate::helpers::now() - 1,
        kid_of(&old)
    ))
    .await;
    assert_eq!(
        app.get_token_as(&old, "acme", "github", "").await.status(),
        401
    );
    assert_eq!(
        app.get_token_as(&new, "acme", "github", "").await.status(),
        200
    );
}
