//! JWT access tokens for the client-credentials grant (RFC 6749 §4.4, RFC 7519): Ed25519
//! (`EdDSA`, RFC 8037) signatures through `ring`, public keys published as a JWKS, signing keys
//! rotated with an overlap during which the previous key still verifies.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::domain::now_epoch;
use crate::store::{AccountScope, JwtKeyRecord, Role, SecretsStore, StoreError};

/// How often a process re-reads the keys (another replica may have rotated them), unless
/// configured (`jwt_keys_cache_seconds`).
const KEYS_TTL: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY: i64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<AccountScope>,
    /// The generation of the account the token was issued to (see
    /// `api::auth::account_generation`); a token without one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is signed with an unsupported algorithm")]
    Algorithm,
    #[error("the token's signing key is unknown or retired")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not meant for this service (audience or issuer)")]
    Audience,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

struct Loaded {
    keys: Vec<JwtKeyRecord>,
    loaded: Option<Instant>,
}

/// Issues and verifies JWTs with the keys stored in the database.
pub struct JwtIssuer {
    store: Arc<dyn SecretsStore>,
    pub issuer: String,
    pub audience: String,
    pub lifetime: i64,
    pub overlap: i64,
    keys_ttl: Duration,
    loaded: RwLock<Loaded>,
}

impl JwtIssuer {
    pub fn new(
        store: Arc<dyn SecretsStore>,
        issuer: String,
        audience: String,
        lifetime: i64,
        overlap: i64,
    ) -> Self {
        Self {
            store,
            issuer,
            audience,
            lifetime,
            overlap,
            keys_ttl: KEYS_TTL,
            loaded: RwLock::new(Loaded {
                keys: Vec::new(),
                loaded: None,
            }),
        }
    }

    /// How often the keys are re-read (0: on every use).
    pub fn with_keys_ttl(mut self, ttl: Duration) -> Self {
        self.keys_ttl = ttl;
        self
    }

    /// Generates a new key pair (not stored).
    pub fn generate() -> Result<JwtKeyRecord, StoreError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| StoreError::Corrupt("cannot generate an Ed25519 key".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| StoreError::Corrupt("cannot read the generated key".into()))?;
        let public_key = pair.public_key().as_ref().to_vec();
        let kid =
            B64.encode(&ring::digest::digest(&ring::digest::SHA256, &public_key).as_ref()[..12]);
        Ok(JwtKeyRecord {
            kid,
            pkcs8: pkcs8.as_ref().to_vec(),
            public_key,
            created_at: now_epoch(),
            retire_at: None,
        })
    }

    /// Adds a new signing key; the previous ones keep verifying for `overlap` seconds.
    pub async fn rotate(&self) -> Result<String, StoreError> {
        let key = Self::generate()?;
        self.store
            .rotate_jwt_key(&key, now_epoch() + self.overlap)
            .await?;
        self.loaded.write().expect("poisoned").loaded = None;
        Ok(key.kid)
    }

    /// The keys still valid for verification (the signing key last), creating the first one.
    async fn keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        {
            let loaded = self.loaded.read().expect("poisoned");
            if loaded.loaded.is_some_and(|t| t.elapsed() < self.keys_ttl) {
                return Ok(loaded.keys.clone());
            }
        }
        let mut keys = self.store.jwt_keys().await?;
        if !keys.iter().any(|k| k.retire_at.is_none()) {
            self.rotate().await?;
            keys = self.store.jwt_keys().await?;
        }
        let now = now_epoch();
        keys.retain(|k| k.retire_at.is_none_or(|at| at > now));
        keys.sort_by_key(|k| (k.retire_at.is_none(), k.created_at));
        *self.loaded.write().expect("poisoned") = Loaded {
            keys: keys.clone(),
            loaded: Some(Instant::now()),
        };
        Ok(keys)
    }

    /// A signed access token for a service account.
    pub async fn issue(
        &self,
        subject: &str,
        role: Role,
        scope: Option<AccountScope>,
        expires_at: Option<i64>,
        generation: &str,
    ) -> Result<(String, i64), StoreError> {
        let keys = self.keys().await?;
        let key = keys.last().expect("a signing key");
        let pair = Ed25519KeyPair::from_pkcs8(&key.pkcs8)
            .map_err(|_| StoreError::Corrupt("a JWT signing key is invalid".into()))?;
        let now = now_epoch();
        // A token never outlives its account.
        let exp = expires_at.map_or(now + self.lifetime, |at| at.min(now + self.lifetime));
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
            .map_err(|_| StoreError::Corrupt("no randomness".into()))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: self.audience.clone(),
            iat: now,
            exp,
            jti: B64.encode(jti),
            role,
            scope,
            gen: Some(generation.to_string()),
        };
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some("JWT".into()),
            kid: key.kid.clone(),
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("serializable")),
            B64.encode(serde_json::to_vec(&claims).expect("serializable"))
        );
        let signature = pair.sign(signing_input.as_bytes());
        Ok((
            format!("{signing_input}.{}", B64.encode(signature.as_ref())),
            exp - now,
        ))
    }

    /// Verifies signature, key, expiry, audience and issuer.
    pub async fn verify(&self, token: &str) -> Result<Result<Claims, JwtError>, StoreError> {
        let keys = self.keys().await?;
        Ok(verify_with(
            &keys,
            token,
            &self.audience,
            &self.issuer,
            now_epoch(),
        ))
    }

    /// The public keys, as a JSON Web Key Set (RFC 7517, OKP keys of RFC 8037).
    pub async fn jwks(&self) -> Result<serde_json::Value, StoreError> {
        let keys = self.keys().await?;
        Ok(serde_json::json!({
            "keys": keys.iter().map(|k| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(&k.public_key),
                "kid": k.kid,
                "alg": "EdDSA",
                "use": "sig",
            })).collect::<Vec<_>>()
        }))
    }
}

/// Whether a bearer token has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && !token.starts_with("tbx_")
}

fn verify_with(
    keys: &[JwtKeyRecord],
    token: &str,
    audience: &str,
    issuer: &str,
    now: i64,
) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(JwtError::Algorithm);
    }
    let key = keys
        .iter()
        .find(|k| k.kid == header.kid && k.retire_at.is_none_or(|at| at > now))
        .ok_or(JwtError::UnknownKey)?;
    let signature = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    UnparsedPublicKey::new(&ED25519, &key.public_key)
        .verify(format!("{h}.{p}").as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if claims.exp + LEEWAY <= now || claims.iat > now + LEEWAY {
        return Err(JwtError::Expired);
    }
    if claims.aud != audience || claims.iss != issuer {
        return Err(JwtError::Audience);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &JwtKeyRecord, claims: &Claims, alg: &str) -> String {
        let pair = Ed25519KeyPair::from_pkcs8(&key.pkcs8).unwrap();
        let header = Header {
            alg: alg.into(),
            typ: None,
            kid: key.kid.clone(),
        };
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = pair.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "https://tokens.example.com".into(),
            sub: "jobs".into(),
            aud: "tokenbox".into(),
            iat: now,
            exp: now + 900,
            jti: "x".into(),
            role: Role::Superadmin,
            scope: None,
            gen: Some("g".into()),
        }
    }

    #[test]
    fn signature_key_expiry_and_audience_are_all_checked() {
        let key = JwtIssuer::generate().unwrap();
        let other = JwtIssuer::generate().unwrap();
        let keys = vec![key.clone()];
        let now = 1_000_000;
        let check = |t: &str| verify_with(&keys, t, "tokenbox", "https://tokens.example.com", now);
        let good = sign(&key, &claims(now), "EdDSA");
        assert_eq!(check(&good).unwrap().sub, "jobs");
        // Another key claiming our kid: bad signature.
        let mut forged_key = other.clone();
        forged_key.kid = key.kid.clone();
        assert_eq!(
            check(&sign(&forged_key, &claims(now), "EdDSA")),
            Err(JwtError::Signature)
        );
        // A key we do not have (or retired).
        assert_eq!(
            check(&sign(&other, &claims(now), "EdDSA")),
            Err(JwtError::UnknownKey)
        );
        // Tampered payload.
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut evil = claims(now);
        evil.sub = "admin".into();
        let evil_payload = B64.encode(serde_json::to_vec(&evil).unwrap());
        parts[1] = &evil_payload;
        assert_eq!(check(&parts.join(".")), Err(JwtError::Signature));
        // Expired, wrong audience, wrong issuer, another algorithm, garbage.
        let mut old = claims(now - 2000);
        old.exp = now - 10;
        assert_eq!(check(&sign(&key, &old, "EdDSA")), Err(JwtError::Expired));
        let mut aud = claims(now);
        aud.aud = "someone-else".into();
        assert_eq!(check(&sign(&key, &aud, "EdDSA")), Err(JwtError::Audience));
        let mut iss = claims(now);
        iss.iss = "https://evil.example.com".into();
        assert_eq!(check(&sign(&key, &iss, "EdDSA")), Err(JwtError::Audience));
        assert_eq!(
            check(&sign(&key, &claims(now), "none")),
            Err(JwtError::Algorithm)
        );
        assert_eq!(check("a.b"), Err(JwtError::Malformed));
        assert_eq!(check("a.b.c"), Err(JwtError::Malformed));
    }
}
