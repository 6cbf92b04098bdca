//! The admin endpoint: a separate listener (never the proxy port) serving run-time commands as
//! JSON over HTTP/1.1 — backends (list, add, change, drain, enable, disable, probe, discover,
//! restart, remove), inbound API keys, config reload and view, the supervision tree, and
//! (when enabled) fault injection. With `admin.tls` the listener speaks TLS. It owns authentication (bearer token, constant-time comparison), the JSON error
//! shape and the audit log of every action. It must not touch routing state itself: commands
//! go through the tree (RouterActor, BackendSupervisor); requests on the proxy port never wait
//! on anything here.

mod commands;
pub(crate) use commands::actors as supervision_tree;
mod keys;
pub mod reload;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::RwLock;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::admin::AdminSettings;
use crate::config::Config;
use crate::http_util::{json_response, Body};

/// The config the daemon runs with, as the admin endpoint shows and reloads it.
#[derive(Default)]
pub struct Origin {
    /// The effective config (the file's, plus backends added/changed/removed at run time).
    pub config: Config,
    /// The file `reload` re-reads (`None`: started without one).
    pub path: Option<PathBuf>,
}

/// Admin-side state kept in [`App`].
pub struct Control {
    pub settings: Option<AdminSettings>,
    pub origin: RwLock<Origin>,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            settings: None,
            origin: RwLock::new(Origin::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }
}

impl Control {
    pub fn new(settings: AdminSettings) -> Self {
        Self {
            settings: Some(settings),
            ..Self::default()
        }
    }

    pub(crate) fn fault_injection(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.fault_injection)
    }
}

/// An admin error: status, machine-readable code, message, and optional details.
#[derive(Debug)]
pub struct AdminError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub errors: Vec<String>,
}

impl AdminError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn response(&self) -> Response<Body> {
        let mut body = json!({"message": self.message, "code": self.code});
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut r = json_response(self.status, &json!({ "error": body }));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"olla-admin\""),
            );
        }
        r
    }
}

/// Compares two secrets in time that depends only on the expected one's length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Checks the `Authorization: Bearer <token>` header against the configured token.
fn authorize(expected: Option<&str>, header: Option<&HeaderValue>) -> Result<(), AdminError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(value) = header else {
        return Err(AdminError::unauthorized(
            "missing Authorization header (expected: Bearer <token>)",
        ));
    };
    let value = value.as_bytes();
    let Some(token) = value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| value.get(7..))
    else {
        return Err(AdminError::unauthorized(
            "unsupported authorization scheme (expected: Bearer <token>)",
        ));
    };
    if constant_time_eq(token, expected.as_bytes()) {
        Ok(())
    } else {
        Err(AdminError::unauthorized("invalid admin token"))
    }
}

/// Handles one admin request: authentication, dispatch, audit log.
async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The dashboard's static files carry no data: the token guards the API the page calls.
    if app.dashboard.enabled
        && (path == crate::dashboard::ADMIN_UI_PATH || path.starts_with("/admin/ui/"))
    {
        return crate::dashboard::serve(
            &app.dashboard,
            &req,
            peer,
            crate::dashboard::ADMIN_UI_PATH,
            false,
        );
    }
    let token = app
        .control
        .settings
        .as_ref()
        .and_then(|s| s.token.as_deref());
    let authorized = authorize(token, req.headers().get(http::header::AUTHORIZATION));
    if authorized.is_ok() && is_status_read(&method, &path) {
        // The admin dashboard reads the proxy port's status routes through here (same origin).
        let answer =
            crate::api::handle(app, req.map(crate::http_util::RequestBody::Hyper), peer).await;
        return crate::api::rendered(answer);
    }
    let result = match authorized {
        Ok(()) => commands::dispatch(&app, req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((status, target, body)) => {
            if method != Method::GET {
                info!(action = %format!("{method} {path}"), target = %target, result = status.as_u16(), peer = %peer, "admin command");
            } else {
                debug!(action = %format!("{method} {path}"), result = status.as_u16(), peer = %peer, "admin query");
            }
            json_response(status, &body)
        }
        Err(e) => {
            warn!(action = %format!("{method} {path}"), result = e.status.as_u16(), error = %e.message, peer = %peer, "admin command refused");
            e.response()
        }
    }
}

/// A read of the proxy port's status JSON (`/internal/status*`, `/internal/stats/*`).
fn is_status_read(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/internal/status"
            || path.starts_with("/internal/status/")
            || path.starts_with("/internal/stats/"))
}

/// Binds the admin listener.
pub async fn bind(settings: &AdminSettings) -> Result<TcpListener, String> {
    TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on admin.listen {}: {e}", settings.listen))
}

/// Serves admin requests until `shutdown` resolves, then lets running commands finish for up
/// to two seconds.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let tls = app.gate.admin_tls.clone();
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(app, req, peer).await) }
        });
        let Some(tls) = tls else {
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, peer = %peer, "admin connection ended with an error");
                }
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tls.accept(stream).await {
                Ok(s) => {
                    let conn = builder.serve_connection(TokioIo::new(s), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        debug!(error = %e, peer = %peer, "admin connection ended with an error");
                    }
                }
                Err(e) => debug!(error = %e, peer = %peer, "admin TLS handshake failed"),
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_required_with_the_right_scheme_and_value() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorize(Some("s3cret"), Some(&ok)).is_ok());
        assert!(authorize(
            Some("s3cret"),
            Some(&HeaderValue::from_static("bearer s3cret"))
        )
        .is_ok());
        assert!(authorize(None, None).is_ok(), "no token configured");
        for (h, want) in [
            (None, "missing"),
            (Some("Basic czNjcmV0"), "scheme"),
            (Some("Bearer s3cre"), "invalid"),
            (Some("Bearer s3cretX"), "invalid"),
            (Some("Bearer "), "invalid"),
            (Some("s3cret"), "scheme"),
        ] {
            let v = h.map(HeaderValue::from_static);
            let e = authorize(Some("s3cret"), v.as_ref()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert!(e.message.contains(want), "{h:?}: {}", e.message);
            assert!(!e.message.contains("s3cret"));
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
