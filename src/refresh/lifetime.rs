//! Refresh-token lifetimes and the early warning before they end: pure functions of `now`,
//! so that their tests move a simulated clock instead of sleeping.

use crate::connectors::ConnectorType;

/// The refresh token's deadline when a grant is stored (import, signup, connect): the
/// provider's `refresh_token_expires_in` (already turned into `explicit`), else the catalog's
/// idle and absolute lifetimes counted from `now`, the earlier of the two; `None` when unknown.
pub fn at_grant(ct: &ConnectorType, explicit: Option<i64>, now: i64) -> Option<i64> {
    explicit.or_else(|| {
        let idle = ct.refresh_token_idle_seconds.map(|s| now.saturating_add(s));
        let absolute = ct
            .refresh_token_lifetime_seconds
            .map(|s| now.saturating_add(s));
        earlier(idle, absolute)
    })
}

/// What a refresh does to the deadline.
#[derive(Debug, PartialEq, Eq)]
pub struct AfterRefresh {
    pub refresh_expires_at: Option<i64>,
    /// The refresh could not push the deadline back (an absolute lifetime): the tenant will
    /// have to reconnect before it whatever the refresher does.
    pub cannot_extend: bool,
}

/// The deadline after a refresh at `now`: the provider's own figure when it sends one (a
/// rotated refresh token brings its lifetime); else an idle lifetime starts again from `now`,
/// bounded by an absolute lifetime, which a refresh never extends. The absolute deadline is
/// `previous` when it is the only lifetime (exact), else `granted_at` plus the lifetime (the
/// connection's creation: a reconnect does not move it, so the estimate errs early).
pub fn after_refresh(
    ct: &ConnectorType,
    explicit: Option<i64>,
    previous: Option<i64>,
    granted_at: i64,
    now: i64,
) -> AfterRefresh {
    if explicit.is_some() {
        return AfterRefresh {
            refresh_expires_at: explicit,
            cannot_extend: false,
        };
    }
    let idle = ct.refresh_token_idle_seconds.map(|s| now.saturating_add(s));
    match (ct.refresh_token_lifetime_seconds, idle) {
        (Some(lifetime), None) => AfterRefresh {
            refresh_expires_at: Some(
                previous.unwrap_or_else(|| granted_at.saturating_add(lifetime)),
            ),
            cannot_extend: true,
        },
        (Some(lifetime), Some(idle)) => {
            let absolute = granted_at.saturating_add(lifetime);
            AfterRefresh {
                refresh_expires_at: Some(idle.min(absolute)),
                cannot_extend: absolute <= idle,
            }
        }
        (None, Some(idle)) => AfterRefresh {
            refresh_expires_at: Some(idle),
            cannot_extend: false,
        },
        // Nothing known from this answer: keep what the grant said.
        (None, None) => AfterRefresh {
            refresh_expires_at: previous,
            cannot_extend: false,
        },
    }
}

/// Whether a `connection.reauthorization_due` warning is due at `now`: the refresh token dies
/// within `window` seconds and no warning was sent for this deadline (`warned`). Once per
/// connection and deadline: a new deadline (a reconnect, an extended idle lifetime that comes
/// back into the window) warns again.
pub fn reauthorization_due(
    refresh_expires_at: Option<i64>,
    warned: Option<i64>,
    now: i64,
    window: i64,
) -> bool {
    refresh_expires_at.is_some_and(|deadline| deadline - now <= window && warned != Some(deadline))
}

fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::connectors::{Catalog, ConnectorTypeSpec};
    use crate::domain::ConnectorTypeName;

    const DAY: i64 = 86_400;

    fn ct(lifetime: Option<i64>, idle: Option<i64>) -> std::sync::Arc<ConnectorType> {
        let name = ConnectorTypeName::parse("lifetimes").unwrap();
        let spec = ConnectorTypeSpec {
            authorization_url: Some("https://example.com/authorize".into()),
            token_url: Some("https://example.com/token".into()),
            refresh_token_lifetime_seconds: lifetime,
            refresh_token_idle_seconds: idle,
            ..Default::default()
        };
        let overrides = BTreeMap::from([(name.to_string(), spec)]);
        let catalog = Catalog::build_with_env(&overrides, &|_| None, false).unwrap();
        catalog.get(&name).unwrap().clone()
    }

    #[test]
    fn explicit_lifetime_wins_then_the_earlier_catalog_lifetime() {
        let both = ct(Some(30 * DAY), Some(7 * DAY));
        assert_eq!(at_grant(&both, Some(123), 1_000), Some(123));
        assert_eq!(at_grant(&both, None, 1_000), Some(1_000 + 7 * DAY));
        assert_eq!(at_grant(&ct(None, None), None, 1_000), None);
    }

    #[test]
    fn an_idle_lifetime_is_extended_by_each_refresh_an_absolute_one_is_not() {
        let idle = ct(None, Some(90 * DAY));
        let first = at_grant(&idle, None, 0).unwrap();
        let later = after_refresh(&idle, None, Some(first), 0, 10 * DAY);
        assert_eq!(later.refresh_expires_at, Some(100 * DAY));
        assert!(!later.cannot_extend);

        let absolute = ct(Some(180 * DAY), None);
        let first = at_grant(&absolute, None, 0).unwrap();
        let later = after_refresh(&absolute, None, Some(first), 0, 10 * DAY);
        assert_eq!(later.refresh_expires_at, Some(180 * DAY));
        assert!(later.cannot_extend);

        // Both (Atlassian: 90 days idle, 365 at most): the idle deadline moves until the
        // absolute one caps it.
        let both = ct(Some(365 * DAY), Some(90 * DAY));
        assert_eq!(at_grant(&both, None, 0), Some(90 * DAY));
        let later = after_refresh(&both, None, Some(90 * DAY), 0, 80 * DAY);
        assert_eq!(later.refresh_expires_at, Some(170 * DAY));
        assert!(!later.cannot_extend);
        let late = after_refresh(&both, None, Some(360 * DAY), 0, 300 * DAY);
        assert_eq!(late.refresh_expires_at, Some(365 * DAY));
        assert!(late.cannot_extend);
    }

    /// Must-show 4: `refresh_token_expires_in` of 10 days, a window of 7 days, the clock moved
    /// hour by hour over 12 days: exactly one warning, on the first tick at or after day 3.
    #[test]
    fn ten_day_refresh_token_and_seven_day_window_warn_exactly_once_at_day_three() {
        let start = 1_700_000_000;
        let deadline = at_grant(&ct(None, None), Some(start + 10 * DAY), start);
        let mut warned = None;
        let mut fired_at = Vec::new();
        for hour in 0..(12 * 24) {
            let now = start + hour * 3_600;
            if reauthorization_due(deadline, warned, now, 7 * DAY) {
                fired_at.push(now - start);
                warned = deadline;
            }
        }
        assert_eq!(fired_at, vec![3 * DAY], "warnings at (seconds after start)");
        // A new deadline (the tenant reconnected) warns again, once.
        let renewed = Some(start + 20 * DAY);
        assert!(reauthorization_due(
            renewed,
            warned,
            start + 13 * DAY,
            7 * DAY
        ));
        assert!(!reauthorization_due(None, None, start, 7 * DAY));
    }
}
