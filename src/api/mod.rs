//! Route dispatch: every request gets a request id and the header-size check, then goes to the
//! internal routes, the model routes, the universal proxy (`/olla/proxy/...`) or a provider
//! prefix (`/olla/<provider>/...`). Errors become JSON with the request's routing headers.

pub mod anthropic;
pub mod internal;
pub mod models;
pub mod provider;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::ProxyError;
use crate::http_util::{request_id, Body};
use crate::proxy::headers::ClientInfo;
use crate::proxy::select::KindFilter;
use crate::proxy::{self, Forward};

/// Estimated size of a request head, as Olla estimates it.
fn header_size(req: &Request<Incoming>) -> u64 {
    let uri_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    let mut n = req.method().as_str().len() + uri_len + 12;
    for (k, v) in req.headers() {
        n += k.as_str().len() + v.len() + 4;
    }
    n as u64
}

/// Handles one request end to end.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let rid = request_id(req.headers().get("x-request-id"));
    let mut ctx = HeaderMap::new();
    if let Ok(v) = HeaderValue::try_from(rid.as_str()) {
        ctx.insert(crate::proxy::headers::names::X_OLLA_REQUEST_ID, v);
    }
    let path = req.uri().path().to_string();
    let trace = crate::telemetry::trace::wire::begin(app.tracer.as_ref(), &path, req.headers());
    let method = req.method().clone();
    let anthropic = path.starts_with("/olla/anthropic/");
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    app.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(app.clone());
    let result = if header_size(&req) > app.settings.max_header_size {
        app.stats.size_violations.fetch_add(1, Ordering::Relaxed);
        Err(ProxyError::HeadersTooLarge(app.settings.max_header_size))
    } else {
        let routed = route(&app, req, peer, &path, &mut ctx);
        crate::telemetry::trace::wire::scope(trace.clone(), routed).await
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ProxyError::BodyTooLarge(_)) {
                app.stats.size_violations.fetch_add(1, Ordering::Relaxed);
            }
            if e.status().is_server_error() {
                app.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            e.to_response(&ctx, anthropic)
        }
    };
    for (k, v) in ctx.iter() {
        if !resp.headers().contains_key(k) {
            resp.headers_mut().insert(k, v.clone());
        }
    }
    crate::telemetry::trace::wire::finish(app.tracer.as_ref(), trace, resp, &method, &path, &rid)
}

struct ActiveGuard(Arc<App>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
    ctx: &mut HeaderMap,
) -> Result<Response<Body>, ProxyError> {
    let get_only = |req: &Request<Incoming>| {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            Ok(())
        } else {
            Err(ProxyError::MethodNotAllowed(req.method().to_string()))
        }
    };
    match path {
        "/internal/health" => return Ok(internal::health()),
        "/version" | "/internal/version" => return Ok(internal::version()),
        "/internal/status" => return Ok(internal::status(app, &req)),
        "/internal/status/endpoints" => return Ok(internal::endpoints(app, &req)),
        "/internal/status/models" => return Ok(models::status_models(app, &req)),
        "/internal/stats/translators" => return Ok(anthropic::stats(app)),
        "/olla/models" | "/olla/models/" => {
            get_only(&req)?;
            return models::list(app, req.uri().query());
        }
        "/olla/proxy/v1/models" if req.method() == Method::GET => {
            return Ok(models::openai_list(app, KindFilter::Any));
        }
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/olla/models/") {
        get_only(&req)?;
        return models::one(app, id);
    }
    let client = ClientInfo::new(peer.ip(), false, &app.settings.trusted_proxies);
    let query = req.uri().query().map(str::to_owned);
    if let Some(rest) = path.strip_prefix("/olla/proxy") {
        if rest.is_empty() || rest.starts_with('/') {
            let fwd = Forward::new(KindFilter::Any, rest, query.as_deref(), false)?;
            return proxy::forward(app, req, client, fwd, ctx).await;
        }
    }
    if let Some(tail) = path.strip_prefix("/olla/anthropic") {
        if app.settings.anthropic.enabled && (tail.is_empty() || tail.starts_with('/')) {
            return anthropic::handle(app, req, client, tail, ctx).await;
        }
    }
    if let Some(rest) = path.strip_prefix("/olla/") {
        let (prefix, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(filter) = provider::filter_for(prefix) {
            return provider::handle(app, req, client, filter, tail, query.as_deref(), ctx).await;
        }
    }
    Err(ProxyError::RouteNotFound(format!(
        "{} {path}",
        req.method()
    )))
}
