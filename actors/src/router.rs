//! RouterActor: owns the routing policy (balancer strategy, retry-on-status list, model routing
//! strategy) and each backend's run-time routing state (enabled, draining, priority, weight),
//! and publishes both as snapshots ([`crate::published`]). Admin commands and config reloads
//! change routing only through it; requests never message it, they read the snapshots.
//!
//! It also housekeeps the sticky-session table on a timer ([`HOUSEKEEP_EVERY`]): pins idle
//! past the TTL expire, pins to a backend that is not routable (down, disabled, draining,
//! quarantined) are purged, and switching sticky sessions off clears the table. Request tasks
//! read and update the table directly; backend actors purge their own pins on a health
//! transition.

use std::sync::Arc;
use std::time::Duration;

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
    /// Expire and purge sticky-session pins (timer).
    Housekeep,
}

/// How often the router housekeeps the sticky-session table.
pub const HOUSEKEEP_EVERY: Duration = Duration::from_secs(1);

/// One housekeeping pass over the sticky table; returns the pins removed.
pub fn housekeep(published: &Published) -> u64 {
    let policy = published.policy.load();
    let sticky = &published.routing.sticky;
    if sticky.is_empty() {
        return 0;
    }
    if !policy.sticky.enabled {
        return sticky.clear();
    }
    let mut removed = sticky.expire(policy.sticky.idle_ttl, crate::routing::now_ms());
    let now = tokio::time::Instant::now();
    for b in &published.table().backends {
        if !b.is_routable(now) {
            removed += sticky.purge_backend(b.name());
        }
    }
    removed
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

    async fn post_start(
        &self,
        myself: ActorRef<RouterMsg>,
        _published: &mut Arc<Published>,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_after(HOUSEKEEP_EVERY, || RouterMsg::Housekeep);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
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
            RouterMsg::Housekeep => {
                housekeep(published);
                myself.send_after(HOUSEKEEP_EVERY, || RouterMsg::Housekeep);
            }
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
