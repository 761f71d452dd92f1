//! A circuit breaker per connector type: when a provider keeps failing, refreshes of that type
//! fail fast for a while instead of tying up the server (and the provider) with doomed calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    /// Opens after `threshold` consecutive transient failures, for `open_for`; then lets one
    /// trial call through (half-open) and closes on its success.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while the circuit of this connector type is open.
    pub fn check(&self, connector_type: &str) -> Result<(), u64> {
        let mut states = self.states.lock().expect("breakers poisoned");
        let Some(state) = states.get_mut(connector_type) else {
            return Ok(());
        };
        match state.open_until {
            None => Ok(()),
            Some(until) if until > Instant::now() => Err((until - Instant::now()).as_secs().max(1)),
            Some(_) if state.trial_in_flight => Err(1),
            Some(_) => {
                state.trial_in_flight = true;
                Ok(())
            }
        }
    }

    /// Records the outcome of a provider call: `transient_failure` for an unavailable provider;
    /// any answer (even a refusal) shows the provider is up.
    pub fn record(&self, connector_type: &str, transient_failure: bool) {
        let mut states = self.states.lock().expect("breakers poisoned");
        let state = states.entry(connector_type.to_string()).or_default();
        if !transient_failure {
            *state = State::default();
            return;
        }
        state.consecutive_failures += 1;
        if state.trial_in_flight || state.consecutive_failures >= self.threshold {
            if state.open_until.is_none_or(|u| u <= Instant::now()) {
                tracing::warn!(connector_type, "circuit opened: the provider keeps failing");
            }
            state.open_until = Some(Instant::now() + self.open_for);
            state.trial_in_flight = false;
        }
    }

    /// Connector types whose circuit is open now.
    pub fn open_count(&self) -> usize {
        let now = Instant::now();
        self.states
            .lock()
            .expect("breakers poisoned")
            .values()
            .filter(|s| s.open_until.is_some_and(|u| u > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let b = Breakers::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            b.record("acme", true);
        }
        assert!(b.check("acme").is_ok(), "two failures: still closed");
        b.record("acme", true);
        assert!(b.check("acme").is_err(), "three: open");
        assert!(b.check("other").is_ok(), "per connector type");
        assert_eq!(b.open_count(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.check("acme").is_ok(), "half-open: one trial");
        assert!(b.check("acme").is_err(), "only one trial at a time");
        b.record("acme", true);
        assert!(b.check("acme").is_err(), "a failed trial opens again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.check("acme").is_ok());
        b.record("acme", false);
        assert!(b.check("acme").is_ok() && b.check("acme").is_ok(), "closed");
        assert_eq!(b.open_count(), 0);
    }
}
