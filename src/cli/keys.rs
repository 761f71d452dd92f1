//! `tokenbox keys add | rotate | rotate-signing`: encryption keys and JWT signing keys.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::audit_cli;
use crate::config::Config;
use crate::jwt::JwtIssuer;
use crate::store::crypto::{replace_key_file, KeyRing};
use crate::store::SecretsStore;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Append a new key to the key file. Restart every server (so they encrypt with it), then
    /// run `keys rotate`.
    Add,
    /// Re-encrypt every stored secret under the newest key, in batches, while servers run.
    /// Safe to interrupt and run again. Afterwards older keys can be removed from the file.
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Print the ids of the configured encryption keys (no key material), the newest last: the
    /// ids a backup's manifest lists.
    Ids,
    /// Start signing JWTs with a new key; the previous one keeps verifying for
    /// jwt_key_overlap_seconds. Servers pick the new key up within 5 seconds.
    RotateSigning,
}

pub async fn run(command: KeysCommand, config: Config) -> anyhow::Result<()> {
    match command {
        KeysCommand::Add => add(&config),
        KeysCommand::Ids => {
            let ring = KeyRing::load(&config.encryption_key_file, config.encryption_key.as_ref())?
                .context("no encryption key is configured (the key file does not exist)")?;
            for id in ring.key_ids() {
                println!("{id}");
            }
            Ok(())
        }
        KeysCommand::Rotate { batch } => {
            let store = crate::store::open_store(&config).await?;
            rotate(&store, batch.max(1)).await
        }
        KeysCommand::RotateSigning => rotate_signing(config).await,
    }
}

/// Appends a new key to the key file (checked, replaced atomically).
fn add(config: &Config) -> anyhow::Result<()> {
    if config.encryption_key.is_some() {
        bail!("the keys come from TOKENBOX_ENCRYPTION_KEY: append a new line to its value instead");
    }
    let path = &config.encryption_key_file;
    let mut text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&KeyRing::generate_key_line());
    text.push('\n');
    KeyRing::parse(&text)?;
    replace_key_file(path, &text)?;
    eprintln!(
        "added a key to {}; restart every server, then run `tokenbox keys rotate`",
        path.display()
    );
    Ok(())
}

/// Re-encrypts every connection under the newest key, in passes until one meets no row
/// written meanwhile (at most five), then the other stored values.
async fn rotate(store: &Arc<dyn SecretsStore>, batch: i64) -> anyhow::Result<()> {
    let mut total = 0;
    for pass in 1..=5 {
        let (rotated, raced) = rotate_pass(store, batch).await?;
        total += rotated;
        eprintln!("pass {pass}: re-encrypted {rotated} connections, {raced} written meanwhile");
        if raced == 0 {
            break;
        }
    }
    let meta = store.reencrypt_meta().await?;
    eprintln!(
        "done: {total} connections and {meta} other values now use the newest key; older keys can be removed from the key file once every server runs with the newest"
    );
    Ok(())
}

/// One pass over the connections, a batch at a time: (re-encrypted, written meanwhile).
async fn rotate_pass(store: &Arc<dyn SecretsStore>, batch: i64) -> anyhow::Result<(u64, u64)> {
    let (mut rotated, mut raced) = (0, 0);
    let mut after = None;
    loop {
        let progress = store.reencrypt_connections(after.as_ref(), batch).await?;
        rotated += progress.rotated;
        raced += progress.raced;
        if progress.scanned < batch as u64 {
            return Ok((rotated, raced));
        }
        after = progress.last;
    }
}

/// Starts signing JWTs with a new key. Needs only the store: no background worker.
async fn rotate_signing(config: Config) -> anyhow::Result<()> {
    let opened = crate::open_command_store(config).await?;
    let config = &opened.config;
    let jwt = JwtIssuer::new(
        opened.store.clone(),
        opened.public_url.clone(),
        config.jwt_audience.clone(),
        config.jwt_lifetime_seconds,
        config.jwt_key_overlap_seconds,
    );
    let kid = jwt.rotate().await?;
    audit_cli(&opened.store, "jwt_key.rotate", None, Some(&kid)).await;
    eprintln!(
        "JWTs are now signed with key {kid}; the previous key verifies for {} more seconds",
        config.jwt_key_overlap_seconds
    );
    Ok(())
}
