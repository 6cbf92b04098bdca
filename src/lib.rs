//! `olla`: a proxy and load balancer for LLM inference servers.
//!
//! The daemon is an HTTP server ([`server`]) dispatching to routes ([`api`]) that read the
//! snapshots published by the supervision tree (crate `olla-actors`) and forward requests
//! through the per-request pipeline ([`proxy`]). [`config`] reads Olla's YAML; [`Daemon`] starts
//! and stops the whole thing on a caller-bound listener (tests bind `127.0.0.1:0`).

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod ctl;
pub mod dashboard;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod format;
pub mod gate;
pub mod healthcheck;
pub mod http_util;
pub mod own_headers;
pub mod proxy;
pub mod server;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use olla_actors::Tree;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Runtime;

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin.enabled`.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: Option<watch::Sender<bool>>,
    servers: Vec<Server>,
    threads: Arc<server::Threads>,
}

/// Where a listener is served.
enum Server {
    /// On the caller's runtime (tests, demo).
    Task(JoinHandle<()>),
    /// On its own thread with a single-threaded runtime (the daemon: one per core).
    Thread(std::thread::JoinHandle<()>),
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// Binds the daemon's listener (one accepting thread hands connections to the others).
fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
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
    /// Starts the tree and serves on `listener`, on the caller's runtime.
    pub async fn start(runtime: Runtime, listener: TcpListener) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = watch::channel(false);
        let (app, admin) = Self::start_app(runtime, &rx).await?;
        let server_app = app.clone();
        let intake = server::Intake::alone(listener);
        let threads = intake.threads.clone();
        let server = tokio::spawn(async move {
            server::serve(intake, server_app, stopped(rx)).await;
        });
        let mut servers = vec![Server::Task(server)];
        let admin_addr = admin.map(|(addr, task)| {
            servers.push(Server::Task(task));
            addr
        });
        Ok(Self {
            addr,
            admin_addr,
            app,
            stop: Some(tx),
            servers,
            threads,
        })
    }

    /// Starts the tree and serves `host:port` on `threads` threads, each with its own
    /// single-threaded runtime and upstream connection pools (one thread accepts and hands each
    /// connection to the least busy thread), so a
    /// request never changes thread. Must be called before any backend client exists.
    pub async fn start_threaded(runtime: Runtime, threads: usize) -> Result<Self, String> {
        let threads = threads.max(1);
        olla_actors::backend::set_serving_threads(threads);
        let bind = format!("{}:{}", runtime.server.host, runtime.server.port);
        let first_addr = tokio::net::lookup_host(&bind)
            .await
            .map_err(|e| format!("cannot resolve {bind}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {bind}"))?;
        let listener =
            bind_listener(first_addr).map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (shared, inboxes) = server::Threads::new(threads);
        let mut listener = Some(listener);
        let intakes: Vec<_> = inboxes
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| (listener.take(), inbox, Arc::clone(&shared), me))
            .collect();
        let (tx, rx) = watch::channel(false);
        let (app, admin) = Self::start_app(runtime, &rx).await?;
        let mut servers = Vec::with_capacity(threads + 1);
        let admin_addr = admin.map(|(addr, task)| {
            servers.push(Server::Task(task));
            addr
        });
        for (listener, inbox, shared, i) in intakes {
            let (app, rx) = (app.clone(), rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("olla-serve-{i}"))
                .spawn(move || {
                    olla_actors::backend::enter_serving_thread(i);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a serving runtime");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match listener.map(TcpListener::from_std).transpose() {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot serve");
                                return;
                            }
                        };
                        let intake = server::Intake {
                            listener,
                            inbox,
                            threads: shared,
                            me: i,
                        };
                        server::serve(intake, app, stopped(rx)).await
                    });
                })
                .map_err(|e| format!("cannot start a serving thread: {e}"))?;
            servers.push(Server::Thread(thread));
        }
        Ok(Self {
            addr,
            admin_addr,
            app,
            stop: Some(tx),
            servers,
            threads: shared,
        })
    }

    /// Starts the tree and, when enabled, the admin listener (on the caller's runtime).
    async fn start_app(
        runtime: Runtime,
        stop: &watch::Receiver<bool>,
    ) -> Result<(Arc<App>, Option<(SocketAddr, JoinHandle<()>)>), String> {
        let balancer = runtime.tree.policy.strategy.as_str().to_string();
        let settings = &runtime.admin;
        let listener = if settings.enabled {
            Some(admin::bind(settings).await?)
        } else {
            None
        };
        let control = admin::Control::new(runtime.admin.clone());
        let tree = Tree::start(runtime.tree).await?;
        let app = Arc::new(
            App::new(runtime.server, tree, balancer)
                .with_control(control)
                .with_dashboard(runtime.dashboard),
        );
        let served = match listener {
            Some(l) => {
                let addr = l.local_addr().map_err(|e| e.to_string())?;
                let (app, rx) = (app.clone(), stop.clone());
                let task = tokio::spawn(async move { admin::serve(l, app, stopped(rx)).await });
                tracing::info!(address = %addr, "admin endpoint listening");
                Some((addr, task))
            }
            None => None,
        };
        Ok((app, served))
    }

    /// Records the config the daemon runs with and the file `reload` re-reads.
    pub fn set_origin(&self, config: config::Config, path: Option<std::path::PathBuf>) {
        *self.app.control.origin.write() = admin::Origin { config, path };
    }

    /// The admin endpoint's base URL, when enabled.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// Live client connections per serving thread.
    pub fn connections_per_thread(&self) -> Vec<usize> {
        self.threads.live()
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
            let _ = tx.send(true);
        }
        for server in self.servers.drain(..) {
            match server {
                Server::Task(t) => {
                    let _ = t.await;
                }
                Server::Thread(t) => {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
        }
        if let Some(tracer) = &self.app.tracer {
            tracer.flush(std::time::Duration::from_secs(2)).await;
        }
    }

    /// Stops accepting, drains in-flight requests (up to the shutdown timeout), stops the tree.
    pub async fn stop(mut self) {
        self.stop_server().await;
        if let Ok(app) = Arc::try_unwrap(self.app) {
            app.tree.shutdown().await;
        }
    }
}
