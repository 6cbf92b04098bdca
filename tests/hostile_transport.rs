//! Regression tests for what a hostile client or a faulty backend can do to the transport:
//! response framing, connection deadlines, the connection cap, clients that stop reading,
//! header limits, and config keys that are accepted but inert. Each test is named after the
//! behaviour it protects; backends that misbehave are raw sockets scripted by the test.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, config, daemon, endpoint, read_raw_request, wait_routable, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// One request as the fake backend saw it.
struct Seen {
    path: String,
    /// Requests served on this connection before this one.
    nth_on_conn: usize,
}

/// What the fake backend answers.
enum Reply {
    Bytes(Vec<u8>),
    /// A chunked 200 that never ends: 16 KiB chunks as fast as the peer takes them.
    Endless,
}

/// A raw-socket backend: answers its health and model-list probes itself and every other
/// request as `script` says.
struct Fake {
    url: String,
    /// Endless streams started, and those whose connection olla closed.
    endless_started: Arc<AtomicUsize>,
    endless_closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn fake_backend(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let endless_started = Arc::new(AtomicUsize::new(0));
    let endless_closed = Arc::new(AtomicUsize::new(0));
    let counters = (endless_started.clone(), endless_closed.clone());
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_fake(conn, script.clone(), counters.clone()));
        }
    });
    Fake {
        url,
        endless_started,
        endless_closed,
        task,
    }
}

async fn serve_fake(
    mut conn: TcpStream,
    script: Arc<dyn Fn(&Seen) -> Reply + Send + Sync>,
    (started, closed): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    let mut buf = Vec::new();
    for nth in 0..1000 {
        let Some(req) = read_raw_request(&mut conn, &mut buf).await else {
            return;
        };
        let path = req.target;
        let reply = match path.as_str() {
            "/health" => Reply::Bytes(ok(r#"{"status":"ok"}"#)),
            "/v1/models" => Reply::Bytes(ok(
                r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#,
            )),
            _ => script(&Seen {
                path,
                nth_on_conn: nth,
            }),
        };
        match reply {
            Reply::Bytes(b) => {
                if conn.write_all(&b).await.is_err() {
                    return;
                }
            }
            Reply::Endless => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head).await.is_err() {
                    return;
                }
                started.fetch_add(1, Ordering::SeqCst);
                let event = format!("data: {}\n\n", "x".repeat(16 * 1024 - 8));
                let chunk = format!("{:x}\r\n{event}\r\n", event.len()).into_bytes();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(120) {
                    if conn.write_all(&chunk).await.is_err() {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// A daemon in front of one fake llama.cpp backend named `fake`, routable.
async fn daemon_for(fake: &Fake, server: &str, endpoint_extra: &str) -> common::Daemon {
    let server = format!("server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 1s{server}}}\n");
    let d = daemon(&config(
        &[endpoint("fake", &fake.url, "llamacpp", 100, endpoint_extra)],
        &server,
    ))
    .await;
    wait_routable(&d, &["fake"], false).await;
    d
}

/// Reads until the peer closes (or resets) the connection; `Err` if it stays open for `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "still open after {within:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to olla")
}

// ---- Response framing (RFC 9112 §6.3) ----

#[tokio::test]
async fn a_response_with_both_length_and_chunked_is_read_as_chunked_and_loses_its_length() {
    let fake = fake_backend(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let d = daemon_for(&fake, "", "").await;
    let r = client()
        .get(format!("{}/olla/proxy/framing", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none_or(|v| v == "11"),
        "a wrong content-length reached the client: {:?}",
        r.headers().get("content-length")
    );
    assert_eq!(r.text().await.unwrap(), "hello world");
    d.stop().await;
}

#[tokio::test]
async fn a_reused_connection_answering_garbage_is_retried_on_a_fresh_connection() {
    let garbage = Arc::new(AtomicUsize::new(0));
    let g = garbage.clone();
    let fake = fake_backend(move |seen| {
        if seen.path == "/garbage" && seen.nth_on_conn > 0 {
            // Leftovers of an earlier exchange, then a valid response.
            g.fetch_add(1, Ordering::SeqCst);
            let mut out = b"hello".to_vec();
            out.extend(ok(r#"{"late":true}"#));
            return Reply::Bytes(out);
        }
        Reply::Bytes(ok(&format!(r#"{{"path":"{}"}}"#, seen.path)))
    })
    .await;
    let d = daemon_for(&fake, "", "").await;
    let c = client();
    for _ in 0..3 {
        let r = c
            .get(format!("{}/olla/proxy/warm", d.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let r = c
            .get(format!("{}/olla/proxy/garbage", d.url()))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("/garbage"), "{body}");
    }
    assert!(
        garbage.load(Ordering::SeqCst) > 0,
        "the pooled connection was never reused, so nothing was tested"
    );
    d.stop().await;
}

// ---- Connection deadlines ----

#[tokio::test]
async fn sockets_that_send_nothing_are_closed_after_read_header_timeout() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, ", read_header_timeout: 1s", "").await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(connect(d.addr).await);
    }
    let mut preface = connect(d.addr).await;
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut half_head = connect(d.addr).await;
    half_head
        .write_all(b"GET /internal/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    idle.push(preface);
    idle.push(half_head);
    let started = Instant::now();
    for conn in &mut idle {
        closed_within(conn, Duration::from_secs(15)).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the deadline"
    );
    wait_until(Duration::from_secs(5), "live connections back to 0", || {
        let live: usize = d.connections_per_thread().iter().sum();
        async move { live == 0 }
    })
    .await;
    d.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_a_408_json_error() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, ", read_timeout: 1s", "").await;
    let mut conn = connect(d.addr).await;
    conn.write_all(
        b"POST /olla/proxy/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let got = closed_within(&mut conn, Duration::from_secs(15))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    d.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_are_closed_after_idle_timeout() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, ", idle_timeout: 1s", "").await;
    let mut conn = connect(d.addr).await;
    for _ in 0..2 {
        conn.write_all(b"GET /internal/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\"status\"") {
            let mut chunk = [0u8; 4096];
            let n = timeout(Duration::from_secs(10), conn.read(&mut chunk))
                .await
                .expect("a response")
                .unwrap();
            assert!(n > 0, "closed while a request was answered");
            got.extend_from_slice(&chunk[..n]);
        }
    }
    let idle_from = Instant::now();
    closed_within(&mut conn, Duration::from_secs(15))
        .await
        .unwrap();
    assert!(idle_from.elapsed() >= Duration::from_millis(500));
    d.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, ", max_connections: 4, read_header_timeout: 30s", "").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(d.addr).await);
    }
    wait_until(Duration::from_secs(5), "4 live connections", || {
        let live: usize = d.connections_per_thread().iter().sum();
        async move { live == 4 }
    })
    .await;
    let mut extra = connect(d.addr).await;
    closed_within(&mut extra, Duration::from_secs(3))
        .await
        .expect("the connection over the cap is closed at once");
    drop(held);
    let c = client();
    let url = format!("{}/internal/status", d.url());
    let mut rejected = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(&url).send().await {
            let v: serde_json::Value = r.json().await.unwrap();
            rejected = v["system"]["rejected_connections"].as_u64().unwrap_or(0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rejected >= 1, "rejected_connections = {rejected}");
    d.stop().await;
}

// ---- A client that stops reading ----

/// Sends a streaming request from a socket with a tiny receive buffer that never reads.
async fn stalled_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(b"GET /olla/proxy/endless HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    conn
}

/// Waits until a second request gets through the single backend slot.
async fn slot_freed(d: &common::Daemon, within: Duration) {
    let c = client();
    let url = format!("{}/olla/proxy/quick", d.url());
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = c.get(&url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client still holds the backend slot after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn endless_or_quick(seen: &Seen) -> Reply {
    if seen.path == "/endless" {
        Reply::Endless
    } else {
        Reply::Bytes(ok(r#"{"quick":true}"#))
    }
}

/// A backend streaming without end behind `max_concurrency: 1`, and a client that asks for the
/// stream and never reads: the slot must come free (a second request gets through) and the
/// upstream connection must be closed. Returns the daemon and the stalled socket.
async fn stalled_client_is_released(
    server: &str,
    timeouts: &str,
) -> (Fake, common::Daemon, TcpStream) {
    let fake = fake_backend(endless_or_quick).await;
    let endpoint = format!("max_concurrency: 1, queue_size: 0, timeouts: {timeouts}");
    let d = daemon_for(&fake, server, &endpoint).await;
    let stalled = stalled_client(d.addr).await;
    wait_until(Duration::from_secs(10), "the stream started", || {
        let n = fake.endless_started.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    slot_freed(&d, Duration::from_secs(20)).await;
    wait_until(
        Duration::from_secs(10),
        "the upstream connection closed",
        || {
            let n = fake.endless_closed.load(Ordering::SeqCst);
            async move { n >= 1 }
        },
    )
    .await;
    (fake, d, stalled)
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_backend_slot_when_the_total_limit_passes() {
    let (_fake, d, _stalled) = stalled_client_is_released("", "{total: 2s, idle: 60s}").await;
    d.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_backend_slot_after_the_idle_limit() {
    let (_fake, d, _stalled) = stalled_client_is_released("", "{idle: 2s}").await;
    d.stop().await;
}

#[tokio::test]
async fn write_timeout_cuts_a_client_that_stops_reading() {
    let (_fake, d, mut stalled) =
        stalled_client_is_released(", write_timeout: 1s", "{idle: 120s}").await;
    // The connection itself is closed: reading now drains what was buffered, then ends.
    closed_within(&mut stalled, Duration::from_secs(20))
        .await
        .expect("the stalled connection is cut");
    d.stop().await;
}

// ---- Header limits ----

#[tokio::test]
async fn a_hundred_extra_headers_within_max_header_size_are_served() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, "", "").await;
    let mut req = client().get(format!("{}/internal/health", d.url()));
    for i in 0..99 {
        req = req.header(format!("x-extra-{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
}

#[tokio::test]
async fn a_head_over_max_header_size_gets_a_json_431() {
    let fake = fake_backend(|_| Reply::Bytes(ok("{}"))).await;
    let d = daemon_for(&fake, ", request_limits: {max_header_size: 2048}", "").await;
    let mut req = client().get(format!("{}/olla/proxy/x", d.url()));
    for i in 0..40 {
        req = req.header(format!("x-extra-{i}"), "v".repeat(60));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 431);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large");
    d.stop().await;
}

// ---- Config: inert keys and secrets ----

fn validate(yaml: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "olla-hostile-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_olla"))
        .arg("--validate-config")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn validate_config_lists_the_keys_olla_accepts_but_does_not_act_on() {
    let (ok, out) = validate(
        "server:\n  rate_limits: {per_ip_requests_per_minute: 10, health_requests_per_minute: 5}\n  cors: {enabled: true}\nproxy:\n  profile_filter: {include: [a]}\ndashboard: {enabled: false, gate_internal_api: true}\n",
    );
    assert!(ok, "{out}");
    for key in [
        "server.rate_limits.health_requests_per_minute",
        "proxy.profile_filter",
        "dashboard.gate_internal_api",
    ] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
    assert!(!out.contains("server.cors"), "CORS is implemented:\n{out}");
    let (ok, out) = validate("server: {port: 1234}\n");
    assert!(ok, "{out}");
    assert!(!out.contains("not acted on"), "{out}");
}

#[test]
fn config_errors_never_print_secrets() {
    let (ok, out) = validate(
        "discovery:\n  static:\n    endpoints:\n      - {name: a, type: ollama, url: \"http://admin:hunter2secret@10.0.0.1:11434\"}\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("credentials in the URL"), "{out}");
    assert!(
        !out.contains("hunter2secret") && !out.contains("admin:"),
        "{out}"
    );
    let (ok, out) = validate(
        "discovery:\n  static:\n    endpoints:\n      - {name: a, type: ollama, url: \"http://h:1\", auth: \"Bearer sk-live-topsecret\"}\n",
    );
    assert!(!ok, "{out}");
    assert!(!out.contains("sk-live-topsecret"), "{out}");
    let (ok, out) = validate(
        "discovery:\n  static:\n    endpoints:\n      - {name: a, type: ollama, url: \"http://h:1\", auth: {type: bearer, token: [sk-live-topsecret]}}\n",
    );
    assert!(!ok, "{out}");
    assert!(!out.contains("sk-live-topsecret"), "{out}");
}
