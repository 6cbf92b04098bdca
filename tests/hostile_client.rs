//! What a hostile client can make olla send to a backend, proved over real sockets: a raw-socket
//! fake backend records the exact request line, headers and body it receives, and a raw-socket
//! client sends request targets no HTTP library would (dot-segments, backslashes, odd escapes).
//! Each test is named after the behaviour it protects.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    client, config, daemon, endpoint, read_raw_request as read_request, wait_routable,
    RawRequest as Seen,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A scripted HTTP/1.1 backend on a raw socket: answers every request 200 with a model list
/// both Ollama (`models`) and OpenAI (`data`) parsers read, and records what it got.
struct FakeBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl FakeBackend {
    async fn start(models: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let data: Vec<Value> = models
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model"}))
            .collect();
        let tags: Vec<Value> = models
            .iter()
            .map(|m| serde_json::json!({"name": m, "model": m}))
            .collect();
        let reply = serde_json::json!({"object": "list", "data": data, "models": tags}).to_string();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (log, reply) = (log.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = read_request(&mut s, &mut buf).await {
                        log.lock().unwrap().push(req);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received other than health probes and model discovery.
    fn traffic(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method != "GET")
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Sends raw request bytes and returns (status, head, body); the connection is closed by the
/// request (`Connection: close`). Bounded in time.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("answer in time");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nhost: olla\r\nconnection: close\r\n\r\n")
}

fn post(target: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: olla\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn chat(model_key: &str, model: &str) -> String {
    format!(r#"{{"{model_key}":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

fn error_message(body: &str) -> String {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body: {e}: {body}"));
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error.message in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_backslashes_never_climb_out_of_the_base_path() {
    let be = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(
        &[endpoint("v", &be.url("/base/"), "vllm", 100, "")],
        "",
    ))
    .await;
    wait_routable(&d, &["v"], true).await;
    let body = chat("model", "m");
    for target in [
        "/olla/vllm/../../admin",
        "/olla/vllm/v1/../../admin",
        "/olla/vllm/%2e%2e/admin",
        "/olla/vllm/%2E%2E/%2e%2e/admin",
        "/olla/vllm/..%2fadmin",
        "/olla/vllm/..%2Fadmin",
        "/olla/vllm/x/..;y/../../admin",
        "/olla/proxy/../admin",
        "/olla/proxy/..\\admin",
        "/olla/vllm/\\..\\..\\admin",
    ] {
        let (status, _, resp) = raw(d.addr, &post(target, &body, "")).await;
        assert_eq!(status, 400, "{target}: {resp}");
        if !resp.is_empty() {
            error_message(&resp);
        }
    }
    // Inside the root, the path is resolved and forwarded in its one spelling.
    let (status, _, resp) = raw(
        d.addr,
        &post("/olla/vllm/tokenize/../v1//./completions", &body, ""),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let traffic = be.traffic();
    assert_eq!(traffic.len(), 1, "{traffic:?}");
    assert_eq!(traffic[0].target, "/base/v1/completions");
    for r in be.all() {
        assert!(
            r.target.starts_with("/base/") && !r.target.contains(".."),
            "escaped the base path: {}",
            r.target
        );
    }
    d.stop().await;
    be.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_management_is_refused_in_every_spelling_on_every_route() {
    let be = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(
        &[endpoint("o", &be.url(""), "ollama", 100, "")],
        "",
    ))
    .await;
    wait_routable(&d, &["o"], true).await;
    let body = r#"{"model":"m","name":"m"}"#;
    for target in [
        "/olla/ollama/api/pull",
        "/olla/proxy/api/pull",
        "/olla/openai/api/delete",
        "/olla/ollama/api/pu%6cl",
        "/olla/ollama/api/./pull",
        "/olla/ollama/api/PULL",
        "/olla/ollama/api/pull/",
        "/olla/ollama/api/delete;x",
        "/olla/ollama//api//push",
        "/olla/ollama/api/x/../create",
        "/olla/proxy/api/copy",
        "/olla/ollama/api/blobs/sha256:abc",
        "/olla/proxy/api/blobs/sha256:abc",
        "/olla/openai/API/Blobs/",
    ] {
        let (status, _, resp) = raw(d.addr, &post(target, body, "")).await;
        assert_eq!(status, 501, "{target}: {resp}");
        assert_eq!(
            error_message(&resp),
            "model management operations not supported by proxy",
            "{target}"
        );
    }
    let (status, _, resp) = raw(d.addr, &get("/olla/ollama/api/list")).await;
    assert_eq!(status, 501, "{resp}");
    assert_eq!(
        error_message(&resp),
        "running models list not supported in multi-instance proxy"
    );
    let (status, _, resp) = raw(d.addr, &post("/olla/ollama/api/Show/", body, "")).await;
    assert_eq!(status, 501, "{resp}");
    assert_eq!(
        error_message(&resp),
        "model show not supported in multi-instance proxy"
    );
    let leaked: Vec<String> = be
        .all()
        .into_iter()
        .map(|r| r.target.to_ascii_lowercase())
        .filter(|t| {
            [
                "pull", "push", "create", "copy", "delete", "blobs", "show", "list",
            ]
            .iter()
            .any(|w| t.contains(w))
        })
        .collect();
    assert!(leaked.is_empty(), "reached the backend: {leaked:?}");
    // Inference still goes through.
    let (status, _, resp) = raw(
        d.addr,
        &post("/olla/ollama/api/chat", &chat("model", "m"), ""),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    d.stop().await;
    be.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_and_forged_forwarding_headers_never_reach_a_backend() {
    let be = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(&[endpoint("v", &be.url(""), "vllm", 100, "")], "")).await;
    wait_routable(&d, &["v"], true).await;
    let listed = olla::proxy::headers::CREDENTIALS;
    for issue_named in ["api-key", "x-goog-api-key", "anthropic-api-key", "cookie"] {
        assert!(listed.contains(&issue_named), "{issue_named} is listed");
    }
    let mut extra: String = listed
        .iter()
        .map(|h| format!("{h}: client-secret-{h}\r\n"))
        .collect();
    extra.push_str("x-real-ip: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\n");
    let (status, _, resp) = raw(
        d.addr,
        &post(
            "/olla/proxy/v1/chat/completions",
            &chat("model", "m"),
            &extra,
        ),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let traffic = be.traffic();
    assert_eq!(traffic.len(), 1);
    let got = &traffic[0];
    for (k, v) in &got.headers {
        assert!(
            !v.contains("client-secret") && !v.contains("6.6.6.6"),
            "{k}: {v} reached the backend"
        );
    }
    assert!(got.header("forwarded").is_none());
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    d.stop().await;
    be.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let be = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(
        &[endpoint("v", &be.url(""), "vllm", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  rate_limits: {trust_proxy_headers: true, trusted_proxy_cidrs: [127.0.0.0/8]}\n",
    ))
    .await;
    wait_routable(&d, &["v"], true).await;
    let extra = "x-forwarded-for: 203.0.113.7\r\nforwarded: for=203.0.113.7\r\n";
    let (status, _, resp) = raw(
        d.addr,
        &post(
            "/olla/proxy/v1/chat/completions",
            &chat("model", "m"),
            extra,
        ),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let traffic = be.traffic();
    let got = &traffic[0];
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(got.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(got.header("forwarded"), Some("for=203.0.113.7"));
    d.stop().await;
    be.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_auth_is_attached_only_to_its_api_and_allowed_paths() {
    let keyed = FakeBackend::start(&["m"]).await;
    let open = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(
        &[
            endpoint(
                "keyed",
                &keyed.url(""),
                "litellm",
                100,
                "auth: {type: bearer, token: master-key}, allowed_paths: [/v1/files, \"/team/*/info\"]",
            ),
            endpoint("open", &open.url(""), "vllm", 100, ""),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["keyed", "open"], true).await;
    // An admin path on the keyed endpoint: refused, naming allowed_paths.
    for target in [
        "/olla/litellm/key/generate",
        "/olla/litellm/KEY/./generate/",
    ] {
        let (status, _, resp) = raw(d.addr, &post(target, "{}", "")).await;
        assert_eq!(status, 404, "{target}: {resp}");
        assert!(error_message(&resp).contains("allowed_paths"), "{resp}");
    }
    // Its API and allowed paths are forwarded with the key.
    for (target, upstream) in [
        ("/olla/litellm/v1/chat/completions", "/v1/chat/completions"),
        ("/olla/litellm/v1/files/f-1", "/v1/files/f-1"),
        ("/olla/litellm/team/t1/info", "/team/t1/info"),
    ] {
        let (status, _, resp) = raw(d.addr, &post(target, &chat("model", "m"), "")).await;
        assert_eq!(status, 200, "{target}: {resp}");
        let last = keyed.traffic().pop().expect("forwarded");
        assert_eq!(last.target, upstream);
        assert_eq!(last.header("authorization"), Some("Bearer master-key"));
    }
    assert!(
        keyed.all().iter().all(|r| !r.target.contains("key/")),
        "admin path reached the keyed endpoint"
    );
    // On the OpenAI route both are candidates: the admin path goes to the endpoint without auth.
    let (status, head, resp) = raw(d.addr, &post("/olla/openai/key/generate", "{}", "")).await;
    assert_eq!(status, 200, "{resp}");
    assert!(
        head.to_ascii_lowercase().contains("x-olla-endpoint: open"),
        "{head}"
    );
    assert_eq!(
        open.traffic().pop().expect("forwarded").target,
        "/key/generate"
    );
    // An endpoint without auth forwards any path.
    let (status, _, resp) = raw(d.addr, &post("/olla/vllm/anything/odd", "{}", "")).await;
    assert_eq!(status, 200, "{resp}");
    d.stop().await;
    keyed.stop();
    open.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_capitalised_model_keys_cannot_bypass_routing() {
    let a = FakeBackend::start(&["a"]).await;
    let b = FakeBackend::start(&["b"]).await;
    let d = daemon(&config(
        &[
            endpoint("ea", &a.url(""), "ollama", 100, ""),
            endpoint("eb", &b.url(""), "ollama", 100, ""),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["ea", "eb"], true).await;
    for body in [
        r#"{"model":"a","Model":"b"}"#,
        r#"{"Model":"b","model":"a","messages":[]}"#,
        r#"{"model":"a","\u004dODEL":"b"}"#,
    ] {
        let (status, _, resp) = raw(d.addr, &post("/olla/ollama/api/chat", body, "")).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(error_message(&resp).contains("ambiguous"), "{resp}");
    }
    assert!(a.traffic().is_empty() && b.traffic().is_empty());
    // `Model` routes as a Go backend reads it.
    for _ in 0..4 {
        let (status, head, resp) = raw(
            d.addr,
            &post("/olla/ollama/api/chat", &chat("Model", "b"), ""),
        )
        .await;
        assert_eq!(status, 200, "{resp}");
        assert!(
            head.to_ascii_lowercase().contains("x-olla-endpoint: eb"),
            "{head}"
        );
    }
    assert!(
        a.traffic().is_empty(),
        "routed to a backend without the model"
    );
    // Strict routing sees an unknown `MODEL` and refuses it instead of routing anywhere.
    let (status, _, resp) = raw(
        d.addr,
        &post("/olla/ollama/api/chat", &chat("MODEL", "nope"), ""),
    )
    .await;
    assert_eq!(status, 404, "{resp}");
    d.stop().await;
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_rewrite_changes_only_the_model_bytes() {
    let be = FakeBackend::start(&["real-b"]).await;
    let d = daemon(&config(
        &[endpoint("v", &be.url(""), "vllm", 100, "")],
        "model_aliases: {my-alias: [real-b]}\n",
    ))
    .await;
    wait_routable(&d, &["v"], true).await;
    // Spacing, key order, a number serde would reformat and a large tail all survive.
    let filler = "x".repeat(3 << 20);
    let body = format!(
        "{{ \"temperature\" : 1.0e0 ,\n  \"Model\" :\t\"my-alias\", \"n\": 10000000000000000000001, \"pad\": \"{filler}\" }}"
    );
    let (status, head, resp) = raw(d.addr, &post("/olla/proxy/v1/completions", &body, "")).await;
    assert_eq!(status, 200, "{}", &resp[..resp.len().min(300)]);
    assert!(
        head.to_ascii_lowercase().contains("x-olla-model: my-alias"),
        "{head}"
    );
    let traffic = be.traffic();
    assert_eq!(traffic.len(), 1);
    let expected = body.replacen("\"my-alias\"", "\"real-b\"", 1);
    assert_eq!(traffic[0].body.len(), expected.len());
    assert!(
        traffic[0].body == expected.as_bytes(),
        "body changed beyond the model value"
    );
    d.stop().await;
    be.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_model_names_are_capped_in_response_headers() {
    let be = FakeBackend::start(&["m"]).await;
    let d = daemon(&config(&[endpoint("v", &be.url(""), "vllm", 100, "")], "")).await;
    wait_routable(&d, &["v"], true).await;
    let huge = "q".repeat(100_000);
    let (status, head, _) = raw(
        d.addr,
        &post("/olla/proxy/v1/chat/completions", &chat("model", &huge), ""),
    )
    .await;
    assert_eq!(status, 404);
    assert!(head.len() < 4096, "response head is {} bytes", head.len());
    let echoed = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-olla-model: ")
                .map(str::to_string)
        })
        .expect("x-olla-model echoed");
    assert_eq!(echoed.len(), 256);
    d.stop().await;
    be.stop();
}

fn fnv1a32_base36(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut n = u64::from(h);
    let mut out = Vec::new();
    loop {
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_ids_hash_the_url_as_configured_and_models_show_their_summary() {
    let a = FakeBackend::start(&["llama3:8b"]).await;
    let b = FakeBackend::start(&["llama3:8b"]).await;
    let (url_a, url_b) = (a.url(""), b.url("/"));
    let d = daemon(&config(
        &[
            endpoint("ea", &url_a, "ollama", 100, ""),
            endpoint("eb", &url_b, "ollama", 100, ""),
        ],
        "model_aliases: {fast: [llama3:8b]}\n",
    ))
    .await;
    wait_routable(&d, &["ea", "eb"], true).await;
    let c = client();
    let v: Value = c
        .get(format!("{}/internal/status/endpoints", d.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eps = v["endpoints"].as_array().expect("endpoints");
    for (name, url) in [("ea", &url_a), ("eb", &url_b)] {
        let e = eps.iter().find(|e| e["name"] == name).expect("listed");
        assert_eq!(e["url"], url.as_str(), "url shown as configured");
        assert_eq!(e["id"], fnv1a32_base36(url), "{name}: id hashes {url}");
    }
    assert!(url_b.ends_with('/') && !url_a.ends_with('/'));
    // Known vectors from Olla.
    assert_eq!(fnv1a32_base36("http://localhost:11434"), "1gi2muj");

    for id in ["llama3:8b", "llama3%3A8b", "fast"] {
        let r = c
            .get(format!("{}/olla/models/{id}", d.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["id"], "llama3:8b");
        let mut endpoints: Vec<&str> = m["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        endpoints.sort_unstable();
        assert_eq!(endpoints, ["ea", "eb"]);
        let aliases = m["aliases"].as_array().unwrap();
        assert!(aliases.iter().any(|a| a == "llama3:8b"), "{m}");
        assert!(aliases.iter().any(|a| a == "fast"), "{m}");
        assert_eq!(m["endpoint_urls"].as_array().unwrap().len(), 2);
        assert_eq!(m["parameter_size"], "8B");
        assert_eq!(m["parameter_count"], 8_000_000_000u64);
        for key in [
            "family",
            "quantization",
            "capabilities",
            "last_seen",
            "total_disk_size",
            "loaded_endpoints",
        ] {
            assert!(m.get(key).is_some(), "{key} missing: {m}");
        }
    }
    let r = c
        .get(format!("{}/olla/models/nope", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
    a.stop();
    b.stop();
}
