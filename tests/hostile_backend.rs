//! What a faulty or hostile backend can do, over real sockets: raw-socket fake backends scripted
//! by each test send a `Retry-After` that overflows time arithmetic, an HTTP date far beyond any
//! calendar, a 200,001-model list, a model list that always fails; a mock that dies mid-service
//! refuses connections; random model names try to turn discovery-on-miss into a fetch storm; a
//! backend's own copies of the headers olla sets (`Via`, `X-Olla-*`, `X-RateLimit-*`) are
//! replaced, not doubled.
//! Each test names the behaviour it protects.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// What a scripted backend answers: status line tail, extra headers, body.
struct Reply {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn ok(body: impl Into<String>) -> Self {
        Reply {
            status: "200 OK",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn too_many(retry_after: &str) -> Self {
        Reply {
            status: "429 Too Many Requests",
            headers: vec![("retry-after".into(), retry_after.into())],
            body: r#"{"error":{"message":"slow down"}}"#.into(),
        }
    }

    fn error() -> Self {
        Reply {
            status: "500 Internal Server Error",
            headers: Vec::new(),
            body: r#"{"error":"broken"}"#.into(),
        }
    }
}

type Script = dyn Fn(&str, &str, usize) -> Reply + Send + Sync;

/// A raw HTTP/1.1 backend: `script(method, path, nth)` answers the `nth` (1-based) request to
/// `path`. Counts requests per path. Keep-alive, `content-length` framing only.
struct RawBackend {
    url: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(script: impl Fn(&str, &str, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, script.clone(), counted.clone()));
            }
        });
        RawBackend { url, hits, task }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn stop(self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    script: Arc<Script>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_raw_request(&mut s, &mut buf).await else {
            return;
        };
        let (method, path) = (req.method, req.target);
        let nth = {
            let mut h = hits.lock().unwrap();
            let n = h.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let reply = script(&method, &path, nth);
        let mut out = format!(
            "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&reply.body);
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A config with `model_discovery` chosen by the test (`common::config` fixes it to 1 s).
fn config_md(endpoints: &[String], extra: &str, model_discovery: &str) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 5s}}\n{extra}\ndiscovery:\n  model_discovery: {{{model_discovery}}}\n  static:\n    endpoints:\n{}",
        endpoints.concat()
    )
}

/// An endpoint with a chosen probe interval (the common one probes every 200 ms).
fn endpoint_every(name: &str, url: &str, kind: &str, every: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("      - {{name: {name}, url: \"{url}\", type: {kind}, priority: 100, check_interval: {every}, check_timeout: 2s{extra}}}\n")
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    let r = c.get(url).send().await.expect("GET");
    let body = r.text().await.expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

async fn endpoint_status(c: &reqwest::Client, base: &str, name: &str) -> Value {
    let v = get_json(c, &format!("{base}/internal/status/endpoints")).await;
    v["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Polls the shown status of `name` until `want(status)` or `within` passes; returns how long.
async fn wait_status(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    within: Duration,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let e = endpoint_status(c, base, name).await;
        if want(e["status"].as_str().unwrap_or("")) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {name} to be {what}; last: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_429_with_u64_max_retry_after_parks_at_most_max_retry_after_and_the_daemon_keeps_serving(
) {
    let good = mock("good", &["m"]).await;
    // The first two probes are answered 429 with a Retry-After that overflows any clock; then
    // 200.
    let bad = RawBackend::start(|_, path, nth| match path {
        "/health" if nth <= 2 => Reply::too_many("18446744073709551615"),
        "/v1/models" => Reply::ok(r#"{"data":[{"id":"other"}]}"#),
        _ => Reply::ok("{}"),
    })
    .await;
    let yaml = config(
        &[
            endpoint("good", &good.url(), "openai", 100, ""),
            endpoint("bad", &bad.url, "vllm", 100, "max_retry_after: 2s"),
        ],
        "",
    );
    let d = daemon(&yaml).await;
    wait_routable(&d, &["good"], true).await;
    let (c, base) = (client(), d.url());
    let load = SteadyLoad::start(&base, 2, 1_000);

    wait_status(
        &c,
        &base,
        "bad",
        Duration::from_secs(10),
        "rate_limited",
        |s| s == "rate_limited",
    )
    .await;
    let e = endpoint_status(&c, &base, "bad").await;
    assert_ne!(e["status"], "healthy");
    // Parked for the clamped 2 s, not for 584 billion years: it comes back by probing.
    let parked = wait_status(&c, &base, "bad", Duration::from_secs(15), "healthy", |s| {
        s == "healthy"
    })
    .await;
    assert!(parked < Duration::from_secs(10), "parked {parked:?}");
    assert!(
        d.app.tree.is_running(),
        "the backend's 429 did not stop the tree"
    );
    wait_until(Duration::from_secs(10), "good served traffic", || async {
        load.served_by("good") > 5
    })
    .await;
    assert_eq!(
        load.finish().await,
        0,
        "no failed request to the good backend"
    );
    assert!(bad.hits("/health") >= 3, "probed again after each park");
    d.stop().await;
    good.stop().await;
    bad.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_429_with_impossible_or_far_future_http_dates_answers_the_client_and_parks_at_most_max_retry_after(
) {
    // One chat answer per hostile Retry-After; anything else is a healthy vLLM with model m.
    const DATES: [&str; 3] = [
        "Sun, 06 Nov 1994 99999999999:49:37 GMT",
        "Fri, 31 Dec 99999999999999 23:59:59 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ];
    let bad = RawBackend::start(|method, path, nth| match (method, path) {
        ("POST", "/v1/chat/completions") => Reply::too_many(DATES[(nth - 1) % DATES.len()]),
        (_, "/v1/models") => Reply::ok(r#"{"data":[{"id":"m"}]}"#),
        _ => Reply::ok("{}"),
    })
    .await;
    let yaml = config(
        &[endpoint(
            "bad",
            &bad.url,
            "vllm",
            100,
            "max_retry_after: 2s",
        )],
        "",
    );
    let d = daemon(&yaml).await;
    wait_routable(&d, &["bad"], true).await;
    let (c, base) = (client(), d.url());
    for date in DATES {
        let (status, ep, body) = post_chat(&c, &base, "m").await;
        assert_eq!(
            (status, ep.as_str()),
            (429, "bad"),
            "Retry-After {date:?}: the client gets the backend's answer: {body}"
        );
        assert!(body.contains("slow down"), "{body}");
        // Parked (shown as rate-limited), then back within the 2 s cap (or the 1 s default
        // for a date that is not a date).
        wait_status(
            &c,
            &base,
            "bad",
            Duration::from_secs(5),
            "rate_limited",
            |s| s != "healthy",
        )
        .await;
        let back = wait_status(&c, &base, "bad", Duration::from_secs(15), "healthy", |s| {
            s == "healthy"
        })
        .await;
        assert!(back < Duration::from_secs(8), "{date:?}: parked {back:?}");
    }
    assert!(d.app.tree.is_running());
    d.stop().await;
    bad.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_on_live_traffic_gives_at_most_one_502_then_503s() {
    let a = mock("a", &["m"]).await;
    // Probes are a minute apart: only live traffic can notice the death quickly.
    let yaml = config(&[endpoint_every("a", &a.url(), "openai", "60s", "")], "");
    let d = daemon(&yaml).await;
    wait_routable(&d, &["a"], true).await;
    let (c, base) = (client(), d.url());
    assert_eq!(post_chat(&c, &base, "m").await.0, 200);
    a.stop().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(post_chat(&c, &base, "m").await.0);
    }
    let bad_gateways = statuses.iter().filter(|s| **s == 502).count();
    assert!(bad_gateways <= 1, "statuses after the death: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let e = endpoint_status(&c, &base, "a").await;
    assert_eq!(e["status"], "offline", "{e}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200001_model_list_is_cut_to_max_models_per_endpoint_with_a_warning_and_lists_stay_bounded(
) {
    const LISTED: usize = 200_001;
    let mut list = String::with_capacity(LISTED * 24);
    list.push_str(r#"{"object":"list","data":["#);
    for i in 0..LISTED {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&format!(r#"{{"id":"model-{i:06}"}}"#));
    }
    list.push_str("]}");
    let list = Arc::new(list);
    let served = list.clone();
    let big = RawBackend::start(move |_, path, _| match path {
        "/v1/models" => Reply::ok(served.as_str()),
        _ => Reply::ok("{}"),
    })
    .await;
    let yaml = config_md(
        &[endpoint_every("big", &big.url, "vllm", "1s", "")],
        "",
        "interval: 5m, timeout: 20s",
    );
    let d = daemon(&yaml).await;
    let app = d.app.clone();
    wait_until(Duration::from_secs(60), "big's models discovered", || {
        let app = app.clone();
        async move { app.tree.published.catalog.load().models_of("big") > 0 }
    })
    .await;
    assert_eq!(d.app.tree.published.catalog.load().models_of("big"), 10_000);
    let (c, base) = (client(), d.url());
    let e = endpoint_status(&c, &base, "big").await;
    let warning = e["discovery_warning"].as_str().unwrap_or("");
    assert!(
        warning.contains("200001") && warning.contains("10000"),
        "warning shown in status: {e}"
    );
    assert_eq!(e["model_count"], 10_000);

    for query in ["", "?format=openai", "?format=vllm"] {
        let started = Instant::now();
        let r = c
            .get(format!("{base}/olla/models{query}"))
            .send()
            .await
            .expect("GET /olla/models");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("body");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{query}: took {took:?}");
        assert!(body.len() < 16 << 20, "{query}: {} bytes", body.len());
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["data"].as_array().map(Vec::len), Some(10_000), "{query}");
    }
    let v = get_json(
        &c,
        &format!("{base}/internal/status/models?detailed=true&group=family"),
    )
    .await;
    assert_eq!(v["total_models"], 10_000);
    assert_eq!(v["model_groups"][0]["model_count"], 10_000);
    d.stop().await;
    big.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_discovery_backs_off_instead_of_retrying_on_every_probe() {
    let broken = RawBackend::start(|_, path, _| match path {
        "/v1/models" => Reply::error(),
        _ => Reply::ok("{}"),
    })
    .await;
    // Probes every 200 ms; the discovery interval is far away.
    let yaml = config_md(
        &[endpoint("broken", &broken.url, "vllm", 100, "")],
        "",
        "interval: 5m, timeout: 2s",
    );
    let d = daemon(&yaml).await;
    let (c, base) = (client(), d.url());
    wait_until(
        Duration::from_secs(10),
        "a first failed discovery",
        || async { broken.hits("/v1/models") > 0 },
    )
    .await;
    let first = Instant::now();
    // 2 s, then 4 s: within 5 s of the first failure, one retry.
    while first.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetches = broken.hits("/v1/models");
    let probes = broken.hits("/health");
    assert!(probes >= 10, "probes kept running: {probes}");
    assert!(
        (2..=3).contains(&fetches),
        "{fetches} model-list fetches in 5 s of failures"
    );
    let e = endpoint_status(&c, &base, "broken").await;
    assert!(
        e["discovery_error"].as_str().unwrap_or("").contains("500"),
        "{e}"
    );
    d.stop().await;
    broken.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unknown_models_in_discovery_mode_cause_a_handful_of_fetches_and_new_models_are_still_found(
) {
    let a = mock("a", &["m1"]).await;
    let yaml = config_md(
        &[endpoint_every("a", &a.url(), "vllm", "60s", "")],
        "model_registry: {routing_strategy: {type: discovery, options: {discovery_timeout: 2s, discovery_min_interval: 2s, discovery_negative_ttl: 3s}}}",
        "interval: 5m, timeout: 2s",
    );
    let d = daemon(&yaml).await;
    wait_routable(&d, &["a"], true).await;
    let base = d.url();
    let fetches = || a.stats().by_path.get("/v1/models").copied().unwrap_or(0);
    let before = fetches();

    let started = Instant::now();
    let workers: Vec<_> = (0..20)
        .map(|w| {
            let (c, base) = (client(), base.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..10 {
                    let name = format!("ghost-{w}-{i}-{}", fastrand::u64(..));
                    statuses.push(post_chat(&c, &base, &name).await.0);
                }
                statuses
            })
        })
        .collect();
    for w in workers {
        let statuses = w.await.expect("worker");
        assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    }
    let burst = started.elapsed();
    let storm = fetches() - before;
    // One refresh per 2 s at most (plus the one in flight at the end).
    let bound = 2 + burst.as_secs() / 2;
    assert!(
        storm <= bound.min(6),
        "{storm} model-list fetches for 200 unknown names in {burst:?}"
    );

    // A model that appears later is found once the interval allows a refresh.
    a.update(|cfg| cfg.models.push("fresh-model".into()));
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, ep, body) = post_chat(&c, &base, "fresh-model").await;
        if status == 200 {
            assert_eq!(ep, "a");
            break;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "fresh-model never found");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_cannot_spoof_or_double_the_headers_olla_sets() {
    // The backend sends its own values for every header olla sets on a proxied answer.
    let spoofing = RawBackend::start(|method, path, _| match (method, path) {
        ("POST", "/v1/chat/completions") => Reply {
            status: "200 OK",
            headers: [
                ("via", "1.1 upstream-gateway"),
                ("x-served-by", "upstream/9"),
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1"),
                ("x-olla-endpoint", "spoofed"),
                ("x-olla-request-id", "spoofed"),
                ("x-olla-response-time", "0ms"),
                ("request-id", "req_from_backend"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
            body: r#"{"choices":[]}"#.into(),
        },
        (_, "/v1/models") => Reply::ok(r#"{"data":[{"id":"m"}]}"#),
        _ => Reply::ok("{}"),
    })
    .await;
    let d = daemon(&config(
        &[endpoint("real", &spoofing.url, "vllm", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  rate_limits: {per_ip_requests_per_minute: 60, burst_size: 3}\n",
    ))
    .await;
    wait_routable(&d, &["real"], true).await;
    let r = client()
        .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
        .header("content-type", "application/json")
        .header("x-request-id", "mine-1")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let only = |name: &str| {
        let all: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        all[0].to_string()
    };
    assert!(only("via").contains("olla/"));
    assert!(only("x-served-by").starts_with("Olla/"));
    assert_eq!(only("x-ratelimit-limit"), "60");
    assert_eq!(only("x-ratelimit-remaining"), "59");
    assert!(only("x-ratelimit-reset").parse::<u64>().unwrap() > 1_000_000_000);
    assert_eq!(only("x-olla-endpoint"), "real");
    assert_eq!(only("x-olla-request-id"), "mine-1");
    assert!(only("x-olla-response-time").ends_with("ms"));
    // Off the Anthropic routes a backend's own `request-id` is its own business.
    assert_eq!(only("request-id"), "req_from_backend");
    d.stop().await;
    spoofing.stop();
}
