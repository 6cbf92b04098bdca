//! Supervision: the restart budget (pure), the BackendSupervisor (one BackendActor per backend)
//! and the RootSupervisor (registry, router, backend supervisor).
//!
//! Policy, as documented in the README:
//! - A child that fails (panic or `Err`) is restarted from its spec after a backoff
//!   (100 ms doubling, capped at 5 s), scheduled with `send_after` so the supervisor's mailbox
//!   never blocks.
//! - Each child has a budget: at most `max_restarts` within `window`. A backend actor that
//!   exhausts it makes the BackendSupervisor fail, which escalates to the RootSupervisor; the
//!   root restarts the whole BackendSupervisor (every backend actor afresh) within its own
//!   budget. A root that exhausts its budget stops the tree, and the daemon exits non-zero so an
//!   outer process supervisor (systemd, Docker) restarts it.
//! - A clean stop (e.g. a backend removed from the config) is never restarted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

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
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            backend_max_restarts: 5,
            backend_window: Duration::from_secs(60),
            root_max_restarts: 3,
            root_window: Duration::from_secs(60),
        }
    }
}

// ===== BackendSupervisor =====

pub enum BackendSupMsg {
    Respawn(String),
    Add(Arc<BackendSpec>, RpcReplyPort<Result<(), String>>),
    Remove(String, RpcReplyPort<bool>),
    Children(RpcReplyPort<Vec<(String, ActorRef<BackendMsg>)>>),
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
}

impl BackendSupState {
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
        };
        state.publish_specs();
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
                if state.specs.contains_key(&name) && !state.refs.contains_key(&name) {
                    state.spawn_child(&myself, &name).await?;
                    info!(backend = %name, "backend actor restarted");
                }
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
                let settings = &state.settings;
                let budget = state.budgets.entry(name.clone()).or_insert_with(|| {
                    RestartBudget::new(settings.backend_max_restarts, settings.backend_window)
                });
                match budget.on_failure(Instant::now()) {
                    RestartDecision::RestartAfter(delay) => {
                        warn!(backend = %name, error = %err, delay_ms = delay.as_millis() as u64, "backend actor failed; restarting");
                        myself.send_after(delay, move || BackendSupMsg::Respawn(name));
                    }
                    RestartDecision::Escalate => {
                        error!(backend = %name, error = %err, "backend actor exhausted its restart budget; escalating");
                        return Err(
                            format!("backend {name} exhausted its restart budget: {err}").into(),
                        );
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
                    info!(child = ?child, "supervisor child restarted");
                }
            }
            RootMsg::Backends(reply) => {
                let _ = reply.send(state.backends.clone());
            }
            RootMsg::Router(reply) => {
                let _ = reply.send(state.router.clone());
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
}
