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

use http::{Method, Request, Response};

use crate::app::App;
use crate::error::ProxyError;
use crate::gate::{Admission, ViaTls};
use crate::http_util::{request_id, Body, RequestBody};
use crate::own_headers::OwnHeaders;
use crate::proxy::headers::ClientInfo;
use crate::proxy::select::KindFilter;
use crate::proxy::{self, Forward};
use crate::telemetry::{catch_unwind, Finisher, RequestContext, Route};
use tracing::Instrument;

/// With `admin.fault_injection` on, a request carrying this header panics in its task (tests of
/// the panic path: the client gets a 500, the request is recorded once, the daemon serves on).
pub const FAULT_PANIC: &str = "x-olla-fault-panic";

/// Handles one request end to end: the gate admits it (or answers a preflight, or refuses it),
/// then it is routed. The request's context lives in its [`Finisher`], which hands back olla's
/// own headers for the response (written with its head) and records the request once its body
/// ends (or the client leaves, or the task panics).
pub async fn handle(app: Arc<App>, req: Request<RequestBody>, peer: SocketAddr) -> Answer {
    let rid = request_id(req.headers().get("x-request-id"));
    let path = req.uri().path().to_string();
    let mut ctx = RequestContext::new(rid, req.method().clone(), path.clone(), peer.ip());
    ctx.trace = crate::telemetry::trace::wire::begin(app.tracer.as_ref(), &path, req.headers());
    let mut finisher = Finisher::new(app.clone(), ctx);
    let anthropic = path.starts_with("/olla/anthropic/");
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    app.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(app.clone());
    let (pass, result) = match app.gate.admit(&req, peer, &path) {
        Admission::Pass(pass) => {
            finisher.ctx().caller.clone_from(&pass.key);
            let span = finisher.span();
            let routed = route(&app, req, peer, &path, finisher.ctx()).instrument(span);
            let result = match catch_unwind(routed).await {
                Ok(r) => r,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(parent: &finisher.span(), panic = %what, "request task panicked; answering 500");
                    finisher.ctx().panicked = true;
                    Err(ProxyError::Internal("internal error".into()))
                }
            };
            if let Err(ProxyError::BodyTooLarge(_)) = &result {
                app.gate.stats.size_limits.fetch_add(1, Ordering::Relaxed);
            }
            (pass, result)
        }
        Admission::Reject(e, pass) => (pass, Err(e)),
        Admission::Preflight(resp) => return finisher.into_response(resp, None),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                app.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            e.to_response(Some(&finisher.ctx().request_id), anthropic)
        }
    };
    let rate = pass.finish(&mut resp);
    finisher.into_response(resp, rate)
}

/// A response and olla's own fields for its head ([`crate::own_headers`]).
pub type Answer = (Response<Body>, OwnHeaders);

/// An [`Answer`] as one response, olla's fields rendered into its header map (HTTP/2, admin).
pub fn rendered((mut resp, own): Answer) -> Response<Body> {
    own.render(resp.headers_mut());
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
    req: Request<RequestBody>,
    peer: SocketAddr,
    path: &str,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let get_only = |req: &Request<RequestBody>| {
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
        "/internal/metrics" => return Ok(crate::telemetry::render::response(app)),
        "/internal/stats/models" => return Ok(crate::telemetry::stats_models::response(app)),
        "/internal/process" => return Ok(crate::telemetry::process::response(app)),
        "/internal/stats/recent" => {
            let limit = crate::telemetry::recent::parse_limit(req.uri().query());
            let in_flight = app.telemetry.in_flight.load(Ordering::Relaxed);
            return Ok(crate::http_util::json_response(
                http::StatusCode::OK,
                &app.telemetry.recent.document(limit, in_flight),
            ));
        }
        "/internal/stats/sticky" => return Ok(internal::sticky_stats(app)),
        "/olla/models" | "/olla/models/" => {
            get_only(&req)?;
            return models::list(app, req.uri().query());
        }
        "/olla/proxy/v1/models" if req.method() == Method::GET => {
            ctx.route = Route::Internal;
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
    if app.control.fault_injection() && req.headers().contains_key(FAULT_PANIC) {
        panic!("fault injection: {FAULT_PANIC} asked this request task to panic");
    }
    let tls = req.extensions().get::<ViaTls>().is_some();
    let client = ClientInfo::new(peer.ip(), tls, &app.settings.trusted_proxies);
    // Behind a trusted proxy, the client it forwards for (as Olla reports it).
    ctx.client_ip = client.client_ip(req.headers());
    let query = req.uri().query().map(str::to_owned);
    if let Some(rest) = path.strip_prefix("/olla/proxy") {
        if rest.is_empty() || rest.starts_with('/') {
            let fwd = Forward::new(KindFilter::Any, rest, query.as_deref(), false)?;
            return proxy::forward(app, req, client, fwd, ctx).await;
        }
    }
    if let Some(tail) = path.strip_prefix("/olla/anthropic") {
        if app.settings.anthropic.enabled && (tail.is_empty() || tail.starts_with('/')) {
            // Boxed: its state is the largest of the routes', and would size every request's
            // future (held per connection while in flight, moved once per request).
            return Box::pin(anthropic::handle(app, req, client, tail, ctx)).await;
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
