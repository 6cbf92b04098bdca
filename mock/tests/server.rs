//! End-to-end tests of the mock over real sockets on 127.0.0.1:0, with a raw hyper client
//! (HTTP/1.1 and h2c) so frame timing and connection aborts are visible.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use olla_mock::{Fault, MockConfig, MockServer, MockStats};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read to its end (or to the error that ended it).
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    /// Data frames with their arrival times.
    frames: Vec<(Instant, Bytes)>,
    /// The body ended with an error (connection aborted).
    failed: bool,
}

impl Got {
    fn text(&self) -> String {
        self.frames
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text())
            .unwrap_or_else(|e| panic!("bad JSON {}: {e}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("X-Test-Header", "hello")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|e| panic!("request: {e}"))
}

async fn read_all(resp: hyper::Response<Incoming>) -> Got {
    let (parts, mut body) = resp.into_parts();
    let mut frames = Vec::new();
    let mut failed = false;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    frames.push((Instant::now(), data));
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    Got {
        status: parts.status,
        headers: parts.headers,
        frames,
        failed,
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn send(addr: SocketAddr, method: Method, path: &str, body: &str) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(request(method, path, body))
        .await
        .expect("response headers");
    read_all(resp).await
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    send(addr, Method::GET, path, "").await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Got {
    send(addr, Method::POST, path, body).await
}

/// Polls `f` until it holds or the deadline passes.
async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_is_paced_by_token_delay() {
    let mock = MockServer::start(MockConfig {
        name: "gpu1".into(),
        models: vec!["m1".into(), "m2".into()],
        tokens: 4,
        token_delay_ms: 60,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let got = post(
        mock.addr(),
        "/v1/chat/completions",
        r#"{"model":"m2","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.failed);
    assert_eq!(got.header("x-mock-name"), Some("gpu1"));
    assert_eq!(got.header("content-type"), Some("text/event-stream"));
    // head + 4 tokens + tail arrive as separate frames, tokens ~60 ms apart.
    assert!(got.frames.len() >= 5, "frames: {}", got.frames.len());
    let first = got.frames[1].0;
    let last = got.frames[got.frames.len() - 1].0;
    assert!(
        last - first >= Duration::from_millis(170),
        "tokens not spaced: {:?}",
        last - first
    );
    let events = sse_data(&got.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 ");
    assert!(chunks.iter().all(|c| c["model"] == "m2"));
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    let stats = mock.stats();
    assert_eq!(
        (stats.requests, stats.completed, stats.cancelled),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn fault_error_returns_status_and_retry_after() {
    let mock = MockServer::start(MockConfig {
        fault: Fault::Error { status: 503 },
        retry_after: Some("3".into()),
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let got = post(
        mock.addr(),
        "/v1/chat/completions",
        r#"{"model":"mock-model"}"#,
    )
    .await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.header("retry-after"), Some("3"));
    assert!(got.json()["error"]["message"].is_string());
    let got = post(mock.addr(), "/api/chat", r#"{"model":"mock-model"}"#).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(got.json()["error"].is_string());
    // Health and model lists are not affected by `fault`.
    assert_eq!(get(mock.addr(), "/health").await.status, StatusCode::OK);
    assert_eq!(get(mock.addr(), "/v1/models").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_then_client_drop_counts_cancelled() {
    let mock = MockServer::start(MockConfig {
        fault: Fault::Hang,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let mut stream = TcpStream::connect(mock.addr()).await.expect("connect");
    let body = r#"{"model":"mock-model"}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).await.expect("write");
    wait_for("request in flight", Duration::from_secs(2), || {
        mock.stats().in_flight == 1
    })
    .await;
    // Nothing comes back while hanging.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    assert!(read.is_err(), "a hanging mock answered");
    let dropped = Instant::now();
    drop(stream);
    wait_for("cancel", Duration::from_millis(500), || {
        mock.stats().cancelled == 1
    })
    .await;
    assert!(dropped.elapsed() < Duration::from_millis(500));
    let s = mock.stats();
    assert_eq!((s.requests, s.completed, s.in_flight), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_stream_counts_cancelled() {
    let mock = MockServer::start(MockConfig {
        tokens: 50,
        token_delay_ms: 20,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let stream = TcpStream::connect(mock.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut resp = sender
        .send_request(request(
            Method::POST,
            "/v1/chat/completions",
            r#"{"stream":true}"#,
        ))
        .await
        .expect("headers");
    let _ = resp.body_mut().frame().await;
    drop(resp);
    drop(sender);
    conn.abort();
    wait_for("cancel", Duration::from_millis(500), || {
        mock.stats().cancelled == 1
    })
    .await;
}

#[tokio::test]
async fn set_config_takes_effect_at_run_time() {
    let mock = MockServer::start(MockConfig::default())
        .await
        .expect("start");
    let got = post(mock.addr(), "/v1/chat/completions", "{}").await;
    assert_eq!(got.json()["usage"]["completion_tokens"], 8);

    mock.update(|c| {
        c.tokens = 2;
        c.name = "renamed".into();
        c.models = vec!["new-model".into()];
    });
    let got = post(
        mock.addr(),
        "/v1/chat/completions",
        r#"{"model":"new-model"}"#,
    )
    .await;
    assert_eq!(got.json()["choices"][0]["message"]["content"], "tok0 tok1 ");
    assert_eq!(got.header("x-mock-name"), Some("renamed"));
    let got = get(mock.addr(), "/api/tags").await;
    assert_eq!(got.json()["models"][0]["name"], "new-model");
    let got = post(
        mock.addr(),
        "/v1/chat/completions",
        r#"{"model":"mock-model"}"#,
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["error"]["code"], "model_not_found");

    let mut cfg = mock.config();
    cfg.health_status = 503;
    mock.set_config(cfg);
    assert_eq!(
        get(mock.addr(), "/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(mock.addr(), "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn control_routes() {
    let mock = MockServer::start(MockConfig::default())
        .await
        .expect("start");
    let addr = mock.addr();
    let got = get(addr, "/_mock/config").await;
    let cfg: MockConfig = serde_json::from_str(&got.text()).expect("config JSON");
    assert_eq!(cfg, MockConfig::default());

    let got = post(addr, "/_mock/config", r#"{"tokens":3,"fault":"error:502"}"#).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["fault"]["mode"], "error");
    assert_eq!(mock.config().tokens, 3);
    assert_eq!(mock.config().fault, Fault::Error { status: 502 });
    assert_eq!(mock.config().name, "olla-mock");
    assert_eq!(
        post(addr, "/v1/completions", "{}").await.status,
        StatusCode::BAD_GATEWAY
    );
    let got = post(addr, "/_mock/config", r#"{"fault":{"mode":"none"}}"#).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        post(addr, "/_mock/config", r#"{"bogus":1}"#).await.status,
        StatusCode::BAD_REQUEST
    );

    let got = post(addr, "/v1/completions?trace=1", r#"{"prompt":"x"}"#).await;
    assert_eq!(got.json()["choices"][0]["text"], "tok0 tok1 tok2 ");

    let got = get(addr, "/_mock/last").await;
    assert_eq!(got.status, StatusCode::OK);
    let last = got.json();
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], "/v1/completions");
    assert_eq!(last["query"], "trace=1");
    assert_eq!(last["body"], r#"{"prompt":"x"}"#);
    let headers = last["headers"].as_array().expect("headers");
    assert!(headers
        .iter()
        .any(|h| h[0] == "x-test-header" && h[1] == "hello"));
    assert_eq!(
        mock.last_request().map(|r| r.path),
        Some("/v1/completions".to_owned())
    );

    let stats: Value = get(addr, "/_mock/stats").await.json();
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["by_path"]["/v1/completions"], 2);
    assert!(stats["by_path"].get("/_mock/stats").is_none());

    let got = post(addr, "/_mock/reset", "").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(mock.stats(), MockStats::default());
    assert_eq!(get(addr, "/_mock/last").await.status, StatusCode::NOT_FOUND);
    assert!(mock.last_request().is_none());
    assert_eq!(get(addr, "/_mock/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mid_stream_aborts_after_tokens() {
    let mock = MockServer::start(MockConfig {
        fault: Fault::DropMidStream { after_tokens: 2 },
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let got = post(mock.addr(), "/v1/chat/completions", r#"{"stream":true}"#).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed, "stream ended cleanly");
    let text = got.text();
    assert!(text.contains("tok0 ") && text.contains("tok1 "), "{text}");
    assert!(!text.contains("tok2") && !text.contains("[DONE]"), "{text}");

    let got = post(mock.addr(), "/v1/chat/completions", "{}").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.failed, "non-stream body completed");

    mock.update(|c| c.fault = Fault::MalformedJson);
    let got = post(mock.addr(), "/v1/chat/completions", "{}").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&got.text()).is_err());
    let got = post(mock.addr(), "/v1/chat/completions", r#"{"stream":true}"#).await;
    let events = sse_data(&got.text());
    assert_eq!(events.len(), 2);
    assert!(serde_json::from_str::<Value>(&events[0]).is_err());
    assert_eq!(events[1], "[DONE]");
}

#[tokio::test]
async fn ttft_delays_headers() {
    let mock = MockServer::start(MockConfig {
        ttft_ms: 150,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let start = Instant::now();
    let got = post(
        mock.addr(),
        "/v1/messages",
        r#"{"model":"mock-model","max_tokens":16}"#,
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["content"][0]["type"], "text");
    // Health is not delayed by ttft.
    let start = Instant::now();
    assert_eq!(get(mock.addr(), "/health").await.status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn dialects_over_the_wire() {
    let mock = MockServer::start(MockConfig {
        tokens: 3,
        models: vec!["llama3:8b".into()],
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let addr = mock.addr();

    // Ollama streams NDJSON by default.
    let got = post(addr, "/api/chat", r#"{"model":"llama3:8b","messages":[]}"#).await;
    assert_eq!(got.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = got
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["done"], true);
    assert_eq!(lines[3]["eval_count"], 3);
    let got = post(
        addr,
        "/api/generate",
        r#"{"model":"llama3:8b","prompt":"x","stream":false}"#,
    )
    .await;
    assert_eq!(got.json()["response"], "tok0 tok1 tok2 ");

    // Anthropic SSE with event lines.
    let got = post(
        addr,
        "/v1/messages",
        r#"{"model":"llama3:8b","stream":true,"max_tokens":2}"#,
    )
    .await;
    let text = got.text();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    let v = get(addr, "/v1/models").await.json();
    assert_eq!(v["data"][0]["id"], "llama3:8b");
    assert_eq!(v["models"][0]["name"], "llama3:8b");
    let v = get(addr, "/api/v0/models").await.json();
    assert_eq!(v["data"][0]["compatibility_type"], "gguf");
    let v = get(addr, "/api/tags").await.json();
    assert_eq!(v["models"][0]["details"]["family"], "llama");
    assert_eq!(get(addr, "/").await.text(), "Ollama is running");
    assert_eq!(get(addr, "/api/version").await.json()["version"], "0.12.0");
    assert_eq!(get(addr, "/props").await.json()["total_slots"], 4);
    assert!(get(addr, "/slots").await.json().is_array());
    assert!(get(addr, "/version").await.json()["version"].is_string());
    let v = post(
        addr,
        "/v1/embeddings",
        r#"{"model":"llama3:8b","input":["a","b","c"]}"#,
    )
    .await
    .json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(3));
    let v = post(addr, "/api/embed", r#"{"model":"llama3:8b","input":"a"}"#)
        .await
        .json();
    assert_eq!(v["embeddings"][0].as_array().map(Vec::len), Some(8));
    let got = post(addr, "/api/show", r#"{"model":"nope"}"#).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["error"], "model 'nope' not found");
    let got = post(
        addr,
        "/v1/messages/count_tokens",
        r#"{"model":"llama3:8b","messages":[]}"#,
    )
    .await;
    assert!(got.json()["input_tokens"].as_u64().is_some_and(|n| n > 0));
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let mock = MockServer::start(MockConfig::default())
        .await
        .expect("start");
    let stream = TcpStream::connect(mock.addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = request(Method::POST, "/v1/chat/completions", r#"{"stream":true}"#);
    *req.uri_mut() = format!("{}/v1/chat/completions", mock.url())
        .parse()
        .expect("uri");
    req.headers_mut().remove("host");
    let got = read_all(sender.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.text().ends_with("data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_aborts_connections_and_frees_the_port() {
    let mock = MockServer::start(MockConfig {
        tokens: 100,
        token_delay_ms: 50,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let addr = mock.addr();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(request(
            Method::POST,
            "/v1/chat/completions",
            r#"{"stream":true}"#,
        ))
        .await
        .expect("headers");
    let reader = tokio::spawn(read_all(resp));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let stopped = Instant::now();
    mock.stop().await;
    let got = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .expect("stream ended after stop")
        .expect("reader task");
    assert!(got.failed, "stream should end with an error");
    assert!(stopped.elapsed() < Duration::from_millis(500));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    // The port can be taken again (a "restarted" backend).
    let again = MockServer::start_at(addr, MockConfig::default())
        .await
        .expect("rebind");
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);
    drop(again);
}
