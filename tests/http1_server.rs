//! The client-facing HTTP/1.x connection over raw sockets: pipelining, chunked and
//! `Expect: 100-continue` request bodies, HTTP/1.0 keep-alive rules, HEAD, refused heads, and
//! a request body the service never read. Each test is named after the behaviour it protects.

mod common;

use std::time::Duration;

use common::{chat, chats, config, daemon, endpoint, mock, wait_routable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const CHAT: &str = "/olla/proxy/v1/chat/completions";

/// One parsed response: status, lower-cased head, body (de-chunked).
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }
}

/// Reads more of the answer into `buf`; it must come before `deadline`.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
    let mut chunk = [0u8; 4096];
    let n = timeout(deadline - Instant::now(), s.read(&mut chunk))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(
        n > 0,
        "connection closed mid-answer: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one response from `s` (bytes past it stay in `buf`), within 10 s.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(s, buf, deadline).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    buf.drain(..head_end + 4);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    if head_request || status == 204 || status == 304 || status < 200 {
        return answer;
    }
    if let Some(n) = answer
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while buf.len() < n {
            fill(s, buf, deadline).await;
        }
        answer.body = String::from_utf8_lossy(&buf[..n]).into_owned();
        buf.drain(..n);
    } else if answer.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf, deadline).await;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16)
                .expect("chunk size");
            while buf.len() < line_end + 2 + size + 2 {
                fill(s, buf, deadline).await;
            }
            answer.body.push_str(&String::from_utf8_lossy(
                &buf[line_end + 2..line_end + 2 + size],
            ));
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    answer
}

/// Whether the peer closes within `within` (nothing more is read).
async fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 256];
    matches!(
        timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A mock backend serving model `m` and a daemon routing to it; `extra` is top-level YAML.
async fn setup(extra: &str) -> (common::MockServer, common::Daemon) {
    let m = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &m.url(), "openai", 100, "")],
        extra,
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    (m, d)
}

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST {CHAT} HTTP/1.1\r\nhost: olla\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (m, d) = setup("").await;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let burst = format!(
        "{}GET /internal/health HTTP/1.1\r\nhost: olla\r\n\r\n{}",
        post(&chat("m", false), ""),
        post(&chat("m", true), "")
    );
    s.write_all(burst.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.contains("chat.completion"), "{first:?}");
    assert!(first.header("date").is_some(), "every response has a Date");
    let second = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(second.status, 200);
    assert!(second.body.contains("healthy"), "{second:?}");
    let third = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(third.status, 200);
    assert_eq!(
        third.header("transfer-encoding"),
        Some("chunked"),
        "{third:?}"
    );
    assert!(third.body.contains("data: [DONE]"), "{third:?}");
    assert_eq!(chats(&m), 2);
    drop(s);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_and_expect_continue_reach_the_backend_whole() {
    let (m, d) = setup("").await;
    let body = chat("m", false);
    let (a, b) = body.split_at(body.len() / 2);

    // Chunked, sent in two writes with a pause between them.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let head = format!("POST {CHAT} HTTP/1.1\r\nhost: olla\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
    s.write_all(format!("{head}{:x};ext=1\r\n{a}\r\n", a.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("chat.completion"), "{r:?}");

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let head = post(&body, "expect: 100-continue\r\n");
    let head = &head[..head.len() - body.len()];
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let interim = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    s.write_all(body.as_bytes()).await.unwrap();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(chats(&m), 2);

    // A length over the limit with Expect is refused without the body being asked for.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let big = "POST /olla/proxy/v1/chat/completions HTTP/1.1\r\nhost: olla\r\ncontent-type: application/json\r\ncontent-length: 999999999999\r\nexpect: 100-continue\r\n\r\n";
    s.write_all(big.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(
        closes_within(&mut s, Duration::from_secs(5)).await,
        "unread body: the connection closes"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_kept_alive_and_head_gets_no_body() {
    let (_m, d) = setup("").await;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"GET /internal/health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert!(
        closes_within(&mut s, Duration::from_secs(5)).await,
        "HTTP/1.0 without keep-alive closes"
    );

    let mut s = TcpStream::connect(d.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /internal/health HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(
            (r.status, r.header("connection")),
            (200, Some("keep-alive"))
        );
    }

    s.write_all(b"HEAD /internal/health HTTP/1.1\r\nhost: olla\r\n\r\nGET /version HTTP/1.1\r\nhost: olla\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut s, &mut buf, true).await;
    assert_eq!(head.status, 200, "{head:?}");
    let next = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(
        next.status, 200,
        "the HEAD answer carried no body: {next:?} after {head:?}"
    );
    assert_eq!(next.header("connection"), Some("close"));
    assert!(closes_within(&mut s, Duration::from_secs(5)).await);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_ambiguous_heads_are_refused_and_closed_and_the_daemon_serves_on() {
    let (_m, d) = setup("").await;
    for (raw, status) in [
        ("GARBAGE\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 400),
        ("GET / HTTP/3.0\r\n\r\n", 505),
    ] {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let r = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(r.status, status, "{raw:?}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
        assert!(
            closes_within(&mut s, Duration::from_secs(5)).await,
            "{raw:?}"
        );
    }
    // A broken chunked body: the request fails, the daemon serves the next connection.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(
        format!("POST {CHAT} HTTP/1.1\r\nhost: olla\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = common::client()
        .get(format!("{}/internal/health", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_still_being_sent_is_drained_before_the_close_not_reset() {
    let (_m, d) =
        setup("server: {host: 127.0.0.1, port: 0, request_limits: {max_body_size: 1024}}").await;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let len = 512 * 1024;
    let head = format!("POST {CHAT} HTTP/1.1\r\nhost: olla\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The client sends its whole body while the answer comes back: the server refuses it
    // unread, and must keep reading (not close with data unread, which resets the connection
    // and can destroy the answer in flight) until the client is done.
    let (mut rd, mut wr) = s.into_split();
    let sender = tokio::spawn(async move {
        let block = vec![b' '; 16 * 1024];
        for _ in 0..len / block.len() {
            wr.write_all(&block).await?;
        }
        wr.shutdown().await
    });
    let mut got = Vec::new();
    let read = timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{read:?}: {text:?}");
    assert!(text.contains("connection: close"), "{text}");
    let sent = timeout(Duration::from_secs(10), sender)
        .await
        .unwrap()
        .unwrap();
    assert!(sent.is_ok(), "the body was drained, not reset: {sent:?}");
    d.stop().await;
}
