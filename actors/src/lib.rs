//! `olla-actors`: the supervision tree of the olla daemon, and the pure policies its actors use.
//! No HTTP server code lives here.
//!
//! ```text
//! RootSupervisor                      restart budget per child; exhausted -> the tree stops
//! ├── RegistryActor                   per-backend model lists -> published Arc<Catalog>
//! ├── RouterActor                     routing policy, per-backend enabled/draining/priority/
//! │                                   weight -> published Arc<RoutingPolicy>, BackendSlot
//! └── BackendSupervisor               restart budget per backend; exhausted -> quarantine it
//!     ├── BackendActor "gpu1"         probe loop, discovery loop, breaker events; publishes its
//!     ├── BackendActor "gpu2"         BackendHandle (pooled client, status, breaker, permits,
//!     └── ...                         in-flight counters) into the published backend table
//! ```
//!
//! Request tasks never message an actor on the hot path: they read the published snapshots
//! ([`published::Published`]) and the handles' atomics, and report outcomes through the handle
//! (breaker and counters), which `cast`s to the actor only when a state change needs action.
//!
//! Pure logic, unit-tested beside it: [`breaker`], [`health`], [`balance`], [`routing`], [`catalog`],
//! [`discovery`] parsers, [`supervisor::RestartBudget`], [`wait`] (backend-supplied waits: the
//! rule against unchecked time arithmetic lives there).

pub mod backend;
pub mod balance;
pub mod breaker;
pub mod catalog;
pub mod discovery;
pub mod health;
pub mod kind;
pub mod miss;
pub mod published;
pub mod registry;
pub mod router;
pub mod routing;
pub mod spec;
pub mod supervisor;
pub mod tree;
pub mod wait;

pub use backend::{BackendHandle, BackendMsg, InFlightGuard, Outcome, SlotAttempt};
pub use health::EndpointStatus;
pub use kind::BackendKind;
pub use published::{
    BackendRouting, BackendSlot, Fallback, ModelRouting, Published, RoutingPolicy,
};
pub use router::RoutingChange;
pub use spec::BackendSpec;
pub use supervisor::ActorInfo;
pub use tree::{Tree, TreeConfig};
