//! Starting, querying and stopping the whole supervision tree from the daemon (or a test).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::backend::BackendMsg;
use crate::published::{BackendRouting, Published, RoutingPolicy};
use crate::registry::RegistryMsg;
use crate::router::{RouterMsg, RoutingChange};
use crate::spec::BackendSpec;
use crate::supervisor::{
    ActorInfo, BackendSupMsg, RootArgs, RootMsg, RootSupervisor, SupervisionSettings,
};

/// What the tree is started with.
#[derive(Clone, Debug)]
pub struct TreeConfig {
    pub specs: Vec<Arc<BackendSpec>>,
    pub policy: RoutingPolicy,
    pub model_aliases: HashMap<String, Vec<String>>,
    pub stale_threshold: Duration,
    pub supervision: SupervisionSettings,
}

/// A running supervision tree.
pub struct Tree {
    pub published: Arc<Published>,
    root: ActorRef<RootMsg>,
    stopping: Arc<AtomicBool>,
    ended: watch::Receiver<bool>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn ask<M, T>(actor: &ActorRef<M>, msg: impl FnOnce(RpcReplyPort<T>) -> M) -> Option<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(CALL_TIMEOUT)).await {
        Ok(CallResult::Success(v)) => Some(v),
        _ => None,
    }
}

impl Tree {
    pub async fn start(cfg: TreeConfig) -> Result<Self, String> {
        let published = Arc::new(Published::new(cfg.policy, cfg.stale_threshold));
        *published.specs.write() = cfg.specs;
        *published.model_aliases.write() = cfg.model_aliases;
        let args = RootArgs {
            published: published.clone(),
            settings: cfg.supervision,
        };
        let (root, join) = Actor::spawn(None, RootSupervisor, args)
            .await
            .map_err(|e| format!("could not start the supervision tree: {e}"))?;
        let (tx, ended) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = tx.send(true);
        });
        Ok(Self {
            published,
            root,
            stopping: Arc::new(AtomicBool::new(false)),
            ended,
        })
    }

    /// Resolves when the tree stopped on its own (restart budget exhausted at the root).
    pub async fn failed(&self) {
        let mut ended = self.ended.clone();
        while !*ended.borrow_and_update() {
            if ended.changed().await.is_err() {
                break;
            }
        }
        if self.stopping.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    }

    pub fn is_running(&self) -> bool {
        !*self.ended.borrow()
    }

    pub async fn backend_supervisor(&self) -> Option<ActorRef<BackendSupMsg>> {
        ask(&self.root, RootMsg::Backends).await.flatten()
    }

    pub async fn router(&self) -> Option<ActorRef<RouterMsg>> {
        ask(&self.root, RootMsg::Router).await.flatten()
    }

    /// The live backend actors by name.
    pub async fn backend_actors(&self) -> Vec<(String, ActorRef<BackendMsg>)> {
        match self.backend_supervisor().await {
            Some(s) => ask(&s, BackendSupMsg::Children).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    pub async fn backend_actor(&self, name: &str) -> Option<ActorRef<BackendMsg>> {
        self.backend_actors()
            .await
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r)
    }

    pub async fn add_backend(&self, spec: Arc<BackendSpec>) -> Result<(), String> {
        let sup = self
            .backend_supervisor()
            .await
            .ok_or("backend supervisor unavailable")?;
        ask(&sup, |p| BackendSupMsg::Add(spec, p))
            .await
            .ok_or_else(|| "backend supervisor did not answer".to_string())?
    }

    pub async fn remove_backend(&self, name: &str) -> Result<bool, String> {
        let sup = self
            .backend_supervisor()
            .await
            .ok_or("backend supervisor unavailable")?;
        ask(&sup, |p| BackendSupMsg::Remove(name.to_string(), p))
            .await
            .ok_or_else(|| "backend supervisor did not answer".to_string())
    }

    /// Replaces a backend's spec (its actor restarts on the new one). `Ok(false)`: unknown.
    pub async fn update_backend(&self, spec: Arc<BackendSpec>) -> Result<bool, String> {
        let sup = self
            .backend_supervisor()
            .await
            .ok_or("backend supervisor unavailable")?;
        ask(&sup, |p| BackendSupMsg::Update(spec, p))
            .await
            .ok_or_else(|| "backend supervisor did not answer".to_string())
    }

    /// Stops and restarts a backend's actor through its supervisor. `Ok(false)`: unknown.
    pub async fn restart_backend(&self, name: &str) -> Result<bool, String> {
        let sup = self
            .backend_supervisor()
            .await
            .ok_or("backend supervisor unavailable")?;
        ask(&sup, |p| BackendSupMsg::Restart(name.to_string(), p))
            .await
            .ok_or_else(|| "backend supervisor did not answer".to_string())
    }

    /// Changes a backend's routing state through the RouterActor. `Ok(None)`: unknown.
    pub async fn route(
        &self,
        name: &str,
        change: RoutingChange,
    ) -> Result<Option<BackendRouting>, String> {
        let router = self.router().await.ok_or("router unavailable")?;
        ask(&router, |p| RouterMsg::Route(name.to_string(), change, p))
            .await
            .ok_or_else(|| "router did not answer".to_string())
    }

    /// Drains a backend, waits up to `timeout` for its in-flight requests to end, then removes
    /// it (its actor stops cleanly and is never restarted). `Ok(None)`: unknown backend;
    /// `Ok(Some(n))`: removed with `n` requests still in flight at the deadline.
    pub async fn drain_and_remove(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<usize>, String> {
        let draining = RoutingChange {
            draining: Some(true),
            ..Default::default()
        };
        if self.route(name, draining).await?.is_none() {
            return Ok(None);
        }
        let left = self.wait_idle(name, timeout).await;
        if left > 0 {
            if let Some(slot) = self.published.slot_of(name) {
                slot.cut_streams();
            }
        }
        self.remove_backend(name).await?;
        Ok(Some(left))
    }

    /// Waits up to `timeout` until the backend has no request in flight; returns how many are
    /// left.
    pub async fn wait_idle(&self, name: &str, timeout: Duration) -> usize {
        let Some(slot) = self.published.slot_of(name) else {
            return 0;
        };
        let deadline = tokio::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            let n = slot.in_flight();
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The supervision tree: the root's children, with the backend actors under `backends`.
    pub async fn actors(&self) -> Vec<ActorInfo> {
        let mut top = ask(&self.root, RootMsg::Info).await.unwrap_or_default();
        let backends = self.backend_info().await;
        for a in top.iter_mut() {
            if a.name == "backends" {
                a.children = backends.clone();
            }
        }
        top
    }

    /// Supervision facts of each backend actor (`backend:NAME`).
    pub async fn backend_info(&self) -> Vec<ActorInfo> {
        match self.backend_supervisor().await {
            Some(s) => ask(&s, BackendSupMsg::Info).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The root supervisor's id.
    pub fn root_id(&self) -> String {
        self.root.get_id().to_string()
    }

    pub async fn set_policy(&self, policy: RoutingPolicy) -> Result<(), String> {
        let router = self.router().await.ok_or("router unavailable")?;
        router
            .cast(RouterMsg::SetPolicy(policy))
            .map_err(|e| e.to_string())
    }

    pub fn set_model_aliases(&self, aliases: HashMap<String, Vec<String>>) {
        match self.published.registry() {
            Some(r) => {
                let _ = r.cast(RegistryMsg::SetAliases(aliases));
            }
            None => *self.published.model_aliases.write() = aliases,
        }
    }

    /// Asks each named backend to re-discover its models now; waits (up to `timeout`) until
    /// the registry has published the results. Returns how many backends answered.
    pub async fn refresh_models(&self, names: &[String], timeout: Duration) -> usize {
        let actors = self.backend_actors().await;
        let calls =
            actors
                .into_iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, a)| async move {
                    matches!(
                        a.call(BackendMsg::Refresh, Some(timeout)).await,
                        Ok(CallResult::Success(Ok(_)))
                    )
                });
        let results = futures_join_all(calls).await;
        results.into_iter().filter(|ok| *ok).count()
    }

    /// Stops the tree and waits for it.
    pub async fn shutdown(self) {
        self.stopping.store(true, Ordering::Release);
        self.root.stop(Some("shutdown".into()));
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while !*ended.borrow_and_update() {
                if ended.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Awaits all futures concurrently (small, to avoid a dependency for one call site).
async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}
