//! `tokenbox backup FILE`, `tokenbox backup --verify FILE` and `tokenbox restore FILE`.
//!
//! A SQLite backup is `VACUUM INTO` on a read-only connection: one read transaction, so a
//! consistent copy while servers run. Beside it, `FILE.manifest.json` names the key ids whose
//! keys decrypt it (read from the ciphertexts' headers), its SHA-256 and its row counts. The
//! backup holds ciphertexts only: without the key file it is useless, and the key file must be
//! kept elsewhere. PostgreSQL is backed up with `pg_dump` (see the README).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::config::Config;
use crate::domain::now_epoch;
use crate::secret::Secret;
use crate::store::crypto::{create_private_dir, key_id_of, KeyRing};
use crate::store::SecretsStore;

const FORMAT: &str = "tokenbox-backup/1";

/// Every encrypted column: their headers name the keys a backup needs.
const CIPHERTEXTS: &str = "SELECT access_token AS b FROM connections \
     UNION ALL SELECT refresh_token FROM connections WHERE refresh_token IS NOT NULL \
     UNION ALL SELECT client_secret FROM connections WHERE client_secret IS NOT NULL \
     UNION ALL SELECT client_secret FROM connect_links WHERE client_secret IS NOT NULL \
     UNION ALL SELECT pkce_verifier FROM oauth_states WHERE pkce_verifier IS NOT NULL \
     UNION ALL SELECT private_key FROM jwt_keys \
     UNION ALL SELECT value FROM tokenbox_meta WHERE key = 'key_check'";

/// Tables whose rows the manifest counts.
const COUNTED: &[&str] = &[
    "connections",
    "service_accounts",
    "connect_links",
    "jwt_keys",
];

/// What `FILE.manifest.json` says about a backup.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created_at: i64,
    pub tokenbox_version: String,
    pub backend: String,
    /// The schema's newest migration.
    pub schema_version: i64,
    /// The SHA-256 of the backup file (hex); none for PostgreSQL (the dump is made apart).
    pub sha256: Option<String>,
    /// The ids (hex) of the keys that encrypted its values; the key file must hold them all.
    pub key_ids: Vec<String>,
    pub rows: std::collections::BTreeMap<String, i64>,
}

pub fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// The SQLite file named by the configuration, or why this command cannot handle it.
fn sqlite_path(config: &Config, what: &str) -> anyhow::Result<PathBuf> {
    let url = config.database_url.as_str();
    if url.starts_with("postgres") {
        bail!(
            "{what} of a PostgreSQL database: use pg_dump / pg_restore, and keep the key file apart \
             (see the README, \"Backup and key custody\"); `tokenbox backup --verify` checks a \
             SQLite backup only"
        );
    }
    let options =
        SqliteConnectOptions::from_str(url).context("database_url is not a valid sqlite:// URL")?;
    Ok(options.get_filename().to_path_buf())
}

async fn open_read_only(path: &Path) -> anyhow::Result<sqlx::SqliteConnection> {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The key ids of every ciphertext, the schema version and the row counts, read through one
/// connection (either backend: the statements are the same).
macro_rules! scan {
    ($conn:expr, $what:expr) => {{
        let conn = $conn;
        let mut key_ids = BTreeSet::new();
        for row in sqlx::query(CIPHERTEXTS).fetch_all(&mut *conn).await? {
            let blob: Vec<u8> = row.try_get("b")?;
            match key_id_of(&blob) {
                Some(id) => key_ids.insert(id),
                None => bail!("{} holds a value that is not a tokenbox ciphertext", $what),
            };
        }
        let schema_version: i64 =
            sqlx::query("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM _sqlx_migrations")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        let mut rows = std::collections::BTreeMap::new();
        for table in COUNTED {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            rows.insert(table.to_string(), n);
        }
        (key_ids, schema_version, rows)
    }};
}

fn manifest(
    backend: &str,
    key_ids: &BTreeSet<String>,
    schema_version: i64,
    rows: std::collections::BTreeMap<String, i64>,
    sha256: Option<String>,
) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        created_at: now_epoch(),
        tokenbox_version: env!("CARGO_PKG_VERSION").into(),
        backend: backend.into(),
        schema_version,
        sha256,
        key_ids: key_ids.iter().cloned().collect(),
        rows,
    }
}

/// Reads a SQLite file's key ids, schema version and row counts.
async fn describe(path: &Path) -> anyhow::Result<(BTreeSet<String>, i64, Manifest)> {
    let mut conn = open_read_only(path).await?;
    let (key_ids, schema_version, rows) = scan!(&mut conn, path.display());
    conn.close().await?;
    let manifest = manifest(
        "sqlite",
        &key_ids,
        schema_version,
        rows,
        Some(sha256_of(path)?),
    );
    Ok((key_ids, schema_version, manifest))
}

/// PostgreSQL: the manifest of the live database, written beside the `pg_dump` output.
async fn describe_postgres(config: &Config, file: &Path) -> anyhow::Result<()> {
    let manifest_file = manifest_path(file);
    if manifest_file.exists() {
        bail!(
            "{} already exists; choose a new name",
            manifest_file.display()
        );
    }
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(config.database_url.as_str())
        .context("database_url is not a valid postgres:// URL")?
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    let (key_ids, schema_version, rows) = scan!(&mut conn, "the database");
    conn.close().await?;
    let manifest = manifest("postgres", &key_ids, schema_version, rows, None);
    std::fs::write(
        &manifest_file,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .with_context(|| format!("cannot write {}", manifest_file.display()))?;
    println!(
        "wrote {}: the database needs the key(s) {}; now dump it with\n  \
         pg_dump --format=custom --file {} \"$DATABASE_URL\"\nand keep the key file apart",
        manifest_file.display(),
        manifest.key_ids.join(", "),
        file.display()
    );
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `tokenbox backup FILE`: a consistent copy of the live database and its manifest.
pub async fn backup(config: &Config, file: &Path) -> anyhow::Result<()> {
    if config.database_url.as_str().starts_with("postgres") {
        return describe_postgres(config, file).await;
    }
    let source = sqlite_path(config, "a backup")?;
    if !source.exists() {
        bail!("the database {} does not exist", source.display());
    }
    let manifest_file = manifest_path(file);
    if file.exists() || manifest_file.exists() {
        bail!(
            "{} (or its manifest) already exists; choose a new name",
            file.display()
        );
    }
    let target = file
        .to_str()
        .context("the backup path must be valid UTF-8")?;
    let mut conn = open_read_only(&source).await?;
    let copied = sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await;
    conn.close().await?;
    if let Err(e) = copied {
        let _ = std::fs::remove_file(file);
        return Err(e).context("VACUUM INTO failed");
    }
    let (_, _, manifest) = describe(file).await?;
    std::fs::write(
        &manifest_file,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .with_context(|| format!("cannot write {}", manifest_file.display()))?;
    println!(
        "backed up {} to {} ({} connections); it needs the key(s) {}; keep the key file apart",
        source.display(),
        file.display(),
        manifest.rows["connections"],
        manifest.key_ids.join(", ")
    );
    Ok(())
}

/// The keys a backup needs, from the file itself (and its manifest, checked against it), with
/// the configured key ring's text; refuses naming every missing key id.
async fn check_keys(config: &Config, file: &Path) -> anyhow::Result<(String, Manifest)> {
    if !file.exists() {
        bail!("{} does not exist", file.display());
    }
    let (needed, _, described) = describe(file).await?;
    let manifest_file = manifest_path(file);
    if let Ok(text) = std::fs::read_to_string(&manifest_file) {
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a backup manifest", manifest_file.display()))?;
        if manifest.sha256.is_some() && manifest.sha256 != described.sha256 {
            bail!(
                "{} does not match its manifest (SHA-256 differs): the file is damaged or not this backup",
                file.display()
            );
        }
    }
    let text = match &config.encryption_key {
        Some(secret) => secret.expose().to_string(),
        None => std::fs::read_to_string(&config.encryption_key_file).with_context(|| {
            format!(
                "the backup needs the key(s) {}, but the key file {} cannot be read",
                needed.iter().cloned().collect::<Vec<_>>().join(", "),
                config.encryption_key_file.display()
            )
        })?,
    };
    let ring = KeyRing::parse(&text).context("the configured key file is invalid")?;
    let have: BTreeSet<String> = ring.key_ids().into_iter().collect();
    let missing: Vec<String> = needed.difference(&have).cloned().collect();
    if !missing.is_empty() {
        bail!(
            "the backup needs key id(s) {} that the configured key file does not hold (it holds {}); \
             put the key file kept with this backup in place (encryption_key_file)",
            missing.join(", "),
            have.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok((text, described))
}

/// `tokenbox backup --verify FILE`: opens a scratch copy with the configured keys plus a new
/// one, and re-encrypts every value under the new key: each value decrypts, or the command fails.
pub async fn verify(config: &Config, file: &Path) -> anyhow::Result<()> {
    sqlite_path(config, "verifying a backup")?;
    let (keys, manifest) = check_keys(config, file).await?;
    let scratch = std::env::temp_dir().join(format!(
        "tokenbox-verify-{}-{}",
        std::process::id(),
        now_epoch()
    ));
    create_private_dir(&scratch)?;
    let result = verify_in(config, file, &scratch, keys).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (connections, others) = result?;
    println!(
        "verified {}: {connections} connections and {others} other encrypted values decrypt with key(s) {}; \
         schema version {}; {} service accounts",
        file.display(),
        manifest.key_ids.join(", "),
        manifest.schema_version,
        manifest.rows["service_accounts"],
    );
    Ok(())
}

async fn verify_in(
    config: &Config,
    file: &Path,
    scratch: &Path,
    keys: String,
) -> anyhow::Result<(u64, u64)> {
    let copy = scratch.join("verify.db");
    std::fs::copy(file, &copy).context("cannot copy the backup to a scratch directory")?;
    let mut scratch_config = config.clone();
    scratch_config.database_url = format!("sqlite://{}", copy.display()).as_str().into();
    scratch_config.encryption_key = Some(Secret::new(format!(
        "{keys}\n{}\n",
        KeyRing::generate_key_line()
    )));
    let store: Arc<dyn SecretsStore> = crate::store::open_store(&scratch_config).await?;
    let (mut connections, mut after) = (0, None);
    loop {
        let batch = store
            .reencrypt_connections(after.as_ref(), 500)
            .await
            .context("a connection does not decrypt")?;
        connections += batch.rotated;
        if batch.scanned < 500 {
            break;
        }
        after = batch.last;
    }
    let others = store
        .reencrypt_meta()
        .await
        .context("a stored value does not decrypt")?;
    Ok((connections, others))
}

/// `tokenbox restore FILE`: checks the backup's keys, then puts it in place of the configured
/// database (refused when that one holds data, unless `force`). Servers must be stopped.
pub async fn restore(config: &Config, file: &Path, force: bool) -> anyhow::Result<()> {
    let target = sqlite_path(config, "a restore")?;
    let (_, manifest) = check_keys(config, file).await?;
    if target.exists() && !force {
        let mut conn = open_read_only(&target).await?;
        let mut held = 0i64;
        for table in ["connections", "service_accounts"] {
            held += sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut conn)
                .await
                .map(|row| row.try_get::<i64, _>(0).unwrap_or(0))
                .unwrap_or(0);
        }
        conn.close().await?;
        if held > 0 {
            bail!(
                "the configured database {} is not empty ({held} connections and accounts); \
                 stop the servers and pass --force to replace it",
                target.display()
            );
        }
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".restoring");
    let partial = PathBuf::from(partial);
    std::fs::copy(file, &partial).context("cannot copy the backup")?;
    std::fs::File::open(&partial)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    std::fs::rename(&partial, &target).context("cannot move the restored database in place")?;
    // Opening checks the key against the database and applies newer migrations.
    crate::store::open_store(config).await?;
    println!(
        "restored {} into {} ({} connections, {} service accounts, key(s) {})",
        file.display(),
        target.display(),
        manifest.rows["connections"],
        manifest.rows["service_accounts"],
        manifest.key_ids.join(", ")
    );
    Ok(())
}
