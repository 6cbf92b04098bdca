//! CORS over real sockets (Olla's `server.cors`): preflight answered 204 before routing, rate
//! limits and keys; allowed origins get the allow and expose headers, others are served
//! without them; a bare OPTIONS is routed; bad settings are startup errors.

mod common;

use common::*;

async fn cors_daemon(be: &MockServer) -> Daemon {
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  cors: {enabled: true, allowed_origins: [\"https://app.example.com\", \"http://*.local.test\"], allow_credentials: true}\n  rate_limits: {per_ip_requests_per_minute: 60, burst_size: 1}\nauth:\n  keys: [{name: web, key: sk-web-000001}]\n",
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    d
}

fn h<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_is_answered_before_keys_and_rate_limits() {
    let be = mock("a", &["m"]).await;
    let d = cors_daemon(&be).await;
    let url = format!("http://{}/olla/proxy/v1/chat/completions", d.addr);
    // More preflights than the rate limit allows, none with a key: all 204.
    for _ in 0..3 {
        let r = client()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            h(&r, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(h(&r, "access-control-allow-methods"), Some("POST"));
        assert_eq!(
            h(&r, "access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(h(&r, "access-control-allow-credentials"), Some("true"));
        assert_eq!(h(&r, "access-control-max-age"), Some("300"));
        assert_eq!(
            h(&r, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert!(r.headers().contains_key("x-olla-request-id"));
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example.org")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(h(&r, "access-control-allow-origin").is_none());
    assert!(h(&r, "vary").is_some());
    assert_eq!(chats(&be), 0);
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_requests_carry_cors_headers_only_for_allowed_origins() {
    let be = mock("a", &["m"]).await;
    let d = cors_daemon(&be).await;
    let url = format!("http://{}/olla/proxy/v1/chat/completions", d.addr);
    let send = |origin: &'static str| {
        client()
            .post(&url)
            .header("origin", origin)
            .header("x-api-key", "sk-web-000001")
            .header("content-type", "application/json")
            .body(chat("m", false))
            .send()
    };
    let r = send("http://dev.local.test").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h(&r, "access-control-allow-origin"),
        Some("http://dev.local.test")
    );
    assert_eq!(h(&r, "access-control-allow-credentials"), Some("true"));
    assert!(h(&r, "access-control-expose-headers")
        .unwrap()
        .contains("X-Olla-Request-Id"));
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    // Over the rate limit: the 429 still carries CORS headers, so a browser can read it.
    let r = send("https://app.example.com").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        h(&r, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // A disallowed origin is served, without CORS headers.
    let d2 = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  cors: {enabled: true, allowed_origins: [\"https://app.example.com\"]}\n",
    ))
    .await;
    wait_routable(&d2, &["a"], true).await;
    let r = client()
        .post(format!("http://{}/olla/proxy/v1/chat/completions", d2.addr))
        .header("origin", "https://evil.example.org")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(h(&r, "access-control-allow-origin").is_none());
    assert_eq!(h(&r, "vary"), Some("Origin"));
    // Without CORS enabled nothing is added.
    d2.stop().await;
    d.stop().await;
    be.stop().await;
}

#[test]
fn bad_cors_settings_are_startup_errors() {
    for (yaml, want) in [
        (
            "server: {cors: {enabled: true, allowed_origins: []}}\n",
            "allowed_origins",
        ),
        ("server: {cors: {enabled: true, max_age: -5}}\n", "max_age"),
        (
            "server: {cors: {enabled: true, allow_credentials: true}}\n",
            "allow_credentials",
        ),
    ] {
        let cfg = olla::config::parse(yaml, &|_| None).unwrap();
        let e = olla::config::resolve(&cfg).unwrap_err();
        assert!(e.iter().any(|m| m.contains(want)), "{yaml}: {e:?}");
    }
}
