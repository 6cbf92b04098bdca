//! Internal routes: `/internal/health` (process liveness), `/version`, and the status routes
//! `/internal/status` and `/internal/status/endpoints` in Olla's shapes, with a weak ETag
//! (304 on `If-None-Match`) and gzip for bodies of 256 bytes or more.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Instant as StdInstant, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode};
use olla_actors::routing::loaded::Loaded;
use olla_actors::{BackendHandle, EndpointStatus};
use serde::Serialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::format;
use crate::http_util::{empty, full, json_response, Body};

pub fn health() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "healthy"}))
}

pub fn version() -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "api": {"endpoints": {"health": "/internal/health", "status": "/internal/status", "version": "/version"}, "version": "v1"},
            "links": {"documentation": "README.md"},
            "build": {"commit": option_env!("OLLA_BUILD_COMMIT").unwrap_or("none"), "date": option_env!("OLLA_BUILD_DATE").unwrap_or("unknown"),
                      "rust_version": "1.95", "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)},
            "name": "Olla",
            "version": concat!("v", env!("CARGO_PKG_VERSION")),
            "edition": "Community",
            "description": "The AI Proxy for your LLMs",
            "capabilities": ["load_balancing", "health_checking", "model_unification", "endpoint_discovery", "circuit_breaking", "priority_failover", "concurrency_limits"],
            "capabilities_experimental": [],
            "supported_backends": ["ollama", "lemonade", "litellm", "llamacpp", "lmdeploy", "lm_studio", "sglang", "vllm", "vllm-mlx", "openai_compatible", "docker-model-runner"],
        }),
    )
}

/// Keys whose values change with the clock; left out of the ETag.
const VOLATILE: &[&str] = &[
    "timestamp",
    "health_check",
    "last_model_sync",
    "uptime",
    "last_check",
    "next_check",
    "last_seen",
];

fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in VOLATILE {
                m.remove(*k);
            }
            for (_, x) in m.iter_mut() {
                strip_volatile(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn base36(mut n: u64) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn etag_matches(header: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(v) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    if v.len() > 1024 {
        return false;
    }
    let want = etag.trim_start_matches("W/");
    v.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == want)
}

fn accepts_gzip<B>(req: &Request<B>) -> bool {
    let Some(v) = req
        .headers()
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    if v.len() > 1024 {
        return false;
    }
    let mut gzip = None;
    let mut star = None;
    for token in v.split(',') {
        let mut parts = token.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        match name.as_str() {
            "gzip" => gzip = Some(q > 0.0),
            "*" => star = Some(q > 0.0),
            _ => {}
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// A JSON status body with weak ETag, 304 and gzip, as Olla serves its status routes.
pub fn cached_json<B, T: Serialize>(req: &Request<B>, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut stable = serde_json::to_value(value).unwrap_or(Value::Null);
    strip_volatile(&mut stable);
    let etag = format!("W/\"{}\"", base36(fnv64(stable.to_string().as_bytes())));
    let mut resp = if etag_matches(req.headers().get(http::header::IF_NONE_MATCH), &etag) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if body.len() >= 256 && accepts_gzip(req) {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 3),
            flate2::Compression::default(),
        );
        let compressed = enc.write_all(&body).and_then(|_| enc.finish());
        match compressed {
            Ok(z) => {
                let mut r = Response::new(full(z));
                r.headers_mut().insert(
                    http::header::CONTENT_ENCODING,
                    HeaderValue::from_static("gzip"),
                );
                r
            }
            Err(_) => Response::new(full(body)),
        }
    } else {
        Response::new(full(body))
    };
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding"),
    );
    if let Ok(v) = HeaderValue::try_from(etag) {
        h.insert(http::header::ETAG, v);
    }
    resp
}

/// Olla's `/internal/status/endpoints` entry.
#[derive(Serialize)]
struct EndpointSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_check_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_model_sync_at: Option<String>,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_model_sync: Option<String>,
    health_check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_time: Option<String>,
    success_rate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    issues: String,
    url: String,
    id: String,
    priority: i64,
    model_count: usize,
    request_count: u64,
    min_latency_ms: u64,
    max_latency_ms: u64,
    active_connections: usize,
    // Ours, beside Olla's fields.
    weight: u32,
    queued: usize,
    max_concurrency: usize,
    circuit_breaker: &'static str,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery_error: Option<String>,
    /// Set when the endpoint's last model list was cut at `max_models_per_endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery_warning: Option<String>,
    /// Models resident now (warm-first checks): a list, `["*"]` for a backend that serves
    /// every listed model without loading, absent when not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_models: Option<Vec<String>>,
}

struct Snapshot {
    h: BackendHandle,
    requests: u64,
    successes: u64,
    failures: u64,
    avg_ms: Option<u64>,
    min_ms: u64,
    max_ms: u64,
    bytes: u64,
    health: olla_actors::backend::HealthInfo,
}

fn snapshot(h: &BackendHandle) -> Snapshot {
    let s = &h.shared().stats;
    let requests = s.requests.load(Ordering::Relaxed);
    let count = s.latency_count.load(Ordering::Relaxed);
    Snapshot {
        requests,
        successes: s.successes.load(Ordering::Relaxed),
        failures: s.failures.load(Ordering::Relaxed),
        avg_ms: (count > 0).then(|| s.latency_total_ms.load(Ordering::Relaxed) / count),
        min_ms: s.latency_min_ms.load(Ordering::Relaxed),
        max_ms: s.latency_max_ms.load(Ordering::Relaxed),
        bytes: s.bytes_out.load(Ordering::Relaxed),
        health: h.shared().health.lock().clone(),
        h: h.clone(),
    }
}

/// Endpoint ids as Olla shows them: endpoints sharing a URL get `-0`, `-1`, ... in name order.
pub fn endpoint_ids(
    table: &olla_actors::published::BackendTable,
) -> std::collections::HashMap<String, String> {
    let mut by_base: std::collections::BTreeMap<&str, Vec<&str>> =
        std::collections::BTreeMap::new();
    for b in &table.backends {
        by_base.entry(b.id()).or_default().push(b.name());
    }
    let mut out = std::collections::HashMap::new();
    for (base, mut names) in by_base {
        if names.len() == 1 {
            out.insert(names[0].to_string(), base.to_string());
            continue;
        }
        names.sort_unstable();
        for (i, n) in names.into_iter().enumerate() {
            out.insert(n.to_string(), format!("{base}-{i}"));
        }
    }
    out
}

/// The status shown for a backend: a routable one parked by a live 429 shows as rate-limited
/// (it gets no traffic until the clamped `Retry-After` passes).
pub(crate) fn shown_status(h: &BackendHandle) -> EndpointStatus {
    let status = h.status();
    if status.is_routable() && h.parked(tokio::time::Instant::now()) {
        EndpointStatus::RateLimited
    } else {
        status
    }
}

pub(crate) fn sanitized_url(h: &BackendHandle) -> String {
    h.spec().configured_url.clone()
}

fn success_pct(s: &Snapshot) -> Option<f64> {
    let done = s.successes + s.failures;
    (done > 0).then(|| s.successes as f64 * 100.0 / done as f64)
}

fn ordered(app: &App) -> Vec<Snapshot> {
    let table = app.tree.published.table();
    let mut v: Vec<Snapshot> = table.backends.iter().map(snapshot).collect();
    v.sort_by(|a, b| {
        b.h.spec()
            .priority
            .cmp(&a.h.spec().priority)
            .then_with(|| {
                (b.h.status().as_str() == "healthy").cmp(&(a.h.status().as_str() == "healthy"))
            })
            .then_with(|| a.h.name().cmp(b.h.name()))
    });
    v
}

pub fn endpoints<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let list = ordered(app);
    let ids = endpoint_ids(&app.tree.published.table());
    let catalog = app.tree.published.catalog.load();
    let summaries: Vec<EndpointSummary> = list
        .iter()
        .map(|s| {
            let status = shown_status(&s.h);
            let quarantined = s.h.slot().routing().quarantined.clone();
            let pct = success_pct(s);
            let issues = if quarantined.is_some() {
                "failed: quarantined after repeated crashes".to_string()
            } else if !status.is_routable() {
                "unavailable".to_string()
            } else if s.health.consecutive_failures > 3 {
                "unstable".to_string()
            } else if s.requests > 10 && pct.is_some_and(|p| p < 90.0) {
                "low success rate".to_string()
            } else {
                String::new()
            };
            EndpointSummary {
                avg_latency_ms: s.avg_ms,
                next_check_at: s.health.next_check.map(format::rfc3339),
                health_check_at: s.health.last_check.map(format::rfc3339),
                last_model_sync_at: s.health.last_model_sync.map(format::rfc3339),
                name: s.h.name().to_string(),
                kind: s.h.kind().as_str().to_string(),
                status: if quarantined.is_some() {
                    "failed".to_string()
                } else {
                    status.as_str().to_string()
                },
                last_model_sync: s.health.last_model_sync.map(|t| format::time_ago(Some(t))),
                health_check: s
                    .health
                    .last_check
                    .map(|t| format::time_ago(Some(t)))
                    .unwrap_or_default(),
                response_time: s
                    .health
                    .last_latency
                    .map(|d| format::latency_ms(d.as_millis() as u64)),
                success_rate: pct.map(format::percentage).unwrap_or_else(|| "N/A".into()),
                issues,
                url: sanitized_url(&s.h),
                id: ids.get(s.h.name()).cloned().unwrap_or_default(),
                priority: s.h.priority(),
                model_count: catalog.models_of(s.h.name()),
                request_count: s.requests,
                min_latency_ms: s.min_ms,
                max_latency_ms: s.max_ms,
                active_connections: s.h.in_flight(),
                weight: s.h.weight(),
                queued: s.h.queued(),
                max_concurrency: s.h.spec().limits.max_concurrency,
                circuit_breaker: s.h.breaker_state(),
                consecutive_failures: s.health.consecutive_failures,
                last_error: quarantined.or_else(|| s.health.last_error.clone()),
                discovery_error: s.health.discovery_error.clone(),
                discovery_warning: s.health.discovery_warning.clone(),
                loaded_models: match &**s.h.slot().balance.loaded() {
                    Loaded::Unknown => None,
                    Loaded::Always => Some(vec!["*".to_string()]),
                    Loaded::Models(list) => Some(list.to_vec()),
                },
            }
        })
        .collect();
    let healthy = list
        .iter()
        .filter(|s| shown_status(&s.h) == EndpointStatus::Healthy)
        .count();
    let routable = list
        .iter()
        .filter(|s| shown_status(&s.h).is_routable())
        .count();
    let body = json!({
        "timestamp": format::rfc3339(SystemTime::now()),
        "endpoints": summaries,
        "total_count": list.len(),
        "healthy_count": healthy,
        "routable_count": routable,
    });
    cached_json(req, &body)
}

/// `/internal/stats/sticky`: Olla's shape when sticky sessions are on, `{"enabled":false}`
/// when off.
pub fn sticky_stats(app: &App) -> Response<Body> {
    let published = &app.tree.published;
    let policy = published.policy.load();
    let body = if policy.sticky.enabled {
        published.routing.sticky.stats_json(&policy.sticky)
    } else {
        json!({"enabled": false})
    };
    json_response(StatusCode::OK, &body)
}

pub fn status<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let list = ordered(app);
    let ids = endpoint_ids(&app.tree.published.table());
    let catalog = app.tree.published.catalog.load();
    let total = list.len();
    let healthy = list
        .iter()
        .filter(|s| shown_status(&s.h) == EndpointStatus::Healthy)
        .count();
    let (mut reqs, mut succ, mut fail, mut bytes, mut lat_total, mut lat_n) = (0, 0, 0, 0, 0, 0);
    let endpoints: Vec<Value> = list
        .iter()
        .map(|s| {
            reqs += s.requests;
            succ += s.successes;
            fail += s.failures;
            bytes += s.bytes;
            if let Some(a) = s.avg_ms {
                lat_total += a;
                lat_n += 1;
            }
            let status = shown_status(&s.h);
            let pct = success_pct(s);
            let mut issues = Vec::new();
            if s.health.consecutive_failures > 3 {
                issues.push("consecutive failures");
            }
            if s.requests > 10 && pct.is_some_and(|p| p < 90.0) {
                issues.push("low success rate");
            }
            if s.avg_ms.is_some_and(|a| a > 5000) {
                issues.push("high latency");
            }
            if !status.is_routable() {
                issues.push("unavailable");
            }
            let mut e = json!({
                "models": {"last_updated": s.health.last_model_sync.map(format::rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                           "count": catalog.models_of(s.h.name())},
                "name": s.h.name(), "status": status.as_str(),
                "success_rate": format::percentage(pct.unwrap_or(0.0)),
                "avg_latency": format::latency_ms(s.avg_ms.unwrap_or(0)),
                "traffic": format::bytes(s.bytes),
                "last_check": format::time_ago(s.health.last_check),
                "next_check": format::time_until(s.health.next_check),
                "issues": issues.join(", "),
                "url": sanitized_url(&s.h), "id": ids.get(s.h.name()).cloned().unwrap_or_default(),
                "priority": s.h.spec().priority, "connections": s.h.in_flight(), "requests": s.requests,
                "min_latency_ms": s.min_ms, "max_latency_ms": s.max_ms,
            });
            if let (Some(a), Some(obj)) = (s.avg_ms, e.as_object_mut()) {
                obj.insert("avg_latency_ms".into(), json!(a));
            }
            e
        })
        .collect();
    let success = (succ + fail > 0).then(|| succ as f64 * 100.0 / (succ + fail) as f64);
    let ratio = if total == 0 {
        0.0
    } else {
        healthy as f64 / total as f64
    };
    let system_status = if total == 0 || ratio < 0.5 || success.is_some_and(|s| s < 90.0) {
        "critical"
    } else if ratio < 0.8 || success.is_some_and(|s| s < 95.0) {
        "degraded"
    } else {
        "healthy"
    };
    let security = app.gate.stats.status_json();
    let violations = app.gate.stats.size_limits.load(Ordering::Relaxed)
        + app.gate.stats.rate_limits.load(Ordering::Relaxed);
    let body = json!({
        "timestamp": format::rfc3339(SystemTime::now()),
        "proxy": {"engine": app.settings.proxy_engine, "profile": app.settings.proxy_profile, "balancer": app.balancer},
        "endpoints": endpoints,
        "security": security,
        "system": {
            "start_time": format::rfc3339(app.started_at),
            "status": system_status,
            "endpoints_up": format!("{healthy}/{total}"),
            "success_rate": success.map(format::percentage).unwrap_or_else(|| "N/A".into()),
            "avg_latency": format::latency_ms(lat_total.checked_div(lat_n).unwrap_or(0)),
            "total_traffic": format::bytes(bytes),
            "uptime": format::uptime(StdInstant::now().duration_since(app.started)),
            "version": concat!("v", env!("CARGO_PKG_VERSION")),
            "commit": option_env!("OLLA_BUILD_COMMIT").unwrap_or("none"),
            "active_connections": app.stats.active.load(Ordering::Relaxed),
            "rejected_connections": app.stats.rejected_connections.load(Ordering::Relaxed),
            "security_violations": violations,
            "total_requests": reqs,
            "total_failures": fail,
            "has_traffic": reqs > 0,
        },
    });
    cached_json(req, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_weakly_and_by_list() {
        let e = "W/\"abc\"";
        assert!(etag_matches(
            Some(&HeaderValue::from_static("W/\"abc\"")),
            e
        ));
        assert!(etag_matches(
            Some(&HeaderValue::from_static("\"x\", \"abc\"")),
            e
        ));
        assert!(etag_matches(Some(&HeaderValue::from_static("*")), e));
        assert!(!etag_matches(Some(&HeaderValue::from_static("\"x\"")), e));
        assert!(!etag_matches(None, e));
    }

    #[test]
    fn gzip_negotiation() {
        let r = |v: &'static str| {
            Request::builder()
                .header("accept-encoding", v)
                .body(())
                .unwrap()
        };
        assert!(accepts_gzip(&r("gzip, deflate")));
        assert!(!accepts_gzip(&r("gzip;q=0")));
        assert!(accepts_gzip(&r("*")));
        assert!(!accepts_gzip(&r("br")));
    }
}
