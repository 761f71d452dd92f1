//! `tokenbox config check`: every problem of a configuration at once, before a deploy.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::connectors::Catalog;
use crate::domain::Kind;
use crate::store::crypto::KeyRing;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration, resolve every *_env and *_FILE, check URLs, placeholders and
    /// connector types, and list every problem at once (exit 1 when there is one). The
    /// database is not opened.
    Check,
}

pub fn run(command: ConfigCommand, path: Option<&Path>) -> ExitCode {
    match command {
        ConfigCommand::Check => check(path),
    }
}

fn check(path: Option<&Path>) -> ExitCode {
    let (config, mut problems) = Config::check(path);
    let mut warnings = Vec::new();
    if let Some(config) = &config {
        problems.extend(deep_problems(config, &mut warnings));
    }
    let source = path.map_or("defaults and environment".to_string(), |p| {
        p.display().to_string()
    });
    for warning in &warnings {
        println!("warning: {warning}");
    }
    if !problems.is_empty() {
        for problem in &problems {
            println!("error: {problem}");
        }
        println!("{source}: {} problem(s)", problems.len());
        return ExitCode::FAILURE;
    }
    let config = config.expect("a configuration without problems");
    println!(
        "{source}: OK (listen {}, {} database, {} configured connector type(s), {} webhook(s), {} trusted issuer(s))",
        config.listen,
        config
            .database_url
            .as_str()
            .split_once(':')
            .map_or("?", |(s, _)| s),
        config.connector_types.len(),
        config.webhooks.len(),
        config.trusted_issuers.len(),
    );
    ExitCode::SUCCESS
}

/// What needs the resolved configuration: the database URL's scheme, the key, the public URL,
/// each connector type (built on its own, with its `*_env` variables and placeholders) and
/// each webhook. (Each `[[trusted_issuers]]` entry is checked with the configuration: its URLs,
/// its audience, its algorithms and its rules' account names.)
fn deep_problems(config: &Config, warnings: &mut Vec<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let scheme = config
        .database_url
        .as_str()
        .split_once("://")
        .map(|(s, _)| s);
    if !matches!(scheme, Some("sqlite" | "postgres" | "postgresql")) {
        problems.push("database_url must start with sqlite:// or postgres://".to_string());
    }
    match KeyRing::load(&config.encryption_key_file, config.encryption_key.as_ref()) {
        Ok(Some(_)) => {}
        Ok(None) => warnings.push(format!(
            "the key file {} does not exist: it is created on the first start, on a new database only",
            config.encryption_key_file.display()
        )),
        Err(e) => problems.push(format!("{e:#}")),
    }
    if let Some(url) = &config.public_url {
        if oauth2::url::Url::parse(url).is_err() {
            problems.push(format!("public_url {url} is not a URL"));
        }
    }
    for url in &config.allowed_return_urls {
        if oauth2::url::Url::parse(url).is_err() {
            problems.push(format!("allowed_return_urls: {url} is not a URL"));
        }
    }
    if let Err(e) = Catalog::build(&BTreeMap::new(), config.allow_insecure_loopback) {
        problems.push(format!("{e:#}"));
    }
    for (name, spec) in &config.connector_types {
        let one = BTreeMap::from([(name.clone(), spec.clone())]);
        if let Err(e) = Catalog::build(&one, config.allow_insecure_loopback) {
            problems.push(format!("{e:#}"));
        }
        let needs_client = matches!(
            spec.kind.unwrap_or_default(),
            Kind::Oauth2 | Kind::ClientCredentials
        );
        let has_client = spec.client_id.is_some()
            || spec.client_secret.is_some()
            || spec.client_secret_env.is_some()
            || spec.client_secrets.is_some();
        if needs_client && !has_client {
            warnings.push(format!(
                "connector type '{name}' has no client credentials (client_id, client_secret): each connection must bring its own client"
            ));
        }
    }
    for webhook in &config.webhooks {
        if let Err(e) = crate::webhooks::Endpoint::resolve(webhook, config.allow_insecure_loopback)
        {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}
