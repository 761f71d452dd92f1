//! RS256-signed JWTs that tokenbox presents to providers: RFC 7523 assertions (Google service
//! accounts, Salesforce's JWT bearer flow) and GitHub App JWTs. Keys are read from PEM (PKCS#8,
//! as Google's service-account JSON has them, or PKCS#1, as GitHub hands them out) by
//! `rustls-pki-types` and used by `ring`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{json, Value};

/// An RSA private key; it never prints itself.
pub struct RsaSigningKey(RsaKeyPair);

impl fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaSigningKey(..)")
    }
}

impl RsaSigningKey {
    /// Reads a PEM private key. The error never repeats the key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "the private key is not a PEM private key".to_string())?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
            _ => return Err("the private key is not an RSA key".into()),
        };
        pair.map(Self)
            .map_err(|_| "the RSA private key is not usable (ring refused it)".into())
    }

    /// A compact JWS: `header.claims.signature`, RS256, with `kid` when given.
    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = Value::String(kid.to_string());
        }
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).map_err(|e| e.to_string())?),
            B64.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?)
        );
        let mut signature = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "the assertion could not be signed".to_string())?;
        Ok(format!("{signing_input}.{}", B64.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_pem_is_refused_without_repeating_it() {
        let err = RsaSigningKey::from_pem("not-a-key-s3cret").unwrap_err();
        assert!(!err.contains("s3cret"));
        let ec = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        assert!(RsaSigningKey::from_pem(ec).is_err());
    }
}
