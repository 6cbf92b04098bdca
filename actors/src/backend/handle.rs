//! `BackendHandle`: the cloneable, lock-light view of one backend that request tasks use on the
//! hot path without any mailbox round trip: the pooled client, the published status, the breaker,
//! in-flight/queued counters, the concurrency permits and the traffic statistics. Outcomes are
//! folded in here directly; state changes worth acting on are `cast` to the backend actor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use ractor::ActorRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::backend::client::{ShardedClient, UpstreamClient};
use crate::backend::BackendMsg;
use crate::breaker::{Admission, Breaker, BreakerTransition};
use crate::health::EndpointStatus;
use crate::kind::{BackendKind, ALL_KINDS};
use crate::published::BackendSlot;
use crate::spec::BackendSpec;
use crate::wait::clamp_backend_wait;

/// How a forwarded request ended, as far as the backend's health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx/3xx, or a response that completed.
    Success,
    /// 4xx other than 429: the backend answered; never counts against it.
    ClientError,
    /// 429: rate-limited, park the backend for this long.
    RateLimited(Duration),
    /// Connection refused/reset or connect timeout: the backend is unreachable.
    ConnectFailure,
    /// First-byte or idle timeout, a broken stream, or a 5xx.
    Fault,
    /// The client went away before a verdict.
    Cancelled,
}

/// Traffic statistics (atomics, read by the status endpoints).
#[derive(Default, Debug)]
pub struct TrafficStats {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub latency_total_ms: AtomicU64,
    pub latency_count: AtomicU64,
    pub latency_min_ms: AtomicU64,
    pub latency_max_ms: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl TrafficStats {
    fn record_latency(&self, ms: u64) {
        self.latency_total_ms.fetch_add(ms, Ordering::Relaxed);
        let n = self.latency_count.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            self.latency_min_ms.store(ms, Ordering::Relaxed);
        } else {
            self.latency_min_ms.fetch_min(ms, Ordering::Relaxed);
        }
        self.latency_max_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// Health bookkeeping shown by `/internal/status/endpoints`.
#[derive(Clone, Debug, Default)]
pub struct HealthInfo {
    pub last_check: Option<SystemTime>,
    pub next_check: Option<SystemTime>,
    pub last_latency: Option<Duration>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub last_model_sync: Option<SystemTime>,
    pub discovery_error: Option<String>,
    /// Set when the last listing was cut at `max_models_per_endpoint`.
    pub discovery_warning: Option<String>,
    pub model_count: usize,
}

pub struct BackendShared {
    pub spec: Arc<BackendSpec>,
    /// Olla's endpoint id: base36 FNV-1a of the sanitised URL.
    pub id: String,
    /// The name as a header value (`X-Olla-Endpoint` on every proxied response), made once.
    name_value: Option<http::HeaderValue>,
    pub client: ShardedClient,
    actor: ActorRef<BackendMsg>,
    /// What routing reads of the handle for every request, side by side.
    gate: Gate,
    breaker: Mutex<Breaker>,
    epoch: Instant,
    /// Run-time routing state and the in-flight count, shared by every generation of this
    /// backend's handle (a restarted actor publishes a new handle; the count stays true).
    slot: Arc<BackendSlot>,
    queued: AtomicUsize,
    permits: Option<Arc<Semaphore>>,
    pub stats: TrafficStats,
    pub health: Mutex<HealthInfo>,
}

/// The handle's state that routing reads for every request, kept in one cache line.
#[repr(C, align(16))]
struct Gate {
    /// Parked by a live 429 until this many ms after `epoch`.
    parked_until_ms: AtomicU64,
    kind: AtomicU8,
    status: AtomicU8,
    /// [`Breaker::passes_all`] of `breaker`, stored under its lock after every change: the
    /// routing hot path reads this and locks only when the breaker is open or half-open.
    breaker_passes: AtomicBool,
}

/// A cheap clone of one backend's shared state.
#[derive(Clone)]
pub struct BackendHandle(Arc<BackendShared>);

impl std::fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendHandle")
            .field("name", &self.0.spec.name)
            .field("status", &self.status())
            .finish()
    }
}

/// Result of trying to take a slot on a backend.
pub enum SlotAttempt {
    Admitted(InFlightGuard),
    /// At `max_concurrency`.
    Full,
    /// Breaker open, parked or not routable.
    Unavailable,
}

impl BackendHandle {
    pub fn new(
        spec: Arc<BackendSpec>,
        client: ShardedClient,
        actor: ActorRef<BackendMsg>,
        kind: BackendKind,
        status: EndpointStatus,
    ) -> Self {
        let slot = Arc::new(BackendSlot::new(&spec));
        Self::with_slot(spec, client, actor, kind, status, slot)
    }

    /// A handle sharing `slot` (routing state, in-flight count) with its predecessors.
    pub fn with_slot(
        spec: Arc<BackendSpec>,
        client: ShardedClient,
        actor: ActorRef<BackendMsg>,
        kind: BackendKind,
        status: EndpointStatus,
        slot: Arc<BackendSlot>,
    ) -> Self {
        let permits = (spec.limits.max_concurrency > 0)
            .then(|| Arc::new(Semaphore::new(spec.limits.max_concurrency)));
        let breaker = Breaker::new(spec.breaker.clone());
        let id = endpoint_id(&spec.configured_url);
        let name_value = http::HeaderValue::try_from(spec.name.as_str()).ok();
        Self(Arc::new(BackendShared {
            id,
            name_value,
            client,
            actor,
            gate: Gate {
                parked_until_ms: AtomicU64::new(0),
                kind: AtomicU8::new(kind_index(kind)),
                status: AtomicU8::new(status as u8),
                breaker_passes: AtomicBool::new(breaker.passes_all()),
            },
            breaker: Mutex::new(breaker),
            epoch: Instant::now(),
            slot,
            queued: AtomicUsize::new(0),
            permits,
            stats: TrafficStats::default(),
            health: Mutex::new(HealthInfo::default()),
            spec,
        }))
    }

    pub fn shared(&self) -> &BackendShared {
        &self.0
    }
    pub fn spec(&self) -> &Arc<BackendSpec> {
        &self.0.spec
    }
    pub fn name(&self) -> &str {
        &self.0.spec.name
    }
    pub fn id(&self) -> &str {
        &self.0.id
    }
    /// The name as a header value (`None` for a name no header can carry).
    pub fn name_value(&self) -> Option<&http::HeaderValue> {
        self.0.name_value.as_ref()
    }
    /// The calling thread's connection pool to this backend.
    pub fn client(&self) -> &UpstreamClient {
        self.0.client.get()
    }

    /// All pools (a restarted actor keeps them).
    pub fn sharded_client(&self) -> &ShardedClient {
        &self.0.client
    }
    pub fn actor(&self) -> &ActorRef<BackendMsg> {
        &self.0.actor
    }

    /// The resolved kind (an `auto` backend reports what detection found).
    pub fn kind(&self) -> BackendKind {
        ALL_KINDS
            .get(self.0.gate.kind.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(BackendKind::Auto)
    }
    pub fn set_kind(&self, kind: BackendKind) {
        self.0.gate.kind.store(kind_index(kind), Ordering::Relaxed);
    }

    #[inline]
    pub fn status(&self) -> EndpointStatus {
        EndpointStatus::from_u8(self.0.gate.status.load(Ordering::Acquire))
    }
    pub fn set_status(&self, status: EndpointStatus) {
        self.0.gate.status.store(status as u8, Ordering::Release);
    }

    /// Requests in flight on this backend, across restarts of its actor.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.0.slot.in_flight.load(Ordering::Relaxed)
    }

    /// The run-time routing state (enabled, draining, priority, weight, quarantine).
    pub fn slot(&self) -> &Arc<BackendSlot> {
        &self.0.slot
    }

    /// Priority as set at run time (the config's unless changed by an admin command).
    pub fn priority(&self) -> i64 {
        self.0.slot.routing().priority
    }

    /// Weight as set at run time (the config's unless changed by an admin command).
    pub fn weight(&self) -> u32 {
        self.0.slot.routing().weight
    }
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Relaxed)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.0.epoch).as_millis() as u64
    }

    /// Parked by a 429 right now?
    #[inline]
    pub fn parked(&self, now: Instant) -> bool {
        let until = self.0.gate.parked_until_ms.load(Ordering::Relaxed);
        // Never parked: skip the clock arithmetic (the routing hot path asks every backend).
        until != 0 && until > self.now_ms(now)
    }

    /// Park the backend (live 429 with Retry-After). The wait is the backend's word: clamped to
    /// `max_retry_after`, then added with saturating arithmetic (see [`crate::wait`]).
    pub fn park_for(&self, wait: Duration) {
        let wait = clamp_backend_wait(wait, self.0.spec.health.max_retry_after);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms(Instant::now()).saturating_add(wait_ms);
        self.0
            .gate
            .parked_until_ms
            .fetch_max(until, Ordering::Relaxed);
    }

    /// A live request's connection was refused. Unlike a failed probe this is definitive (the
    /// port is closed; hysteresis is for probes): the backend leaves routing at once, and the
    /// actor takes it down and probes it back with the usual backoff. Call it before reporting
    /// the request's outcome, so the immediate probe that outcome asks for sees it down.
    pub fn connection_refused(&self, error: &str) {
        if self.status().is_routable() {
            self.set_status(EndpointStatus::Offline);
        }
        let _ = self
            .0
            .actor
            .cast(BackendMsg::LiveRefused(error.to_string()));
    }

    /// Whether new requests may be sent now: enabled, not draining or quarantined, routable
    /// status, not parked, breaker admitting.
    pub fn is_routable(&self, now: Instant) -> bool {
        self.routable_now(now).is_some()
    }

    /// The routing facts of a routable backend, read once: `(priority, weight, status)`, or
    /// `None` when it is not routable now (same test as [`BackendHandle::is_routable`]).
    /// Lock-free unless the breaker is open or half-open.
    pub fn routable_now(&self, now: Instant) -> Option<(i64, u32, EndpointStatus)> {
        let (priority, weight) = self.0.slot.admitted()?;
        let status = self.admits_now(now)?;
        Some((priority, weight, status))
    }

    /// The status, when status, 429 parking and breaker let a request through now (the
    /// slot's routing state is checked separately: [`BackendSlot::admitted`]).
    #[inline]
    pub fn admits_now(&self, now: Instant) -> Option<EndpointStatus> {
        let status = self.status();
        (status.is_routable() && !self.parked(now) && self.breaker_would_admit(now))
            .then_some(status)
    }

    #[inline]
    fn breaker_would_admit(&self, now: Instant) -> bool {
        self.0.gate.breaker_passes.load(Ordering::Acquire) || self.0.breaker.lock().would_admit(now)
    }

    /// Runs `f` on the breaker under its lock and republishes [`Breaker::passes_all`].
    fn with_breaker<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut breaker = self.0.breaker.lock();
        let r = f(&mut breaker);
        self.0
            .gate
            .breaker_passes
            .store(breaker.passes_all(), Ordering::Release);
        r
    }

    /// Breaker state name for status output.
    pub fn breaker_state(&self) -> &'static str {
        self.0.breaker.lock().state_name(Instant::now())
    }

    /// Tries to take a slot without waiting.
    pub fn try_slot(&self) -> SlotAttempt {
        let permit = match &self.0.permits {
            None => None,
            Some(p) => match p.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return SlotAttempt::Full,
            },
        };
        self.admit_with(permit)
    }

    /// Waits for a slot in this backend's bounded queue. `None` = the queue is full.
    pub fn queue_slot(&self) -> Option<QueueTicket> {
        let limit = self.0.spec.limits.queue_size;
        let mut cur = self.0.queued.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            match self.0.queued.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(QueueTicket(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    fn admit_with(&self, permit: Option<OwnedSemaphorePermit>) -> SlotAttempt {
        let admission = self.with_breaker(|b| b.admit(Instant::now()));
        let trial = match admission {
            Admission::Pass => false,
            Admission::Trial => true,
            Admission::Reject => return SlotAttempt::Unavailable,
        };
        self.0.slot.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0.stats.requests.fetch_add(1, Ordering::Relaxed);
        SlotAttempt::Admitted(InFlightGuard {
            handle: self.clone(),
            _permit: permit,
            trial,
            reported: false,
        })
    }

    /// Folds an outcome into breaker and stats (called once per admitted request).
    fn record(&self, outcome: Outcome, trial: bool, first_byte: Option<Duration>) {
        let stats = &self.0.stats;
        if let Some(t) = first_byte {
            stats.record_latency(t.as_millis() as u64);
        }
        let now = Instant::now();
        let transition = self.with_breaker(|breaker| match outcome {
            Outcome::Success | Outcome::ClientError => {
                stats.successes.fetch_add(1, Ordering::Relaxed);
                breaker.on_success(trial)
            }
            Outcome::RateLimited(wait) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                if trial {
                    breaker.release_trial();
                }
                self.park_for(wait);
                None
            }
            Outcome::ConnectFailure | Outcome::Fault => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                breaker.on_fault(now, trial)
            }
            Outcome::Cancelled => {
                if trial {
                    breaker.release_trial();
                }
                None
            }
        });
        let balance = &self.0.slot.balance;
        match outcome {
            Outcome::Success => {
                balance.failures.on_success();
                self.nudge_loaded_check();
            }
            Outcome::ConnectFailure | Outcome::Fault => {
                balance.failures.on_failure(crate::routing::now_ms())
            }
            _ => {}
        }
        if let Some(t) = transition {
            let events = &self.0.slot.events;
            match t {
                BreakerTransition::Opened { .. } => &events.breaker_opened,
                BreakerTransition::Closed => &events.breaker_closed,
            }
            .fetch_add(1, Ordering::Relaxed);
            let _ = self.0.actor.cast(BackendMsg::BreakerChanged(t));
        }
        if outcome == Outcome::ConnectFailure {
            self.request_probe();
        }
    }

    /// After a served request, asks the actor to re-check loaded models (a request may have
    /// loaded one), at most once per [`LOADED_NUDGE_MS`].
    fn nudge_loaded_check(&self) {
        if self.0.spec.loaded_check_interval.is_none() {
            return;
        }
        let now = crate::routing::now_ms();
        let last = &self.0.slot.balance.loaded_nudged_ms;
        let prev = last.load(Ordering::Relaxed);
        if now.saturating_sub(prev) >= LOADED_NUDGE_MS
            && last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.0.actor.cast(BackendMsg::CheckLoaded);
        }
    }

    /// Resets the breaker (backend proven back by probes).
    pub fn reset_breaker(&self) {
        self.with_breaker(Breaker::reset);
    }

    /// Asks the actor for an immediate probe (e.g. after a live connection failure).
    pub fn request_probe(&self) {
        let _ = self.0.actor.cast(BackendMsg::PassiveFailure);
    }
}

/// Shortest gap between two after-request checks of loaded models.
pub const LOADED_NUDGE_MS: u64 = 1_000;

/// A place in a backend's wait queue; dropping it leaves the queue.
pub struct QueueTicket(BackendHandle);

impl QueueTicket {
    /// Waits up to `timeout` for a slot. `None` on timeout or if the backend became unavailable.
    pub async fn wait(self, timeout: Duration) -> Option<InFlightGuard> {
        let handle = self.0.clone();
        let permits = handle.0.permits.clone()?;
        let permit = tokio::time::timeout(timeout, permits.acquire_owned())
            .await
            .ok()?
            .ok()?;
        drop(self);
        match handle.admit_with(Some(permit)) {
            SlotAttempt::Admitted(g) => Some(g),
            _ => None,
        }
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0 .0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held for the whole life of a forwarded request (including its streamed body): counts it in
/// flight, holds its concurrency permit, and reports its outcome exactly once.
pub struct InFlightGuard {
    handle: BackendHandle,
    _permit: Option<OwnedSemaphorePermit>,
    trial: bool,
    reported: bool,
}

impl InFlightGuard {
    pub fn handle(&self) -> &BackendHandle {
        &self.handle
    }

    /// Reports the outcome now (idempotent: only the first report counts).
    pub fn report(&mut self, outcome: Outcome, first_byte: Option<Duration>) {
        if !self.reported {
            self.reported = true;
            self.handle.record(outcome, self.trial, first_byte);
        }
    }

    pub fn add_bytes(&self, n: u64) {
        self.handle
            .0
            .stats
            .bytes_out
            .fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.handle.record(Outcome::Cancelled, self.trial, None);
        }
        self.handle.0.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn kind_index(kind: BackendKind) -> u8 {
    ALL_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

/// Olla's endpoint id: FNV-1a (32-bit) of the URL as configured without userinfo, query or
/// fragment, in base 36. A trailing slash counts: `http://h:1` and `http://h:1/` differ.
pub fn endpoint_id(url: &str) -> String {
    let sanitized = crate::spec::sanitized_url(url);
    let mut hash: u32 = 0x811c_9dc5;
    for b in sanitized.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    to_base36(u64::from(hash))
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_id_ignores_credentials_query_and_fragment() {
        let a = endpoint_id("http://localhost:11434");
        assert_eq!(a, "1gi2muj", "same id as Olla");
        assert_eq!(endpoint_id("http://localhost:1234"), "13vqsvy");
        assert_eq!(a, endpoint_id("http://user:pw@localhost:11434?x=1#f"));
        assert_ne!(a, endpoint_id("http://localhost:11435"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(
            endpoint_id("http://localhost:11434/"),
            "1r8zih8",
            "trailing slash kept"
        );
    }

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }
}
