//! `proxy.inject_stream_usage` end to end with the mock backend: the backend is asked for
//! usage, a client that did not ask gets no usage chunk, a client that asked gets it, and
//! with the option off nothing changes.

mod common;

use common::*;
use serde_json::Value;

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_owned))
        .collect()
}

fn usage_chunks(body: &str) -> Vec<Value> {
    events(body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v["choices"].as_array().is_some_and(|c| c.is_empty()) && v["usage"].is_object())
        .collect()
}

async fn post(c: &reqwest::Client, base: &str, body: &str) -> String {
    let r = c
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_asked_for_and_hidden_from_clients_that_did_not_ask() {
    let m = paced_mock("m1", 4, 0).await;
    let d = daemon(&config(
        &[endpoint("m1", &m.url(), "openai", 100, "")],
        "proxy: {inject_stream_usage: true}\n",
    ))
    .await;
    wait_routable(&d, &["m1"], true).await;
    let c = client();
    let base = format!("http://{}", d.addr);

    // A client that did not ask: the backend is asked, the client sees no usage chunk.
    let body = post(&c, &base, &chat("m", true)).await;
    let sent: Value = serde_json::from_str(&m.last_work().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["model"], "m");
    assert!(usage_chunks(&body).is_empty(), "{body}");
    let evs = events(&body);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    assert!(evs.len() >= 5, "token events kept: {body}");

    // A client that asked: its usage chunk arrives untouched.
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let body = post(&c, &base, asked).await;
    let usage = usage_chunks(&body);
    assert_eq!(usage.len(), 1, "{body}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 4);

    // include_usage false is turned on upstream and hidden again.
    let off =
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#;
    let body = post(&c, &base, off).await;
    let sent: Value = serde_json::from_str(&m.last_work().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(usage_chunks(&body).is_empty(), "{body}");

    // Not streaming: the body goes as it was.
    let plain = chat("m", false);
    let r = c
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .body(plain.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(m.last_work().unwrap().body, plain);
    d.stop().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let m = paced_mock("m1", 3, 0).await;
    let d = daemon(&config(&[endpoint("m1", &m.url(), "openai", 100, "")], "")).await;
    wait_routable(&d, &["m1"], true).await;
    let c = client();
    let base = format!("http://{}", d.addr);
    let req = chat("m", true);
    let body = post(&c, &base, &req).await;
    assert_eq!(m.last_work().unwrap().body, req, "sent byte for byte");
    assert!(usage_chunks(&body).is_empty());
    d.stop().await;
    m.stop().await;
}
