//! The real OAuth server of the end-to-end tests (`tests/e2e/oidc-server.mjs`: the npm package
//! `oidc-provider`, refresh tokens rotated on every use, a reused one revoking the whole grant)
//! and the headless browser that drives its login and consent pages
//! (`tests/e2e/signup-browser.mjs`). `scripts/e2e-setup.sh` installs both.
//!
//! The server registers two clients: one that authenticates with HTTP Basic only
//! (`client_secret_basic`) and one with its credentials in the form body only
//! (`client_secret_post`). Its loopback-only `/__test/*` shortcuts complete the login and consent
//! without a browser, mint a grant for a client, and count what the server saw.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::{unique, TestApp};

pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// One client registered at the server.
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub id: String,
    pub secret: String,
    /// `client_secret_basic` or `client_secret_post`.
    pub method: &'static str,
}

/// The provider process, stopped when dropped.
pub struct OidcServer {
    child: Child,
    /// The JSON line it printed: `issuer`, `authorization_url`, `token_url`, `userinfo_url`,
    /// `revocation_url`, `clients`.
    pub discovery: Value,
    /// Authenticates with HTTP Basic only.
    pub basic: OidcClient,
    /// Authenticates with `client_id` and `client_secret` in the form body only.
    pub post: OidcClient,
    logs: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcServer {
    pub fn start(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        access_token_ttl: u64,
    ) -> OidcServer {
        let post = OidcClient {
            id: format!("{client_id}-post"),
            secret: unique("oidc-post-secret"),
            method: "client_secret_post",
        };
        let mut child = Command::new("node")
            .arg(e2e_dir().join("oidc-server.mjs"))
            .args(["--port", "0"])
            .args(["--access-token-ttl", &access_token_ttl.to_string()])
            .args(["--client-id", client_id, "--client-secret", client_secret])
            .args(["--post-client-id", &post.id])
            .args(["--post-client-secret", &post.secret])
            .args(["--redirect-uri", redirect_uri])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node must be installed (scripts/e2e-setup.sh)");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        // The first line of stdout, read with a deadline (a thread, so that a silent server
        // cannot hang the test).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("oidc-server did not start: {}", logs.lock().unwrap());
            }
        };
        let discovery: Value = match serde_json::from_str(&line) {
            Ok(value) => value,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "oidc-server prints its URLs, not {line:?}: {}",
                    logs.lock().unwrap()
                );
            }
        };
        OidcServer {
            child,
            discovery,
            basic: OidcClient {
                id: client_id.to_string(),
                secret: client_secret.to_string(),
                method: "client_secret_basic",
            },
            post,
            logs,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// A URL of the discovery line (`token_url`, `revocation_url`, ...).
    pub fn url(&self, name: &str) -> String {
        self.discovery[name]
            .as_str()
            .unwrap_or_else(|| panic!("oidc-server printed no {name}"))
            .to_string()
    }

    /// What the server wrote on stderr (grant errors, revoked grants, refused client auth).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The `[connector_types.NAME]` table of tokenbox's configuration for one client, with
    /// the revocation endpoint and `prompt=consent`.
    pub fn connector_type(&self, name: &str, client: &OidcClient, client_auth: &str) -> String {
        format!(
            "[connector_types.{name}]\n\
             display_name = \"Real OIDC ({method})\"\n\
             authorization_url = \"{auth}\"\n\
             token_url = \"{token}\"\n\
             revocation_url = \"{revocation}\"\n\
             client_id = \"{id}\"\n\
             client_secret = \"{secret}\"\n\
             scopes = [\"openid\", \"offline_access\"]\n\
             client_auth = \"{client_auth}\"\n\
             authorization_params = {{ prompt = \"consent\" }}\n",
            method = client.method,
            auth = self.url("authorization_url"),
            token = self.url("token_url"),
            revocation = self.url("revocation_url"),
            id = client.id,
            secret = client.secret,
        )
    }

    async fn shortcut(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url("issuer")))
            .json(body)
            .send()
            .await
            .expect("oidc-server answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Completes an authorization request (the URL tokenbox redirected the browser to) as a
    /// consenting user would; returns the redirect back to tokenbox's callback.
    pub async fn approve(&self, authorization_url: &str) -> String {
        let (status, body) = self
            .shortcut(
                "/__test/approve",
                &json!({ "authorization_url": authorization_url }),
            )
            .await;
        assert_eq!(status, 200, "approve failed: {body}\n{}", self.logs());
        body["redirect"].as_str().unwrap().to_string()
    }

    /// `approve` as the user `login` (the ID token's and userinfo's `sub`).
    pub async fn approve_as(&self, authorization_url: &str, login: &str) -> String {
        let (status, body) = self
            .shortcut(
                "/__test/approve",
                &json!({ "authorization_url": authorization_url, "login": login }),
            )
            .await;
        assert_eq!(status, 200, "approve failed: {body}\n{}", self.logs());
        body["redirect"].as_str().unwrap().to_string()
    }

    /// A fresh grant for `client` (code flow with PKCE, `offline_access`, then the code
    /// exchange with the client's own authentication): the token endpoint's JSON answer.
    pub async fn grant(&self, client: &OidcClient) -> Value {
        let (status, body) = self
            .shortcut("/__test/grant", &json!({ "client_id": client.id }))
            .await;
        assert_eq!(status, 200, "grant failed: {body}\n{}", self.logs());
        assert!(body["refresh_token"].is_string(), "{body}");
        body
    }

    /// What the server saw so far: `{"token": {"<grant_type>": n}, "revocations": n,
    /// "grants_revoked": n, "auth_method_refused": n}`.
    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__test/stats", self.url("issuer")))
            .send()
            .await
            .expect("oidc-server answers")
            .json()
            .await
            .unwrap()
    }

    /// How many refresh-token grants the server answered (or refused) so far.
    pub async fn refreshes(&self) -> u64 {
        self.stats().await["token"]["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    }

    /// A refresh-token grant sent by the test itself, with the client's own authentication:
    /// the status and JSON answer.
    pub async fn refresh_directly(&self, client: &OidcClient, refresh_token: &str) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let mut request = self.http.post(self.url("token_url"));
        if client.method == "client_secret_basic" {
            request = request.basic_auth(&client.id, Some(&client.secret));
        } else {
            form.push(("client_id", &client.id));
            form.push(("client_secret", &client.secret));
        }
        let response = request
            .form(&form)
            .send()
            .await
            .expect("oidc-server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The userinfo endpoint's status for an access token (200 while the token and its grant
    /// are valid, 401 after).
    pub async fn userinfo(&self, access_token: &str) -> u16 {
        self.http
            .get(self.url("userinfo_url"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("oidc-server answers")
            .status()
            .as_u16()
    }
}

/// Runs the browser through a connect link; returns what it printed about the result page.
pub fn browse(link: &str, screenshots: &std::path::Path, deny: bool) -> Value {
    let mut command = Command::new("node");
    command
        .arg(e2e_dir().join("signup-browser.mjs"))
        .arg("--url")
        .arg(link)
        .arg("--screenshots")
        .arg(screenshots);
    if deny {
        command.arg("--deny");
    }
    let out = super::output_within(&mut command, None, super::COMMAND_DEADLINE);
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line")
}

pub async fn userinfo(app: &TestApp, url: &str, token: &str) -> u16 {
    app.client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
