//! The HTTP listener: HTTP/1.1 ([`h1`]) and h2c (hyper) on one port (the version told by
//! [`sniff`]), TCP_NODELAY on every accepted socket, header size and count limits,
//! per-connection deadlines ([`deadline`]: first head, keep-alive idle, stalled writes), the
//! connection cap (`server.max_connections`: beyond it a connection is accepted and closed at
//! once, and counted), and graceful shutdown: stop accepting, let in-flight requests and
//! streams finish up to the shutdown timeout.
//!
//! With `server.tls` every connection is TLS ([`tls`]): the handshake runs on the
//! connection's task, ALPN picks h2 or http/1.1, and requests carry [`crate::gate::ViaTls`].
//!
//! Rule for later features: every accepted socket is served through [`deadline::DeadlineIo`]
//! and every request holds its connection's [`deadline::Ticket`] until its response has ended
//! (HTTP/2: through [`deadline::Tracked`]), so no connection outlives its deadlines;
//! per-request timers are avoided on this path (the connection's one timer moves).
//!
//! With several serving threads, one of them accepts and hands each new connection to the
//! thread serving the fewest connections (itself on a tie, so a lone client costs no hand-off).
//! Kernel hashing (`SO_REUSEPORT`) spreads a few long-lived connections unevenly, and an LLM
//! proxy's clients are often exactly that: a handful of keep-alive connections or streams.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api;
use crate::app::App;
use crate::http_util::RequestBody;

pub mod deadline;
mod graceful;
pub mod h1;
pub mod sniff;
pub mod tls;

/// Fewest request headers hyper accepts (its default).
const MIN_HEADER_COUNT: usize = 100;
/// Most request headers hyper accepts, whatever `max_header_size` says: hyper allocates and
/// fills this many slots per request head beyond its default 100 (at 1024 that was 2% of the
/// CPU of a pinned SSE load run), so the cap stays near what real clients send.
const MAX_HEADER_COUNT: usize = 200;

/// hyper's request header count limit for a head size limit: the smallest header Olla's size
/// estimate counts is about 64 bytes, so a head within `max_header_size` may hold that many.
pub fn header_count_limit(max_header_size: u64) -> usize {
    usize::try_from(max_header_size / 64)
        .unwrap_or(usize::MAX)
        .clamp(MIN_HEADER_COUNT, MAX_HEADER_COUNT)
}

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

    /// Live connections on every serving thread together.
    pub fn total_live(&self) -> usize {
        self.live.iter().map(|n| n.load(Ordering::Relaxed)).sum()
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

    /// The next connection this thread serves; `None` once nothing more can come. With
    /// `max_connections` (0 = no cap) live, a new connection is closed at once and counted in
    /// `rejected`.
    async fn next(
        &mut self,
        max_connections: usize,
        rejected: &AtomicU64,
    ) -> Option<(TcpStream, SocketAddr)> {
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
            if max_connections > 0 && self.threads.total_live() >= max_connections {
                let n = rejected.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        max_connections,
                        rejected = n,
                        "server.max_connections reached; closing new connections"
                    );
                }
                drop(stream);
                continue;
            }
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

/// Keeps a short timer always pending on this runtime. Each keep-alive connection moves its
/// deadline timer once per request (the idle deadline starts when a response ends); tokio
/// wakes its driver through an eventfd write whenever a new timer is due earlier than every
/// pending one, which an otherwise idle timer wheel makes true for nearly every request
/// (measured with hyper's per-request header timer: one `write` per four requests). With a
/// timer at most 500 ms ahead always pending, those writes stop.
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

/// How each HTTP version is served ([`sniff`] tells which a connection speaks): HTTP/1.x by
/// [`h1`], HTTP/2 by hyper.
struct Builders {
    http1: h1::Limits,
    http2: http2::Builder<TokioExecutor>,
}

/// Why a served connection ended early.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

impl Builders {
    /// Serves one connection to its end (or to graceful shutdown, through `watcher`).
    async fn serve<I>(
        &self,
        version: sniff::Version,
        io: I,
        svc: Service,
        watcher: graceful::Watcher,
    ) -> Result<(), ConnError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match version {
            sniff::Version::Http1 => {
                let clock = svc.clock.clone();
                h1::serve(
                    io,
                    self.http1,
                    watcher,
                    || clock.begin(),
                    |req| svc.call(req.map(RequestBody::Http1)),
                )
                .await
            }
            // Boxed: rarer than HTTP/1.1 and larger; unboxed it would size every task.
            sniff::Version::Http2 => {
                let hyper_svc = service_fn(move |req: http::Request<Incoming>| {
                    let ticket = svc.clock.begin();
                    let answer = svc.call(req.map(RequestBody::Hyper));
                    async move {
                        let resp = api::rendered(answer.await);
                        Ok::<_, Infallible>(resp.map(|b| deadline::Tracked::new(b, ticket)))
                    }
                });
                let conn = self.http2.serve_connection(TokioIo::new(io), hyper_svc);
                Ok(Box::pin(watcher.watch(conn)).await?)
            }
        }
    }
}

/// What every request on one connection is answered with.
#[derive(Clone)]
struct Service {
    app: Arc<App>,
    clock: Arc<deadline::Clock>,
    peer: SocketAddr,
    via_tls: bool,
}

impl Service {
    /// The request's answer. Boxed: the connection holds its in-flight answer for as long as
    /// the connection lives, so an unboxed request future (several KB) would be memory every
    /// open connection holds, idle or streaming; boxed it is freed when the response head is
    /// ready.
    fn call(
        &self,
        mut req: http::Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = api::Answer> + Send>> {
        if self.via_tls {
            req.extensions_mut().insert(crate::gate::ViaTls);
        }
        boxed_in_place(|| api::handle(self.app.clone(), req, self.peer))
    }
}

/// `Box::pin(make())`, with the future made into its box's memory rather than made on the
/// stack and then copied in: a request future is several KB, and that copy was about 1% of
/// the serving thread's time (perf, pinned load). Allocating first lets the compiler build the
/// future in place.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Serves until `shutdown` resolves, then drains connections for up to `shutdown_timeout`.
pub async fn serve(mut intake: Intake, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let max_head = (app.settings.max_header_size as usize).clamp(8192, 16 << 20);
    let max_headers = header_count_limit(app.settings.max_header_size);
    let http1 = h1::Limits {
        max_head: max_head + 8192,
        max_headers,
    };
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(max_head as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builders = Arc::new(Builders { http1, http2 });
    let graceful = graceful::Shutdown::new();
    let anchor = tokio::spawn(timer_anchor());
    let limits = deadline::Limits {
        first_head: app.settings.read_header_timeout,
        idle: app.settings.idle_timeout,
        write_stall: app.settings.write_timeout,
    };
    let max_connections = app.settings.max_connections;
    let tls = app.gate.tls.clone();

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            next = intake.next(max_connections, &app.stats.rejected_connections) => match next {
                Some(c) => c,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let live = LiveGuard(intake.threads.clone(), intake.me);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let clock = deadline::Clock::new(tokio::time::Instant::now());
        let via_tls = tls.is_some();
        let svc = Service {
            app,
            clock: clock.clone(),
            peer,
            via_tls,
        };
        let (builders, watcher) = (builders.clone(), graceful.watcher());
        let Some(tls) = &tls else {
            tokio::spawn(async move {
                let first_head = clock.first_head_deadline(&limits);
                // A connection still waiting for its first bytes at shutdown is closed, as one
                // with no request yet is.
                let version = tokio::select! {
                    v = sniff::plain(&stream, first_head) => v,
                    () = watcher.signalled() => None,
                };
                if let Some(version) = version {
                    let io = deadline::DeadlineIo::new(stream, clock, limits);
                    if let Err(e) = builders.serve(version, io, svc, watcher).await {
                        debug!(error = %e, peer = %peer, "connection ended with an error");
                    }
                }
                drop(live);
            });
            continue;
        };
        // TLS: the handshake runs on the connection's own task, with the certificates
        // current at accept (a reload swaps them for later connections only).
        let tls = tls.clone();
        tokio::spawn(async move {
            let io = deadline::DeadlineIo::new(stream, clock, limits);
            match tls.accept(io).await {
                Ok(stream) => {
                    let version = sniff::from_alpn(stream.get_ref().1.alpn_protocol());
                    if let Err(e) = builders.serve(version, stream, svc, watcher).await {
                        debug!(error = %e, peer = %peer, "TLS connection ended with an error");
                    }
                }
                Err(e) => debug!(error = %e, peer = %peer, "TLS handshake failed"),
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
