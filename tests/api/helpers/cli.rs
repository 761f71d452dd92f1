//! The `tokenbox` binary run as a command, as an operator would.

use std::path::Path;
use std::process::Command;

use super::process::{output_within, COMMAND_DEADLINE};
use super::BIN;

/// Runs the CLI and returns its stdout; panics with stderr when it fails.
pub fn cli_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (code, stdout, stderr) = cli(config, args, stdin, &[]);
    assert_eq!(code, 0, "tokenbox {args:?} failed: {stderr}");
    stdout
}

/// Runs the CLI: (exit code, stdout, stderr).
pub fn cli(
    config: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TOKENBOX_LOG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = output_within(&mut command, stdin, COMMAND_DEADLINE);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a superadmin service account `name` through the CLI (with `extra` options such as
/// `--apps acme`), remembers its token as a secret of the test, and returns it.
pub fn create_superadmin(app: &super::TestApp, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["service-account", "create", name, "--role", "superadmin"];
    args.extend_from_slice(extra);
    let token = cli_ok(&app.config_path, &args, None).trim().to_string();
    app.remember_secret(&token);
    token
}
