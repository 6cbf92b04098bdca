//! Load balancing over real sockets: weighted shares, strict round-robin, least-connections
//! (open streams and fast failures), priority tiers, sticky sessions (session header, prefix
//! hash, repin when the backend dies, stats), warm-first over Ollama mocks (warm wins, overflow
//! to the cold one, spreading after an unload) and cache-aware routing (interleaved
//! conversations, a shared system prompt), with the routing headers on every response.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A reply's status, serving endpoint and headers.
struct Reply {
    status: u16,
    endpoint: String,
    headers: reqwest::header::HeaderMap,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// POSTs a chat body through `/olla/proxy`, with extra headers; reads the whole body.
async fn send(c: &reqwest::Client, base: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut r = c
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let _ = r.bytes().await;
    Reply {
        status,
        endpoint: headers
            .get("x-olla-endpoint")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        headers,
    }
}

fn openai_ep(name: &str, url: &str, priority: i64, extra: &str) -> String {
    endpoint(name, url, "openai", priority, extra)
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    c.get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_give_three_quarters_of_4000_requests() {
    let heavy = mock("heavy", &["m"]).await;
    let light = mock("light", &["m"]).await;
    let eps = [
        openai_ep("heavy", &heavy.url(), 100, "weight: 3"),
        openai_ep("light", &light.url(), 100, "weight: 1"),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: weighted}")).await;
    wait_routable(&d, &["heavy", "light"], true).await;
    let (c, base) = (client(), d.url());
    let body = chat("m", false);
    let first = send(&c, &base, &body, &[]).await;
    assert_eq!(first.header("x-olla-routing-balancer"), "weighted");
    assert_eq!(first.header("x-olla-routing-pick"), "weighted");
    assert_eq!(first.header("x-olla-routing-reason"), "model_found");
    // 4,000 requests from 8 concurrent clients.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, base, body) = (c.clone(), base.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut heavy = 0usize;
            for _ in 0..500 {
                let r = send(&c, &base, &body, &[]).await;
                assert_eq!(r.status, 200);
                heavy += usize::from(r.endpoint == "heavy");
            }
            heavy
        }));
    }
    let mut on_heavy = 0;
    for t in tasks {
        on_heavy += t.await.unwrap();
    }
    let share = on_heavy as f64 / 4000.0;
    println!(
        "weighted 3:1 -> heavy served {on_heavy}/4000 ({:.1}%)",
        share * 100.0
    );
    assert!((0.72..=0.78).contains(&share), "{share}");
    d.stop().await;
    heavy.stop().await;
    light.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_three_equal_backends_rotates_exactly() {
    let ms = [
        mock("a", &["m"]).await,
        mock("b", &["m"]).await,
        mock("c", &["m"]).await,
    ];
    let eps: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(&ms)
        .map(|(n, m)| openai_ep(n, &m.url(), 100, ""))
        .collect();
    let d = daemon(&config(&eps, "proxy: {load_balancer: round-robin}")).await;
    wait_routable(&d, &["a", "b", "c"], true).await;
    let (c, base) = (client(), d.url());
    let mut seq = Vec::new();
    for _ in 0..30 {
        let r = send(&c, &base, &chat("m", false), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-olla-routing-pick"), "round_robin");
        seq.push(r.endpoint);
    }
    for w in seq.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "{seq:?}");
    }
    assert!(
        seq.windows(4).all(|w| w[0] == w[3]),
        "a strict cycle: {seq:?}"
    );
    d.stop().await;
    for m in ms {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_open_streams_and_a_backend_that_fails_fast() {
    let slow = paced_mock("slow", 40, 100).await;
    let other = paced_mock("other", 40, 100).await;
    let eps = [
        openai_ep("slow", &slow.url(), 100, ""),
        openai_ep("other", &other.url(), 100, ""),
    ];
    let extra = "proxy: {load_balancer: least-connections, circuit_breaker: {enabled: false}}";
    let d = daemon(&config(&eps, extra)).await;
    wait_routable(&d, &["slow", "other"], true).await;
    let (c, base) = (client(), d.url());
    // Open one stream and keep it open: the next request goes to the other backend.
    let held = c
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    let busy = held.headers()["x-olla-endpoint"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        let r = send(&c, &base, &chat("m", false), &[]).await;
        assert_ne!(r.endpoint, busy, "fewer open streams wins");
        assert_eq!(r.header("x-olla-routing-pick"), "least_connections");
    }
    // The idle backend now fails instantly with a 500: it must not attract the traffic.
    let idle = if busy == "slow" { &other } else { &slow };
    idle.set_config(MockConfig {
        fault: Fault::Error { status: 500 },
        ..idle.config()
    });
    let mut to_failing = 0;
    for _ in 0..10 {
        let r = send(&c, &base, &chat("m", false), &[]).await;
        to_failing += usize::from(r.endpoint != busy);
    }
    println!("fast-failing backend got {to_failing}/10 while the other held a stream");
    assert!(to_failing <= 3, "{to_failing}");
    drop(held);
    d.stop().await;
    slow.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_are_never_crossed_while_the_top_tier_has_capacity() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let low = mock("low", &["m"]).await;
    let eps = [
        openai_ep("a", &a.url(), 100, ""),
        openai_ep("b", &b.url(), 100, ""),
        openai_ep("low", &low.url(), 50, "weight: 100"),
    ];
    for lb in [
        "priority",
        "round-robin",
        "least-connections",
        "weighted",
        "warm-first",
        "cache-aware",
    ] {
        let d = daemon(&config(&eps, &format!("proxy: {{load_balancer: {lb}}}"))).await;
        wait_routable(&d, &["a", "b", "low"], true).await;
        let (c, base) = (client(), d.url());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..40 {
            let body =
                json!({"model": "m", "messages": [{"role": "user", "content": format!("q{i}")}]});
            let r = send(&c, &base, &body.to_string(), &[]).await;
            assert_eq!(r.status, 200);
            *seen.entry(r.endpoint).or_default() += 1;
        }
        assert_eq!(seen.get("low"), None, "{lb}: {seen:?}");
        assert!(seen.len() == 2 || lb == "priority", "{lb}: {seen:?}");
        d.stop().await;
    }
    a.stop().await;
    b.stop().await;
    low.stop().await;
}

fn sticky_config(eps: &[String], sources: &str) -> String {
    config(
        eps,
        &format!("proxy:\n  load_balancer: round-robin\n  sticky_sessions: {{enabled: true, key_sources: [{sources}]}}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_session_header_pins_and_repins_when_the_backend_dies() {
    let ms = [
        mock("a", &["m"]).await,
        mock("b", &["m"]).await,
        mock("c", &["m"]).await,
    ];
    let eps: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(&ms)
        .map(|(n, m)| openai_ep(n, &m.url(), 100, ""))
        .collect();
    let d = daemon(&sticky_config(&eps, "session_header, prefix_hash")).await;
    wait_routable(&d, &["a", "b", "c"], true).await;
    let (c, base) = (client(), d.url());
    let sid = [("x-olla-session-id", "chat-42")];
    let first = send(&c, &base, &chat("m", false), &sid).await;
    assert_eq!(first.header("x-olla-sticky-session"), "miss");
    assert_eq!(first.header("x-olla-sticky-key-source"), "session_header");
    assert_eq!(first.header("x-olla-session-id"), "chat-42");
    let pinned = first.endpoint.clone();
    for _ in 0..100 {
        let r = send(&c, &base, &chat("m", false), &sid).await;
        assert_eq!(r.endpoint, pinned);
        assert_eq!(r.header("x-olla-sticky-session"), "hit");
        assert_eq!(r.header("x-olla-routing-pick"), "sticky_hit");
    }
    let stats = get_json(&c, &format!("{base}/internal/stats/sticky")).await;
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["active_sessions"], 1);
    assert_eq!(stats["insertions"], 1);
    assert_eq!(stats["hits"], 100);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["max_sessions"], 10000);
    assert_eq!(stats["idle_ttl_seconds"], 600);

    // The pinned backend dies: its pins are purged once it is down, and the session repins.
    let i = ["a", "b", "c"].iter().position(|n| *n == pinned).unwrap();
    let [m0, m1, m2] = ms;
    let mut alive = vec![m0, m1, m2];
    let dead = alive.remove(i);
    dead.stop().await;
    let app = d.app.clone();
    let p = pinned.clone();
    wait_until(
        Duration::from_secs(10),
        "the pinned backend is down",
        || {
            let app = app.clone();
            let p = p.clone();
            async move {
                !app.tree
                    .published
                    .table()
                    .get(&p)
                    .unwrap()
                    .is_routable(tokio::time::Instant::now())
            }
        },
    )
    .await;
    let r = send(&c, &base, &chat("m", false), &sid).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.endpoint, pinned);
    assert!(
        ["repin", "miss"].contains(&r.header("x-olla-sticky-session")),
        "{}",
        r.header("x-olla-sticky-session")
    );
    let moved = r.endpoint.clone();
    let again = send(&c, &base, &chat("m", false), &sid).await;
    assert_eq!(
        (
            again.endpoint.as_str(),
            again.header("x-olla-sticky-session")
        ),
        (moved.as_str(), "hit")
    );
    let stats = get_json(&c, &format!("{base}/internal/stats/sticky")).await;
    assert!(
        stats["evictions"].as_u64().unwrap() >= 1,
        "purge counted: {stats}"
    );
    d.stop().await;
    for m in alive {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_repins_a_live_pin_to_a_backend_that_left_routing() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        openai_ep("a", &a.url(), 100, ""),
        openai_ep("b", &b.url(), 100, ""),
    ];
    let d = daemon(&sticky_config(&eps, "session_header")).await;
    wait_routable(&d, &["a", "b"], true).await;
    let (c, base) = (client(), d.url());
    let sid = [("x-olla-session-id", "s")];
    let pinned = send(&c, &base, &chat("m", false), &sid).await.endpoint;
    // Disabled through the router: the pin is still in the table, the request repins.
    let change = olla_actors::RoutingChange {
        enabled: Some(false),
        ..Default::default()
    };
    assert!(d.app.tree.route(&pinned, change).await.unwrap().is_some());
    let r = send(&c, &base, &chat("m", false), &sid).await;
    assert_ne!(r.endpoint, pinned);
    assert_eq!(r.header("x-olla-sticky-session"), "repin");
    d.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_prefix_hash_pins_without_a_header_and_rejections_carry_the_headers() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        openai_ep("a", &a.url(), 100, ""),
        openai_ep("b", &b.url(), 100, ""),
    ];
    let d = daemon(&sticky_config(&eps, "session_header, prefix_hash")).await;
    wait_routable(&d, &["a", "b"], true).await;
    let (c, base) = (client(), d.url());
    let conv = |n: u32| {
        json!({"model": "m", "messages": [{"role": "user", "content": format!("conversation {n}")}]})
            .to_string()
    };
    for n in 0..4 {
        let first = send(&c, &base, &conv(n), &[]).await;
        assert_eq!(first.header("x-olla-sticky-key-source"), "prefix_hash");
        assert_eq!(
            first.header("x-olla-session-id"),
            "",
            "echoed only for the header source"
        );
        for _ in 0..10 {
            let r = send(&c, &base, &conv(n), &[]).await;
            assert_eq!(r.endpoint, first.endpoint, "conversation {n}");
            assert_eq!(r.header("x-olla-sticky-session"), "hit");
        }
    }
    // No key at all (no messages, no header, no auth): disabled.
    let r = send(&c, &base, r#"{"model":"m","input":"x"}"#, &[]).await;
    assert_eq!(r.header("x-olla-sticky-session"), "disabled");
    assert_eq!(r.header("x-olla-sticky-key-source"), "");
    // Rejections carry them too.
    let r = send(
        &c,
        &base,
        &chat("nope", false),
        &[("x-olla-session-id", "z")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-olla-sticky-session"), "miss");
    assert_eq!(r.header("x-olla-sticky-key-source"), "session_header");
    assert_eq!(r.header("x-olla-routing-reason"), "model_not_found");
    d.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_stats_say_disabled_when_off() {
    let a = mock("a", &["m"]).await;
    let d = daemon(&config(&[openai_ep("a", &a.url(), 100, "")], "")).await;
    wait_routable(&d, &["a"], true).await;
    let c = client();
    let v = get_json(&c, &format!("{}/internal/stats/sticky", d.url())).await;
    assert_eq!(v, json!({"enabled": false}));
    let r = send(
        &c,
        &d.url(),
        &chat("m", false),
        &[("x-olla-session-id", "s")],
    )
    .await;
    assert_eq!(
        r.header("x-olla-sticky-session"),
        "",
        "no sticky headers when off"
    );
    assert_eq!(r.header("x-olla-routing-balancer"), "least-connections");
    d.stop().await;
    a.stop().await;
}

/// An Ollama mock serving "m" that streams slowly, reporting `loaded` as resident.
async fn ollama_mock(name: &str, loaded: &[&str]) -> MockServer {
    MockServer::start(MockConfig {
        name: name.into(),
        models: vec!["m".into()],
        tokens: 30,
        token_delay_ms: 100,
        loaded: Some(loaded.iter().map(|s| s.to_string()).collect()),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

async fn loaded_models(c: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let v = get_json(c, &format!("{base}/internal/status/endpoints")).await;
    v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e.get("loaded_models").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_first_prefers_the_warm_backend_overflows_then_spreads_after_unload() {
    let warm = ollama_mock("warm", &["m"]).await;
    let cold = ollama_mock("cold", &[]).await;
    let eps = [
        endpoint("warm", &warm.url(), "ollama", 100, "max_concurrency: 2"),
        endpoint("cold", &cold.url(), "ollama", 100, ""),
    ];
    let extra = "proxy:\n  load_balancer: warm-first\n  warm_first: {check_interval: 200ms}\n";
    let d = daemon(&config(&eps, extra)).await;
    wait_routable(&d, &["warm", "cold"], true).await;
    let (c, base) = (client(), d.url());
    wait_until(Duration::from_secs(10), "loaded models known", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            loaded_models(&c, &base, "warm").await == Some(json!(["m"]))
                && loaded_models(&c, &base, "cold").await == Some(json!([]))
        }
    })
    .await;
    let quick =
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    for _ in 0..10 {
        let r = send(&c, &base, &quick, &[]).await;
        assert_eq!((r.status, r.endpoint.as_str()), (200, "warm"));
        assert_eq!(r.header("x-olla-routing-pick"), "warm");
        assert_eq!(r.header("x-olla-routing-balancer"), "warm-first");
    }
    // Saturate the warm one (two slow streams at its max_concurrency): the cold one takes the
    // overflow at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(format!("{base}/olla/proxy/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat("m", true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-olla-endpoint"], "warm");
        held.push(r);
    }
    let r = send(&c, &base, &quick, &[]).await;
    assert_eq!((r.status, r.endpoint.as_str()), (200, "cold"));
    drop(held);
    let h = d.app.tree.published.table().get("warm").unwrap().clone();
    wait_until(Duration::from_secs(5), "held streams released", || {
        let h = h.clone();
        async move { h.in_flight() == 0 }
    })
    .await;
    // The model is unloaded: nothing is warm, traffic spreads over both.
    warm.set_config(MockConfig {
        loaded: Some(Vec::new()),
        ..warm.config()
    });
    wait_until(Duration::from_secs(10), "unload seen", || {
        let (c, base) = (c.clone(), base.clone());
        async move { loaded_models(&c, &base, "warm").await == Some(json!([])) }
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let r = send(&c, &base, &quick, &[]).await;
        *seen.entry(r.endpoint).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    d.stop().await;
    warm.stop().await;
    cold.stop().await;
}

/// A conversation's next request body: the messages so far.
fn conversation(system: &str, turns: &[String]) -> String {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": t}));
    }
    json!({"model": "m", "messages": messages}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aware_keeps_interleaved_conversations_apart_and_a_shared_prompt_spreads() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        openai_ep("a", &a.url(), 100, ""),
        openai_ep("b", &b.url(), 100, ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: cache-aware}")).await;
    wait_routable(&d, &["a", "b"], true).await;
    let (c, base) = (client(), d.url());

    // Two conversations, interleaved turn by turn, each with its own system prompt.
    let mut turns: [Vec<String>; 2] = [vec!["hello from A".into()], vec!["hello from B".into()]];
    let systems = ["You are assistant A.", "You are assistant B."];
    let mut homes: [Option<String>; 2] = [None, None];
    for turn in 0..5 {
        for (i, system) in systems.iter().enumerate() {
            let r = send(&c, &base, &conversation(system, &turns[i]), &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-olla-routing-balancer"), "cache-aware");
            match &homes[i] {
                None => homes[i] = Some(r.endpoint.clone()),
                Some(h) => {
                    assert_eq!(&r.endpoint, h, "conversation {i} turn {turn}");
                    assert_eq!(r.header("x-olla-routing-pick"), "prefix_match");
                }
            }
            turns[i].push(format!("answer {turn}"));
            turns[i].push(format!("question {turn}"));
        }
    }
    assert_ne!(homes[0], homes[1], "each conversation on its own backend");

    // Eight conversations behind one long system prompt: not all on one backend, and each
    // keeps its backend on its next turn.
    let system = "You are a meticulous assistant. Follow the policy below. ".repeat(60);
    let mut first: Vec<String> = Vec::new();
    for n in 0..8 {
        let r = send(
            &c,
            &base,
            &conversation(&system, &[format!("question {n}")]),
            &[],
        )
        .await;
        first.push(r.endpoint);
    }
    let on_a = first.iter().filter(|e| *e == "a").count();
    println!("shared system prompt: {on_a}/8 conversations on a");
    assert!(
        (1..8).contains(&on_a),
        "collapsed onto one backend: {first:?}"
    );
    for (n, home) in first.iter().enumerate() {
        let t = [format!("question {n}"), "an answer".into(), "more".into()];
        let r = send(&c, &base, &conversation(&system, &t), &[]).await;
        assert_eq!(&r.endpoint, home, "conversation {n} second turn");
    }
    d.stop().await;
    a.stop().await;
    b.stop().await;
}
