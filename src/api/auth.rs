//! Service accounts: bearer tokens, their hashes, and the role check applied by the route table.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::secrets::{Role, SecretsStore, StoreError};

/// How long the in-memory list of service accounts is trusted; a revocation made by another
/// process takes effect within this time.
const ACCOUNTS_TTL: Duration = Duration::from_secs(2);

/// The caller, as established by the bearer token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// A new service-account token: 256 random bits, URL-safe base64, with a recognisable prefix.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("tbx_{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The known accounts: token hash and principal.
type Accounts = Arc<Vec<([u8; 32], Principal)>>;

struct Snapshot {
    accounts: Accounts,
    loaded: Option<Instant>,
}

/// Checks bearer tokens against the stored hashes. The accounts are kept in memory so a request
/// costs one SHA-256 and constant-time comparisons, no database read.
pub struct Authenticator {
    store: Arc<dyn SecretsStore>,
    snapshot: RwLock<Snapshot>,
    reload: tokio::sync::Mutex<()>,
    limiter: Option<Limiter>,
}

type Limiter = governor::RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    governor::clock::DefaultClock,
>;

impl Authenticator {
    /// `rate_limit_per_second`: requests each service account may make per second (bursts of
    /// twice that); 0 disables the limit.
    pub fn new(store: Arc<dyn SecretsStore>, rate_limit_per_second: u32) -> Self {
        let limiter = std::num::NonZeroU32::new(rate_limit_per_second).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 > 0"));
            governor::RateLimiter::hashmap(governor::Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            store,
            snapshot: RwLock::new(Snapshot {
                accounts: Arc::new(Vec::new()),
                loaded: None,
            }),
            reload: tokio::sync::Mutex::new(()),
            limiter,
        }
    }

    /// `Err(seconds to wait)` when the account is over its rate.
    fn check_rate(&self, principal: &Principal) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&principal.name).map_err(|not_until| {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs() + 1
        })
    }

    fn current(&self) -> (Accounts, bool) {
        let s = self.snapshot.read().expect("auth snapshot poisoned");
        let fresh = s.loaded.is_some_and(|t| t.elapsed() < ACCOUNTS_TTL);
        (s.accounts.clone(), fresh)
    }

    async fn reload(&self) -> Result<Accounts, StoreError> {
        let _one_at_a_time = self.reload.lock().await;
        let (accounts, fresh) = self.current();
        if fresh {
            return Ok(accounts);
        }
        let loaded: Vec<_> = self
            .store
            .list_service_accounts()
            .await?
            .into_iter()
            .map(|a| {
                (
                    a.token_hash,
                    Principal {
                        name: a.name,
                        role: a.role,
                    },
                )
            })
            .collect();
        let loaded = Arc::new(loaded);
        *self.snapshot.write().expect("auth snapshot poisoned") = Snapshot {
            accounts: loaded.clone(),
            loaded: Some(Instant::now()),
        };
        Ok(loaded)
    }

    /// Forgets the cached accounts (after a change made through this process).
    pub fn invalidate(&self) {
        self.snapshot
            .write()
            .expect("auth snapshot poisoned")
            .loaded = None;
    }

    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_token(token);
        let (accounts, fresh) = self.current();
        let accounts = if fresh {
            accounts
        } else {
            self.reload().await?
        };
        // Compare against every account in constant time; no early exit on a match.
        let mut found = None;
        for (stored, principal) in accounts.iter() {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(principal.clone());
            }
        }
        Ok(found)
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware of the route table: authenticates the caller and checks the route's role. The
/// principal is handed to the handler as a request extension.
pub async fn require_role(
    auth: Arc<Authenticator>,
    role: Role,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(&request) else {
        return ApiError::Unauthorized.into_response();
    };
    let principal = match auth.authenticate(token).await {
        Ok(Some(p)) => p,
        Ok(None) => return ApiError::Unauthorized.into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(retry_after) = auth.check_rate(&principal) {
        return ApiError::RateLimited {
            message: format!(
                "service account '{}' exceeded its request rate; retry after {retry_after} s",
                principal.name
            ),
            retry_after,
        }
        .into_response();
    }
    if principal.role < role {
        return ApiError::Forbidden(format!(
            "this route requires the {} role; service account '{}' is {}",
            role.as_str(),
            principal.name,
            principal.role.as_str()
        ))
        .into_response();
    }
    let name = super::PrincipalName(principal.name.clone());
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(name);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_are_stable() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("tbx_") && a.len() == 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
