//! Observability over real sockets: exact metric values after a known sequence of requests
//! (successes, failovers, 4xx, a breaker opening, an actor restart), the finisher running exactly
//! once per request (completed stream, client gone mid-stream and before the head, failover,
//! error before any backend, panic in the request task), and the stats routes' shapes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use olla::telemetry::{EndReason, FinishObserver, FinishRecord};
use parking_lot::Mutex;
use serde_json::Value;

const TOKEN: &str = "telemetry-test-token";
const CHAT: &str = "/olla/proxy/v1/chat/completions";

/// What the test needs from each finished request.
#[derive(Clone, Debug)]
struct Seen {
    status: u16,
    end: EndReason,
    endpoint: Option<String>,
    failovers: u32,
    attempts: usize,
    tokens_out: Option<u64>,
    bytes: u64,
}

/// Records every finish, by request id.
#[derive(Default)]
struct Recorder(Mutex<HashMap<String, Vec<Seen>>>);

impl FinishObserver for Recorder {
    fn on_finish(&self, rec: &FinishRecord) {
        self.0
            .lock()
            .entry(rec.request_id.clone())
            .or_default()
            .push(Seen {
                status: rec.status,
                end: rec.end,
                endpoint: rec.endpoint_name().map(str::to_string),
                failovers: rec.failovers,
                attempts: rec.attempts.len(),
                tokens_out: rec.tokens_out,
                bytes: rec.bytes_out,
            });
    }
}

impl Recorder {
    fn of(&self, id: &str) -> Vec<Seen> {
        self.0.lock().get(id).cloned().unwrap_or_default()
    }

    /// Waits until `id` has finished (once), then returns that finish.
    async fn finished(&self, id: &str) -> Seen {
        wait_until(Duration::from_secs(10), &format!("{id} finished"), || {
            let n = self.of(id).len();
            async move { n >= 1 }
        })
        .await;
        let all = self.of(id);
        assert_eq!(all.len(), 1, "{id} finished more than once: {all:?}");
        all[0].clone()
    }
}

fn ep(name: &str, url: &str, priority: i64, extra: &str) -> String {
    endpoint(name, url, "vllm", priority, extra)
}

fn admin_block() -> String {
    format!("admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}, fault_injection: true}}\nproxy: {{load_balancer: priority}}\n")
}

async fn post(c: &reqwest::Client, base: &str, id: &str, model: &str, stream: bool) -> u16 {
    let r = c
        .post(format!("{base}{CHAT}"))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(chat(model, stream))
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("x-olla-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(id),
        "request id header rendered from the context"
    );
    let _ = r.bytes().await;
    status
}

async fn metrics_text(c: &reqwest::Client, base: &str) -> String {
    let r = c
        .get(format!("{base}/internal/metrics"))
        .send()
        .await
        .expect("metrics answer");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text().await.expect("metrics text")
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let mut got: Vec<String> = if l.is_empty() {
            Vec::new()
        } else {
            l.split(',').map(str::to_string).collect()
        };
        got.sort();
        if got == want {
            return value.parse().ok();
        }
    }
    None
}

async fn crash(c: &reqwest::Client, admin: &str, name: &str) {
    let r = c
        .post(format!("{admin}/admin/backends/{name}/crash"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(r.status(), 202, "crash accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_values_are_exact_after_a_known_sequence() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let breaker =
        "circuit_breaker: {enabled: true, failure_threshold: 3, window: 30s, open_for: 30s}";
    let eps = [ep("a", &a.url(), 100, breaker), ep("b", &b.url(), 50, "")];
    let d = daemon(&config(&eps, &admin_block())).await;
    wait_routable(&d, &["a", "b"], true).await;
    let rec = Arc::new(Recorder::default());
    d.app.telemetry.add_observer(rec.clone());
    let (c, base) = (client(), d.url());

    // N = 5 successes on a.
    for i in 0..5 {
        assert_eq!(post(&c, &base, &format!("ok-{i}"), "m", false).await, 200);
    }
    // M = 3 failovers: a answers 503 (retryable), b serves; the third fault opens a's breaker.
    a.update(|cfg| cfg.fault = Fault::Error { status: 503 });
    for i in 0..3 {
        let id = format!("fo-{i}");
        assert_eq!(post(&c, &base, &id, "m", false).await, 200);
        let seen = rec.finished(&id).await;
        assert_eq!(seen.endpoint.as_deref(), Some("b"));
        assert_eq!((seen.failovers, seen.attempts), (1, 2));
    }
    a.update(|cfg| cfg.fault = Fault::None);
    // K = 2 client errors: a model nobody serves (404 before any backend).
    for i in 0..2 {
        assert_eq!(
            post(&c, &base, &format!("nf-{i}"), "nope", false).await,
            404
        );
    }
    for i in 0..5 {
        rec.finished(&format!("ok-{i}")).await;
    }
    for i in 0..2 {
        rec.finished(&format!("nf-{i}")).await;
    }
    // One actor restart.
    crash(&c, &d.admin_url().expect("admin on"), "b").await;
    let mut text = String::new();
    for _ in 0..250 {
        text = metrics_text(&c, &base).await;
        if metric(
            &text,
            "olla_endpoint_actor_restarts_total",
            &[("endpoint", "b")],
        ) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(
        m("olla_endpoint_actor_restarts_total", &[("endpoint", "b")]),
        1.0
    );
    assert_eq!(
        m("olla_endpoint_actor_restarts_total", &[("endpoint", "a")]),
        0.0
    );
    assert_eq!(m("olla_requests_total", &[]), 10.0);
    assert_eq!(m("olla_failures_total", &[]), 0.0);
    assert_eq!(m("olla_proxy_failovers_total", &[]), 3.0);
    assert_eq!(m("olla_proxy_retries_total", &[]), 3.0);
    assert_eq!(
        m("olla_endpoint_failovers_total", &[("endpoint", "a")]),
        3.0
    );
    assert_eq!(
        m(
            "olla_endpoint_breaker_transitions_total",
            &[("endpoint", "a"), ("to", "open")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "olla_endpoint_breaker_transitions_total",
            &[("endpoint", "b"), ("to", "open")]
        ),
        0.0
    );
    let series = |e: &'static str, model: &'static str, class: &'static str| {
        [
            ("endpoint", e),
            ("model", model),
            ("route", "openai"),
            ("status_class", class),
        ]
    };
    assert_eq!(
        m("olla_proxy_requests_total", &series("a", "m", "2xx")),
        5.0
    );
    assert_eq!(
        m("olla_proxy_requests_total", &series("b", "m", "2xx")),
        3.0
    );
    assert_eq!(
        m("olla_proxy_requests_total", &series("none", "other", "4xx")),
        2.0
    );
    assert_eq!(
        m(
            "olla_request_duration_seconds_count",
            &series("a", "m", "2xx")
        ),
        5.0
    );
    assert_eq!(
        m("olla_request_ttfb_seconds_count", &series("b", "m", "2xx")),
        3.0
    );
    let mut inf = series("a", "m", "2xx").to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(m("olla_request_duration_seconds_bucket", &inf), 5.0);
    // The mock reports 8 completion tokens per answer; a model not in the catalog is `other`.
    assert_eq!(
        m(
            "olla_tokens_output_total",
            &[("endpoint", "a"), ("model", "m")]
        ),
        40.0
    );
    assert_eq!(
        m(
            "olla_tokens_output_total",
            &[("endpoint", "b"), ("model", "m")]
        ),
        24.0
    );
    assert_eq!(m("olla_model_requests_total", &[("model", "m")]), 8.0);
    assert_eq!(m("olla_model_requests_total", &[("model", "other")]), 2.0);
    assert_eq!(
        m("olla_model_failed_requests_total", &[("model", "other")]),
        0.0
    );
    assert_eq!(
        m(
            "olla_endpoint_up",
            &[("endpoint", "b"), ("status", "healthy")]
        ),
        1.0
    );
    assert_eq!(m("olla_endpoints_total", &[]), 2.0);
    for name in [
        "olla_info",
        "olla_system_status",
        "olla_success_rate_percent",
        "olla_avg_latency_ms",
        "olla_total_traffic_bytes",
        "olla_uptime_seconds",
        "olla_active_connections",
        "olla_models_total",
        "olla_model_p99_latency_ms",
        "olla_model_endpoint_consecutive_errors",
        "olla_endpoint_queued",
        "olla_stream_chunk_gap_seconds",
        "olla_queue_wait_seconds",
        "olla_tokens_per_second",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} declared");
    }
    assert_eq!(m("olla_success_rate_percent", &[]), 100.0);

    // The recent ring holds the same requests, newest first.
    let recent: Value = c
        .get(format!("{base}/internal/stats/recent?limit=3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recent["capacity"], 512);
    assert_eq!(recent["totals"]["requests"], 10);
    assert_eq!(recent["totals"]["errors_4xx"], 2);
    assert_eq!(recent["totals"]["errors_5xx"], 0);
    let reqs = recent["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0]["request_id"], "nf-1");
    assert_eq!(reqs[0]["status"], 404);
    assert_eq!(reqs[0]["endpoint"], Value::Null);
    assert_eq!(reqs[2]["request_id"], "fo-2");
    assert_eq!(reqs[2]["endpoint"], "b");
    assert_eq!(reqs[2]["failovers"], 1);
    assert_eq!(reqs[2]["tokens_out"], 8);
    assert_eq!(reqs[2]["route"], "openai");
    assert_eq!(reqs[2]["client"], "127.0.0.1");
    for k in [
        "time",
        "method",
        "path",
        "model",
        "stream",
        "ttfb_ms",
        "duration_ms",
        "bytes_out",
        "tokens_in",
        "key",
    ] {
        assert!(reqs[2].get(k).is_some(), "{k} in {}", reqs[2]);
    }

    // Model stats in Olla's shape.
    let models: Value = c
        .get(format!("{base}/internal/stats/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["models"][0]["name"], "m");
    assert_eq!(models["models"][0]["total_requests"], 8);
    assert_eq!(models["summary"]["total_requests"], 10);
    assert_eq!(models["summary"]["most_popular_model"], "m");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finisher_runs_once_for_every_way_a_request_ends() {
    let a = mock("a", &["m"]).await;
    let slow = MockServer::start(MockConfig {
        name: "slow".into(),
        models: vec!["s".into()],
        tokens: 500,
        token_delay_ms: 20,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let b = mock("b", &["m"]).await;
    let eps = [
        ep("a", &a.url(), 100, ""),
        ep("b", &b.url(), 50, ""),
        ep("slow", &slow.url(), 10, ""),
    ];
    let d = daemon(&config(&eps, &admin_block())).await;
    wait_routable(&d, &["a", "b", "slow"], true).await;
    let rec = Arc::new(Recorder::default());
    d.app.telemetry.add_observer(rec.clone());
    let (c, base) = (client(), d.url());

    // A completed stream.
    assert_eq!(post(&c, &base, "done-stream", "m", true).await, 200);
    let s = rec.finished("done-stream").await;
    assert_eq!((s.status, s.end), (200, EndReason::Complete));
    assert_eq!(s.endpoint.as_deref(), Some("a"));
    assert!(s.bytes > 0);

    // A client that leaves mid-stream.
    let r = c
        .post(format!("{base}{CHAT}"))
        .header("x-request-id", "gone-mid")
        .body(chat("s", true))
        .send()
        .await
        .unwrap();
    let mut r = r;
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(r);
    let s = rec.finished("gone-mid").await;
    assert_eq!((s.status, s.end), (200, EndReason::ClientGone));
    assert_eq!(s.endpoint.as_deref(), Some("slow"));

    // A client that leaves before the response head (the backend hangs).
    a.update(|cfg| cfg.fault = Fault::Hang);
    b.update(|cfg| cfg.fault = Fault::Hang);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{base}{CHAT}"))
        .header("x-request-id", "gone-early")
        .body(chat("m", false))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    let s = rec.finished("gone-early").await;
    assert_eq!((s.status, s.end), (499, EndReason::ClientGone));
    a.update(|cfg| cfg.fault = Fault::None);
    b.update(|cfg| cfg.fault = Fault::None);

    // A failover.
    a.update(|cfg| cfg.fault = Fault::Error { status: 502 });
    assert_eq!(post(&c, &base, "failover", "m", false).await, 200);
    let s = rec.finished("failover").await;
    assert_eq!(
        (s.status, s.end, s.failovers),
        (200, EndReason::Complete, 1)
    );
    assert_eq!(s.endpoint.as_deref(), Some("b"));
    assert_eq!(s.tokens_out, Some(8));
    a.update(|cfg| cfg.fault = Fault::None);

    // An error before any backend.
    assert_eq!(post(&c, &base, "no-model", "missing", false).await, 404);
    let s = rec.finished("no-model").await;
    assert_eq!(
        (s.status, s.end, s.endpoint),
        (404, EndReason::Complete, None)
    );

    // A panic in the request task: the client gets a 500 and the daemon serves on.
    let r = c
        .post(format!("{base}{CHAT}"))
        .header("x-request-id", "boom")
        .header(olla::api::FAULT_PANIC, "1")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.headers()
            .get("x-olla-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("boom")
    );
    let s = rec.finished("boom").await;
    assert_eq!((s.status, s.end), (500, EndReason::Panic));
    assert_eq!(post(&c, &base, "after-boom", "m", false).await, 200);
    rec.finished("after-boom").await;

    // Internal routes are finished too (access log), once each.
    let r = c
        .get(format!("{base}/internal/process"))
        .header("x-request-id", "proc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert!(p["goroutines"]["count"].as_u64().is_some(), "{p}");
    assert!(p["threads"].as_u64().unwrap_or(0) >= 1, "{p}");
    assert!(p["open_fds"].as_u64().unwrap_or(0) >= 1, "{p}");
    assert!(p["memory"]["heap_alloc"].is_string(), "{p}");
    assert!(p["runtime"]["uptime"].is_string(), "{p}");
    rec.finished("proc").await;

    let text = metrics_text(&c, &base).await;
    assert_eq!(metric(&text, "olla_proxy_panics_total", &[]), Some(1.0));
    assert_eq!(
        metric(&text, "olla_proxy_client_disconnects_total", &[]),
        Some(2.0)
    );
    assert_eq!(metric(&text, "olla_requests_in_flight", &[]), Some(0.0));
    d.stop().await;
    // Every request finished exactly once, after the daemon is gone too.
    for (id, all) in rec.0.lock().iter() {
        assert_eq!(all.len(), 1, "{id}: {all:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_switched_off() {
    let a = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[ep("a", &a.url(), 100, "")],
        "telemetry: {metrics: {enabled: false}}",
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    let (c, base) = (client(), d.url());
    assert_eq!(post(&c, &base, "off-1", "m", false).await, 200);
    let text = metrics_text(&c, &base).await;
    assert_eq!(metric(&text, "olla_requests_total", &[]), Some(0.0));
    assert!(text.contains("# TYPE olla_request_duration_seconds histogram"));
    // The endpoint's own counters (status routes) still count.
    assert_eq!(
        metric(&text, "olla_endpoint_requests_total", &[("endpoint", "a")]),
        Some(1.0)
    );
    d.stop().await;
}

/// Every metric the bundled Grafana dashboard queries is one `/internal/metrics` declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_only_uses_exported_metrics() {
    let a = mock("a", &["m"]).await;
    let d = daemon(&config(&[ep("a", &a.url(), 100, "")], "")).await;
    wait_routable(&d, &["a"], true).await;
    let (c, base) = (client(), d.url());
    let text = metrics_text(&c, &base).await;
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/grafana/olla.json"
        ))
        .expect("dashboard file"),
    )
    .expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() > 20);
    let mut checked = 0;
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("olla_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let declared = |n: &str| text.contains(&format!("# TYPE {n} "));
            let histogram_part = ["_bucket", "_count", "_sum"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .any(|base| text.contains(&format!("# TYPE {base} histogram")));
            assert!(
                declared(&name) || histogram_part,
                "dashboard queries {name}, which /internal/metrics does not declare"
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
    d.stop().await;
}

/// Tokens are read from what the client gets, in every dialect: the translated Anthropic stream
/// (olla's own `message_start` / `message_delta` usage), Anthropic passthrough JSON, and
/// Ollama's NDJSON stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_in_every_dialect() {
    let oai = mock("oai", &["t"]).await;
    let oll = mock("oll", &["o"]).await;
    let pass = mock("pass", &["p"]).await;
    let d = daemon(&config(
        &[
            endpoint("oai", &oai.url(), "openai", 100, ""),
            endpoint("oll", &oll.url(), "ollama", 100, ""),
            endpoint("pass", &pass.url(), "vllm", 100, ""),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["oai", "oll", "pass"], true).await;
    let rec = Arc::new(Recorder::default());
    d.app.telemetry.add_observer(rec.clone());
    let (c, base) = (client(), d.url());
    let send = |path: &'static str, id: &'static str, body: String| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let r = c
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .header("x-request-id", id)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{id}");
            r.bytes().await.unwrap()
        }
    };
    let msg = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","max_tokens":50,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    send("/olla/anthropic/v1/messages", "translated", msg("t", true)).await;
    let s = rec.finished("translated").await;
    assert_eq!(
        (s.endpoint.as_deref(), s.tokens_out),
        (Some("oai"), Some(8))
    );
    send(
        "/olla/anthropic/v1/messages",
        "passthrough",
        msg("p", false),
    )
    .await;
    let s = rec.finished("passthrough").await;
    assert_eq!(
        (s.endpoint.as_deref(), s.tokens_out),
        (Some("pass"), Some(8))
    );
    send(
        "/olla/ollama/api/chat",
        "ndjson",
        r#"{"model":"o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.into(),
    )
    .await;
    let s = rec.finished("ndjson").await;
    assert_eq!(
        (s.endpoint.as_deref(), s.tokens_out),
        (Some("oll"), Some(8))
    );
    d.stop().await;
}
