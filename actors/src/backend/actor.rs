//! BackendActor: owns one backend's health. It runs the probe loop on the backend's own
//! `check_interval` (exactly: each probe schedules the next with `send_after`), the discovery
//! loop, and folds breaker transitions reported by request tasks. Handlers never await network
//! I/O: probes and discoveries run in spawned tasks (bounded by timeouts) that send their result
//! back as a message; a task that dies without a result still reports (drop guard).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn};

use crate::backend::client::ShardedClient;
use crate::backend::handle::BackendHandle;
use crate::breaker::BreakerTransition;
use crate::discovery::{self, ModelListing};
use crate::health::{EndpointStatus, HealthTracker, ProbeResult};
use crate::kind::BackendKind;
use crate::published::Published;
use crate::registry::RegistryMsg;
use crate::routing::loaded::{loaded_path, parse_loaded, Loaded};
use crate::spec::BackendSpec;
use crate::wait::parse_retry_after;
use crate::wait::system_after;

pub enum BackendMsg {
    /// Run a probe if `token` is current (stale timers carry old tokens).
    Probe {
        token: u64,
    },
    ProbeDone {
        result: ProbeResult,
        detected: Option<BackendKind>,
        elapsed: Duration,
    },
    /// Run a discovery if `token` is current.
    Discover {
        token: u64,
    },
    DiscoveryDone(Result<ModelListing, String>),
    /// Refresh the model list now; reply once the registry has it.
    Refresh(RpcReplyPort<Result<usize, String>>),
    /// A live request's connection was refused: down at once (definitive), probe with backoff.
    LiveRefused(String),
    /// A live request could not connect: probe now.
    PassiveFailure,
    /// Probe now (admin `probe`), whatever the current state.
    ProbeNow,
    BreakerChanged(BreakerTransition),
    /// Fails the actor on purpose by returning an error (exercises supervision).
    Crash(String),
    /// Fails the actor on purpose by panicking (exercises supervision of panics).
    Panic(String),
    GetHandle(RpcReplyPort<BackendHandle>),
    /// Ask which models are loaded if `token` is current (the warm-first timer).
    LoadedTick {
        token: u64,
    },
    /// Ask which models are loaded now (after a served request).
    CheckLoaded,
    LoadedDone(Result<Loaded, String>),
}

pub struct BackendArgs {
    pub spec: Arc<BackendSpec>,
    pub published: Arc<Published>,
}

pub struct BackendActor;

pub struct BackendState {
    spec: Arc<BackendSpec>,
    published: Arc<Published>,
    handle: BackendHandle,
    tracker: HealthTracker,
    probe_token: u64,
    probe_running: bool,
    discovery_token: u64,
    discovery_running: bool,
    discovery_failures: u32,
    has_models: bool,
    refresh_waiters: Vec<RpcReplyPort<Result<usize, String>>>,
    loaded_token: u64,
    loaded_running: bool,
}

/// Sends a loaded-models answer back; a task dropped before answering reports that.
struct LoadedReporter(Option<ActorRef<BackendMsg>>);

impl LoadedReporter {
    fn send(mut self, r: Result<Loaded, String>) {
        if let Some(a) = self.0.take() {
            let _ = a.cast(BackendMsg::LoadedDone(r));
        }
    }
}

impl Drop for LoadedReporter {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            let _ = a.cast(BackendMsg::LoadedDone(Err(
                "loaded-models check ended without a result".into(),
            )));
        }
    }
}

/// Sends a probe result back; if the task is dropped (panic) before sending, reports that.
struct ProbeReporter {
    actor: Option<ActorRef<BackendMsg>>,
    started: Instant,
}

impl ProbeReporter {
    fn send(mut self, result: ProbeResult, detected: Option<BackendKind>) {
        if let Some(a) = self.actor.take() {
            let _ = a.cast(BackendMsg::ProbeDone {
                result,
                detected,
                elapsed: self.started.elapsed(),
            });
        }
    }
}

impl Drop for ProbeReporter {
    fn drop(&mut self) {
        if let Some(a) = self.actor.take() {
            let _ = a.cast(BackendMsg::ProbeDone {
                result: ProbeResult::Transport("probe task ended without a result".into()),
                detected: None,
                elapsed: self.started.elapsed(),
            });
        }
    }
}

/// Same guarantee for discovery tasks.
struct DiscoveryReporter(Option<ActorRef<BackendMsg>>);

impl DiscoveryReporter {
    fn send(mut self, r: Result<ModelListing, String>) {
        if let Some(a) = self.0.take() {
            let _ = a.cast(BackendMsg::DiscoveryDone(r));
        }
    }
}

impl Drop for DiscoveryReporter {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            let _ = a.cast(BackendMsg::DiscoveryDone(Err(
                "discovery task ended without a result".into(),
            )));
        }
    }
}

impl BackendState {
    fn kind(&self) -> BackendKind {
        self.handle.kind()
    }

    fn start_probe(&mut self, myself: &ActorRef<BackendMsg>) {
        if self.probe_running {
            return;
        }
        self.probe_running = true;
        let handle = self.handle.clone();
        let spec = self.spec.clone();
        let reporter = ProbeReporter {
            actor: Some(myself.clone()),
            started: Instant::now(),
        };
        let detect = spec.kind == BackendKind::Auto && handle.kind() == BackendKind::Auto;
        tokio::spawn(async move {
            let timeout = spec.check_timeout;
            let detected = if detect {
                discovery::detect_kind(handle.client(), &spec, timeout).await
            } else {
                None
            };
            let kind = detected.unwrap_or_else(|| handle.kind());
            let result = probe(&handle, &spec, kind, timeout).await;
            reporter.send(result, detected);
        });
    }

    fn start_discovery(&mut self, myself: &ActorRef<BackendMsg>) {
        if self.discovery_running || self.kind() == BackendKind::Auto {
            return;
        }
        self.discovery_running = true;
        let handle = self.handle.clone();
        let spec = self.spec.clone();
        let kind = self.kind();
        let reporter = DiscoveryReporter(Some(myself.clone()));
        tokio::spawn(async move {
            let r = discovery::fetch_models(handle.client(), &spec, kind, spec.discovery.timeout)
                .await
                .map_err(|e| e.to_string());
            reporter.send(r);
        });
    }

    /// Asks the backend which models it has loaded (warm-first), in a spawned task.
    fn start_loaded_check(&mut self, myself: &ActorRef<BackendMsg>) {
        if self.loaded_running
            || self.spec.loaded_check_interval.is_none()
            || !self.handle.status().is_routable()
        {
            return;
        }
        let kind = self.kind();
        if kind == BackendKind::Auto {
            return;
        }
        let Some(path) = loaded_path(kind) else {
            let balance = &self.handle.slot().balance;
            if **balance.loaded() != Loaded::Always {
                balance.set_loaded(Arc::new(Loaded::Always));
            }
            return;
        };
        self.loaded_running = true;
        let handle = self.handle.clone();
        let spec = self.spec.clone();
        let reporter = LoadedReporter(Some(myself.clone()));
        tokio::spawn(async move {
            let result = match spec.join(path) {
                Err(e) => Err(format!("bad URL: {e}")),
                Ok(uri) => {
                    match discovery::get(handle.client(), &spec, uri, spec.check_timeout).await {
                        Ok((status, _, body)) if status.is_success() => parse_loaded(kind, &body),
                        Ok((status, _, _)) => Err(format!("{path} answered {status}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            reporter.send(result);
        });
    }

    fn schedule_loaded_check(&mut self, myself: &ActorRef<BackendMsg>) {
        if let Some(every) = self.spec.loaded_check_interval {
            self.loaded_token += 1;
            let token = self.loaded_token;
            myself.send_after(every, move || BackendMsg::LoadedTick { token });
        }
    }

    /// Pins of sticky sessions to this backend go when it stops being routable.
    fn purge_sticky_pins(&self) {
        let purged = self.published.routing.sticky.purge_backend(&self.spec.name);
        if purged > 0 {
            debug!(backend = %self.spec.name, purged, "purged sticky-session pins");
        }
    }

    fn schedule_probe(&mut self, myself: &ActorRef<BackendMsg>, after: Duration) {
        self.probe_token += 1;
        let token = self.probe_token;
        self.handle.shared().health.lock().next_check = system_after(SystemTime::now(), after);
        myself.send_after(after, move || BackendMsg::Probe { token });
    }

    fn schedule_discovery(&mut self, myself: &ActorRef<BackendMsg>, after: Duration) {
        self.discovery_token += 1;
        let token = self.discovery_token;
        myself.send_after(after, move || BackendMsg::Discover { token });
    }
}

/// One health probe: GET the health URL within `timeout`.
async fn probe(
    handle: &BackendHandle,
    spec: &BackendSpec,
    kind: BackendKind,
    timeout: Duration,
) -> ProbeResult {
    let uri = match spec.health_uri(kind) {
        Ok(u) => u,
        Err(e) => return ProbeResult::Transport(format!("bad health URL: {e}")),
    };
    let started = tokio::time::Instant::now();
    match discovery::get(handle.client(), spec, uri, timeout).await {
        Ok((status, headers, _)) => ProbeResult::Http {
            status: status.as_u16(),
            elapsed: started.elapsed(),
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        Err(e) => ProbeResult::Transport(e.to_string()),
    }
}

impl Actor for BackendActor {
    type Msg = BackendMsg;
    type State = BackendState;
    type Arguments = BackendArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BackendMsg>,
        args: BackendArgs,
    ) -> Result<BackendState, ActorProcessingErr> {
        let BackendArgs { spec, published } = args;
        // A restarted actor keeps its predecessor's published status and detected kind until
        // its first probe, so traffic does not stop while it comes back.
        let previous = published.table().get(&spec.name).cloned();
        let (initial, kind) = match &previous {
            Some(p) if p.spec().url == spec.url => (p.status(), p.kind()),
            _ => (EndpointStatus::Unknown, spec.kind),
        };
        let client = match &previous {
            Some(p) if p.spec().url == spec.url && p.spec().h2c == spec.h2c => {
                p.sharded_client().clone()
            }
            _ => ShardedClient::build(&spec),
        };
        let slot = published.slot(&spec);
        let handle =
            BackendHandle::with_slot(spec.clone(), client, myself.clone(), kind, initial, slot);
        if let Some(p) = &previous {
            let info = p.shared().health.lock().clone();
            *handle.shared().health.lock() = info;
        }
        published.upsert_backend(handle.clone());
        let has_models = published.catalog.load().backends.contains_key(&spec.name);
        Ok(BackendState {
            tracker: HealthTracker::new(spec.health.clone(), spec.check_interval, initial),
            spec,
            published,
            handle,
            probe_token: 0,
            probe_running: false,
            discovery_token: 0,
            discovery_running: false,
            discovery_failures: 0,
            has_models,
            refresh_waiters: Vec::new(),
            loaded_token: 0,
            loaded_running: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<BackendMsg>,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        state.start_probe(&myself);
        state.schedule_loaded_check(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<BackendMsg>,
        msg: BackendMsg,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackendMsg::Probe { token } => {
                if token == state.probe_token {
                    state.start_probe(&myself);
                }
            }
            BackendMsg::ProbeDone {
                result,
                detected,
                elapsed,
            } => {
                state.probe_running = false;
                if let Some(kind) = detected {
                    info!(backend = %state.spec.name, kind = %kind, "detected backend type");
                    state.handle.set_kind(kind);
                }
                let step = state.tracker.observe(&result, fastrand::f64() * 2.0 - 1.0);
                state.handle.set_status(step.status);
                {
                    let mut h = state.handle.shared().health.lock();
                    h.last_check = Some(SystemTime::now());
                    h.last_latency = Some(elapsed);
                    h.last_error = state.tracker.last_error().map(str::to_string);
                    h.consecutive_failures = state.tracker.consecutive_failures();
                }
                if let Some((old, new)) = step.changed {
                    if new.is_routable() {
                        info!(backend = %state.spec.name, from = old.as_str(), to = new.as_str(), "backend is routable");
                        state.start_loaded_check(&myself);
                    } else {
                        if old.is_routable() {
                            state.purge_sticky_pins();
                        }
                        warn!(backend = %state.spec.name, from = old.as_str(), to = new.as_str(),
                              error = state.tracker.last_error().unwrap_or(""), "backend is not routable");
                    }
                }
                if step.recovered {
                    // Proven back by probes: clear passive state and re-discover models.
                    state.handle.reset_breaker();
                }
                // A backend without models is discovered on its first good probe, but after a
                // failed discovery only the backoff timer (or a recovery) retries it.
                if step.status.is_routable()
                    && (step.recovered || (!state.has_models && state.discovery_failures == 0))
                    && state.spec.discovery.enabled
                {
                    state.start_discovery(&myself);
                }
                // The interval runs from the start of this probe, so probes keep their exact
                // cadence however long each one takes.
                let after = step
                    .next_check
                    .saturating_sub(elapsed)
                    .max(Duration::from_millis(10));
                state.schedule_probe(&myself, after);
            }
            BackendMsg::Discover { token } => {
                if token == state.discovery_token && state.handle.status().is_routable() {
                    state.start_discovery(&myself);
                } else if token == state.discovery_token {
                    // Not routable now: try again later; recovery triggers one anyway.
                    state.schedule_discovery(&myself, state.spec.discovery.interval);
                }
            }
            BackendMsg::DiscoveryDone(result) => {
                state.discovery_running = false;
                let waiters = std::mem::take(&mut state.refresh_waiters);
                match result {
                    Ok(listing) => {
                        let warning = listing.warning(state.spec.discovery.max_models);
                        let models = listing.models;
                        let n = models.len();
                        debug!(backend = %state.spec.name, models = n, "discovered models");
                        if let Some(w) = &warning {
                            warn!(backend = %state.spec.name, "{w}");
                        }
                        state.discovery_failures = 0;
                        state.has_models = true;
                        {
                            let mut h = state.handle.shared().health.lock();
                            h.last_model_sync = Some(SystemTime::now());
                            h.discovery_error = None;
                            h.discovery_warning = warning;
                            h.model_count = n;
                        }
                        if let Some(reg) = state.published.registry() {
                            if waiters.is_empty() {
                                let _ = reg.cast(RegistryMsg::Update {
                                    backend: state.spec.name.clone(),
                                    kind: state.kind(),
                                    models,
                                });
                            } else {
                                // Reply only once the registry has published the new catalog.
                                let update = vec![(state.spec.name.clone(), state.kind(), models)];
                                tokio::spawn(async move {
                                    let published = reg
                                        .call(
                                            |port| RegistryMsg::UpdateMany(update, port),
                                            Some(Duration::from_secs(5)),
                                        )
                                        .await;
                                    let ok = matches!(
                                        published,
                                        Ok(ractor::rpc::CallResult::Success(()))
                                    );
                                    for w in waiters {
                                        let _ = w.send(if ok {
                                            Ok(n)
                                        } else {
                                            Err("registry did not answer".into())
                                        });
                                    }
                                });
                            }
                        }
                        state.schedule_discovery(&myself, state.spec.discovery.interval);
                    }
                    Err(e) => {
                        warn!(backend = %state.spec.name, error = %e, "model discovery failed; keeping the last good list");
                        state.discovery_failures = state.discovery_failures.saturating_add(1);
                        state.handle.shared().health.lock().discovery_error = Some(e.clone());
                        state
                            .handle
                            .slot()
                            .events
                            .discovery_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        for w in waiters {
                            let _ = w.send(Err(e.clone()));
                        }
                        let backoff = discovery::failure_backoff(
                            state.discovery_failures,
                            state.spec.discovery.interval,
                        );
                        state.schedule_discovery(&myself, backoff);
                    }
                }
            }
            BackendMsg::Refresh(reply) => {
                state.refresh_waiters.push(reply);
                state.start_discovery(&myself);
                if !state.discovery_running {
                    for w in std::mem::take(&mut state.refresh_waiters) {
                        let _ = w.send(Err("backend type not yet detected".into()));
                    }
                }
            }
            BackendMsg::LiveRefused(error) => {
                match state.tracker.force_down(error, fastrand::f64() * 2.0 - 1.0) {
                    Some(step) => {
                        state.handle.set_status(step.status);
                        {
                            let mut h = state.handle.shared().health.lock();
                            h.last_error = state.tracker.last_error().map(str::to_string);
                            h.consecutive_failures = state.tracker.consecutive_failures();
                        }
                        if let Some((old, new)) = step.changed {
                            if old.is_routable() && !new.is_routable() {
                                state.purge_sticky_pins();
                            }
                            warn!(backend = %state.spec.name, from = old.as_str(), to = new.as_str(),
                                  error = state.tracker.last_error().unwrap_or(""),
                                  "live connection refused; backend is not routable");
                        }
                        state.schedule_probe(&myself, step.next_check);
                    }
                    // Already down (or parked): the probe loop owns it; keep the handle in step.
                    None => state.handle.set_status(state.tracker.status()),
                }
            }
            BackendMsg::PassiveFailure => {
                if state.tracker.is_up() && !state.probe_running {
                    state.probe_token += 1; // cancel the pending timer
                    state.start_probe(&myself);
                }
            }
            BackendMsg::ProbeNow => {
                if !state.probe_running {
                    state.probe_token += 1; // cancel the pending timer
                    state.start_probe(&myself);
                }
            }
            BackendMsg::BreakerChanged(t) => match t {
                BreakerTransition::Opened { open_for } => {
                    warn!(backend = %state.spec.name, open_for_ms = open_for.as_millis() as u64, "circuit breaker opened");
                }
                BreakerTransition::Closed => {
                    info!(backend = %state.spec.name, "circuit breaker closed");
                }
            },
            BackendMsg::Crash(why) => {
                return Err(format!("backend {} asked to crash: {why}", state.spec.name).into());
            }
            BackendMsg::Panic(why) => {
                panic!("backend {} asked to panic: {why}", state.spec.name);
            }
            BackendMsg::GetHandle(reply) => {
                let _ = reply.send(state.handle.clone());
            }
            BackendMsg::LoadedTick { token } => {
                if token == state.loaded_token {
                    state.start_loaded_check(&myself);
                    state.schedule_loaded_check(&myself);
                }
            }
            BackendMsg::CheckLoaded => state.start_loaded_check(&myself),
            BackendMsg::LoadedDone(result) => {
                state.loaded_running = false;
                let loaded = match result {
                    Ok(l) => l,
                    Err(e) => {
                        debug!(backend = %state.spec.name, error = %e, "loaded-models check failed");
                        Loaded::Unknown
                    }
                };
                let slot = state.handle.slot();
                if **slot.balance.loaded() != loaded {
                    slot.balance.set_loaded(Arc::new(loaded));
                }
            }
        }
        Ok(())
    }
}
