//! `olla`: a proxy and load balancer for LLM inference servers.
//!
//! The daemon is an HTTP server ([`server`]) dispatching to routes ([`api`]) that read the
//! snapshots published by the supervision tree (crate `olla-actors`) and forward requests
//! through the per-request pipeline ([`proxy`]). [`config`] reads Olla's YAML; [`Daemon`] starts
//! and stops the whole thing on a caller-bound listener (tests bind `127.0.0.1:0`).

pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod error;
pub mod format;
pub mod http_util;
pub mod proxy;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use olla_actors::Tree;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Runtime;

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

/// Why the daemon ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (signal, `stop()`): in-flight requests were drained.
    Stopped,
    /// The supervision tree exhausted its restart budget.
    TreeFailed,
}

impl Daemon {
    /// Starts the tree and serves on `listener`.
    pub async fn start(runtime: Runtime, listener: TcpListener) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let balancer = runtime.tree.policy.strategy.as_str().to_string();
        let tree = Tree::start(runtime.tree).await?;
        let app = Arc::new(App::new(runtime.server, tree, balancer));
        let (tx, rx) = oneshot::channel::<()>();
        let server_app = app.clone();
        let server = tokio::spawn(async move {
            server::serve(listener, server_app, async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Self {
            addr,
            app,
            stop: Some(tx),
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until `shutdown` resolves or the tree fails; then drains and stops.
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) -> Exit {
        let exit = tokio::select! {
            () = shutdown => Exit::Stopped,
            () = self.app.tree.failed() => Exit::TreeFailed,
        };
        self.stop_server().await;
        exit
    }

    async fn stop_server(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }

    /// Stops accepting, drains in-flight requests (up to the shutdown timeout), stops the tree.
    pub async fn stop(mut self) {
        self.stop_server().await;
        if let Ok(app) = Arc::try_unwrap(self.app) {
            app.tree.shutdown().await;
        }
    }
}
