//! tokenbox keeps OAuth tokens for many tenants and hands a valid access token to scheduled
//! data-extraction jobs.

pub mod api;
#[cfg(test)]
mod architecture;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod domain;
pub mod jwt;
pub mod metrics;
pub mod refresh;
pub mod secret;
pub mod signup;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod tracing_otel;
pub mod webhooks;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

use api::auth::Authenticator;
use api::AppState;
use config::Config;
use connectors::{Catalog, Provider};
use refresh::SecretsKeeper;
use store::open_store;

/// The public URL: the configured one, or the server's address, when there is a server, or
/// the configured listen address.
fn public_url_of(config: &Config, bound: Option<SocketAddr>) -> String {
    match bound {
        Some(address) => config.public_base_url(address),
        None => config
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{}", config.listen)),
    }
}

/// The configured connector types and, with `sandbox`, the sandbox provider (a connector type
/// pointing at this very server) with its client secret.
fn connector_types_of(
    config: &Config,
    public_url: &str,
) -> (
    std::collections::BTreeMap<String, connectors::ConnectorTypeSpec>,
    Option<String>,
) {
    let mut connector_types = config.connector_types.clone();
    let sandbox_secret = config.sandbox.then(|| {
        let secret = token::random_token(token::SERVICE_TOKEN_PREFIX);
        connector_types.insert(
            "sandbox".to_string(),
            connectors::ConnectorTypeSpec {
                display_name: Some("Sandbox (built into tokenbox)".into()),
                authorization_url: Some(format!("{public_url}/sandbox/authorize")),
                token_url: Some(format!("{public_url}/sandbox/token")),
                client_id: Some(api::sandbox::CLIENT_ID.into()),
                client_secret: Some(secret::Secret::new(secret.clone())),
                scopes: Some(vec!["profile".into()]),
                client_auth: Some(connectors::ClientAuth::Basic),
                ..Default::default()
            },
        );
        secret
    });
    (connector_types, sandbox_secret)
}

/// What a one-shot command that needs only the store gets: the configuration is checked as
/// [`build_state`] checks it (connector types, webhooks) and the store is opened (migrations
/// applied), but no background worker (audit writer, refresher, deliverer) is started.
pub struct CommandStore {
    pub config: Config,
    pub public_url: String,
    pub store: Arc<dyn store::SecretsStore>,
}

/// Opens the store for a one-shot command (see [`CommandStore`]).
pub async fn open_command_store(config: Config) -> anyhow::Result<CommandStore> {
    let public_url = public_url_of(&config, None);
    let (connector_types, _) = connector_types_of(&config, &public_url);
    Catalog::build(&connector_types, config.allow_insecure_loopback)?;
    let store = open_store(&config).await?;
    Provider::new(config.provider_timeout, config.allow_insecure_loopback)?;
    for w in &config.webhooks {
        webhooks::Endpoint::resolve(w, config.allow_insecure_loopback)?;
    }
    Ok(CommandStore {
        config,
        public_url,
        store,
    })
}

/// Everything a command needs: the store, the catalog and the keeper built from a config.
/// `bound` is the server's address, when there is a server, for the default public URL.
pub async fn build_state(config: Config, bound: Option<SocketAddr>) -> anyhow::Result<AppState> {
    let public_url = public_url_of(&config, bound);
    let (connector_types, sandbox_secret) = connector_types_of(&config, &public_url);
    let catalog = Catalog::build(&connector_types, config.allow_insecure_loopback)?;
    let store = open_store(&config).await?;
    let provider = Provider::new(config.provider_timeout, config.allow_insecure_loopback)?
        .with_proxy_timeout(config.proxy_timeout)?;
    let workload = Arc::new(workload::WorkloadVerifier::new(
        &config.trusted_issuers,
        provider.clone(),
    ));
    let metrics = Arc::new(metrics::Metrics::default());
    let (audit, audit_writer) = audit::Audit::start(store.clone(), config.audit_coalesce);
    let endpoints = config
        .webhooks
        .iter()
        .map(|w| webhooks::Endpoint::resolve(w, config.allow_insecure_loopback))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let webhooks = webhooks::Webhooks::new(store.clone(), endpoints, config.webhook_retry_seconds)?;
    let keeper = SecretsKeeper::new(
        store.clone(),
        catalog,
        provider,
        metrics.clone(),
        audit.clone(),
        webhooks.clone(),
        &config,
    );
    let jwt = Arc::new(
        jwt::JwtIssuer::new(
            store.clone(),
            public_url.clone(),
            config.jwt_audience.clone(),
            config.jwt_lifetime_seconds,
            config.jwt_key_overlap_seconds,
        )
        .with_keys_ttl(config.jwt_keys_cache),
    );
    Ok(AppState::new(api::AppStateInner {
        keeper,
        auth: Arc::new(
            Authenticator::new(store, config.rate_limit_per_second, jwt.clone())
                .with_accounts_ttl(config.accounts_cache)
                .with_workload(workload),
        ),
        jwt,
        config: Arc::new(config),
        public_url: public_url.into(),
        metrics,
        audit,
        audit_writer: Arc::new(std::sync::Mutex::new(Some(audit_writer))),
        webhooks,
        sandbox_secret,
    }))
}

/// The route table (path, methods, access) without a server, for `tokenbox routes`: the
/// command line reaches the HTTP layer only through the crate root.
pub fn route_table() -> Vec<api::routes::RouteEntry> {
    api::routes::describe()
}

/// How long the built-in sandbox provider's access tokens last, for the demo's tour.
pub const SANDBOX_ACCESS_TOKEN_LIFETIME: i64 = api::sandbox::ACCESS_TOKEN_LIFETIME;

/// The HTTP service, bound to its listener.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    address: SocketAddr,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listen = config.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Self::build_with_listener(config, listener).await
    }

    /// Builds on a listener bound beforehand (the demo needs its address for its config).
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let state = build_state(config, Some(address)).await?;
        Ok(Self {
            listener,
            router: api::routes::router(state.clone()),
            state,
            address,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until SIGINT or SIGTERM, then finishes the requests in progress and the
    /// refreshes in flight (their rotated refresh tokens must be stored), within
    /// `shutdown_grace_seconds`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let refresher = self.state.config.refresher();
        let grace = self.state.config.shutdown_grace;
        let stop = tokio_util::sync::CancellationToken::new();
        let background = refresher.enabled.then(|| {
            tokio::spawn(refresh::background::run(
                self.state.keeper.clone(),
                refresher,
                stop.clone(),
            ))
        });
        let follower = {
            let keeper = self.state.keeper.clone();
            let heartbeat = self.state.config.cache_listener_heartbeat;
            let stop = stop.clone();
            tokio::spawn(async move { keeper.follow_changes(heartbeat, stop).await })
        };
        let deliverer = tokio::spawn(self.state.webhooks.clone().run());
        let config = &self.state.config;
        let pruner = tokio::spawn(audit::prune_periodically(
            self.state.keeper.store().clone(),
            config.audit_retention_days,
            config.webhook_retention_days,
            config.prune_interval,
        ));
        tracing::info!(address = %self.address, "tokenbox listening");
        let deadline = serve(
            self.listener,
            self.router,
            self.state.config.slow_client_timeout,
            self.state.config.max_connections,
            grace,
        )
        .await;
        // Requests are answered; what they started, and the background refresher's pass, may
        // still wait on a provider. Nothing is aborted: each refresh ends (stored, or given up
        // before its lease ends) or the grace period does.
        stop.cancel();
        let _ = follower.await;
        let keeper = self.state.keeper.clone();
        let drained = tokio::time::timeout_at(deadline, async {
            if let Some(task) = background {
                let _ = task.await;
            }
            keeper.drain(grace).await
        })
        .await;
        // The keeper holds an audit sender: the writer below ends only once every one is gone.
        drop(keeper);
        if !matches!(drained, Ok(true)) {
            tracing::warn!("refreshes still running after the grace period were cut");
        } else {
            tracing::info!("refreshes in flight finished");
        }
        deliverer.abort();
        let _ = deliverer.await;
        pruner.abort();
        // The last audit events: every sender is gone once the state is dropped.
        let writer = self.state.audit_writer.lock().expect("poisoned").take();
        drop(self.state);
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
        }
        Ok(())
    }
}

/// Largest request head (request line and headers) accepted: 431 beyond.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Connections beyond the cap being answered at once; beyond that they are simply closed.
const MAX_REFUSALS: usize = 64;

/// Accepts connections until SIGINT or SIGTERM: HTTP/1.1 with a header-read timeout and a
/// bounded header size, the peer address given to handlers, and a graceful shutdown within
/// `grace` (returns the end of it). At most `max_connections` (0: no limit) are served at once;
/// a connection beyond that is answered `503` at once and closed, rather than left waiting
/// unseen in the accept queue.
async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: std::time::Duration,
    max_connections: usize,
    grace: std::time::Duration,
) -> tokio::time::Instant {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let graceful = GracefulShutdown::new();
    let slots =
        (max_connections > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max_connections)));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::debug!("connection refused: max_connections reached");
                    if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            api::limits::refuse_connection(stream).await;
                            drop(refusal);
                        });
                    }
                    continue;
                }
            },
        };
        let service = router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request.map(axum::body::Body::new)
            },
        );
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(64 * 1024)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the grace period were cut");
    }
    deadline
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
