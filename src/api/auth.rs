//! Service accounts: bearer tokens, their hashes, and the role check applied by the route table.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::store::{AccountScope, Role, SecretsStore, StoreError};
use crate::workload::{WorkloadIdentity, WorkloadVerifier};

/// How long the in-memory list of service accounts is trusted; a revocation made by another
/// process takes effect within this time (unless configured: `accounts_cache_seconds`).
const ACCOUNTS_TTL: Duration = Duration::from_secs(2);
/// An unknown token makes the accounts be read again, at most this often.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// The caller, as established by the bearer token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// What a scoped account may use; `None` is unrestricted.
    pub scope: Option<AccountScope>,
    pub expires_at: Option<i64>,
    /// The account's generation: changes when an account is deleted and created again under
    /// the same name, so JWTs issued to the earlier account stop working.
    pub generation: String,
    /// The workload acting as the account, when the credential is a trusted issuer's token.
    pub workload: Option<WorkloadIdentity>,
}

/// The generation of an account, derived from its token hash: every creation draws a new
/// random token (unique in the table), so a re-created account has a new generation. It is a
/// one-way digest of a hash: it reveals nothing that helps find the token.
pub fn account_generation(token_hash: &[u8; 32]) -> String {
    let mut digest = Sha256::new();
    digest.update(b"tokenbox/v1\0account-generation\0");
    digest.update(token_hash);
    URL_SAFE_NO_PAD.encode(&digest.finalize()[..12])
}

/// The known accounts: token hash and principal, and an index by token hash.
#[derive(Default)]
struct Known {
    list: Vec<([u8; 32], Principal)>,
    by_hash: std::collections::HashMap<[u8; 32], usize>,
}

impl Known {
    fn new(list: Vec<([u8; 32], Principal)>) -> Self {
        let by_hash = list
            .iter()
            .enumerate()
            .map(|(i, (hash, _))| (*hash, i))
            .collect();
        Self { list, by_hash }
    }

    fn iter(&self) -> std::slice::Iter<'_, ([u8; 32], Principal)> {
        self.list.iter()
    }
}

type Accounts = Arc<Known>;

struct Snapshot {
    accounts: Accounts,
    loaded: Option<Instant>,
}

/// Checks bearer tokens against the stored hashes. The accounts are kept in memory so a request
/// costs one SHA-256 and constant-time comparisons, no database read.
pub struct Authenticator {
    store: Arc<dyn SecretsStore>,
    snapshot: RwLock<Snapshot>,
    accounts_ttl: Duration,
    reload: tokio::sync::Mutex<()>,
    last_miss_reload: std::sync::Mutex<Option<Instant>>,
    limiter: Option<Limiter>,
    jwt: Arc<crate::jwt::JwtIssuer>,
    workload: Option<Arc<WorkloadVerifier>>,
}

type Limiter = governor::RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    governor::clock::DefaultClock,
>;

impl Authenticator {
    /// `rate_limit_per_second`: requests each service account may make per second (bursts of
    /// twice that); 0 disables the limit.
    pub fn new(
        store: Arc<dyn SecretsStore>,
        rate_limit_per_second: u32,
        jwt: Arc<crate::jwt::JwtIssuer>,
    ) -> Self {
        let limiter = std::num::NonZeroU32::new(rate_limit_per_second).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 > 0"));
            governor::RateLimiter::hashmap(governor::Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            store,
            snapshot: RwLock::new(Snapshot {
                accounts: Arc::new(Known::default()),
                loaded: None,
            }),
            accounts_ttl: ACCOUNTS_TTL,
            reload: tokio::sync::Mutex::new(()),
            last_miss_reload: std::sync::Mutex::new(None),
            limiter,
            jwt,
            workload: None,
        }
    }

    /// Accepts the JWTs of the trusted issuers (`[[trusted_issuers]]`) as their mapped
    /// accounts.
    pub fn with_workload(mut self, workload: Arc<WorkloadVerifier>) -> Self {
        self.workload = (!workload.is_empty()).then_some(workload);
        self
    }

    /// How long the accounts read from the store are trusted (0: read on every request).
    pub fn with_accounts_ttl(mut self, ttl: Duration) -> Self {
        self.accounts_ttl = ttl;
        self
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
        let fresh = s.loaded.is_some_and(|t| t.elapsed() < self.accounts_ttl);
        (s.accounts.clone(), fresh)
    }

    /// Reloads the accounts unless they were loaded less than `max_age` ago.
    async fn reload(&self, max_age: Duration) -> Result<Accounts, StoreError> {
        let _one_at_a_time = self.reload.lock().await;
        let (accounts, young) = {
            let s = self.snapshot.read().expect("auth snapshot poisoned");
            (
                s.accounts.clone(),
                s.loaded.is_some_and(|t| t.elapsed() < max_age),
            )
        };
        if young {
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
                        generation: account_generation(&a.token_hash),
                        name: a.name,
                        role: a.role,
                        scope: a.scope,
                        expires_at: a.expires_at,
                        workload: None,
                    },
                )
            })
            .collect();
        let loaded = Arc::new(Known::new(loaded));
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
        if crate::jwt::looks_like_jwt(token) {
            return Ok(self.authenticate_bearer_jwt(token).await?.ok());
        }
        let hash = crate::token::hash(token);
        let (accounts, fresh) = self.current();
        let accounts = if fresh {
            accounts
        } else {
            self.reload(self.accounts_ttl).await?
        };
        if let Some(found) = find(&accounts, &hash) {
            return Ok(Some(found));
        }
        // Unknown: maybe an account created a moment ago by the CLI. Look again, at most a
        // few times a second whatever the number of bad tokens.
        {
            let mut last = self.last_miss_reload.lock().expect("poisoned");
            if last.is_some_and(|t| t.elapsed() < MISS_RELOAD_INTERVAL) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let accounts = self.reload(Duration::ZERO).await?;
        Ok(find(&accounts, &hash))
    }
}

impl Authenticator {
    /// A JWT: a trusted issuer's workload token (when its `iss` is one) or one of tokenbox's
    /// own; `Err` says why it was refused, a sentence safe to answer (RFC 8693's
    /// `invalid_grant` description).
    pub async fn authenticate_bearer_jwt(
        &self,
        token: &str,
    ) -> Result<Result<Principal, String>, StoreError> {
        if let Some(workload) = &self.workload {
            if let Some(verdict) = workload.verify(token).await {
                return match verdict {
                    Ok(workload) => self.workload_principal(workload).await,
                    Err(e) => Ok(Err(e.to_string())),
                };
            }
        }
        Ok(self
            .authenticate_jwt(token)
            .await?
            .ok_or_else(|| "the token is not a valid tokenbox JWT nor a trusted issuer's".into()))
    }

    /// The account a workload token maps to, as it is now (role, scope, expiry): a mapping
    /// to an account that does not exist is refused, and the principal expires with the
    /// token or the account, whichever comes first.
    async fn workload_principal(
        &self,
        workload: crate::workload::Workload,
    ) -> Result<Result<Principal, String>, StoreError> {
        let Some((_, account)) = self.account(&workload.account).await? else {
            tracing::warn!(
                issuer = %workload.identity.issuer,
                sub = %workload.identity.subject,
                account = %workload.account,
                "a trusted issuer's rule maps to a service account that does not exist"
            );
            return Ok(Err(format!(
                "the subject maps to service account '{}', which does not exist",
                workload.account
            )));
        };
        Ok(Ok(Principal {
            expires_at: Some(
                account
                    .expires_at
                    .map_or(workload.expires_at, |at| at.min(workload.expires_at)),
            ),
            workload: Some(workload.identity),
            ..account
        }))
    }

    /// A JWT of the client-credentials grant: valid signature, key, expiry and audience, and
    /// an account that still exists (a revoked account's tokens stop working too).
    async fn authenticate_jwt(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let claims = match self.jwt.verify(token).await? {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(reason = %e, "JWT refused");
                return Ok(None);
            }
        };
        let (accounts, fresh) = self.current();
        let accounts = if fresh {
            accounts
        } else {
            self.reload(self.accounts_ttl).await?
        };
        // The account must be the very one the token was issued to: an account deleted and
        // created again under the same name (its client id) has another generation.
        Ok(accounts
            .iter()
            .find(|(_, p)| p.name == claims.sub)
            .filter(|(_, account)| {
                let same = claims
                    .gen
                    .as_deref()
                    .is_some_and(|g| bool::from(g.as_bytes().ct_eq(account.generation.as_bytes())));
                if !same {
                    tracing::debug!("JWT refused: issued to an earlier account of that name");
                }
                same
            })
            .map(|(_, account)| Principal {
                name: claims.sub.clone(),
                role: claims.role.min(account.role),
                // The account's scope as it is now wins over the one in the token.
                scope: account.scope.clone().or_else(|| claims.scope.clone()),
                expires_at: Some(claims.exp),
                generation: account.generation.clone(),
                workload: None,
            }))
    }

    /// The account named `name` as currently known (within the accounts TTL), with the hash of
    /// its token: a session of the /admin page follows its account's expiry and revocation.
    pub async fn account(&self, name: &str) -> Result<Option<([u8; 32], Principal)>, StoreError> {
        let (accounts, fresh) = self.current();
        let accounts = if fresh {
            accounts
        } else {
            self.reload(self.accounts_ttl).await?
        };
        Ok(accounts.iter().find(|(_, p)| p.name == name).cloned())
    }

    /// The account behind client credentials (RFC 6749 §2.3.1): its name and its secret.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Option<Principal>, StoreError> {
        Ok(self
            .authenticate(client_secret)
            .await?
            .filter(|p| p.name == client_id && !crate::jwt::looks_like_jwt(client_secret))
            .filter(|p| {
                p.expires_at
                    .is_none_or(|at| at > crate::domain::now_epoch())
            }))
    }
}

/// The account whose token has this SHA-256: a hash-map lookup, then a constant-time
/// comparison of the whole hash.
///
/// This used to be a constant-time scan of every account. What a scan protects is the stored
/// hashes against a timing attack, which the lookup does not need: the key is the SHA-256 of
/// the presented token, which the caller cannot steer towards a stored hash without a preimage,
/// so how long the lookup takes (bucket, partial matches) tells nothing about any stored token.
/// Tokens themselves are never compared; the final `ct_eq` keeps the equality check constant
/// time all the same.
fn find(accounts: &Accounts, hash: &[u8; 32]) -> Option<Principal> {
    let (stored, principal) = &accounts.list[*accounts.by_hash.get(hash)?];
    bool::from(stored.ct_eq(hash)).then(|| principal.clone())
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
    // A refusal of a real account is audited under its name (and its workload), not as
    // anonymous.
    let refused = |error: ApiError, principal: &Principal| {
        let mut response = error.into_response();
        mark(&mut response, principal);
        response
    };
    // A scoped account is judged on the decoded, validated path parameters the handler
    // will use.
    let key = if principal.scope.is_some() {
        super::route_key(&mut request)
    } else {
        None
    };
    if let Err(error) = auth.admit(&principal, role, key.as_ref()) {
        return refused(error, &principal);
    }
    let name = super::PrincipalName(principal.name.clone());
    let workload = principal.workload.clone().map(super::WorkloadCaller);
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(name);
    if let Some(workload) = workload {
        response.extensions_mut().insert(workload);
    }
    response
}

/// Marks a response with its caller, for the access log and the audit trail: the account's
/// name and, for a workload token, the workload.
pub fn mark(response: &mut Response, principal: &Principal) {
    let extensions = response.extensions_mut();
    extensions.insert(super::PrincipalName(principal.name.clone()));
    if let Some(workload) = &principal.workload {
        extensions.insert(super::WorkloadCaller(workload.clone()));
    }
}

impl Authenticator {
    /// What a route checks once the caller is known, in order: the principal's expiry, its
    /// request rate, the route's role, and a scoped account's scope against the connection
    /// the route names (`key`; `None` on a route that names none, which a scoped account may
    /// not call).
    pub fn admit(
        &self,
        principal: &Principal,
        role: Role,
        key: Option<&crate::domain::ConnectionKey>,
    ) -> Result<(), ApiError> {
        if principal
            .expires_at
            .is_some_and(|at| at <= crate::domain::now_epoch())
        {
            return Err(ApiError::Unauthorized);
        }
        if let Err(retry_after) = self.check_rate(principal) {
            return Err(ApiError::RateLimited {
                message: format!(
                    "service account '{}' exceeded its request rate; retry after {retry_after} s",
                    principal.name
                ),
                retry_after,
            });
        }
        if principal.role < role {
            return Err(ApiError::Forbidden(format!(
                "this route requires the {} role; service account '{}' is {}",
                role.as_str(),
                principal.name,
                principal.role.as_str()
            )));
        }
        if let Some(scope) = &principal.scope {
            // A scoped account may use the per-app routes of its apps and connector types only.
            let verdict = match key {
                Some(key) => scope.allows(key.app_id.as_str(), key.connector_type.as_str()),
                None => {
                    Err("a scoped account may only call the per-app routes of its scope".into())
                }
            };
            if let Err(reason) = verdict {
                return Err(ApiError::Forbidden(format!(
                    "service account '{}' may not do this: {reason}",
                    principal.name
                )));
            }
        }
        Ok(())
    }
}
