//! Starting, querying and stopping the whole supervision tree from the daemon (or a test).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::backend::BackendMsg;
use crate::published::{Published, RoutingPolicy};
use crate::registry::RegistryMsg;
use crate::router::RouterMsg;
use crate::spec::BackendSpec;
use crate::supervisor::{BackendSupMsg, RootArgs, RootMsg, RootSupervisor, SupervisionSettings};

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
