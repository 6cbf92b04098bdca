//! The snapshots actors publish for request tasks to read without messages or locks: the
//! backend table (handles sorted by priority), the model catalog, the routing policy, and the
//! current actor refs (so a restarted actor's new ref replaces the old one everywhere).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
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
}

impl RoutingPolicy {
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
        }
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
    /// Bounds discovery on a routing miss.
    pub miss_gate: MissGate,
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
            miss_gate: MissGate::default(),
        }
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

    /// Removes a backend's handle.
    pub fn remove_backend(&self, name: &str) {
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
