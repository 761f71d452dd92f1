//! Workload identity: the JWTs that platforms give the jobs they run (Kubernetes projected
//! service-account tokens, GitHub Actions or GitLab CI OIDC tokens, cloud workload identities),
//! accepted as credentials when their issuer is trusted (`[[trusted_issuers]]`).
//!
//! A token is verified against its issuer's JSON Web Key Set (RFC 7517): the key is the one
//! the token's `kid` names in that set, never one the token itself points to (`jwk`, `jku`,
//! `x5u`, `x5c` headers are ignored), with one of the issuer's asymmetric algorithms (never
//! `none` or HMAC). `iss` must be the issuer, `aud` must contain its audience, `exp` must be
//! present, and `exp`, `nbf` and `iat` are checked with the issuer's leeway. Then the issuer's
//! rules, in order, map the token to a service account: the first whose `subject` pattern
//! matches `sub` and whose claims all match wins; a token no rule matches is refused.
//!
//! The key set is kept in memory for `jwks_cache_seconds` and fetched again on a token signed
//! by a key it does not hold, at most once per `jwks_min_refetch_seconds`; one fetch at a time
//! per issuer (the callers that wait share its result). When the key set cannot be fetched,
//! the keys fetched last keep verifying until `jwks_max_stale_seconds` after that fetch.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{TrustedIssuerRule, TrustedIssuerSpec};
use crate::connectors::Provider;
use crate::domain::now_epoch;
use crate::store::glob_match;

/// Who a workload is, as its token says: recorded beside the service account it acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub issuer: String,
    pub subject: String,
}

/// A token accepted: the workload, the account it acts as, and when the token expires.
#[derive(Clone, Debug)]
pub struct Workload {
    pub identity: WorkloadIdentity,
    pub account: String,
    pub expires_at: i64,
}

/// Why a token was refused; a sentence safe to log and to answer (it never quotes the token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted for this issuer")]
    Algorithm(String),
    #[error("the token's signing key is not in the issuer's key set")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the token is not meant for tokenbox (audience)")]
    Audience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("no rule of the issuer maps this subject to a service account")]
    NoRule,
    #[error("the issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// One verification key of an issuer's key set.
struct Key {
    kid: Option<String>,
    /// The algorithm the set pins the key to (`alg`), if any.
    alg: Option<Algorithm>,
    /// The algorithms the key's type and curve can verify.
    fits: fn(Algorithm) -> bool,
    decoding: DecodingKey,
}

impl Key {
    fn from_jwk(jwk: &Value) -> Option<Self> {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).ok()?;
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        let fits: fn(Algorithm) -> bool = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => |alg| {
                matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
            },
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => |alg| alg == Algorithm::ES256,
                EllipticCurve::P384 => |alg| alg == Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                |alg| alg == Algorithm::EdDSA
            }
            // A symmetric key in a public key set is never used: an HMAC "signature" with a
            // published secret proves nothing.
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            Some(alg) => Some(Algorithm::from_str(&alg.to_string()).ok()?),
            None => None,
        };
        Some(Self {
            kid: jwk.common.key_id.clone(),
            alg,
            fits,
            decoding: DecodingKey::from_jwk(&jwk).ok()?,
        })
    }

    fn verifies(&self, alg: Algorithm) -> bool {
        (self.fits)(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The keys of an issuer as last fetched.
#[derive(Default)]
struct KeyCache {
    keys: Arc<Vec<Key>>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last attempt, and its error when it failed.
    attempted: Option<Instant>,
    last_error: Option<String>,
    /// Counts the attempts: a caller that waited for another's fetch uses its result.
    generation: u64,
}

struct Issuer {
    spec: TrustedIssuerSpec,
    audience: String,
    algorithms: Vec<Algorithm>,
    cache: RwLock<KeyCache>,
    /// Held while the key set is fetched: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Issuer {
    fn seconds(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    /// Whether keys fetched at `fetched` may still verify, the key set being unreachable
    /// since (or not asked again yet).
    fn usable(&self, fetched: Option<Instant>) -> bool {
        let bound = Self::seconds(
            self.spec
                .jwks_cache_seconds
                .max(self.spec.jwks_max_stale_seconds),
        );
        fetched.is_some_and(|at| at.elapsed() <= bound)
    }
}

/// Verifies the tokens of the trusted issuers and maps them to service accounts.
pub struct WorkloadVerifier {
    issuers: Vec<Issuer>,
    provider: Provider,
}

impl WorkloadVerifier {
    /// The configured issuers (checked by the configuration already).
    pub fn new(specs: &[TrustedIssuerSpec], provider: Provider) -> Self {
        let issuers = specs
            .iter()
            .map(|spec| Issuer {
                audience: spec.audience.clone().unwrap_or_default(),
                algorithms: spec
                    .algorithms
                    .iter()
                    .filter_map(|a| Algorithm::from_str(a).ok())
                    .filter(|a| {
                        !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                    })
                    .collect(),
                spec: spec.clone(),
                cache: RwLock::new(KeyCache::default()),
                fetching: tokio::sync::Mutex::new(()),
            })
            .collect();
        Self { issuers, provider }
    }

    /// Whether any issuer is trusted.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The trusted issuer a JWT claims to come from (its `iss`, not yet verified).
    fn issuer_of(&self, token: &str) -> Option<&Issuer> {
        if self.issuers.is_empty() {
            return None;
        }
        let payload = token.split('.').nth(1)?;
        let claims: Map<String, Value> = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        self.issuers.iter().find(|i| i.spec.issuer == iss)
    }

    /// Verifies a token of a trusted issuer and maps it to an account; `None` when the token
    /// does not claim to come from one (it may be one of tokenbox's own).
    pub async fn verify(&self, token: &str) -> Option<Result<Workload, WorkloadError>> {
        let issuer = self.issuer_of(token)?;
        let verdict = self.verify_with(issuer, token).await;
        match &verdict {
            Ok(w) => tracing::debug!(
                issuer = %w.identity.issuer,
                sub = %w.identity.subject,
                account = %w.account,
                "workload token accepted"
            ),
            Err(e) => {
                tracing::debug!(issuer = %issuer.spec.issuer, reason = %e, "workload token refused")
            }
        }
        Some(verdict)
    }

    async fn verify_with(&self, issuer: &Issuer, token: &str) -> Result<Workload, WorkloadError> {
        // The header as sent: `alg: none` and unknown algorithms are refused by name.
        let header: Map<String, Value> = token
            .split('.')
            .next()
            .and_then(|h| B64.decode(h).ok())
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(WorkloadError::Malformed)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(WorkloadError::Malformed)?;
        let alg = Algorithm::from_str(alg_name)
            .ok()
            .filter(|alg| issuer.algorithms.contains(alg))
            .ok_or_else(|| {
                // Quoted back to the caller and logged: printable characters only.
                WorkloadError::Algorithm(
                    alg_name
                        .chars()
                        .filter(char::is_ascii_graphic)
                        .take(16)
                        .collect(),
                )
            })?;
        let kid = header.get("kid").and_then(Value::as_str);

        let (keys, generation) = self.keys(issuer).await?;
        let key = match find(&keys, kid, alg) {
            Some(key) => key,
            None => {
                // A key the set did not hold: the issuer may have rotated its keys.
                let (keys, _) = self.refetch(issuer, generation).await?;
                return self.check(issuer, token, find(&keys, kid, alg), alg);
            }
        };
        self.check(issuer, token, Some(key), alg)
    }

    /// The signature and the claims, then the rules.
    fn check(
        &self,
        issuer: &Issuer,
        token: &str,
        key: Option<&Key>,
        alg: Algorithm,
    ) -> Result<Workload, WorkloadError> {
        let key = key.ok_or(WorkloadError::UnknownKey)?;
        let mut validation = Validation::new(alg);
        validation.set_audience(&[issuer.audience.as_str()]);
        validation.set_issuer(&[issuer.spec.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = issuer.spec.leeway_seconds;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => WorkloadError::Signature,
                    ErrorKind::ExpiredSignature => WorkloadError::Expired,
                    ErrorKind::ImmatureSignature => WorkloadError::NotYetValid,
                    ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                        WorkloadError::Audience
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        WorkloadError::MissingClaim(claim.clone())
                    }
                    ErrorKind::InvalidAlgorithm => WorkloadError::Algorithm(format!("{alg:?}")),
                    _ => WorkloadError::Malformed,
                }
            })?
            .claims;
        let leeway = i64::try_from(issuer.spec.leeway_seconds).unwrap_or(i64::MAX);
        let now = now_epoch();
        if claims
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(WorkloadError::NotYetValid);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| WorkloadError::MissingClaim("sub".into()))?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| WorkloadError::MissingClaim("exp".into()))?;
        let (n, rule) = issuer
            .spec
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule_matches(rule, subject, &claims))
            .ok_or(WorkloadError::NoRule)?;
        tracing::debug!(issuer = %issuer.spec.issuer, sub = %subject, rule = n + 1, account = %rule.account, "workload rule matched");
        Ok(Workload {
            identity: WorkloadIdentity {
                issuer: issuer.spec.issuer.clone(),
                subject: subject.to_string(),
            },
            account: rule.account.clone(),
            expires_at,
        })
    }

    /// The issuer's keys, fetched when none are held or when they are older than the cache
    /// lifetime (and the last attempt is older than the refetch interval), with the cache's
    /// generation.
    async fn keys(&self, issuer: &Issuer) -> Result<(Arc<Vec<Key>>, u64), WorkloadError> {
        let (keys, fetched, generation, due) = {
            let cache = issuer.cache.read().expect("key cache poisoned");
            let stale = cache
                .fetched
                .is_none_or(|at| at.elapsed() >= Issuer::seconds(issuer.spec.jwks_cache_seconds));
            (
                cache.keys.clone(),
                cache.fetched,
                cache.generation,
                stale && self.may_fetch(issuer, &cache),
            )
        };
        if due {
            return self.fetch_once(issuer, generation).await;
        }
        if issuer.usable(fetched) {
            Ok((keys, generation))
        } else {
            let reason = issuer
                .cache
                .read()
                .expect("key cache poisoned")
                .last_error
                .clone()
                .unwrap_or_else(|| "not fetched yet".into());
            Err(WorkloadError::KeysUnavailable(reason))
        }
    }

    /// The keys after a token named a key that the keys of `generation` lacked: fetched
    /// again unless another caller did since, or the last attempt is too recent.
    async fn refetch(
        &self,
        issuer: &Issuer,
        generation: u64,
    ) -> Result<(Arc<Vec<Key>>, u64), WorkloadError> {
        let due = {
            let cache = issuer.cache.read().expect("key cache poisoned");
            cache.generation == generation && self.may_fetch(issuer, &cache)
        };
        if due {
            self.fetch_once(issuer, generation).await
        } else {
            let cache = issuer.cache.read().expect("key cache poisoned");
            Ok((cache.keys.clone(), cache.generation))
        }
    }

    /// Whether the refetch interval since the last attempt has passed.
    fn may_fetch(&self, issuer: &Issuer, cache: &KeyCache) -> bool {
        cache
            .attempted
            .is_none_or(|at| at.elapsed() >= Issuer::seconds(issuer.spec.jwks_min_refetch_seconds))
    }

    /// Fetches the key set, one caller at a time: a caller that waited while another fetched
    /// (the generation moved on) takes that result. A failed fetch keeps the old keys, usable
    /// until `jwks_max_stale_seconds` after they were fetched.
    async fn fetch_once(
        &self,
        issuer: &Issuer,
        generation: u64,
    ) -> Result<(Arc<Vec<Key>>, u64), WorkloadError> {
        let _one_at_a_time = issuer.fetching.lock().await;
        let outcome = {
            let cache = issuer.cache.read().expect("key cache poisoned");
            (cache.generation != generation).then(|| {
                (
                    cache.keys.clone(),
                    cache.fetched,
                    cache.generation,
                    cache.last_error.clone(),
                )
            })
        };
        let (keys, fetched, generation, error) = match outcome {
            Some(done) => done,
            None => {
                let result = self.fetch(issuer).await;
                let mut cache = issuer.cache.write().expect("key cache poisoned");
                let now = Instant::now();
                cache.attempted = Some(now);
                cache.generation += 1;
                match result {
                    Ok(keys) => {
                        tracing::debug!(issuer = %issuer.spec.issuer, keys = keys.len(), "issuer key set fetched");
                        cache.keys = Arc::new(keys);
                        cache.fetched = Some(now);
                        cache.last_error = None;
                    }
                    Err(reason) => {
                        tracing::warn!(issuer = %issuer.spec.issuer, reason = %reason, "the issuer's key set could not be fetched; the keys fetched last keep verifying for jwks_max_stale_seconds");
                        cache.last_error = Some(reason);
                    }
                }
                (
                    cache.keys.clone(),
                    cache.fetched,
                    cache.generation,
                    cache.last_error.clone(),
                )
            }
        };
        match error {
            None => Ok((keys, generation)),
            Some(_)
                if fetched.is_some_and(|at| {
                    at.elapsed() <= Issuer::seconds(issuer.spec.jwks_max_stale_seconds)
                }) =>
            {
                Ok((keys, generation))
            }
            Some(reason) => Err(WorkloadError::KeysUnavailable(reason)),
        }
    }

    /// The key set's URL (from the discovery document when configured so), then the set.
    async fn fetch(&self, issuer: &Issuer) -> Result<Vec<Key>, String> {
        let private = issuer.spec.private_network;
        let url = match (&issuer.spec.jwks_url, issuer.spec.discovery) {
            (Some(url), _) => url.clone(),
            (None, _) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.spec.issuer.trim_end_matches('/')
                );
                let document = self
                    .provider
                    .fetch_json(&url, private)
                    .await
                    .map_err(|e| format!("discovery document: {e}"))?;
                if document.get("issuer").and_then(Value::as_str) != Some(&issuer.spec.issuer) {
                    return Err(
                        "the discovery document names another issuer than the configured one"
                            .into(),
                    );
                }
                document
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("the discovery document has no jwks_uri")?
                    .to_string()
            }
        };
        let set = self
            .provider
            .fetch_json(&url, private)
            .await
            .map_err(|e| format!("key set: {e}"))?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no keys array")?;
        Ok(keys.iter().filter_map(Key::from_jwk).collect())
    }
}

/// The key a token names: by `kid`; without a `kid`, the only key that fits the algorithm.
fn find<'k>(keys: &'k [Key], kid: Option<&str>, alg: Algorithm) -> Option<&'k Key> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid) && k.verifies(alg)),
        None => {
            let mut fitting = keys.iter().filter(|k| k.verifies(alg));
            let only = fitting.next()?;
            fitting.next().is_none().then_some(only)
        }
    }
}

/// Whether `rule` maps a token: its subject pattern matches `sub` and every claim it names
/// equals the token's (a string claim as it is, a number or boolean as its JSON text).
fn rule_matches(rule: &TrustedIssuerRule, subject: &str, claims: &Map<String, Value>) -> bool {
    glob_match(&rule.subject, subject)
        && rule
            .claims
            .iter()
            .all(|(path, wanted)| match claim(claims, path) {
                Some(Value::String(s)) => s == wanted,
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    serde_json::from_str::<Value>(wanted).ok().as_ref() == Some(v)
                }
                _ => false,
            })
}

/// A claim by name, or by dotted path into nested objects (`kubernetes.io.namespace` is
/// `namespace` inside the `kubernetes.io` object): a key that contains dots is matched whole
/// before the path is split.
fn claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.match_indices('.').find_map(|(i, _)| {
        let inner = claims.get(&path[..i])?.as_object()?;
        claim(inner, &path[i + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(subject: &str, claims: &[(&str, &str)]) -> TrustedIssuerRule {
        TrustedIssuerRule {
            subject: subject.into(),
            account: "extraction".into(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn nested_claims_are_found_by_their_dotted_path() {
        let claims = map(json!({
            "sub": "system:serviceaccount:extract:runner",
            "kubernetes.io": {
                "namespace": "extract",
                "serviceaccount": {"name": "runner", "uid": "u-1"}
            },
            "a.b": "whole key",
            "n": 7,
            "flag": true
        }));
        assert_eq!(
            claim(&claims, "kubernetes.io.namespace"),
            Some(&json!("extract"))
        );
        assert_eq!(
            claim(&claims, "kubernetes.io.serviceaccount.name"),
            Some(&json!("runner"))
        );
        assert_eq!(claim(&claims, "a.b"), Some(&json!("whole key")));
        assert_eq!(claim(&claims, "kubernetes.io.missing"), None);
        assert_eq!(claim(&claims, "kubernetes"), None);
        let sub = "system:serviceaccount:extract:runner";
        assert!(rule_matches(
            &rule(
                "system:serviceaccount:extract:*",
                &[("kubernetes.io.namespace", "extract")]
            ),
            sub,
            &claims
        ));
        assert!(!rule_matches(
            &rule(
                "system:serviceaccount:extract:*",
                &[("kubernetes.io.namespace", "other")]
            ),
            sub,
            &claims
        ));
        assert!(!rule_matches(
            &rule("system:serviceaccount:other:*", &[]),
            sub,
            &claims
        ));
        assert!(rule_matches(
            &rule("*", &[("n", "7"), ("flag", "true")]),
            sub,
            &claims
        ));
        // An object or a missing claim never equals a string.
        assert!(!rule_matches(
            &rule("*", &[("kubernetes.io", "x")]),
            sub,
            &claims
        ));
        assert!(!rule_matches(&rule("*", &[("absent", "")]), sub, &claims));
    }

    #[test]
    fn subject_patterns_are_globs_on_the_whole_subject() {
        let claims = Map::new();
        for (pattern, subject, matches) in [
            (
                "repo:acme/jobs:*",
                "repo:acme/jobs:ref:refs/heads/main",
                true,
            ),
            (
                "repo:acme/jobs:*",
                "repo:acme/jobs-evil:ref:refs/heads/main",
                false,
            ),
            (
                "repo:acme/jobs:ref:refs/heads/main",
                "repo:acme/jobs:ref:refs/heads/main",
                true,
            ),
            (
                "repo:acme/jobs:ref:refs/heads/main",
                "repo:acme/jobs:ref:refs/heads/mainx",
                false,
            ),
            (
                "system:serviceaccount:*:runner",
                "system:serviceaccount:extract:runner",
                true,
            ),
            (
                "system:serviceaccount:*:runner",
                "system:serviceaccount:extract:runner2",
                false,
            ),
            ("*", "anything", true),
        ] {
            assert_eq!(
                rule_matches(&rule(pattern, &[]), subject, &claims),
                matches,
                "{pattern} ~ {subject}"
            );
        }
    }

    #[test]
    fn symmetric_and_encryption_keys_of_a_key_set_are_never_used() {
        assert!(Key::from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})).is_none());
        let x = B64.encode([7u8; 32]);
        assert!(
            Key::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "enc"})).is_none()
        );
        let key =
            Key::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "e"})).unwrap();
        assert!(key.verifies(Algorithm::EdDSA));
        assert!(!key.verifies(Algorithm::ES256) && !key.verifies(Algorithm::HS256));
        let pinned =
            Key::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}))
                .unwrap();
        assert!(pinned.verifies(Algorithm::EdDSA));
        // Without a kid, only a single fitting key is chosen.
        let keys = vec![key, pinned];
        assert!(find(&keys, None, Algorithm::EdDSA).is_none());
        assert!(find(&keys, Some("e"), Algorithm::EdDSA).is_some());
        assert!(find(&keys[..1], None, Algorithm::EdDSA).is_some());
    }
}
