//! Test harness: the real `tokenbox` binary on a loopback port with a fresh SQLite file, and an
//! in-test OAuth token endpoint that rotates refresh tokens, counts calls and fails on demand.
//!
//! - `server`: the application under test (`TestApp`, `spawn_app*`, `AppOptions`), its process
//!   (start, stop, terminate, restart, kill, replicas) and the log checks;
//! - `requests`: the authenticated request builder (`app.get(path).as_superadmin()`) and the
//!   token-route helpers (`get_token`, `import`, `import_ok`, `import_expired`);
//! - `signup`: the signup as a browser runs it (links, Connect, the callback, cookies);
//! - `provider`: the fake OAuth provider and its failure modes;
//! - `postgres`: a database per test, the `with_db!` macro and the SQL helpers;
//! - `cli`: running the `tokenbox` binary as a command;
//! - `oidc`: the real OAuth server (oidc-provider) and the headless browser of `tests/e2e`.
//! - `cluster`: a throwaway PostgreSQL cluster a test may stop and start;
//! - `process`: child processes with a deadline.
//!
//! Every public name is re-exported here: tests import from `crate::helpers`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod cli;
mod cluster;
mod oidc;
mod postgres;
mod process;
mod provider;
mod requests;
mod server;
mod signup;

pub use cli::{cli, cli_ok, create_superadmin};
pub use cluster::PgCluster;
pub use oidc::{browse, userinfo, OidcClient, OidcServer};
pub use postgres::PgDatabase;
pub use process::{exit_within, output_within, COMMAND_DEADLINE};
pub use provider::{FakeProvider, Mode, CLIENT_ID, HUGE_BODY};
pub use server::{spawn_app, spawn_app_on, spawn_app_with, AppOptions, Backend, TestApp};
pub use signup::set_cookies;

// Public names of the harness that no test names today, kept reachable from `crate::helpers`.
#[allow(unused_imports)]
pub use {
    provider::{BodyCounters, ProviderState},
    requests::ApiRequest,
};

/// The `tokenbox` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tokenbox");

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value unique to this test process, for tokens and directory names.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `check` until it returns `Some`, or `None` at the deadline, which only guards
/// against a hang (no test depends on how long anything takes).
async fn poll<T, F, Fut>(mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh, empty directory for a test's screenshots (`target/e2e/<name>`): a check that a
/// screenshot exists then proves this run made it.
pub fn fresh_screenshot_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `done` holds (a condition on local state).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let held = poll(|| {
        let value = done().then_some(());
        async move { value }
    })
    .await;
    assert!(held.is_some(), "timed out waiting for {what}");
}

/// Waits until the async `check` (a request, a query) returns `Some`, and returns its value.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(check)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Whether the async `check` comes to hold before the deadline (for assertions that print
/// their own context when it does not).
pub async fn holds_eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(|| {
        let held = check();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}

pub async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

pub fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
