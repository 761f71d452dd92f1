//! `tokenbox demo`: the one-minute tour (a server with the sandbox provider, a superadmin
//! account and a connect link).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, LogFormat};
use crate::domain::{now_epoch, AppId, ConnectionKey, ConnectorTypeName};
use crate::store::{Role, ServiceAccount};
use crate::token::ServiceToken;
use crate::{telemetry, Application};

/// The demo's configuration: everything under `data_dir`, the sandbox on.
fn demo_config(address: std::net::SocketAddr, data_dir: &Path) -> Config {
    let dir = data_dir.display();
    Config {
        listen: address.to_string(),
        public_url: Some(format!("http://{address}")),
        database_url: format!("sqlite://{dir}/tokenbox.db").into(),
        encryption_key_file: data_dir.join("encryption.key"),
        sandbox: true,
        allow_insecure_loopback: true,
        ..Config::default()
    }
}

pub async fn run(listen: &str, data_dir: &Path) -> anyhow::Result<ExitCode> {
    telemetry::init(LogFormat::Text, "warn,sqlx=warn");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (try --listen 127.0.0.1:8081)"))?;
    let address = listener.local_addr()?;
    let app = Application::build_with_listener(demo_config(address, data_dir), listener).await?;
    let state = app.state().clone();
    let token = ServiceToken::generate();
    state
        .keeper
        .store()
        .create_service_account(&ServiceAccount {
            name: format!("demo-{}", now_epoch()),
            role: Role::Superadmin,
            token_hash: token.hash(),
            created_at: now_epoch(),
            scope: None,
            expires_at: None,
        })
        .await?;
    let key = ConnectionKey::new(
        AppId::parse("demo").expect("valid"),
        ConnectorTypeName::parse("sandbox").expect("valid"),
    );
    let link = crate::signup::create_link(
        &state.keeper,
        &state.config,
        &state.public_url,
        &key,
        crate::signup::NewLink::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    print_tour(&state.public_url, data_dir, &link.url, token.expose());
    std::io::stdout().flush()?;
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

fn print_tour(base: &str, data_dir: &Path, url: &str, token: &str) {
    let dir = data_dir.display();
    let me = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "tokenbox".into());
    println!(
        "\ntokenbox demo is running at {base} (data in {dir}; Ctrl-C stops it)\n\n\
         1. Open this link in a browser, click Connect, then Approve at the sandbox provider:\n\
         \x20  {url}\n\n\
         2. Fetch the token, as an extraction job would:\n\
         \x20  curl -s -H 'Authorization: Bearer {token}' {base}/demo/sandbox/binb-token\n\
         \x20  TOKENBOX_URL={base} TOKENBOX_TOKEN={token} {me} token demo sandbox\n\n\
         3. The sandbox's API accepts it (tokens last {lifetime} s; tokenbox refreshes them):\n\
         \x20  curl -s -H \"Authorization: Bearer $(TOKENBOX_URL={base} TOKENBOX_TOKEN={token} {me} token demo sandbox)\" {base}/sandbox/api/me\n",
        lifetime = crate::SANDBOX_ACCESS_TOKEN_LIFETIME,
    );
}
