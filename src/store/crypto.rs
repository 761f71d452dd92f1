//! Encryption at rest: AES-256-GCM with a key id, a random nonce, and associated data that binds
//! every ciphertext to its row and field.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const FORMAT_V1: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the stored value is not a tokenbox ciphertext")]
    Malformed,
    #[error("the stored value was encrypted with a key that is not configured")]
    UnknownKey,
    #[error(
        "the stored value does not decrypt for this row (wrong key, or moved from another row)"
    )]
    Decrypt,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

/// The configured keys: the last one encrypts, all of them decrypt.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys, [redacted])", self.keys.len())
    }
}

fn key_id(key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"tokenbox key id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

impl KeyRing {
    /// Parses keys written one per line in base64 (32 bytes each); `#` starts a comment.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = B64
                .decode(line)
                .ok()
                .filter(|b| b.len() == 32)
                .with_context(|| format!("line {} is not a base64-encoded 32-byte key", n + 1))?;
            keys.push(Key {
                id: key_id(&bytes),
                cipher: Aes256Gcm::new_from_slice(&bytes).expect("32-byte key"),
            });
        }
        if keys.is_empty() {
            bail!("no key found");
        }
        Ok(Self { keys })
    }

    /// Generates a new random key, in the key file format.
    pub fn generate_key_line() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        B64.encode(key)
    }

    /// Loads the key ring from `TOKENBOX_ENCRYPTION_KEY` when given, else from the key file.
    /// Returns `None` when there is no key file (the caller decides whether to create one).
    pub fn load(path: &Path, from_env: Option<&Secret>) -> anyhow::Result<Option<Self>> {
        if let Some(env) = from_env {
            return Self::parse(env.expose())
                .context("TOKENBOX_ENCRYPTION_KEY is invalid")
                .map(Some);
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                warn_if_shared(path);
                Self::parse(&text)
                    .with_context(|| format!("encryption key file {} is invalid", path.display()))
                    .map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e)
                .with_context(|| format!("cannot read encryption key file {}", path.display())),
        }
    }

    /// Creates a key file holding one new key, readable by its owner only (mode 0600).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let line = Self::generate_key_line();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .with_context(|| format!("cannot create encryption key file {}", path.display()))?;
        writeln!(
            file,
            "# tokenbox encryption keys, one base64 AES-256 key per line; the last one encrypts.\n{line}"
        )
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write encryption key file {}", path.display()))?;
        Self::parse(&line)
    }

    /// Whether a ciphertext is under the newest key (nothing to re-encrypt).
    pub fn is_current(&self, blob: &[u8]) -> bool {
        let newest = &self.keys.last().expect("at least one key").id;
        blob.len() > HEADER_LEN && blob[0] == FORMAT_V1 && &blob[1..1 + KEY_ID_LEN] == newest
    }

    /// Decrypts with whichever key encrypted it and encrypts again under the newest key.
    pub fn reencrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(self.encrypt(&self.decrypt(blob, aad)?, aad))
    }

    /// The identifiers of every configured key (hex), oldest first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex(&k.id)).collect()
    }

    /// The identifier of the newest key, as stored in front of each ciphertext (hex).
    pub fn current_key_id(&self) -> String {
        self.keys
            .last()
            .expect("at least one key")
            .id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = self.keys.last().expect("at least one key");
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for small inputs");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if blob.len() < HEADER_LEN + 16 || blob[0] != FORMAT_V1 {
            return Err(CryptoError::Malformed);
        }
        let id = &blob[1..1 + KEY_ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(CryptoError::UnknownKey)?;
        let nonce = Nonce::from_slice(&blob[1 + KEY_ID_LEN..HEADER_LEN]);
        key.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &blob[HEADER_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn encrypt_secret(&self, secret: &Secret, aad: &[u8]) -> Vec<u8> {
        self.encrypt(secret.expose().as_bytes(), aad)
    }

    pub fn decrypt_secret(&self, blob: &[u8], aad: &[u8]) -> Result<Secret, CryptoError> {
        let bytes = self.decrypt(blob, aad)?;
        String::from_utf8(bytes)
            .map(Secret::new)
            .map_err(|_| CryptoError::Malformed)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identifier (hex) of the key a ciphertext was encrypted with, read from its header
/// without decrypting; `None` when the value is not a tokenbox ciphertext.
pub fn key_id_of(blob: &[u8]) -> Option<String> {
    (blob.len() >= HEADER_LEN + 16 && blob[0] == FORMAT_V1).then(|| hex(&blob[1..1 + KEY_ID_LEN]))
}

/// Associated data of a connection's secret field: binds the ciphertext to its row and field.
pub fn connection_aad(app_id: &str, connector_type: &str, field: &str) -> Vec<u8> {
    format!("tokenbox/v1\0connections\0{app_id}\0{connector_type}\0{field}").into_bytes()
}

/// Associated data of a connection's own OAuth client secret: bound to its row and to the
/// client id stored beside it (a client id swapped in the row makes the secret undecryptable).
pub fn connection_client_aad(app_id: &str, connector_type: &str, client_id: &str) -> Vec<u8> {
    let mut aad = connection_aad(app_id, connector_type, "client_secret");
    aad.push(0);
    aad.extend_from_slice(client_id.as_bytes());
    aad
}

/// Associated data of a connect link's OAuth client secret: bound to the link and its client id.
pub fn link_client_aad(link_hash: &[u8; 32], client_id: &str) -> Vec<u8> {
    let mut aad = b"tokenbox/v1\0connect_links\0client_secret\0".to_vec();
    aad.extend_from_slice(link_hash);
    aad.push(0);
    aad.extend_from_slice(client_id.as_bytes());
    aad
}

/// Associated data of an authorization request's PKCE verifier: bound to its state.
pub fn oauth_state_aad(state_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"tokenbox/v1\0oauth_states\0pkce_verifier\0".to_vec();
    aad.extend_from_slice(state_hash);
    aad
}

/// Associated data of a JWT signing key's private part.
pub fn jwt_key_aad(kid: &str) -> Vec<u8> {
    format!("tokenbox/v1\0jwt_keys\0{kid}\0private_key").into_bytes()
}

/// Associated data of the key check value stored in the database.
pub const KEY_CHECK_AAD: &[u8] = b"tokenbox/v1\0meta\0key_check";

/// Replaces the key file atomically: the new text goes to a temporary file in the same
/// directory (mode 0600, created exclusively), which is flushed to disk and renamed over the old
/// file, then the directory itself is flushed. A crash or a failed write at any moment leaves
/// either the old file or the new one, never a truncated one.
pub fn replace_key_file(path: &Path, text: &str) -> anyhow::Result<()> {
    replace_file_with(path, |file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write the key file {}", path.display()))
}

fn replace_file_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the key file path has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", crate::token::random_hex::<8>()));
    let temp = dir.join(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temp)?;
    let written = write(&mut file)
        .and_then(|_| file.sync_all())
        .and_then(|_| std::fs::rename(&temp, path));
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // The rename itself is durable only once the directory is flushed.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Warns when the key file can be read or written by its group or by others: the keys decrypt
/// every stored token. A warning rather than a refusal, so that a running deployment with a
/// lax mode keeps starting (after an upgrade) while the operator is told what to fix.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = %format!("{mode:04o}"),
                    "the encryption key file can be read or written by its group or by others; \
                     restrict it to its owner: chmod 600 {}",
                    path.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::parse(&KeyRing::generate_key_line()).unwrap()
    }

    #[test]
    fn a_ciphertext_decrypts_only_with_its_own_associated_data() {
        let ring = ring();
        let aad_a = connection_aad("app-a", "github", "access_token");
        let aad_b = connection_aad("app-b", "github", "access_token");
        let aad_field = connection_aad("app-a", "github", "refresh_token");
        let blob = ring.encrypt(b"gho_secret", &aad_a);
        assert!(!blob.windows(10).any(|w| w == b"gho_secret"));
        assert_eq!(ring.decrypt(&blob, &aad_a).unwrap(), b"gho_secret");
        assert_eq!(ring.decrypt(&blob, &aad_b), Err(CryptoError::Decrypt));
        assert_eq!(ring.decrypt(&blob, &aad_field), Err(CryptoError::Decrypt));
    }

    #[test]
    fn the_last_key_encrypts_and_every_key_decrypts() {
        let old = KeyRing::generate_key_line();
        let new = KeyRing::generate_key_line();
        let old_ring = KeyRing::parse(&old).unwrap();
        let both = KeyRing::parse(&format!("{old}\n{new}\n")).unwrap();
        let by_old = old_ring.encrypt(b"x", b"aad");
        assert_eq!(both.decrypt(&by_old, b"aad").unwrap(), b"x");
        let by_new = both.encrypt(b"y", b"aad");
        assert_eq!(
            old_ring.decrypt(&by_new, b"aad"),
            Err(CryptoError::UnknownKey)
        );
    }

    #[test]
    fn reencryption_moves_a_value_to_the_newest_key() {
        let old = KeyRing::generate_key_line();
        let new = KeyRing::generate_key_line();
        let old_ring = KeyRing::parse(&old).unwrap();
        let both = KeyRing::parse(&format!("{old}\n{new}")).unwrap();
        let new_only = KeyRing::parse(&new).unwrap();
        let blob = old_ring.encrypt(b"v", b"aad");
        assert!(!both.is_current(&blob));
        let moved = both.reencrypt(&blob, b"aad").unwrap();
        assert!(both.is_current(&moved));
        assert_eq!(new_only.decrypt(&moved, b"aad").unwrap(), b"v");
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let ring = ring();
        let mut blob = ring.encrypt(b"value", b"aad");
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(ring.decrypt(&blob, b"aad"), Err(CryptoError::Decrypt));
        assert_eq!(ring.decrypt(b"short", b"aad"), Err(CryptoError::Malformed));
        assert!(KeyRing::parse("not base64!").is_err());
        assert!(KeyRing::parse("# only a comment").is_err());
    }

    #[test]
    fn a_key_file_write_that_fails_midway_leaves_the_old_file_intact() {
        let dir = std::env::temp_dir().join(format!("tokenbox-key-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("encryption.key");
        std::fs::write(&path, "old keys\n").unwrap();
        // The disk fills up (or the process dies) after half the new text was written.
        let failed = replace_file_with(&path, |file| {
            file.write_all(b"new ke")?;
            Err(std::io::Error::other("injected: no space left on device"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old keys\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        // A write that succeeds replaces the whole file, readable by its owner only.
        replace_key_file(&path, "old keys\nnew key\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "old keys\nnew key\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_file_is_created_private() {
        let dir = std::env::temp_dir().join(format!("tokenbox-key-{}", std::process::id()));
        let path = dir.join("sub").join("encryption.key");
        let ring = KeyRing::create(&path).unwrap();
        let loaded = KeyRing::load(&path, None).unwrap().unwrap();
        let blob = ring.encrypt(b"x", b"a");
        assert_eq!(loaded.decrypt(&blob, b"a").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            KeyRing::create(&path).is_err(),
            "never overwrites a key file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
