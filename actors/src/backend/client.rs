//! The pooled upstream HTTP client of one backend: hyper-util's pooled client over plain TCP
//! (TCP_NODELAY, connect timeout) or rustls TLS, HTTP/1.1 by default, h2c when configured.
//! No proxy environment variable is ever consulted.
//!
//! Sharding: the daemon serves on one thread per core, each with its own single-threaded
//! runtime. A pooled connection's task runs on the runtime that opened it, so sharing one pool
//! between serving threads would bounce every request between threads. Each backend therefore
//! keeps one pool per serving thread (selected by a thread-local shard index) plus one for every
//! other thread (actors, probes, tests).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::h1::H1Pool;
use crate::spec::BackendSpec;

/// The client type every backend uses; request bodies are buffered (replayable on failover).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Number of serving threads (pools per backend = this + 1).
static SERVING_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Declares how many serving threads there will be; call before backends start.
pub fn set_serving_threads(n: usize) {
    SERVING_THREADS.store(n, Ordering::Relaxed);
}

/// Marks the current thread as serving thread `i` (its requests use pool `i`).
pub fn enter_serving_thread(i: usize) {
    SHARD.with(|s| s.set(i));
}

/// One pool per serving thread plus one shared by every other thread.
#[derive(Clone)]
pub struct ShardedClient {
    pools: Arc<[UpstreamClient]>,
    /// The proxy path's own HTTP/1.1 pool, for plain `http://` backends not set to h2c.
    h1: Option<H1Pool>,
}

impl ShardedClient {
    pub fn build(spec: &BackendSpec) -> Self {
        let n = SERVING_THREADS.load(Ordering::Relaxed) + 1;
        let h1 = if spec.h2c {
            None
        } else {
            H1Pool::for_url(&spec.url, n, spec.timeouts.connect, spec.timeouts.pool_idle)
        };
        Self {
            pools: (0..n).map(|_| build_client(spec)).collect(),
            h1,
        }
    }

    /// The pool of the calling thread.
    pub fn get(&self) -> &UpstreamClient {
        &self.pools[self.shard()]
    }

    /// The calling thread's shard index (its serving thread, or the shared last one).
    pub fn shard(&self) -> usize {
        let last = self.pools.len() - 1;
        SHARD.with(Cell::get).min(last)
    }

    /// The direct HTTP/1.1 pool, when this backend is reached over plain HTTP/1.1.
    pub fn h1(&self) -> Option<&H1Pool> {
        self.h1.as_ref()
    }
}

/// Builds one pooled client for a backend from its spec.
pub fn build_client(spec: &BackendSpec) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(spec.timeouts.connect));
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let tls = match HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(_) => HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    let connector = tls
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(spec.timeouts.pool_idle)
        .pool_max_idle_per_host(1024)
        .http2_only(spec.h2c);
    builder.build(connector)
}
