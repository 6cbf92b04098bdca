//! One backend: its actor (probe loop, discovery loop, breaker bookkeeping), its pooled clients
//! (hyper's for TLS, h2c, probes and discovery; the direct HTTP/1.1 one in `h1` for proxying to
//! plain `http://` backends) and the handle request tasks use.

mod actor;
pub mod client;
pub mod h1;
mod handle;

pub use actor::{BackendActor, BackendArgs, BackendMsg};
pub use client::{
    build_client, enter_serving_thread, set_serving_threads, ShardedClient, UpstreamClient,
};
pub use handle::{
    endpoint_id, BackendHandle, HealthInfo, InFlightGuard, Outcome, QueueTicket, SlotAttempt,
    TrafficStats,
};
