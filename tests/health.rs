//! Backend health over real sockets: the passive circuit breaker (5xx opens it, 4xx never does,
//! half-open trial closes it), live 429 parking with Retry-After, active probes with hysteresis
//! (a killed backend goes offline and comes back on the same port), per-backend concurrency
//! limits with bounded queues and tier spill-over, probes that hang, the status endpoints (fields,
//! ETag/304, gzip), and retryable statuses failing over before the first byte.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use olla_actors::BackendMsg;
use serde_json::Value;

const CHAT: &str = "/v1/chat/completions";

/// One endpoint line with its own probe interval and timeout (the harness's `endpoint()` fixes
/// them at 200 ms / 500 ms). Type `vllm`: its health route is `/health`, which the mock's
/// `health_status` / `health_delay_ms` apply to.
fn ep(name: &str, url: &str, priority: i64, interval: &str, timeout: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "      - {{name: {name}, url: \"{url}\", type: vllm, priority: {priority}, check_interval: {interval}, check_timeout: {timeout}{extra}}}\n"
    )
}

/// GET `/internal/status/endpoints` as JSON.
/// Backends "a" (priority 100, endpoint YAML `a_extra`) and "b" (priority 50) serving model
/// "m" behind a priority-balanced daemon, both routable.
async fn primary_and_fallback(a_extra: &str) -> (MockServer, MockServer, Daemon) {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        ep("a", &a.url(), 100, "200ms", "500ms", a_extra),
        ep("b", &b.url(), 50, "200ms", "500ms", ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["a", "b"], true).await;
    (a, b, d)
}

async fn endpoints_status(c: &reqwest::Client, base: &str) -> Value {
    let r = c
        .get(format!("{base}/internal/status/endpoints"))
        .send()
        .await
        .expect("status endpoint answers");
    assert_eq!(r.status(), 200);
    r.json().await.expect("status JSON")
}

/// One backend's entry of `/internal/status/endpoints`.
async fn entry(c: &reqwest::Client, base: &str, name: &str) -> Value {
    let v = endpoints_status(c, base).await;
    v["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no endpoint {name} in {v}"))
}

/// Waits until `name`'s status entry has `field == want`.
async fn wait_field(d: &Daemon, name: &str, field: &str, want: &str, within: Duration) {
    let (c, base) = (client(), d.url());
    wait_until(within, &format!("{name}.{field} == {want}"), || {
        let (c, base) = (c.clone(), base.clone());
        async move { entry(&c, &base, name).await[field] == want }
    })
    .await;
}

fn chat_count(m: &MockServer) -> u64 {
    m.stats().by_path.get(CHAT).copied().unwrap_or(0)
}

fn health_count(m: &MockServer) -> u64 {
    m.stats().by_path.get("/health").copied().unwrap_or(0)
}

/// The body a mock sends for a chat request when asked directly (to compare pass-through).
async fn direct_body(m: &MockServer, model: &str) -> (u16, String) {
    let r = client()
        .post(format!("{}{CHAT}", m.url()))
        .header("content-type", "application/json")
        .body(chat(model, false))
        .send()
        .await
        .expect("mock answers");
    (r.status().as_u16(), r.text().await.expect("mock body"))
}

/// What a client saw of one (streamed) chat request.
#[derive(Debug)]
struct Seen {
    status: u16,
    endpoint: String,
    retry_after: Option<String>,
    /// From send to response headers.
    headers_after: Duration,
    body: String,
}

async fn chat_request(c: reqwest::Client, base: String, stream: bool) -> Seen {
    let started = Instant::now();
    let r = c
        .post(format!("{base}/olla/proxy{CHAT}"))
        .header("content-type", "application/json")
        .body(chat("m", stream))
        .send()
        .await
        .expect("request sent");
    let headers_after = started.elapsed();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, endpoint, retry_after) = (
        r.status().as_u16(),
        header("x-olla-endpoint").unwrap_or_default(),
        header("retry-after"),
    );
    let body = r
        .text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    Seen {
        status,
        endpoint,
        retry_after,
        headers_after,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_5xx_open_the_breaker_then_half_open_trial_closes_it() {
    // 500 is not in the default retry list [502, 503, 504, 429]: it passes through to the
    // client, and each one counts as a backend fault.
    let breaker = "circuit_breaker: {enabled: true, failure_threshold: 3, window: 10s, open_for: 1s, max_open_for: 4s}";
    let (a, b, d) = primary_and_fallback(breaker).await;
    let (c, base) = (client(), d.url());
    a.update(|c| c.fault = Fault::Error { status: 500 });
    let (_, direct) = direct_body(&a, "m").await;
    a.reset_stats();

    for i in 1..=3 {
        let (status, endpoint, body) = post_chat(&c, &base, "m").await;
        assert_eq!((status, endpoint.as_str()), (500, "a"), "request {i}");
        assert_eq!(body, direct, "the 500 body passes through unchanged");
    }
    let opened = Instant::now();
    assert_eq!(chat_count(&a), 3);
    let e = entry(&c, &base, "a").await;
    assert_eq!(e["circuit_breaker"], "open", "{e}");
    assert_eq!(
        e["status"], "healthy",
        "probes still pass: only the breaker is open"
    );

    // While open, traffic goes to the other backend and never reaches `a`.
    for _ in 0..5 {
        let (status, endpoint, _) = post_chat(&c, &base, "m").await;
        assert_eq!((status, endpoint.as_str()), (200, "b"));
    }
    assert_eq!(chat_count(&a), 3, "no request reached the open backend");

    // After open_for it is half-open (no request sent meanwhile).
    wait_field(
        &d,
        "a",
        "circuit_breaker",
        "half-open",
        Duration::from_secs(3),
    )
    .await;
    let open_lasted = opened.elapsed();
    eprintln!("breaker open for {open_lasted:?}");
    assert!(
        open_lasted >= Duration::from_millis(900),
        "open for only {open_lasted:?}"
    );

    // The backend recovers; one trial request succeeds and closes the breaker.
    a.update(|c| c.fault = Fault::None);
    let (status, endpoint, _) = post_chat(&c, &base, "m").await;
    assert_eq!(
        (status, endpoint.as_str()),
        (200, "a"),
        "the trial goes to a"
    );
    wait_field(&d, "a", "circuit_breaker", "closed", Duration::from_secs(1)).await;
    for _ in 0..5 {
        let (status, endpoint, _) = post_chat(&c, &base, "m").await;
        assert_eq!(
            (status, endpoint.as_str()),
            (200, "a"),
            "traffic is back on a"
        );
    }
    d.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_4xx_never_open_the_breaker() {
    let breaker =
        "circuit_breaker: {enabled: true, failure_threshold: 3, window: 30s, open_for: 10s}";
    let (a, b, d) = primary_and_fallback(breaker).await;
    let (c, base) = (client(), d.url());
    a.update(|c| c.fault = Fault::Error { status: 400 });
    let (direct_status, direct) = direct_body(&a, "m").await;
    assert_eq!(direct_status, 400);
    a.reset_stats();

    for i in 1..=20 {
        let (status, endpoint, body) = post_chat(&c, &base, "m").await;
        assert_eq!((status, endpoint.as_str()), (400, "a"), "request {i}");
        assert_eq!(body, direct, "the 400 body passes through unchanged");
    }
    assert_eq!(chat_count(&a), 20);
    assert_eq!(chat_count(&b), 0, "a 400 is never retried elsewhere");
    let e = entry(&c, &base, "a").await;
    assert_eq!(e["circuit_breaker"], "closed", "{e}");
    assert_eq!(e["status"], "healthy");
    assert_eq!(
        e["success_rate"], "100%",
        "client errors do not count against the backend"
    );
    assert!(d
        .app
        .tree
        .published
        .table()
        .get("a")
        .unwrap()
        .is_routable(tokio::time::Instant::now()));
    d.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_429_with_retry_after_parks_the_backend_for_that_long() {
    let (a, b, d) = primary_and_fallback("").await;
    let (c, base) = (client(), d.url());
    let (status, endpoint, _) = post_chat(&c, &base, "m").await;
    assert_eq!((status, endpoint.as_str()), (200, "a"));

    a.update(|c| {
        c.fault = Fault::Error { status: 429 };
        c.retry_after = Some("2".into());
    });
    a.reset_stats();
    let sent = Instant::now();
    // 429 is retryable: the client gets the other backend's 200.
    let (status, endpoint, _) = post_chat(&c, &base, "m").await;
    assert_eq!(
        (status, endpoint.as_str()),
        (200, "b"),
        "the 429 was retried on b"
    );
    assert_eq!(chat_count(&a), 1, "a answered the 429");
    let handle = d.app.tree.published.table().get("a").unwrap().clone();
    assert!(handle.parked(tokio::time::Instant::now()), "a is parked");
    // The backend is fine again at once; only the park keeps traffic away.
    a.update(|c| {
        c.fault = Fault::None;
        c.retry_after = None;
    });

    let served_b = Arc::new(AtomicUsize::new(0));
    let back_after_ms = Arc::new(AtomicU64::new(0));
    wait_until(Duration::from_secs(6), "a gets traffic again", || {
        let (c, base, served_b, back_after_ms) = (
            c.clone(),
            base.clone(),
            served_b.clone(),
            back_after_ms.clone(),
        );
        async move {
            let (status, endpoint, body) = post_chat(&c, &base, "m").await;
            assert_eq!(
                status, 200,
                "every request succeeds during the park: {body}"
            );
            if endpoint == "a" {
                back_after_ms.store(sent.elapsed().as_millis() as u64, Ordering::Relaxed);
                true
            } else {
                served_b.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    })
    .await;
    let park = Duration::from_millis(back_after_ms.load(Ordering::Relaxed));
    eprintln!("parked for {park:?}");
    assert!(
        park >= Duration::from_millis(1500),
        "park ended after only {park:?}"
    );
    assert!(park <= Duration::from_secs(4), "park lasted {park:?}");
    assert!(
        served_b.load(Ordering::Relaxed) > 5,
        "b served during the park"
    );
    assert_eq!(
        chat_count(&a),
        2,
        "a got nothing between the 429 and the end of the park"
    );
    d.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_goes_offline_without_failed_requests_and_heals_on_the_same_port() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let a_addr = a.addr();
    let health = "health: {unhealthy_threshold: 2, healthy_threshold: 2, max_backoff: 400ms}";
    let eps = [
        ep("a", &a.url(), 100, "200ms", "500ms", health),
        ep("b", &b.url(), 100, "200ms", "500ms", health),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: round-robin}")).await;
    wait_routable(&d, &["a", "b"], true).await;
    let (c, base) = (client(), d.url());

    let load = SteadyLoad::start(&base, 4, 3000);
    wait_until(
        Duration::from_secs(5),
        "both backends serve the load",
        || async { chat_count(&a) >= 10 && chat_count(&b) >= 10 },
    )
    .await;

    a.stop().await;
    let killed = Instant::now();
    wait_field(&d, "a", "status", "offline", Duration::from_secs(3)).await;
    let to_offline = killed.elapsed();
    eprintln!("offline {to_offline:?} after the kill");
    // check_interval 200 ms + check_timeout 500 ms, plus a margin for a loaded machine.
    assert!(
        to_offline <= Duration::from_millis(1200),
        "offline only after {to_offline:?}"
    );
    let e = entry(&c, &base, "a").await;
    assert!(
        e["last_error"].as_str().is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    assert!(e["consecutive_failures"].as_u64().unwrap_or(0) >= 2, "{e}");
    let served_at_kill = load.served();
    wait_until(
        Duration::from_secs(5),
        "load keeps being served by b",
        || async { load.served() >= served_at_kill + 50 },
    )
    .await;

    // Same port again: healthy after `healthy_threshold` (2) good probes; max_backoff 400 ms
    // (+20% jitter) to the first, 200 ms to the second.
    let a2 = MockServer::start_at(
        a_addr,
        MockConfig {
            name: "a".into(),
            models: vec!["m".into()],
            ..MockConfig::default()
        },
    )
    .await
    .expect("restart on the same port");
    let restarted = Instant::now();
    wait_field(&d, "a", "status", "healthy", Duration::from_secs(5)).await;
    let to_healthy = restarted.elapsed();
    assert!(
        to_healthy <= Duration::from_secs(2),
        "healthy only after {to_healthy:?}"
    );
    let probes = health_count(&a2);
    eprintln!("healthy {to_healthy:?} after the restart, {probes} probes");
    assert!(
        (2..=3).contains(&probes),
        "healthy after {probes} probes, expected healthy_threshold = 2"
    );
    wait_until(Duration::from_secs(5), "traffic returns to a", || async {
        chat_count(&a2) >= 10
    })
    .await;

    assert_eq!(
        load.finish().await,
        0,
        "requests failed while a backend died"
    );
    d.stop().await;
    a2.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_spills_to_the_lower_tier() {
    let hi = paced_mock("hi", 20, 100).await;
    let lo = paced_mock("lo", 20, 100).await;
    let eps = [
        ep(
            "hi",
            &hi.url(),
            100,
            "200ms",
            "500ms",
            "max_concurrency: 2, queue_size: 2, queue_timeout: 10s",
        ),
        ep("lo", &lo.url(), 50, "200ms", "500ms", ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["hi", "lo"], true).await;
    let (c, base) = (client(), d.url());
    let h = d.app.tree.published.table().get("hi").unwrap().clone();

    let mut tasks = Vec::new();
    for (i, (in_flight, queued)) in [(1, 0), (2, 0), (2, 1), (2, 2)].into_iter().enumerate() {
        tasks.push(tokio::spawn(chat_request(c.clone(), base.clone(), true)));
        let h = h.clone();
        wait_until(
            Duration::from_secs(3),
            &format!("request {} in flight/queued", i + 1),
            || {
                let h = h.clone();
                async move { h.in_flight() == in_flight && h.queued() == queued }
            },
        )
        .await;
    }
    let e = entry(&c, &base, "hi").await;
    assert_eq!(
        (e["active_connections"].as_u64(), e["queued"].as_u64()),
        (Some(2), Some(2)),
        "{e}"
    );

    // The fifth finds both slots and the queue full: the lower tier serves it at once.
    let fifth = chat_request(c.clone(), base.clone(), true).await;
    assert_eq!(
        (fifth.status, fifth.endpoint.as_str()),
        (200, "lo"),
        "{fifth:?}"
    );
    assert!(
        fifth.headers_after < Duration::from_millis(1000),
        "{fifth:?}"
    );
    assert!(fifth.body.contains("[DONE]"));

    for (i, t) in tasks.into_iter().enumerate() {
        let s = t.await.unwrap();
        assert_eq!(
            (s.status, s.endpoint.as_str()),
            (200, "hi"),
            "request {}: {s:?}",
            i + 1
        );
        assert!(
            s.body.contains("tok19") && s.body.contains("[DONE]"),
            "request {}: {}",
            i + 1,
            s.body
        );
        if i >= 2 {
            // Queued until one of the first two (~2 s streams) finished.
            assert!(
                s.headers_after >= Duration::from_millis(1200),
                "request {} did not wait: {s:?}",
                i + 1
            );
        }
    }
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
    d.stop().await;
    hi.stop().await;
    lo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lower_tier_queue_timeout_and_full_queue_get_503_with_retry_after() {
    let m = paced_mock("hi", 20, 100).await;
    let eps = [ep(
        "hi",
        &m.url(),
        100,
        "200ms",
        "500ms",
        "max_concurrency: 2, queue_size: 2, queue_timeout: 500ms",
    )];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["hi"], true).await;
    let (c, base) = (client(), d.url());
    let h = d.app.tree.published.table().get("hi").unwrap().clone();

    let mut tasks = Vec::new();
    for (i, (in_flight, queued)) in [(1, 0), (2, 0), (2, 1), (2, 2)].into_iter().enumerate() {
        tasks.push(tokio::spawn(chat_request(c.clone(), base.clone(), true)));
        let h = h.clone();
        wait_until(
            Duration::from_secs(3),
            &format!("request {} in flight/queued", i + 1),
            || {
                let h = h.clone();
                async move { h.in_flight() == in_flight && h.queued() == queued }
            },
        )
        .await;
    }
    // Queue full: 503 at once.
    let full = chat_request(c.clone(), base.clone(), false).await;
    assert!(
        !tasks[2].is_finished() && !tasks[3].is_finished(),
        "the queue stayed full while the fifth request was answered"
    );
    assert_eq!(full.status, 503, "{full:?}");
    assert!(
        full.headers_after < Duration::from_millis(250),
        "not at once: {full:?}"
    );
    assert_eq!(full.retry_after.as_deref(), Some("1"), "{full:?}");
    let v: Value = serde_json::from_str(&full.body).unwrap();
    assert_eq!(v["error"]["code"], "at_capacity");

    let mut tasks = tasks.into_iter();
    for i in 1..=2 {
        let s = tasks.next().unwrap().await.unwrap();
        assert_eq!(
            (s.status, s.endpoint.as_str()),
            (200, "hi"),
            "request {i}: {s:?}"
        );
        assert!(s.body.contains("[DONE]"));
    }
    for i in 3..=4 {
        // Queued: 503 after queue_timeout (500 ms), long before a slot frees up (~2 s).
        let s = tasks.next().unwrap().await.unwrap();
        assert_eq!(s.status, 503, "request {i}: {s:?}");
        assert!(
            s.headers_after >= Duration::from_millis(450)
                && s.headers_after < Duration::from_millis(1500),
            "request {i} waited {:?}",
            s.headers_after
        );
        assert_eq!(s.retry_after.as_deref(), Some("1"), "request {i}: {s:?}");
    }
    assert_eq!(
        m.stats().by_path.get(CHAT).copied(),
        Some(2),
        "only two requests reached the backend"
    );
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_probe_delays_neither_other_probes_nor_its_actor() {
    let hung = mock("hung", &["m"]).await;
    let fast = mock("fast", &["m"]).await;
    let health = "health: {unhealthy_threshold: 2, healthy_threshold: 2, max_backoff: 1s}";
    let eps = [
        ep("hung", &hung.url(), 100, "200ms", "300ms", health),
        ep("fast", &fast.url(), 50, "200ms", "500ms", health),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["hung", "fast"], true).await;
    let (c, base) = (client(), d.url());
    let actor = d
        .app
        .tree
        .backend_actor("hung")
        .await
        .expect("hung's actor");

    hung.update(|c| c.health_delay_ms = 600_000);
    let started = Instant::now();
    let fast_probes_before = health_count(&fast);
    let mut offline_after = None;
    let mut last_fast_check = String::new();
    let mut fast_changes: Vec<Duration> = Vec::new();
    let mut slowest_call = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(2500) {
        let v = endpoints_status(&c, &base).await;
        let find = |n: &str| {
            v["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap()
        };
        let (h, f) = (find("hung"), find("fast"));
        if offline_after.is_none() && h["status"] == "offline" {
            offline_after = Some(started.elapsed());
        }
        let at = f["health_check_at"].as_str().unwrap_or("").to_string();
        if at != last_fast_check {
            last_fast_check = at;
            fast_changes.push(started.elapsed());
        }
        // The hung backend's actor still answers at once.
        let t = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_millis(100),
            actor.call(BackendMsg::GetHandle, Some(Duration::from_millis(100))),
        )
        .await;
        let took = t.elapsed();
        slowest_call = slowest_call.max(took);
        match got {
            Ok(Ok(ractor::rpc::CallResult::Success(handle))) => assert_eq!(handle.name(), "hung"),
            other => panic!(
                "hung's actor did not answer within 100 ms: {:?}",
                other.map(|r| r.is_ok())
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest_call < Duration::from_millis(100),
        "slowest actor call {slowest_call:?}"
    );

    // Offline after two probe timeouts (unhealthy_threshold 2 × check_timeout 300 ms).
    let offline_after = offline_after.expect("hung backend marked offline");
    assert!(
        offline_after >= Duration::from_millis(600),
        "offline after {offline_after:?}"
    );
    assert!(
        offline_after <= Duration::from_millis(1800),
        "offline after {offline_after:?}"
    );
    let h = entry(&c, &base, "hung").await;
    assert_eq!(h["status"], "offline");
    assert!(
        h["last_error"].as_str().is_some_and(|s| !s.is_empty()),
        "{h}"
    );

    // The other backend's probes kept their 200 ms rhythm the whole time.
    let gaps: Vec<Duration> = fast_changes.windows(2).map(|w| w[1] - w[0]).collect();
    let max_gap = gaps.iter().copied().max().unwrap_or_default();
    eprintln!("hung offline after {offline_after:?}; fast probed {} times, max gap {max_gap:?}; slowest actor call {slowest_call:?}", fast_changes.len());
    assert!(
        fast_changes.len() >= 8,
        "fast probed only {} times: {fast_changes:?}",
        fast_changes.len()
    );
    assert!(
        max_gap <= Duration::from_millis(500),
        "fast's probes stalled for {max_gap:?}"
    );
    assert!(health_count(&fast) - fast_probes_before >= 8);
    assert_eq!(entry(&c, &base, "fast").await["status"], "healthy");
    let (status, endpoint, _) = post_chat(&c, &base, "m").await;
    assert_eq!((status, endpoint.as_str()), (200, "fast"));
    d.stop().await;
    hung.stop().await;
    fast.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_have_ollas_fields_etag_304_and_gzip() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m", "n"]).await;
    // A long probe interval so the absolute probe times (part of the ETag, as in Olla) do not
    // move between two GETs.
    let eps = [
        ep("a", &a.url(), 100, "5s", "1s", ""),
        ep("b", &b.url(), 50, "5s", "1s", ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["a", "b"], true).await;
    let (c, base) = (client(), d.url());
    let (status, endpoint, _) = post_chat(&c, &base, "m").await;
    assert_eq!((status, endpoint.as_str()), (200, "a"));

    let url = format!("{base}/internal/status/endpoints");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().get("content-encoding").is_none());
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""), "weak ETag: {etag}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["total_count"].as_u64(),
            v["healthy_count"].as_u64(),
            v["routable_count"].as_u64()
        ),
        (Some(2), Some(2), Some(2)),
        "{v}"
    );
    assert!(v["timestamp"].is_string());
    let eps = v["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    for e in eps {
        for key in [
            "id",
            "name",
            "url",
            "type",
            "status",
            "priority",
            "model_count",
            "request_count",
            "success_rate",
            "min_latency_ms",
            "max_latency_ms",
            "active_connections",
            "health_check_at",
            "next_check_at",
            "health_check",
            "circuit_breaker",
            "queued",
            "consecutive_failures",
        ] {
            assert!(e.get(key).is_some(), "endpoint entry lacks {key}: {e}");
        }
        let id = e["id"].as_str().unwrap();
        assert!(
            !id.is_empty() && id.chars().all(|ch| ch.is_ascii_alphanumeric()),
            "{id}"
        );
        assert_eq!(e["type"], "vllm");
        assert_eq!(e["status"], "healthy");
        assert_eq!(e["circuit_breaker"], "closed");
        assert_eq!(e["active_connections"], 0);
        assert!(e["health_check_at"].as_str().unwrap().ends_with('Z'));
    }
    // Priority order, highest first.
    let (ea, eb) = (&eps[0], &eps[1]);
    assert_eq!(
        (ea["name"].as_str(), eb["name"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(ea["url"], a.url());
    assert_eq!(
        (ea["priority"].as_i64(), eb["priority"].as_i64()),
        (Some(100), Some(50))
    );
    assert_eq!(
        (ea["model_count"].as_u64(), eb["model_count"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (ea["request_count"].as_u64(), eb["request_count"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(ea["success_rate"], "100%");
    assert_eq!(eb["success_rate"], "N/A");
    assert!(ea["max_latency_ms"].as_u64().unwrap() >= ea["min_latency_ms"].as_u64().unwrap());
    assert_ne!(ea["id"], eb["id"]);

    // Same data again: 304 with no body. A probe could land between two GETs (it moves the
    // absolute probe times); then the ETag must have changed, so try again.
    for path in ["/internal/status/endpoints", "/internal/status"] {
        let mut got_304 = false;
        for _ in 0..3 {
            let r = c.get(format!("{base}{path}")).send().await.unwrap();
            let etag = r.headers()["etag"].to_str().unwrap().to_string();
            let r = c
                .get(format!("{base}{path}"))
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap();
            let (status, new_etag) = (
                r.status(),
                r.headers()["etag"].to_str().unwrap().to_string(),
            );
            let body = r.bytes().await.unwrap();
            if status == 304 {
                assert!(body.is_empty(), "304 with a body on {path}");
                assert_eq!(new_etag, etag);
                got_304 = true;
                break;
            }
            assert_eq!(status, 200, "{path}");
            assert_ne!(new_etag, etag, "{path}: a 200 to a matching If-None-Match");
        }
        assert!(got_304, "no 304 from {path}");
        let r = c
            .get(format!("{base}{path}"))
            .header("if-none-match", "W/\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{path}: a stale validator gets the full body"
        );
    }

    // gzip on request, for bodies of 256 bytes or more. reqwest here has no gzip feature: the
    // raw bytes arrive.
    let r = c
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    let raw = r.bytes().await.unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut json).unwrap();
    assert!(json.len() >= 256);
    let unzipped: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(unzipped["total_count"], 2);

    let r = c
        .get(format!("{base}/internal/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["system"]["endpoints_up"], "2/2", "{s}");
    assert_eq!(s["system"]["status"], "healthy", "{s}");
    assert_eq!(s["proxy"]["balancer"], "priority");
    assert_eq!(s["endpoints"].as_array().map(Vec::len), Some(2));
    let r = c
        .get(format!("{base}/internal/status"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(&r.bytes().await.unwrap()[..2], &[0x1f, 0x8b]);
    d.stop().await;

    // A body under 256 bytes is sent as is, even when gzip is accepted.
    let empty = daemon(&config(&[], "")).await;
    let r = c
        .get(format!("{}/internal/status/endpoints", empty.url()))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    let body = r.bytes().await.unwrap();
    assert!(body.len() < 256);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["total_count"], 0);
    empty.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_status_fails_over_before_the_first_byte_and_passes_through_when_alone() {
    let (a, b, d) = primary_and_fallback("").await;
    let (c, base) = (client(), d.url());
    a.update(|c| c.fault = Fault::Error { status: 503 });
    a.reset_stats();
    for i in 1..=3 {
        let (status, endpoint, body) = post_chat(&c, &base, "m").await;
        assert_eq!(
            (status, endpoint.as_str()),
            (200, "b"),
            "request {i}: {body}"
        );
        assert!(body.contains("chat.completion"), "{body}");
    }
    assert_eq!(chat_count(&a), 3, "each request tried a first");
    assert_eq!(chat_count(&b), 3);
    d.stop().await;

    // Alone: nothing to fail over to, so the upstream 503 passes through unchanged.
    let eps = [ep("a", &a.url(), 100, "200ms", "500ms", "")];
    let d = daemon(&config(&eps, "")).await;
    wait_routable(&d, &["a"], true).await;
    let (_, direct) = direct_body(&a, "m").await;
    let r = c
        .post(format!("{}/olla/proxy{CHAT}", d.url()))
        .header("content-type", "application/json")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-olla-endpoint"], "a");
    assert_eq!(
        r.text().await.unwrap(),
        direct,
        "the upstream 503 body passes through"
    );
    d.stop().await;
    a.stop().await;
    b.stop().await;
}
