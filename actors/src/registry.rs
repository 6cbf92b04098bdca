//! RegistryActor: owns the per-backend model lists and publishes the unified [`Catalog`]
//! snapshot after every change. Backends send their discovery results here; stale lists expire
//! on a cleanup timer. A restarted registry rebuilds its state from the last published catalog.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::catalog::{BackendModels, Catalog};
use crate::discovery::DiscoveredModel;
use crate::kind::BackendKind;
use crate::published::Published;

pub enum RegistryMsg {
    /// A backend's fresh model list (replaces its previous one).
    Update {
        backend: String,
        kind: BackendKind,
        models: Vec<DiscoveredModel>,
    },
    /// Several updates applied at once; replies after the catalog is published.
    UpdateMany(
        Vec<(String, BackendKind, Vec<DiscoveredModel>)>,
        RpcReplyPort<()>,
    ),
    /// A backend was removed from the config.
    Remove(String),
    /// Replace config `model_aliases`.
    SetAliases(HashMap<String, Vec<String>>),
    /// Drop lists older than the stale threshold.
    Cleanup,
}

pub struct RegistryActor;

pub struct RegistryState {
    published: Arc<Published>,
    backends: BTreeMap<String, BackendModels>,
}

impl RegistryState {
    fn insert(&mut self, backend: String, kind: BackendKind, models: Vec<DiscoveredModel>) {
        let updated_at = SystemTime::now();
        self.backends.insert(
            backend,
            BackendModels {
                kind,
                models,
                updated_at,
            },
        );
    }

    fn publish(&self) {
        let aliases = self.published.model_aliases.read().clone();
        let catalog = Catalog::build(self.backends.clone(), aliases);
        self.published.catalog.store(Arc::new(catalog));
    }
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<Published>;

    async fn pre_start(
        &self,
        myself: ActorRef<RegistryMsg>,
        published: Arc<Published>,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let backends = published.catalog.load().backends.clone();
        let cleanup_every =
            (published.stale_threshold / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        myself.send_interval(cleanup_every, || RegistryMsg::Cleanup);
        *published.registry.write() = Some(myself);
        Ok(RegistryState {
            published,
            backends,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Update {
                backend,
                kind,
                models,
            } => {
                state.insert(backend, kind, models);
                state.publish();
            }
            RegistryMsg::UpdateMany(updates, reply) => {
                for (backend, kind, models) in updates {
                    state.insert(backend, kind, models);
                }
                state.publish();
                let _ = reply.send(());
            }
            RegistryMsg::Remove(name) => {
                if state.backends.remove(&name).is_some() {
                    state.publish();
                }
            }
            RegistryMsg::SetAliases(aliases) => {
                *state.published.model_aliases.write() = aliases;
                state.publish();
            }
            RegistryMsg::Cleanup => {
                let threshold = state.published.stale_threshold;
                let now = SystemTime::now();
                let before = state.backends.len();
                state.backends.retain(|_, b| {
                    now.duration_since(b.updated_at).unwrap_or_default() <= threshold
                });
                if state.backends.len() != before {
                    state.publish();
                }
            }
        }
        Ok(())
    }
}
