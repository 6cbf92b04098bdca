//! Model discovery, the unified catalog, provider routes and routing strategies over real
//! sockets: one mock per backend dialect unified into one catalog, each model routed only to the
//! backends that have it, provider prefixes (type scope, prefix stripping, fail-closed 404), the
//! strict and discovery strategies, config aliases rewritten to each backend's native name, model
//! filters, failed discoveries keeping the last good list, the model routes, and two endpoints
//! sharing one URL.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// An endpoint whose probes are rare (60 s), so a mock's `last_request()` read right after a
/// proxied request is that request, not a health probe. Discovery still runs once at startup.
fn quiet_endpoint(name: &str, url: &str, kind: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "      - {{name: {name}, url: \"{url}\", type: {kind}, priority: 100, check_interval: 60s, check_timeout: 2s{extra}}}\n"
    )
}

/// Like `common::config`, with the body of the `model_discovery` flow mapping chosen by the test.
fn config_md(endpoints: &[String], extra: &str, model_discovery: &str) -> String {
    format!(
        "server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 5s}}\n{extra}\ndiscovery:\n  model_discovery: {{{model_discovery}}}\n  static:\n    endpoints:\n{}",
        endpoints.concat()
    )
}

/// A response read whole.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn read(r: reqwest::Response) -> Resp {
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

async fn get(c: &reqwest::Client, url: &str) -> Resp {
    read(
        c.get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}")),
    )
    .await
}

/// POSTs a non-streaming chat request for `model` to `base` + `path`.
async fn chat_at(c: &reqwest::Client, base: &str, path: &str, model: &str) -> Resp {
    let url = format!("{base}{path}");
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(chat(model, false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    read(r).await
}

/// `data[].id` of an OpenAI-shaped list, as a set.
fn ids(v: &Value) -> BTreeSet<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {v}"))
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `olla.availability[].endpoint` of a unified catalog entry.
fn availability(entry: &Value) -> BTreeSet<String> {
    entry["olla"]["availability"]
        .as_array()
        .unwrap_or_else(|| panic!("no availability: {entry}"))
        .iter()
        .map(|a| a["endpoint"].as_str().expect("endpoint").to_string())
        .collect()
}

/// The unified catalog (`GET /olla/models`).
async fn catalog(c: &reqwest::Client, base: &str) -> Vec<Value> {
    let r = get(c, &format!("{base}/olla/models")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"].as_array().expect("data").clone()
}

/// One endpoint's entry in `/internal/status/endpoints` (Null when absent).
async fn endpoint_status(c: &reqwest::Client, base: &str, name: &str) -> Value {
    let v = get(c, &format!("{base}/internal/status/endpoints"))
        .await
        .json();
    v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The path and the JSON `model` of the last request a mock received.
fn last_seen(m: &MockServer) -> (String, String) {
    let r = m.last_request().expect("the mock received a request");
    let model = serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_string));
    (r.path, model.unwrap_or_default())
}

const SHARED: &str = "llama3.2:1b";

/// One mock per dialect, each serving [`SHARED`] and a model of its own.
const DIALECTS: [(&str, &str, &str); 5] = [
    ("ol", "ollama", "ollama-only:7b"),
    ("lms", "lm-studio", "lmstudio-only-3b"),
    ("lcpp", "llamacpp", "llamacpp-only-1b"),
    ("vl", "vllm", "org/vllm-only-8b"),
    ("oai", "openai-compatible", "oai-only-model"),
];

struct Fleet {
    mocks: Vec<MockServer>,
    d: Daemon,
}

impl Fleet {
    async fn start() -> Fleet {
        let mut mocks = Vec::new();
        let mut eps = Vec::new();
        for (name, kind, only) in DIALECTS {
            let m = mock(name, &[SHARED, only]).await;
            eps.push(quiet_endpoint(name, &m.url(), kind, ""));
            mocks.push(m);
        }
        let d = daemon(&config_md(
            &eps,
            "proxy: {load_balancer: round-robin}",
            "interval: 5m, timeout: 2s",
        ))
        .await;
        let names: Vec<&str> = DIALECTS.iter().map(|(n, _, _)| *n).collect();
        wait_routable(&d, &names, true).await;
        Fleet { mocks, d }
    }

    fn mock(&self, name: &str) -> &MockServer {
        let i = DIALECTS
            .iter()
            .position(|(n, _, _)| *n == name)
            .expect("known mock");
        &self.mocks[i]
    }

    fn reset(&self) {
        for m in &self.mocks {
            m.reset_stats();
        }
    }

    async fn stop(self) {
        self.d.stop().await;
        for m in self.mocks {
            m.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_dialects_unify_into_one_catalog_and_each_model_routes_only_to_its_backends() {
    let f = Fleet::start().await;
    let c = client();
    let base = f.d.url();

    let entries = catalog(&c, &base).await;
    assert_eq!(
        entries.len(),
        6,
        "one shared model plus one per backend: {entries:?}"
    );
    let shared: Vec<&Value> = entries
        .iter()
        .filter(|e| e["id"].as_str().unwrap().eq_ignore_ascii_case(SHARED))
        .collect();
    assert_eq!(
        shared.len(),
        1,
        "the shared model is listed once: {entries:?}"
    );
    let all: BTreeSet<String> = DIALECTS.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(availability(shared[0]), all, "{}", shared[0]);
    for (name, _, only) in DIALECTS {
        let e: Vec<&Value> = entries.iter().filter(|e| e["id"] == only).collect();
        assert_eq!(e.len(), 1, "{only} listed once: {entries:?}");
        assert_eq!(availability(e[0]), set(&[name]), "{only}: {}", e[0]);
    }

    // Each backend's own model goes to that backend only, under its own name.
    f.reset();
    for (name, _, only) in DIALECTS {
        for _ in 0..3 {
            let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", only).await;
            assert_eq!(
                (r.status, r.header("x-olla-endpoint")),
                (200, name),
                "{only}: {}",
                r.body
            );
            assert_eq!(r.header("x-olla-routing-decision"), "routed");
            assert_eq!(r.header("x-olla-routing-reason"), "model_found");
            assert_eq!(
                last_seen(f.mock(name)),
                ("/v1/chat/completions".to_string(), only.to_string())
            );
        }
    }
    for (name, _, _) in DIALECTS {
        assert_eq!(chats(f.mock(name)), 3, "{name} answered only its own model");
    }
    // Ids with a `/` (vLLM's org/name) are looked up whole.
    let r = get(&c, &format!("{base}/olla/models/org/vllm-only-8b")).await;
    assert_eq!(
        (r.status, r.json()["id"].as_str()),
        (200, Some("org/vllm-only-8b")),
        "{}",
        r.body
    );

    // The shared model is spread over all five (round-robin) and nothing else is touched.
    let mut served = BTreeSet::new();
    let mut per_backend = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..15 {
        let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", SHARED).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let ep = r.header("x-olla-endpoint").to_string();
        assert_eq!(
            last_seen(f.mock(&ep)),
            ("/v1/chat/completions".to_string(), SHARED.to_string())
        );
        *per_backend.entry(ep.clone()).or_default() += 1;
        served.insert(ep);
    }
    assert_eq!(
        served, all,
        "round-robin reaches every backend that has the shared model"
    );
    for (name, _, _) in DIALECTS {
        assert_eq!(
            chats(f.mock(name)),
            3 + per_backend[name],
            "{name}: request count matches X-Olla-Endpoint"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_prefixes_scope_to_their_type_strip_the_prefix_and_fail_closed() {
    let f = Fleet::start().await;
    let c = client();
    let base = f.d.url();

    // Aggregated Ollama list: Ollama models only, in Ollama's shape.
    let r = get(&c, &format!("{base}/olla/ollama/api/tags")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v.get("data").is_none(), "{v}");
    let models = v["models"].as_array().expect("models array");
    let names: BTreeSet<String> = models
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, set(&[SHARED, "ollama-only:7b"]));
    for m in models {
        assert_eq!(m["model"], m["name"], "{m}");
        assert!(m["digest"].as_str().is_some_and(|d| !d.is_empty()), "{m}");
        assert!(m["size"].as_u64().is_some_and(|s| s > 0), "{m}");
        assert!(
            m["modified_at"].is_string() && m["details"]["family"].is_string(),
            "{m}"
        );
    }

    // LM Studio: native list under every prefix spelling, and the OpenAI list.
    for path in [
        "/olla/lmstudio/api/v0/models",
        "/olla/lm_studio/api/v0/models",
        "/olla/lm-studio/api/v0/models",
    ] {
        let r = get(&c, &format!("{base}{path}")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(ids(&v), set(&[SHARED, "lmstudio-only-3b"]), "{path}");
        for m in v["data"].as_array().unwrap() {
            assert!(
                m["type"].is_string() && m["state"].is_string(),
                "{path}: {m}"
            );
        }
    }
    let r = get(&c, &format!("{base}/olla/lm-studio/v1/models")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["object"], "list");
    assert_eq!(ids(&r.json()), set(&[SHARED, "lmstudio-only-3b"]));

    // A vLLM-prefixed request reaches only the vLLM mock, with the prefix stripped.
    f.reset();
    for _ in 0..5 {
        let r = chat_at(&c, &base, "/olla/vllm/v1/chat/completions", SHARED).await;
        assert_eq!(
            (r.status, r.header("x-olla-endpoint")),
            (200, "vl"),
            "{}",
            r.body
        );
        assert_eq!(r.header("x-olla-backend-type"), "vllm");
        assert_eq!(
            last_seen(f.mock("vl")),
            ("/v1/chat/completions".to_string(), SHARED.to_string())
        );
    }
    for (name, _, _) in DIALECTS {
        assert_eq!(
            chats(f.mock(name)),
            if name == "vl" { 5 } else { 0 },
            "{name}"
        );
    }
    // A model only another type has is not found through the vLLM prefix.
    let r = chat_at(
        &c,
        &base,
        "/olla/vllm/v1/chat/completions",
        "oai-only-model",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found");

    // Native paths are stripped the same way.
    let r = chat_at(&c, &base, "/olla/ollama/api/chat", SHARED).await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "ol"),
        "{}",
        r.body
    );
    assert_eq!(
        last_seen(f.mock("ol")),
        ("/api/chat".to_string(), SHARED.to_string())
    );
    let r = chat_at(
        &c,
        &base,
        "/olla/lmstudio/v1/chat/completions",
        "lmstudio-only-3b",
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "lms"),
        "{}",
        r.body
    );
    assert_eq!(
        last_seen(f.mock("lms")),
        (
            "/v1/chat/completions".to_string(),
            "lmstudio-only-3b".to_string()
        )
    );
    let r = chat_at(&c, &base, "/olla/llamacpp/v1/chat/completions", SHARED).await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "lcpp"),
        "{}",
        r.body
    );

    // `/olla/openai` spans every OpenAI-compatible type.
    let mut every = set(&[SHARED]);
    every.extend(DIALECTS.iter().map(|(_, _, only)| only.to_string()));
    for prefix in ["openai", "openai-compatible"] {
        let r = get(&c, &format!("{base}/olla/{prefix}/v1/models")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ids(&r.json()), every, "/olla/{prefix}/v1/models");
    }

    // No SGLang backend: the prefix fails closed.
    let r = get(&c, &format!("{base}/olla/sglang/v1/models")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "No sglang endpoints available"
    );
    let r = chat_at(&c, &base, "/olla/sglang/v1/chat/completions", SHARED).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "No sglang endpoints available"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rejects_unknown_models_with_404_and_models_on_down_backends_with_503() {
    let a = mock("a", &["model-a"]).await;
    let b = mock("b", &["model-b"]).await;
    let eps = [
        endpoint("a", &a.url(), "openai", 100, ""),
        endpoint("b", &b.url(), "openai", 100, ""),
    ];
    let d = daemon(&config(
        &eps,
        "model_registry: {routing_strategy: {type: strict}}",
    ))
    .await;
    wait_routable(&d, &["a", "b"], true).await;
    let c = client();
    let base = d.url();
    let path = "/olla/proxy/v1/chat/completions";

    let r = chat_at(&c, &base, path, "no-such-model").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.header("x-olla-routing-strategy"), "strict");
    assert_eq!(r.header("x-olla-routing-decision"), "rejected");
    assert_eq!(r.header("x-olla-routing-reason"), "model_not_found");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(
        a.stats().by_path.get(path),
        None,
        "a rejected request reaches no backend"
    );

    let r = chat_at(&c, &base, path, "model-b").await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "b"),
        "{}",
        r.body
    );

    b.stop().await;
    wait_until(Duration::from_secs(10), "b is offline", || {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let s = endpoint_status(&c, &base, "b").await;
            s["status"] == "offline" || s["status"] == "unhealthy"
        }
    })
    .await;
    let r = chat_at(&c, &base, path, "model-b").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("x-olla-routing-strategy"), "strict");
    assert_eq!(r.header("x-olla-routing-decision"), "rejected");
    assert_eq!(r.header("x-olla-routing-reason"), "model_unavailable");
    assert_eq!(r.json()["error"]["code"], "model_unavailable");

    // The healthy backend is unaffected; unknown stays unknown.
    let r = chat_at(&c, &base, path, "model-a").await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "a"),
        "{}",
        r.body
    );
    assert_eq!(chat_at(&c, &base, path, "no-such-model").await.status, 404);
    d.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_fallback_all_forwards_unknown_models_and_none_rejects_them() {
    let m = mock("a", &["model-a"]).await;
    let c = client();
    let path = "/olla/proxy/v1/chat/completions";
    for (fallback, forwarded) in [("all", true), ("none", false)] {
        let yaml = config_md(
            &[quiet_endpoint("a", &m.url(), "openai", "")],
            &format!("model_registry: {{routing_strategy: {{type: optimistic, options: {{fallback_behavior: {fallback}}}}}}}"),
            "interval: 5m, timeout: 2s",
        );
        let d = daemon(&yaml).await;
        wait_routable(&d, &["a"], true).await;
        m.reset_stats();
        let r = chat_at(&c, &d.url(), path, "no-such-model").await;
        assert_eq!(
            r.header("x-olla-routing-strategy"),
            "optimistic",
            "{fallback}"
        );
        if forwarded {
            // Sent to a healthy backend anyway; the backend's own 404 passes through.
            assert_eq!(r.header("x-olla-routing-decision"), "fallback");
            assert_eq!(
                r.header("x-olla-routing-reason"),
                "model_not_found_fallback"
            );
            assert_eq!(
                (r.status, r.header("x-olla-endpoint")),
                (404, "a"),
                "{}",
                r.body
            );
            assert_eq!(last_seen(&m).1, "no-such-model");
        } else {
            assert_eq!(r.status, 404, "{}", r.body);
            assert_eq!(r.header("x-olla-routing-decision"), "rejected");
            assert_eq!(r.header("x-olla-routing-reason"), "model_not_found");
            assert_eq!(
                m.stats().by_path.get(path),
                None,
                "a rejected request reaches no backend"
            );
        }
        let r = chat_at(&c, &d.url(), path, "model-a").await;
        assert_eq!(
            (r.status, r.header("x-olla-routing-reason")),
            (200, "model_found"),
            "{}",
            r.body
        );
        d.stop().await;
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_strategy_refetches_on_a_miss_and_strict_does_not() {
    // The periodic discovery is 5 minutes away: only a refresh on the miss can find the model.
    let md = "interval: 5m, timeout: 2s";
    let c = client();
    let path = "/olla/proxy/v1/chat/completions";

    let a = mock("a", &["m1"]).await;
    let yaml = config_md(
        &[endpoint("a", &a.url(), "openai", 100, "")],
        "model_registry: {routing_strategy: {type: discovery, options: {discovery_timeout: 2s}}}",
        md,
    );
    let d = daemon(&yaml).await;
    wait_routable(&d, &["a"], true).await;
    let base = d.url();
    assert_eq!(
        get(&c, &format!("{base}/olla/models/fresh-model"))
            .await
            .status,
        404
    );
    a.update(|cfg| cfg.models.push("fresh-model".into()));
    let r = chat_at(&c, &base, path, "fresh-model").await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "a"),
        "first request after it appeared: {}",
        r.body
    );
    assert_eq!(r.header("x-olla-routing-strategy"), "discovery");
    assert_eq!(r.header("x-olla-routing-decision"), "routed");
    assert_eq!(r.header("x-olla-routing-reason"), "model_found");
    let r = get(&c, &format!("{base}/olla/models/fresh-model")).await;
    assert_eq!(
        r.status, 200,
        "the refreshed list is in the catalog: {}",
        r.body
    );
    // A model nobody has is still rejected after the refresh.
    let r = chat_at(&c, &base, path, "never-served").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.header("x-olla-routing-strategy"), "discovery");
    assert_eq!(r.header("x-olla-routing-reason"), "model_not_found");
    d.stop().await;
    a.stop().await;

    // Same situation under strict: the catalog is not refreshed, so the new model is unknown.
    let b = mock("b", &["m1"]).await;
    let yaml = config_md(
        &[endpoint("b", &b.url(), "openai", 100, "")],
        "model_registry: {routing_strategy: {type: strict}}",
        md,
    );
    let d = daemon(&yaml).await;
    wait_routable(&d, &["b"], true).await;
    let base = d.url();
    b.update(|cfg| cfg.models.push("fresh-model".into()));
    let r = chat_at(&c, &base, path, "fresh-model").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.header("x-olla-routing-strategy"), "strict");
    assert_eq!(r.header("x-olla-routing-decision"), "rejected");
    assert_eq!(r.header("x-olla-routing-reason"), "model_not_found");
    assert_eq!(
        b.stats().by_path.get(path),
        None,
        "strict never forwarded it"
    );
    d.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_alias_reaches_both_backends_under_each_ones_native_name() {
    let ol = mock("ol", &["llama3.1:8b"]).await;
    let lms = mock("lms", &["llama-3.1-8b-instruct"]).await;
    let eps = [
        quiet_endpoint("ol", &ol.url(), "ollama", ""),
        quiet_endpoint("lms", &lms.url(), "lm-studio", ""),
    ];
    let extra = "proxy: {load_balancer: round-robin}\nmodel_aliases: {my-llama: [llama3.1:8b, llama-3.1-8b-instruct]}";
    let d = daemon(&config_md(&eps, extra, "interval: 5m, timeout: 2s")).await;
    wait_routable(&d, &["ol", "lms"], true).await;
    let c = client();
    let base = d.url();

    let mut served = BTreeSet::new();
    for _ in 0..8 {
        let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "my-llama").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-olla-routing-decision"), "routed");
        assert_eq!(r.header("x-olla-routing-reason"), "alias_resolved");
        let ep = r.header("x-olla-endpoint").to_string();
        let (m, native) = match ep.as_str() {
            "ol" => (&ol, "llama3.1:8b"),
            "lms" => (&lms, "llama-3.1-8b-instruct"),
            other => panic!("served by {other:?}"),
        };
        let (path, model) = last_seen(m);
        assert!(path.ends_with("/chat/completions"), "{path}");
        assert_eq!(model, native, "{ep} received its own name for the model");
        served.insert(ep);
    }
    assert_eq!(
        served,
        set(&["ol", "lms"]),
        "round-robin uses both backends of the alias"
    );
    assert_eq!(chats(&ol) + chats(&lms), 8);

    // The alias is listed beside the real models.
    let r = get(&c, &format!("{base}/olla/proxy/v1/models")).await;
    assert_eq!(
        ids(&r.json()),
        set(&["my-llama", "llama3.1:8b", "llama-3.1-8b-instruct"])
    );
    d.stop().await;
    ol.stop().await;
    lms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_filters_hide_excluded_models_from_catalog_and_routing() {
    let inc = mock(
        "inc",
        &[
            "llama3:8b",
            "qwen2:7b",
            "nomic-embed-text:latest",
            "phi3:mini",
        ],
    )
    .await;
    let exc = mock("exc", &["gpt-small", "text-embedding-3-small"]).await;
    let eps = [
        endpoint(
            "inc",
            &inc.url(),
            "ollama",
            100,
            r#"model_filter: {include: ["llama*", "nomic*", "phi*"], exclude: ["phi*"]}"#,
        ),
        endpoint(
            "exc",
            &exc.url(),
            "openai",
            100,
            r#"model_filter: {exclude: ["*embedding*"]}"#,
        ),
    ];
    let d = daemon(&config(&eps, "")).await;
    wait_routable(&d, &["inc", "exc"], true).await;
    let c = client();
    let base = d.url();

    let listed: BTreeSet<String> = catalog(&c, &base)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        set(&["llama3:8b", "nomic-embed-text:latest", "gpt-small"])
    );
    assert_eq!(endpoint_status(&c, &base, "inc").await["model_count"], 2);
    assert_eq!(endpoint_status(&c, &base, "exc").await["model_count"], 1);

    for hidden in ["qwen2:7b", "phi3:mini", "text-embedding-3-small"] {
        let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", hidden).await;
        assert_eq!(r.status, 404, "{hidden}: {}", r.body);
        assert_eq!(
            r.header("x-olla-routing-reason"),
            "model_not_found",
            "{hidden}"
        );
        assert_eq!(
            get(&c, &format!("{base}/olla/models/{hidden}"))
                .await
                .status,
            404,
            "{hidden}"
        );
    }
    for (model, ep) in [("llama3:8b", "inc"), ("gpt-small", "exc")] {
        let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", model).await;
        assert_eq!(
            (r.status, r.header("x-olla-endpoint")),
            (200, ep),
            "{model}: {}",
            r.body
        );
    }
    d.stop().await;
    inc.stop().await;
    exc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_discovery_keeps_the_last_good_list_and_reports_the_error_until_it_clears() {
    let ol = mock("ol", &["m-ol:1b"]).await;
    let vl = mock("vl", &["m-vl-1b"]).await;
    // Ollama's health path is `/` and vLLM's `/health`: a broken model list leaves them healthy.
    let eps = [
        endpoint("ol", &ol.url(), "ollama", 100, ""),
        endpoint("vl", &vl.url(), "vllm", 100, ""),
    ];
    let d = daemon(&config_md(&eps, "", "interval: 1s, timeout: 300ms")).await;
    wait_routable(&d, &["ol", "vl"], true).await;
    let c = client();
    let base = d.url();
    let error_of = |name: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            endpoint_status(&c, &base, name).await["discovery_error"]
                .as_str()
                .map(str::to_string)
        }
    };
    assert_eq!(error_of("ol").await, None);
    assert_eq!(error_of("vl").await, None);

    // Malformed JSON.
    ol.update(|cfg| cfg.models_fault = Fault::MalformedJson);
    wait_until(
        Duration::from_secs(10),
        "ol reports a discovery error",
        || {
            let e = error_of("ol");
            async move { e.await.is_some() }
        },
    )
    .await;
    let err = error_of("ol").await.unwrap();
    assert!(err.contains("malformed"), "{err}");
    assert_eq!(
        error_of("vl").await,
        None,
        "only the broken backend reports an error"
    );
    // Let two more discoveries fail, then the last good list must still be there and routable.
    let tags = || ol.stats().by_path.get("/api/tags").copied().unwrap_or(0);
    let seen = tags();
    wait_until(
        Duration::from_secs(10),
        "two more failed discoveries",
        || {
            let n = tags();
            async move { n >= seen + 2 }
        },
    )
    .await;
    let s = endpoint_status(&c, &base, "ol").await;
    assert_eq!(
        (s["status"].as_str(), s["model_count"].as_u64()),
        (Some("healthy"), Some(1)),
        "{s}"
    );
    let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "m-ol:1b").await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "ol"),
        "{}",
        r.body
    );
    assert_eq!(
        get(&c, &format!("{base}/olla/models/m-ol:1b")).await.status,
        200
    );

    // The fault clears and the list changes: a later discovery takes it and clears the error.
    ol.update(|cfg| {
        cfg.models_fault = Fault::None;
        cfg.models.push("m-ol-new:1b".into());
    });
    wait_until(
        Duration::from_secs(10),
        "ol's error clears and its new model is listed",
        || {
            let e = error_of("ol");
            let (c, base) = (c.clone(), base.clone());
            async move {
                e.await.is_none()
                    && get(&c, &format!("{base}/olla/models/m-ol-new:1b"))
                        .await
                        .status
                        == 200
            }
        },
    )
    .await;
    assert_eq!(
        chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "m-ol:1b")
            .await
            .status,
        200
    );

    // A model list that never answers: the 300 ms discovery timeout.
    vl.update(|cfg| cfg.models_fault = Fault::Hang);
    wait_until(
        Duration::from_secs(10),
        "vl reports a discovery timeout",
        || {
            let e = error_of("vl");
            async move { e.await.is_some() }
        },
    )
    .await;
    let err = error_of("vl").await.unwrap();
    assert!(err.contains("timed out"), "{err}");
    let s = endpoint_status(&c, &base, "vl").await;
    assert_eq!(
        (s["status"].as_str(), s["model_count"].as_u64()),
        (Some("healthy"), Some(1)),
        "{s}"
    );
    let r = chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "m-vl-1b").await;
    assert_eq!(
        (r.status, r.header("x-olla-endpoint")),
        (200, "vl"),
        "{}",
        r.body
    );
    vl.update(|cfg| cfg.models_fault = Fault::None);
    wait_until(Duration::from_secs(10), "vl's error clears", || {
        let e = error_of("vl");
        async move { e.await.is_none() }
    })
    .await;
    assert_eq!(
        chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "m-vl-1b")
            .await
            .status,
        200
    );
    d.stop().await;
    ol.stop().await;
    vl.stop().await;
}

/// A minimal HTTP/1.1 backend answering every request with 200 and a fixed JSON body per path
/// (`{}` elsewhere): for a model list the mock cannot produce.
async fn fixed_backend(
    routes: Vec<(&'static str, String)>,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let routes = Arc::new(routes);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let body = routes
                            .iter()
                            .find(|(p, _)| *p == path)
                            .map_or_else(|| "{}".to_string(), |(_, b)| b.clone());
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_routes_look_up_by_id_or_native_alias_format_filter_and_summarise() {
    let ol = mock("a-ol", &["llama3.1:8b", "nomic-embed-text:latest"]).await;
    let oai = mock("c-oai", &["gpt-small", "llama3.1:8b"]).await;
    let c = client();
    // A second Ollama names the same weights (same digest) differently.
    let tags = get(&c, &format!("{}/api/tags", ol.url())).await.json();
    let digest = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "llama3.1:8b")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let fake_tags = serde_json::json!({"models": [{"name": "llama3.1:8b-instruct", "model": "llama3.1:8b-instruct",
        "digest": format!("sha256:{digest}"), "size": 1, "details": {"family": "llama"}}]});
    let (fake_url, fake) = fixed_backend(vec![("/api/tags", fake_tags.to_string())]).await;
    let eps = [
        endpoint("a-ol", &ol.url(), "ollama", 100, ""),
        endpoint("b-fake", &fake_url, "ollama", 100, ""),
        endpoint("c-oai", &oai.url(), "openai-compatible", 100, ""),
    ];
    let d = daemon(&config(&eps, "")).await;
    wait_routable(&d, &["a-ol", "b-fake", "c-oai"], true).await;
    let base = d.url();

    // One model, found by its id, by another backend's native name (escaped or not), any case.
    for id in [
        "llama3.1:8b",
        "llama3.1:8b-instruct",
        "llama3.1%3A8b-instruct",
        "LLAMA3.1:8B",
    ] {
        let r = get(&c, &format!("{base}/olla/models/{id}")).await;
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        let v = r.json();
        assert_eq!(v["id"], "llama3.1:8b", "{id}");
        let endpoints: BTreeSet<String> = v["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("unified summary has endpoints: {v}"))
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        assert_eq!(endpoints, set(&["a-ol", "b-fake", "c-oai"]), "{v}");
        let aliases: BTreeSet<String> = v["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert!(
            aliases.contains("llama3.1:8b") && aliases.contains("llama3.1:8b-instruct"),
            "{v}"
        );
    }
    let r = get(&c, &format!("{base}/olla/models/no-such-model")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found");

    // Formats.
    let all = set(&["llama3.1:8b", "nomic-embed-text:latest", "gpt-small"]);
    let v = get(&c, &format!("{base}/olla/models")).await.json();
    assert_eq!((v["object"].as_str(), ids(&v)), (Some("list"), all.clone()));
    let v = get(&c, &format!("{base}/olla/models?format=openai"))
        .await
        .json();
    assert_eq!((v["object"].as_str(), ids(&v)), (Some("list"), all.clone()));
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model", "{m}");
        assert!(
            m["owned_by"].is_string() && m["created"].is_u64() && m.get("olla").is_none(),
            "{m}"
        );
    }
    let v = get(&c, &format!("{base}/olla/models?format=ollama"))
        .await
        .json();
    assert!(v.get("data").is_none(), "{v}");
    let models = v["models"].as_array().expect("models");
    let names: BTreeSet<String> = models
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        set(&["llama3.1:8b", "nomic-embed-text:latest"]),
        "only models an Ollama serves"
    );
    for m in models {
        assert!(
            m["details"].is_object() && m["digest"].is_string() && m["model"] == m["name"],
            "{m}"
        );
    }
    let r = get(&c, &format!("{base}/olla/models?format=xml")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("format"),
        "{}",
        r.body
    );

    // Filters.
    let only = |q: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move { ids(&get(&c, &format!("{base}/olla/models?{q}")).await.json()) }
    };
    assert_eq!(
        only("endpoint=c-oai").await,
        set(&["gpt-small", "llama3.1:8b"])
    );
    assert_eq!(
        only("endpoint=a-ol").await,
        set(&["llama3.1:8b", "nomic-embed-text:latest"])
    );
    assert_eq!(only("endpoint=b-fake").await, set(&["llama3.1:8b"]));
    assert_eq!(only("endpoint=nobody").await, set(&[]));
    assert_eq!(only("family=llama").await, set(&["llama3.1:8b"]));
    assert_eq!(
        only("capability=embeddings").await,
        set(&["nomic-embed-text:latest"])
    );
    assert_eq!(
        only("type=openai-compatible&format=openai").await,
        set(&["gpt-small", "llama3.1:8b"])
    );

    // Status summary.
    let v = get(&c, &format!("{base}/internal/status/models"))
        .await
        .json();
    assert_eq!(v["total_models"], 3, "{v}");
    assert_eq!(v["total_endpoints"], 3, "{v}");
    assert_eq!(
        v["models_by_family"]["llama"],
        serde_json::json!(["llama3.1:8b"]),
        "{v}"
    );
    let recent = v["recent_models"].as_array().expect("recent_models");
    assert_eq!(recent.len(), 3, "{v}");
    let llama = recent
        .iter()
        .find(|m| m["name"] == "llama3.1:8b")
        .expect("llama in recent_models");
    let eps: BTreeSet<String> = llama["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(eps, set(&["a-ol", "b-fake", "c-oai"]));
    d.stop().await;
    fake.abort();
    ol.stop().await;
    oai.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_sharing_one_url_are_kept_apart_by_name_and_both_serve() {
    let m = mock("one", &["m"]).await;
    let eps = [
        endpoint("dup-a", &m.url(), "openai", 100, ""),
        endpoint("dup-b", &m.url(), "openai", 100, ""),
    ];
    let d = daemon(&config(&eps, "proxy: {load_balancer: round-robin}")).await;
    wait_routable(&d, &["dup-a", "dup-b"], true).await;
    let c = client();
    let base = d.url();

    let v = get(&c, &format!("{base}/internal/status/endpoints"))
        .await
        .json();
    assert_eq!(v["total_count"], 2, "{v}");
    let names: BTreeSet<String> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, set(&["dup-a", "dup-b"]));
    for e in v["endpoints"].as_array().unwrap() {
        assert_eq!(
            (e["status"].as_str(), e["model_count"].as_u64()),
            (Some("healthy"), Some(1)),
            "{e}"
        );
    }
    let entries = catalog(&c, &base).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(availability(&entries[0]), set(&["dup-a", "dup-b"]));

    m.reset_stats();
    let mut served = BTreeSet::new();
    for _ in 0..10 {
        let (status, ep, body) = post_chat(&c, &base, "m").await;
        assert_eq!(status, 200, "{body}");
        served.insert(ep);
    }
    assert_eq!(served, set(&["dup-a", "dup-b"]));
    assert_eq!(chats(&m), 10);
    // Olla's ids for endpoints sharing a URL: the base id plus `-0`, `-1` in name order.
    let all = get(&c, &format!("{}/internal/status/endpoints", d.url()))
        .await
        .json();
    let mut ids: Vec<String> = all["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert!(ids[0].ends_with("-0") && ids[1].ends_with("-1"), "{ids:?}");
    assert_eq!(ids[0].trim_end_matches("-0"), ids[1].trim_end_matches("-1"));
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_type_is_detected_and_its_models_discovered() {
    // The mock answers Ollama's `/api/tags` first in the detection order, so it is an Ollama.
    let m = mock("auto-one", &["detect-me:1b"]).await;
    let eps = [endpoint("auto-one", &m.url(), "auto", 100, "")];
    let d = daemon(&config(&eps, "")).await;
    wait_routable(&d, &["auto-one"], true).await;
    let c = client();
    let st = endpoint_status(&c, &d.url(), "auto-one").await;
    assert_eq!(st["type"], "ollama", "{st}");
    let r = chat_at(
        &c,
        &d.url(),
        "/olla/ollama/v1/chat/completions",
        "detect-me:1b",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-olla-backend-type"), "ollama");
    let tags = get(&c, &format!("{}/olla/ollama/api/tags", d.url()))
        .await
        .json();
    assert_eq!(tags["models"][0]["name"], "detect-me:1b");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovering_backend_is_rediscovered_without_waiting_for_the_interval() {
    let m = mock("comeback", &["old-model"]).await;
    let addr = m.addr();
    // Discovery every 5 minutes: only the recovery trigger can explain a fresh list.
    let eps = [endpoint(
        "comeback",
        &m.url(),
        "openai",
        100,
        "health: {healthy_threshold: 1}",
    )];
    let yaml = config_md(&eps, "", "interval: 5m, timeout: 2s");
    let d = daemon(&yaml).await;
    wait_routable(&d, &["comeback"], true).await;
    let c = client();
    m.stop().await;
    wait_until(Duration::from_secs(5), "backend marked down", || {
        let (c, base) = (c.clone(), d.url());
        async move { endpoint_status(&c, &base, "comeback").await["status"] != "healthy" }
    })
    .await;
    let _m = MockServer::start_at(
        addr,
        MockConfig {
            name: "comeback".into(),
            models: vec!["new-model".into()],
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "new model routable after recovery",
        || {
            let (c, base) = (c.clone(), d.url());
            async move {
                chat_at(&c, &base, "/olla/proxy/v1/chat/completions", "new-model")
                    .await
                    .status
                    == 200
            }
        },
    )
    .await;
    let r = chat_at(&c, &d.url(), "/olla/proxy/v1/chat/completions", "old-model").await;
    assert_eq!(r.status, 404, "the old list was replaced: {}", r.body);
    d.stop().await;
}
