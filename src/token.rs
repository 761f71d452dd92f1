//! Random tokens and their hashes, in one place below the HTTP layer: service-account tokens,
//! connect-link and OAuth-state secrets, admin session ids, the sandbox's codes and tokens,
//! webhook event ids and request ids all come from here. Every random value is drawn from the
//! operating system's generator.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix that makes a service-account token recognisable (in logs, in secret scanners).
pub const SERVICE_TOKEN_PREFIX: &str = "tbx_";

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `prefix` followed by `N` random bytes in URL-safe base64 without padding.
pub fn random_text<const N: usize>(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<N>()))
}

/// `prefix` followed by 256 random bits in URL-safe base64 (43 characters).
pub fn random_token(prefix: &str) -> String {
    random_text::<32>(prefix)
}

/// `N` random bytes as lowercase hexadecimal (ids that are unique, not secret).
pub fn random_hex<const N: usize>() -> String {
    random_bytes::<N>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request id: 16 hex digits, unique within the process (a counter from a random start), so
/// ids of different replicas do not collide in practice. Not a secret: no system random number
/// per request.
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| u64::from_le_bytes(random_bytes::<8>()));
    format!(
        "{:016x}",
        start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
    )
}

/// The SHA-256 digest under which a token or secret is stored and looked up.
pub fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A new service-account token: 256 random bits, URL-safe base64, with the `tbx_` prefix.
/// Shown once to whoever created the account; only its [`hash`](ServiceToken::hash) is stored.
pub struct ServiceToken(String);

impl ServiceToken {
    pub fn generate() -> Self {
        Self(random_token(SERVICE_TOKEN_PREFIX))
    }

    /// What the store keeps and the authenticator compares.
    pub fn hash(&self) -> [u8; 32] {
        hash(&self.0)
    }

    /// The token itself, to print once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_are_stable() {
        let a = ServiceToken::generate();
        let b = ServiceToken::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("tbx_") && a.expose().len() == 4 + 43);
        assert_eq!(a.hash(), hash(a.expose()));
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn random_values_have_their_documented_shapes() {
        assert_eq!(random_token("").len(), 43);
        assert_eq!(random_text::<24>("sbx-at-").len(), 7 + 32);
        let hex = random_hex::<12>();
        assert_eq!(hex.len(), 24);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(random_hex::<8>(), random_hex::<8>());
    }
}
