//! The application under test: the real `tokenbox` binary serving on a loopback port, with its
//! configuration, its two service accounts (superadmin and admin), its process and its logs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{cli_ok, unique, FakeProvider, PgDatabase, BIN, CLIENT_ID};

/// Which database the server under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub address: String,
    pub pg: Option<Arc<PgDatabase>>,
    /// Whether this app removes the directory when dropped (replicas share their first's).
    owns_dir: bool,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub superadmin: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub provider: Option<FakeProvider>,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// Secrets that must never appear in the logs (besides the provider's).
    secrets: Mutex<Vec<String>>,
    log_filter: String,
    /// The signup cookies this "browser" holds (name, value), as set by Connect.
    pub(super) browser_cookies: Mutex<Vec<(String, String)>>,
}

pub struct AppOptions {
    pub backend: Backend,
    /// Whether the background refresher runs (off by default so provider call counts in
    /// tests depend on requests only).
    pub refresher: bool,
    /// The address to listen on (default: a free loopback port).
    pub listen: String,
    /// Requests per second per service account (0: no limit, the default in tests).
    pub rate_limit: u32,
    pub provider: Option<FakeProvider>,
    pub extra_config: String,
    pub log_filter: String,
    /// `allow_insecure_loopback` (on by default: the fake provider is plain http on loopback).
    pub allow_insecure_loopback: bool,
    /// The PostgreSQL server the test database is created on (its admin URL); default: the
    /// one of `TOKENBOX_TEST_DATABASE_URL`, else the local one.
    pub pg_server: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            refresher: false,
            listen: "127.0.0.1:0".into(),
            rate_limit: 0,
            provider: None,
            extra_config: String::new(),
            log_filter: "debug,hyper=info,h2=info,tower=info".into(),
            allow_insecure_loopback: true,
            pg_server: None,
        }
    }
}

pub async fn spawn_app(provider: Option<&FakeProvider>) -> TestApp {
    spawn_app_on(Backend::Sqlite, provider).await
}

pub async fn spawn_app_on(backend: Backend, provider: Option<&FakeProvider>) -> TestApp {
    spawn_app_with(AppOptions {
        backend,
        provider: provider.cloned(),
        ..AppOptions::default()
    })
    .await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let dir = std::env::temp_dir().join(unique("tokenbox-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let pg = match options.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Arc::new(match options.pg_server.clone() {
            Some(admin_url) => PgDatabase::create_on(admin_url).await,
            None => PgDatabase::create().await,
        })),
    };
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.join("tokenbox.db").display()),
    };
    let mut config = format!(
        "listen = \"{listen}\"\nallowed_return_urls = [\"https://app.example.com/connected\"]\ndatabase_url = \"{database_url}\"\nencryption_key_file = \"{}\"\nrefresher_enabled = {}\nallow_insecure_loopback = {}\nrate_limit_per_second = {}\n{}\n",
        dir.join("encryption.key").display(),
        options.refresher,
        options.allow_insecure_loopback,
        options.rate_limit,
        options.extra_config,
        listen = options.listen,
    );
    if let Some(provider) = &options.provider {
        config.push_str(&format!(
            "\n[connector_types.acme]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\nrevocation_url = \"{url}/revoke\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\nscopes = [\"read\", \"write\"]\nclient_auth = \"basic\"\nmetadata_fields = [\"instance_url\"]\ncallback_params = [\"realmId\"]\nauthorization_params = {{ prompt = \"consent\" }}\n",
            url = provider.url,
            secret = provider.state.client_secret,
        ));
    }
    // Token reads are coalesced for 10 s by default; tests that read the audit trail back
    // would wait that long for the row, so they get a one-second window unless they set one.
    if !options.extra_config.contains("audit_coalesce_seconds") {
        config.insert_str(0, "audit_coalesce_seconds = 1\n");
    }
    let config_path = dir.join("tokenbox.toml");
    std::fs::write(&config_path, config).unwrap();

    let superadmin = cli_ok(
        &config_path,
        &[
            "service-account",
            "create",
            "extraction",
            "--role",
            "superadmin",
        ],
        None,
    );
    let admin = cli_ok(
        &config_path,
        &["service-account", "create", "laputa", "--role", "admin"],
        None,
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut app = TestApp {
        address: String::new(),
        pg,
        owns_dir: true,
        secrets: Mutex::new(vec![
            superadmin.trim().to_string(),
            admin.trim().to_string(),
        ]),
        superadmin: superadmin.trim().to_string(),
        admin: admin.trim().to_string(),
        dir,
        config_path,
        client,
        provider: options.provider,
        child: None,
        logs: Arc::new(Mutex::new(String::new())),
        log_filter: options.log_filter,
        browser_cookies: Mutex::new(Vec::new()),
    };
    app.start();
    app
}

impl TestApp {
    fn start(&mut self) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("TOKENBOX_LOG", &self.log_filter)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenbox serve");
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                if let Some(rest) = line.split("tokenbox listening address=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tokenbox did not start: {}", self.logs()));
        self.address = format!("http://{address}");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            // SIGTERM first: the server shuts down gracefully (killed after 10 s).
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = super::exit_within(child, Duration::from_secs(10));
        }
    }

    /// Sends SIGTERM and waits (at most `deadline`, a guard against a hang) for the process to
    /// exit; returns its exit code. Panics when it is still running then.
    #[allow(dead_code)] // the shutdown tests send SIGTERM and wait apart; kept for others
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        self.sigterm();
        self.wait_exit(deadline)
    }

    /// Sends SIGTERM, and returns at once.
    pub fn sigterm(&self) {
        let child = self.child.as_ref().expect("the server is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }

    /// Waits (at most `deadline`, a guard against a hang) for the process to exit; returns its
    /// exit code. Panics when it is still running then.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.take().expect("the server is running");
        match super::exit_within(child, deadline) {
            Some(status) => status.code(),
            None => panic!("the server did not exit after SIGTERM: {}", self.logs()),
        }
    }

    /// Starts the server again (after `terminate` or `kill`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.start();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines containing `needle` so far.
    pub fn log_lines_containing(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Passes of the background refresher finished so far (from its debug log).
    pub fn refresher_passes(&self) -> usize {
        self.log_lines_containing("background refresh pass done")
    }

    /// Registers a secret that must never appear in the logs.
    pub fn remember_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_string());
    }

    pub fn all_secrets(&self) -> Vec<String> {
        let mut all = self.secrets.lock().unwrap().clone();
        if let Some(p) = &self.provider {
            all.extend(p.secrets());
        }
        all
    }

    /// Panics when any known secret appears in the captured log output.
    pub fn assert_logs_clean(&self) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "no log output was captured");
        for secret in self.all_secrets() {
            assert!(
                !logs.contains(&secret),
                "a secret ({}...) appeared in the server log",
                &secret[..secret.len().min(8)]
            );
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("tokenbox.db")
    }

    /// A second server process on the same database, key and configuration.
    pub fn replica(&self) -> TestApp {
        let mut replica = TestApp {
            address: String::new(),
            pg: self.pg.clone(),
            owns_dir: false,
            dir: self.dir.clone(),
            config_path: self.config_path.clone(),
            superadmin: self.superadmin.clone(),
            admin: self.admin.clone(),
            client: self.client.clone(),
            provider: self.provider.clone(),
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            secrets: Mutex::new(self.secrets.lock().unwrap().clone()),
            log_filter: self.log_filter.clone(),
            browser_cookies: Mutex::new(self.browser_cookies.lock().unwrap().clone()),
        };
        replica.start();
        replica
    }

    /// A server on another directory and configuration (a restored copy, say), trusting this
    /// app's accounts and checking its logs for this app's secrets. The directory is removed
    /// with it.
    pub fn on_config(&self, dir: PathBuf, config_path: PathBuf) -> TestApp {
        let mut other = TestApp {
            address: String::new(),
            pg: None,
            owns_dir: true,
            dir,
            config_path,
            superadmin: self.superadmin.clone(),
            admin: self.admin.clone(),
            client: self.client.clone(),
            provider: self.provider.clone(),
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            secrets: Mutex::new(self.secrets.lock().unwrap().clone()),
            log_filter: self.log_filter.clone(),
            browser_cookies: Mutex::new(Vec::new()),
        };
        other.start();
        other
    }

    /// Sends SIGKILL: no graceful shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            self.assert_logs_clean();
            if self.owns_dir {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
