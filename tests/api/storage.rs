use std::str::FromStr;

use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::helpers::{cli, json_of, spawn_app, spawn_app_on, unique, Backend, FakeProvider};

fn file_bytes(app: &crate::helpers::TestApp) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", app.db_path().display());
        if let Ok(bytes) = std::fs::read(&path) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_sqlite_file_holds_no_token_and_no_client_secret_in_clear() {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app(Some(&provider)).await;
    let imported = app.import_expired("acme").await;
    let served = json_of(app.get_token("acme", "acme", "").await).await;
    let refreshed = served["access_token"].as_str().unwrap().to_string();
    assert_ne!(refreshed, imported);
    app.stop();

    let bytes = file_bytes(&app);
    assert!(bytes.len() > 4096, "the database files were read");
    assert!(
        contains(&bytes, "acme"),
        "sanity: plain columns are visible"
    );
    for secret in provider.secrets().iter().chain([&imported, &refreshed]) {
        assert!(!contains(&bytes, secret), "a secret is stored in clear");
    }
    assert!(
        !contains(&bytes, &app.superadmin),
        "service-account tokens are stored hashed"
    );
}

pub async fn a_ciphertext_moved_to_another_row_fails_to_decrypt(backend: Backend) {
    let mut app = spawn_app_on(backend, None).await;
    let token_a = unique("token-of-a");
    let token_b = unique("token-of-b");
    app.import_ok("app-a", "github", &json!({"access_token": token_a}))
        .await;
    app.import_ok("app-b", "github", &json!({"access_token": token_b}))
        .await;
    app.stop();

    let moved = app
        .execute_sql(
            "UPDATE connections SET access_token = \
             (SELECT access_token FROM connections WHERE app_id = 'app-a') WHERE app_id = 'app-b'",
        )
        .await;
    assert_eq!(moved, 1);

    app.restart();
    let response = app.get_token("app-b", "github", "").await;
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    assert!(text.contains("internal_error"), "{text}");
    assert!(
        !text.contains(&token_a),
        "app-a's token was served to app-b"
    );
    let body = json_of(app.get_token("app-a", "github", "").await).await;
    assert_eq!(body["access_token"], token_a.as_str());
}

pub async fn tokens_are_stored_as_ciphertexts_bound_to_their_row(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = spawn_app_on(backend, Some(&provider)).await;
    let imported = app.import_expired("acme").await;
    let refreshed = json_of(app.get_token("acme", "acme", "").await).await;
    let refreshed = refreshed["access_token"].as_str().unwrap().to_string();
    let mut stored = app.raw_column("access_token").await;
    stored.extend(app.raw_column("refresh_token").await);
    assert_eq!(stored.len(), 2);
    for blob in &stored {
        assert_eq!(blob[0], 1, "format version byte");
        assert!(blob.len() > 1 + 8 + 12 + 16);
        for secret in provider.secrets().iter().chain([&imported, &refreshed]) {
            assert!(!contains(blob, secret));
        }
    }
}

pub async fn a_restarted_server_keeps_serving_the_same_connection(backend: Backend) {
    let provider = FakeProvider::start().await;
    let mut app = spawn_app_on(backend, Some(&provider)).await;
    app.import_expired("acme").await;
    let before = json_of(app.get_token("acme", "acme", "").await).await;
    app.restart();
    let after = json_of(app.get_token("acme", "acme", "").await).await;
    assert_eq!(before["access_token"], after["access_token"]);
    assert_eq!(before["expires_at"], after["expires_at"]);
    assert_eq!(provider.calls(), 1, "no refresh after the restart");
}

pub async fn a_wrong_or_missing_encryption_key_fails_at_startup_with_a_clear_message(
    backend: Backend,
) {
    let mut app = spawn_app_on(backend, None).await;
    app.import_ok("acme", "github", &json!({"access_token": unique("t")}))
        .await;
    app.stop();
    let key_path = app.dir.join("encryption.key");
    let original = std::fs::read_to_string(&key_path).unwrap();

    std::fs::remove_file(&key_path).unwrap();
    let (code, _, stderr) = cli(&app.config_path, &["service-account", "list"], None, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("encryption key file") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(
        !key_path.exists(),
        "no new key is created for an existing database"
    );

    // A different key.
    let other = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    std::fs::write(&key_path, format!("{other}\n")).unwrap();
    let (code, _, stderr) = cli(&app.config_path, &["service-account", "list"], None, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("does not match the database"), "{stderr}");

    std::fs::write(&key_path, original).unwrap();
    app.restart();
    assert_eq!(app.get_token("acme", "github", "").await.status(), 200);
}

#[tokio::test]
async fn the_default_data_directory_is_created_with_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("tokenbox-default"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = crate::helpers::output_within(
        std::process::Command::new(crate::helpers::BIN)
            .args(["service-account", "create", "ops", "--role", "admin"])
            .current_dir(&dir)
            .env_remove("TOKENBOX_CONFIG")
            .env_remove("TOKENBOX_DATABASE_URL")
            .env_remove("TOKENBOX_ENCRYPTION_KEY_FILE"),
        None,
        crate::helpers::COMMAND_DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = dir.join("tokenbox-data");
    let key = std::fs::metadata(data.join("encryption.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert!(data.join("tokenbox.db").exists());
    let mut db =
        SqliteConnectOptions::from_str(&format!("sqlite://{}", data.join("tokenbox.db").display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    db.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

pub async fn migrate_applies_the_schema_and_serve_refuses_an_unknown_one(backend: Backend) {
    let mut app = spawn_app_on(backend, None).await;
    let (code, _, stderr) = cli(&app.config_path, &["migrate"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("up to date"), "{stderr}");
    app.stop();
    // A newer tokenbox applied a migration this version does not know.
    app.execute_sql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, '', 0)",
    )
    .await;
    let (code, _, stderr) = cli(&app.config_path, &["serve"], None, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("migration 999") && stderr.contains("newer"),
        "{stderr}"
    );
    app.execute_sql("DELETE FROM _sqlx_migrations WHERE version = 999")
        .await;
    app.restart();
}

pub async fn keys_rotate_under_load_then_the_old_key_can_be_removed(backend: Backend) {
    use sha2::Digest;
    let mut app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        // Every read goes to the database and decrypts: the rotation is really under load.
        extra_config: "cache_ttl_seconds = 0\n".into(),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let mut tokens = Vec::new();
    for i in 0..30 {
        let token = unique("rotating-at");
        app.import_ok(
            &format!("app-{i}"),
            "github",
            &json!({"access_token": token}),
        )
        .await;
        tokens.push(token);
    }
    let key_file = app.dir.join("encryption.key");
    let old_key = key_lines(&key_file);
    assert_eq!(old_key.len(), 1);
    let (code, _, stderr) = cli(&app.config_path, &["keys", "add"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    let keys = key_lines(&key_file);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], old_key[0], "keys add keeps the old key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the rewritten key file stays private");
    }
    app.restart();

    // 50 clients read tokens while the rotation runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..50 {
        let request_for = |i: usize| {
            app.get(&format!("/app-{i}/github/binb-token"))
                .as_superadmin()
        };
        let requests: Vec<_> = (0..30).map(request_for).collect();
        let stop = stop.clone();
        readers.spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut i = r;
            // Until the rotation has returned, then once more (every reader reads at least
            // once, and a reader whose reads keep failing still ends).
            loop {
                let last = stop.load(std::sync::atomic::Ordering::SeqCst);
                let request = requests[i % 30].try_clone().unwrap();
                match request.try_send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
                i += 1;
                if last {
                    break;
                }
            }
            (ok, failed)
        });
    }
    let config = app.config_path.clone();
    let rotate = tokio::task::spawn_blocking(move || {
        cli(&config, &["keys", "rotate", "--batch", "7"], None, &[])
    });
    let (code, _, stderr) = rotate.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("re-encrypted 30 connections"), "{stderr}");
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = readers.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(
        failed, 0,
        "no request failed during the rotation ({ok} succeeded)"
    );
    assert!(ok >= 50);

    // Every ciphertext now names the newest key.
    let newest = {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(&keys[1])
            .unwrap();
        let digest = sha2::Sha256::new()
            .chain_update(b"tokenbox key id\0")
            .chain_update(&key)
            .finalize();
        digest[..8].to_vec()
    };
    let stored = app.raw_column("access_token").await;
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|blob| blob[1..9] == newest[..]));

    // The old key goes; everything still decrypts (tokens and the key check at startup).
    std::fs::write(&key_file, format!("{}\n", keys[1])).unwrap();
    app.restart();
    for (i, token) in tokens.iter().enumerate() {
        let body = json_of(app.get_token(&format!("app-{i}"), "github", "").await).await;
        assert_eq!(body["access_token"], token.as_str());
    }
}

fn key_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}
