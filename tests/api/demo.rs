//! `tokenbox demo`: the one-minute tour, followed as a newcomer would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{json_of, location, query_param, spawn_app, unique, BIN};

fn result_status(html: &str) -> Option<String> {
    let start = html.find("data-status=\"")? + "data-status=\"".len();
    Some(html[start..].split('"').next()?.to_string())
}

/// Clicks Connect on the link, then Approve or Deny at the sandbox; returns the result page.
async fn signup(client: &reqwest::Client, link: &str, decision: &str) -> (u16, String) {
    let page = client.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let to_provider = client.post(link).send().await.unwrap();
    assert_eq!(to_provider.status(), 303);
    let authorize = location(&to_provider);
    assert!(authorize.contains("/sandbox/authorize?"), "{authorize}");
    let provider_page = client
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(provider_page.contains("id=\"approve\"") && provider_page.contains("id=\"deny\""));
    let form = [
        ("decision", decision.to_string()),
        (
            "redirect_uri",
            query_param(&authorize, "redirect_uri").unwrap(),
        ),
        ("state", query_param(&authorize, "state").unwrap()),
        (
            "code_challenge",
            query_param(&authorize, "code_challenge").unwrap_or_default(),
        ),
    ];
    let back = client.post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(back.status(), 303);
    // Back at the callback with the cookie Connect set, as a browser does.
    let cookies = crate::helpers::set_cookies(&to_provider)
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let done = client
        .get(location(&back))
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    let status = done.status().as_u16();
    (status, done.text().await.unwrap())
}

/// A running `tokenbox demo`: killed (and its data directory removed) when dropped, even when
/// the test fails; its stdout read line by line with a deadline.
struct Demo {
    child: std::process::Child,
    dir: std::path::PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Demo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique("tokenbox-demo"));
        let mut command = Command::new(BIN);
        command
            .arg("demo")
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("TOKENBOX_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, dir, lines }
    }

    /// The lines printed up to and including the first one `last` accepts; panics with them
    /// when the demo ends or the deadline passes first.
    fn lines_until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = last(&line);
                    printed.push(line);
                    if done {
                        return printed;
                    }
                }
                Err(e) => panic!("the demo did not print what was expected ({e}): {printed:#?}"),
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_connects_the_sandbox_and_its_printed_commands_fetch_a_working_token() {
    let demo = Demo::start(&["--listen", "127.0.0.1:0"], &[]);
    let printed = demo.lines_until(|line| line.contains("/sandbox/api/me"));
    let find = |needle: &str| {
        printed
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle} in {printed:#?}"))
            .trim()
            .to_string()
    };
    let link = find("/connect/");
    let curl = find("curl -s -H 'Authorization");
    let base = link.split("/connect/").next().unwrap().to_string();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();

    // Deny first: nothing connected, a clear page; the link can be used again.
    let (status, html) = signup(&client, &link, "deny").await;
    assert_eq!(status, 200);
    assert_eq!(result_status(&html).as_deref(), Some("denied"), "{html}");
    assert!(html.contains("not connected"));
    let (_, out) = run(&format!("{curl} -o /dev/null -w '%{{http_code}}'"));
    assert_eq!(out.trim(), "404", "the app is not connected");

    // Approve.
    let (status, html) = signup(&client, &link, "approve").await;
    assert_eq!(status, 200);
    assert_eq!(result_status(&html).as_deref(), Some("connected"), "{html}");

    // The printed curl command gets a token that the sandbox's API accepts.
    let (code, out) = run(&curl);
    assert_eq!(code, 0);
    let body: Value = serde_json::from_str(&out).expect("the token JSON");
    let token = body["access_token"].as_str().unwrap();
    assert!(token.starts_with("sbx-at-"));
    let me = client
        .get(format!("{base}/sandbox/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(json_of(me).await["user"], "sandbox-user");

    // And so does the printed `tokenbox token` command.
    let (code, out) = run(&find("token demo sandbox"));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), token);
    drop(demo);
}

fn run(command: &str) -> (i32, String) {
    let out = crate::helpers::output_within(
        Command::new("sh").arg("-c").arg(command),
        None,
        crate::helpers::COMMAND_DEADLINE,
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_sandbox_answers_404_under_sandbox() {
    let app = spawn_app(None).await;
    for path in ["/sandbox/authorize", "/sandbox/api/me"] {
        let response = app.get(path).send().await;
        assert_eq!(response.status(), 404, "{path}");
    }
    let response = app.post("/sandbox/token").send().await;
    assert_eq!(response.status(), 404);
}

/// Issue 11 (from reading): the sandbox did not check `redirect_uri` (an open redirect that
/// hands out codes), and sat outside the body limit and the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_answers_only_this_servers_callback_inside_the_body_limit_and_access_log() {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        extra_config: "sandbox = true\n".into(),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let authorize = format!("{}/sandbox/authorize", app.address);
    let callback = format!("{}/oauth/callback", app.address);
    for redirect in [
        "https://evil.example/cb",
        "http://127.0.0.1:1/oauth/callback",
        &format!("{callback}/../x"),
    ] {
        let response = app
            .client
            .get(&authorize)
            .query(&[
                ("client_id", "tokenbox-sandbox"),
                ("redirect_uri", redirect),
                ("state", "s"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{redirect}");
        assert!(response
            .text()
            .await
            .unwrap()
            .contains("data-error=\"invalid_redirect_uri\""));
        for decision in ["approve", "deny"] {
            let response = app
                .client
                .post(&authorize)
                .form(&[
                    ("decision", decision),
                    ("redirect_uri", redirect),
                    ("state", "s"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{decision} {redirect}");
            assert!(response.headers().get("location").is_none());
        }
    }
    // This server's own callback is accepted.
    let response = app
        .client
        .post(&authorize)
        .form(&[
            ("decision", "approve"),
            ("redirect_uri", &callback),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let code = query_param(&location(&response), "code").unwrap();
    app.remember_secret(&code);

    // The access log names the sandbox's routes (the reader thread may lag: poll).
    crate::helpers::wait_until("the access log line of /sandbox/authorize", || {
        app.logs()
            .lines()
            .any(|l| l.contains("tokenbox::access") && l.contains("/sandbox/authorize"))
    })
    .await;
    // And the body limit (64 KiB) applies: 413 before the form is parsed.
    let response = app
        .post("/sandbox/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={}",
            "x".repeat(100 * 1024)
        ))
        .send()
        .await;
    assert_eq!(response.status(), 413);
}

/// Without `--listen`, the demo binds `TOKENBOX_LISTEN` (the flag's default no longer wins).
#[test]
fn the_demo_listens_where_tokenbox_listen_says_when_no_flag_is_given() {
    let demo = Demo::start(&[], &[("TOKENBOX_LISTEN", "127.0.0.1:0")]);
    let link = demo
        .lines_until(|line| line.contains("/connect/"))
        .pop()
        .expect("the demo printed its connect link");
    drop(demo);
    let port = link
        .trim()
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{link}"));
    assert_ne!(port, "8080", "{link}");
}
