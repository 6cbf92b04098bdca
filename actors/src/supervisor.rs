//! Supervision: the restart budget (pure), the BackendSupervisor (one BackendActor per backend)
//! and the RootSupervisor (registry, router, backend supervisor).
//!
//! Policy, as documented in the README:
//! - A child that fails (panic or `Err`) is restarted from its spec after a backoff
//!   (100 ms doubling, capped at 5 s), scheduled with `send_after` so the supervisor's mailbox
//!   never blocks.
//! - Each child has a budget: at most `max_restarts` within `window`.
//! - **Fault isolation (the rule later features must keep):** a backend's failures stay with
//!   that backend. One backend actor that keeps crashing never restarts its siblings, never
//!   fails the BackendSupervisor and never stops the process. When it exhausts its budget it is
//!   **quarantined**: its slot is marked (unroutable, shown as `failed` with the last failure),
//!   and it is retried after `quarantine_backoff` (default 5 min), doubling on each further
//!   quarantine up to `quarantine_max_backoff`; each retry starts with a fresh budget. An admin
//!   `restart` or a spec update ends a quarantine at once. Nothing a backend sends may make
//!   the BackendSupervisor itself return an error.
//! - The root's children (registry, router, backend supervisor) are the only ones that
//!   escalate: a root child that exhausts its budget stops the tree, and the daemon exits with
//!   status 3 so an outer process supervisor (systemd, Docker) restarts it. The process exits
//!   only when the registry or the router (or the supervisor of the backends) cannot be kept
//!   alive.
//! - A clean stop (a backend removed, or replaced by an update or an admin restart) is never
//!   restarted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::backend::{BackendActor, BackendArgs, BackendMsg};
use crate::published::Published;
use crate::registry::{RegistryActor, RegistryMsg};
use crate::router::{RouterActor, RouterMsg};
use crate::spec::BackendSpec;

/// "At most N restarts within a window", with exponential backoff between restarts.
#[derive(Clone, Debug)]
pub struct RestartBudget {
    pub max_restarts: u32,
    pub window: Duration,
    recent: VecDeque<Instant>,
}

/// What to do with a failed child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    RestartAfter(Duration),
    Escalate,
}

impl RestartBudget {
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.max_restarts {
            return RestartDecision::Escalate;
        }
        self.recent.push_back(now);
        let n = self.recent.len() as u32 - 1;
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << n.min(10))
            .min(Duration::from_secs(5));
        RestartDecision::RestartAfter(delay)
    }
}

/// Budgets of the tree.
#[derive(Clone, Debug)]
pub struct SupervisionSettings {
    /// Per backend actor.
    pub backend_max_restarts: u32,
    pub backend_window: Duration,
    /// Per child of the root (registry, router, backend supervisor).
    pub root_max_restarts: u32,
    pub root_window: Duration,
    /// First quarantine of a backend that exhausted its budget; doubles per quarantine.
    pub quarantine_backoff: Duration,
    pub quarantine_max_backoff: Duration,
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            backend_max_restarts: 5,
            backend_window: Duration::from_secs(60),
            root_max_restarts: 3,
            root_window: Duration::from_secs(60),
            quarantine_backoff: Duration::from_secs(300),
            quarantine_max_backoff: Duration::from_secs(3600),
        }
    }
}

/// How long the `n`-th quarantine (1-based) lasts: `base` doubling, capped at `max`.
pub fn quarantine_delay(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max.max(base))
}

/// What `/admin/actors` shows of one supervised actor.
#[derive(Clone, Debug)]
pub struct ActorInfo {
    /// e.g. `backend:gpu1`, `registry`.
    pub name: String,
    /// `None` while it is not running (restarting, quarantined, stopped).
    pub id: Option<String>,
    /// `running`, `restarting`, `quarantined`, `stopped`.
    pub state: &'static str,
    pub restarts: u64,
    pub last_failure: Option<String>,
    /// While quarantined: when the next retry is due.
    pub retry_at: Option<SystemTime>,
    pub children: Vec<ActorInfo>,
}

/// The failure text of a supervision event (a panic's message or the returned error).
fn failure_text(err: &str) -> String {
    let mut s = err.to_string();
    if s.len() > 1024 {
        let mut cut = 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// ===== BackendSupervisor =====

pub enum BackendSupMsg {
    Respawn(String),
    /// A quarantine ended (stale when the generation moved on).
    Unquarantine(String, u64),
    Add(Arc<BackendSpec>, RpcReplyPort<Result<(), String>>),
    Remove(String, RpcReplyPort<bool>),
    /// Replaces a backend's spec: its actor is replaced by one running the new spec (its
    /// published status, detected type and connection pools carry over). `false`: unknown.
    Update(Arc<BackendSpec>, RpcReplyPort<bool>),
    /// Stops and restarts a backend's actor (new actor id; ends a quarantine). `false`: unknown.
    Restart(String, RpcReplyPort<bool>),
    Children(RpcReplyPort<Vec<(String, ActorRef<BackendMsg>)>>),
    Info(RpcReplyPort<Vec<ActorInfo>>),
}

pub struct BackendSupArgs {
    pub published: Arc<Published>,
    pub specs: Vec<Arc<BackendSpec>>,
    pub settings: SupervisionSettings,
}

pub struct BackendSupervisor;

pub struct BackendSupState {
    published: Arc<Published>,
    settings: SupervisionSettings,
    specs: BTreeMap<String, Arc<BackendSpec>>,
    children: HashMap<ActorId, String>,
    refs: BTreeMap<String, ActorRef<BackendMsg>>,
    budgets: HashMap<String, RestartBudget>,
    restarts: HashMap<String, u64>,
    last_failure: HashMap<String, String>,
    /// Quarantines so far, per backend (sets the next quarantine's length).
    quarantines: HashMap<String, u32>,
    /// Backends in quarantine: (generation, retry time).
    quarantined: HashMap<String, (u64, SystemTime)>,
    generation: u64,
}

impl BackendSupState {
    /// Counts a restart of a backend's actor in its lifetime events (metrics).
    fn count_restart(&self, name: &str) {
        if let Some(slot) = self.published.slot_of(name) {
            slot.events
                .actor_restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Replaces a running actor with a fresh one (clean stop, never restarted).
    async fn replace(
        &mut self,
        myself: &ActorRef<BackendSupMsg>,
        name: &str,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(r) = self.refs.remove(name) {
            self.children.remove(&r.get_id());
            r.stop(Some(why.into()));
        }
        self.end_quarantine(name);
        self.spawn_child(myself, name).await
    }

    fn end_quarantine(&mut self, name: &str) {
        if self.quarantined.remove(name).is_some() {
            if let Some(slot) = self.published.slot_of(name) {
                slot.update(|r| r.quarantined = None);
            }
        }
    }

    fn info(&self) -> Vec<ActorInfo> {
        self.specs
            .keys()
            .map(|name| {
                let running = self.refs.get(name);
                let quarantine = self.quarantined.get(name);
                ActorInfo {
                    name: format!("backend:{name}"),
                    id: running.map(|r| r.get_id().to_string()),
                    state: match (running, quarantine) {
                        (Some(_), _) => "running",
                        (None, Some(_)) => "quarantined",
                        (None, None) => "restarting",
                    },
                    restarts: self.restarts.get(name).copied().unwrap_or(0),
                    last_failure: self.last_failure.get(name).cloned(),
                    retry_at: quarantine.map(|(_, at)| *at),
                    children: Vec::new(),
                }
            })
            .collect()
    }

    async fn spawn_child(
        &mut self,
        myself: &ActorRef<BackendSupMsg>,
        name: &str,
    ) -> Result<(), ActorProcessingErr> {
        let Some(spec) = self.specs.get(name).cloned() else {
            return Ok(());
        };
        let args = BackendArgs {
            spec,
            published: self.published.clone(),
        };
        let (child, _) = Actor::spawn_linked(None, BackendActor, args, myself.get_cell()).await?;
        self.children.insert(child.get_id(), name.to_string());
        self.refs.insert(name.to_string(), child);
        Ok(())
    }

    fn publish_specs(&self) {
        *self.published.specs.write() = self.specs.values().cloned().collect();
    }
}

impl Actor for BackendSupervisor {
    type Msg = BackendSupMsg;
    type State = BackendSupState;
    type Arguments = BackendSupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BackendSupMsg>,
        args: BackendSupArgs,
    ) -> Result<BackendSupState, ActorProcessingErr> {
        let mut state = BackendSupState {
            published: args.published,
            settings: args.settings,
            specs: args
                .specs
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            children: HashMap::new(),
            refs: BTreeMap::new(),
            budgets: HashMap::new(),
            restarts: HashMap::new(),
            last_failure: HashMap::new(),
            quarantines: HashMap::new(),
            quarantined: HashMap::new(),
            generation: 0,
        };
        state.publish_specs();
        // A fresh supervisor starts every backend afresh: no quarantine survives it.
        for name in state.specs.keys() {
            if let Some(slot) = state.published.slot_of(name) {
                slot.update(|r| r.quarantined = None);
            }
        }
        // Backends no longer configured lose their published handle.
        let stale: Vec<String> = state
            .published
            .table()
            .backends
            .iter()
            .map(|b| b.name().to_string())
            .filter(|n| !state.specs.contains_key(n))
            .collect();
        for n in stale {
            state.published.remove_backend(&n);
        }
        let names: Vec<String> = state.specs.keys().cloned().collect();
        for name in names {
            state.spawn_child(&myself, &name).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<BackendSupMsg>,
        msg: BackendSupMsg,
        state: &mut BackendSupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackendSupMsg::Respawn(name) => {
                if state.specs.contains_key(&name)
                    && !state.refs.contains_key(&name)
                    && !state.quarantined.contains_key(&name)
                {
                    state.spawn_child(&myself, &name).await?;
                    *state.restarts.entry(name.clone()).or_default() += 1;
                    state.count_restart(&name);
                    info!(backend = %name, "backend actor restarted");
                }
            }
            BackendSupMsg::Unquarantine(name, generation) => {
                if state
                    .quarantined
                    .get(&name)
                    .is_some_and(|(g, _)| *g == generation)
                    && state.specs.contains_key(&name)
                {
                    info!(backend = %name, "quarantine over; restarting the backend actor");
                    state.end_quarantine(&name);
                    state.spawn_child(&myself, &name).await?;
                    state.count_restart(&name);
                    *state.restarts.entry(name).or_default() += 1;
                }
            }
            BackendSupMsg::Update(spec, reply) => {
                let name = spec.name.clone();
                if !state.specs.contains_key(&name) {
                    let _ = reply.send(false);
                    return Ok(());
                }
                if let Some(slot) = state.published.slot_of(&name) {
                    slot.update(|r| {
                        r.priority = spec.priority;
                        r.weight = spec.weight;
                    });
                }
                state.specs.insert(name.clone(), spec);
                state.publish_specs();
                state.replace(&myself, &name, "updated").await?;
                info!(backend = %name, "backend updated");
                let _ = reply.send(true);
            }
            BackendSupMsg::Restart(name, reply) => {
                if !state.specs.contains_key(&name) {
                    let _ = reply.send(false);
                    return Ok(());
                }
                state.budgets.remove(&name);
                state.replace(&myself, &name, "restart requested").await?;
                *state.restarts.entry(name.clone()).or_default() += 1;
                info!(backend = %name, "backend actor restarted on request");
                let _ = reply.send(true);
            }
            BackendSupMsg::Info(reply) => {
                let _ = reply.send(state.info());
            }
            BackendSupMsg::Add(spec, reply) => {
                let name = spec.name.clone();
                if state.specs.contains_key(&name) {
                    let _ = reply.send(Err(format!("backend {name} already exists")));
                    return Ok(());
                }
                state.specs.insert(name.clone(), spec);
                state.publish_specs();
                let r = state
                    .spawn_child(&myself, &name)
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            BackendSupMsg::Remove(name, reply) => {
                let existed = state.specs.remove(&name).is_some();
                state.publish_specs();
                if let Some(r) = state.refs.remove(&name) {
                    state.children.remove(&r.get_id());
                    r.stop(Some("removed".into()));
                }
                state.budgets.remove(&name);
                state.restarts.remove(&name);
                state.last_failure.remove(&name);
                state.quarantines.remove(&name);
                state.quarantined.remove(&name);
                state.published.remove_backend(&name);
                if let Some(reg) = state.published.registry() {
                    let _ = reg.cast(RegistryMsg::Remove(name));
                }
                let _ = reply.send(existed);
            }
            BackendSupMsg::Children(reply) => {
                let _ = reply.send(
                    state
                        .refs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                );
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<BackendSupMsg>,
        evt: SupervisionEvent,
        state: &mut BackendSupState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(name) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.refs.remove(&name);
                if !state.specs.contains_key(&name) {
                    return Ok(());
                }
                let reason = failure_text(&err.to_string());
                state.last_failure.insert(name.clone(), reason.clone());
                let settings = &state.settings;
                let budget = state.budgets.entry(name.clone()).or_insert_with(|| {
                    RestartBudget::new(settings.backend_max_restarts, settings.backend_window)
                });
                match budget.on_failure(Instant::now()) {
                    RestartDecision::RestartAfter(delay) => {
                        warn!(backend = %name, error = %reason, delay_ms = delay.as_millis() as u64, "backend actor failed; restarting");
                        myself.send_after(delay, move || BackendSupMsg::Respawn(name));
                    }
                    RestartDecision::Escalate => {
                        // Quarantine: this backend alone stops serving; siblings and the
                        // process go on (see the module doc).
                        state.budgets.remove(&name);
                        let n = state.quarantines.entry(name.clone()).or_default();
                        *n = n.saturating_add(1);
                        let delay = quarantine_delay(
                            state.settings.quarantine_backoff,
                            state.settings.quarantine_max_backoff,
                            *n,
                        );
                        state.generation += 1;
                        let generation = state.generation;
                        let retry_at = SystemTime::now()
                            .checked_add(delay)
                            .unwrap_or_else(SystemTime::now);
                        state
                            .quarantined
                            .insert(name.clone(), (generation, retry_at));
                        if let Some(spec) = state.specs.get(&name) {
                            let slot = state.published.slot(spec);
                            let why = reason.clone();
                            slot.update(|r| r.quarantined = Some(why.clone()));
                        }
                        error!(backend = %name, error = %reason, retry_in_s = delay.as_secs(),
                               "backend actor exhausted its restart budget; quarantined");
                        myself.send_after(delay, move || {
                            BackendSupMsg::Unquarantine(name, generation)
                        });
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A clean stop is never restarted.
                if let Some(name) = state.children.remove(&cell.get_id()) {
                    if state
                        .refs
                        .get(&name)
                        .is_some_and(|r| r.get_id() == cell.get_id())
                    {
                        state.refs.remove(&name);
                    }
                    info!(backend = %name, reason = ?reason, "backend actor stopped");
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<BackendSupMsg>,
        _state: &mut BackendSupState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }
}

// ===== RootSupervisor =====

/// The root's children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RootChild {
    Registry,
    Router,
    Backends,
}

pub enum RootMsg {
    Respawn(RootChild),
    Backends(RpcReplyPort<Option<ActorRef<BackendSupMsg>>>),
    Router(RpcReplyPort<Option<ActorRef<RouterMsg>>>),
    /// The root's children (without the backend actors; see [`BackendSupMsg::Info`]).
    Info(RpcReplyPort<Vec<ActorInfo>>),
}

pub struct RootArgs {
    pub published: Arc<Published>,
    pub settings: SupervisionSettings,
}

pub struct RootSupervisor;

pub struct RootState {
    published: Arc<Published>,
    settings: SupervisionSettings,
    registry: Option<ActorRef<RegistryMsg>>,
    router: Option<ActorRef<RouterMsg>>,
    backends: Option<ActorRef<BackendSupMsg>>,
    budgets: HashMap<RootChild, RestartBudget>,
    restarts: HashMap<RootChild, u64>,
    last_failure: HashMap<RootChild, String>,
}

impl RootState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<RootMsg>,
        child: RootChild,
    ) -> Result<(), ActorProcessingErr> {
        let cell = myself.get_cell();
        match child {
            RootChild::Registry => {
                let (r, _) =
                    Actor::spawn_linked(None, RegistryActor, self.published.clone(), cell).await?;
                self.registry = Some(r);
            }
            RootChild::Router => {
                let (r, _) =
                    Actor::spawn_linked(None, RouterActor, self.published.clone(), cell).await?;
                self.router = Some(r);
            }
            RootChild::Backends => {
                let args = BackendSupArgs {
                    published: self.published.clone(),
                    specs: self.published.specs.read().clone(),
                    settings: self.settings.clone(),
                };
                let (r, _) = Actor::spawn_linked(None, BackendSupervisor, args, cell).await?;
                self.backends = Some(r);
            }
        }
        Ok(())
    }

    fn which(&self, cell: &ActorCell) -> Option<RootChild> {
        let id = cell.get_id();
        if self.registry.as_ref().is_some_and(|r| r.get_id() == id) {
            Some(RootChild::Registry)
        } else if self.router.as_ref().is_some_and(|r| r.get_id() == id) {
            Some(RootChild::Router)
        } else if self.backends.as_ref().is_some_and(|r| r.get_id() == id) {
            Some(RootChild::Backends)
        } else {
            None
        }
    }

    fn clear(&mut self, child: RootChild) {
        match child {
            RootChild::Registry => self.registry = None,
            RootChild::Router => self.router = None,
            RootChild::Backends => self.backends = None,
        }
    }
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            published: args.published,
            settings: args.settings,
            registry: None,
            router: None,
            backends: None,
            budgets: HashMap::new(),
            restarts: HashMap::new(),
            last_failure: HashMap::new(),
        };
        // Registry first: backends report their models to it.
        state.spawn(&myself, RootChild::Registry).await?;
        state.spawn(&myself, RootChild::Router).await?;
        state.spawn(&myself, RootChild::Backends).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Respawn(child) => {
                let missing = match child {
                    RootChild::Registry => state.registry.is_none(),
                    RootChild::Router => state.router.is_none(),
                    RootChild::Backends => state.backends.is_none(),
                };
                if missing {
                    state.spawn(&myself, child).await?;
                    *state.restarts.entry(child).or_default() += 1;
                    info!(child = ?child, "supervisor child restarted");
                }
            }
            RootMsg::Backends(reply) => {
                let _ = reply.send(state.backends.clone());
            }
            RootMsg::Router(reply) => {
                let _ = reply.send(state.router.clone());
            }
            RootMsg::Info(reply) => {
                let ids = [
                    (
                        RootChild::Registry,
                        "registry",
                        state.registry.as_ref().map(|r| r.get_id()),
                    ),
                    (
                        RootChild::Router,
                        "router",
                        state.router.as_ref().map(|r| r.get_id()),
                    ),
                    (
                        RootChild::Backends,
                        "backends",
                        state.backends.as_ref().map(|r| r.get_id()),
                    ),
                ];
                let info = ids
                    .into_iter()
                    .map(|(child, name, id)| ActorInfo {
                        name: name.to_string(),
                        state: if id.is_some() {
                            "running"
                        } else {
                            "restarting"
                        },
                        id: id.map(|i| i.to_string()),
                        restarts: state.restarts.get(&child).copied().unwrap_or(0),
                        last_failure: state.last_failure.get(&child).cloned(),
                        retry_at: None,
                        children: Vec::new(),
                    })
                    .collect();
                let _ = reply.send(info);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(child) = state.which(&cell) else {
                    return Ok(());
                };
                state.clear(child);
                state
                    .last_failure
                    .insert(child, failure_text(&err.to_string()));
                let settings = &state.settings;
                let budget = state.budgets.entry(child).or_insert_with(|| {
                    RestartBudget::new(settings.root_max_restarts, settings.root_window)
                });
                match budget.on_failure(Instant::now()) {
                    RestartDecision::RestartAfter(delay) => {
                        warn!(child = ?child, error = %err, "supervisor child failed; restarting");
                        myself.send_after(delay, move || RootMsg::Respawn(child));
                    }
                    RestartDecision::Escalate => {
                        error!(child = ?child, error = %err, "restart budget exhausted; stopping the supervision tree");
                        return Err(format!("{child:?} exhausted its restart budget: {err}").into());
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(child) = state.which(&cell) {
                    state.clear(child);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RootMsg>,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_backs_off_then_escalates_and_forgets_old_failures() {
        let mut b = RestartBudget::new(3, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(
            b.on_failure(t),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            b.on_failure(t),
            RestartDecision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            b.on_failure(t),
            RestartDecision::RestartAfter(Duration::from_millis(400))
        );
        assert_eq!(b.on_failure(t), RestartDecision::Escalate);
        let later = t + Duration::from_secs(11);
        assert_eq!(
            b.on_failure(later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn quarantine_doubles_and_is_capped() {
        let (base, max) = (Duration::from_secs(300), Duration::from_secs(3600));
        assert_eq!(quarantine_delay(base, max, 1), base);
        assert_eq!(quarantine_delay(base, max, 2), Duration::from_secs(600));
        assert_eq!(quarantine_delay(base, max, 4), Duration::from_secs(2400));
        assert_eq!(quarantine_delay(base, max, 5), max);
        assert_eq!(quarantine_delay(base, max, u32::MAX), max);
        assert_eq!(
            quarantine_delay(base, Duration::ZERO, 3),
            base,
            "cap below base"
        );
    }

    #[test]
    fn failure_text_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let t = failure_text(&long);
        assert!(t.len() <= 1024 && t.is_char_boundary(t.len()));
    }
}
