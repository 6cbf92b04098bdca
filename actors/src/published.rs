//! The snapshots actors publish for request tasks to read without messages or locks: the
//! backend table (handles sorted by priority), the model catalog, the routing policy, each
//! backend's run-time routing state ([`BackendSlot`]: enabled, draining, priority, weight,
//! quarantine) and the current actor refs (so a restarted actor's new ref replaces the old one
//! everywhere).
//!
//! Writers: the RouterActor owns the routing policy and the enabled/draining/priority/weight
//! part of every slot (admin commands and config reloads go through it); the BackendSupervisor
//! writes only the quarantine mark. Request tasks only read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use ractor::ActorRef;

use crate::backend::BackendHandle;
use crate::balance::Strategy;
use crate::catalog::Catalog;
use crate::miss::{MissGate, MissSettings};
use crate::registry::RegistryMsg;
use crate::routing::loaded::WarmSettings;
use crate::routing::prefix::CacheSettings;
use crate::routing::sticky::StickySettings;
use crate::routing::{BalanceState, RouteIndex, RoutingState};
use crate::spec::BackendSpec;

/// What to do when a requested model is not in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModelRouting {
    /// Unknown → 404; known only on non-routable backends → 503.
    #[default]
    Strict,
    /// Fall back per `fallback`.
    Optimistic,
    /// Refresh the catalog from the backends (within a timeout), then decide as strict.
    Discovery,
}

/// Optimistic routing's fallback when the model is not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Reject like strict.
    #[default]
    CompatibleOnly,
    /// Send to any routable backend of a compatible type.
    All,
    /// Reject.
    None,
}

/// Routing policy, owned by the RouterActor.
#[derive(Clone, Debug)]
pub struct RoutingPolicy {
    pub strategy: Strategy,
    /// Upstream statuses that move a request to the next candidate before the first byte.
    pub retry_on_status: Vec<u16>,
    pub model_routing: ModelRouting,
    pub fallback: Fallback,
    pub discovery_timeout: Duration,
    /// Shortest time between two refreshes started by routing misses.
    pub discovery_min_interval: Duration,
    /// How long a name still unknown after a refresh starts no new one.
    pub discovery_negative_ttl: Duration,
    /// `proxy.sticky_sessions`.
    pub sticky: StickySettings,
    /// `proxy.warm_first` (also on under the `warm-first` balancer).
    pub warm_first: WarmSettings,
    /// `proxy.cache_aware` (used by the `cache-aware` balancer).
    pub cache_aware: CacheSettings,
}

impl RoutingPolicy {
    /// Whether warm-first ordering applies (the `warm-first` balancer or `warm_first.enabled`).
    pub fn warm_first_on(&self) -> bool {
        self.warm_first.enabled || self.strategy == Strategy::WarmFirst
    }

    /// The bounds of discovery on a miss.
    pub fn miss_settings(&self) -> MissSettings {
        MissSettings {
            min_interval: self.discovery_min_interval,
            negative_ttl: self.discovery_negative_ttl,
            timeout: self.discovery_timeout,
        }
    }
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        Self {
            strategy: Strategy::Priority,
            retry_on_status: vec![502, 503, 504, 429],
            model_routing: ModelRouting::Strict,
            fallback: Fallback::CompatibleOnly,
            discovery_timeout: Duration::from_secs(2),
            discovery_min_interval: Duration::from_secs(5),
            discovery_negative_ttl: Duration::from_secs(30),
            sticky: StickySettings::default(),
            warm_first: WarmSettings::default(),
            cache_aware: CacheSettings::default(),
        }
    }
}

/// Run-time routing state of one backend (one immutable snapshot; writers swap a new one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRouting {
    /// `false` after `disable`: no new requests until `enable`.
    pub enabled: bool,
    /// Draining (`drain`, removal, reload): no new requests; in-flight ones finish.
    pub draining: bool,
    pub priority: i64,
    pub weight: u32,
    /// Set while the backend's actor is quarantined (restart budget exhausted): the last
    /// failure. A quarantined backend is unroutable and shown as `failed`.
    pub quarantined: Option<String>,
}

impl BackendRouting {
    pub fn from_spec(spec: &BackendSpec) -> Self {
        Self {
            enabled: true,
            draining: false,
            priority: spec.priority,
            weight: spec.weight,
            quarantined: None,
        }
    }

    /// Whether this state lets new requests through (health is checked separately).
    pub fn admits(&self) -> bool {
        self.enabled && !self.draining && self.quarantined.is_none()
    }
}

/// One backend's run-time state that outlives its actor and handle generations: the routing
/// snapshot and the in-flight count. Laid out so what routing reads for every request (the
/// routing word and priority, the in-flight count, the balancer atomics) shares one cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct BackendSlot {
    /// What routing reads of `routing` on every request, as plain atomics (no guard per
    /// backend per request): [`ROUTE_ADMITS`] and the weight in the low 32 bits, and the
    /// priority. The two words are stored one after the other: a reader racing a change may
    /// pair the old priority with the new weight for that one request.
    route_word: AtomicU64,
    route_priority: AtomicI64,
    pub(crate) in_flight: AtomicUsize,
    /// Balancer atomics: failure score, weighted round-robin state, loaded models.
    pub balance: BalanceState,
    /// Written only by [`BackendSlot::update`], which keeps the mirror above in step.
    routing: ArcSwap<BackendRouting>,
    /// Serialises writers of `routing` (the RouterActor, the supervisor's quarantine mark), so
    /// the mirror never ends on an older snapshot than `routing`.
    writer: Mutex<()>,
    /// Bumped by [`BackendSlot::cut_streams`]; a stream that sees it change is cut.
    cut_generation: AtomicU64,
    /// Wakes the streams waiting on [`BackendSlot::cut_requested`].
    cut: tokio::sync::Notify,
    /// Lifetime event counters (metrics), kept across actor restarts.
    pub events: BackendEvents,
}

/// Events of one backend over the process lifetime, counted where they happen (metrics read
/// them; nothing else does).
#[derive(Debug, Default)]
pub struct BackendEvents {
    pub breaker_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
    /// Restarts of the backend's actor by its supervisor (crash or quarantine end).
    pub actor_restarts: AtomicU64,
    /// Model discoveries that failed.
    pub discovery_errors: AtomicU64,
}

/// Set in the routing word while [`BackendRouting::admits`].
const ROUTE_ADMITS: u64 = 1 << 32;

fn route_word(r: &BackendRouting) -> u64 {
    u64::from(r.weight) | if r.admits() { ROUTE_ADMITS } else { 0 }
}

impl BackendSlot {
    pub fn new(spec: &BackendSpec) -> Self {
        let routing = BackendRouting::from_spec(spec);
        Self {
            route_word: AtomicU64::new(route_word(&routing)),
            route_priority: AtomicI64::new(routing.priority),
            writer: Mutex::new(()),
            routing: ArcSwap::from_pointee(routing),
            in_flight: AtomicUsize::new(0),
            balance: BalanceState::default(),
            cut_generation: AtomicU64::new(0),
            cut: tokio::sync::Notify::new(),
            events: BackendEvents::default(),
        }
    }

    /// Asks every stream still running on this backend to end now (its slot and upstream
    /// connection are released): a removal whose drain timeout ran out.
    pub fn cut_streams(&self) {
        self.cut_generation.fetch_add(1, Ordering::AcqRel);
        self.cut.notify_waiters();
    }

    /// The number of [`BackendSlot::cut_streams`] calls so far.
    pub fn cut_generation(&self) -> u64 {
        self.cut_generation.load(Ordering::Acquire)
    }

    /// Resolves at the next [`BackendSlot::cut_streams`] after `seen` (at once if one happened
    /// since `seen` was read).
    pub async fn cut_requested(&self, seen: u64) {
        let notified = self.cut.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.cut_generation() != seen {
            return;
        }
        notified.await
    }

    /// The current routing state.
    pub fn routing(&self) -> Arc<BackendRouting> {
        self.routing.load_full()
    }

    /// Applies `f` to the routing state (writers are serialised, none loses an update).
    pub fn update(&self, f: impl FnOnce(&mut BackendRouting)) {
        let _writer = self.writer.lock();
        let mut next = (**self.routing.load()).clone();
        f(&mut next);
        self.route_word.store(route_word(&next), Ordering::Release);
        self.route_priority.store(next.priority, Ordering::Release);
        self.routing.store(Arc::new(next));
    }

    /// `(priority, weight)` when the routing state admits new requests (the request hot
    /// path: two atomic loads, see `route_word`).
    #[inline]
    pub fn admitted(&self) -> Option<(i64, u32)> {
        let w = self.route_word.load(Ordering::Acquire);
        (w & ROUTE_ADMITS != 0).then(|| (self.route_priority.load(Ordering::Acquire), w as u32))
    }

    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The backends, sorted by priority (highest first), then name.
#[derive(Clone, Debug, Default)]
pub struct BackendTable {
    pub backends: Vec<BackendHandle>,
}

impl BackendTable {
    pub fn get(&self, name: &str) -> Option<&BackendHandle> {
        self.backends.iter().find(|b| b.name() == name)
    }
}

/// Everything published, shared by the tree and every request task.
pub struct Published {
    table: ArcSwap<BackendTable>,
    /// Serialises table writers (readers never lock).
    table_write: Mutex<()>,
    pub catalog: ArcSwap<Catalog>,
    pub policy: ArcSwap<RoutingPolicy>,
    /// Rotates ties and round-robin.
    pub cursor: AtomicUsize,
    /// The live RegistryActor (replaced on restart).
    pub registry: RwLock<Option<ActorRef<RegistryMsg>>>,
    /// The current backend specs (the BackendSupervisor keeps this current; a restarted
    /// supervisor starts from it).
    pub specs: RwLock<Vec<Arc<BackendSpec>>>,
    /// Config `model_aliases`.
    pub model_aliases: RwLock<HashMap<String, Vec<String>>>,
    /// Models not seen for this long expire from the catalog.
    pub stale_threshold: Duration,
    /// Each backend's run-time state, by name (kept across actor restarts).
    slots: RwLock<HashMap<String, Arc<BackendSlot>>>,
    /// Bounds discovery on a routing miss.
    pub miss_gate: MissGate,
    /// The model index, sticky table and prefix trees.
    pub routing: RoutingState,
}

impl Published {
    pub fn new(policy: RoutingPolicy, stale_threshold: Duration) -> Self {
        Self {
            table: ArcSwap::from_pointee(BackendTable::default()),
            table_write: Mutex::new(()),
            catalog: ArcSwap::from_pointee(Catalog::default()),
            policy: ArcSwap::from_pointee(policy),
            cursor: AtomicUsize::new(0),
            registry: RwLock::new(None),
            specs: RwLock::new(Vec::new()),
            model_aliases: RwLock::new(HashMap::new()),
            stale_threshold,
            slots: RwLock::new(HashMap::new()),
            miss_gate: MissGate::default(),
            routing: RoutingState::default(),
        }
    }

    /// The model → backends index of the current catalog and table.
    pub fn route_index(&self) -> Arc<RouteIndex> {
        let catalog = self.catalog.load();
        let table = self.table.load();
        self.routing.index(&catalog, &table)
    }

    /// The backend's slot, created from its spec on first use.
    pub fn slot(&self, spec: &BackendSpec) -> Arc<BackendSlot> {
        if let Some(s) = self.slots.read().get(&spec.name) {
            return s.clone();
        }
        self.slots
            .write()
            .entry(spec.name.clone())
            .or_insert_with(|| Arc::new(BackendSlot::new(spec)))
            .clone()
    }

    /// The backend's slot, if it exists.
    pub fn slot_of(&self, name: &str) -> Option<Arc<BackendSlot>> {
        self.slots.read().get(name).cloned()
    }

    /// The current backend table (cheap: an `Arc` clone).
    pub fn table(&self) -> Arc<BackendTable> {
        self.table.load_full()
    }

    /// Inserts or replaces (by name) a backend's handle.
    pub fn upsert_backend(&self, handle: BackendHandle) {
        let _w = self.table_write.lock();
        let cur = self.table.load();
        let mut backends: Vec<BackendHandle> = cur
            .backends
            .iter()
            .filter(|b| b.name() != handle.name())
            .cloned()
            .collect();
        backends.push(handle);
        backends.sort_by(|a, b| {
            b.spec()
                .priority
                .cmp(&a.spec().priority)
                .then_with(|| a.name().cmp(b.name()))
        });
        self.table.store(Arc::new(BackendTable { backends }));
    }

    /// Removes a backend's handle and its run-time state.
    pub fn remove_backend(&self, name: &str) {
        self.slots.write().remove(name);
        let _w = self.table_write.lock();
        let cur = self.table.load();
        let backends = cur
            .backends
            .iter()
            .filter(|b| b.name() != name)
            .cloned()
            .collect();
        self.table.store(Arc::new(BackendTable { backends }));
    }

    pub fn registry(&self) -> Option<ActorRef<RegistryMsg>> {
        self.registry.read().clone()
    }
}
