//! Route dispatch: every request gets a request id and passes the gate ([`crate::gate`]: CORS,
//! client identity, keys, rate and size limits), then goes to the internal routes, the model routes, the universal proxy (`/olla/proxy/...`) or a provider
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
use crate::gate::{Admission, Caller, ViaTls};
use crate::http_util::{request_id, Body};
use crate::proxy::headers::ClientInfo;
use crate::proxy::select::KindFilter;
use crate::proxy::{self, Forward};

/// Handles one request end to end.
pub async fn handle(app: Arc<App>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let rid = request_id(req.headers().get("x-request-id"));
    let mut ctx = HeaderMap::new();
    if let Ok(v) = HeaderValue::try_from(rid.as_str()) {
        ctx.insert(crate::proxy::headers::names::X_OLLA_REQUEST_ID, v);
    }
    let path = req.uri().path().to_string();
    let anthropic = path.starts_with("/olla/anthropic/");
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    app.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(app.clone());
    let (pass, result) = match app.gate.admit(&req, peer, &path) {
        Admission::Pass(pass) => {
            if let Some(key) = &pass.key {
                req.extensions_mut().insert(Caller(key.clone()));
            }
            let result = route(&app, req, peer, &path, &mut ctx).await;
            if let Err(ProxyError::BodyTooLarge(_)) = &result {
                app.gate.stats.size_limits.fetch_add(1, Ordering::Relaxed);
            }
            (pass, result)
        }
        Admission::Reject(e, pass) => (pass, Err(e)),
        Admission::Preflight(mut resp) => {
            for (k, v) in ctx.iter() {
                resp.headers_mut().insert(k, v.clone());
            }
            return resp;
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
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
    pass.finish(&mut resp);
    resp
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
        "/internal/status/supervision" => {
            get_only(&req)?;
            let tree = app
                .supervision
                .get(|| crate::admin::supervision_tree(app))
                .await;
            return Ok(internal::cached_json(&req, &tree));
        }
        "/olla/models" | "/olla/models/" => {
            get_only(&req)?;
            return models::list(app, req.uri().query());
        }
        "/olla/proxy/v1/models" if req.method() == Method::GET => {
            return Ok(models::openai_list(app, KindFilter::Any));
        }
        _ => {}
    }
    if app.dashboard.enabled
        && (path == crate::dashboard::UI_PATH || path.starts_with("/internal/ui/"))
    {
        return Ok(crate::dashboard::serve(
            &app.dashboard,
            &req,
            peer,
            crate::dashboard::UI_PATH,
            true,
        ));
    }
    if let Some(id) = path.strip_prefix("/olla/models/") {
        get_only(&req)?;
        return models::one(app, id);
    }
    let tls = req.extensions().get::<ViaTls>().is_some();
    let client = ClientInfo::new(peer.ip(), tls, &app.settings.trusted_proxies);
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
