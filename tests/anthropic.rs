//! The Anthropic Messages API over real sockets: passthrough to native backends (body unchanged,
//! `X-Olla-Mode`), translation to chat completions and back (whole and streamed, tools,
//! thinking), incremental translated streams, Anthropic-shaped errors, credentials, token
//! counting, the model list and the translator stats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use olla::dialect::anthropic::stream::{check_well_formed, reassemble};
use serde_json::{json, Value};

const MSG: &str = "/olla/anthropic/v1/messages";

async fn post(d: &Daemon, path: &str, body: &str) -> reqwest::Response {
    client()
        .post(format!("{}{path}", d.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

fn ask(model: &str, stream: bool, text: &str) -> String {
    json!({"model": model, "max_tokens": 64, "stream": stream,
        "system": "be brief",
        "messages": [{"role": "user", "content": text}],
        "tools": [{"name": "get_weather", "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]})
    .to_string()
}

/// Reassembles a streamed message as the SDKs do.
fn assemble(events: &[(String, Value)]) -> Value {
    reassemble(events).unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_create_and_stream_with_tools_and_thinking() {
    let m = mock("oa", &["m"]).await;
    let d = daemon(&config(&[endpoint("oa", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["oa"], true).await;

    let r = post(&d, MSG, &ask("m", false, "hello")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-olla-mode"),
        None,
        "translation never claims passthrough"
    );
    assert!(header(&r, "request-id").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "m");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("tok0 "));
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let sent = m.last_work().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    let sent: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    // A tool the model calls, with thinking, non-streamed.
    let r = post(&d, MSG, &ask("m", false, "mock:tool mock:think")).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], "Let me think step by step.");
    let tool = v["content"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(tool["type"], "tool_use");
    assert_eq!(tool["input"], json!({"city": "Paris", "days": 3}));
    assert_eq!(v["stop_reason"], "tool_use");

    // The same streamed: well formed, the tool input assembles, usage is real.
    let r = post(&d, MSG, &ask("m", true, "mock:tool mock:think")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let bytes = r.bytes().await.unwrap();
    let events = check_well_formed(&bytes).unwrap();
    assert_eq!(events.last().unwrap().0, "message_stop");
    let msg = assemble(&events);
    assert_eq!(msg["content"][0]["thinking"], "Let me think step by step.");
    assert!(msg["content"][1]["text"]
        .as_str()
        .unwrap()
        .starts_with("tok0"));
    assert_eq!(msg["content"][2]["name"], "get_weather");
    assert_eq!(
        msg["content"][2]["input"],
        json!({"city": "Paris", "days": 3})
    );
    assert_eq!(msg["stop"]["stop_reason"], "tool_use");
    assert_eq!(msg["usage"]["output_tokens"], 8);
    let sent: Value = serde_json::from_str(&m.last_work().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_backends_get_the_body_unchanged() {
    let native = mock("native", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("native", &native.url(), "llamacpp", 100, "")],
        "",
    ))
    .await;
    wait_routable(&d, &["native"], true).await;
    let body = ask("m", false, "hi");
    let r = post(&d, MSG, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-olla-mode").as_deref(), Some("passthrough"));
    assert_eq!(header(&r, "x-olla-endpoint").as_deref(), Some("native"));
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_mock_"), "{v}");
    let sent = native.last_work().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body, body);
    // Streamed passthrough is the backend's own event stream.
    let r = post(&d, MSG, &ask("m", true, "hi")).await;
    assert_eq!(header(&r, "x-olla-mode").as_deref(), Some("passthrough"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("msg_mock_") && text.contains("message_stop"),
        "{text}"
    );
    d.stop().await;

    // Per endpoint: a path switches passthrough on for any type, "" switches it off; the
    // global switch turns it off everywhere.
    let generic = mock("generic", &["g"]).await;
    let d = daemon(&config(
        &[
            endpoint(
                "native",
                &native.url(),
                "llamacpp",
                100,
                "anthropic_messages_path: \"\"",
            ),
            endpoint(
                "generic",
                &generic.url(),
                "openai",
                100,
                "anthropic_messages_path: /v1/messages",
            ),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["native", "generic"], true).await;
    let r = post(&d, MSG, &ask("m", false, "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-olla-mode"), None);
    assert_eq!(native.last_work().unwrap().path, "/v1/chat/completions");
    let r = post(&d, MSG, &ask("g", false, "hi")).await;
    assert_eq!(header(&r, "x-olla-mode").as_deref(), Some("passthrough"));
    assert_eq!(generic.last_work().unwrap().path, "/v1/messages");
    d.stop().await;
    let d = daemon(&config(
        &[endpoint("native", &native.url(), "llamacpp", 100, "")],
        "translators: {anthropic: {passthrough_enabled: false}}",
    ))
    .await;
    wait_routable(&d, &["native"], true).await;
    let r = post(&d, MSG, &ask("m", false, "hi")).await;
    assert_eq!(header(&r, "x-olla-mode"), None);
    assert_eq!(native.last_work().unwrap().path, "/v1/chat/completions");
    d.stop().await;
    native.stop().await;
    generic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translated_stream_is_incremental() {
    // 20 tokens 60 ms apart: the backend needs over a second for the whole answer.
    let m = paced_mock("slow", 20, 60).await;
    let d = daemon(&config(
        &[endpoint("slow", &m.url(), "openai", 100, "")],
        "",
    ))
    .await;
    wait_routable(&d, &["slow"], true).await;
    let started = Instant::now();
    let mut r = post(&d, MSG, &ask("m", true, "count")).await;
    assert_eq!(r.status(), 200);
    let mut first_delta = None;
    let mut all = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        if first_delta.is_none() && String::from_utf8_lossy(&chunk).contains("content_block_delta")
        {
            first_delta = Some(started.elapsed());
        }
        all.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let first = first_delta.expect("a content_block_delta arrived");
    assert!(
        total >= Duration::from_millis(1000),
        "stream took {total:?}"
    );
    // The first delta arrives while the backend still has most of its tokens to send.
    assert!(
        first + Duration::from_millis(700) < total,
        "first {first:?}, total {total:?}"
    );
    let events = check_well_formed(&all).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .count(),
        20
    );
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_anthropic_shaped() {
    let m = mock("oa", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("oa", &m.url(), "openai", 100, "")],
        "translators: {anthropic: {max_message_size: 2048}}",
    ))
    .await;
    wait_routable(&d, &["oa"], true).await;
    let check = |status: u16, kind: &'static str| {
        move |r: reqwest::Response| async move {
            assert_eq!(r.status().as_u16(), status);
            let rid = header(&r, "request-id").expect("request-id header");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], kind, "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(v["request_id"], rid);
        }
    };
    check(400, "invalid_request_error")(post(&d, MSG, "{\"model\":").await).await;
    check(400, "invalid_request_error")(post(&d, MSG, r#"{"messages":[]}"#).await).await;
    check(400, "invalid_request_error")(
        post(
            &d,
            MSG,
            r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
        )
        .await,
    )
    .await;
    check(404, "not_found_error")(post(&d, MSG, &ask("nope", false, "x")).await).await;
    check(413, "invalid_request_error")(post(&d, MSG, &ask("m", false, &"x".repeat(4096))).await)
        .await;
    let r = client()
        .get(format!("{}{MSG}", d.url()))
        .send()
        .await
        .unwrap();
    check(405, "invalid_request_error")(r).await;
    check(404, "not_found_error")(post(&d, "/olla/anthropic/v1/nothing", "{}").await).await;
    // An upstream error before the first byte keeps its status, in Anthropic's shape.
    m.update(|c| c.fault = Fault::Error { status: 400 });
    let r = post(&d, MSG, &ask("m", true, "x")).await;
    check(400, "invalid_request_error")(r).await;
    m.update(|c| c.fault = Fault::None);
    // A stream that breaks after its first bytes ends with an error event.
    m.update(|c| c.fault = Fault::DropMidStream { after_tokens: 2 });
    let r = post(&d, MSG, &ask("m", true, "x")).await;
    assert_eq!(r.status(), 200);
    let mut all = Vec::new();
    let mut r = r;
    while let Ok(Some(chunk)) = r.chunk().await {
        all.extend_from_slice(&chunk);
    }
    let events = check_well_formed(&all).unwrap();
    assert_eq!(events.last().unwrap().0, "error", "{events:?}");
    m.update(|c| c.fault = Fault::None);
    // The daemon keeps serving.
    assert_eq!(post(&d, MSG, &ask("m", false, "x")).await.status(), 200);
    d.stop().await;

    // A backend that cannot be reached: a routing error (502 or 503), Anthropic-shaped; routes
    // switched off: 404.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let d = daemon(&config(&[endpoint("gone", &gone, "openai", 100, "")], "")).await;
    let r = post(&d, MSG, &ask("m", false, "x")).await;
    let status = r.status().as_u16();
    assert!(status == 502 || status == 503, "{status}");
    assert!(header(&r, "request-id").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    let want = if status == 503 {
        "overloaded_error"
    } else {
        "api_error"
    };
    assert_eq!(v["error"]["type"], want, "{v}");
    d.stop().await;
    let d = daemon(&config(
        &[endpoint("oa", &m.url(), "openai", 100, "")],
        "translators: {anthropic: {enabled: false}}",
    ))
    .await;
    assert_eq!(post(&d, MSG, &ask("m", false, "x")).await.status(), 404);
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_stay_home_and_the_endpoint_key_is_sent() {
    let cloud = mock("cloud", &["m"]).await;
    let open = mock("open", &["o"]).await;
    let d = daemon(&config(
        &[
            endpoint("cloud", &cloud.url(), "openai", 100,
                "anthropic_messages_path: /v1/messages, auth: {type: api_key, key: endpoint-secret, header: x-api-key}"),
            endpoint("open", &open.url(), "openai", 100, ""),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["cloud", "open"], true).await;
    for (model, backend) in [("m", &cloud), ("o", &open)] {
        let r = client()
            .post(format!("{}{MSG}", d.url()))
            .header("content-type", "application/json")
            .header("x-api-key", "client-secret")
            .header("authorization", "Bearer client-secret")
            .header("anthropic-version", "2023-06-01")
            .body(ask(model, false, "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sent = backend.last_work().unwrap();
        let get = |n: &str| {
            sent.headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert!(get("authorization").is_empty(), "{:?}", sent.headers);
        assert!(!format!("{:?}", sent.headers).contains("client-secret"));
        if model == "m" {
            assert_eq!(get("x-api-key"), vec!["endpoint-secret".to_string()]);
        } else {
            assert!(get("x-api-key").is_empty());
        }
    }
    d.stop().await;
    cloud.stop().await;
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_models_and_translator_stats() {
    let llama = mock("llama", &["m"]).await;
    let oa = mock("oa", &["o"]).await;
    let d = daemon(&config(
        &[
            endpoint("llama", &llama.url(), "llamacpp", 100, ""),
            endpoint("oa", &oa.url(), "openai", 100, ""),
        ],
        "",
    ))
    .await;
    wait_routable(&d, &["llama", "oa"], true).await;
    let c =
        json!({"model": "m", "messages": [{"role": "user", "content": "one two three four five"}]})
            .to_string();
    let r = post(&d, "/olla/anthropic/v1/messages/count_tokens", &c).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-olla-token-count").as_deref(),
        Some("tokenizer")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["input_tokens"], 5);
    assert_eq!(llama.last_work().unwrap().path, "/tokenize");
    let c =
        json!({"model": "o", "messages": [{"role": "user", "content": "abcdefgh"}]}).to_string();
    let r = post(&d, "/olla/anthropic/v1/messages/count_tokens", &c).await;
    assert_eq!(
        header(&r, "x-olla-token-count").as_deref(),
        Some("estimate")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["input_tokens"], 3);

    let r = client()
        .get(format!("{}/olla/anthropic/v1/models", d.url()))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"m") && ids.contains(&"o"), "{v}");
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);

    let stats = || async {
        client()
            .get(format!("{}/internal/stats/translators", d.url()))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(stats().await["translators"], json!([]));
    assert_eq!(post(&d, MSG, &ask("m", false, "x")).await.status(), 200);
    assert_eq!(post(&d, MSG, &ask("o", true, "x")).await.status(), 200);
    assert_eq!(post(&d, MSG, &ask("zzz", false, "x")).await.status(), 404);
    let v = stats().await;
    let t = &v["translators"][0];
    assert_eq!(t["translator_name"], "anthropic");
    assert_eq!(t["total_requests"], 3);
    assert_eq!(t["passthrough_requests"], 1);
    assert_eq!(t["translation_requests"], 1);
    assert_eq!(t["streaming_requests"], 1);
    assert_eq!(t["failed_requests"], 1);
    assert_eq!(t["fallback_no_compatible_endpoints"], 1);
    assert_eq!(t["fallback_cannot_passthrough"], 1);
    assert_eq!(v["summary"]["total_passthrough"], 1);
    assert_eq!(v["summary"]["active_translators"], 1);
    d.stop().await;
    llama.stop().await;
    oa.stop().await;
}
