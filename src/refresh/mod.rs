//! In-process coordination of refreshes: the single flight per connection, the token cache,
//! and the background refresher.

pub mod background;
pub mod breaker;
pub mod decision;
pub mod keeper;
pub mod kind;
pub mod scoped;

pub use keeper::{CheckOutcome, KeeperError, SecretsKeeper, ServedToken, TokenRequest};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::domain::{ConnectionKey, StoredConnection};

/// One refresh at a time per connection, in this process. Callers queue on the connection's
/// lock; whoever gets it next re-reads the token before calling the provider again.
#[derive(Default)]
pub struct Flights {
    locks: Mutex<HashMap<ConnectionKey, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct FlightGuard<'a> {
    flights: &'a Flights,
    key: ConnectionKey,
    guard: OwnedMutexGuard<()>,
}

impl Flights {
    pub async fn acquire(&self, key: &ConnectionKey) -> FlightGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().expect("flight map poisoned");
            locks.entry(key.clone()).or_default().clone()
        };
        FlightGuard {
            flights: self,
            key: key.clone(),
            guard: lock.lock_owned().await,
        }
    }

    /// Connections with a flight in progress or queued (for tests and metrics).
    pub fn len(&self) -> usize {
        self.locks.lock().expect("flight map poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let lock = OwnedMutexGuard::mutex(&self.guard);
        let mut locks = self.flights.locks.lock().expect("flight map poisoned");
        // The map and this guard hold the only references: nobody else waits, forget the lock.
        // Clones are made under the map's mutex, so the count cannot grow behind our back.
        if Arc::strong_count(lock) == 2 {
            locks.remove(&self.key);
        }
    }
}

struct Entry {
    connection: Arc<StoredConnection>,
    loaded: Instant,
}

/// Decrypted connections kept in memory so that the hot path neither reads the database nor
/// decrypts. Every write through this process replaces the entry; `ttl` bounds how long a change
/// made elsewhere (another process, another replica) can go unseen.
pub struct TokenCache {
    ttl: Duration,
    entries: RwLock<HashMap<ConnectionKey, Entry>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<Arc<StoredConnection>> {
        let entries = self.entries.read().expect("cache poisoned");
        entries
            .get(key)
            .filter(|e| e.loaded.elapsed() < self.ttl)
            .map(|e| e.connection.clone())
    }

    pub fn put(&self, connection: StoredConnection) -> Arc<StoredConnection> {
        let connection = Arc::new(connection);
        if self.ttl.is_zero() {
            return connection;
        }
        let mut entries = self.entries.write().expect("cache poisoned");
        // Never replace a newer version with an older one (a slow reader racing a refresh).
        let keep_existing = entries.get(&connection.key).is_some_and(|e| {
            e.connection.version > connection.version && e.loaded.elapsed() < self.ttl
        });
        if !keep_existing {
            entries.insert(
                connection.key.clone(),
                Entry {
                    connection: connection.clone(),
                    loaded: Instant::now(),
                },
            );
        }
        connection
    }

    pub fn remove(&self, key: &ConnectionKey) {
        self.entries.write().expect("cache poisoned").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, ConnectorTypeName};

    fn key(app: &str) -> ConnectionKey {
        ConnectionKey::new(
            AppId::parse(app).unwrap(),
            ConnectorTypeName::parse("github").unwrap(),
        )
    }

    #[tokio::test]
    async fn one_flight_at_a_time_per_connection_and_the_map_is_emptied() {
        let flights = Arc::new(Flights::default());
        let first = flights.acquire(&key("a")).await;
        // Another connection is not delayed.
        let other = tokio::time::timeout(Duration::from_secs(1), flights.acquire(&key("b")))
            .await
            .expect("other connections do not wait");
        drop(other);
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move {
                let _g = flights.acquire(&key("a")).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second caller waits for the first"
        );
        drop(first);
        waiter.await.unwrap();
        assert!(flights.is_empty());
    }
}
