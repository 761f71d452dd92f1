//! Operating tokenbox: `config check` before a deploy, and backups that restore.

use crate::helpers::{cli, unique};

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
