//! Pure balancing policies inside priority tiers: which backend of a tier goes first, and the
//! order the request walks on failover. Tiers always come first (highest priority first, in
//! every strategy); inside a tier the configured strategy orders the candidates:
//!
//! - `priority` (Olla's meaning): a weighted random pick by `weight` × status factor
//!   (healthy 1.0, busy 0.3, warming 0.1);
//! - `round-robin`: a strict rotation driven by one shared counter;
//! - `least-connections`: fewest in-flight requests (plus a decaying penalty for recent
//!   failures, so a backend that answers errors instantly does not attract traffic) per unit of
//!   weight × status factor; ties rotate (tiers over 16 backends rank their three least loaded
//!   first, found in one scan from the rotating offset, and keep the rest in place, so the
//!   pick stays O(n));
//! - `weighted`: smooth weighted round-robin (nginx's algorithm) by `weight` × status factor,
//!   its running state kept in one atomic per backend (no lock).
//!
//! `warm-first` and `cache-aware` are layers over least-connections ([`crate::routing`]).

use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// The configured balancer (`proxy.load_balancer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Weighted random by `weight` × status factor.
    #[default]
    Priority,
    /// Strict rotation through the tier.
    RoundRobin,
    /// Fewest in-flight requests (+ recent failures) per unit of weight; ties rotate.
    LeastConnections,
    /// Smooth weighted round-robin by `weight`.
    Weighted,
    /// Warm-first over least-connections.
    WarmFirst,
    /// Prefix-cache affinity over least-connections.
    CacheAware,
}

/// The names `proxy.load_balancer` accepts.
pub const STRATEGY_NAMES: &[&str] = &[
    "priority",
    "round-robin",
    "least-connections",
    "weighted",
    "warm-first",
    "cache-aware",
];

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "priority" => Some(Self::Priority),
            "round-robin" | "round_robin" | "roundrobin" => Some(Self::RoundRobin),
            "least-connections" | "least_connections" | "least-conn" => {
                Some(Self::LeastConnections)
            }
            "weighted" | "weighted-round-robin" | "weighted_round_robin" => Some(Self::Weighted),
            "warm-first" | "warm_first" => Some(Self::WarmFirst),
            "cache-aware" | "cache_aware" => Some(Self::CacheAware),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::RoundRobin => "round-robin",
            Self::LeastConnections => "least-connections",
            Self::Weighted => "weighted",
            Self::WarmFirst => "warm-first",
            Self::CacheAware => "cache-aware",
        }
    }
    /// The base ordering inside a tier (the layered strategies sit on least-connections).
    pub fn base(self) -> Self {
        match self {
            Self::WarmFirst | Self::CacheAware => Self::LeastConnections,
            s => s,
        }
    }
    /// The `X-Olla-Routing-Pick` reason of a pick made by the base ordering.
    pub fn reason(self) -> &'static str {
        match self.base() {
            Self::Priority => "priority",
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            _ => "least_connections",
        }
    }
}

/// What the balancer needs to know of a candidate (sampled once per request).
pub trait Weighed {
    fn priority(&self) -> i64;
    fn in_flight(&self) -> usize;
    /// [`share_of`] the backend's weight and status factor.
    fn share(&self) -> f64;
    /// Least-connections load: [`load_of`] in-flight, failure penalty and share.
    fn load(&self) -> f64;
    /// The backend's smooth-weighted-round-robin running weight (`weighted` only).
    fn swrr(&self) -> Option<&AtomicI64> {
        None
    }
    /// Whether a request can start now without waiting for a slot.
    fn has_capacity(&self) -> bool {
        true
    }
}

/// The effective share of a backend: weight × status factor (1.0 healthy, less for busy or
/// warming), never zero (a busy or warming backend gets a reduced share, not none).
#[inline]
pub fn share_of(weight: u32, traffic_factor: f64) -> f64 {
    (f64::from(weight.max(1)) * traffic_factor).max(0.01)
}

/// Least-connections load: (in-flight + recent failures, decayed, counted as extra
/// connections) per unit of share.
#[inline]
pub fn load_of(in_flight: usize, failure_penalty: f64, share: f64) -> f64 {
    (in_flight as f64 + failure_penalty) / share
}

/// The effective share of a candidate ([`Weighed::share`]).
pub fn share<T: Weighed>(c: &T) -> f64 {
    c.share()
}

/// Least-connections load ([`Weighed::load`]).
pub fn load<T: Weighed>(c: &T) -> f64 {
    c.load()
}

/// Sorts by priority, highest first, keeping the current order inside a tier (stable; the
/// candidates usually arrive sorted, which costs one pass).
pub fn sort_tiers<T: Weighed>(cands: &mut [T]) {
    if cands.windows(2).any(|w| w[0].priority() < w[1].priority()) {
        cands.sort_by_key(|c| std::cmp::Reverse(c.priority()));
    }
}

/// The tier starting at `start` (its range in `cands`, sorted by [`sort_tiers`]).
pub fn tier_at<T: Weighed>(cands: &[T], start: usize) -> Range<usize> {
    let Some(first) = cands.get(start) else {
        return start..start;
    };
    let p = first.priority();
    let len = cands[start..]
        .iter()
        .take_while(|c| c.priority() == p)
        .count();
    start..start + len
}

/// The first tier (in priority order) with a candidate that has capacity, or the top tier when
/// none has; and whether that is a lower tier than the top one.
pub fn serving_tier<T: Weighed>(cands: &[T]) -> (Range<usize>, bool) {
    serving_tier_from(cands, tier_at(cands, 0))
}

/// [`serving_tier`] when the top tier is known ([`order`] returns it).
pub fn serving_tier_from<T: Weighed>(cands: &[T], top: Range<usize>) -> (Range<usize>, bool) {
    let mut tier = top.clone();
    while !tier.is_empty() {
        if cands[tier.clone()].iter().any(|c| c.has_capacity()) {
            return (tier.clone(), tier.start != 0);
        }
        tier = tier_at(cands, tier.end);
    }
    (top, false)
}

/// Orders `cands` in place: tiers by priority descending, each tier by `strategy`.
/// `cursor` is a shared counter that rotates ties and round-robin; `rand01` yields uniform
/// numbers in (0, 1] for the weighted random pick. Returns the top tier's range.
pub fn order<T: Weighed>(
    cands: &mut [T],
    strategy: Strategy,
    cursor: &AtomicUsize,
    mut rand01: impl FnMut() -> f64,
) -> Range<usize> {
    sort_tiers(cands);
    let turn = cursor.fetch_add(1, Ordering::Relaxed);
    let mut top = 0..0;
    let mut start = 0;
    while start < cands.len() {
        let range = tier_at(cands, start);
        if start == 0 {
            top = range.clone();
        }
        start = range.end;
        order_tier(&mut cands[range], strategy.base(), turn, &mut rand01);
    }
    top
}

/// Orders one tier by `strategy` (a base strategy); `turn` rotates ties and round-robin.
pub fn order_tier<T: Weighed>(
    tier: &mut [T],
    strategy: Strategy,
    turn: usize,
    rand01: &mut impl FnMut() -> f64,
) {
    let n = tier.len();
    if n < 2 {
        if let (Strategy::Weighted, Some(c)) = (strategy, tier.first()) {
            // Keep a lone backend's running weight from drifting.
            if let Some(w) = c.swrr() {
                w.store(0, Ordering::Relaxed);
            }
        }
        return;
    }
    match strategy {
        Strategy::RoundRobin => tier.rotate_left(turn % n),
        Strategy::Weighted => weighted_pick(tier),
        Strategy::Priority => weighted_random(tier, rand01),
        _ => {
            if n <= FULL_SORT_MAX {
                tier.rotate_left(turn % n);
                // Stable: equal loads keep the rotated order, so ties rotate.
                tier.sort_by(|a, b| load(a).total_cmp(&load(b)));
            } else {
                rank_least_loaded(tier, turn % n);
            }
        }
    }
}

/// A large tier: its [`LARGE_TIER_RANKED`] least loaded candidates go first, least loaded
/// first (the pick and its likely failovers); the rest stay where they are, but for the
/// places the ranked ones left. One scan starting at `offset` finds them, and of equal loads
/// the one met earlier in the scan ranks first, so ties rotate with the offset. O(n): no
/// sort, no rotation of the whole tier, no division per candidate.
fn rank_least_loaded<T: Weighed>(tier: &mut [T], offset: usize) {
    let n = tier.len();
    // (load, position), least loaded first; `found` of them valid.
    let mut best = [(0.0f64, 0usize); LARGE_TIER_RANKED];
    let mut found = 0;
    for step in 0..n {
        let i = if offset + step >= n {
            offset + step - n
        } else {
            offset + step
        };
        let l = load(&tier[i]);
        if found == LARGE_TIER_RANKED {
            if l >= best[found - 1].0 {
                continue;
            }
            found -= 1;
        }
        // Insert after every one at most as loaded (earlier in the scan wins ties).
        let mut j = found;
        while j > 0 && l < best[j - 1].0 {
            best[j] = best[j - 1];
            j -= 1;
        }
        best[j] = (l, i);
        found += 1;
    }
    let mut at: [usize; LARGE_TIER_RANKED] = [0; LARGE_TIER_RANKED];
    for (a, b) in at.iter_mut().zip(&best) {
        *a = b.1;
    }
    for place in 0..found {
        let from = at[place];
        tier.swap(place, from);
        // A ranked one that sat at `place` moved to `from`.
        for later in at.iter_mut().take(found).skip(place + 1) {
            if *later == place {
                *later = from;
            }
        }
    }
}

/// Tiers up to this size are fully sorted by load; larger ones rank their first
/// [`LARGE_TIER_RANKED`] candidates.
pub const FULL_SORT_MAX: usize = 16;
/// Candidates ranked by load in a tier larger than [`FULL_SORT_MAX`].
pub const LARGE_TIER_RANKED: usize = 3;

/// Smooth weighted round-robin: every candidate's running weight grows by its share, the
/// largest goes first and gives back the total. The rest keep their order (failover).
fn weighted_pick<T: Weighed>(tier: &mut [T]) {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for (i, c) in tier.iter().enumerate() {
        // Integer shares (×100) keep busy/warming reductions. Rounded half up: for a share
        // ×100 of at least 1 (shares are at least 0.01) this is exactly `round()`, without
        // a call into libm per candidate.
        let w = (share(c) * 100.0 + 0.5) as i64;
        total = total.saturating_add(w);
        let cur = match c.swrr() {
            Some(a) => a.fetch_add(w, Ordering::Relaxed).saturating_add(w),
            None => w,
        };
        if best.is_none_or(|(_, b)| cur > b) {
            best = Some((i, cur));
        }
    }
    if let Some((i, _)) = best {
        if let Some(a) = tier[i].swrr() {
            a.fetch_sub(total, Ordering::Relaxed);
        }
        tier[..=i].rotate_right(1);
    }
}

/// Olla's `priority` pick: one weighted random draw by share; the chosen candidate goes first,
/// the others keep their order for failover.
fn weighted_random<T: Weighed>(tier: &mut [T], rand01: &mut impl FnMut() -> f64) {
    let total: f64 = tier.iter().map(share).sum();
    let mut target = rand01().clamp(0.0, 1.0) * total;
    let mut chosen = tier.len() - 1;
    for (i, c) in tier.iter().enumerate() {
        target -= share(c);
        if target <= 0.0 {
            chosen = i;
            break;
        }
    }
    tier[..=chosen].rotate_right(1);
}

/// Moves `cands[i]` to the front of `range`, keeping the others' order.
pub fn promote<T>(cands: &mut [T], range: &Range<usize>, i: usize) {
    if range.contains(&i) {
        cands[range.start..=i].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct C {
        name: &'static str,
        prio: i64,
        weight: u32,
        load: usize,
        factor: f64,
        penalty: f64,
        swrr: AtomicI64,
        full: bool,
    }
    impl Weighed for &C {
        fn priority(&self) -> i64 {
            self.prio
        }
        fn in_flight(&self) -> usize {
            self.load
        }
        fn share(&self) -> f64 {
            share_of(self.weight, self.factor)
        }
        fn load(&self) -> f64 {
            load_of(self.load, self.penalty, self.share())
        }
        fn swrr(&self) -> Option<&AtomicI64> {
            Some(&self.swrr)
        }
        fn has_capacity(&self) -> bool {
            !self.full
        }
    }
    fn c(name: &'static str, prio: i64, weight: u32, load: usize) -> C {
        C {
            name,
            prio,
            weight,
            load,
            factor: 1.0,
            penalty: 0.0,
            swrr: AtomicI64::new(0),
            full: false,
        }
    }
    fn names(v: &[&C]) -> Vec<&'static str> {
        v.iter().map(|c| c.name).collect()
    }
    fn first_of(
        pool: &[C],
        s: Strategy,
        cursor: &AtomicUsize,
        rng: &mut fastrand::Rng,
    ) -> &'static str {
        let mut v: Vec<&C> = pool.iter().collect();
        order(&mut v, s, cursor, || rng.f64());
        v[0].name
    }

    #[test]
    fn tiers_come_first_in_every_strategy() {
        for s in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Weighted,
        ] {
            let pool = [c("low", 50, 9, 0), c("high", 100, 1, 99)];
            let mut v: Vec<&C> = pool.iter().collect();
            order(&mut v, s, &AtomicUsize::new(0), fastrand::f64);
            assert_eq!(names(&v), vec!["high", "low"], "{s:?}");
        }
    }

    #[test]
    fn round_robin_over_three_rotates_exactly() {
        let cursor = AtomicUsize::new(0);
        let pool = [c("a", 1, 1, 0), c("b", 1, 1, 0), c("c", 1, 1, 0)];
        let mut rng = fastrand::Rng::with_seed(1);
        let firsts: Vec<_> = (0..9)
            .map(|_| first_of(&pool, Strategy::RoundRobin, &cursor, &mut rng))
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn least_connections_prefers_idle_per_weight() {
        let pool = [c("busy", 1, 1, 5), c("idle", 1, 1, 1), c("big", 1, 10, 9)];
        let mut v: Vec<&C> = pool.iter().collect();
        order(
            &mut v,
            Strategy::LeastConnections,
            &AtomicUsize::new(0),
            fastrand::f64,
        );
        assert_eq!(names(&v), vec!["big", "idle", "busy"]);
    }

    #[test]
    fn least_connections_counts_recent_failures() {
        // Idle but failing fast vs. one open stream: the failing one must not win.
        let mut failing = c("failing", 1, 1, 0);
        failing.penalty = 3.0;
        let pool = [failing, c("working", 1, 1, 1)];
        let cursor = AtomicUsize::new(0);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..10 {
            assert_eq!(
                first_of(&pool, Strategy::LeastConnections, &cursor, &mut rng),
                "working"
            );
        }
    }

    #[test]
    fn least_connections_ties_rotate() {
        let pool = [c("a", 1, 1, 2), c("b", 1, 1, 2)];
        let cursor = AtomicUsize::new(0);
        let mut rng = fastrand::Rng::with_seed(1);
        let firsts: Vec<_> = (0..4)
            .map(|_| first_of(&pool, Strategy::LeastConnections, &cursor, &mut rng))
            .collect();
        assert_eq!(firsts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn weighted_three_to_one_is_exact_and_smooth() {
        let pool = [c("heavy", 1, 3, 0), c("light", 1, 1, 0)];
        let cursor = AtomicUsize::new(0);
        let mut rng = fastrand::Rng::with_seed(1);
        let firsts: Vec<_> = (0..4000)
            .map(|_| first_of(&pool, Strategy::Weighted, &cursor, &mut rng))
            .collect();
        let heavy = firsts.iter().filter(|n| **n == "heavy").count();
        assert!((2880..=3120).contains(&heavy), "{heavy}");
        assert_eq!(heavy, 3000, "smooth WRR is exact over whole cycles");
        // Smooth: never more than three heavy picks in a row.
        assert!(firsts.windows(4).all(|w| w.contains(&"light")));
    }

    #[test]
    fn weighted_random_follows_weights() {
        let cursor = AtomicUsize::new(0);
        let mut rng = fastrand::Rng::with_seed(7);
        let pool = [c("light", 1, 1, 0), c("heavy", 1, 3, 0)];
        let heavy_first = (0..4000)
            .filter(|_| first_of(&pool, Strategy::Priority, &cursor, &mut rng) == "heavy")
            .count();
        assert!((2880..=3120).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn busy_backends_get_a_reduced_share_not_none() {
        for s in [Strategy::Priority, Strategy::Weighted] {
            let cursor = AtomicUsize::new(0);
            let mut rng = fastrand::Rng::with_seed(11);
            let mut busy = c("busy", 1, 1, 0);
            busy.factor = 0.3;
            let pool = [busy, c("ok", 1, 1, 0)];
            let busy_first = (0..2000)
                .filter(|_| first_of(&pool, s, &cursor, &mut rng) == "busy")
                .count();
            assert!((200..700).contains(&busy_first), "{s:?}: {busy_first}");
        }
    }

    #[test]
    fn serving_tier_skips_a_full_top_tier_only() {
        let mut a = c("a", 100, 1, 0);
        a.full = true;
        let pool = [a, c("b", 100, 1, 0), c("c", 50, 1, 0)];
        let v: Vec<&C> = pool.iter().collect();
        assert_eq!(serving_tier(&v), (0..2, false));
        let mut a = c("a", 100, 1, 0);
        a.full = true;
        let pool = [a, c("c", 50, 1, 0), c("d", 50, 1, 0)];
        let v: Vec<&C> = pool.iter().collect();
        assert_eq!(serving_tier(&v), (1..3, true));
    }

    #[test]
    fn promote_keeps_the_others_in_order() {
        let mut v = vec!['c', 'a', 'd', 'b'];
        promote(&mut v, &(1..4), 3);
        assert_eq!(v, vec!['c', 'b', 'a', 'd']);
        promote(&mut v, &(1..4), 0);
        assert_eq!(v, vec!['c', 'b', 'a', 'd'], "outside the range: unchanged");
    }

    #[test]
    fn a_large_tier_ranks_its_least_loaded_first() {
        let pool: Vec<C> = (0..40).map(|i| c("x", 1, 1, 40 - i)).collect();
        let mut v: Vec<&C> = pool.iter().collect();
        order(
            &mut v,
            Strategy::LeastConnections,
            &AtomicUsize::new(5),
            fastrand::f64,
        );
        let loads: Vec<usize> = v.iter().take(3).map(|c| c.load).collect();
        assert_eq!(loads, vec![1, 2, 3]);
    }

    /// The first pick of a large tier as the scan from the rotating offset defines it.
    fn first_least_loaded(loads: &[usize], offset: usize) -> usize {
        let n = loads.len();
        (0..n)
            .map(|k| (offset + k) % n)
            .fold(None, |b: Option<usize>, i| match b {
                Some(b) if loads[b] <= loads[i] => Some(b),
                _ => Some(i),
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_large_tier_ranks_three_and_leaves_the_rest_in_place() {
        let mut rng = fastrand::Rng::with_seed(3);
        for round in 0..500 {
            let n = rng.usize(FULL_SORT_MAX + 1..80);
            let spread = if round % 3 == 0 { 2 } else { 50 };
            let pool: Vec<C> = (0..n)
                .map(|i| {
                    let name: &'static str = Box::leak(format!("b{i}").into_boxed_str());
                    c(name, 1, 1, rng.usize(0..spread))
                })
                .collect();
            let loads: Vec<usize> = pool.iter().map(|c| c.load).collect();
            let before: Vec<&C> = pool.iter().collect();
            let turn = rng.usize(0..1000);
            let mut v = before.clone();
            order_tier(&mut v, Strategy::LeastConnections, turn, &mut fastrand::f64);
            // The pick: the first least loaded met from the rotating offset.
            let want = first_least_loaded(&loads, turn % n);
            assert_eq!(v[0].name, before[want].name, "round {round}");
            // The three least loaded, least first.
            let mut sorted = loads.clone();
            sorted.sort_unstable();
            let got: Vec<usize> = v.iter().take(3).map(|c| c.load).collect();
            assert_eq!(got, sorted[..3].to_vec(), "round {round}");
            // A permutation; every other place keeps its candidate or took a displaced one.
            let mut got = names(&v);
            got.sort_unstable();
            let mut all = names(&before);
            all.sort_unstable();
            assert_eq!(got, all);
            for p in 3..n {
                assert!(
                    v[p].name == before[p].name || before[..3].iter().any(|c| c.name == v[p].name),
                    "round {round}: place {p}"
                );
            }
        }
        // Equal loads: the pick rotates through the whole tier.
        let pool: Vec<C> = (0..20).map(|_| c("x", 1, 1, 0)).collect();
        let firsts: std::collections::HashSet<*const C> = (0..20)
            .map(|turn| {
                let mut v: Vec<&C> = pool.iter().collect();
                order_tier(&mut v, Strategy::LeastConnections, turn, &mut fastrand::f64);
                v[0] as *const C
            })
            .collect();
        assert_eq!(firsts.len(), 20);
    }
}
