//! `/internal/metrics`: Prometheus text format 0.0.4. Olla's metrics (names, types, labels as
//! Olla exports them; the `endpoint` label is the endpoint's name) are read from the published
//! snapshots and the backends' atomics; olla's own request metrics come from the registry
//! ([`super::metrics`]); other modules' text from the registered [`super::MetricsSource`]s.
//! `# HELP` and `# TYPE` are written for every metric, even without samples.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Response, StatusCode};
use olla_actors::{BackendHandle, EndpointStatus};

use super::hist::{header, sample};
use crate::app::App;
use crate::http_util::{full, Body};

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A model counts as active when requested within this window (Olla's rule).
const ACTIVE_WINDOW: Duration = Duration::from_secs(3600);

/// The `/internal/metrics` response.
pub fn response(app: &App) -> Response<Body> {
    let mut out = String::with_capacity(16 * 1024);
    render(app, &mut out);
    let mut r = Response::new(full(out));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

fn pct(ok: u64, bad: u64) -> f64 {
    if ok + bad == 0 {
        0.0
    } else {
        ok as f64 * 100.0 / (ok + bad) as f64
    }
}

fn breaker_value(state: &str) -> f64 {
    match state {
        "closed" => 0.0,
        "half-open" => 1.0,
        _ => 2.0,
    }
}

/// Writes the whole document.
pub fn render(app: &App, out: &mut String) {
    let table = app.tree.published.table();
    let catalog = app.tree.published.catalog.load();
    let mut backends: Vec<&BackendHandle> = table.backends.iter().collect();
    backends.sort_by(|a, b| a.name().cmp(b.name()));
    let m = &app.telemetry.metrics;
    let t = &m.totals;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);

    // System gauges.
    header(
        out,
        "olla_info",
        "gauge",
        "Olla build and configuration information.",
    );
    sample(
        out,
        "olla_info",
        &[
            ("version", concat!("v", env!("CARGO_PKG_VERSION"))),
            ("commit", option_env!("OLLA_BUILD_COMMIT").unwrap_or("none")),
            ("engine", &app.settings.proxy_engine),
            ("profile", &app.settings.proxy_profile),
            ("balancer", &app.balancer),
        ],
        1.0,
    );
    let total = backends.len();
    let healthy = backends
        .iter()
        .filter(|b| crate::api::internal::shown_status(b) == EndpointStatus::Healthy)
        .count();
    let (succ, fail) = backends.iter().fold((0, 0), |(s, f), b| {
        let st = &b.shared().stats;
        (s + load(&st.successes), f + load(&st.failures))
    });
    let success = (succ + fail > 0).then(|| pct(succ, fail));
    let ratio = if total == 0 {
        0.0
    } else {
        healthy as f64 / total as f64
    };
    let system = if total == 0 || ratio < 0.5 || success.is_some_and(|s| s < 90.0) {
        0.0
    } else if ratio < 0.8 || success.is_some_and(|s| s < 95.0) {
        1.0
    } else {
        2.0
    };
    header(
        out,
        "olla_system_status",
        "gauge",
        "System status: 2 healthy, 1 degraded, 0 critical.",
    );
    sample(out, "olla_system_status", &[], system);
    header(
        out,
        "olla_endpoints_total",
        "gauge",
        "Configured endpoints.",
    );
    sample(out, "olla_endpoints_total", &[], total as f64);
    header(
        out,
        "olla_endpoints_healthy",
        "gauge",
        "Endpoints with status healthy.",
    );
    sample(out, "olla_endpoints_healthy", &[], healthy as f64);
    header(
        out,
        "olla_success_rate_percent",
        "gauge",
        "Proxy request success rate (0 without traffic).",
    );
    sample(
        out,
        "olla_success_rate_percent",
        &[],
        pct(load(&t.successes), load(&t.failures)),
    );
    header(
        out,
        "olla_avg_latency_ms",
        "gauge",
        "Average duration of successful proxy requests in milliseconds.",
    );
    let ok = load(&t.successes);
    sample(
        out,
        "olla_avg_latency_ms",
        &[],
        if ok == 0 {
            0.0
        } else {
            load(&t.latency_ms_total) as f64 / ok as f64
        },
    );
    header(
        out,
        "olla_total_traffic_bytes",
        "gauge",
        "Response bytes sent to clients by proxy requests.",
    );
    sample(out, "olla_total_traffic_bytes", &[], load(&t.bytes) as f64);
    header(
        out,
        "olla_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    sample(
        out,
        "olla_uptime_seconds",
        &[],
        app.started.elapsed().as_secs_f64(),
    );
    header(
        out,
        "olla_active_connections",
        "gauge",
        "Requests being served.",
    );
    sample(
        out,
        "olla_active_connections",
        &[],
        app.stats.active.load(Ordering::Relaxed) as f64,
    );
    header(out, "olla_requests_total", "counter", "Proxy requests.");
    sample(out, "olla_requests_total", &[], load(&t.requests) as f64);
    header(
        out,
        "olla_failures_total",
        "counter",
        "Failed proxy requests (5xx, broken streams).",
    );
    sample(out, "olla_failures_total", &[], load(&t.failures) as f64);

    // Per endpoint (Olla's), from each backend's own counters.
    header(
        out,
        "olla_endpoint_up",
        "gauge",
        "1 when the endpoint is healthy, labelled with its status.",
    );
    for b in &backends {
        let status = crate::api::internal::shown_status(b);
        let up = if status == EndpointStatus::Healthy {
            1.0
        } else {
            0.0
        };
        sample(
            out,
            "olla_endpoint_up",
            &[("endpoint", b.name()), ("status", status.as_str())],
            up,
        );
    }
    type Gauge = (
        &'static str,
        &'static str,
        &'static str,
        fn(&BackendHandle, &olla_actors::catalog::Catalog) -> f64,
    );
    let per_endpoint: [Gauge; 7] = [
        (
            "olla_endpoint_requests_total",
            "counter",
            "Requests sent to the endpoint.",
            |b, _| b.shared().stats.requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_endpoint_traffic_bytes",
            "counter",
            "Response bytes received from the endpoint.",
            |b, _| b.shared().stats.bytes_out.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_endpoint_connections",
            "gauge",
            "Requests in flight on the endpoint.",
            |b, _| b.in_flight() as f64,
        ),
        (
            "olla_endpoint_success_rate_percent",
            "gauge",
            "Endpoint success rate (0 without traffic).",
            |b, _| {
                let s = &b.shared().stats;
                pct(
                    s.successes.load(Ordering::Relaxed),
                    s.failures.load(Ordering::Relaxed),
                )
            },
        ),
        (
            "olla_endpoint_avg_latency_ms",
            "gauge",
            "Average time to response headers in milliseconds.",
            |b, _| {
                let s = &b.shared().stats;
                let n = s.latency_count.load(Ordering::Relaxed);
                if n == 0 {
                    0.0
                } else {
                    s.latency_total_ms.load(Ordering::Relaxed) as f64 / n as f64
                }
            },
        ),
        (
            "olla_endpoint_priority",
            "gauge",
            "Endpoint priority.",
            |b, _| b.priority() as f64,
        ),
        (
            "olla_endpoint_models_count",
            "gauge",
            "Models discovered on the endpoint.",
            |b, c| c.models_of(b.name()) as f64,
        ),
    ];
    for (name, kind, help, f) in per_endpoint {
        header(out, name, kind, help);
        for b in &backends {
            sample(out, name, &[("endpoint", b.name())], f(b, &catalog));
        }
    }

    // Per endpoint (ours).
    header(
        out,
        "olla_endpoint_in_flight",
        "gauge",
        "Requests holding a concurrency slot on the endpoint.",
    );
    for b in &backends {
        sample(
            out,
            "olla_endpoint_in_flight",
            &[("endpoint", b.name())],
            b.in_flight() as f64,
        );
    }
    header(
        out,
        "olla_endpoint_queued",
        "gauge",
        "Requests waiting in the endpoint's queue.",
    );
    for b in &backends {
        sample(
            out,
            "olla_endpoint_queued",
            &[("endpoint", b.name())],
            b.queued() as f64,
        );
    }
    header(
        out,
        "olla_endpoint_breaker_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
    );
    for b in &backends {
        sample(
            out,
            "olla_endpoint_breaker_state",
            &[("endpoint", b.name())],
            breaker_value(b.breaker_state()),
        );
    }
    header(
        out,
        "olla_endpoint_breaker_transitions_total",
        "counter",
        "Circuit breaker transitions, by the state entered.",
    );
    for b in &backends {
        let ev = &b.slot().events;
        sample(
            out,
            "olla_endpoint_breaker_transitions_total",
            &[("endpoint", b.name()), ("to", "open")],
            load(&ev.breaker_opened) as f64,
        );
        sample(
            out,
            "olla_endpoint_breaker_transitions_total",
            &[("endpoint", b.name()), ("to", "closed")],
            load(&ev.breaker_closed) as f64,
        );
    }
    header(
        out,
        "olla_endpoint_actor_restarts_total",
        "counter",
        "Restarts of the endpoint's actor by its supervisor.",
    );
    for b in &backends {
        sample(
            out,
            "olla_endpoint_actor_restarts_total",
            &[("endpoint", b.name())],
            load(&b.slot().events.actor_restarts) as f64,
        );
    }
    header(
        out,
        "olla_endpoint_discovery_errors_total",
        "counter",
        "Failed model discoveries on the endpoint.",
    );
    for b in &backends {
        sample(
            out,
            "olla_endpoint_discovery_errors_total",
            &[("endpoint", b.name())],
            load(&b.slot().events.discovery_errors) as f64,
        );
    }
    header(
        out,
        "olla_requests_in_flight",
        "gauge",
        "Proxy requests begun and not yet finished (streams included).",
    );
    sample(
        out,
        "olla_requests_in_flight",
        &[],
        app.telemetry.in_flight.load(Ordering::Relaxed).max(0) as f64,
    );

    // Models (Olla's): requested names, catalog models only, others as `other`.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let models: Vec<_> = m
        .models()
        .into_iter()
        .filter(|(_, s)| s.requests.load(Ordering::Relaxed) > 0)
        .collect();
    let active = models
        .iter()
        .filter(|(_, s)| {
            now.saturating_sub(s.last_requested.load(Ordering::Relaxed)) < ACTIVE_WINDOW.as_secs()
        })
        .count();
    let (mreq, mok, mbad, mbytes) = models.iter().fold((0, 0, 0, 0), |a, (_, s)| {
        (
            a.0 + load(&s.requests),
            a.1 + load(&s.successful),
            a.2 + load(&s.failed),
            a.3 + load(&s.bytes),
        )
    });
    header(
        out,
        "olla_models_total",
        "gauge",
        "Models requested by clients.",
    );
    sample(out, "olla_models_total", &[], models.len() as f64);
    header(
        out,
        "olla_models_active",
        "gauge",
        "Models requested in the last hour.",
    );
    sample(out, "olla_models_active", &[], active as f64);
    header(
        out,
        "olla_models_success_rate_percent",
        "gauge",
        "Success rate over all models.",
    );
    sample(out, "olla_models_success_rate_percent", &[], pct(mok, mbad));
    header(
        out,
        "olla_models_requests_total",
        "counter",
        "Requests over all models.",
    );
    sample(out, "olla_models_requests_total", &[], mreq as f64);
    header(
        out,
        "olla_models_traffic_bytes",
        "counter",
        "Response bytes over all models.",
    );
    sample(out, "olla_models_traffic_bytes", &[], mbytes as f64);

    type ModelMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&super::metrics::ModelSeries) -> f64,
    );
    let per_model: [ModelMetric; 12] = [
        (
            "olla_model_requests_total",
            "counter",
            "Requests for the model.",
            |s| s.requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_model_successful_requests_total",
            "counter",
            "Successful requests for the model.",
            |s| s.successful.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_model_failed_requests_total",
            "counter",
            "Failed requests for the model.",
            |s| s.failed.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_model_routing_hits_total",
            "counter",
            "Routing hits for the model (always 0, as in Olla).",
            |_| 0.0,
        ),
        (
            "olla_model_routing_misses_total",
            "counter",
            "Routing misses for the model (always 0, as in Olla).",
            |_| 0.0,
        ),
        (
            "olla_model_routing_fallbacks_total",
            "counter",
            "Routing fallbacks for the model (always 0, as in Olla).",
            |_| 0.0,
        ),
        (
            "olla_model_traffic_bytes",
            "counter",
            "Response bytes for the model.",
            |s| s.bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "olla_model_success_rate_percent",
            "gauge",
            "Success rate of the model.",
            |s| s.success_pct(),
        ),
        (
            "olla_model_avg_latency_ms",
            "gauge",
            "Average duration of the model's successful requests.",
            |s| s.avg_latency_ms(),
        ),
        (
            "olla_model_p95_latency_ms",
            "gauge",
            "95th percentile duration (from the duration histogram).",
            |s| s.latency.quantile(0.95).unwrap_or(0.0) * 1000.0,
        ),
        (
            "olla_model_p99_latency_ms",
            "gauge",
            "99th percentile duration (from the duration histogram).",
            |s| s.latency.quantile(0.99).unwrap_or(0.0) * 1000.0,
        ),
        (
            "olla_model_unique_clients",
            "gauge",
            "Distinct clients of the model (always 0, as in Olla).",
            |_| 0.0,
        ),
    ];
    for (name, kind, help, f) in per_model {
        header(out, name, kind, help);
        for (label, s) in &models {
            sample(out, name, &[("model", label)], f(s));
        }
    }
    // Olla declares these and never fills them (detailed stats are off).
    for (name, kind) in [
        ("olla_model_endpoint_requests_total", "counter"),
        ("olla_model_endpoint_success_rate_percent", "gauge"),
        ("olla_model_endpoint_avg_latency_ms", "gauge"),
        ("olla_model_endpoint_consecutive_errors", "gauge"),
    ] {
        header(
            out,
            name,
            kind,
            "Per model and endpoint (declared, no samples, as in Olla).",
        );
    }

    // Ours: requests, histograms, tokens, keys.
    m.render(out);
    app.telemetry.render_sources(out);
}
