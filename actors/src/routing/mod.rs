//! Request routing as a pure function of the published snapshot, the backends' atomics, the
//! request's facts and the time: the candidates of a model come from an index built once per
//! published catalog/table ([`RouteIndex`], not a scan of every backend), then [`plan`] orders
//! them.
//!
//! Layers, outermost first: sticky sessions ([`sticky`]) → cache-aware ([`prefix`]) or
//! warm-first ([`loaded`]) → the base balancer ([`crate::balance`]). Every layer picks inside
//! the serving tier only (the highest priority tier with a routable candidate that has a free
//! slot); the rest of the candidates keep the balancer's order for failover.
//!
//! State the layers keep between requests lives in [`RoutingState`] (published with the
//! snapshots): the sticky table (sharded map), the prefix trees (sharded, short locks), and
//! per-backend atomics in each [`crate::BackendSlot`] (failure score, weighted round-robin
//! running weight, loaded models). Nothing here awaits, and no request messages an actor.

pub mod loaded;
pub mod prefix;
pub mod sticky;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::backend::BackendHandle;
use crate::balance::{self, Strategy, Weighed};
use crate::catalog::Catalog;
use crate::published::BackendTable;
use loaded::{warm_wins, WarmSettings};
use prefix::{CacheSettings, PrefixIndex};
use sticky::{KeySource, SessionKey, StickyOutcome, StickySettings, StickyTable};

/// Milliseconds since the process's routing epoch (a monotonic clock shared by the sticky
/// table and failure scores).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Recent failures of a backend: each fault adds one, each success halves it, and it halves
/// again every [`FAILURE_HALF_LIFE_MS`] without a fault. Least-connections counts it as extra
/// connections, so a backend that answers errors instantly does not look idle.
#[derive(Debug, Default)]
pub struct FailureScore {
    count: AtomicU32,
    last_ms: AtomicU64,
}

/// Half-life of a failure's weight.
pub const FAILURE_HALF_LIFE_MS: u64 = 10_000;

impl FailureScore {
    pub fn on_failure(&self, now_ms: u64) {
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(1).min(1 << 16))
            });
        self.last_ms.store(now_ms, Ordering::Relaxed);
    }
    pub fn on_success(&self) {
        if self.count.load(Ordering::Relaxed) > 0 {
            let _ = self
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
        }
    }
    pub fn penalty(&self, now_ms: u64) -> f64 {
        let c = self.count.load(Ordering::Relaxed);
        if c == 0 {
            return 0.0;
        }
        let age = now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed));
        let halvings = (age / FAILURE_HALF_LIFE_MS).min(31) as u32;
        f64::from(c >> halvings)
    }
}

/// Per-backend routing atomics (kept in the backend's slot across actor restarts).
#[derive(Debug, Default)]
pub struct BalanceState {
    pub failures: FailureScore,
    /// Smooth weighted round-robin running weight.
    pub swrr: AtomicI64,
    /// Loaded models, published by the backend's actor.
    pub loaded: ArcSwap<loaded::Loaded>,
    /// When the last after-request check of loaded models was asked for ([`now_ms`]).
    pub loaded_nudged_ms: AtomicU64,
}

/// One backend that may serve a request, with the facts the balancer reads, sampled once.
#[derive(Clone)]
pub struct Candidate {
    pub handle: BackendHandle,
    /// The backend's own name for the requested model.
    pub native_model: Option<Arc<str>>,
    /// [`prefix::backend_key`] of the backend's name.
    pub key: u64,
    pub priority: i64,
    pub weight: u32,
    pub in_flight: usize,
    pub factor: f64,
    pub penalty: f64,
    pub capacity: bool,
    /// Model resident (`None` unknown or not asked).
    pub warm: Option<bool>,
}

impl Candidate {
    /// Samples a backend for this request; `None` when it is not routable now.
    pub fn sample(
        handle: &BackendHandle,
        native_model: Option<&Arc<str>>,
        key: u64,
        now: tokio::time::Instant,
        now_ms: u64,
        want_warmth: bool,
    ) -> Option<Self> {
        let (priority, weight, _) = handle.routable_now(now)?;
        let slot = handle.slot();
        let in_flight = handle.in_flight();
        let max = handle.spec().limits.max_concurrency;
        let warm = if want_warmth {
            match native_model {
                Some(m) => slot.balance.loaded.load().has(m),
                None => None,
            }
        } else {
            None
        };
        Some(Self {
            handle: handle.clone(),
            native_model: native_model.cloned(),
            key,
            priority,
            weight,
            in_flight,
            factor: handle.status().traffic_factor(),
            penalty: slot.balance.failures.penalty(now_ms),
            capacity: max == 0 || in_flight < max,
            warm,
        })
    }
}

impl Weighed for Candidate {
    fn priority(&self) -> i64 {
        self.priority
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn traffic_factor(&self) -> f64 {
        self.factor
    }
    fn failure_penalty(&self) -> f64 {
        self.penalty
    }
    fn swrr(&self) -> Option<&AtomicI64> {
        Some(&self.handle.slot().balance.swrr)
    }
    fn has_capacity(&self) -> bool {
        self.capacity
    }
}

/// What the layers need of a candidate beyond [`Weighed`].
pub trait Routable: Weighed {
    fn backend_name(&self) -> &str;
    fn backend_key(&self) -> u64;
    fn warm(&self) -> Option<bool>;
}

impl Routable for Candidate {
    fn backend_name(&self) -> &str {
        self.handle.name()
    }
    fn backend_key(&self) -> u64 {
        self.key
    }
    fn warm(&self) -> Option<bool> {
        self.warm
    }
}

/// One backend that serves a model, under its own name.
#[derive(Clone)]
pub struct Entry {
    pub handle: BackendHandle,
    pub native: Option<Arc<str>>,
    pub key: u64,
}

/// The model → backends index of one published catalog and backend table.
pub struct RouteIndex {
    catalog: Arc<Catalog>,
    table: Arc<BackendTable>,
    /// Lower-cased model names, native names and config aliases → endpoints (table order),
    /// and whether the name is a config alias.
    by_name: HashMap<String, (Arc<[Entry]>, bool)>,
    /// Every backend (table order), no model bound.
    pub all: Arc<[Entry]>,
}

impl RouteIndex {
    /// Builds the index (O(names × endpoints)); done once per published change.
    pub fn build(catalog: Arc<Catalog>, table: Arc<BackendTable>) -> Self {
        let position: HashMap<&str, usize> = table
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name(), i))
            .collect();
        let keys: Vec<u64> = table
            .backends
            .iter()
            .map(|b| prefix::backend_key(b.name()))
            .collect();
        let mut names: Vec<String> = catalog
            .models
            .iter()
            .flat_map(|m| std::iter::once(&m.id).chain(m.aliases.iter()))
            .map(|n| n.to_lowercase())
            .collect();
        names.extend(catalog.aliases.keys().cloned());
        names.sort_unstable();
        names.dedup();
        let mut by_name = HashMap::with_capacity(names.len());
        for name in names {
            let mut entries: Vec<(usize, Entry)> = catalog
                .resolve(&name)
                .into_iter()
                .filter_map(|a| {
                    let &i = position.get(a.backend.as_str())?;
                    Some((
                        i,
                        Entry {
                            handle: table.backends[i].clone(),
                            native: Some(Arc::from(a.native_name.as_str())),
                            key: keys[i],
                        },
                    ))
                })
                .collect();
            entries.sort_by_key(|(i, _)| *i);
            let alias = catalog.is_alias(&name);
            let list: Arc<[Entry]> = entries.into_iter().map(|(_, e)| e).collect();
            by_name.insert(name, (list, alias));
        }
        let all = table
            .backends
            .iter()
            .zip(&keys)
            .map(|(b, &key)| Entry {
                handle: b.clone(),
                native: None,
                key,
            })
            .collect();
        Self {
            catalog,
            table,
            by_name,
            all,
        }
    }

    /// Whether this index was built from these snapshots.
    pub fn is_current(&self, catalog: &Arc<Catalog>, table: &Arc<BackendTable>) -> bool {
        Arc::ptr_eq(&self.catalog, catalog) && Arc::ptr_eq(&self.table, table)
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The endpoints of a requested name (case-insensitive) and whether it is a config alias.
    pub fn lookup(&self, requested: &str) -> Option<(&Arc<[Entry]>, bool)> {
        let hit = match self.by_name.get(requested) {
            Some(h) => Some(h),
            None if requested.bytes().any(|b| b.is_ascii_uppercase()) || !requested.is_ascii() => {
                self.by_name.get(&requested.to_lowercase())
            }
            None => None,
        };
        hit.map(|(e, alias)| (e, *alias))
    }
}

/// Routing state shared by every request (published beside the snapshots).
pub struct RoutingState {
    index: ArcSwap<RouteIndex>,
    pub sticky: StickyTable,
    pub prefix: PrefixIndex,
}

impl Default for RoutingState {
    fn default() -> Self {
        Self {
            index: ArcSwap::from_pointee(RouteIndex::build(
                Arc::new(Catalog::default()),
                Arc::new(BackendTable::default()),
            )),
            sticky: StickyTable::default(),
            prefix: PrefixIndex::default(),
        }
    }
}

impl RoutingState {
    /// The index of the current snapshots, rebuilt by the first request after a change.
    pub fn index(&self, catalog: &Arc<Catalog>, table: &Arc<BackendTable>) -> Arc<RouteIndex> {
        let cur = self.index.load_full();
        if cur.is_current(catalog, table) {
            return cur;
        }
        let next = Arc::new(RouteIndex::build(catalog.clone(), table.clone()));
        self.index.store(next.clone());
        next
    }
}

/// The sticky layer of one request.
pub struct StickyLayer<'a> {
    pub table: &'a StickyTable,
    pub settings: &'a StickySettings,
    pub key: SessionKey,
    pub now_ms: u64,
}

/// The cache-aware layer of one request.
pub struct CacheLayer<'a> {
    pub index: &'a PrefixIndex,
    pub settings: &'a CacheSettings,
    pub model: &'a str,
    pub segments: &'a [&'a [u8]],
}

/// The layers switched on for one request.
#[derive(Default)]
pub struct Layers<'a> {
    pub sticky: Option<StickyLayer<'a>>,
    pub cache: Option<CacheLayer<'a>>,
    pub warm: Option<&'a WarmSettings>,
}

/// What planning decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `X-Olla-Routing-Pick`: why the first candidate is first.
    pub reason: &'static str,
    /// The sticky outcome and key source (when a key was found).
    pub sticky: Option<(StickyOutcome, KeySource)>,
}

/// Orders `cands` for one request: tiers by priority, each by the base balancer, then the
/// layers choose the first candidate of the serving tier.
pub fn plan<T: Routable>(
    cands: &mut [T],
    strategy: Strategy,
    layers: &Layers,
    cursor: &AtomicUsize,
    rand01: impl FnMut() -> f64,
) -> Plan {
    balance::order(cands, strategy, cursor, rand01);
    let (tier, fell) = balance::serving_tier(cands);
    let mut reason = if fell {
        "tier_fallback"
    } else {
        strategy.reason()
    };
    // Sticky: a live pin to a candidate of the serving tier with a free slot wins.
    let mut sticky_plan = None;
    if let Some(s) = &layers.sticky {
        let pinned = s.table.lookup(s.key.hash, s.settings.idle_ttl, s.now_ms);
        if let Some(name) = &pinned {
            let at = tier
                .clone()
                .find(|&i| cands[i].has_capacity() && cands[i].backend_name() == &**name);
            if let Some(i) = at {
                balance::promote(cands, &tier, i);
                return Plan {
                    reason: "sticky_hit",
                    sticky: Some((StickyOutcome::Hit, s.key.source)),
                };
            }
        }
        sticky_plan = Some(if pinned.is_some() {
            StickyOutcome::Repin
        } else {
            StickyOutcome::Miss
        });
    }
    let mut decided = false;
    if let Some(c) = &layers.cache {
        let (r, chosen) = cache_pick(cands, &tier, c);
        reason = r;
        decided = chosen;
    }
    if let (Some(w), false) = (layers.warm, decided) {
        if let Some(r) = warm_pick(cands, &tier, w) {
            reason = r;
        }
    }
    if let Some(c) = &layers.cache {
        if let Some(first) = cands.get(tier.start) {
            c.index.insert(
                c.model,
                c.segments,
                first.backend_key(),
                c.settings.max_tree_bytes,
            );
        }
    }
    let sticky = match (&layers.sticky, sticky_plan) {
        (Some(s), Some(outcome)) => {
            if let Some(first) = cands.get(tier.start) {
                s.table.pin(
                    s.key.hash,
                    first.backend_name(),
                    s.settings.max_sessions,
                    s.now_ms,
                );
            }
            Some((outcome, s.key.source))
        }
        _ => None,
    };
    Plan { reason, sticky }
}

/// Cache-aware choice inside `tier` (ordered least-loaded first); returns the reason and
/// whether the cache decided (a prefix match) rather than load.
fn cache_pick<T: Routable>(
    cands: &mut [T],
    tier: &std::ops::Range<usize>,
    c: &CacheLayer,
) -> (&'static str, bool) {
    let mut min = usize::MAX;
    let mut max = 0usize;
    for cand in cands[tier.clone()].iter().filter(|c| c.has_capacity()) {
        min = min.min(cand.in_flight());
        max = max.max(cand.in_flight());
    }
    if min != usize::MAX
        && max - min > c.settings.balance_abs_threshold
        && max as f64 > min as f64 * c.settings.balance_rel_threshold
    {
        return ("load_balance", false);
    }
    let m = c.index.lookup(c.model, c.segments);
    if m.ratio() > 0.0 && m.ratio() >= c.settings.cache_threshold {
        let at = tier
            .clone()
            .find(|&i| cands[i].backend_key() == m.backend && cands[i].has_capacity());
        if let Some(i) = at {
            balance::promote(cands, tier, i);
            return ("prefix_match", true);
        }
    }
    ("least_loaded", false)
}

/// Warm-first inside `tier`: the least-loaded warm candidate with a free slot goes first while
/// [`warm_wins`] says so; else the least-loaded cold one. `None` when nothing is known warm.
fn warm_pick<T: Routable>(
    cands: &mut [T],
    tier: &std::ops::Range<usize>,
    w: &WarmSettings,
) -> Option<&'static str> {
    let mut best_warm: Option<usize> = None;
    let mut best_cold: Option<usize> = None;
    for i in tier.clone() {
        let c = &cands[i];
        if !c.has_capacity() {
            continue;
        }
        let slot = if c.warm() == Some(true) {
            &mut best_warm
        } else {
            &mut best_cold
        };
        if slot.is_none_or(|b| balance::load(c) < balance::load(&cands[b])) {
            *slot = Some(i);
        }
    }
    let warm = best_warm?;
    let cold_load = best_cold.map(|i| cands[i].in_flight());
    if warm_wins(w, cands[warm].in_flight(), cold_load) {
        balance::promote(cands, tier, warm);
        Some("warm")
    } else {
        let cold = best_cold?;
        balance::promote(cands, tier, cold);
        Some("warm_saturated")
    }
}

#[cfg(test)]
mod tests;
