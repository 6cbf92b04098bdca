//! The gate in front of discovery on a routing miss (`discovery` routing mode): a request for a
//! model nobody lists may re-fetch every backend's model list, but requests for random names
//! must not turn into a fetch storm. The gate owns three bounds:
//!
//! - a **minimum interval** between two refreshes started by misses;
//! - a **negative cache**: a name still unknown after a refresh is remembered for a while (bounded
//!   count; names are kept as keyed hashes, so a long name costs no memory) and does not start
//!   another refresh;
//! - **one refresh at a time, shared**: misses arriving while a refresh runs wait for that one
//!   (up to [`MAX_WAITERS`] of them, each bounded by the refresh timeout) instead of starting
//!   their own.
//!
//! The gate only decides and coordinates; the refresh itself is a future the caller passes in
//! (it is spawned, so a client that goes away does not cancel it for the others). It never looks
//! at the catalog.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wait::instant_after;

/// Most names in the negative cache.
pub const NEGATIVE_CACHE_MAX: usize = 10_000;
/// Most requests waiting for one shared refresh; beyond it a miss is decided at once.
pub const MAX_WAITERS: usize = 1024;

/// Tunables, from the routing policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissSettings {
    /// Shortest time between two refreshes started by misses.
    pub min_interval: Duration,
    /// How long a name still unknown after a refresh starts no new refresh.
    pub negative_ttl: Duration,
    /// Longest wait for a refresh.
    pub timeout: Duration,
}

#[derive(Default)]
struct GateState {
    /// Keyed hash of the lower-cased name → when the entry expires.
    negative: HashMap<u64, Instant>,
    last_refresh: Option<Instant>,
    in_flight: bool,
    waiting: usize,
}

struct Shared {
    state: Mutex<GateState>,
    /// Bumped when a refresh ends.
    done: watch::Sender<u64>,
}

/// See the module docs. One per daemon, in [`crate::Published`].
pub struct MissGate {
    shared: Arc<Shared>,
    hasher: RandomState,
}

impl Default for MissGate {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(GateState::default()),
                done: watch::channel(0).0,
            }),
            hasher: RandomState::new(),
        }
    }
}

/// Marks the refresh finished and wakes its waiters, even if the refresh task panics.
struct EndRefresh(Arc<Shared>);

impl Drop for EndRefresh {
    fn drop(&mut self) {
        self.0.state.lock().in_flight = false;
        self.0.done.send_modify(|g| *g = g.wrapping_add(1));
    }
}

impl MissGate {
    fn key(&self, name: &str) -> u64 {
        self.hasher.hash_one(name.to_lowercase())
    }

    /// Whether `name` is in the negative cache now.
    pub fn is_known_missing(&self, name: &str, now: Instant) -> bool {
        let key = self.key(name);
        self.shared
            .state
            .lock()
            .negative
            .get(&key)
            .is_some_and(|until| *until > now)
    }

    /// Remembers that `name` was still unknown after a refresh.
    pub fn remember_missing(&self, name: &str, now: Instant, settings: &MissSettings) {
        let key = self.key(name);
        let until = instant_after(now, settings.negative_ttl);
        let mut st = self.shared.state.lock();
        if st.negative.len() >= NEGATIVE_CACHE_MAX && !st.negative.contains_key(&key) {
            st.negative.retain(|_, u| *u > now);
            if st.negative.len() >= NEGATIVE_CACHE_MAX {
                // Full of live entries (a flood of names): start over rather than grow.
                st.negative.clear();
            }
        }
        st.negative.insert(key, until);
    }

    /// Names in the negative cache (expired ones included until the next purge).
    pub fn negative_len(&self) -> usize {
        self.shared.state.lock().negative.len()
    }

    /// Runs `refresh` for a miss on `name` unless a bound says no, or joins the refresh already
    /// running. Returns whether a refresh ended while this call waited (so the catalog is worth
    /// another look); `false` means "decide on the catalog as it is".
    pub async fn refresh_on_miss<F>(&self, name: &str, settings: &MissSettings, refresh: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let now = Instant::now();
        if self.is_known_missing(name, now) {
            return false;
        }
        let mut done = self.shared.done.subscribe();
        {
            let mut st = self.shared.state.lock();
            if st.in_flight {
                if st.waiting >= MAX_WAITERS {
                    return false;
                }
            } else {
                let recent = st
                    .last_refresh
                    .is_some_and(|t| now.saturating_duration_since(t) < settings.min_interval);
                if recent {
                    return false;
                }
                st.in_flight = true;
                st.last_refresh = Some(now);
                // Spawned: a client that goes away does not cancel it for the others.
                let end = EndRefresh(self.shared.clone());
                tokio::spawn(async move {
                    let _end = end;
                    refresh.await;
                });
            }
            st.waiting += 1;
        }
        let ended = tokio::time::timeout(settings.timeout, done.changed())
            .await
            .is_ok_and(|r| r.is_ok());
        let mut st = self.shared.state.lock();
        st.waiting = st.waiting.saturating_sub(1);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings() -> MissSettings {
        MissSettings {
            min_interval: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }

    fn counting(n: &Arc<AtomicUsize>, took: Duration) -> impl Future<Output = ()> + Send + 'static {
        let n = n.clone();
        async move {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(took).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_refresh_and_the_interval_holds_the_next() {
        let gate = Arc::new(MissGate::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let s = settings();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (gate, runs) = (gate.clone(), runs.clone());
                tokio::spawn(async move {
                    gate.refresh_on_miss(
                        &format!("name-{i}"),
                        &s,
                        counting(&runs, Duration::from_millis(300)),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap(), "every miss saw the shared refresh end");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Within the interval: no refresh, decided at once.
        assert!(
            !gate
                .refresh_on_miss("other", &s, counting(&runs, Duration::ZERO))
                .await
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            gate.refresh_on_miss("other", &s, counting(&runs, Duration::ZERO))
                .await
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_still_missing_is_not_refreshed_again_until_its_ttl() {
        let gate = MissGate::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let s = MissSettings {
            min_interval: Duration::ZERO,
            ..settings()
        };
        assert!(
            gate.refresh_on_miss("Ghost", &s, counting(&runs, Duration::ZERO))
                .await
        );
        gate.remember_missing("Ghost", Instant::now(), &s);
        assert!(
            !gate
                .refresh_on_miss("ghost", &s, counting(&runs, Duration::ZERO))
                .await
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            gate.refresh_on_miss("ghost", &s, counting(&runs, Duration::ZERO))
                .await
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_refresh_bounds_the_wait_and_a_panicking_one_still_ends() {
        let gate = MissGate::default();
        let s = settings();
        let slow = async { tokio::time::sleep(Duration::from_secs(60)).await };
        assert!(
            !gate.refresh_on_miss("a", &s, slow).await,
            "gave up after the timeout"
        );
        tokio::time::advance(Duration::from_secs(120)).await;
        let boom = async { panic!("refresh task failed") };
        assert!(
            gate.refresh_on_miss("b", &s, boom).await,
            "woken by the drop guard"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            gate.refresh_on_miss("c", &s, async {}).await,
            "not stuck in flight"
        );
    }

    #[test]
    fn the_negative_cache_is_bounded() {
        let gate = MissGate::default();
        let s = settings();
        let now = Instant::now();
        for i in 0..(NEGATIVE_CACHE_MAX + 10) {
            gate.remember_missing(&format!("n{i}"), now, &s);
        }
        assert!(gate.negative_len() <= NEGATIVE_CACHE_MAX);
        assert!(gate.is_known_missing(&format!("N{}", NEGATIVE_CACHE_MAX + 9), now));
    }
}
