//! The admin endpoint over real sockets: authentication, every command and its errors, drain
//! and removal with streams in flight, config reload under load, and chaos (crashing a backend
//! actor repeatedly under load through fault injection).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "t0ken-for-tests";

fn admin_block(extra: &str) -> String {
    format!("admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}{extra}}}\n")
}

/// An admin request with the right token; returns (status, JSON body).
async fn admin(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_as(d, method, path, body, Some(&format!("Bearer {TOKEN}"))).await
}

async fn admin_as(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (u16, Value) {
    let url = format!("{}{path}", d.admin_url().expect("admin enabled"));
    let mut req = client().request(method.parse().unwrap(), url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.expect("admin answers");
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "every admin answer is JSON ({method} {path})"
    );
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body: {e}: {text}"));
    (status, v)
}

async fn raw_admin(d: &Daemon, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = client()
        .request(
            method.parse().unwrap(),
            format!("{}{path}", d.admin_url().unwrap()),
        )
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn backend<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
}

/// A daemon from YAML that also knows its config (as `olla -c FILE` does), for `/admin/config`.
async fn daemon_with_origin(yaml: &str) -> Daemon {
    let d = daemon(yaml).await;
    d.set_origin(olla::config::parse(yaml, &|_| None).unwrap(), None);
    d
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

/// Starts a streaming chat for `model`; returns the response after its first chunk.
async fn open_stream(base: &str, model: &str) -> reqwest::Response {
    let mut r = client()
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(model, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    r
}

/// Reads a stream to its end; true when it completed with `[DONE]`.
async fn finish_stream(mut r: reqwest::Response) -> bool {
    let mut rest = String::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => rest.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    rest.contains("[DONE]")
}

async fn streaming_mock(name: &str, models: &[&str], tokens: usize, delay_ms: u64) -> MockServer {
    MockServer::start(MockConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        tokens,
        token_delay_ms: delay_ms,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_every_answer_is_json() {
    let m = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &m.url(), "openai", 100, "")],
        &admin_block(""),
    ))
    .await;
    for (auth, why) in [
        (None, "missing"),
        (Some("Bearer wrong".to_string()), "invalid"),
        (Some(format!("Basic {TOKEN}")), "scheme"),
        (Some(TOKEN.to_string()), "scheme"),
    ] {
        let (status, v) = admin_as(&d, "GET", "/admin/backends", None, auth.as_deref()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(message(&v).contains(why), "{auth:?}: {v}");
        assert!(!v.to_string().contains(TOKEN), "the token is never echoed");
    }
    let (status, v) = admin(&d, "GET", "/admin/backends", None).await;
    assert_eq!(status, 200);
    assert!(backend(&v, "a").is_some(), "{v}");
    let (status, v) = admin(&d, "GET", "/admin/nope", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = admin(&d, "PUT", "/admin/backends", None).await;
    assert_eq!(status, 405);
    // Authentication comes before routing.
    let (status, _) = admin_as(&d, "GET", "/admin/nope", None, None).await;
    assert_eq!(status, 401);
    // The admin routes are never served on the proxy port.
    let r = client()
        .get(format!("{}/admin/backends", d.url()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_commands_and_their_errors() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m", "only-b"]).await;
    let d = daemon_with_origin(&config(
        &[endpoint("a", &a.url(), "openai", 100, "")],
        &admin_block(""),
    ))
    .await;
    wait_routable(&d, &["a"], true).await;

    // Add: 201 with the backend, then it serves its models within seconds.
    let add = json!({"name": "b", "url": b.url(), "type": "openai", "priority": 50,
                     "check_interval": "200ms", "check_timeout": "500ms"});
    let (status, v) = admin(&d, "POST", "/admin/backends", Some(add.clone())).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["priority"].as_i64()),
        (Some("b"), Some(50))
    );
    for field in [
        "url",
        "type",
        "weight",
        "enabled",
        "draining",
        "status",
        "circuit_breaker",
        "in_flight",
        "queued",
        "models",
        "actor_id",
        "restarts",
        "last_failure",
    ] {
        assert!(v.get(field).is_some(), "field {field} in {v}");
    }
    wait_routable(&d, &["b"], true).await;
    let (status, _, _) = post_chat(&client(), &d.url(), "only-b").await;
    assert_eq!(status, 200);
    // 409 on a duplicate; 400 naming the field or value otherwise.
    let (status, v) = admin(&d, "POST", "/admin/backends", Some(add)).await;
    assert_eq!(status, 409, "{v}");
    for (body, needle) in [
        (
            json!({"name": "c", "url": "http://h:1", "type": "openai", "colour": 1}),
            "colour",
        ),
        (
            json!({"name": "c", "url": "ftp://h", "type": "openai"}),
            "ftp",
        ),
        (
            json!({"name": "c", "url": "http://h:1", "type": "olama"}),
            "olama",
        ),
        (
            json!({"name": "c", "url": "http://h:1", "type": "openai", "check_interval": "soon"}),
            "check_interval",
        ),
        (
            json!({"name": "", "url": "http://h:1", "type": "openai"}),
            "name",
        ),
        (
            json!({"name": "c", "url": "http://h:1", "type": "openai", "priority": "high"}),
            "priority",
        ),
    ] {
        let (status, v) = admin(&d, "POST", "/admin/backends", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {v}");
    }
    let (status, v) = raw_admin(&d, "POST", "/admin/backends", "{not json").await;
    assert_eq!(status, 400, "{v}");

    // Patch: effective for the next request.
    let (status, v) = admin(
        &d,
        "PATCH",
        "/admin/backends/b",
        Some(
            json!({"priority": 200, "weight": 3, "max_concurrency": 4, "timeouts": {"idle": "5s"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["priority"].as_i64(), v["weight"].as_u64()),
        (Some(200), Some(3))
    );
    assert_eq!(v["max_concurrency"].as_u64(), Some(4));
    wait_routable(&d, &["b"], false).await;
    let (_, ep, _) = post_chat(&client(), &d.url(), "m").await;
    assert_eq!(ep, "b", "the higher priority now wins");
    for (body, needle) in [
        (json!({"weight": 0}), "weight"),
        (json!({"speed": 1}), "speed"),
        (json!({"timeouts": {"idle": "0s"}}), "idle"),
        (json!({"timeouts": {"idle": "x"}}), "timeouts.idle"),
    ] {
        let (status, v) = admin(&d, "PATCH", "/admin/backends/b", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {v}");
    }

    // Disable / enable, probe, discover, restart.
    let (status, v) = admin(&d, "POST", "/admin/backends/b/disable", None).await;
    assert_eq!((status, v["enabled"].as_bool()), (200, Some(false)));
    let (_, ep, _) = post_chat(&client(), &d.url(), "m").await;
    assert_eq!(ep, "a", "a disabled backend gets no request");
    let (status, v) = admin(&d, "POST", "/admin/backends/b/enable", None).await;
    assert_eq!((status, v["enabled"].as_bool()), (200, Some(true)));
    let (status, v) = admin(&d, "POST", "/admin/backends/b/probe", None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin(&d, "POST", "/admin/backends/b/discover", None).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "only-b"),
        "{v}"
    );
    let before = v["actor_id"].clone();
    let (status, v) = admin(&d, "POST", "/admin/backends/b/restart", None).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["actor_id"], before, "restart gives a new actor");
    assert!(v["restarts"].as_u64().unwrap() >= 1);
    // Crash is off without fault injection.
    let (status, _) = admin(&d, "POST", "/admin/backends/b/crash", None).await;
    assert_eq!(status, 404);

    // Unknown names: 404 on every per-backend route.
    for (method, path) in [
        ("GET", "/admin/backends/zz"),
        ("PATCH", "/admin/backends/zz"),
        ("DELETE", "/admin/backends/zz"),
        ("POST", "/admin/backends/zz/drain"),
        ("POST", "/admin/backends/zz/enable"),
        ("POST", "/admin/backends/zz/disable"),
        ("POST", "/admin/backends/zz/probe"),
        ("POST", "/admin/backends/zz/discover"),
        ("POST", "/admin/backends/zz/restart"),
    ] {
        let body = (method == "PATCH").then(|| json!({"weight": 2}));
        let (status, v) = admin(&d, method, path, body).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
    }

    // Config (secrets redacted) and the supervision tree.
    let (status, v) = admin(&d, "GET", "/admin/config", None).await;
    assert_eq!(status, 200);
    assert!(!v.to_string().contains(TOKEN), "{v}");
    let names: Vec<&str> = v["discovery"]["static"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["a", "b"],
        "the effective config has the added backend"
    );
    let (status, v) = admin(&d, "GET", "/admin/actors", None).await;
    assert_eq!(status, 200);
    let children = v["root"]["children"].as_array().unwrap();
    let names: Vec<&str> = children.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, vec!["registry", "router", "backends"], "{v}");
    let backends = children[2]["children"].as_array().unwrap();
    assert!(backends
        .iter()
        .any(|c| c["name"] == "backend:b" && c["state"] == "running"));

    // Remove: gone from the list and from routing.
    let (status, v) = admin(&d, "DELETE", "/admin/backends/b", None).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = admin(&d, "GET", "/admin/backends", None).await;
    assert!(backend(&v, "b").is_none(), "{v}");
    let (status, _, _) = post_chat(&client(), &d.url(), "only-b").await;
    assert_eq!(status, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_the_stream_finish_sends_nothing_new_and_enable_restores() {
    let a = mock("a", &["m"]).await;
    let s = streaming_mock("s", &["m", "slow"], 20, 100).await;
    let d = daemon(&config(
        &[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("s", &s.url(), "openai", 200, ""),
        ],
        &admin_block(""),
    ))
    .await;
    wait_routable(&d, &["a", "s"], true).await;
    let stream = open_stream(&d.url(), "slow").await;
    let (status, v) = admin(&d, "POST", "/admin/backends/s/drain", None).await;
    assert_eq!((status, v["draining"].as_bool()), (200, Some(true)));
    assert_eq!(v["in_flight"].as_u64(), Some(1));
    let served_before = chats(&s);
    for _ in 0..10 {
        let (status, ep, _) = post_chat(&client(), &d.url(), "m").await;
        assert_eq!((status, ep.as_str()), (200, "a"));
    }
    assert_eq!(chats(&s), served_before, "no new request reached s");
    assert!(
        finish_stream(stream).await,
        "the in-flight stream completed"
    );
    // Still unroutable after its last stream, until enable.
    let (_, v) = admin(&d, "GET", "/admin/backends/s", None).await;
    assert_eq!(
        (v["draining"].as_bool(), v["in_flight"].as_u64()),
        (Some(true), Some(0))
    );
    let (status, _, _) = post_chat(&client(), &d.url(), "slow").await;
    assert_eq!(status, 503);
    let (status, _) = admin(&d, "POST", "/admin/backends/s/enable", None).await;
    assert_eq!(status, 200);
    let (status, ep, _) = post_chat(&client(), &d.url(), "m").await;
    assert_eq!((status, ep.as_str()), (200, "s"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_a_timeout_removes_a_backend_despite_a_long_stream() {
    let s = streaming_mock("s", &["slow"], 200, 100).await;
    let d = daemon(&config(
        &[endpoint("s", &s.url(), "openai", 100, "")],
        &admin_block(""),
    ))
    .await;
    wait_routable(&d, &["s"], true).await;
    let stream = open_stream(&d.url(), "slow").await; // ~20 s
    let started = std::time::Instant::now();
    let (status, v) = admin(&d, "DELETE", "/admin/backends/s?timeout=1s", None).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["drained"].as_bool(), Some(false), "{v}");
    assert!(took < Duration::from_secs(5), "removed in {took:?}");
    let (_, v) = admin(&d, "GET", "/admin/backends", None).await;
    assert!(backend(&v, "s").is_none());
    assert!(
        d.app.tree.backend_actor("s").await.is_none(),
        "actor stopped"
    );
    // The stream still running at the timeout is cut, not left to run its 20 s.
    let ended = tokio::time::timeout(Duration::from_secs(5), finish_stream(stream)).await;
    assert_eq!(
        ended,
        Ok(false),
        "the stream ends incomplete soon after the removal"
    );
    let (status, v) = admin(&d, "DELETE", "/admin/backends/s?timeout=nope", None).await;
    assert_eq!(status, 400, "{v}");
    d.stop().await;
}

fn temp_config(tag: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "olla-admin-{tag}-{}-{}.yaml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts a daemon from a config file (so `reload` can re-read it).
async fn daemon_from_file(path: &std::path::Path) -> Daemon {
    let (_, cfg, rt) = olla::config::load(Some(path)).expect("config loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = Daemon::start(rt, listener).await.expect("daemon starts");
    d.set_origin(cfg, Some(path.to_path_buf()));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_backends_under_load_without_failing_a_request() {
    let a = mock("a", &["m"]).await;
    let b = streaming_mock("b", &["m", "b-slow"], 30, 100).await;
    let c = mock("c", &["m", "c-only"]).await;
    let before = config(
        &[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("b", &b.url(), "openai", 100, ""),
        ],
        &admin_block(""),
    );
    let path = temp_config("reload", &before);
    let d = daemon_from_file(&path).await;
    wait_routable(&d, &["a", "b"], true).await;
    let load = SteadyLoad::start(&d.url(), 3, 20_000);
    let streams: Vec<_> = futures_streams(&d.url(), "b-slow", 2).await;
    wait_until(Duration::from_secs(5), "load flowing", || async {
        load.served() > 20
    })
    .await;

    // An invalid file: 400 listing every problem, nothing changes.
    std::fs::write(
        &path,
        config(
            &[
                endpoint("a", "ftp://nowhere", "openai", 100, ""),
                endpoint("x", "http://h:1", "olama", 100, ""),
            ],
            &admin_block(""),
        ),
    )
    .unwrap();
    let (status, v) = admin(&d, "POST", "/admin/reload", None).await;
    assert_eq!(status, 400, "{v}");
    let errors = v["error"]["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "{v}");
    let (_, list) = admin(&d, "GET", "/admin/backends", None).await;
    assert!(backend(&list, "b").is_some() && backend(&list, "x").is_none());

    // Add c, remove b.
    let after = config(
        &[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("c", &c.url(), "openai", 100, ""),
        ],
        &admin_block(""),
    );
    std::fs::write(&path, after).unwrap();
    let (status, v) = admin(&d, "POST", "/admin/reload", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["added"], json!(["c"]));
    assert_eq!(v["removed"], json!(["b"]));
    let b_requests = chats(&b);
    // b stays listed, draining, while its streams run; nothing new reaches it.
    let (_, list) = admin(&d, "GET", "/admin/backends", None).await;
    let listed = backend(&list, "b").expect("b listed while draining");
    assert_eq!(listed["draining"].as_bool(), Some(true), "{listed}");
    wait_routable(&d, &["c"], true).await;
    let (status, ep, _) = post_chat(&client(), &d.url(), "c-only").await;
    assert_eq!((status, ep.as_str()), (200, "c"));
    for s in streams {
        assert!(
            finish_stream(s).await,
            "a stream on the removed backend was cut"
        );
    }
    assert_eq!(
        chats(&b),
        b_requests,
        "no request reached b after the reload"
    );
    let dd = &d;
    wait_until(
        Duration::from_secs(10),
        "b removed after its streams",
        || async move {
            let (_, list) = admin(dd, "GET", "/admin/backends", None).await;
            backend(&list, "b").is_none()
        },
    )
    .await;
    let served = load.served();
    wait_until(Duration::from_secs(5), "load continues", || async {
        load.served() > served + 20
    })
    .await;
    assert_eq!(
        load.finish().await,
        0,
        "no request failed during the reload"
    );
    let _ = std::fs::remove_file(&path);
    d.stop().await;
}

/// Opens `n` streams for `model`, each past its first chunk.
async fn futures_streams(base: &str, model: &str, n: usize) -> Vec<reqwest::Response> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(open_stream(base, model).await);
    }
    out
}

/// Backends a and b (equal priority) with fault injection on and the given supervision block;
/// returns once both are routable.
async fn faulty_pair(a: &MockServer, b: &MockServer, supervision: &str) -> Daemon {
    let d = daemon(&config(
        &[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("b", &b.url(), "openai", 100, ""),
        ],
        &format!(
            "supervision: {supervision}\n{}",
            admin_block(", fault_injection: true")
        ),
    ))
    .await;
    wait_routable(&d, &["a", "b"], true).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_crashes_under_load_fail_no_request_and_cut_no_stream() {
    let a = streaming_mock("a", &["m", "a-slow"], 60, 100).await;
    let b = mock("b", &["m"]).await;
    let d = faulty_pair(
        &a,
        &b,
        "{backend_max_restarts: 10, backend_restart_window: 1s}",
    )
    .await;
    let load = SteadyLoad::start(&d.url(), 3, 50_000);
    let stream = open_stream(&d.url(), "a-slow").await; // ~6 s on a
    let (_, first) = admin(&d, "GET", "/admin/backends/a", None).await;
    let mut last_id = first["actor_id"].clone();
    for i in 0..20 {
        let (status, v) = admin(&d, "POST", "/admin/backends/a/crash", None).await;
        assert_eq!(status, 202, "crash {i}: {v}");
        let dd = &d;
        let prev = last_id.clone();
        wait_until(Duration::from_secs(10), "a restarted", || {
            let prev = prev.clone();
            async move {
                let (_, v) = admin(dd, "GET", "/admin/backends/a", None).await;
                !v["actor_id"].is_null() && v["actor_id"] != prev
            }
        })
        .await;
        let (_, v) = admin(&d, "GET", "/admin/backends/a", None).await;
        last_id = v["actor_id"].clone();
    }
    assert_ne!(last_id, first["actor_id"]);
    let (_, tree) = admin(&d, "GET", "/admin/actors", None).await;
    let a_actor = tree["root"]["children"][2]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backend:a")
        .unwrap()
        .clone();
    assert!(a_actor["restarts"].as_u64().unwrap() >= 20, "{a_actor}");
    assert!(
        a_actor["last_failure"]
            .as_str()
            .unwrap_or("")
            .contains("fault injection"),
        "{a_actor}"
    );
    assert!(
        finish_stream(stream).await,
        "the stream on the crashed backend was not cut"
    );
    assert_eq!(
        load.finish().await,
        0,
        "no request failed during the crashes"
    );
    assert!(d.app.tree.is_running());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausting_the_budget_through_admin_crashes_quarantines_the_backend() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let d = faulty_pair(
        &a,
        &b,
        "{backend_max_restarts: 2, backend_restart_window: 60s, quarantine_backoff: 60s}",
    )
    .await;
    let dd = &d;
    let mut crashed = Value::Null;
    for _ in 0..3 {
        // Wait for a running actor other than the one just crashed.
        let prev = crashed.clone();
        wait_until(Duration::from_secs(5), "a running", || {
            let prev = prev.clone();
            async move {
                let (_, v) = admin(dd, "GET", "/admin/backends/a", None).await;
                !v["actor_id"].is_null() && v["actor_id"] != prev
            }
        })
        .await;
        let (status, v) = admin(&d, "POST", "/admin/backends/a/crash", None).await;
        assert_eq!(status, 202, "{v}");
        crashed = v["actor_id"].clone();
    }
    wait_until(Duration::from_secs(5), "a quarantined", || async move {
        let (_, v) = admin(dd, "GET", "/admin/backends/a", None).await;
        v["status"] == "failed" && v["actor_state"] == "quarantined"
    })
    .await;
    let (_, v) = admin(&d, "GET", "/admin/backends/a", None).await;
    assert!(v["quarantined_until"].is_string(), "{v}");
    // Commands that need the actor say so; `restart` ends the quarantine at once.
    let (status, _) = admin(&d, "POST", "/admin/backends/a/crash", None).await;
    assert_eq!(status, 409);
    for _ in 0..5 {
        let (status, ep, _) = post_chat(&client(), &d.url(), "m").await;
        assert_eq!((status, ep.as_str()), (200, "b"));
    }
    let (status, v) = admin(&d, "POST", "/admin/backends/a/restart", None).await;
    assert_eq!(status, 200, "{v}");
    wait_routable(&d, &["a"], false).await;
    d.stop().await;
}
