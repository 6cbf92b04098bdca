//! Request routing as a pure function of the published snapshot, the backends' atomics, the
//! request's facts and the time: the candidates of a model come from an index built once per
//! published catalog/table ([`RouteIndex`], not a scan of every backend), each routable one is
//! sampled into a small copy of the facts the balancer reads ([`Sample`]: plain atomic loads,
//! no lock, no reference count), then [`plan`] orders them. The proxy walks the result as
//! [`Candidates`]: positions into the index's entry list, no handle cloned per candidate.
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
use crate::published::{BackendSlot, BackendTable};
use loaded::{warm_wins, WarmSettings};
use prefix::{CacheSettings, PrefixIndex, Prompt};
use sticky::{KeySource, SessionKey, StickyOutcome, StickySettings, StickyTable};

/// Milliseconds since the process's routing epoch (a monotonic clock shared by the sticky
/// table and failure scores).
pub fn now_ms() -> u64 {
    now_ms_at(Instant::now())
}

/// [`now_ms`] at `now` (a caller that read the clock already).
pub fn now_ms_at(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(*epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Recent failures of a backend: each fault adds one, each success halves it, and it halves
/// again every [`FAILURE_HALF_LIFE_MS`] without a fault. Least-connections counts it as extra
/// connections, so a backend that answers errors instantly does not look idle.
#[derive(Debug, Default)]
#[repr(C)]
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
    #[inline]
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

/// Per-backend routing atomics (kept in the backend's slot across actor restarts); the ones
/// read per request first.
#[derive(Debug, Default)]
#[repr(C)]
pub struct BalanceState {
    pub failures: FailureScore,
    /// Smooth weighted round-robin running weight.
    pub swrr: AtomicI64,
    /// Bumped after every [`BalanceState::set_loaded`]: index entries cache residency by it.
    loaded_generation: AtomicU64,
    /// Loaded models, published by the backend's actor through [`BalanceState::set_loaded`].
    loaded: ArcSwap<loaded::Loaded>,
    /// When the last after-request check of loaded models was asked for ([`now_ms`]).
    pub loaded_nudged_ms: AtomicU64,
}

impl BalanceState {
    /// The loaded models last published.
    pub fn loaded(&self) -> arc_swap::Guard<Arc<loaded::Loaded>> {
        self.loaded.load()
    }

    /// Publishes what the backend has loaded.
    pub fn set_loaded(&self, loaded: Arc<loaded::Loaded>) {
        self.loaded.store(loaded);
        self.loaded_generation.fetch_add(1, Ordering::Release);
    }

    /// Changes of the loaded models so far.
    #[inline]
    pub fn loaded_generation(&self) -> u64 {
        self.loaded_generation.load(Ordering::Acquire)
    }
}

/// One backend that serves a model, under its own name: an entry of the [`RouteIndex`], and
/// what the proxy walks ([`Candidates`]).
pub struct Entry {
    pub handle: BackendHandle,
    /// The backend's own name for the requested model (`None` in the all-backends list).
    pub native_model: Option<Arc<str>>,
    /// [`prefix::backend_key`] of the backend's name.
    pub key: u64,
    /// The handle's slot (one pointer less to follow per request).
    slot: Arc<BackendSlot>,
    /// The spec's `max_concurrency` (0 = no limit).
    max_concurrency: usize,
    /// Whether `native_model` is resident, cached per loaded-models generation:
    /// `generation << 2 | known << 1 | warm`; [`WARM_UNSET`] before the first look.
    warm: AtomicU64,
}

/// What the proxy walks: an entry of the index.
pub type Candidate = Entry;

const WARM_UNSET: u64 = u64::MAX;

/// What a request asks of each sample beyond routability.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleWants {
    /// Least-connections load (least-connections, warm-first, cache-aware).
    pub load: bool,
    /// Model residency (warm-first).
    pub warmth: bool,
}

impl SampleWants {
    /// What `strategy` and its layers read.
    pub fn of(strategy: Strategy, warmth: bool) -> Self {
        Self {
            load: warmth || strategy.base() == Strategy::LeastConnections,
            warmth,
        }
    }
}

impl Entry {
    fn new(handle: BackendHandle, native_model: Option<Arc<str>>, key: u64) -> Self {
        let max_concurrency = handle.spec().limits.max_concurrency;
        let slot = handle.slot().clone();
        Self {
            handle,
            native_model,
            key,
            slot,
            max_concurrency,
            warm: AtomicU64::new(WARM_UNSET),
        }
    }

    /// Whether the backend has `native_model` loaded (`None` unknown, or no model bound).
    /// Read through the cache while the backend's loaded models have not changed.
    #[inline]
    pub fn warm(&self) -> Option<bool> {
        let model = self.native_model.as_deref()?;
        let generation = self.slot.balance.loaded_generation() & (u64::MAX >> 2);
        let cached = self.warm.load(Ordering::Relaxed);
        if cached != WARM_UNSET && cached >> 2 == generation {
            return (cached & 2 != 0).then_some(cached & 1 != 0);
        }
        self.look_warm(model, generation)
    }

    /// [`Entry::warm`] after a change of the loaded models: looks, and caches.
    #[cold]
    fn look_warm(&self, model: &str, generation: u64) -> Option<bool> {
        // The generation was read first: a list newer than it is cached under the old
        // generation, and looked at again after the bump.
        let warm = self.slot.balance.loaded().has(model);
        let bits = match warm {
            None => 0,
            Some(w) => 2 | u64::from(w),
        };
        self.warm.store(generation << 2 | bits, Ordering::Relaxed);
        warm
    }

    /// Samples this entry (at `at` in its list) for one request; `None` when the backend is
    /// not routable now. Atomic loads only (a lock only while the breaker is not closed).
    #[inline]
    pub fn sample(
        &self,
        at: u32,
        now: tokio::time::Instant,
        now_ms: u64,
        wants: SampleWants,
    ) -> Option<Sample<'_>> {
        let (priority, weight) = self.slot.admitted()?;
        let status = self.handle.admits_now(now)?;
        let in_flight = self.slot.in_flight();
        let share = balance::share_of(weight, status.traffic_factor());
        let load = if wants.load {
            let penalty = self.slot.balance.failures.penalty(now_ms);
            if share == 1.0 {
                // The common share (weight 1, healthy): the same number without a division.
                in_flight as f64 + penalty
            } else {
                balance::load_of(in_flight, penalty, share)
            }
        } else {
            0.0
        };
        Some(Sample {
            entry: self,
            key: self.key,
            at,
            capacity: self.max_concurrency == 0 || in_flight < self.max_concurrency,
            warm: if wants.warmth { self.warm() } else { None },
            priority,
            in_flight,
            share,
            load,
        })
    }
}

/// One routable entry of a request with the facts the balancer reads, sampled once. The
/// layers order references to these (8 bytes each), so ordering moves no handles and no
/// reference counts.
pub struct Sample<'a> {
    pub entry: &'a Entry,
    /// `entry.key`, beside the rest (the sticky and cache-aware layers look for it).
    pub key: u64,
    /// Position of `entry` in its list.
    pub at: u32,
    pub capacity: bool,
    /// Model resident (`None` unknown or not asked).
    pub warm: Option<bool>,
    pub priority: i64,
    pub in_flight: usize,
    /// [`balance::share_of`] weight and status factor.
    pub share: f64,
    /// [`balance::load_of`] (0 when not asked for).
    pub load: f64,
}

impl Weighed for &Sample<'_> {
    #[inline]
    fn priority(&self) -> i64 {
        self.priority
    }
    #[inline]
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    #[inline]
    fn share(&self) -> f64 {
        self.share
    }
    #[inline]
    fn load(&self) -> f64 {
        self.load
    }
    #[inline]
    fn swrr(&self) -> Option<&AtomicI64> {
        Some(&self.entry.slot.balance.swrr)
    }
    #[inline]
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

impl Routable for &Sample<'_> {
    #[inline]
    fn backend_name(&self) -> &str {
        self.entry.handle.name()
    }
    #[inline]
    fn backend_key(&self) -> u64 {
        self.key
    }
    #[inline]
    fn warm(&self) -> Option<bool> {
        self.warm
    }
}

/// The candidates of a request in the order to try them (failover order): positions into an
/// entry list of the index, which the candidates keep alive. Cloning no handle per candidate.
#[derive(Clone)]
pub struct Candidates {
    entries: Arc<[Entry]>,
    order: Vec<usize>,
}

impl Candidates {
    /// `order` holds positions in `entries` (any out of range is dropped).
    pub fn new(entries: Arc<[Entry]>, mut order: Vec<usize>) -> Self {
        order.retain(|&i| i < entries.len());
        Self { entries, order }
    }

    /// The ordered samples of `entries` (their positions, in the vector's own memory).
    pub fn from_samples(entries: &Arc<[Entry]>, ordered: Vec<&Sample>) -> Self {
        Self {
            order: ordered.into_iter().map(|s| s.at as usize).collect(),
            entries: entries.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Candidate> {
        self.entries.get(*self.order.get(i)?)
    }

    pub fn first(&self) -> Option<&Candidate> {
        self.get(0)
    }

    /// In failover order.
    pub fn iter(&self) -> CandidatesIter<'_> {
        CandidatesIter {
            entries: &self.entries,
            order: self.order.iter(),
        }
    }

    /// Keeps the candidates `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Candidate) -> bool) {
        let entries = &self.entries;
        self.order
            .retain(|&i| entries.get(i).is_some_and(&mut keep));
    }

    pub fn clear(&mut self) {
        self.order.clear();
    }
}

/// [`Candidates::iter`].
pub struct CandidatesIter<'a> {
    entries: &'a [Entry],
    order: std::slice::Iter<'a, usize>,
}

impl<'a> Iterator for CandidatesIter<'a> {
    type Item = &'a Candidate;
    fn next(&mut self) -> Option<&'a Candidate> {
        // Positions are in range (checked by `Candidates::new`).
        self.order.by_ref().find_map(|&i| self.entries.get(i))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl<'a> IntoIterator for &'a Candidates {
    type Item = &'a Candidate;
    type IntoIter = CandidatesIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The model → backends index of one published catalog and backend table.
pub struct RouteIndex {
    catalog: Arc<Catalog>,
    table: Arc<BackendTable>,
    /// Lower-cased model names, native names and config aliases → endpoints (table order),
    /// and whether the name is a config alias.
    by_name: HashMap<String, (Arc<[Entry]>, bool), foldhash::fast::RandomState>,
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
        let mut by_name =
            HashMap::with_capacity_and_hasher(names.len(), foldhash::fast::RandomState::default());
        for name in names {
            let mut entries: Vec<(usize, Entry)> = catalog
                .resolve(&name)
                .into_iter()
                .filter_map(|a| {
                    let &i = position.get(a.backend.as_str())?;
                    Some((
                        i,
                        Entry::new(
                            table.backends[i].clone(),
                            Some(Arc::from(a.native_name.as_str())),
                            keys[i],
                        ),
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
            .map(|(b, &key)| Entry::new(b.clone(), None, key))
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
    /// The requested model (scopes the tree).
    pub model: &'a str,
    /// The prompt's segments, asked for only when the layer is consulted (a sticky hit never
    /// needs them); no segments, no cache-aware choice.
    pub segments: &'a dyn Fn() -> Vec<&'a [u8]>,
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
    let top = balance::order(cands, strategy, cursor, rand01);
    let (tier, fell) = balance::serving_tier_from(cands, top);
    let mut reason = if fell {
        "tier_fallback"
    } else {
        strategy.reason()
    };
    // Sticky: a live pin to a candidate of the serving tier with a free slot wins.
    let mut sticky_plan = None;
    if let Some(s) = &layers.sticky {
        let pinned = s
            .table
            .lookup_with(s.key.hash, s.settings.idle_ttl, s.now_ms, |name, key| {
                // The key first (a number), the name to be exact.
                tier.clone().find(|&i| {
                    let c = &cands[i];
                    c.backend_key() == key && c.has_capacity() && c.backend_name() == &**name
                })
            });
        sticky_plan = Some(match pinned {
            Some(Some(i)) => {
                balance::promote(cands, &tier, i);
                return Plan {
                    reason: "sticky_hit",
                    sticky: Some((StickyOutcome::Hit, s.key.source)),
                };
            }
            Some(None) => StickyOutcome::Repin,
            None => StickyOutcome::Miss,
        });
    }
    // The prompt is hashed once, for the lookup and the insert.
    let cache = layers.cache.as_ref().and_then(|c| {
        let prompt = c.index.prompt(c.model, &(c.segments)());
        (!prompt.is_empty()).then_some((c, prompt))
    });
    let mut decided = false;
    if let Some((c, prompt)) = &cache {
        let (r, chosen) = cache_pick(cands, &tier, c, prompt);
        reason = r;
        decided = chosen;
    }
    if let (Some(w), false) = (layers.warm, decided) {
        if let Some(r) = warm_pick(cands, &tier, w) {
            reason = r;
        }
    }
    if let Some((c, prompt)) = &cache {
        if let Some(first) = cands.get(tier.start) {
            c.index
                .insert_prompt(prompt, first.backend_key(), c.settings.max_tree_bytes);
        }
    }
    let sticky = match (&layers.sticky, sticky_plan) {
        (Some(s), Some(outcome)) => {
            if let Some(first) = cands.get(tier.start) {
                s.table.pin(
                    s.key.hash,
                    first.backend_name(),
                    first.backend_key(),
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
    prompt: &Prompt,
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
    let m = c.index.lookup_prompt(prompt);
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
