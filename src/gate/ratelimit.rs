//! Olla's request rate limits (`server.rate_limits`): a global token bucket and one per client
//! IP (rate `rpm/60` per second, burst `burst_size`, as Go's `x/time/rate`), each a GCRA
//! "theoretical arrival time" — the global one a single atomic (no lock), the per-IP ones in a
//! sharded table (a small mutex per shard, never held across an await). The per-IP table is
//! bounded: when a shard is full, an entry whose bucket has refilled (indistinguishable from a
//! new one) or else the least recently seen of a few probed is evicted, so random source
//! addresses cannot grow memory. Idle entries are swept. Also the fixed 60 s window behind
//! `X-RateLimit-Remaining` and the set of IPs blocked in the last hour.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::prehashed::PrehashedMap;

const SHARDS: usize = 16;
/// Most client IPs tracked at once (all shards).
pub const MAX_TRACKED_IPS: usize = 65_536;
/// Entries probed for eviction when a shard is full.
const EVICTION_PROBES: usize = 32;
/// An IP entry unused this long is dropped by the sweep (Olla: 10 min).
pub const IDLE_AFTER: Duration = Duration::from_secs(600);
/// `blocked_ips` counts IPs refused within this long ...
const BLOCKED_WINDOW: Duration = Duration::from_secs(3600);
/// ... up to this many (Olla's cap).
const MAX_BLOCKED: usize = 10_000;
const WINDOW: u64 = 60_000_000_000;

/// Token-bucket rate as GCRA: emission interval and burst.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    interval_ns: u64,
    burst: u64,
}

impl Rate {
    /// `per_minute` requests a minute with `burst`; `None` when `per_minute <= 0`.
    pub fn per_minute(per_minute: i64, burst: i64) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            interval_ns: (60_000_000_000 / per_minute as u64).max(1),
            burst: burst.max(0) as u64,
        })
    }

    /// One GCRA step: the new arrival time, or the wait (ns) before a token is available.
    fn step(&self, tat: u64, now: u64) -> Result<u64, u64> {
        if self.burst == 0 {
            return Err(u64::MAX);
        }
        let next = tat.max(now) + self.interval_ns;
        let allowed_until = now.saturating_add(self.interval_ns.saturating_mul(self.burst));
        if next <= allowed_until {
            Ok(next)
        } else {
            Err(next - allowed_until)
        }
    }
}

/// The global bucket: one atomic, compare-and-swap.
pub struct GlobalBucket {
    rate: Rate,
    tat: AtomicU64,
}

impl GlobalBucket {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now` (ns since the limiter's start).
    pub fn take(&self, now: u64) -> bool {
        let mut cur = self.tat.load(Ordering::Relaxed);
        loop {
            let Ok(next) = self.rate.step(cur, now) else {
                return false;
            };
            match self
                .tat
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct IpEntry {
    tat: u64,
    window_start: u64,
    window_count: u64,
    last_seen: u64,
}

/// The outcome of a per-IP check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVerdict {
    /// Allowed; requests left in this IP's 60 s window.
    Allowed { remaining: u64 },
    /// Refused; seconds for `Retry-After`, and what is left of the window.
    Refused { retry_after: u64, remaining: u64 },
}

/// Per-client-IP buckets.
pub struct IpTable {
    rate: Rate,
    limit: u64,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// One shard of the per-IP table, keyed by address and its seeded hash (computed once per
/// check, for the shard and the map both).
type Shard = PrehashedMap<HashedIp, IpEntry>;

/// A client address with its hash under the table's secret seed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct HashedIp {
    hash: u64,
    ip: IpAddr,
}

impl Hash for HashedIp {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl IpTable {
    pub fn new(rate: Rate, limit: u64, capacity: usize) -> Self {
        Self {
            rate,
            limit,
            per_shard: (capacity / SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The address hashed, and its shard: chosen by bits above those the shard's map uses
    /// for buckets and tags, so the addresses of one shard still spread over its buckets.
    fn shard(&self, ip: IpAddr) -> (HashedIp, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(ip);
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        (HashedIp { hash, ip }, shard)
    }

    /// Checks and counts one request from `ip` at `now` (ns).
    pub fn check(&self, ip: IpAddr, now: u64) -> IpVerdict {
        let (ip, shard) = self.shard(ip);
        let mut shard = shard.lock();
        // One lookup for a known address; a new one may first evict.
        if let Some(e) = shard.get_mut(&ip) {
            return self.step(e, now);
        }
        if shard.len() >= self.per_shard {
            evict_one(&mut shard, now);
        }
        let e = shard.entry(ip).or_insert(IpEntry {
            tat: 0,
            window_start: now,
            window_count: 0,
            last_seen: now,
        });
        self.step(e, now)
    }

    /// Counts one request against an address's entry.
    fn step(&self, e: &mut IpEntry, now: u64) -> IpVerdict {
        e.last_seen = now;
        match self.rate.step(e.tat, now) {
            Ok(next) => {
                e.tat = next;
                if now.saturating_sub(e.window_start) >= WINDOW {
                    e.window_start = now;
                    e.window_count = 0;
                }
                e.window_count += 1;
                IpVerdict::Allowed {
                    remaining: self.limit.saturating_sub(e.window_count),
                }
            }
            Err(wait) => IpVerdict::Refused {
                retry_after: if wait == u64::MAX {
                    60 / self.limit.max(1)
                } else {
                    wait / 1_000_000_000 + 1
                },
                remaining: if now.saturating_sub(e.window_start) >= WINDOW {
                    self.limit
                } else {
                    self.limit.saturating_sub(e.window_count)
                },
            },
        }
    }

    /// Drops entries unused for `idle` (ns).
    pub fn sweep(&self, now: u64, idle: u64) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            let before = s.len();
            s.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
            dropped += before - s.len();
        }
        dropped
    }

    /// IPs tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in a full shard: the first probed entry whose bucket has refilled (it holds no
/// state a new entry would not), else the least recently seen probed entry.
fn evict_one(shard: &mut Shard, now: u64) {
    let mut victim: Option<(HashedIp, u64)> = None;
    for (ip, e) in shard.iter().take(EVICTION_PROBES) {
        if e.tat <= now {
            victim = Some((*ip, 0));
            break;
        }
        if victim.is_none_or(|(_, seen)| e.last_seen < seen) {
            victim = Some((*ip, e.last_seen));
        }
    }
    if let Some((ip, _)) = victim {
        shard.remove(&ip);
    }
}

/// Distinct IPs refused recently (`blocked_ips` in status), bounded.
#[derive(Default)]
pub struct Blocked {
    seen: Mutex<HashMap<IpAddr, Instant>>,
}

impl Blocked {
    pub fn record(&self, ip: IpAddr, now: Instant) {
        let mut s = self.seen.lock();
        if s.len() >= MAX_BLOCKED && !s.contains_key(&ip) {
            s.retain(|_, t| now.saturating_duration_since(*t) < BLOCKED_WINDOW);
            if s.len() >= MAX_BLOCKED {
                return;
            }
        }
        s.insert(ip, now);
    }

    /// IPs refused within the last hour (at most 10 000).
    pub fn count(&self, now: Instant) -> usize {
        let mut s = self.seen.lock();
        s.retain(|_, t| now.saturating_duration_since(*t) < BLOCKED_WINDOW);
        s.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn global_bucket_allows_the_burst_then_refills_at_the_rate() {
        let g = GlobalBucket::new(Rate::per_minute(60, 3).unwrap());
        let t = 100 * SEC;
        assert!(g.take(t) && g.take(t) && g.take(t));
        assert!(!g.take(t));
        assert!(!g.take(t + SEC / 2));
        assert!(g.take(t + SEC));
        assert!(!g.take(t + SEC));
        assert!(Rate::per_minute(0, 5).is_none());
        let none = GlobalBucket::new(Rate::per_minute(60, 0).unwrap());
        assert!(!none.take(t), "burst 0 refuses everything, as in Olla");
    }

    #[test]
    fn per_ip_counts_the_window_and_says_when_to_retry() {
        let table = IpTable::new(Rate::per_minute(6, 2).unwrap(), 6, 1024);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = 1000 * SEC;
        assert_eq!(table.check(a, t), IpVerdict::Allowed { remaining: 5 });
        assert_eq!(table.check(a, t), IpVerdict::Allowed { remaining: 4 });
        // 6/min = one per 10 s: the third waits 10 s -> Retry-After 11 (floor + 1).
        assert_eq!(
            table.check(a, t),
            IpVerdict::Refused {
                retry_after: 11,
                remaining: 4
            }
        );
        assert_eq!(table.check(b, t), IpVerdict::Allowed { remaining: 5 });
        assert_eq!(
            table.check(a, t + 10 * SEC),
            IpVerdict::Allowed { remaining: 3 }
        );
        // The window restarts on the first request 60 s after it opened.
        assert_eq!(
            table.check(a, t + 61 * SEC),
            IpVerdict::Allowed { remaining: 5 }
        );
        let zero = IpTable::new(Rate::per_minute(6, 0).unwrap(), 6, 16);
        assert_eq!(
            zero.check(a, t),
            IpVerdict::Refused {
                retry_after: 10,
                remaining: 6
            }
        );
    }

    #[test]
    fn the_table_stays_bounded_under_random_addresses_and_sweeps_idle_ones() {
        let table = IpTable::new(Rate::per_minute(100, 50).unwrap(), 100, 256);
        let t = 10 * SEC;
        for i in 0..20_000u32 {
            let ip = IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes());
            table.check(ip, t + u64::from(i) * 1000);
        }
        assert!(table.len() <= 256, "{}", table.len());
        // A busy client keeps its state while strangers churn.
        let me: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..50 {
            table.check(me, t);
        }
        assert!(matches!(table.check(me, t), IpVerdict::Refused { .. }));
        assert!(table.sweep(t + 3600 * SEC, IDLE_AFTER.as_nanos() as u64) > 0);
        assert!(table.is_empty());
    }

    #[test]
    fn blocked_ips_expire_after_an_hour() {
        let b = Blocked::default();
        let t = Instant::now();
        b.record("10.0.0.1".parse().unwrap(), t);
        b.record("10.0.0.1".parse().unwrap(), t);
        b.record("10.0.0.2".parse().unwrap(), t);
        assert_eq!(b.count(t), 2);
        assert_eq!(b.count(t + BLOCKED_WINDOW), 0);
    }
}
