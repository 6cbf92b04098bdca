//! Shared integration-test harness: start mock backends and an olla daemon on 127.0.0.1:0 from a
//! YAML config, an HTTP client, and deadline-bounded polling (no sleep-and-hope).
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

pub use olla::Daemon;
#[allow(unused_imports)]
pub use olla_mock::{Fault, MockConfig, MockServer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Starts a mock backend serving `models`.
pub async fn mock(name: &str, models: &[&str]) -> MockServer {
    MockServer::start(MockConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

/// Starts a mock backend serving model `m` that streams `tokens` tokens `token_delay_ms` apart.
pub async fn paced_mock(name: &str, tokens: usize, token_delay_ms: u64) -> MockServer {
    MockServer::start(MockConfig {
        name: name.into(),
        models: vec!["m".into()],
        tokens,
        token_delay_ms,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

/// One endpoint line for a config: `{name, url, type, priority}` plus extra YAML flow keys.
pub fn endpoint(name: &str, url: &str, kind: &str, priority: i64, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("      - {{name: {name}, url: \"{url}\", type: {kind}, priority: {priority}, check_interval: 200ms, check_timeout: 500ms{extra}}}\n")
}

/// A config with the given endpoints and extra top-level YAML (e.g. a `proxy:` block).
pub fn config(endpoints: &[String], extra: &str) -> String {
    let server = if extra.contains("server:") {
        ""
    } else {
        "server: {host: 127.0.0.1, port: 0, shutdown_timeout: 5s}\n"
    };
    format!(
        "{server}{extra}\ndiscovery:\n  model_discovery: {{interval: 1s, timeout: 2s}}\n  static:\n    endpoints:\n{}",
        endpoints.concat()
    )
}

/// Starts a daemon from YAML text on 127.0.0.1:0.
pub async fn daemon(yaml: &str) -> Daemon {
    let cfg = olla::config::parse(yaml, &|_| None)
        .unwrap_or_else(|e| panic!("config parses: {e}\n{yaml}"));
    let rt = olla::config::resolve(&cfg).unwrap_or_else(|e| panic!("config resolves: {e:?}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Daemon::start(rt, listener).await.expect("daemon starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls `check` every 20 ms until it is true or `within` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every named backend is routable (status endpoint says so) and, when
/// `with_models`, has a discovered model list.
pub async fn wait_routable(d: &Daemon, names: &[&str], with_models: bool) {
    let app = d.app.clone();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_until(
        Duration::from_secs(10),
        &format!("backends {names:?} routable"),
        || {
            let app = app.clone();
            let names = names.clone();
            async move {
                let table = app.tree.published.table();
                let catalog = app.tree.published.catalog.load();
                names.iter().all(|n| {
                    table
                        .get(n)
                        .is_some_and(|b| b.is_routable(tokio::time::Instant::now()))
                        && (!with_models || catalog.backends.contains_key(n))
                })
            }
        },
    )
    .await;
}

/// Chat completions a mock answered on the OpenAI path.
pub fn chats(m: &MockServer) -> u64 {
    m.stats()
        .by_path
        .get("/v1/chat/completions")
        .copied()
        .unwrap_or(0)
}

/// A chat completion request body.
pub fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// POSTs a chat completion through `/olla/proxy`; returns (status, X-Olla-Endpoint, body).
pub async fn post_chat(c: &reqwest::Client, base: &str, model: &str) -> (u16, String, String) {
    let r = c
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(model, false))
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let ep = r
                .headers()
                .get("x-olla-endpoint")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            (status, ep, body)
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

/// Steady non-stream load: `workers` tasks each posting chats through `/olla/proxy` in a loop
/// bounded by `max_per_worker` requests, until stopped. Counts successes per serving endpoint
/// and failures (each failure is printed).
pub struct SteadyLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    served: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    pub fn start(base: &str, workers: usize, max_per_worker: usize) -> Self {
        use std::sync::atomic::Ordering;
        let load = SteadyLoad {
            stop: Default::default(),
            failures: Default::default(),
            served: Default::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..workers)
            .map(|_| {
                let (stop, failures, served) = (
                    load.stop.clone(),
                    load.failures.clone(),
                    load.served.clone(),
                );
                let (c, base) = (client(), base.to_string());
                tokio::spawn(async move {
                    for _ in 0..max_per_worker {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (status, ep, body) = post_chat(&c, &base, "m").await;
                        if status == 200 {
                            *served.lock().unwrap().entry(ep).or_default() += 1;
                        } else {
                            eprintln!("request failed: {status} {body}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        SteadyLoad { tasks, ..load }
    }

    /// Successful requests so far, all endpoints.
    pub fn served(&self) -> usize {
        self.served.lock().unwrap().values().sum()
    }

    /// Successful requests served by one endpoint so far.
    pub fn served_by(&self, endpoint: &str) -> usize {
        self.served
            .lock()
            .unwrap()
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the workers, waits for them, and returns the number of failed requests.
    pub async fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load worker");
        }
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One HTTP/1.1 request as a scripted raw-socket fake backend read it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Largest request head a fake backend reads.
const RAW_MAX_HEAD: usize = 64 * 1024;
/// Largest request body a fake backend keeps.
const RAW_MAX_BODY: usize = 8 << 20;

/// Reads the next request off `s` (bytes already read past it stay in `buf`, for keep-alive);
/// `None` at end of stream, on an error, or for a head over 64 KiB.
pub async fn read_raw_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > RAW_MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(RAW_MAX_BODY);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some(RawRequest {
        method,
        target,
        headers,
        body,
    })
}
