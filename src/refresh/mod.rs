//! In-process coordination of refreshes: the single flight per connection, the token cache,
//! and the background refresher.

pub mod background;
pub mod breaker;
pub mod decision;
pub mod keeper;
pub mod kind;
pub mod lifetime;
pub mod scoped;

pub use keeper::{
    CheckOutcome, IdentityCheck, KeeperError, SecretsKeeper, ServedToken, TokenRequest,
};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// Decrypted connections kept in memory so that the hot path neither reads the database nor
/// decrypts. Every write through this process replaces the entry; a change made elsewhere is
/// announced by the store's change feed (PostgreSQL `LISTEN/NOTIFY`, see `invalidate`), and
/// `ttl` bounds how long a change can go unseen where there is no feed (SQLite: one node; other
/// processes on the same file). The cache holds at most `max_entries` connections (S3-FIFO, so
/// a scan of connections asked for once does not evict the working set).
///
/// With a feed, the cache is used only while the feed listens: until the first `Listening` and
/// from a `Lost` to the next `Listening`, every read goes to the store (read-through).
pub struct TokenCache {
    /// The entries with the time each was cached (older than `ttl`: not served). `quick_cache`
    /// (S3-FIFO: a scan of connections asked for once does not evict the working set) reads
    /// without a lock of ours and with little bookkeeping; the hot path is a read.
    entries: Option<quick_cache::sync::Cache<ConnectionKey, (Instant, Arc<StoredConnection>)>>,
    ttl: Duration,
    /// Taken by every change of `entries` (rare: misses, refreshes, announced changes), so
    /// that comparing versions and replacing is one step.
    writes: Mutex<()>,
    /// Whether cached entries may be served (false while a change feed is not listening).
    usable: AtomicBool,
    /// Recent invalidations, to refuse a read that raced with one (see `put`).
    recent: Mutex<Invalidations>,
}

/// The invalidations of the last moments, numbered: a reader takes a `Ticket` (the number of
/// the last one) before it reads the store, and its result is cached only if no invalidation of
/// its connection to a newer version came after the ticket.
#[derive(Default)]
struct Invalidations {
    /// Number of the last invalidation (0: none yet).
    last: u64,
    /// (number, key, version announced; `i64::MAX` for a deletion or a reset), oldest first.
    log: VecDeque<(u64, Option<ConnectionKey>, i64)>,
}

/// Invalidations remembered for racing readers; an older ticket is treated as raced.
const RECENT_INVALIDATIONS: usize = 4096;

/// Taken before reading the store, handed to `TokenCache::put` with what was read.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

impl TokenCache {
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        let entries = (!ttl.is_zero() && max_entries > 0).then(|| {
            quick_cache::sync::Cache::new(usize::try_from(max_entries).unwrap_or(usize::MAX))
        });
        Self {
            entries,
            ttl,
            writes: Mutex::default(),
            usable: AtomicBool::new(true),
            recent: Mutex::default(),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<Arc<StoredConnection>> {
        if !self.usable.load(Ordering::Acquire) {
            return None;
        }
        let (cached_at, connection) = self.entries.as_ref()?.get(key)?;
        (cached_at.elapsed() < self.ttl).then_some(connection)
    }

    /// Take one before reading the store; hand it to `put` with what was read.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.recent.lock().expect("cache poisoned").last)
    }

    /// Caches a connection read from (or just written to) the store after `ticket` was taken,
    /// and returns it. Not cached when it is older than the cached one, or when an
    /// invalidation of a newer version came after the ticket (a reader racing a change).
    pub fn put(&self, ticket: Ticket, connection: StoredConnection) -> Arc<StoredConnection> {
        let connection = Arc::new(connection);
        let Some(entries) = &self.entries else {
            return connection;
        };
        if !self.usable.load(Ordering::Acquire) {
            return connection;
        }
        let version = connection.version;
        {
            let _one_writer = self.writes.lock().expect("cache poisoned");
            // Never replace a newer version with an older one (a slow reader racing a refresh).
            // An entry past its lifetime counts as absent (a connection deleted and created
            // again elsewhere starts over at version 1).
            let newer = entries
                .get(&connection.key)
                .is_some_and(|(at, e)| at.elapsed() < self.ttl && e.version > version);
            if !newer {
                entries.insert(connection.key.clone(), (Instant::now(), connection.clone()));
            }
        }
        // Checked after the insertion: an invalidation is logged before it removes, so either
        // it removed our entry or we see it here.
        if self.raced(ticket, &connection.key, version) {
            let _one_writer = self.writes.lock().expect("cache poisoned");
            entries.remove(&connection.key);
        }
        connection
    }

    fn raced(&self, ticket: Ticket, key: &ConnectionKey, version: i64) -> bool {
        let recent = self.recent.lock().expect("cache poisoned");
        if recent.last == ticket.0 {
            return false;
        }
        match recent.log.front() {
            // The log no longer reaches back to the ticket: assume the worst.
            Some((first, _, _)) if *first > ticket.0 + 1 => return true,
            None => return true,
            _ => {}
        }
        recent
            .log
            .iter()
            .rev()
            .take_while(|(n, _, _)| *n > ticket.0)
            .any(|(_, k, v)| k.as_ref().is_none_or(|k| k == key) && *v > version)
    }

    fn log(&self, key: Option<ConnectionKey>, version: i64) {
        let mut recent = self.recent.lock().expect("cache poisoned");
        recent.last += 1;
        let n = recent.last;
        recent.log.push_back((n, key, version));
        if recent.log.len() > RECENT_INVALIDATIONS {
            recent.log.pop_front();
        }
    }

    /// Drops the cached copy of a connection this process changed or deleted.
    pub fn remove(&self, key: &ConnectionKey) {
        self.invalidate(key, None);
    }

    /// Another process changed the connection to `version` (`None`: deleted it): drops the
    /// cached copy unless it is that version or newer.
    pub fn invalidate(&self, key: &ConnectionKey, version: Option<i64>) {
        let version = version.unwrap_or(i64::MAX);
        self.log(Some(key.clone()), version);
        if let Some(entries) = &self.entries {
            let _one_writer = self.writes.lock().expect("cache poisoned");
            if entries.get(key).is_some_and(|(_, e)| e.version < version) {
                entries.remove(key);
            }
        }
    }

    /// Whether the change feed listens (`true`) or lost its connection (`false`). Either way
    /// the cache is emptied: changes may have been missed. While `false`, reads go through.
    pub fn set_listening(&self, listening: bool) {
        if !listening {
            self.usable.store(false, Ordering::Release);
        }
        self.log(None, i64::MAX);
        if let Some(entries) = &self.entries {
            let _one_writer = self.writes.lock().expect("cache poisoned");
            entries.clear();
        }
        if listening {
            self.usable.store(true, Ordering::Release);
        }
    }

    /// Whether cached entries are served (false while a change feed is not listening).
    pub fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// Entries held (those past their lifetime included, until they are evicted or replaced).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| e.len() as u64)
    }

    /// Makes a cached entry look cached `by` earlier (tests of the lifetime, without waiting).
    #[cfg(test)]
    fn backdate(&self, key: &ConnectionKey, by: Duration) {
        let entries = self.entries.as_ref().expect("a cache");
        let (at, connection) = entries.get(key).expect("a cached entry");
        entries.insert(
            key.clone(),
            (at.checked_sub(by).expect("an earlier instant"), connection),
        );
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

    fn stored(app: &str, version: i64) -> StoredConnection {
        StoredConnection {
            warned_refresh_expires_at: None,
            key: key(app),
            tokens: crate::domain::TokenSet {
                refresh_expires_at: None,
                access_token: crate::secret::Secret::new(format!("at-{app}-{version}")),
                refresh_token: None,
                token_type: None,
                expires_at: None,
                scope: None,
                metadata: Default::default(),
                client: None,
            },
            status: crate::domain::ConnectionStatus::Active,
            version,
            created_at: 0,
            updated_at: 0,
            refreshed_at: None,
            last_error: None,
            backoff_until: None,
            refresh_failures: 0,
            last_error_kind: None,
            refresh_interrupted_at: None,
        }
    }

    fn cached_version(cache: &TokenCache, app: &str) -> Option<i64> {
        cache.get(&key(app)).map(|c| c.version)
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_keeps_the_working_set() {
        let cache = TokenCache::new(Duration::from_secs(600), 100);
        // The working set: 50 connections asked for again and again.
        for round in 0..10 {
            for i in 0..50 {
                let app = format!("hot-{i}");
                if cache.get(&key(&app)).is_none() {
                    assert_eq!(round, 0, "{app} was evicted in round {round}");
                    cache.put(cache.ticket(), stored(&app, 1));
                }
            }
        }
        // A scan: 10,000 connections asked for once each, while the working set goes on being
        // asked for.
        let mut hot_misses = 0;
        for i in 0..10_000 {
            for app in [format!("cold-{i}"), format!("hot-{}", i % 50)] {
                if cache.get(&key(&app)).is_none() {
                    hot_misses += usize::from(app.starts_with("hot"));
                    cache.put(cache.ticket(), stored(&app, 1));
                }
            }
        }
        let held = cache.entry_count();
        assert!(
            held <= 100,
            "the cache holds {held} entries, beyond its bound of 100"
        );
        assert!(
            hot_misses <= 500,
            "{hot_misses} misses of the working set in 10,000 reads of it (more than 5 %)"
        );
    }

    #[test]
    fn an_announced_change_drops_older_copies_and_a_racing_read_is_not_cached() {
        let cache = TokenCache::new(Duration::from_secs(600), 1000);
        cache.put(cache.ticket(), stored("a", 2));
        // Our own write announced back to us: the copy is that version, kept.
        cache.invalidate(&key("a"), Some(2));
        assert_eq!(cached_version(&cache, "a"), Some(2));
        // Another replica wrote version 3: dropped.
        cache.invalidate(&key("a"), Some(3));
        assert_eq!(cached_version(&cache, "a"), None);
        // A reader took its ticket, read version 3, and version 4 was announced before it
        // cached what it read: not cached.
        let ticket = cache.ticket();
        cache.invalidate(&key("a"), Some(4));
        cache.put(ticket, stored("a", 3));
        assert_eq!(cached_version(&cache, "a"), None);
        // An announcement of another connection does not keep this one out.
        let ticket = cache.ticket();
        cache.invalidate(&key("b"), Some(9));
        cache.put(ticket, stored("a", 4));
        assert_eq!(cached_version(&cache, "a"), Some(4));
        // A deletion drops any version.
        cache.invalidate(&key("a"), None);
        assert_eq!(cached_version(&cache, "a"), None);
    }

    #[test]
    fn a_newer_copy_is_never_replaced_by_an_older_one_while_it_lives() {
        let ttl = Duration::from_secs(600);
        let cache = TokenCache::new(ttl, 1000);
        cache.put(cache.ticket(), stored("a", 3));
        // A slow reader that read version 2 before a refresh wrote version 3.
        cache.put(cache.ticket(), stored("a", 2));
        assert_eq!(cached_version(&cache, "a"), Some(3));
        cache.put(cache.ticket(), stored("a", 4));
        assert_eq!(cached_version(&cache, "a"), Some(4));
    }

    #[test]
    fn an_entry_past_its_lifetime_is_not_served_and_counts_as_absent() {
        let ttl = Duration::from_secs(600);
        let cache = TokenCache::new(ttl, 1000);
        cache.put(cache.ticket(), stored("a", 7));
        cache.backdate(&key("a"), ttl - Duration::from_secs(1));
        assert_eq!(
            cached_version(&cache, "a"),
            Some(7),
            "still within its lifetime"
        );
        cache.backdate(&key("a"), Duration::from_secs(2));
        assert_eq!(cached_version(&cache, "a"), None, "past its lifetime");
        // The connection was deleted and created again by another process (version 1): the
        // expired copy of version 7 does not keep it out of the cache.
        cache.put(cache.ticket(), stored("a", 1));
        assert_eq!(cached_version(&cache, "a"), Some(1));
    }

    #[test]
    fn without_a_listening_feed_reads_go_through() {
        let cache = TokenCache::new(Duration::from_secs(600), 1000);
        cache.put(cache.ticket(), stored("a", 1));
        let before_loss = cache.ticket();
        cache.set_listening(false);
        assert_eq!(cached_version(&cache, "a"), None, "emptied on a loss");
        cache.put(cache.ticket(), stored("a", 1));
        assert_eq!(
            cached_version(&cache, "a"),
            None,
            "nothing cached while lost"
        );
        cache.set_listening(true);
        // A read that began before the feed came back may have missed a change.
        cache.put(before_loss, stored("a", 1));
        assert_eq!(cached_version(&cache, "a"), None);
        cache.put(cache.ticket(), stored("a", 1));
        assert_eq!(cached_version(&cache, "a"), Some(1));
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
