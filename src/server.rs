//! The HTTP listener: HTTP/1.1 and h2c on one port (hyper-util's auto builder), TCP_NODELAY on
//! every accepted socket, header read timeout and header size limits, and graceful shutdown:
//! stop accepting, let in-flight requests and streams finish up to the shutdown timeout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::api;
use crate::app::App;

/// Serves until `shutdown` resolves, then drains connections for up to `shutdown_timeout`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
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
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
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
        });
    }
    drop(listener);
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
