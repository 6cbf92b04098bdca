//! The HTTP listener: HTTP/1.1 and h2c on one port (hyper-util's auto builder), TCP_NODELAY on
//! every accepted socket, header read timeout and header size limits, and graceful shutdown:
//! stop accepting, let in-flight requests and streams finish up to the shutdown timeout.
//!
//! With several serving threads, one of them accepts and hands each new connection to the
//! thread serving the fewest connections (itself on a tie, so a lone client costs no hand-off).
//! Kernel hashing (`SO_REUSEPORT`) spreads a few long-lived connections unevenly, and an LLM
//! proxy's clients are often exactly that: a handful of keep-alive connections or streams.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api;
use crate::app::App;

/// A connection accepted on one serving thread for another.
pub type Handoff = (std::net::TcpStream, SocketAddr);

/// The serving threads' shared view: each one's live connection count and hand-off channel.
pub struct Threads {
    live: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

impl Threads {
    /// `n` serving threads; returns the shared view and each thread's inbox.
    pub fn new(n: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let threads = Self {
            live: (0..senders.len()).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into_boxed_slice(),
        };
        (Arc::new(threads), receivers)
    }

    /// Live connections per serving thread.
    pub fn live(&self) -> Vec<usize> {
        self.live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The thread that should serve the next connection: the fewest live connections, `me`
    /// on a tie.
    fn pick(&self, me: usize) -> usize {
        let mut best = me;
        let mut best_live = self.live[me].load(Ordering::Relaxed);
        for (i, live) in self.live.iter().enumerate() {
            let n = live.load(Ordering::Relaxed);
            if n < best_live {
                best = i;
                best_live = n;
            }
        }
        best
    }
}

/// Where one serving thread gets its connections.
pub struct Intake {
    /// The listener (on the accepting thread only).
    pub listener: Option<TcpListener>,
    /// Connections handed over by the accepting thread.
    pub inbox: mpsc::UnboundedReceiver<Handoff>,
    pub threads: Arc<Threads>,
    /// This thread's index.
    pub me: usize,
}

impl Intake {
    /// A lone server: its own listener, nobody to hand connections to.
    pub fn alone(listener: TcpListener) -> Self {
        let (threads, mut inboxes) = Threads::new(1);
        Self {
            listener: Some(listener),
            inbox: inboxes.remove(0),
            threads,
            me: 0,
        }
    }

    /// The next connection this thread serves; `None` once nothing more can come.
    async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                accepted = accept(self.listener.as_ref()) => accepted,
                handed = self.inbox.recv() => match handed {
                    Some((stream, peer)) => match TcpStream::from_std(stream) {
                        Ok(s) => return Some((s, peer)),
                        Err(e) => {
                            warn!(error = %e, "cannot take over a handed-off connection");
                            self.threads.live[self.me].fetch_sub(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                    // Every sender is gone: only the listener (if any) is left.
                    None if self.listener.is_some() => std::future::pending().await,
                    None => return None,
                },
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let target = self.threads.pick(self.me);
            self.threads.live[target].fetch_add(1, Ordering::Relaxed);
            if target == self.me {
                return Some((stream, peer));
            }
            let handed = stream.into_std().map_err(|e| e.to_string()).and_then(|s| {
                self.threads.inboxes[target]
                    .send((s, peer))
                    .map_err(|_| "serving thread gone".to_string())
            });
            if let Err(e) = handed {
                debug!(error = %e, "hand-off failed; connection dropped");
                self.threads.live[target].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Keeps a short timer always pending on this runtime. hyper arms a header-read timer (30 s
/// ahead) for every request head it waits for; tokio wakes its driver through an eventfd
/// write whenever a new timer is due earlier than every pending one, which an otherwise idle
/// timer wheel makes true for nearly every request (measured: one `write` per four requests).
/// With a timer at most 500 ms ahead always pending, those writes stop.
async fn timer_anchor() {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts a connection as live on its serving thread until it ends.
struct LiveGuard(Arc<Threads>, usize);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves until `shutdown` resolves, then drains connections for up to `shutdown_timeout`.
pub async fn serve(mut intake: Intake, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = (app.settings.max_header_size as usize).clamp(8192, 16 << 20);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.read_header_timeout)
        .max_buf_size(max_head + 8192)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_head as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
    let anchor = tokio::spawn(timer_anchor());

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            next = intake.next() => match next {
                Some(c) => c,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let live = LiveGuard(intake.threads.clone(), intake.me);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(api::handle(app, req, peer).await) }
        });
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, peer = %peer, "connection ended with an error");
            }
            drop(live);
        });
    }
    drop(intake);
    anchor.abort();
    let limit = app.settings.shutdown_timeout;
    info!(
        timeout_ms = limit.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(limit, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown timeout reached with requests still in flight; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_thread_with_fewest_connections_and_itself_on_a_tie() {
        let (threads, _inboxes) = Threads::new(3);
        assert_eq!(threads.pick(0), 0, "all idle: keep it local");
        assert_eq!(threads.pick(2), 2);
        threads.live[0].store(2, Ordering::Relaxed);
        threads.live[1].store(1, Ordering::Relaxed);
        threads.live[2].store(1, Ordering::Relaxed);
        assert_eq!(threads.pick(0), 1);
        assert_eq!(threads.pick(2), 2);
        assert_eq!(threads.live(), vec![2, 1, 1]);
    }
}
