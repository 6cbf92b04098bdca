//! `/internal/stats/models` in Olla's shape: per requested model (catalog models by name, any
//! other name as `other`), its counters and latency percentiles from the registry, sorted by
//! requests, highest first, and a summary. `endpoint_breakdown` and `endpoints` stay empty, as
//! in Olla.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::app::App;
use crate::format;
use crate::http_util::{json_response, Body};

pub fn document(app: &App) -> Value {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut models: Vec<_> = app
        .telemetry
        .metrics
        .models()
        .into_iter()
        .filter(|(_, s)| load(&s.requests) > 0)
        .collect();
    models.sort_by(|a, b| {
        load(&b.1.requests)
            .cmp(&load(&a.1.requests))
            .then(a.0.cmp(&b.0))
    });
    let now = SystemTime::now();
    let (mut total, mut ok, mut bad, mut bytes, mut active) = (0, 0, 0, 0, 0);
    let list: Vec<Value> = models
        .iter()
        .map(|(name, s)| {
            total += load(&s.requests);
            ok += load(&s.successful);
            bad += load(&s.failed);
            bytes += load(&s.bytes);
            let last = SystemTime::UNIX_EPOCH + Duration::from_secs(load(&s.last_requested));
            if now
                .duration_since(last)
                .is_ok_and(|d| d < Duration::from_secs(3600))
            {
                active += 1;
            }
            let ms = |q: f64| s.latency.quantile(q).map_or(0, |v| (v * 1000.0) as u64);
            json!({
                "name": &**name,
                "success_rate": format::percentage(s.success_pct()),
                "total_traffic": format::bytes(load(&s.bytes)),
                "average_latency": format::latency_ms(s.avg_latency_ms() as u64),
                "p95_latency": format::latency_ms(ms(0.95)),
                "p99_latency": format::latency_ms(ms(0.99)),
                "last_requested": format::time_ago(Some(last)),
                "total_requests": load(&s.requests),
                "successful_requests": load(&s.successful),
                "failed_requests": load(&s.failed),
                "unique_clients": 0,
                "routing_hits": 0,
                "routing_misses": 0,
                "routing_fallbacks": 0,
            })
        })
        .collect();
    let most = models
        .first()
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let least = models
        .last()
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let rate = if ok + bad == 0 {
        0.0
    } else {
        ok as f64 * 100.0 / (ok + bad) as f64
    };
    json!({
        "timestamp": format::rfc3339(now),
        "models": list,
        "endpoints": {},
        "summary": {
            "overall_success_rate": format::percentage(rate),
            "total_traffic": format::bytes(bytes),
            "most_popular_model": most,
            "least_popular_model": least,
            "total_models": models.len(),
            "active_models": active,
            "total_requests": total,
        },
    })
}

pub fn response(app: &App) -> Response<Body> {
    json_response(StatusCode::OK, &document(app))
}
