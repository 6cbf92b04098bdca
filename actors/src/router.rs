//! RouterActor: owns the routing policy (balancer strategy, retry-on-status list, model routing
//! strategy) and each backend's run-time routing state (enabled, draining, priority, weight),
//! and publishes both as snapshots ([`crate::published`]). Admin commands and config reloads
//! change routing only through it; requests never message it, they read the snapshots.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::published::{BackendRouting, Published, RoutingPolicy};

/// A change to one backend's routing state; `None` fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingChange {
    pub enabled: Option<bool>,
    pub draining: Option<bool>,
    pub priority: Option<i64>,
    pub weight: Option<u32>,
}

impl RoutingChange {
    /// Applies the change (pure).
    pub fn apply(&self, r: &mut BackendRouting) {
        if let Some(v) = self.enabled {
            r.enabled = v;
        }
        if let Some(v) = self.draining {
            r.draining = v;
        }
        if let Some(v) = self.priority {
            r.priority = v;
        }
        if let Some(v) = self.weight {
            r.weight = v.max(1);
        }
    }
}

pub enum RouterMsg {
    SetPolicy(RoutingPolicy),
    GetPolicy(RpcReplyPort<RoutingPolicy>),
    /// Changes one backend's routing state; replies with the new state (`None`: no such backend).
    Route(String, RoutingChange, RpcReplyPort<Option<BackendRouting>>),
    /// Fails the router on purpose (exercises the root's budget: the tree's last resort).
    Crash(String),
}

pub struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = Arc<Published>;
    type Arguments = Arc<Published>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        published: Arc<Published>,
    ) -> Result<Arc<Published>, ActorProcessingErr> {
        Ok(published)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        published: &mut Arc<Published>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::SetPolicy(p) => published.policy.store(Arc::new(p)),
            RouterMsg::GetPolicy(reply) => {
                let _ = reply.send((**published.policy.load()).clone());
            }
            RouterMsg::Route(name, change, reply) => {
                let next = published.slot_of(&name).map(|slot| {
                    slot.update(|r| change.apply(r));
                    (*slot.routing()).clone()
                });
                let _ = reply.send(next);
            }
            RouterMsg::Crash(why) => return Err(format!("router asked to crash: {why}").into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_touches_only_its_fields_and_keeps_weight_positive() {
        let mut r = BackendRouting {
            enabled: true,
            draining: false,
            priority: 10,
            weight: 3,
            quarantined: None,
        };
        RoutingChange {
            draining: Some(true),
            weight: Some(0),
            ..Default::default()
        }
        .apply(&mut r);
        assert!(r.enabled && r.draining);
        assert_eq!((r.priority, r.weight), (10, 1));
        assert!(!r.admits());
    }
}
