//! Operating tokenbox: `config check` before a deploy, and backups that restore.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::helpers::{cli, json_of, spawn_app_on, unique, wait_until, Backend, TestApp};

/// A scratch directory for a configuration that no server uses.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("tokenbox-ops"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three different mistakes (an unknown key, a value of the wrong type, a connector type whose
/// client secret variable is not set) are all reported at once, and the exit code is 1; the
/// same file without them passes with a one-line summary.
#[test]
fn config_check_lists_every_problem_at_once() {
    let dir = scratch_dir();
    let good = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{db}\"\nencryption_key_file = \"{key}\"\n\
         [connector_types.acme]\nauthorization_url = \"https://acme.example.com/authorize\"\n\
         token_url = \"https://acme.example.com/token\"\nclient_id = \"acme-client\"\n\
         client_secret_env = \"ACME_OPS_SECRET\"\n",
        db = dir.join("tokenbox.db").display(),
        key = dir.join("encryption.key").display(),
    );
    let good_path = dir.join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let (code, stdout, stderr) = cli(
        &good_path,
        &["config", "check"],
        None,
        &[("ACME_OPS_SECRET", "s3cret-value")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("1 configured connector type"), "{stdout}");
    assert!(!stdout.contains("s3cret-value"), "{stdout}");

    let bad = format!("lisen = \"127.0.0.1:1\"\ncache_ttl_seconds = \"ten\"\n{good}");
    let bad_path = dir.join("bad.toml");
    std::fs::write(&bad_path, bad).unwrap();
    let (code, stdout, stderr) = cli(&bad_path, &["config", "check"], None, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 3, "{stdout}");
    assert!(stdout.contains("unknown key `lisen`"), "{stdout}");
    assert!(stdout.contains("cache_ttl_seconds"), "{stdout}");
    assert!(stdout.contains("ACME_OPS_SECRET"), "{stdout}");
    assert!(stdout.contains("3 problem(s)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[[trusted_issuers]]`: a good entry is counted, and each problem of a bad one is its own
/// error: a plain-http issuer, no audience, an HMAC algorithm, a rule naming no valid account.
#[test]
fn config_check_reports_each_problem_of_a_trusted_issuer() {
    let dir = scratch_dir();
    let base = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{db}\"\nencryption_key_file = \"{key}\"\n",
        db = dir.join("tokenbox.db").display(),
        key = dir.join("encryption.key").display(),
    );
    let good = format!(
        "{base}[[trusted_issuers]]\nissuer = \"https://token.actions.githubusercontent.com\"\n\
         discovery = true\naudience = \"tokenbox\"\n[[trusted_issuers.rules]]\n\
         subject = \"repo:acme/jobs:*\"\naccount = \"acme-jobs\"\n\
         claims = {{ repository = \"acme/jobs\" }}\n"
    );
    let good_path = dir.join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let (code, stdout, stderr) = cli(&good_path, &["config", "check"], None, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("1 trusted issuer(s)"), "{stdout}");

    let bad = format!(
        "{good}[[trusted_issuers]]\nissuer = \"http://issuer.example\"\n\
         jwks_url = \"https://issuer.example/jwks\"\nalgorithms = [\"HS256\"]\n\
         [[trusted_issuers.rules]]\nsubject = \"*\"\naccount = \"not a name\"\n"
    );
    let bad_path = dir.join("bad.toml");
    std::fs::write(&bad_path, bad).unwrap();
    let (code, stdout, stderr) = cli(&bad_path, &["config", "check"], None, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 4, "{stdout}");
    for expected in [
        "issuer http://issuer.example must be an https URL",
        "audience is required",
        "algorithm HS256 is not accepted",
        "account 'not a name' is not a service account name",
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("[[trusted_issuers]] http://issuer.example")
                    && e.contains(expected)),
            "{expected}: {stdout}"
        );
    }
    // The server refuses to start with it too.
    let (code, _, stderr) = cli(&bad_path, &["serve"], None, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("[[trusted_issuers]]"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A copy of `app`'s configuration in a new directory (its database and key file there).
fn config_elsewhere(
    app: &TestApp,
    key_file: Option<&str>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch_dir();
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    let text = text.replace(app.dir.to_str().unwrap(), dir.to_str().unwrap());
    let config = dir.join("tokenbox.toml");
    std::fs::write(&config, text).unwrap();
    let key = match key_file {
        Some(text) => text.to_string(),
        None => std::fs::read_to_string(app.dir.join("encryption.key")).unwrap(),
    };
    std::fs::write(dir.join("encryption.key"), key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("encryption.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    (dir, config)
}

/// A backup taken while four readers fetch tokens restores into a new directory, where a server
/// serves every connection with its token; restoring with a key file that lacks the backup's
/// key is refused, naming the key id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_and_serves_every_connection() {
    const CONNECTIONS: usize = 20;
    let app = Arc::new(spawn_app_on(Backend::Sqlite, None).await);
    let mut tokens = Vec::new();
    for n in 0..CONNECTIONS {
        let token = unique("at");
        app.remember_secret(&token);
        app.import_ok(
            &format!("app-{n}"),
            "github",
            &json!({"access_token": token}),
        )
        .await;
        tokens.push(token);
    }

    // The load: four readers, each looping over the connections until told to stop (and at
    // most 5000 reads each, a guard against a hang).
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (app, stop, reads, failures) =
            (app.clone(), stop.clone(), reads.clone(), failures.clone());
        readers.push(tokio::spawn(async move {
            for i in 0..5000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let n = (r * 7 + i) % CONNECTIONS;
                let status = app
                    .get_token(&format!("app-{n}"), "github", "")
                    .await
                    .status();
                if status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    wait_until("the readers run", || reads.load(Ordering::SeqCst) >= 8).await;

    let backup = app.dir.join("backup.db");
    let (config, file) = (
        app.config_path.clone(),
        backup.to_str().unwrap().to_string(),
    );
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || cli(&config, &["backup", &file], None, &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    let after_backup = reads.load(Ordering::SeqCst);
    // The load outlives the backup: readers still read after it returned.
    wait_until("the readers read on after the backup", || {
        reads.load(Ordering::SeqCst) > after_backup
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let total = reads.load(Ordering::SeqCst);
    eprintln!("token reads during the test: {total}, before the backup returned: {after_backup}");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "every read under load is served"
    );

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(app.dir.join("backup.db.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["rows"]["connections"], CONNECTIONS as i64,
        "{manifest}"
    );
    let key_ids = manifest["key_ids"].as_array().unwrap().clone();
    assert_eq!(key_ids.len(), 1, "{manifest}");
    let key_id = key_ids[0].as_str().unwrap().to_string();
    let (code, ids, _) = cli(&app.config_path, &["keys", "ids"], None, &[]);
    assert_eq!((code, ids.trim()), (0, key_id.as_str()), "keys ids");

    let (code, stdout, stderr) = cli(
        &app.config_path,
        &["backup", "--verify", backup.to_str().unwrap()],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{CONNECTIONS} connections")),
        "{stdout}"
    );

    // Restored with a key file that lacks the backup's key: refused, naming the key id.
    let other_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n";
    let (wrong_dir, wrong_config) = config_elsewhere(&app, Some(other_key));
    let (code, _, stderr) = cli(
        &wrong_config,
        &["restore", backup.to_str().unwrap()],
        None,
        &[],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&key_id),
        "the missing key id is named: {stderr}"
    );
    assert!(
        !wrong_dir.join("tokenbox.db").exists(),
        "nothing was restored"
    );
    let _ = std::fs::remove_dir_all(&wrong_dir);

    // Restored with the key kept apart: a server on the new directory serves every connection.
    let (dir, config) = config_elsewhere(&app, None);
    let (code, stdout, stderr) = cli(&config, &["restore", backup.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let restored = app.on_config(dir, config.clone());
    for (n, token) in tokens.iter().enumerate() {
        let response = restored.get_token(&format!("app-{n}"), "github", "").await;
        assert_eq!(response.status(), 200, "app-{n}");
        assert_eq!(
            json_of(response).await["access_token"],
            token.as_str(),
            "app-{n}"
        );
    }
    // The database now holds data: a second restore is refused without --force.
    let (code, _, stderr) = cli(&config, &["restore", backup.to_str().unwrap()], None, &[]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );

    // --verify decrypts every value: one damaged ciphertext (in a copy without its manifest,
    // whose checksum would refuse it first) fails the verification.
    let damaged = app.dir.join("damaged.db");
    std::fs::copy(&backup, &damaged).unwrap();
    let url = format!("sqlite://{}", damaged.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE connections SET access_token = substr(access_token, 1, 30) || \
         CASE WHEN substr(access_token, 31, 1) = x'00' THEN x'01' ELSE x'00' END || \
         substr(access_token, 32) WHERE app_id = 'app-7'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (code, stdout, stderr) = cli(
        &app.config_path,
        &["backup", "--verify", damaged.to_str().unwrap()],
        None,
        &[],
    );
    assert_ne!(
        code, 0,
        "a damaged value fails the verification: {stdout}{stderr}"
    );
    assert!(stderr.contains("does not decrypt"), "{stderr}");
}

/// The completion scripts and the man page come from the command line's definition: they name
/// the operations commands.
#[test]
fn completions_and_the_man_page_are_generated() {
    let dir = scratch_dir();
    let config = dir.join("none.toml");
    std::fs::write(&config, "").unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = cli(&config, &["completions", shell], None, &[]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for word in ["backup", "restore", "config", "verify", "force"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let (code, page, stderr) = cli(&config, &["man"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH tokenbox 1"),
        "{page}"
    );
    assert!(
        page.contains("backup") && page.contains("restore"),
        "{page}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example configuration shipped in deploy/ passes `config check`.
#[test]
fn the_example_deploy_configuration_passes_the_check() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tokenbox.toml");
    let (code, stdout, stderr) = cli(
        &config,
        &["config", "check"],
        None,
        &[("HUBSPOT_CLIENT_SECRET", "example")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = cli(&config, &["config", "check"], None, &[]);
    assert_eq!(
        code, 1,
        "the client secret's variable is required: {stdout}"
    );
    assert!(stdout.contains("HUBSPOT_CLIENT_SECRET"), "{stdout}");
}

/// PostgreSQL is dumped with pg_dump; `tokenbox backup FILE` adds the manifest of the live
/// database, naming the key ids the dump needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_writes_the_manifest_of_its_keys() {
    let app = spawn_app_on(Backend::Postgres, None).await;
    let token = unique("at");
    app.remember_secret(&token);
    app.import_ok("app-pg", "github", &json!({"access_token": token}))
        .await;
    let file = app.dir.join("tokenbox.dump");
    let (code, stdout, stderr) = cli(
        &app.config_path,
        &["backup", file.to_str().unwrap()],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("pg_dump"), "{stdout}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(app.dir.join("tokenbox.dump.manifest.json")).unwrap(),
    )
    .unwrap();
    let (code, ids, _) = cli(&app.config_path, &["keys", "ids"], None, &[]);
    assert_eq!(code, 0);
    assert_eq!(manifest["backend"], "postgres", "{manifest}");
    assert_eq!(manifest["key_ids"], json!([ids.trim()]), "{manifest}");
    assert_eq!(manifest["rows"]["connections"], 1, "{manifest}");
    assert!(!manifest.to_string().contains(&token));
}
