//! The admin commands: request parsing (bounded bodies, unknown fields rejected by name) and
//! the JSON each command answers. Changes go through the supervision tree: routing state via
//! the RouterActor, actors via the BackendSupervisor.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use olla_actors::{ActorInfo, BackendHandle, BackendMsg, BackendSpec, RoutingChange};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::reload;
use super::AdminError;
use crate::api::internal::sanitized_url;
use crate::app::App;
use crate::config::admin::redacted_config;
use crate::config::duration::{parse_duration, Dur};
use crate::config::resolve::endpoint_spec;
use crate::config::schema::{EndpointConfig, TimeoutsConfig};
use crate::format;

/// Admin request bodies are small.
const MAX_BODY: usize = 256 * 1024;
/// Longest `DELETE ?timeout=`.
const MAX_REMOVE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Answer = Result<(StatusCode, String, Value), AdminError>;

fn ok(target: &str, body: Value) -> Answer {
    Ok((StatusCode::OK, target.to_string(), body))
}

/// Routes one authenticated admin request.
pub(super) async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().map(str::to_string);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["admin", "backends"]) => ok("backends", list(app).await),
        (&Method::POST, ["admin", "backends"]) => add(app, req).await,
        (&Method::GET, ["admin", "backends", name]) => {
            let b = backend_json(app, name).await?;
            ok(name, b)
        }
        (&Method::PATCH, ["admin", "backends", name]) => patch(app, name, req).await,
        (&Method::DELETE, ["admin", "backends", name]) => remove(app, name, query.as_deref()).await,
        (&Method::POST, ["admin", "backends", name, action]) => {
            backend_action(app, name, action).await
        }
        (&Method::POST, ["admin", "reload"]) => match reload::reload(app).await {
            Ok(report) => ok("config", report),
            Err(e) => Err(e),
        },
        (&Method::GET, ["admin", "config"]) => {
            let cfg = app.control.origin.read().config.clone();
            ok("config", redacted_config(&cfg))
        }
        (&Method::GET, ["admin", "actors"]) => ok("actors", actors(app).await),
        (&Method::GET, ["admin", "keys"]) => super::keys::list(app),
        (&Method::POST, ["admin", "keys"]) => super::keys::add(app, req).await,
        (&Method::DELETE, ["admin", "keys", name]) => super::keys::remove(app, name),
        (
            _,
            ["admin", "keys"]
            | ["admin", "keys", _]
            | ["admin", "backends"]
            | ["admin", "backends", _]
            | ["admin", "reload"]
            | ["admin", "config"]
            | ["admin", "actors"],
        ) => Err(AdminError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {method} not allowed on {path}"),
        )),
        _ => Err(AdminError::not_found(format!(
            "no admin route {method} {path}"
        ))),
    }
}

/// Reads a bounded JSON body into `T`, naming the offending field on error.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, AdminError> {
    let body: Bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| AdminError::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::bad_request("a JSON body is required"));
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at.is_empty() || at == "." {
            AdminError::bad_request(format!("invalid body: {inner}"))
        } else {
            AdminError::bad_request(format!("invalid body at `{at}`: {inner}"))
        }
    })
}

fn handle_of(app: &App, name: &str) -> Result<BackendHandle, AdminError> {
    app.tree
        .published
        .table()
        .get(name)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("no backend named {name:?}")))
}

fn info_of<'a>(infos: &'a [ActorInfo], name: &str) -> Option<&'a ActorInfo> {
    infos
        .iter()
        .find(|i| i.name.strip_prefix("backend:") == Some(name))
}

/// One backend as `GET /admin/backends` shows it.
fn describe(app: &App, h: &BackendHandle, info: Option<&ActorInfo>) -> Value {
    let routing = h.slot().routing();
    let spec = h.spec();
    let status = if routing.quarantined.is_some() {
        "failed"
    } else {
        h.status().as_str()
    };
    let catalog = app.tree.published.catalog.load();
    let models: Vec<&str> = catalog
        .backends
        .get(h.name())
        .map(|b| b.models.iter().map(|m| m.name.as_str()).collect())
        .unwrap_or_default();
    let last_failure = routing
        .quarantined
        .clone()
        .or_else(|| info.and_then(|i| i.last_failure.clone()));
    json!({
        "name": h.name(),
        "url": sanitized_url(h),
        "type": h.kind().as_str(),
        "priority": routing.priority,
        "weight": routing.weight,
        "enabled": routing.enabled,
        "draining": routing.draining,
        "status": status,
        "circuit_breaker": h.breaker_state(),
        "in_flight": h.in_flight(),
        "queued": h.queued(),
        "max_concurrency": spec.limits.max_concurrency,
        "queue_size": spec.limits.queue_size,
        "models": models,
        "actor_id": info.and_then(|i| i.id.clone()),
        "actor_state": info.map(|i| i.state),
        "restarts": info.map_or(0, |i| i.restarts),
        "last_failure": last_failure,
        "quarantined_until": info.and_then(|i| i.retry_at).map(format::rfc3339),
    })
}

async fn list(app: &App) -> Value {
    let infos = app.tree.backend_info().await;
    let table = app.tree.published.table();
    let backends: Vec<Value> = table
        .backends
        .iter()
        .map(|h| describe(app, h, info_of(&infos, h.name())))
        .collect();
    json!({ "backends": backends })
}

async fn backend_json(app: &App, name: &str) -> Result<Value, AdminError> {
    let h = handle_of(app, name)?;
    let infos = app.tree.backend_info().await;
    Ok(describe(app, &h, info_of(&infos, name)))
}

/// Edits the effective config's endpoint list (what `GET /admin/config` shows).
fn with_endpoints(app: &App, f: impl FnOnce(&mut Vec<EndpointConfig>)) {
    f(&mut app
        .control
        .origin
        .write()
        .config
        .discovery
        .static_
        .endpoints);
}

fn check_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty() {
        return Err(AdminError::bad_request("invalid body at `name`: required"));
    }
    if name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(AdminError::bad_request(
            "invalid body at `name`: use at most 128 letters, digits, '-', '_', '.', ':'",
        ));
    }
    Ok(())
}

/// `POST /admin/backends`: same schema and validation as a config file endpoint.
async fn add(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    let ep: EndpointConfig = read_json(req).await?;
    check_name(&ep.name)?;
    if app.tree.published.table().get(&ep.name).is_some()
        || app
            .tree
            .published
            .specs
            .read()
            .iter()
            .any(|s| s.name == ep.name)
    {
        return Err(AdminError::conflict(format!(
            "a backend named {:?} already exists",
            ep.name
        )));
    }
    let spec = {
        let origin = app.control.origin.read();
        endpoint_spec(&origin.config, &ep, &ep.name)
    };
    let spec = spec.map_err(|errors| {
        let mut e = AdminError::bad_request(errors.join("; "));
        e.errors = errors;
        e
    })?;
    let name = spec.name.clone();
    app.tree.add_backend(Arc::new(spec)).await.map_err(|e| {
        if e.contains("already exists") {
            AdminError::conflict(e)
        } else {
            AdminError::unavailable(e)
        }
    })?;
    with_endpoints(app, |eps| eps.push(ep));
    // The actor publishes its handle in its pre_start, which `add_backend` awaited.
    let body = backend_json(app, &name).await?;
    Ok((StatusCode::CREATED, name, body))
}

/// `PATCH /admin/backends/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    priority: Option<i64>,
    weight: Option<u32>,
    enabled: Option<bool>,
    max_concurrency: Option<usize>,
    queue_size: Option<usize>,
    queue_timeout: Option<Dur>,
    timeouts: Option<TimeoutsConfig>,
}

/// The spec with the patch's limits and timeouts applied (pure); `None` when unchanged.
fn patched_spec(spec: &BackendSpec, p: &Patch) -> Result<Option<BackendSpec>, AdminError> {
    let mut next = spec.clone();
    if let Some(v) = p.max_concurrency {
        next.limits.max_concurrency = v;
    }
    if let Some(v) = p.queue_size {
        next.limits.queue_size = v;
    }
    if let Some(v) = p.queue_timeout {
        next.limits.queue_timeout = v.0;
    }
    if let Some(t) = &p.timeouts {
        for (field, v) in [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
        ] {
            if v.is_some_and(|d| d.0.is_zero()) {
                return Err(AdminError::bad_request(format!(
                    "invalid body at `timeouts.{field}`: must be greater than 0"
                )));
            }
        }
        if let Some(v) = t.connect {
            next.timeouts.connect = v.0;
        }
        if let Some(v) = t.first_byte {
            next.timeouts.first_byte = v.0;
        }
        if let Some(v) = t.idle {
            next.timeouts.idle = v.0;
        }
        if let Some(v) = t.total {
            next.timeouts.total = (!v.0.is_zero()).then_some(v.0);
        }
    }
    if let Some(v) = p.priority {
        next.priority = v;
    }
    if let Some(v) = p.weight {
        next.weight = v;
    }
    Ok((next != *spec).then_some(next))
}

async fn patch(app: &Arc<App>, name: &str, req: Request<Incoming>) -> Answer {
    let h = handle_of(app, name)?;
    let p: Patch = read_json(req).await?;
    if p.weight == Some(0) {
        return Err(AdminError::bad_request(
            "invalid body at `weight`: must be at least 1",
        ));
    }
    let routing = h.slot().routing();
    let mut base = (**h.spec()).clone();
    base.priority = routing.priority;
    base.weight = routing.weight;
    let spec_change = patched_spec(&base, &p)?;
    let limits_or_timeouts = p.max_concurrency.is_some()
        || p.queue_size.is_some()
        || p.queue_timeout.is_some()
        || p.timeouts.is_some();
    if let (Some(next), true) = (&spec_change, limits_or_timeouts) {
        let updated = app
            .tree
            .update_backend(Arc::new(next.clone()))
            .await
            .map_err(AdminError::unavailable)?;
        if !updated {
            return Err(AdminError::not_found(format!("no backend named {name:?}")));
        }
    }
    let change = RoutingChange {
        enabled: p.enabled,
        priority: p.priority,
        weight: p.weight,
        draining: None,
    };
    route(app, name, change).await?;
    with_endpoints(app, |eps| {
        if let Some(ep) = eps.iter_mut().find(|e| e.name == name) {
            apply_patch_to_config(ep, &p);
        }
    });
    let body = backend_json(app, name).await?;
    ok(name, body)
}

fn apply_patch_to_config(ep: &mut EndpointConfig, p: &Patch) {
    if let Some(v) = p.priority {
        ep.priority = v;
    }
    if let Some(v) = p.weight {
        ep.weight = v;
    }
    if p.max_concurrency.is_some() {
        ep.max_concurrency = p.max_concurrency;
    }
    if p.queue_size.is_some() {
        ep.queue_size = p.queue_size;
    }
    if p.queue_timeout.is_some() {
        ep.queue_timeout = p.queue_timeout;
    }
    if let Some(t) = &p.timeouts {
        ep.timeouts.connect = t.connect.or(ep.timeouts.connect);
        ep.timeouts.first_byte = t.first_byte.or(ep.timeouts.first_byte);
        ep.timeouts.idle = t.idle.or(ep.timeouts.idle);
        ep.timeouts.total = t.total.or(ep.timeouts.total);
    }
}

async fn route(app: &App, name: &str, change: RoutingChange) -> Result<(), AdminError> {
    match app.tree.route(name, change).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(AdminError::not_found(format!("no backend named {name:?}"))),
        Err(e) => Err(AdminError::unavailable(e)),
    }
}

/// Parses `?timeout=30s` (bounded).
fn remove_timeout(query: Option<&str>) -> Result<Duration, AdminError> {
    let Some(q) = query else {
        return Ok(DEFAULT_REMOVE_TIMEOUT);
    };
    let mut timeout = DEFAULT_REMOVE_TIMEOUT;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("timeout", v)) => {
                timeout = parse_duration(v)
                    .map_err(|e| AdminError::bad_request(format!("invalid `timeout`: {e}")))?;
                if timeout > MAX_REMOVE_TIMEOUT {
                    return Err(AdminError::bad_request(
                        "invalid `timeout`: at most 1h".to_string(),
                    ));
                }
            }
            _ => {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                return Err(AdminError::bad_request(format!(
                    "unknown query parameter `{}` (valid: timeout)",
                    key.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(timeout)
}

/// `DELETE /admin/backends/{name}`: drain, wait (bounded), remove.
async fn remove(app: &Arc<App>, name: &str, query: Option<&str>) -> Answer {
    let timeout = remove_timeout(query)?;
    handle_of(app, name)?;
    let left = app
        .tree
        .drain_and_remove(name, timeout)
        .await
        .map_err(AdminError::unavailable)?
        .ok_or_else(|| AdminError::not_found(format!("no backend named {name:?}")))?;
    with_endpoints(app, |eps| eps.retain(|e| e.name != name));
    ok(
        name,
        json!({"removed": name, "drained": left == 0, "in_flight_at_removal": left}),
    )
}

async fn backend_action(app: &Arc<App>, name: &str, action: &str) -> Answer {
    let known = [
        "drain", "enable", "disable", "probe", "discover", "restart", "crash",
    ];
    if !known.contains(&action) || (action == "crash" && !app.control.fault_injection()) {
        return Err(AdminError::not_found(format!(
            "no admin route POST /admin/backends/{name}/{}",
            action.chars().take(64).collect::<String>()
        )));
    }
    let h = handle_of(app, name)?;
    let change = |enabled, draining| RoutingChange {
        enabled,
        draining,
        ..RoutingChange::default()
    };
    match action {
        "drain" => route(app, name, change(None, Some(true))).await?,
        "enable" => route(app, name, change(Some(true), Some(false))).await?,
        "disable" => route(app, name, change(Some(false), None)).await?,
        "restart" => {
            let done = app
                .tree
                .restart_backend(name)
                .await
                .map_err(AdminError::unavailable)?;
            if !done {
                return Err(AdminError::not_found(format!("no backend named {name:?}")));
            }
        }
        "probe" => probe(app, &h).await?,
        "discover" => {
            let actor = live_actor(app, name).await?;
            let r = actor
                .call(
                    BackendMsg::Refresh,
                    Some(h.spec().discovery.timeout + Duration::from_secs(1)),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(Ok(_))) => {}
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    return Err(AdminError::new(
                        StatusCode::BAD_GATEWAY,
                        "discovery_failed",
                        format!("discovery of {name:?} failed: {e}"),
                    ))
                }
                _ => {
                    return Err(AdminError::unavailable(format!(
                        "backend {name:?} did not answer in time"
                    )))
                }
            }
        }
        "crash" => {
            let actor = live_actor(app, name).await?;
            let _ = actor.cast(BackendMsg::Panic("fault injection (admin crash)".into()));
            return Ok((
                StatusCode::ACCEPTED,
                name.to_string(),
                json!({"crashed": name, "actor_id": actor.get_id().to_string()}),
            ));
        }
        _ => {}
    }
    let body = backend_json(app, name).await?;
    ok(name, body)
}

async fn live_actor(app: &App, name: &str) -> Result<ractor::ActorRef<BackendMsg>, AdminError> {
    app.tree.backend_actor(name).await.ok_or_else(|| {
        AdminError::conflict(format!(
            "backend {name:?} has no running actor (quarantined or restarting); try `restart`"
        ))
    })
}

/// Probes now and waits (bounded) for the result.
async fn probe(app: &App, h: &BackendHandle) -> Result<(), AdminError> {
    let before = h.shared().health.lock().last_check;
    let actor = live_actor(app, h.name()).await?;
    let _ = actor.cast(BackendMsg::ProbeNow);
    let limit = h.spec().check_timeout.saturating_mul(2) + Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + limit.min(Duration::from_secs(60));
    loop {
        let current = app.tree.published.table().get(h.name()).cloned();
        let last = current.and_then(|c| c.shared().health.lock().last_check);
        if last.is_some() && last != before {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdminError::unavailable(format!(
                "probe of {:?} did not finish within {limit:?}",
                h.name()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn actor_json(a: &ActorInfo) -> Value {
    json!({
        "name": a.name,
        "id": a.id,
        "state": a.state,
        "restarts": a.restarts,
        "last_failure": a.last_failure,
        "retry_at": a.retry_at.map(format::rfc3339),
        "children": a.children.iter().map(actor_json).collect::<Vec<_>>(),
    })
}

/// The supervision tree as `/admin/actors` and `/internal/status/supervision` show it.
pub(crate) async fn actors(app: &App) -> Value {
    let children = app.tree.actors().await;
    let root = ActorInfo {
        name: "root".into(),
        id: Some(app.tree.root_id()),
        state: if app.tree.is_running() {
            "running"
        } else {
            "stopped"
        },
        restarts: 0,
        last_failure: None,
        retry_at: None::<SystemTime>,
        children,
    };
    json!({ "root": actor_json(&root) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_timeout_is_parsed_bounded_and_strict() {
        assert_eq!(remove_timeout(None).unwrap(), DEFAULT_REMOVE_TIMEOUT);
        assert_eq!(
            remove_timeout(Some("timeout=1s")).unwrap(),
            Duration::from_secs(1)
        );
        assert!(remove_timeout(Some("timeout=2h")).is_err());
        assert!(remove_timeout(Some("timeout=soon")).is_err());
        let e = remove_timeout(Some("force=1")).unwrap_err();
        assert!(e.message.contains("`force`"), "{}", e.message);
    }

    #[test]
    fn names_are_restricted() {
        assert!(check_name("gpu-1.local:a_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(129)).is_err());
    }
}
