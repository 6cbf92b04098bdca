//! Integration tests for the hand-written HTTP/1.1 upstream client in
//! `olla_actors::backend::h1` (`H1Pool`, `H1Body`, `H1Error`), run against scripted servers on
//! real loopback sockets (`127.0.0.1:0`).
//!
//! Covered: body framing (chunked bursts handed over as one frame, Content-Length split across
//! writes, read-until-close, HEAD, `100 Continue` interim responses); connection pooling (reuse
//! after a fully read body, no reuse after `Connection: close`, a dropped body or an early
//! close); the single retry when a reused connection closes under the request; errors for
//! malformed or oversized response heads, bodies cut short and unreachable backends; and the
//! request bytes the client puts on the wire.
//!
//! Each scripted server counts accepted connections and logs every request it read (with the
//! index of the connection it came on), so tests can tell exactly which connection served what.
//! Every client step and every server read is bounded by a timeout; nothing waits on a sleep.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use olla_actors::backend::h1::{H1Body, H1Error, H1Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Upper bound for one step of a test (a send, a body frame, a server read). Only reached when
/// something is broken; passing tests take milliseconds.
const STEP: Duration = Duration::from_secs(2);
/// Server-side pause used to split a response into separate TCP writes.
const SERVER_PAUSE: Duration = Duration::from_millis(50);
/// Most frames a test body may yield before the test gives up.
const MAX_FRAMES: usize = 1_000;
/// Most requests a scripted connection serves before it gives up.
const MAX_REQUESTS: usize = 16;
/// Largest request a scripted server buffers.
const MAX_REQUEST_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Scripted server
// ---------------------------------------------------------------------------------------------

/// One request as the scripted server read it off the wire.
#[derive(Debug, Clone)]
struct Received {
    /// Accept order of the connection it arrived on (0 = first connection).
    conn: usize,
    /// Request line and header lines, without the final blank line.
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// All values of header `name` (case-insensitive), in wire order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// How a scripted connection saw the client end of its socket.
#[derive(Debug, PartialEq, Eq)]
enum PeerState {
    /// `read` returned 0.
    Eof,
    /// `read` failed (e.g. a reset because the client closed with unread data).
    Error(std::io::ErrorKind),
    /// Neither within the deadline.
    StillOpen,
}

/// One accepted connection, handed to the test's script.
struct Conn {
    index: usize,
    stream: TcpStream,
    buf: Vec<u8>,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Conn {
    /// Reads one request: the head up to the blank line plus a `content-length` body. `None`
    /// when the client closed (or went quiet for `STEP`) before a full request arrived.
    async fn read_request(&mut self) -> Option<Received> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let length = head
                    .split("\r\n")
                    .skip(1)
                    .filter_map(|line| line.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| {
                        v.trim().parse::<usize>().expect("request length")
                    });
                let total = end + 4 + length;
                if self.buf.len() >= total {
                    let body = self.buf[end + 4..total].to_vec();
                    self.buf.drain(..total);
                    let received = Received {
                        conn: self.index,
                        head,
                        body,
                    };
                    self.log.lock().unwrap().push(received.clone());
                    return Some(received);
                }
            }
            assert!(
                self.buf.len() < MAX_REQUEST_BYTES,
                "request larger than {MAX_REQUEST_BYTES} bytes"
            );
            let mut chunk = [0u8; 8192];
            match timeout(STEP, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Writes `bytes` in one `write_all`; `false` if the client is gone.
    async fn write(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.stream.write_all(bytes.as_ref()).await.is_ok()
    }

    /// Waits up to `within` for the client to close its end, discarding anything it sends.
    async fn wait_for_close(&mut self, within: Duration) -> PeerState {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return PeerState::Eof,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return PeerState::Error(e.kind()),
                Err(_) => return PeerState::StillOpen,
            }
        }
    }

    /// Answers every request on this connection with `reply` until the client closes.
    async fn serve(mut self, reply: impl Fn(usize, &Received) -> String) {
        for n in 0..MAX_REQUESTS {
            let Some(request) = self.read_request().await else {
                return;
            };
            if !self.write(reply(n, &request)).await {
                return;
            }
        }
    }
}

/// A listener on `127.0.0.1:0` running a script for each accepted connection.
struct Server {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let accepts = accepts.clone();
            let log = log.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let index = accepts.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(script(Conn {
                        index,
                        stream,
                        buf: Vec::new(),
                        log: log.clone(),
                    }));
                }
            }
        });
        Self {
            addr,
            accepts,
            log,
            task,
        }
    }

    fn pool(&self) -> H1Pool {
        let base: Uri = format!("http://{}", self.addr).parse().unwrap();
        H1Pool::for_url(&base, 1, Duration::from_secs(2), Duration::from_secs(30))
            .expect("plain http URL gives a pool")
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A keep-alive `200` with a Content-Length body.
fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `parts` in the chunked transfer coding, terminating chunk included.
fn chunked_body(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        out.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
    }
    out.push_str("0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

async fn send(
    pool: &H1Pool,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<H1Body>, H1Error> {
    let uri: Uri = path.parse().expect("request uri");
    bounded("send", pool.send(0, &method, &uri, headers, body)).await
}

async fn post(pool: &H1Pool, path: &str, body: &[u8]) -> Result<Response<H1Body>, H1Error> {
    send(pool, Method::POST, path, &HeaderMap::new(), body).await
}

/// What reading a body frame by frame produced.
#[derive(Debug)]
struct BodyRead {
    data: Vec<u8>,
    /// Length of each data frame, in order.
    frames: Vec<usize>,
    /// The error that ended the body, if any.
    error: Option<H1Error>,
}

/// Reads `body` to its end (or its first error) with `BodyExt::frame`.
async fn read_body(body: &mut H1Body) -> BodyRead {
    let mut read = BodyRead {
        data: Vec::new(),
        frames: Vec::new(),
        error: None,
    };
    for _ in 0..MAX_FRAMES {
        match bounded("body frame", body.frame()).await {
            None => return read,
            Some(Err(e)) => {
                read.error = Some(e);
                return read;
            }
            Some(Ok(frame)) => {
                let data = frame.into_data().expect("H1Body only yields data frames");
                read.frames.push(data.len());
                read.data.extend_from_slice(&data);
            }
        }
    }
    panic!("body yielded more than {MAX_FRAMES} frames");
}

/// Sends a POST and reads its whole body, which must end cleanly with status 200.
async fn post_ok(pool: &H1Pool, path: &str, body: &[u8]) -> BodyRead {
    let mut resp = post(pool, path, body).await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = read_body(resp.body_mut()).await;
    assert!(read.error.is_none(), "body failed: {:?}", read.error);
    read
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chunked_burst_is_one_frame_and_the_connection_is_pooled() {
    const EVENTS: [&str; 4] = [
        "data: {\"n\":1}\n\n",
        "data: {\"n\":2}\n\n",
        "data: {\"n\":3}\n\n",
        "data: [DONE]\n\n",
    ];
    const HEAD: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let server = Server::start(|mut conn| async move {
        for n in 0..MAX_REQUESTS {
            if conn.read_request().await.is_none() {
                return;
            }
            let body = chunked_body(&EVENTS);
            let ok = if n == 0 {
                // Head first, then every chunk in a single later write: the body is read by
                // the body's own poll, not alongside the head.
                conn.write(HEAD).await && {
                    tokio::time::sleep(SERVER_PAUSE).await;
                    conn.write(body).await
                }
            } else {
                // Head and all chunks in one write.
                conn.write(format!("{HEAD}{body}")).await
            };
            if !ok {
                return;
            }
        }
    })
    .await;
    let pool = server.pool();
    let expected = EVENTS.concat();

    for attempt in 0..2 {
        let read = post_ok(&pool, "/v1/chat/completions", b"{\"stream\":true}").await;
        assert_eq!(
            String::from_utf8(read.data).unwrap(),
            expected,
            "request {attempt}"
        );
        assert_eq!(
            read.frames,
            vec![expected.len()],
            "request {attempt}: all chunks of one write must leave as one data frame"
        );
        assert_eq!(pool.idle_count(), 1, "request {attempt}: connection pooled");
    }
    assert_eq!(server.accepts(), 1, "second request reused the connection");
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn content_length_body_split_across_writes_is_complete_and_reused() {
    const FIRST: &str = "{\"choices\":[{\"text\":\"first half, ";
    const SECOND: &str = "second half\"}]}";
    let server = Server::start(|mut conn| async move {
        for _ in 0..MAX_REQUESTS {
            if conn.read_request().await.is_none() {
                return;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                FIRST.len() + SECOND.len()
            );
            if !conn.write(format!("{head}{FIRST}")).await {
                return;
            }
            tokio::time::sleep(SERVER_PAUSE).await;
            if !conn.write(SECOND).await {
                return;
            }
        }
    })
    .await;
    let pool = server.pool();

    for attempt in 0..2 {
        let read = post_ok(&pool, "/v1/completions", b"{\"prompt\":\"hi\"}").await;
        assert_eq!(
            String::from_utf8(read.data).unwrap(),
            format!("{FIRST}{SECOND}"),
            "request {attempt}"
        );
        assert_eq!(pool.idle_count(), 1, "request {attempt}: connection pooled");
    }
    assert_eq!(server.accepts(), 1, "second request reused the connection");
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    // The server would happily serve more requests on the connection; only the client's respect
    // for `Connection: close` makes the second request open a new one.
    let server = Server::start(|conn| async move {
        conn.serve(|_, _| {
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_string()
        })
        .await;
    })
    .await;
    let pool = server.pool();

    let read = post_ok(&pool, "/a", b"{}").await;
    assert_eq!(read.data, b"ok");
    assert_eq!(
        pool.idle_count(),
        0,
        "a Connection: close response is not pooled"
    );

    let read = post_ok(&pool, "/b", b"{}").await;
    assert_eq!(read.data, b"ok");
    assert_eq!(
        server.accepts(),
        2,
        "second request opened a new connection"
    );
    let conns: Vec<usize> = server.received().iter().map(|r| r.conn).collect();
    assert_eq!(conns, vec![0, 1]);
}

#[tokio::test]
async fn body_delimited_by_close_is_read_to_eof() {
    let server = Server::start(|mut conn| async move {
        if conn.read_request().await.is_none() {
            return;
        }
        // Neither Content-Length nor Transfer-Encoding: the body ends when the server closes.
        if !conn
            .write("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
            .await
        {
            return;
        }
        tokio::time::sleep(SERVER_PAUSE).await;
        if !conn.write("part two").await {
            return;
        }
        drop(conn);
    })
    .await;
    let pool = server.pool();

    let mut resp = post(&pool, "/stream", b"{}").await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = read_body(resp.body_mut()).await;
    assert!(read.error.is_none(), "clean end at EOF: {:?}", read.error);
    assert_eq!(read.data, b"part one, part two");
    assert!(resp.body().is_end_stream());
    assert_eq!(
        pool.idle_count(),
        0,
        "a close-delimited connection is not pooled"
    );
}

#[tokio::test]
async fn idle_connection_closed_by_server_is_replaced() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<usize>();
    let server = Server::start(move |mut conn| {
        let closed_tx = closed_tx.clone();
        async move {
            if conn.index == 0 {
                // Answer as keep-alive, then close the connection while it idles in the pool.
                if conn.read_request().await.is_some() {
                    conn.write(ok_response("first")).await;
                }
                drop(conn);
                let _ = closed_tx.send(0);
            } else {
                conn.serve(|_, _| ok_response("second")).await;
            }
        }
    })
    .await;
    let pool = server.pool();

    let read = post_ok(&pool, "/one", b"{\"n\":1}").await;
    assert_eq!(read.data, b"first");
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(
        bounded("server close", closed_rx.recv()).await,
        Some(0),
        "server closed the idle connection"
    );

    let read = post_ok(&pool, "/two", b"{\"n\":2}").await;
    assert_eq!(read.data, b"second");
    assert_eq!(
        server.accepts(),
        2,
        "second request went on a new connection"
    );
    let log = server.received();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].conn, 1);
    assert_eq!(log[1].body, b"{\"n\":2}");
}

#[tokio::test]
async fn reused_connection_closed_under_the_request_is_retried_once() {
    let server = Server::start(|mut conn| async move {
        if conn.index == 0 {
            // First request answered as keep-alive; the second is read in full, then the
            // connection closes without a byte of response.
            if conn.read_request().await.is_none() {
                return;
            }
            if !conn.write(ok_response("conn 0")).await {
                return;
            }
            let _ = conn.read_request().await;
            drop(conn);
        } else {
            let index = conn.index;
            conn.serve(move |_, _| ok_response(&format!("conn {index}")))
                .await;
        }
    })
    .await;
    let pool = server.pool();

    let read = post_ok(&pool, "/one", b"{\"n\":1}").await;
    assert_eq!(read.data, b"conn 0");
    assert_eq!(pool.idle_count(), 1);

    let read = post_ok(&pool, "/two", b"{\"n\":2}").await;
    assert_eq!(read.data, b"conn 1", "answered by the fresh connection");
    assert_eq!(server.accepts(), 2);

    let second: Vec<usize> = server
        .received()
        .iter()
        .filter(|r| r.body == b"{\"n\":2}")
        .map(|r| r.conn)
        .collect();
    assert_eq!(
        second,
        vec![0, 1],
        "the second request reached the server twice, once per connection"
    );
    assert_eq!(pool.idle_count(), 1, "the fresh connection is pooled");
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    let server = Server::start(|mut conn| async move {
        for n in 0..MAX_REQUESTS {
            if conn.read_request().await.is_none() {
                return;
            }
            let final_response =
                "HTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 5\r\n\r\nhello";
            let ok = if n == 0 {
                // Interim and final response in one write.
                conn.write(format!("HTTP/1.1 100 Continue\r\n\r\n{final_response}"))
                    .await
            } else {
                // Interim response alone first, the final one later.
                conn.write("HTTP/1.1 100 Continue\r\nx-interim: yes\r\n\r\n")
                    .await
                    && {
                        tokio::time::sleep(SERVER_PAUSE).await;
                        conn.write(final_response).await
                    }
            };
            if !ok {
                return;
            }
        }
    })
    .await;
    let pool = server.pool();

    for attempt in 0..2 {
        let mut resp = post(&pool, "/v1/chat/completions", b"{}")
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK, "request {attempt}");
        assert_eq!(resp.headers()["x-final"], "yes", "request {attempt}");
        assert!(
            resp.headers().get("x-interim").is_none(),
            "request {attempt}: interim headers are dropped"
        );
        let read = read_body(resp.body_mut()).await;
        assert!(read.error.is_none(), "{:?}", read.error);
        assert_eq!(read.data, b"hello", "request {attempt}");
    }
    assert_eq!(server.accepts(), 1, "interim responses do not spoil reuse");
}

#[tokio::test]
async fn malformed_or_oversized_response_head_is_an_error() {
    // A status code that is not a number.
    let malformed = Server::start(|mut conn| async move {
        if conn.read_request().await.is_some() && conn.write("HTTP/1.1 abc\r\n\r\n").await {
            conn.wait_for_close(STEP).await;
        }
    })
    .await;
    let pool = malformed.pool();
    let err = post(&pool, "/", b"{}")
        .await
        .expect_err("a malformed head is an error");
    assert!(matches!(err, H1Error::Head(_)), "got {err:?}");
    assert!(!err.is_connect());
    assert_eq!(pool.idle_count(), 0);

    // A head that never ends and is well over 64 KiB.
    let oversized = Server::start(|mut conn| async move {
        if conn.read_request().await.is_none() {
            return;
        }
        let mut head = String::from("HTTP/1.1 200 OK\r\nx-big: ");
        head.push_str(&"a".repeat(70 * 1024));
        if conn.write(head).await {
            conn.wait_for_close(STEP).await;
        }
    })
    .await;
    let pool = oversized.pool();
    let err = post(&pool, "/", b"{}")
        .await
        .expect_err("an oversized head is an error");
    assert!(matches!(err, H1Error::Head(_)), "got {err:?}");
    assert_eq!(pool.idle_count(), 0);
}

/// The 64 KiB head limit must hold however the head is split into reads. Here the first 65 000
/// bytes arrive (just under the limit, so the client keeps reading), then the rest of a complete
/// 100 000-byte head arrives in one piece.
#[tokio::test]
async fn complete_head_over_64_kib_is_rejected_however_it_is_split() {
    const TOTAL_HEAD: usize = 100_000;
    const FIRST_PART: usize = 65_000;
    let server = Server::start(|mut conn| async move {
        if conn.read_request().await.is_none() {
            return;
        }
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ");
        head.push_str(&"a".repeat(TOTAL_HEAD - head.len() - 4));
        head.push_str("\r\n\r\n");
        assert_eq!(head.len(), TOTAL_HEAD);
        if !conn.write(&head[..FIRST_PART]).await {
            return;
        }
        tokio::time::sleep(SERVER_PAUSE).await;
        if conn.write(format!("{}ok", &head[FIRST_PART..])).await {
            conn.wait_for_close(STEP).await;
        }
    })
    .await;
    let pool = server.pool();
    match post(&pool, "/", b"{}").await {
        Err(err) => assert!(matches!(err, H1Error::Head(_)), "got {err:?}"),
        Ok(resp) => panic!(
            "a {TOTAL_HEAD}-byte head was accepted (status {}, x-big of {} bytes)",
            resp.status(),
            resp.headers()["x-big"].len()
        ),
    }
}

#[tokio::test]
async fn dropping_the_body_mid_stream_closes_the_connection() {
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel::<(PeerState, Duration)>();
    let server = Server::start(move |mut conn| {
        let peer_tx = peer_tx.clone();
        async move {
            if conn.read_request().await.is_none() {
                return;
            }
            let first = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            if !conn.write(first).await {
                return;
            }
            // No further chunk: the body stays open until the client gives up on it.
            let started = Instant::now();
            let state = conn.wait_for_close(Duration::from_secs(1)).await;
            let _ = peer_tx.send((state, started.elapsed()));
        }
    })
    .await;
    let pool = server.pool();

    let mut resp = post(&pool, "/stream", b"{}").await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let frame = bounded("first frame", resp.body_mut().frame())
        .await
        .expect("a frame")
        .expect("not an error");
    assert_eq!(frame.into_data().unwrap(), "first");
    drop(resp);
    assert_eq!(pool.idle_count(), 0, "a dropped body is not pooled");

    let (state, after) = bounded("server report", peer_rx.recv())
        .await
        .expect("server reported");
    assert_ne!(
        state,
        PeerState::StillOpen,
        "server must see the socket closed within 1 s"
    );
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
}

#[tokio::test]
async fn server_closing_mid_body_gives_the_data_then_closed_mid_body() {
    let server = Server::start(|mut conn| async move {
        if conn.read_request().await.is_some() {
            conn.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await;
        }
        drop(conn);
    })
    .await;
    let pool = server.pool();

    let mut resp = post(&pool, "/", b"{}").await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = read_body(resp.body_mut()).await;
    assert_eq!(
        read.data, b"0123456789",
        "the bytes that did arrive are delivered"
    );
    assert!(
        matches!(read.error, Some(H1Error::ClosedMidBody)),
        "then the body fails: {:?}",
        read.error
    );
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn head_response_has_no_body_and_the_connection_is_reused() {
    let server = Server::start(|conn| async move {
        conn.serve(|_, request| {
            if request.request_line().starts_with("HEAD ") {
                // Content-Length describes the GET body; a HEAD response carries none.
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_string()
            } else {
                ok_response("hello")
            }
        })
        .await;
    })
    .await;
    let pool = server.pool();

    let mut resp = send(&pool, Method::HEAD, "/health", &HeaderMap::new(), b"")
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_LENGTH], "5");
    assert!(resp.body().is_end_stream(), "nothing to read after a HEAD");
    let read = read_body(resp.body_mut()).await;
    assert!(read.error.is_none(), "{:?}", read.error);
    assert!(read.data.is_empty(), "HEAD body must be empty");
    assert_eq!(pool.idle_count(), 1, "connection pooled after the head");

    // The next request on the same connection gets its own response, not stray bytes.
    let read = post_ok(&pool, "/next", b"{}").await;
    assert_eq!(read.data, b"hello");
    assert_eq!(server.accepts(), 1, "connection reused after HEAD");
    assert_eq!(server.received()[0].request_line(), "HEAD /health HTTP/1.1");
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_connect_error() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().unwrap()
    };
    // The listener is gone: nothing listens on `addr` any more.
    let base: Uri = format!("http://{addr}").parse().unwrap();
    let pool = H1Pool::for_url(&base, 1, Duration::from_secs(2), Duration::from_secs(30)).unwrap();
    let err = post(&pool, "/", b"{}")
        .await
        .expect_err("nothing listens there");
    assert!(err.is_connect(), "got {err:?}");
    assert!(
        matches!(err, H1Error::Connect { ref addr, .. } if *addr == base.authority().unwrap().as_str()),
        "got {err:?}"
    );
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_host_name_is_resolved_and_every_address_tried() {
    let server = Server::start(|conn| async move {
        conn.serve(|_, _| "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string())
            .await;
    })
    .await;
    // `localhost` may resolve to ::1 first; the server only listens on 127.0.0.1.
    let base: Uri = format!("http://localhost:{}", server.addr.port())
        .parse()
        .unwrap();
    let pool = H1Pool::for_url(&base, 1, Duration::from_secs(2), Duration::from_secs(30)).unwrap();
    let mut resp = post(&pool, "/v1/chat/completions", b"{}")
        .await
        .expect("localhost reaches the server");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = read_body(resp.body_mut()).await;
    assert_eq!(read.data, b"ok");
    let log = server.received();
    assert_eq!(
        log[0].header("host"),
        vec![format!("localhost:{}", server.addr.port())]
    );
}

#[tokio::test]
async fn request_is_serialized_with_path_host_headers_and_length() {
    let server = Server::start(|conn| async move {
        conn.serve(|_, _| "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string())
            .await;
    })
    .await;
    let pool = server.pool();

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
    headers.append("x-multi", HeaderValue::from_static("one"));
    headers.append("x-multi", HeaderValue::from_static("two"));
    let body = br#"{"model":"llama3","stream":true,"messages":[]}"#;
    let mut resp = send(
        &pool,
        Method::POST,
        "/v1/chat/completions?stream=true&x=1",
        &headers,
        body,
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = read_body(resp.body_mut()).await;
    assert!(read.error.is_none() && read.data.is_empty());

    let log = server.received();
    let request = &log[0];
    assert_eq!(
        request.request_line(),
        "POST /v1/chat/completions?stream=true&x=1 HTTP/1.1"
    );
    assert_eq!(
        request.header("host"),
        vec![server.addr.to_string()],
        "host header is the authority"
    );
    assert_eq!(request.header("content-type"), vec!["application/json"]);
    assert_eq!(request.header("x-request-id"), vec!["abc-123"]);
    assert_eq!(request.header("x-multi"), vec!["one", "two"]);
    assert_eq!(
        request.header("content-length"),
        vec![body.len().to_string()]
    );
    assert_eq!(request.body, body);

    // A caller-supplied Host replaces the authority rather than adding a second one.
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("models.internal"));
    let read = {
        let mut resp = send(&pool, Method::POST, "/v1/models", &headers, b"{}")
            .await
            .expect("send");
        read_body(resp.body_mut()).await
    };
    assert!(read.error.is_none());
    let log = server.received();
    assert_eq!(log[1].request_line(), "POST /v1/models HTTP/1.1");
    assert_eq!(log[1].header("host"), vec!["models.internal"]);
    assert_eq!(log[1].header("content-length"), vec!["2"]);

    // A body too large to copy next to the head (sent as a second write) arrives intact.
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let read = {
        let mut resp = send(
            &pool,
            Method::POST,
            "/v1/embeddings",
            &HeaderMap::new(),
            &large,
        )
        .await
        .expect("send");
        read_body(resp.body_mut()).await
    };
    assert!(read.error.is_none());
    let log = server.received();
    assert_eq!(
        log[2].header("content-length"),
        vec![large.len().to_string()]
    );
    assert!(log[2].body == large, "large body arrives byte for byte");
}
