//! Unit tests of [`super::plan`]: the layers over the base balancer, with plain candidates.

use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::time::Duration;

use super::*;

struct C {
    name: &'static str,
    prio: i64,
    load: usize,
    full: bool,
    warm: Option<bool>,
    swrr: AtomicI64,
}

impl Weighed for &C {
    fn priority(&self) -> i64 {
        self.prio
    }
    fn weight(&self) -> u32 {
        1
    }
    fn in_flight(&self) -> usize {
        self.load
    }
    fn traffic_factor(&self) -> f64 {
        1.0
    }
    fn swrr(&self) -> Option<&AtomicI64> {
        Some(&self.swrr)
    }
    fn has_capacity(&self) -> bool {
        !self.full
    }
}

impl Routable for &C {
    fn backend_name(&self) -> &str {
        self.name
    }
    fn backend_key(&self) -> u64 {
        prefix::backend_key(self.name)
    }
    fn warm(&self) -> Option<bool> {
        self.warm
    }
}

fn c(name: &'static str, prio: i64, load: usize) -> C {
    C {
        name,
        prio,
        load,
        full: false,
        warm: None,
        swrr: AtomicI64::new(0),
    }
}

fn first(
    pool: &[C],
    strategy: Strategy,
    layers: &Layers,
    cursor: &AtomicUsize,
) -> (&'static str, Plan) {
    let mut v: Vec<&C> = pool.iter().collect();
    let p = plan(&mut v, strategy, layers, cursor, fastrand::f64);
    (v[0].name, p)
}

fn sticky_settings() -> StickySettings {
    StickySettings {
        enabled: true,
        ..StickySettings::default()
    }
}

#[test]
fn tiers_are_never_crossed_while_the_top_tier_has_capacity() {
    let cursor = AtomicUsize::new(0);
    for s in [
        Strategy::Priority,
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::Weighted,
        Strategy::WarmFirst,
    ] {
        let mut busy = c("top", 100, 50);
        busy.warm = Some(false);
        let mut low = c("low", 10, 0);
        low.warm = Some(true);
        let pool = [low, busy];
        let w = WarmSettings::default();
        let layers = Layers {
            warm: Some(&w),
            ..Layers::default()
        };
        for _ in 0..20 {
            assert_eq!(first(&pool, s, &layers, &cursor).0, "top", "{s:?}");
        }
    }
    // The top tier full: the lower tier serves, and says so.
    let mut full = c("top", 100, 1);
    full.full = true;
    let pool = [full, c("low", 10, 0)];
    let mut v: Vec<&C> = pool.iter().collect();
    let p = plan(
        &mut v,
        Strategy::LeastConnections,
        &Layers::default(),
        &cursor,
        fastrand::f64,
    );
    assert_eq!(p.reason, "tier_fallback");
    assert_eq!(v[0].name, "top", "the walk still visits tiers in order");
}

#[test]
fn sticky_hit_miss_repin() {
    let table = StickyTable::default();
    let settings = sticky_settings();
    let key = SessionKey {
        hash: 42,
        source: KeySource::SessionHeader,
    };
    let cursor = AtomicUsize::new(0);
    let layers = |now_ms| Layers {
        sticky: Some(StickyLayer {
            table: &table,
            settings: &settings,
            key,
            now_ms,
        }),
        ..Layers::default()
    };
    let pool = [c("a", 1, 0), c("b", 1, 0), c("c", 1, 0)];
    let (pinned, p) = first(&pool, Strategy::RoundRobin, &layers(0), &cursor);
    assert_eq!(
        p.sticky,
        Some((StickyOutcome::Miss, KeySource::SessionHeader))
    );
    for i in 0..100 {
        let (got, p) = first(&pool, Strategy::RoundRobin, &layers(i), &cursor);
        assert_eq!(got, pinned);
        assert_eq!(
            (p.reason, p.sticky.map(|s| s.0)),
            ("sticky_hit", Some(StickyOutcome::Hit))
        );
    }
    // The pinned backend is gone from the candidates: repinned elsewhere, then a hit there.
    let rest: Vec<C> = ["a", "b", "c"]
        .into_iter()
        .filter(|n| *n != pinned)
        .map(|n| c(n, 1, 0))
        .collect();
    let (moved, p) = first(&rest, Strategy::RoundRobin, &layers(200), &cursor);
    assert_ne!(moved, pinned);
    assert_eq!(p.sticky.map(|s| s.0), Some(StickyOutcome::Repin));
    assert_eq!(
        first(&rest, Strategy::RoundRobin, &layers(201), &cursor).0,
        moved
    );
    assert!(table.lookup(42, Duration::ZERO, 300).is_some());
}

#[test]
fn warm_first_prefers_warm_then_overflows_then_spreads() {
    let w = WarmSettings::default();
    let layers = Layers {
        warm: Some(&w),
        ..Layers::default()
    };
    let cursor = AtomicUsize::new(0);
    let mut warm = c("warm", 1, 3);
    warm.warm = Some(true);
    let mut cold = c("cold", 1, 0);
    cold.warm = Some(false);
    let (got, p) = first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor);
    assert_eq!((got, p.reason), ("warm", "warm"));
    // Saturated (no free slot): the cold one takes the overflow.
    let mut warm = c("warm", 1, 3);
    warm.warm = Some(true);
    warm.full = true;
    let mut cold = c("cold", 1, 0);
    cold.warm = Some(false);
    assert_eq!(
        first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor).0,
        "cold"
    );
    // Busier than max_wait_ratio allows: the cold one wins.
    let mut warm = c("warm", 1, 9);
    warm.warm = Some(true);
    let mut cold = c("cold", 1, 1);
    cold.warm = Some(false);
    let (got, p) = first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor);
    assert_eq!((got, p.reason), ("cold", "warm_saturated"));
    // Nobody warm: least-connections rotates ties.
    let pool = [c("a", 1, 0), c("b", 1, 0)];
    let picks: Vec<_> = (0..4)
        .map(|_| first(&pool, Strategy::WarmFirst, &layers, &cursor).0)
        .collect();
    assert!(picks.contains(&"a") && picks.contains(&"b"), "{picks:?}");
}

#[test]
fn cache_aware_keeps_conversations_and_spreads_new_ones() {
    let index = PrefixIndex::default();
    let settings = CacheSettings::default();
    let cursor = AtomicUsize::new(0);
    let pool = [c("a", 1, 0), c("b", 1, 0)];
    let sys = "You are a helpful assistant. ".repeat(40);
    let mut convs: Vec<Vec<String>> = (0..6)
        .map(|i| vec![sys.clone(), format!("conversation {i} asks something")])
        .collect();
    let mut home: Vec<Option<&'static str>> = vec![None; convs.len()];
    for turn in 0..4 {
        for (i, conv) in convs.iter_mut().enumerate() {
            let segs: Vec<&[u8]> = conv.iter().map(|s| s.as_bytes()).collect();
            let layers = Layers {
                cache: Some(CacheLayer {
                    index: &index,
                    settings: &settings,
                    model: "m",
                    segments: &segs,
                }),
                ..Layers::default()
            };
            let (got, p) = first(&pool, Strategy::CacheAware, &layers, &cursor);
            match home[i] {
                None => home[i] = Some(got),
                Some(h) => {
                    assert_eq!(got, h, "conversation {i} turn {turn}");
                    assert_eq!(p.reason, "prefix_match");
                }
            }
            conv.push(format!("answer {turn} of {i}"));
            conv.push(format!("follow-up {turn} of {i}"));
        }
    }
    let on_a = home.iter().filter(|h| **h == Some("a")).count();
    assert!(
        (1..6).contains(&on_a),
        "the shared system prompt collapsed traffic: {home:?}"
    );
}

#[test]
fn cache_aware_balances_a_skewed_load() {
    let index = PrefixIndex::default();
    let settings = CacheSettings {
        balance_abs_threshold: 2,
        ..CacheSettings::default()
    };
    let segs: Vec<&[u8]> = vec![b"a long conversation"];
    index.insert("m", &segs, prefix::backend_key("busy"), 1 << 20);
    let layers = Layers {
        cache: Some(CacheLayer {
            index: &index,
            settings: &settings,
            model: "m",
            segments: &segs,
        }),
        ..Layers::default()
    };
    // A small difference in load: the cache decides.
    let pool = [c("busy", 1, 2), c("idle", 1, 0)];
    let (got, p) = first(&pool, Strategy::CacheAware, &layers, &AtomicUsize::new(0));
    assert_eq!((got, p.reason), ("busy", "prefix_match"));
    // Skewed beyond both thresholds: the least-loaded wins, and the prefix now lives there.
    let pool = [c("busy", 1, 10), c("idle", 1, 0)];
    let (got, p) = first(&pool, Strategy::CacheAware, &layers, &AtomicUsize::new(0));
    assert_eq!((got, p.reason), ("idle", "load_balance"));
    assert_eq!(
        index.lookup("m", &segs).backend,
        prefix::backend_key("idle")
    );
}

#[test]
fn failure_score_decays() {
    let f = FailureScore::default();
    assert_eq!(f.penalty(0), 0.0);
    for _ in 0..8 {
        f.on_failure(1_000);
    }
    assert_eq!(f.penalty(1_000), 8.0);
    assert_eq!(f.penalty(1_000 + FAILURE_HALF_LIFE_MS), 4.0);
    f.on_success();
    assert_eq!(f.penalty(1_000), 4.0);
}
