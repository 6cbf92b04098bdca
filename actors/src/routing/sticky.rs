//! Sticky sessions (Olla v0.0.25+): a request's session key pins it to the backend that served
//! the session before, so the backend's KV cache is reused. The key comes from the first
//! configured source that yields one (`session_header`, `prefix_hash`, `auth_header`, `ip`),
//! hashed with FNV-64a and scoped by model; keys never leave the process.
//!
//! The table is a sharded concurrent map (request tasks read and update it without a mailbox
//! round trip) with a sliding idle TTL and an LRU cap; the RouterActor housekeeps it (expiry on
//! a timer, purge of the pins to a backend that stops being routable). Counters follow Olla's
//! `/internal/stats/sticky`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// Sticky-session settings (`proxy.sticky_sessions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickySettings {
    pub enabled: bool,
    /// Sliding idle TTL; zero = pins never expire.
    pub idle_ttl: Duration,
    /// LRU cap; zero = no cap.
    pub max_sessions: u64,
    /// Key sources in the order they are tried.
    pub key_sources: Vec<KeySource>,
    /// Bytes of `messages` (or `prompt`) hashed by `prefix_hash`; zero = all.
    pub prefix_hash_bytes: u64,
}

impl Default for StickySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            idle_ttl: Duration::from_secs(600),
            max_sessions: 10_000,
            key_sources: vec![
                KeySource::SessionHeader,
                KeySource::PrefixHash,
                KeySource::AuthHeader,
            ],
            prefix_hash_bytes: 512,
        }
    }
}

/// Where a session key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    SessionHeader,
    PrefixHash,
    AuthHeader,
    Ip,
}

impl KeySource {
    /// Olla's names; unknown names are ignored (`None`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session_header" => Some(Self::SessionHeader),
            "prefix_hash" => Some(Self::PrefixHash),
            "auth_header" => Some(Self::AuthHeader),
            "ip" => Some(Self::Ip),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionHeader => "session_header",
            Self::PrefixHash => "prefix_hash",
            Self::AuthHeader => "auth_header",
            Self::Ip => "ip",
        }
    }
}

/// The request facts keys are made from (borrowed from the request).
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyFacts<'a> {
    pub session_id: Option<&'a [u8]>,
    /// Raw JSON text of `messages`, or of `prompt` when `messages` is absent, `[]` or null.
    pub prefix: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub peer: Option<IpAddr>,
    pub model: Option<&'a str>,
}

/// A session key (already scoped by model) and its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    pub hash: u64,
    pub source: KeySource,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-64a of `bytes`, continuing from `h`.
pub fn fnv64a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The key of a request: the first source in `settings.key_sources` that yields one.
pub fn session_key(settings: &StickySettings, facts: &KeyFacts) -> Option<SessionKey> {
    for &source in &settings.key_sources {
        let raw: Option<u64> = match source {
            KeySource::SessionHeader => facts
                .session_id
                .filter(|v| !v.is_empty())
                .map(|v| fnv64a(FNV_OFFSET, v)),
            KeySource::PrefixHash => facts
                .prefix
                .filter(|p| !matches!(p.trim_ascii(), b"" | b"[]" | b"null"))
                .map(|p| {
                    let cut = usize::try_from(settings.prefix_hash_bytes).unwrap_or(usize::MAX);
                    let p = if cut == 0 || p.len() <= cut {
                        p
                    } else {
                        &p[..cut]
                    };
                    fnv64a(FNV_OFFSET, p)
                }),
            KeySource::AuthHeader => facts
                .authorization
                .filter(|v| !v.is_empty())
                .map(|v| fnv64a(FNV_OFFSET, v)),
            KeySource::Ip => facts.peer.map(|ip| match ip {
                IpAddr::V4(v4) => fnv64a(FNV_OFFSET, &v4.octets()),
                IpAddr::V6(v6) => fnv64a(FNV_OFFSET, &v6.octets()),
            }),
        };
        if let Some(h) = raw {
            // Scope by source and model: the same session on two models pins independently.
            let mut scoped = fnv64a(FNV_OFFSET, source.as_str().as_bytes());
            scoped = fnv64a(scoped, &h.to_le_bytes());
            scoped = fnv64a(scoped, facts.model.unwrap_or("").as_bytes());
            return Some(SessionKey {
                hash: scoped,
                source,
            });
        }
    }
    None
}

/// What the sticky layer did for a request (`X-Olla-Sticky-Session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickyOutcome {
    Hit,
    Miss,
    Repin,
    Disabled,
}

impl StickyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Repin => "repin",
            Self::Disabled => "disabled",
        }
    }
}

struct Pin {
    backend: Arc<str>,
    /// The caller's key for `backend` (routing passes [`super::prefix::backend_key`]), compared
    /// before the name.
    backend_key: u64,
    /// Milliseconds since the table's epoch of the last use (sliding TTL, LRU order).
    last_used: AtomicU64,
}

/// Counters of `/internal/stats/sticky`.
#[derive(Default, Debug)]
pub struct StickyCounters {
    pub insertions: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// The pin table. `now_ms` values are milliseconds on any monotonic clock the caller uses
/// consistently (the proxy uses time since start).
#[derive(Default)]
pub struct StickyTable {
    /// Keys are already hashes: a fast hasher spreads them over the shards.
    pins: DashMap<u64, Pin, foldhash::fast::RandomState>,
    /// Pins held, kept beside the map (its `len` locks every shard): the LRU cap reads it.
    held: AtomicUsize,
    pub counters: StickyCounters,
}

impl StickyTable {
    /// The live pin of `key` (refreshing its idle time), or `None` (counted as a miss).
    pub fn lookup(&self, key: u64, ttl: Duration, now_ms: u64) -> Option<Arc<str>> {
        self.lookup_with(key, ttl, now_ms, |backend, _| backend.clone())
    }

    /// `found(backend name, backend key)` of the live pin of `key` (refreshing its idle
    /// time), or `None` (counted as a miss); `found` runs under the shard's read lock, and
    /// nothing is cloned.
    pub fn lookup_with<R>(
        &self,
        key: u64,
        ttl: Duration,
        now_ms: u64,
        found: impl FnOnce(&Arc<str>, u64) -> R,
    ) -> Option<R> {
        let out = self.pins.get(&key).and_then(|p| {
            let idle = now_ms.saturating_sub(p.last_used.load(Ordering::Relaxed));
            if !ttl.is_zero() && u128::from(idle) >= ttl.as_millis() {
                return None;
            }
            p.last_used.store(now_ms, Ordering::Relaxed);
            Some(found(&p.backend, p.backend_key))
        });
        match &out {
            Some(_) => self.counters.hits.fetch_add(1, Ordering::Relaxed),
            None => self.counters.misses.fetch_add(1, Ordering::Relaxed),
        };
        out
    }

    /// Pins `key` to `backend` (whose key is `backend_key`); evicts the least recently used
    /// pins beyond `max` (0 = no cap).
    pub fn pin(&self, key: u64, backend: &str, backend_key: u64, max: u64, now_ms: u64) {
        let replaced = self.pins.insert(
            key,
            Pin {
                backend: Arc::from(backend),
                backend_key,
                last_used: AtomicU64::new(now_ms),
            },
        );
        if replaced.is_none() {
            self.counters.insertions.fetch_add(1, Ordering::Relaxed);
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        let cap = usize::try_from(max).unwrap_or(usize::MAX);
        if cap > 0 && self.held.load(Ordering::Relaxed) > cap {
            self.evict_lru(cap);
        }
    }

    /// Drops the oldest pins down to 15/16 of `cap` (amortised: one O(n) pass per cap/16
    /// insertions).
    fn evict_lru(&self, cap: usize) {
        let keep = cap - cap / 16;
        let mut ages: Vec<u64> = self
            .pins
            .iter()
            .map(|p| p.last_used.load(Ordering::Relaxed))
            .collect();
        if ages.len() <= keep {
            return;
        }
        let cut = ages.len() - keep;
        let (_, threshold, _) = ages.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        let mut removed = 0u64;
        let mut budget = cut;
        self.pins.retain(|_, p| {
            if budget > 0 && p.last_used.load(Ordering::Relaxed) <= threshold {
                budget -= 1;
                removed += 1;
                false
            } else {
                true
            }
        });
        self.forget(removed);
    }

    /// Removes pins idle for `ttl` or longer; returns how many.
    pub fn expire(&self, ttl: Duration, now_ms: u64) -> u64 {
        if ttl.is_zero() {
            return 0;
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.remove_where(|p| now_ms.saturating_sub(p.last_used.load(Ordering::Relaxed)) >= ttl_ms)
    }

    /// Removes every pin to `backend` (it stopped being routable); returns how many.
    pub fn purge_backend(&self, backend: &str) -> u64 {
        self.remove_where(|p| &*p.backend == backend)
    }

    /// Removes every pin (sticky sessions switched off).
    pub fn clear(&self) -> u64 {
        self.remove_where(|_| true)
    }

    fn remove_where(&self, doomed: impl Fn(&Pin) -> bool) -> u64 {
        let mut removed = 0u64;
        self.pins.retain(|_, p| {
            let gone = doomed(p);
            removed += u64::from(gone);
            !gone
        });
        self.forget(removed);
        removed
    }

    /// Counts `removed` pins out.
    fn forget(&self, removed: u64) {
        self.counters
            .evictions
            .fetch_add(removed, Ordering::Relaxed);
        let n = usize::try_from(removed).unwrap_or(usize::MAX);
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(n))
            });
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// `/internal/stats/sticky` when enabled (Olla's shape).
    pub fn stats_json(&self, s: &StickySettings) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "enabled": true,
            "active_sessions": self.len(),
            "insertions": c.insertions.load(Ordering::Relaxed),
            "hits": c.hits.load(Ordering::Relaxed),
            "misses": c.misses.load(Ordering::Relaxed),
            "evictions": c.evictions.load(Ordering::Relaxed),
            "max_sessions": s.max_sessions,
            "idle_ttl_seconds": s.idle_ttl.as_secs(),
        })
    }

    /// Prometheus text 0.0.4 of the sticky counters.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let c = &self.counters;
        let _ = writeln!(
            out,
            "# HELP olla_sticky_sessions_active Sticky-session pins held now.\n# TYPE olla_sticky_sessions_active gauge\nolla_sticky_sessions_active {}",
            self.len()
        );
        for (name, help, v) in [
            ("insertions", "Sticky-session pins created.", &c.insertions),
            (
                "hits",
                "Sticky-session lookups that found a live pin.",
                &c.hits,
            ),
            (
                "misses",
                "Sticky-session lookups that found none.",
                &c.misses,
            ),
            (
                "evictions",
                "Sticky-session pins removed (TTL, LRU cap, purge).",
                &c.evictions,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP olla_sticky_sessions_{name}_total {help}\n# TYPE olla_sticky_sessions_{name}_total counter\nolla_sticky_sessions_{name}_total {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sources: &[KeySource]) -> StickySettings {
        StickySettings {
            enabled: true,
            key_sources: sources.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn fnv64a_matches_the_reference_vectors() {
        assert_eq!(fnv64a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn sources_are_tried_in_order_and_scoped_by_model() {
        let s = settings(&[
            KeySource::SessionHeader,
            KeySource::PrefixHash,
            KeySource::Ip,
        ]);
        let mut f = KeyFacts {
            session_id: Some(b"abc"),
            prefix: Some(br#"[{"role":"user"}]"#),
            peer: Some("127.0.0.1".parse().unwrap()),
            model: Some("m1"),
            ..Default::default()
        };
        let k1 = session_key(&s, &f).unwrap();
        assert_eq!(k1.source, KeySource::SessionHeader);
        f.model = Some("m2");
        assert_ne!(
            session_key(&s, &f).unwrap().hash,
            k1.hash,
            "scoped by model"
        );
        f.session_id = None;
        assert_eq!(session_key(&s, &f).unwrap().source, KeySource::PrefixHash);
        f.prefix = Some(b" [] ");
        assert_eq!(session_key(&s, &f).unwrap().source, KeySource::Ip);
        f.peer = None;
        assert_eq!(session_key(&s, &f), None);
        // auth_header is not configured here: never used.
        f.authorization = Some(b"Bearer x");
        assert_eq!(session_key(&s, &f), None);
    }

    #[test]
    fn prefix_hash_is_cut_at_the_configured_bytes() {
        let mut s = settings(&[KeySource::PrefixHash]);
        s.prefix_hash_bytes = 4;
        let a = KeyFacts {
            prefix: Some(b"[1,2,3]"),
            ..Default::default()
        };
        let b = KeyFacts {
            prefix: Some(b"[1,2,4]"),
            ..Default::default()
        };
        assert_eq!(session_key(&s, &a), session_key(&s, &b));
        s.prefix_hash_bytes = 0;
        assert_ne!(session_key(&s, &a), session_key(&s, &b));
    }

    #[test]
    fn pins_slide_expire_and_count() {
        let t = StickyTable::default();
        let ttl = Duration::from_secs(10);
        let gpu1 = "gpu1";
        assert_eq!(t.lookup(1, ttl, 0), None);
        t.pin(1, gpu1, 7, 100, 0);
        assert_eq!(t.lookup(1, ttl, 9_000).as_deref(), Some("gpu1"));
        // Sliding: used at 9 s, still alive at 18 s.
        assert_eq!(t.lookup(1, ttl, 18_000).as_deref(), Some("gpu1"));
        assert_eq!(t.lookup(1, ttl, 28_000), None, "idle for 10 s");
        assert_eq!(t.expire(ttl, 28_000), 1);
        let c = &t.counters;
        assert_eq!(c.insertions.load(Ordering::Relaxed), 1);
        assert_eq!(c.hits.load(Ordering::Relaxed), 2);
        assert_eq!(c.misses.load(Ordering::Relaxed), 2);
        assert_eq!(c.evictions.load(Ordering::Relaxed), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn the_lru_cap_drops_the_oldest_and_purge_drops_a_backend() {
        let t = StickyTable::default();
        for k in 0..100u64 {
            t.pin(k, if k % 2 == 0 { "a" } else { "b" }, k % 2, 64, k);
        }
        assert!(t.len() <= 64, "{}", t.len());
        let ttl = Duration::ZERO;
        assert!(t.lookup(99, ttl, 100).is_some(), "newest kept");
        assert!(t.lookup(0, ttl, 100).is_none(), "oldest evicted");
        let before = t.len() as u64;
        let purged = t.purge_backend("a");
        assert!(purged > 0);
        assert_eq!(t.len() as u64, before - purged);
        assert!(t.lookup(98, ttl, 100).is_none());
        assert!(t.lookup(97, ttl, 100).is_some());
    }

    #[test]
    fn stats_have_olla_shape() {
        let t = StickyTable::default();
        let v = t.stats_json(&StickySettings::default());
        for k in [
            "enabled",
            "active_sessions",
            "insertions",
            "hits",
            "misses",
            "evictions",
            "max_sessions",
            "idle_ttl_seconds",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let mut text = String::new();
        t.render_prometheus(&mut text);
        assert!(text.contains("olla_sticky_sessions_hits_total 0"));
    }
}
