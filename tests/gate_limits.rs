//! Rate limits over real sockets: Olla's per-IP and global buckets on the proxy routes, the
//! `X-RateLimit-*` headers and `Retry-After`, the 429 as a JSON error with the request id,
//! forwarded client addresses believed only from a trusted proxy, model lists and
//! `/internal/*` left alone, and the `security` counters in `/internal/status` and metrics text.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const CHAT: &str = "/olla/proxy/v1/chat/completions";

async fn limited(rate_limits: &str) -> (MockServer, Daemon) {
    let be = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        &format!("server:\n  host: 127.0.0.1\n  port: 0\n  rate_limits: {rate_limits}\n"),
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    (be, d)
}

async fn send(d: &Daemon, xff: Option<&str>) -> reqwest::Response {
    let mut r = client()
        .post(format!("http://{}{CHAT}", d.addr))
        .header("content-type", "application/json")
        .body(chat("m", false));
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    r.send().await.expect("olla answers")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_answers_429_with_retry_after_and_ratelimit_headers_then_refills() {
    let (be, d) = limited("{per_ip_requests_per_minute: 60, burst_size: 3}").await;
    for want_remaining in ["59", "58", "57"] {
        let r = send(&d, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("60"));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(want_remaining));
        let reset: u64 = header(&r, "x-ratelimit-reset").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 58..=now + 61).contains(&reset), "{reset} vs {now}");
    }
    let r = send(&d, None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("60"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("57"));
    assert!(header(&r, "x-ratelimit-reset").is_some());
    let rid = header(&r, "x-olla-request-id")
        .expect("request id")
        .to_string();
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(!rid.is_empty());
    assert_eq!(chats(&be), 3, "the refused request never reached a backend");
    // The bucket refills at one a second.
    wait_until(Duration::from_secs(5), "a token back", || async {
        send(&d, None).await.status() == 200
    })
    .await;
    // Model lists and /internal are not limited (Olla limits only the proxy catch-alls).
    for path in [
        "/olla/proxy/v1/models",
        "/olla/models",
        "/internal/health",
        "/version",
    ] {
        for _ in 0..5 {
            let r = client()
                .get(format!("http://{}{path}", d.addr))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert!(r.headers().get("x-ratelimit-limit").is_none(), "{path}");
        }
    }
    let status: Value = client()
        .get(format!("http://{}/internal/status", d.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sec = &status["security"];
    assert!(
        sec["violations"]["rate_limits"].as_u64().unwrap() >= 1,
        "{sec}"
    );
    assert_eq!(sec["blocked_ips"], 1, "{sec}");
    assert_eq!(sec["status"], "normal");
    let mut text = String::new();
    d.app.gate.stats.render_prometheus(&mut text);
    assert!(text.contains("olla_security_blocked_ips 1\n"), "{text}");
    assert!(text.contains("# TYPE olla_security_rate_limit_violations_total counter"));
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    // The peer (127.0.0.1) is trusted: each X-Forwarded-For address has its own bucket.
    let (be, d) = limited(
        "{per_ip_requests_per_minute: 60, burst_size: 1, trust_proxy_headers: true, trusted_proxy_cidrs: [127.0.0.0/8]}",
    )
    .await;
    assert_eq!(send(&d, Some("203.0.113.1")).await.status(), 200);
    assert_eq!(send(&d, Some("203.0.113.1")).await.status(), 429);
    assert_eq!(send(&d, Some("203.0.113.2, 10.0.0.1")).await.status(), 200);
    d.stop().await;
    be.stop().await;
    // Not trusted: the header is ignored and every request is the peer's.
    let (be, d) = limited(
        "{per_ip_requests_per_minute: 60, burst_size: 1, trust_proxy_headers: true, trusted_proxy_cidrs: [10.0.0.0/8]}",
    )
    .await;
    assert_eq!(send(&d, Some("203.0.113.1")).await.status(), 200);
    assert_eq!(send(&d, Some("203.0.113.2")).await.status(), 429);
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_bucket_refuses_every_client_once_empty() {
    let (be, d) = limited(
        "{global_requests_per_minute: 60, per_ip_requests_per_minute: 6000, burst_size: 2, trust_proxy_headers: true}",
    )
    .await;
    assert_eq!(send(&d, Some("198.51.100.1")).await.status(), 200);
    assert_eq!(send(&d, Some("198.51.100.2")).await.status(), 200);
    let r = send(&d, Some("198.51.100.3")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("60"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("6000"));
    assert_eq!(chats(&be), 2);
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_are_counted_and_refused_before_reading_the_body() {
    let be = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  request_limits: {max_body_size: 1000, max_header_size: 4096}\n",
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let r = client()
        .post(format!("http://{}{CHAT}", d.addr))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().contains_key("x-olla-request-id"));
    let r = client()
        .get(format!("http://{}/olla/models", d.addr))
        .header("x-filler", "y".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        d.app.gate.stats.status_json()["violations"]["size_limits"],
        2
    );
    assert_eq!(chats(&be), 0);
    d.stop().await;
    be.stop().await;
}
