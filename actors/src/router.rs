//! RouterActor: owns the routing policy (balancer strategy, retry-on-status list, model routing
//! strategy) and publishes it as a snapshot. Requests never message it; they read the snapshot.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::published::{Published, RoutingPolicy};

pub enum RouterMsg {
    SetPolicy(RoutingPolicy),
    GetPolicy(RpcReplyPort<RoutingPolicy>),
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
        }
        Ok(())
    }
}
