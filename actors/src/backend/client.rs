//! The pooled upstream HTTP client of one backend: hyper-util's pooled client over plain TCP
//! (TCP_NODELAY, connect timeout) or rustls TLS, HTTP/1.1 by default, h2c when configured.
//! No proxy environment variable is ever consulted.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::spec::BackendSpec;

/// The client type every backend uses; request bodies are buffered (replayable on failover).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the pooled client for a backend from its spec.
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
