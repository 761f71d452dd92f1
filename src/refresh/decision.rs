//! The decision step of a refresh: what to do with this connection, for this request, now.
//!
//! A pure function of the connection as read under its lease, the request and the clock: no
//! database, no HTTP. `SecretsKeeper` carries out what it decides (serve, refuse, record the
//! revocation, or call the provider and settle the outcome). Each rule below is one line of
//! `shared/DESIGN.md`, "The refresh, step by step".

use crate::domain::{ConnectionStatus, StoredConnection};

/// When a refresh cannot happen and the caller gave no `min_validity`, a stored token is served
/// only if it stays valid at least this long (or half its lifetime, for short-lived tokens).
pub const STALE_FLOOR: i64 = 60;

/// What a caller asks of the token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token must stay valid at least this long (seconds).
    pub min_validity: Option<i64>,
    /// Refresh even if the stored token looks valid (the caller saw it rejected).
    pub force_refresh: bool,
}

/// Everything the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Situation<'a> {
    /// The connection as read under the lease.
    pub current: &'a StoredConnection,
    /// The version the caller saw before it joined the flight: a different one means another
    /// caller (or replica) wrote the connection meanwhile.
    pub seen_version: i64,
    pub request: TokenRequest,
    /// The configured refresh margin (`refresh_margin_seconds`).
    pub margin: i64,
    /// The margin the caller used to decide that a refresh was needed (the background refresher
    /// uses its own window); `None`: derived from `margin` and the request.
    pub refresh_within: Option<i64>,
    /// Whether the connector type has client credentials to refresh with.
    pub has_credentials: bool,
    /// Whether the connection holds what its credential kind needs to obtain a fresh
    /// credential without the tenant (a refresh token, for the refresh-token grant).
    pub renewable: bool,
    pub now: i64,
}

/// Why a caller is refused without a provider call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The grant is gone: the tenant must reconnect (409).
    ReauthorizationRequired,
    /// A refresh failed moments ago; the provider is left alone until then (503 or 502).
    BackingOff { retry_after: u64 },
    /// The caller asks for more validity than the provider's tokens ever have (400).
    MinValidityTooLong { min_validity: i64, lifetime: i64 },
    /// No client credentials: an operator problem, not the provider's (409).
    ConnectorNotConfigured,
}

/// What the keeper does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve the current token: it is good enough, or another flight just produced it.
    Serve,
    /// Serve the current token without refreshing: a refresh is not possible now, but the
    /// token still meets what the caller needs.
    ServeStale { backing_off: bool },
    /// Answer an error, without a provider call.
    Refuse(Refusal),
    /// The token expired and there is no refresh token: record `reauthorization_required`.
    MarkRevoked,
    /// Obtain a fresh credential from the provider.
    CallProvider,
}

/// The refresh margin for a connection: the configured margin, but never more than half the
/// lifetime of its access tokens (rule: "margin clamped to a fraction of t's lifetime").
pub fn margin_for(margin: i64, connection: &StoredConnection) -> i64 {
    match lifetime(connection) {
        Some(lifetime) => margin.min(lifetime / 2),
        None => margin,
    }
}

/// The lifetime of the connection's access tokens, when known: only for a token tokenbox
/// obtained itself by a refresh (an imported token may have been issued long before).
pub fn lifetime(connection: &StoredConnection) -> Option<i64> {
    let at = connection.tokens.expires_at?;
    let issued = connection.refreshed_at?;
    Some(at - issued).filter(|l| *l > 0)
}

/// How long before expiry a token is refreshed for this request (at least one second: an
/// expired token is never good enough).
pub fn refresh_within(margin: i64, connection: &StoredConnection, request: TokenRequest) -> i64 {
    request
        .min_validity
        .unwrap_or(0)
        .max(margin_for(margin, connection))
        .max(1)
}

/// Whether the token can be served on the hot path, before any flight or lease.
pub fn fresh_enough(
    margin: i64,
    connection: &StoredConnection,
    request: TokenRequest,
    now: i64,
) -> bool {
    connection.status == ConnectionStatus::Active
        && !request.force_refresh
        && connection
            .tokens
            .valid_for(now, refresh_within(margin, connection, request))
}

/// What a caller may still be served when no refresh happens: the validity it asked for, or
/// the stale floor (at most half the token's lifetime), and never an expired token.
pub fn hard_min(margin: i64, connection: &StoredConnection, request: TokenRequest) -> i64 {
    request
        .min_validity
        .unwrap_or(STALE_FLOOR.min(margin_for(margin, connection)))
        .max(1)
}

/// The decision step.
pub fn decide(s: &Situation<'_>) -> Decision {
    let current = s.current;
    let tokens = &current.tokens;
    let request = s.request;
    if current.status == ConnectionStatus::ReauthorizationRequired {
        return Decision::Refuse(Refusal::ReauthorizationRequired);
    }
    let within = s
        .refresh_within
        .unwrap_or_else(|| refresh_within(s.margin, current, request));
    let changed_meanwhile = current.version != s.seen_version;
    // Another replica or caller refreshed while we waited: serve what it stored.
    let good_enough = tokens.valid_for(s.now, within);
    if good_enough && (!request.force_refresh || changed_meanwhile) {
        return Decision::Serve;
    }
    // A waiter takes what the flight it waited on produced, if it is valid for what it asked.
    if changed_meanwhile && tokens.valid_for(s.now, request.min_validity.unwrap_or(0).max(1)) {
        return Decision::Serve;
    }
    let stale_ok = tokens.valid_for(s.now, hard_min(s.margin, current, request));
    if let Some(until) = current.backoff_until.filter(|until| *until > s.now) {
        return if stale_ok {
            Decision::ServeStale { backing_off: true }
        } else {
            Decision::Refuse(Refusal::BackingOff {
                retry_after: (until - s.now) as u64,
            })
        };
    }
    if !s.renewable {
        return if stale_ok {
            Decision::ServeStale { backing_off: false }
        } else {
            Decision::MarkRevoked
        };
    }
    if let (Some(min_validity), Some(lifetime)) = (request.min_validity, lifetime(current)) {
        if min_validity > lifetime {
            return Decision::Refuse(Refusal::MinValidityTooLong {
                min_validity,
                lifetime,
            });
        }
    }
    if !s.has_credentials {
        return if stale_ok {
            Decision::ServeStale { backing_off: false }
        } else {
            Decision::Refuse(Refusal::ConnectorNotConfigured)
        };
    }
    Decision::CallProvider
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, ConnectionKey, ConnectorTypeName, TokenSet};
    use crate::secret::Secret;

    const NOW: i64 = 1_800_000_000;
    const MARGIN: i64 = 300;

    /// A connection refreshed `age` seconds ago, whose token lives `lifetime` seconds.
    fn connection(age: i64, lifetime: i64) -> StoredConnection {
        StoredConnection {
            warned_refresh_expires_at: None,
            key: ConnectionKey::new(
                AppId::parse("acme").unwrap(),
                ConnectorTypeName::parse("github").unwrap(),
            ),
            tokens: TokenSet {
                refresh_expires_at: None,
                access_token: Secret::new("at".to_string()),
                refresh_token: Some(Secret::new("rt".to_string())),
                token_type: None,
                expires_at: Some(NOW - age + lifetime),
                scope: None,
                metadata: Default::default(),
                client: None,
            },
            status: ConnectionStatus::Active,
            version: 7,
            created_at: NOW - 86_400,
            updated_at: NOW - age,
            refreshed_at: Some(NOW - age),
            last_error: None,
            backoff_until: None,
            refresh_failures: 0,
            last_error_kind: None,
            refresh_interrupted_at: None,
        }
    }

    struct Case {
        rule: &'static str,
        current: StoredConnection,
        seen_version: i64,
        request: TokenRequest,
        has_credentials: bool,
        expected: Decision,
    }

    fn case(rule: &'static str, current: StoredConnection, expected: Decision) -> Case {
        Case {
            rule,
            seen_version: current.version,
            current,
            request: TokenRequest::default(),
            has_credentials: true,
            expected,
        }
    }

    fn with(mut c: Case, f: impl FnOnce(&mut Case)) -> Case {
        f(&mut c);
        c
    }

    fn min(seconds: i64) -> TokenRequest {
        TokenRequest {
            min_validity: Some(seconds),
            force_refresh: false,
        }
    }

    const FORCE: TokenRequest = TokenRequest {
        min_validity: None,
        force_refresh: true,
    };

    #[test]
    fn the_decision_follows_the_design_rules() {
        let cases = vec![
            case(
                "valid long enough -> serve it",
                connection(60, 3600),
                Decision::Serve,
            ),
            case(
                "within the margin -> refresh",
                connection(3400, 3600),
                Decision::CallProvider,
            ),
            case(
                "expired -> refresh",
                connection(4000, 3600),
                Decision::CallProvider,
            ),
            with(
                case(
                    "good_for(max(min_validity, margin)): min_validity beyond the remaining life -> refresh",
                    connection(1800, 3600),
                    Decision::CallProvider,
                ),
                |c| c.request = min(2400),
            ),
            with(
                case(
                    "good_for(max(min_validity, margin)): min_validity within the remaining life -> serve",
                    connection(1800, 3600),
                    Decision::Serve,
                ),
                |c| c.request = min(600),
            ),
            case(
                "margin clamped to a fraction of t's lifetime: a 60 s token 10 s old is served",
                connection(10, 60),
                Decision::Serve,
            ),
            case(
                "margin clamped to a fraction of t's lifetime: a 60 s token 40 s old is refreshed",
                connection(40, 60),
                Decision::CallProvider,
            ),
            with(
                case(
                    "force_refresh: the caller saw the token rejected -> refresh",
                    connection(60, 3600),
                    Decision::CallProvider,
                ),
                |c| c.request = FORCE,
            ),
            with(
                case(
                    "re-read: another caller refreshed meanwhile -> serve it, even when forced",
                    connection(0, 3600),
                    Decision::Serve,
                ),
                |c| {
                    c.request = FORCE;
                    c.seen_version = 6;
                },
            ),
            with(
                case(
                    "lost race: the flight we waited on produced a short-lived token -> take it",
                    connection(0, 20),
                    Decision::Serve,
                ),
                |c| c.seen_version = 6,
            ),
            with(
                case(
                    "lost race: what the other writer left is expired -> refresh",
                    connection(4000, 3600),
                    Decision::CallProvider,
                ),
                |c| c.seen_version = 6,
            ),
            with(
                case(
                    "status == reauthorization_required -> 409, no provider call",
                    connection(60, 3600),
                    Decision::Refuse(Refusal::ReauthorizationRequired),
                ),
                |c| c.current.status = ConnectionStatus::ReauthorizationRequired,
            ),
            with(
                case(
                    "transient -> back-off: no provider call, the still-valid token is served",
                    connection(3400, 3600),
                    Decision::ServeStale { backing_off: true },
                ),
                |c| c.current.backoff_until = Some(NOW + 30),
            ),
            with(
                case(
                    "transient -> back-off: no provider call, an expired token is refused with Retry-After",
                    connection(4000, 3600),
                    Decision::Refuse(Refusal::BackingOff { retry_after: 30 }),
                ),
                |c| c.current.backoff_until = Some(NOW + 30),
            ),
            with(
                case(
                    "back-off over -> call the provider again",
                    connection(4000, 3600),
                    Decision::CallProvider,
                ),
                |c| c.current.backoff_until = Some(NOW - 1),
            ),
            with(
                case(
                    "serve t if still valid: the stale token must still meet min_validity",
                    connection(3400, 3600),
                    Decision::Refuse(Refusal::BackingOff { retry_after: 30 }),
                ),
                |c| {
                    c.current.backoff_until = Some(NOW + 30);
                    c.request = min(600);
                },
            ),
            with(
                case(
                    "no refresh token and expired -> reauthorization_required",
                    connection(4000, 3600),
                    Decision::MarkRevoked,
                ),
                |c| c.current.tokens.refresh_token = None,
            ),
            with(
                case(
                    "no refresh token but still valid -> serve it as it is",
                    connection(3400, 3600),
                    Decision::ServeStale { backing_off: false },
                ),
                |c| c.current.tokens.refresh_token = None,
            ),
            with(
                case(
                    "non-expiring tokens are served as they are",
                    connection(60, 3600),
                    Decision::Serve,
                ),
                |c| c.current.tokens.expires_at = None,
            ),
            with(
                case(
                    "min_validity beyond the provider's lifetime -> 400, no refresh on every call",
                    connection(60, 3600),
                    Decision::Refuse(Refusal::MinValidityTooLong {
                        min_validity: 7200,
                        lifetime: 3600,
                    }),
                ),
                |c| c.request = min(7200),
            ),
            with(
                case(
                    "no client credentials: an operator problem, no provider call",
                    connection(4000, 3600),
                    Decision::Refuse(Refusal::ConnectorNotConfigured),
                ),
                |c| c.has_credentials = false,
            ),
            with(
                case(
                    "no client credentials, token still valid for the stale floor -> serve it",
                    connection(3400, 3600),
                    Decision::ServeStale { backing_off: false },
                ),
                |c| c.has_credentials = false,
            ),
            with(
                case(
                    "an imported token's lifetime is unknown: the full margin applies",
                    connection(10, 120),
                    Decision::CallProvider,
                ),
                |c| c.current.refreshed_at = None,
            ),
            with(
                case(
                    "never serve an expired token: one that expires now is refreshed",
                    connection(3600, 3600),
                    Decision::CallProvider,
                ),
                |c| c.request = min(0),
            ),
        ];
        assert!(cases.len() >= 15);
        for c in cases {
            let situation = Situation {
                current: &c.current,
                seen_version: c.seen_version,
                request: c.request,
                margin: MARGIN,
                refresh_within: None,
                has_credentials: c.has_credentials,
                renewable: c.current.tokens.refresh_token.is_some(),
                now: NOW,
            };
            assert_eq!(decide(&situation), c.expected, "rule: {}", c.rule);
        }
    }

    #[test]
    fn the_hot_path_serves_only_what_the_decision_would_serve() {
        let short = connection(10, 60);
        assert!(fresh_enough(MARGIN, &short, TokenRequest::default(), NOW));
        assert!(!fresh_enough(MARGIN, &short, FORCE, NOW));
        let old = connection(40, 60);
        assert!(!fresh_enough(MARGIN, &old, TokenRequest::default(), NOW));
        let mut revoked = connection(10, 3600);
        revoked.status = ConnectionStatus::ReauthorizationRequired;
        assert!(!fresh_enough(
            MARGIN,
            &revoked,
            TokenRequest::default(),
            NOW
        ));
    }
}
