//! Foundation behaviour over real sockets: unbuffered streaming, priority routing and failover
//! under load, upstream cancellation on client disconnect, bad inputs, headers, h2c, graceful
//! shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a streaming chat for model `m` through `d`.
async fn post_stream(d: &Daemon) -> reqwest::Response {
    client()
        .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
        .header("content-type", "application/json")
        .body(chat("m", true))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_the_backend_emits_them() {
    let m = paced_mock("s", 10, 50).await;
    let d = daemon(&config(&[endpoint("s", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["s"], true).await;
    let started = Instant::now();
    let mut r = post_stream(&d).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        let s = String::from_utf8_lossy(&chunk).to_string();
        if s.contains("tok") {
            arrivals.push(started.elapsed());
        }
        text.push_str(&s);
    }
    assert!(text.contains("tok9") && text.contains("[DONE]"), "{text}");
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    // The backend needs ~450 ms between the first and last token: a buffering proxy would
    // deliver everything at once at the end.
    assert!(last >= Duration::from_millis(400), "stream took {last:?}");
    assert!(
        first + Duration::from_millis(300) < last,
        "first {first:?}, last {last:?}"
    );
    assert!(arrivals.len() >= 5, "events were coalesced: {arrivals:?}");
    d.stop().await;
}

/// Streams a chat through a daemon in front of one paced mock (`tokens` tokens `delay_ms`
/// apart) whose endpoint has `timeouts`; returns the body text (an error mid-body ends it) and
/// how long the whole exchange took.
async fn paced_stream(tokens: usize, delay_ms: u64, timeouts: &str) -> (String, Duration) {
    let m = paced_mock("p", tokens, delay_ms).await;
    let d = daemon(&config(
        &[endpoint("p", &m.url(), "openai", 100, timeouts)],
        "",
    ))
    .await;
    wait_routable(&d, &["p"], true).await;
    let started = Instant::now();
    let mut r = post_stream(&d).await;
    let mut text = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let took = started.elapsed();
    d.stop().await;
    (text, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_limit_counts_from_the_last_event_and_the_total_limit_cuts_mid_stream() {
    // Events 400 ms apart under a 1 s idle limit: the stream lasts well past the limit, but
    // never goes quiet for it, so it is never cut.
    let (text, took) = paced_stream(6, 400, "timeouts: {idle: 1s}").await;
    assert!(took >= Duration::from_millis(1900), "stream took {took:?}");
    assert!(text.contains("tok5") && text.contains("[DONE]"), "{text}");

    // Events 2.5 s apart: cut about a second after the stream goes quiet.
    let (text, took) = paced_stream(3, 2500, "timeouts: {idle: 1s}").await;
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(took < Duration::from_millis(2400), "cut after {took:?}");
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");

    // Events 400 ms apart under a 1 s total limit: cut at the limit, mid-stream.
    let (text, took) = paced_stream(6, 400, "timeouts: {total: 1s, idle: 10s}").await;
    assert!(text.contains("tok0") && !text.contains("[DONE]"), "{text}");
    assert!(took < Duration::from_millis(1800), "cut after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_routing_fails_over_under_load_and_returns() {
    let high = mock("high", &["m"]).await;
    let low = mock("low", &["m"]).await;
    let high_addr = high.addr();
    let eps = [
        endpoint("high", &high.url(), "openai", 100, ""),
        endpoint("low", &low.url(), "openai", 50, ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["high", "low"], true).await;
    let c = client();
    for _ in 0..20 {
        let (status, ep, _) = post_chat(&c, &d.url(), "m").await;
        assert_eq!((status, ep.as_str()), (200, "high"));
    }

    // Steady load from 4 workers while the preferred backend dies.
    let load = SteadyLoad::start(&d.url(), 4, 5000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    high.stop().await;
    wait_until(Duration::from_secs(5), "traffic moves to low", || async {
        load.served_by("low") > 50
    })
    .await;
    // Bring it back on the same port: traffic returns once probes see it healthy.
    let _high = MockServer::start_at(
        high_addr,
        MockConfig {
            name: "high".into(),
            models: vec!["m".into()],
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    let base = d.url();
    wait_until(Duration::from_secs(10), "traffic returns to high", || {
        let (c, base) = (c.clone(), base.clone());
        async move { post_chat(&c, &base, "m").await.1 == "high" }
    })
    .await;
    assert_eq!(load.finish().await, 0, "requests failed during failover");
    drop(low);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_mid_stream_and_before_first_byte() {
    let m = paced_mock("s", 200, 50).await;
    let d = daemon(&config(&[endpoint("s", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["s"], true).await;
    let c = client();

    // Mid-stream: read one chunk, then drop the response.
    m.reset_stats();
    let mut r = c
        .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
        .header("content-type", "application/json")
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    r.chunk().await.unwrap();
    let dropped_at = Instant::now();
    drop(r);
    wait_until(
        Duration::from_millis(500),
        "mock sees the stream cancelled",
        || async { m.stats().cancelled == 1 },
    )
    .await;
    assert!(dropped_at.elapsed() < Duration::from_millis(500));
    wait_until(Duration::from_secs(2), "in-flight released", || async {
        d.app.tree.published.table().get("s").unwrap().in_flight() == 0
    })
    .await;

    // Before the first byte: the backend takes 10 s to answer; the client gives up.
    m.update(|c| c.ttft_ms = 10_000);
    m.reset_stats();
    let req = c
        .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
        .header("content-type", "application/json")
        .body(chat("m", false))
        .send();
    let task = tokio::spawn(req);
    wait_until(
        Duration::from_secs(2),
        "request reached the mock",
        || async { m.stats().in_flight == 1 },
    )
    .await;
    task.abort();
    let aborted_at = Instant::now();
    wait_until(
        Duration::from_millis(500),
        "mock sees the waiting request cancelled",
        || async { m.stats().cancelled == 1 },
    )
    .await;
    assert!(aborted_at.elapsed() < Duration::from_millis(500));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_the_daemon_keeps_serving() {
    let m = mock("s", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("s", &m.url(), "openai", 100, "")],
        "server: {host: 127.0.0.1, request_limits: {max_body_size: 1024, max_header_size: 2048}}",
    ))
    .await;
    wait_routable(&d, &["s"], true).await;
    let c = client();
    let url = format!("{}/olla/proxy/v1/chat/completions", d.url());

    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"model\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_request");

    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(2000));
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "request_too_large"
    );

    let r = c
        .post(&url)
        .header("x-big", "y".repeat(3000))
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    let r = c
        .get(format!("{}/no/such/route", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "route_not_found"
    );

    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(chat("unknown-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-olla-routing-reason"], "model_not_found");

    let (status, ep, _) = post_chat(&c, &d.url(), "m").await;
    assert_eq!(
        (status, ep.as_str()),
        (200, "s"),
        "still serving after bad requests"
    );

    // No backend left: 503 with a JSON error; then it comes back and serves again.
    let addr = m.addr();
    m.stop().await;
    let base = d.url();
    wait_until(
        Duration::from_secs(5),
        "503 when the only backend is gone",
        || {
            let (c, base) = (c.clone(), base.clone());
            async move { post_chat(&c, &base, "m").await.0 == 503 }
        },
    )
    .await;
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("x-olla-request-id"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available"),
        "{v}"
    );
    let _m = MockServer::start_at(
        addr,
        MockConfig {
            name: "s".into(),
            models: vec!["m".into()],
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "serves again", || {
        let (c, base) = (c.clone(), base.clone());
        async move { post_chat(&c, &base, "m").await.0 == 200 }
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_cleaned_and_added_both_ways() {
    let m = mock("s", &["m"]).await;
    let eps = [endpoint(
        "s",
        &m.url(),
        "openai",
        100,
        "headers: {X-Tenant-ID: acme}",
    )];
    let d = daemon(&config(&eps, "")).await;
    wait_routable(&d, &["s"], true).await;
    let r = client()
        .post(format!("{}/olla/proxy/v1/chat/completions?x=1", d.url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .header("cookie", "session=1")
        .header("x-api-key", "k")
        .header("x-request-id", "my-request-42")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-olla-request-id"], "my-request-42");
    assert_eq!(h["x-olla-endpoint"], "s");
    assert_eq!(h["x-olla-backend-type"], "openai-compatible");
    assert_eq!(h["x-olla-model"], "m");
    assert!(h["x-olla-response-time"].to_str().unwrap().ends_with("ms"));
    assert!(h["x-served-by"].to_str().unwrap().starts_with("Olla/"));
    assert!(h["via"].to_str().unwrap().contains("olla/"));
    let rec = m.last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.query.as_deref(), Some("x=1"));
    let get = |n: &str| {
        rec.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("authorization"), None);
    assert_eq!(get("cookie"), None);
    assert_eq!(get("x-api-key"), None);
    assert_eq!(get("x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
    assert!(get("x-forwarded-host").is_some());
    assert!(get("via").is_some_and(|v| v.contains("olla/")));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_and_connection_errors_move_to_the_next_backend() {
    let slow = mock("slow", &["m"]).await;
    slow.update(|c| c.fault = Fault::Hang);
    let ok = mock("ok", &["m"]).await;
    let eps = [
        endpoint(
            "slow",
            &slow.url(),
            "openai",
            100,
            "timeouts: {first_byte: 300ms}",
        ),
        endpoint("ok", &ok.url(), "openai", 50, ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["slow", "ok"], true).await;
    let started = Instant::now();
    let (status, ep, _) = post_chat(&client(), &d.url(), "m").await;
    assert_eq!((status, ep.as_str()), (200, "ok"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    wait_until(
        Duration::from_secs(2),
        "hung upstream request cancelled",
        || async { slow.stats().cancelled >= 1 },
    )
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served_with_the_same_olla_headers_as_http_1() {
    let m = mock("s", &["m"]).await;
    let d = daemon(&config(&[endpoint("s", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["s"], true).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // olla's own headers (HTTP/1 writes them as head lines, HTTP/2 into the header map), by
    // name: every value but the timing, and how many times each name came.
    let own = |r: &reqwest::Response| {
        let mut seen: Vec<(String, String, usize)> = r
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-olla-") || ["via", "x-served-by"].contains(k))
            .map(|k| {
                let values = r.headers().get_all(k).iter().count();
                let value = if k == "x-olla-response-time" {
                    "..ms".to_string()
                } else {
                    r.headers()[k].to_str().unwrap().to_string()
                };
                (k.to_string(), value, values)
            })
            .collect();
        seen.sort();
        seen
    };
    let mut answers = Vec::new();
    for (c, version) in [
        (&h2, reqwest::Version::HTTP_2),
        (&client(), reqwest::Version::HTTP_11),
    ] {
        let r = c
            .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
            .header("content-type", "application/json")
            .header("x-request-id", "same-id")
            .body(chat("m", true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        answers.push(own(&r));
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }
    let names: Vec<&str> = answers[0].iter().map(|(k, _, _)| k.as_str()).collect();
    for want in [
        "via",
        "x-olla-backend-type",
        "x-olla-endpoint",
        "x-olla-model",
        "x-olla-request-id",
        "x-olla-response-time",
        "x-olla-routing-decision",
        "x-served-by",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing over HTTP/2: {names:?}"
        );
    }
    assert!(
        answers[0].iter().all(|(_, _, n)| *n == 1),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[0], answers[1], "HTTP/2 against HTTP/1.1");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let m = paced_mock("s", 10, 50).await;
    let d = daemon(&config(&[endpoint("s", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["s"], true).await;
    let url = format!("{}/olla/proxy/v1/chat/completions", d.url());
    let base = d.url();
    let mut r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let stopping = tokio::spawn(d.stop());
    // New connections are refused while the old stream still completes.
    wait_until(Duration::from_secs(2), "listener closed", || {
        let base = base.clone();
        async move {
            client()
                .get(format!("{base}/internal/health"))
                .send()
                .await
                .is_err()
        }
    })
    .await;
    let mut rest = String::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.contains("[DONE]"), "stream completed: {rest}");
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_has_sent_nothing_does_not_hold_shutdown() {
    let d = daemon(&config(&[], "")).await;
    let addr = d.url().trim_start_matches("http://").to_string();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The connection is accepted and waiting for its first bytes (read_header_timeout 10 s).
    let c = client();
    let r = c
        .get(format!("{}/internal/health", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(c);
    // Well under the 5 s shutdown_timeout the test config sets.
    tokio::time::timeout(Duration::from_secs(3), d.stop())
        .await
        .expect("shutdown waited on a connection that never sent a request");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_shutdown_not_waited_for() {
    let d = daemon(&config(&[], "")).await;
    let addr = d.url().trim_start_matches("http://").to_string();
    // One request on a raw connection, which then stays open and idle (keep-alive).
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /internal/health HTTP/1.1\r\nHost: olla\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = conn.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // Well under the 5 s shutdown_timeout the test config sets: the idle connection is woken
    // and closed, not waited for.
    tokio::time::timeout(Duration::from_secs(3), d.stop())
        .await
        .expect("shutdown waited on an idle keep-alive connection");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_version_routes() {
    let d = daemon(&config(&[], "")).await;
    let c = client();
    let v: serde_json::Value = c
        .get(format!("{}/internal/health", d.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({"status": "healthy"}));
    let r = c.get(format!("{}/version", d.url())).send().await.unwrap();
    assert!(r.headers().contains_key("x-olla-request-id"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["name"], "Olla");
    assert!(v["version"].as_str().unwrap().starts_with('v'));
    // No endpoints configured at all: a proxied request gets a clear 503.
    let (status, _, body) = post_chat(&c, &d.url(), "m").await;
    assert_eq!(status, 503, "{body}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_after_its_first_bytes_is_not_retried_and_ends_incomplete() {
    // The backend sends headers and part of the body, then drops the connection: bytes are
    // committed, so olla must not retry; the client sees an incomplete body, never a hang.
    let broken = mock("broken", &["m"]).await;
    broken.update(|c| c.fault = Fault::DropMidStream { after_tokens: 2 });
    let ok = mock("ok", &["m"]).await;
    let eps = [
        endpoint("broken", &broken.url(), "openai", 100, ""),
        endpoint("ok", &ok.url(), "openai", 50, ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: priority}")).await;
    wait_routable(&d, &["broken", "ok"], true).await;
    for stream in [false, true] {
        let r = client()
            .post(format!("{}/olla/proxy/v1/chat/completions", d.url()))
            .header("content-type", "application/json")
            .body(chat("m", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-olla-endpoint"], "broken");
        let body = tokio::time::timeout(Duration::from_secs(5), r.bytes())
            .await
            .expect("no hang");
        if stream {
            // The SSE stream may end with olla's error event before the abort.
            match body {
                Err(_) => {}
                Ok(b) => assert!(
                    String::from_utf8_lossy(&b).contains("stream_interrupted"),
                    "{b:?}"
                ),
            }
        } else {
            assert!(body.is_err(), "a truncated body must not look complete");
        }
    }
    assert_eq!(
        ok.stats().by_path.get("/v1/chat/completions"),
        None,
        "never retried"
    );
    d.stop().await;
}
