use serde_json::json;

use crate::helpers::{
    cli, holds_eventually, json_of, spawn_app_with, unique, AppOptions, Backend, FakeProvider, Mode,
};

pub async fn service_account_create_prints_only_the_token_and_revoke_stops_it(backend: Backend) {
    let app = crate::helpers::spawn_app_on(backend, None).await;
    let (code, stdout, _) = cli(
        &app.config_path,
        &[
            "service-account",
            "create",
            "job-runner",
            "--role",
            "superadmin",
        ],
        None,
        &[],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {stdout:?}");
    let token = lines[0].to_string();
    app.remember_secret(&token);
    assert!(token.starts_with("tbx_"));

    let (code, listing, _) = cli(&app.config_path, &["service-account", "list"], None, &[]);
    assert_eq!(code, 0);
    assert!(listing.contains("job-runner") && listing.contains("superadmin"));
    assert!(!listing.contains(&token), "the token is shown once only");

    let (code, _, stderr) = cli(
        &app.config_path,
        &["service-account", "create", "job-runner", "--role", "admin"],
        None,
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("already exists"), "{stderr}");

    app.import_ok("acme", "github", &json!({"access_token": unique("t")}))
        .await;
    assert_eq!(
        app.get_token_as(&token, "acme", "github", "")
            .await
            .status(),
        200
    );

    let (code, _, _) = cli(
        &app.config_path,
        &["service-account", "revoke", "job-runner"],
        None,
        &[],
    );
    assert_eq!(code, 0);
    // The server re-reads accounts at most 2 s after a change made by another process.
    assert!(
        holds_eventually(|| async {
            app.get_token_as(&token, "acme", "github", "")
                .await
                .status()
                == 401
        })
        .await,
        "the revoked token still works"
    );
    let (code, _, stderr) = cli(
        &app.config_path,
        &["service-account", "revoke", "job-runner"],
        None,
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("no service account"), "{stderr}");
}

pub async fn connection_import_reads_a_token_set_on_stdin(backend: Backend) {
    let mut app = crate::helpers::spawn_app_on(backend, None).await;
    let access = unique("cli-imported");
    app.remember_secret(&access);
    let input = json!({"access_token": access, "refresh_token": unique("rt"), "expires_at": crate::helpers::now() + 7200, "scope": "repo"});
    app.remember_secret(input["refresh_token"].as_str().unwrap());
    let (code, stdout, stderr) = cli(
        &app.config_path,
        &["connection", "import", "tenant-9", "github"],
        Some(&input.to_string()),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(!stderr.contains(&access));
    app.restart();
    let body = json_of(app.get_token("tenant-9", "github", "").await).await;
    assert_eq!(body["access_token"], access.as_str());
    assert_eq!(body["expires_at"], input["expires_at"]);

    let (code, _, stderr) = cli(
        &app.config_path,
        &["connection", "import", "tenant-9", "github"],
        Some("{\"refresh_token\": \"x\"}"),
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("access_token"), "{stderr}");
}

pub async fn tokenbox_token_prints_the_access_token_for_shell_scripts(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        ..AppOptions::default()
    })
    .await;
    app.import_expired("acme").await;
    let env = [
        ("TOKENBOX_URL", app.address.as_str()),
        ("TOKENBOX_TOKEN", app.superadmin.as_str()),
    ];
    let (code, stdout, stderr) = cli(
        &app.config_path,
        &["token", "acme", "acme", "--min-validity", "60"],
        None,
        &env,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), provider.issued_access_tokens()[0]);
    assert_eq!(stdout.lines().count(), 1);

    let (code, stdout, stderr) = cli(&app.config_path, &["token", "nobody", "acme"], None, &env);
    assert_eq!(code, 4);
    assert!(stdout.is_empty());
    assert!(stderr.contains("not_connected"), "{stderr}");

    provider.set_mode(Mode::Revoked);
    let (code, _, stderr) = cli(
        &app.config_path,
        &["token", "acme", "acme", "--force-refresh"],
        None,
        &env,
    );
    assert_eq!(code, 3);
    assert!(stderr.contains("reauthorization_required"), "{stderr}");
}

pub async fn no_token_or_secret_appears_in_trace_level_logs_across_every_path(backend: Backend) {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app_with(AppOptions {
        backend,
        provider: Some(provider.clone()),
        log_filter: "trace".into(),
        ..AppOptions::default()
    })
    .await;
    // Success, refresh, concurrent refresh, forced refresh, import errors, revocation, outage.
    app.import_expired("a1").await;
    app.import_expired("a2").await;
    let mut set = tokio::task::JoinSet::new();
    for app_id in ["a1", "a2", "a1", "a2"] {
        let request = app
            .get(&format!("/{app_id}/acme/binb-token"))
            .as_superadmin();
        set.spawn(async move { request.send().await.status() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        app.get_token("a1", "acme", "force_refresh=true")
            .await
            .status(),
        200
    );
    app.import(
        "a1",
        "acme",
        &json!({"access_token": unique("bad"), "expires_at": "oops"}),
    )
    .await;
    assert_eq!(
        app.get_token_as("tbx_not_a_real_token", "a1", "acme", "")
            .await
            .status(),
        401
    );
    provider.set_mode(Mode::Down);
    assert_eq!(
        app.get_token("a2", "acme", "force_refresh=true")
            .await
            .status(),
        200
    );
    provider.set_mode(Mode::Revoked);
    assert_eq!(
        app.get_token("a1", "acme", "force_refresh=true")
            .await
            .status(),
        409
    );
    app.restart();
    assert_eq!(app.get_token("a1", "acme", "").await.status(), 409);

    let logs = app.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(
        logs.contains("outcome=\"served\""),
        "access log lines are written"
    );
    assert!(logs.contains("refreshed=true"));
    app.assert_logs_clean();
}
