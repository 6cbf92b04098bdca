//! `olla-mock`: a fake LLM backend for tests, benchmarks and the demo.
//!
//! One server speaks every dialect Olla routes to (OpenAI, Ollama, LM Studio, llama.cpp,
//! vLLM/SGLang, Anthropic Messages) on one port, with fault modes (error status, hang,
//! drop mid-stream, malformed JSON, slow/failing health) settable at start
//! ([`MockServer::start`]) and at run time ([`MockServer::set_config`] or
//! `POST /_mock/config`).
//!
//! This file owns the listener (raw hyper 1 + hyper-util's auto HTTP/1.1 + h2c builder,
//! `TCP_NODELAY` on every socket, one task per connection kept in a `JoinSet` so
//! [`MockServer::stop`] can kill them all at once), the per-request entry point (counting,
//! recording, the `X-Mock-Name` header) and the `/_mock/*` control routes. What each
//! backend route answers lives in `routes.rs` and the dialect modules; pacing and injected
//! aborts in `body.rs`.
//!
//! ```text
//! GET  /_mock/config   current MockConfig
//! POST /_mock/config   partial JSON merge (only given keys change), returns the new config
//! GET  /_mock/stats    MockStats
//! POST /_mock/reset    zero the stats and forget the last request
//! GET  /_mock/last     last RecordedRequest, or 404
//! GET  /_mock/last_work last RecordedRequest that was not a health check or model list, or 404
//! ```

mod anthropic;
mod body;
mod config;
mod ollama;
mod openai;
mod routes;
mod stats;
mod util;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use config::{Fault, MockConfig};
pub use stats::{MockStats, RecordedRequest};

use body::MockBody;
use routes::Live;
use stats::{Counters, Recorded};

/// Header naming the mock that answered, on every response.
pub const X_MOCK_NAME: &str = "x-mock-name";

/// Largest request body the mock reads (bigger ones get 413).
const MAX_BODY: usize = 64 << 20;

/// State shared by the server handle and every connection.
struct Shared {
    live: RwLock<Arc<Live>>,
    counters: Arc<Counters>,
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read())
    }

    fn set(&self, cfg: MockConfig) {
        let live = Arc::new(Live::new(cfg));
        *self.live.write() = live;
    }
}

/// A running mock backend. Dropping it stops it too (abruptly, like [`MockServer::stop`]).
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Starts a mock on `127.0.0.1:0`.
    pub async fn start(cfg: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, cfg).await
    }

    /// Starts a mock on a given address, e.g. the address of a stopped mock to bring a
    /// "crashed" backend back on the same port.
    pub async fn start_at(addr: SocketAddr, cfg: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        Self::start_on(listener, cfg).await
    }

    /// Starts a mock on an already bound listener.
    pub async fn start_on(listener: TcpListener, cfg: MockConfig) -> std::io::Result<MockServer> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            live: RwLock::new(Arc::new(Live::new(cfg))),
            counters: Arc::new(Counters::default()),
        });
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), rx));
        Ok(MockServer {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current config.
    pub fn config(&self) -> MockConfig {
        self.shared.live().cfg.clone()
    }

    /// Replaces the config; applies to requests that start from now on.
    pub fn set_config(&self, cfg: MockConfig) {
        self.shared.set(cfg);
    }

    /// Edits the config in place, e.g. `mock.update(|c| c.fault = Fault::Hang)`.
    pub fn update(&self, f: impl FnOnce(&mut MockConfig)) {
        // `f` runs outside the lock, so it may call back into this server.
        let mut cfg = self.config();
        f(&mut cfg);
        self.set_config(cfg);
    }

    /// Request counters.
    pub fn stats(&self) -> MockStats {
        self.shared.counters.snapshot()
    }

    /// The last request received (other than `/_mock/*`).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.counters.last()
    }

    /// The last request that was not a health check or a model list (what a test sent through
    /// the proxy, unaffected by the proxy's own probes).
    pub fn last_work(&self) -> Option<RecordedRequest> {
        self.shared.counters.last_work()
    }

    /// Zeroes the counters and forgets the last request.
    pub fn reset_stats(&self) {
        self.shared.counters.reset();
    }

    /// Stops accepting and aborts every open connection at once (a simulated crash). When
    /// this returns, the port is free and every connection task has ended.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its listener and its JoinSet, which aborts every
        // connection task.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("name", &self.shared.live().cfg.name)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "olla-mock accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Entry point of every request.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path();
    let mut resp = if path == "/_mock" || path.starts_with("/_mock/") {
        control(&shared, req).await
    } else {
        backend(&shared, req).await
    };
    if let Some(name) = &shared.live().name_header {
        resp.headers_mut()
            .insert(HeaderName::from_static(X_MOCK_NAME), name.clone());
    }
    Ok(resp)
}

/// A backend route: counted, recorded, then answered per the config in force when it
/// arrived.
async fn backend(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let live = shared.live();
    let mut guard = shared.counters.begin(req.uri().path());
    let (parts, body) = req.into_parts();
    let (body, too_large) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => (c.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let route = routes::classify(&parts.method, parts.uri.path());
    let head = parts.method == Method::HEAD;
    let path = parts.uri.path().to_owned();
    let rec = Recorded {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: body.clone(),
    };
    if route.is_work() {
        shared.counters.record_work(rec);
    } else {
        shared.counters.record(rec);
    }
    let mut resp = if too_large {
        let msg = r#"{"error":{"message":"request body too large or unreadable","type":"invalid_request_error","code":null}}"#;
        routes::respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            routes::JSON,
            MockBody::full(msg),
        )
    } else {
        if route.is_generation() {
            guard.set_generating();
        }
        routes::handle(route, &path, &live, &shared.counters, &body).await
    };
    resp.body_mut().attach(guard, head);
    resp
}

/// `/_mock/*`: not counted, not recorded.
async fn control(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::GET, "/_mock/config") => to_json(&shared.live().cfg),
        (Method::POST | Method::PUT, "/_mock/config") => {
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return control_error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            // Merge and swap under the write lock so concurrent patches don't lose keys.
            let mut live = shared.live.write();
            match live.cfg.merged(&body) {
                Ok(cfg) => {
                    let resp = to_json(&cfg);
                    *live = Arc::new(Live::new(cfg));
                    resp
                }
                Err(e) => control_error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (Method::GET, "/_mock/stats") => to_json(&shared.counters.snapshot()),
        (Method::POST, "/_mock/reset") => {
            shared.counters.reset();
            to_json(&shared.counters.snapshot())
        }
        (Method::GET, "/_mock/last") => match shared.counters.last() {
            Some(r) => to_json(&r),
            None => control_error(StatusCode::NOT_FOUND, "no request recorded"),
        },
        (Method::GET, "/_mock/last_work") => match shared.counters.last_work() {
            Some(r) => to_json(&r),
            None => control_error(StatusCode::NOT_FOUND, "no request recorded"),
        },
        _ => control_error(StatusCode::NOT_FOUND, "unknown control route"),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Response<MockBody> {
    match serde_json::to_vec(v) {
        Ok(b) => routes::respond(StatusCode::OK, routes::JSON, MockBody::full(b)),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn control_error(status: StatusCode, message: &str) -> Response<MockBody> {
    routes::respond(
        status,
        routes::JSON,
        MockBody::full(openai::error_body(message, "mock_control_error", None)),
    )
}
