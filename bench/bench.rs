//! Benchmarks of tokenbox (not part of the test suite): `bench/run.sh` drives them.
//!
//! ```text
//! bench seed  --database-url URL --key-file F --count N [--expired]   # store N connections
//! bench storm --database-url URL --replicas R --count N --callers C   # refresh storm
//! bench rss   --count N                                               # resident memory
//! bench serve --database-url URL                                      # a server for wrk
//! bench floor --database-url URL   # the same route without auth, audit, access log, middleware
//! bench bare                       # a bare axum handler serving the same JSON from memory
//! ```
//! `serve`, `floor` and `bare` print `URL TOKEN` on one line, then serve until SIGTERM or
//! `--seconds`.
//! Only loopback addresses are used; every loop is bounded.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use rand::seq::SliceRandom;
use serde_json::json;
use tokenbox::api::resources::binb_token::{self, BinBTokenResponse};
use tokenbox::config::Config;
use tokenbox::domain::{now_epoch, AppId, ConnectionKey, ConnectorTypeName, Metadata, TokenSet};
use tokenbox::refresh::{SecretsKeeper, TokenRequest};
use tokenbox::secret::Secret;
use tokenbox::store::{open_store, Role, ServiceAccount};
use tokenbox::token::ServiceToken;

const CONNECTOR: &str = "bench";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn number(name: &str, default: usize) -> usize {
    arg(name)
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn binary() -> PathBuf {
    PathBuf::from(arg("--tokenbox").unwrap_or_else(|| "target/release/tokenbox".into()))
}

/// The local token endpoint: accepts each refresh token once, issues a new pair, counts.
#[derive(Default)]
struct Provider {
    calls: AtomicUsize,
    reuses: AtomicUsize,
    spent: Mutex<HashSet<String>>,
    counter: AtomicU64,
}

async fn token(
    State(p): State<Arc<Provider>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Json<serde_json::Value> {
    p.calls.fetch_add(1, Ordering::Relaxed);
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if !p.spent.lock().unwrap().insert(presented) {
        p.reuses.fetch_add(1, Ordering::Relaxed);
    }
    let n = p.counter.fetch_add(1, Ordering::Relaxed);
    Json(json!({
        "access_token": format!("bench-at-{n}"),
        "refresh_token": format!("bench-rt-{n}"),
        "token_type": "bearer",
        "expires_in": 3600,
    }))
}

/// Waits for `--seconds` (default 120), SIGTERM or Ctrl-C.
async fn serve_until_stopped() {
    let seconds = number("--seconds", 120) as u64;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// The floor: tokenbox's keeper (cache, decision, JSON body) behind one bare route, with no
/// authentication, audit, access log or middleware. Lives in the bench only.
async fn floor_handler(
    State(keeper): State<SecretsKeeper>,
    UrlPath((app, connector)): UrlPath<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (Ok(app), Ok(connector)) = (AppId::parse(&app), ConnectorTypeName::parse(&connector))
    else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let key = ConnectionKey::new(app, connector);
    let served = match keeper.retrieve_token(&key, TokenRequest::default()).await {
        Ok(served) => served,
        Err(_) => return axum::http::StatusCode::BAD_GATEWAY.into_response(),
    };
    match binb_token::response_body(&keeper, &key, &served) {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The ceiling: a bare axum handler answering the same JSON from a map in memory.
async fn bare_handler(
    State(tokens): State<Arc<HashMap<String, (String, i64)>>>,
    UrlPath((app, connector)): UrlPath<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some((access_token, expires_at)) = tokens.get(&app) else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        "Authorization".to_string(),
        format!("Bearer {access_token}"),
    );
    Json(BinBTokenResponse {
        access_token: access_token.clone(),
        token_type: "Bearer".into(),
        expires_at: Some(*expires_at),
        expires_in: Some((*expires_at - now_epoch()).max(0)),
        scope: None,
        app_id: app,
        connector_type: connector,
        metadata: Metadata::new(),
        headers,
        query: Default::default(),
        api_base_url: None,
    })
    .into_response()
}

async fn start_provider() -> (String, Arc<Provider>) {
    let provider = Arc::new(Provider::default());
    let app = Router::new()
        .route("/token", post(token))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, provider)
}

fn write_config(dir: &Path, database_url: &str, provider_url: &str) -> PathBuf {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\n\
             encryption_key_file = \"{key}\"\nrefresher_enabled = false\n\
             allow_insecure_loopback = true\nrate_limit_per_second = 0\n\
             [connector_types.{CONNECTOR}]\nauthorization_url = \"{provider_url}/authorize\"\n\
             token_url = \"{provider_url}/token\"\nclient_id = \"bench\"\nclient_secret = \"bench-secret\"\n",
            key = dir.join("encryption.key").display(),
        ),
    )
    .unwrap();
    path
}

/// Stores `count` connections (fresh or expired) and a superadmin; returns its token.
async fn seed(config_path: &Path, count: usize, expired: bool) -> String {
    let (config, _) = Config::load(Some(config_path)).unwrap();
    let store = open_store(&config).await.unwrap();
    let token = ServiceToken::generate();
    store
        .create_service_account(&ServiceAccount {
            name: format!("bench-{}", now_epoch()),
            role: Role::Superadmin,
            token_hash: token.hash(),
            created_at: now_epoch(),
            scope: None,
            expires_at: None,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let connector = ConnectorTypeName::parse(CONNECTOR).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let store = store.clone();
        let next = next.clone();
        let connector = connector.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let key = ConnectionKey::new(
                    AppId::parse(&format!("app-{i}")).unwrap(),
                    connector.clone(),
                );
                let tokens = TokenSet {
                    refresh_expires_at: None,
                    access_token: Secret::new(format!("seed-at-{i}")),
                    refresh_token: Some(Secret::new(format!("seed-rt-{i}"))),
                    token_type: None,
                    expires_at: Some(now_epoch() + if expired { -60 } else { 86_400 }),
                    scope: None,
                    metadata: Metadata::new(),
                    client: None,
                };
                store.upsert_connection(&key, &tokens, None).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    eprintln!(
        "seeded {count} connections in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    token.into_string()
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(config_path: &Path) -> Server {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config_path)
        .arg("serve")
        .env("TOKENBOX_LOG", "warn,tokenbox=info,tokenbox::access=warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("build tokenbox first: cargo build --release");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("tokenbox listening address=").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server started");
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `callers` tasks spread over the servers. With `each`, every caller asks for every
/// connection once in its own random order; otherwise they share the connections, each asked
/// for once. Returns (elapsed, requests, errors).
async fn ask_all(
    servers: &[String],
    token: &str,
    count: usize,
    callers: usize,
    each: bool,
) -> (Duration, usize, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(callers)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let client = client.clone();
        let base = servers[c % servers.len()].clone();
        let token = token.to_string();
        let errors = errors.clone();
        let requests = requests.clone();
        tasks.spawn(async move {
            let mut order: Vec<usize> = if each {
                (0..count).collect()
            } else {
                (c..count).step_by(callers).collect()
            };
            order.shuffle(&mut rand::thread_rng());
            for i in order {
                let ok = client
                    .get(format!("{base}/app-{i}/{CONNECTOR}/binb-token"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (
        started.elapsed(),
        requests.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    )
}

/// The storm: `workers` tasks take the connections one after another; for each, `at_once`
/// callers ask for it at the same moment. Returns (elapsed, requests, errors).
async fn storm_at_once(
    servers: &[String],
    token: &str,
    count: usize,
    at_once: usize,
    workers: usize,
) -> (Duration, usize, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers * at_once)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (client, token) = (client.clone(), token.to_string());
        let (errors, requests, next) = (errors.clone(), requests.clone(), next.clone());
        let servers = servers.to_vec();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let mut callers = tokio::task::JoinSet::new();
                for c in 0..at_once {
                    let request = client
                        .get(format!(
                            "{}/app-{i}/{CONNECTOR}/binb-token",
                            servers[(w + c) % servers.len()]
                        ))
                        .bearer_auth(&token);
                    callers.spawn(async move {
                        request
                            .send()
                            .await
                            .map(|r| r.status().is_success())
                            .unwrap_or(false)
                    });
                }
                while let Some(ok) = callers.join_next().await {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !ok.unwrap_or(false) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (
        started.elapsed(),
        requests.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    )
}

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokenbox-bench-{}-{}",
        std::process::id(),
        now_epoch()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn database_url(dir: &Path) -> String {
    arg("--database-url").unwrap_or_else(|| format!("sqlite://{}", dir.join("bench.db").display()))
}

#[tokio::main]
async fn main() {
    let command = std::env::args().nth(1).unwrap_or_default();
    let dir = workdir();
    let count = number("--count", 10_000);
    match command.as_str() {
        // A seeded server for an external load generator: prints URL and token, then waits.
        "serve" => {
            let (provider_url, _provider) = start_provider().await;
            let config = write_config(&dir, &database_url(&dir), &provider_url);
            let token = seed(&config, count, false).await;
            let server = start_server(&config);
            println!("{} {}", server.url, token);
            // Stop the server (dropped below) on SIGTERM too, so none is left behind.
            serve_until_stopped().await;
            drop(server);
        }
        "floor" => {
            let (provider_url, _provider) = start_provider().await;
            let config = write_config(&dir, &database_url(&dir), &provider_url);
            let token = seed(&config, count, false).await;
            let (config, _) = Config::load(Some(&config)).unwrap();
            let state = tokenbox::build_state(config, None).await.unwrap();
            let app = Router::new()
                .route("/{app}/{connector}/binb-token", get(floor_handler))
                .with_state(state.keeper.clone());
            let (listener, url) = listen().await;
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            println!("{url} {token}");
            serve_until_stopped().await;
        }
        "bare" => {
            let expires_at = now_epoch() + 86_400;
            let tokens: HashMap<String, (String, i64)> = (0..count)
                .map(|i| (format!("app-{i}"), (format!("seed-at-{i}"), expires_at)))
                .collect();
            let app = Router::new()
                .route("/{app}/{connector}/binb-token", get(bare_handler))
                .with_state(Arc::new(tokens));
            let (listener, url) = listen().await;
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            println!("{url} unused");
            serve_until_stopped().await;
        }
        "storm" => {
            let replicas = number("--replicas", 1);
            let callers = number("--callers", 100);
            let (provider_url, provider) = start_provider().await;
            let config = write_config(&dir, &database_url(&dir), &provider_url);
            let token = seed(&config, count, true).await;
            let servers: Vec<Server> = (0..replicas).map(|_| start_server(&config)).collect();
            let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
            let at_once = number("--at-once", 0);
            let (elapsed, requests, errors) = if at_once > 0 {
                storm_at_once(&urls, &token, count, at_once, callers).await
            } else {
                ask_all(&urls, &token, count, callers, true).await
            };
            let callers = if at_once > 0 {
                format!("{at_once}_at_once_per_connection({callers}_connections_at_a_time)")
            } else {
                callers.to_string()
            };
            println!(
                "storm: replicas={replicas} connections={count} callers={callers} requests={requests} \
                 time_until_all_served={:.2}s provider_calls={} refresh_token_reuses={} errors={errors}",
                elapsed.as_secs_f64(),
                provider.calls.load(Ordering::Relaxed),
                provider.reuses.load(Ordering::Relaxed),
            );
        }
        "rss" => {
            let (provider_url, _provider) = start_provider().await;
            let config = write_config(&dir, &database_url(&dir), &provider_url);
            let token = seed(&config, count, false).await;
            let server = start_server(&config);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let idle = rss_kib(server.child.id());
            let (elapsed, requests, errors) =
                ask_all(std::slice::from_ref(&server.url), &token, count, 64, false).await;
            let warm = rss_kib(server.child.id());
            println!(
                "rss: connections={count} idle_rss={:.1}MiB after_serving_every_connection_once={:.1}MiB \
                 ({requests} requests in {:.1}s, errors={errors})",
                idle as f64 / 1024.0,
                warm as f64 / 1024.0,
                elapsed.as_secs_f64()
            );
        }
        _ => {
            eprintln!("usage: bench serve|floor|bare|storm|rss [--database-url URL] [--count N] [--replicas R] [--callers C]");
            std::process::exit(2);
        }
    }
    if !flag("--keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
