//! The proxy's own HTTP/1.1 client for plain `http://` backends: a connection pool per serving
//! thread and a response body that reads the upstream socket directly.
//!
//! Why not hyper's client here: hyper runs each upstream connection as its own task and hands
//! the response head and every decoded chunk to the request over channels, one task wake per
//! chunk. An SSE burst of 18 events cost 18 channel hand-offs and, after coalescing, scheduler
//! round trips. Here the request task writes the request and parses the head itself, and the
//! body is read from the socket inside the server connection's own poll: all chunked data the
//! socket holds is decoded into one buffer per poll, with no task, channel or wake in between.
//! TLS and h2c backends, probes and discovery keep using hyper's client.
//!
//! Pool rules: a connection goes back to the pool only after its body was read to the end
//! (a dropped body closes the connection, which cancels the upstream request), when the
//! response was HTTP/1.1 without `Connection: close` and nothing followed the body. An idle
//! connection the backend has closed is noticed before reuse; if a reused connection still
//! fails before any byte of the response, the request is sent once more on a new connection
//! (the backend closed an idle connection and never saw the request). So is a request whose
//! reused connection answers with an invalid head: stray bytes of an earlier exchange (a body
//! after a HEAD response) must not fail a request a fresh connection would serve.
//!
//! Framing: a response with both `Transfer-Encoding` and `Content-Length` is read as chunked
//! and loses its `Content-Length` (RFC 9112 §6.3), so the client never sees a wrong length.

pub mod decode;

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use decode::{ChunkedDecoder, Framing};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Idle connections kept per serving thread and backend.
const MAX_IDLE_PER_SHARD: usize = 256;
/// Request bodies up to this size are copied next to the head (one write).
const INLINE_BODY: usize = 16 * 1024;
/// First read buffer of an exchange (the response head, then the start of the body): sized so a
/// head and a small JSON body arrive in one read. A larger head grows it by doubling, up to
/// `MAX_HEAD`. A body whose reads stay small swaps it for a `BODY_READ_MIN` block once drained.
const HEAD_BUF: usize = 2 * 1024;
/// Body reads start with this much room and adapt between these bounds: a read that fills the
/// room doubles the next one (bursts, big bodies), a read under a quarter of it halves it
/// (slow token streams), so an idle stream holds little and a burst still moves in few reads;
/// a drained buffer larger than the reads need is given back.
const BODY_READ_MIN: usize = 1024;
const BODY_READ_MAX: usize = 64 * 1024;
/// Below this much spare room the buffer is grown before a read.
const MIN_SPARE: usize = 512;
/// Headers a proxy adds to a backend's response before sending it on (the `X-Olla-*` set,
/// `Via`, rate-limit and CORS headers): room a parsed response map is made with, so they fit
/// without a rehash.
pub const RESPONSE_HEADROOM: usize = 12;

/// Reads from `io` into the spare capacity of `buf` (which must have some: with none, the read
/// would look like the end of the stream); the bytes read.
pub fn poll_read_buf<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut read_buf = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(io).poll_read(cx, &mut read_buf) {
        Poll::Ready(Ok(())) => {
            let n = read_buf.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// The next body read size after a read of `n` bytes into room for `size`.
fn next_read_size(size: usize, n: usize) -> usize {
    if n >= size {
        (size * 2).min(BODY_READ_MAX)
    } else if n < size / 4 {
        (size / 2).max(BODY_READ_MIN)
    } else {
        size
    }
}

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed before the response body was complete")]
    ClosedMidBody,
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    #[error("invalid response head: {0}")]
    Head(String),
    #[error(transparent)]
    Framing(#[from] decode::FramingError),
    #[error(transparent)]
    Chunked(#[from] decode::ChunkError),
    #[error("invalid request target {0:?}")]
    Target(String),
}

impl H1Error {
    /// The backend could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }
}

struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

struct PoolInner {
    /// `host:port` to connect to.
    addr: String,
    /// `Host` header value.
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    shards: Box<[Mutex<VecDeque<IdleConn>>]>,
}

/// The pool of plain HTTP/1.1 connections to one backend, one stack per serving thread.
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<PoolInner>,
}

impl H1Pool {
    /// A pool for `base` when it is a plain `http://` URL; `None` otherwise.
    pub fn for_url(
        base: &Uri,
        shards: usize,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Self> {
        if base.scheme_str() != Some("http") {
            return None;
        }
        let authority = base.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        Some(Self {
            inner: Arc::new(PoolInner {
                addr: format!("{}:{port}", authority.host()),
                // Never the userinfo part of the URL.
                authority: match authority.port() {
                    Some(p) => format!("{}:{}", authority.host(), p.as_str()),
                    None => authority.host().to_string(),
                },
                connect_timeout,
                idle_timeout,
                shards: (0..shards.max(1))
                    .map(|_| Mutex::new(VecDeque::new()))
                    .collect(),
            }),
        })
    }

    /// Idle connections held right now (all shards).
    pub fn idle_count(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Starts the head of a request to this backend: the request line and, unless the caller
    /// sends its own (`host_given`), `Host`. The caller adds the header fields
    /// ([`RequestHead::field`]) and sends it with [`H1Pool::send_head`]. `path_and_query` must
    /// be a valid request target (see [`RequestHead::new`]).
    pub fn request_head(
        &self,
        method: &Method,
        path_and_query: &str,
        host_given: bool,
        fields: usize,
        body_len: usize,
    ) -> Result<RequestHead, H1Error> {
        let authority = (!host_given).then_some(self.inner.authority.as_str());
        RequestHead::new(method, path_and_query, authority, fields, body_len)
    }

    /// Sends one request and returns once the response head has arrived. `uri` supplies the
    /// path and query; `headers` must not hold hop-by-hop headers or `Content-Length`.
    pub async fn send(
        &self,
        shard: usize,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response<H1Body>, H1Error> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = self.request_head(
            method,
            path,
            headers.contains_key(HOST),
            headers.len(),
            body.len(),
        )?;
        for (name, value) in headers {
            head.field(name, value);
        }
        self.send_head(shard, head, body).await
    }

    /// Sends a request whose head [`H1Pool::request_head`] started and the caller filled, and
    /// returns once the response head has arrived. The head's fields must not hold hop-by-hop
    /// headers or `Content-Length` (added here from `body`).
    pub async fn send_head(
        &self,
        shard: usize,
        head: RequestHead,
        body: &[u8],
    ) -> Result<Response<H1Body>, H1Error> {
        let shard = shard.min(self.inner.shards.len() - 1);
        let is_head = head.method == Method::HEAD;
        // A small body goes out with the head in one write; a large one is not copied.
        let (request, tail) = head.finish(body);
        if let Some(stream) = self.checkout(shard) {
            match exchange(stream, &request, tail, is_head).await {
                Ok(head) => return Ok(self.response(head, shard)),
                // The backend closed this idle connection; it never saw the request.
                Err(Exchange::NothingReceived(_)) => {}
                // A reused connection that answers with garbage carries leftovers of an earlier
                // exchange (e.g. a body sent after a HEAD response): start over on a fresh one.
                Err(Exchange::Failed(H1Error::Head(_) | H1Error::Framing(_))) => {}
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        let stream = self.connect().await?;
        match exchange(stream, &request, tail, is_head).await {
            Ok(head) => Ok(self.response(head, shard)),
            Err(Exchange::NothingReceived(e) | Exchange::Failed(e)) => Err(e),
        }
    }

    fn response(&self, head: Head, shard: usize) -> Response<H1Body> {
        let Head {
            parsed:
                ParsedHead {
                    status,
                    version,
                    headers,
                    framing,
                    reusable,
                },
            stream,
            buf,
        } = head;
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut body = H1Body {
            stream: Some(stream),
            buf,
            out: BytesMut::new(),
            read_size: BODY_READ_MIN,
            state,
            reusable,
            pending_error: None,
            pool: Some((self.clone(), shard)),
        };
        if matches!(body.state, BodyState::Done) {
            body.release();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        resp
    }

    async fn connect(&self) -> Result<TcpStream, H1Error> {
        let addr = &self.inner.addr;
        let stream = match tokio::time::timeout(
            self.inner.connect_timeout,
            TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(H1Error::Connect {
                    addr: addr.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(H1Error::ConnectTimeout {
                    addr: addr.clone(),
                    after: self.inner.connect_timeout,
                })
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The most recently used idle connection that is still fresh and still open.
    fn checkout(&self, shard: usize) -> Option<TcpStream> {
        let mut idle = self.inner.shards[shard].lock();
        let now = Instant::now();
        while let Some(conn) = idle.pop_back() {
            if now.saturating_duration_since(conn.since) >= self.inner.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if still_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    fn checkin(&self, shard: usize, stream: TcpStream) {
        let mut idle = self.inner.shards[shard].lock();
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= self.inner.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE_PER_SHARD {
            idle.pop_front();
        }
        idle.push_back(IdleConn { stream, since: now });
    }
}

/// An idle connection shows no readiness (no EOF, no stray bytes) without a system call unless
/// the reactor saw an event on it.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// The wire form of an outbound request head, written as it is built: the request line and
/// `Host` first, then each field as the caller adds it, then (in [`RequestHead::finish`])
/// `Content-Length`, the blank line and, when small, the body. No header map is built on the
/// way: the proxy writes the fields it keeps straight into the bytes it sends.
pub struct RequestHead {
    buf: Vec<u8>,
    method: Method,
}

impl RequestHead {
    /// A head for `method` on `path_and_query`, with `Host: authority` when one is given,
    /// sized for about `fields` header fields and an inline body of `body_len` bytes.
    ///
    /// `path_and_query` must start with `/` and hold only visible ASCII: a space or control
    /// byte in a request line would let its tail be read as another request.
    pub fn new(
        method: &Method,
        path_and_query: &str,
        authority: Option<&str>,
        fields: usize,
        body_len: usize,
    ) -> Result<Self, H1Error> {
        let target = path_and_query.as_bytes();
        if target.first() != Some(&b'/') || !target.iter().all(|&b| b > b' ' && b != 0x7f) {
            return Err(H1Error::Target(path_and_query.chars().take(64).collect()));
        }
        let inline = if body_len <= INLINE_BODY { body_len } else { 0 };
        let mut buf = Vec::with_capacity(256 + fields * 48 + inline);
        for part in [method.as_str().as_bytes(), b" ", target, b" HTTP/1.1\r\n"] {
            buf.extend_from_slice(part);
        }
        if let Some(authority) = authority {
            for part in [b"host: ", authority.as_bytes(), b"\r\n"] {
                buf.extend_from_slice(part);
            }
        }
        Ok(Self {
            buf,
            method: method.clone(),
        })
    }

    /// Adds one header field.
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.write_field(name, value.as_bytes());
    }

    /// Adds one header field whose value is raw bytes; a value a header may not carry (a
    /// control byte other than tab, e.g. a line break) is left out, as `HeaderValue` would
    /// refuse it.
    pub fn field_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        if value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
        {
            self.write_field(name, value);
        }
    }

    fn write_field(&mut self, name: &HeaderName, value: &[u8]) {
        for part in [name.as_str().as_bytes(), b": ", value, b"\r\n"] {
            self.buf.extend_from_slice(part);
        }
    }

    /// The bytes written so far: the request line, `Host` (when added) and the fields.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Ends the head for `body`: `Content-Length` when the request carries or expects a body,
    /// the blank line, and the body itself when it is small enough to go in the same write.
    /// Returns the bytes to write and what of the body is left to write after them.
    fn finish(mut self, body: &[u8]) -> (Vec<u8>, &[u8]) {
        let needs_length =
            !body.is_empty() || matches!(self.method, Method::POST | Method::PUT | Method::PATCH);
        if needs_length {
            self.buf.extend_from_slice(b"content-length: ");
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
        if body.len() <= INLINE_BODY {
            self.buf.extend_from_slice(body);
            (self.buf, &[])
        } else {
            (self.buf, body)
        }
    }
}

/// A parsed response head and the connection it came on.
struct Head {
    parsed: ParsedHead,
    stream: TcpStream,
    /// Bytes read past the head (the start of the body).
    buf: BytesMut,
}

enum Exchange {
    /// The connection failed before a single response byte arrived.
    NothingReceived(H1Error),
    Failed(H1Error),
}

/// Writes the request (`request`, then `tail` if any) and reads the response head (skipping 1xx interim responses).
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    tail: &[u8],
    head_request: bool,
) -> Result<Head, Exchange> {
    for part in [request, tail] {
        if part.is_empty() {
            continue;
        }
        if let Err(e) = stream.write_all(part).await {
            return Err(Exchange::NothingReceived(e.into()));
        }
    }
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    let mut received_any = false;
    loop {
        match parse_head(&buf, head_request).map_err(Exchange::Failed)? {
            Some((consumed, parsed)) => {
                let _ = buf.split_to(consumed);
                if parsed.status.is_informational() {
                    if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Exchange::Failed(H1Error::Head(
                            "protocol upgrades are not supported".into(),
                        )));
                    }
                    continue;
                }
                return Ok(Head {
                    parsed,
                    stream,
                    buf,
                });
            }
            None if buf.len() >= MAX_HEAD => {
                return Err(Exchange::Failed(H1Error::Head(format!(
                    "response head larger than {MAX_HEAD} bytes"
                ))))
            }
            None => {}
        }
        if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(buf.capacity().max(HEAD_BUF));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) if received_any => return Err(Exchange::Failed(H1Error::ClosedBeforeHead)),
            Ok(0) => return Err(Exchange::NothingReceived(H1Error::ClosedBeforeHead)),
            Ok(_) => received_any = true,
            Err(e) if received_any => return Err(Exchange::Failed(e.into())),
            Err(e) => return Err(Exchange::NothingReceived(e.into())),
        }
    }
}

struct ParsedHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    reusable: bool,
}

/// Parses a complete response head at the start of `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(usize, ParsedHead)>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let consumed = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(H1Error::Head(format!(
                "response head larger than {MAX_HEAD} bytes"
            )))
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Head(e.to_string())),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Head(format!("status {code}")))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + RESPONSE_HEADROOM);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Head(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| H1Error::Head(format!("value of header {}", h.name)))?;
        headers.append(name, value);
    }
    let framing = decode::framing(head_request, code, &headers)?;
    decode::drop_length_beside_coding(&mut headers);
    let closes = headers
        .get_all(CONNECTION)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .any(|v| decode::list_items(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")));
    let reusable = version == Version::HTTP_11 && !closes && framing != Framing::UntilClose;
    Ok(Some((
        consumed,
        ParsedHead {
            status,
            version,
            headers,
            framing,
            reusable,
        },
    )))
}

enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// A response body read straight from the upstream socket. Each poll hands over all the data
/// the socket holds (chunked framing removed), so bursts leave as one frame. Dropping it before
/// the end closes the connection.
pub struct H1Body {
    stream: Option<TcpStream>,
    buf: BytesMut,
    /// Decoded chunked data not yet handed over.
    out: BytesMut,
    /// Room to make before the next read (adaptive, see `next_read_size`).
    read_size: usize,
    state: BodyState,
    reusable: bool,
    /// An error met after data was gathered; returned on the next poll.
    pending_error: Option<H1Error>,
    pool: Option<(H1Pool, usize)>,
}

impl H1Body {
    /// Moves what the buffer holds into the output; `true` when the body is complete.
    fn drain_buffer(&mut self) -> Result<bool, H1Error> {
        match &mut self.state {
            BodyState::Length(remaining) => {
                let n = (*remaining).min(self.buf.len() as u64) as usize;
                if n > 0 {
                    if self.out.is_empty() {
                        self.out = self.buf.split_to(n);
                    } else {
                        self.out.extend_from_slice(&self.buf.split_to(n));
                    }
                    *remaining -= n as u64;
                }
                Ok(*remaining == 0)
            }
            BodyState::Chunked(decoder) => Ok(decoder.decode(&mut self.buf, &mut self.out)?),
            BodyState::UntilClose => {
                if !self.buf.is_empty() {
                    let data = self.buf.split();
                    self.out.extend_from_slice(&data);
                }
                Ok(false)
            }
            BodyState::Done => Ok(true),
        }
    }

    /// The body is complete: return the connection to its pool when it can be reused.
    fn release(&mut self) {
        self.state = BodyState::Done;
        let stream = self.stream.take();
        if let (Some(stream), Some((pool, shard))) = (stream, self.pool.take()) {
            if self.reusable && self.buf.is_empty() {
                pool.checkin(shard, stream);
            }
        }
    }

    fn take_out(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = BodyState::Done;
        self.stream = None;
        match self.take_out() {
            Some(data) => {
                self.pending_error = Some(e);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => Poll::Ready(Some(Err(e))),
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        if let Some(e) = this.pending_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if matches!(this.state, BodyState::Done) {
                return Poll::Ready(this.take_out().map(|d| Ok(Frame::data(d))));
            }
            match this.drain_buffer() {
                Ok(true) => {
                    this.release();
                    continue;
                }
                Ok(false) => {}
                Err(e) => return this.fail(e),
            }
            let Some(stream) = this.stream.as_mut() else {
                return this.fail(H1Error::ClosedMidBody);
            };
            // Drained, and larger than the reads now need (the head's buffer, or a burst's):
            // give the block back, so an open slow stream holds `read_size`, not its largest.
            if this.buf.is_empty() && this.buf.capacity() > this.read_size + MIN_SPARE {
                this.buf = BytesMut::with_capacity(this.read_size);
            }
            if this.buf.capacity() - this.buf.len() < MIN_SPARE {
                this.buf.reserve(this.read_size);
            }
            let room = this.buf.capacity() - this.buf.len();
            match poll_read_buf(stream, cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, BodyState::UntilClose) {
                        this.state = BodyState::Done;
                        this.stream = None;
                        continue;
                    }
                    return this.fail(H1Error::ClosedMidBody);
                }
                Poll::Ready(Ok(n)) => {
                    this.read_size = next_read_size(this.read_size.max(room.min(BODY_READ_MAX)), n);
                }
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Pending => {
                    return match this.take_out() {
                        Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done) && self.out.is_empty() && self.pending_error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n + self.out.len() as u64),
            BodyState::Done if self.pending_error.is_none() => {
                SizeHint::with_exact(self.out.len() as u64)
            }
            _ => {
                let mut h = SizeHint::new();
                h.set_lower(self.out.len() as u64);
                h
            }
        }
    }
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("buffered", &self.buf.len())
            .field("reusable", &self.reusable)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_read_size_doubles_on_full_reads_and_halves_on_small_ones() {
        assert_eq!(
            next_read_size(BODY_READ_MIN, BODY_READ_MIN),
            2 * BODY_READ_MIN
        );
        assert_eq!(next_read_size(BODY_READ_MAX, BODY_READ_MAX), BODY_READ_MAX);
        assert_eq!(next_read_size(16 * 1024, 100), 8 * 1024);
        assert_eq!(next_read_size(BODY_READ_MIN, 10), BODY_READ_MIN);
        assert_eq!(next_read_size(8 * 1024, 4 * 1024), 8 * 1024);
        let mut size = BODY_READ_MIN;
        for _ in 0..10 {
            size = next_read_size(size, size);
        }
        assert_eq!(size, BODY_READ_MAX, "a burst grows the reads to the cap");
        for _ in 0..10 {
            size = next_read_size(size, 120);
        }
        assert_eq!(size, BODY_READ_MIN, "a slow stream shrinks them back");
    }

    #[tokio::test]
    async fn a_slow_stream_gives_back_its_head_buffer_and_a_burst_grows_reads_again() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (step_tx, mut step_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = sock.read(&mut req).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            while let Some(bytes) = step_rx.recv().await {
                sock.write_all(&bytes).await.unwrap();
            }
        });
        let pool = pool(&url).unwrap();
        let uri: Uri = format!("{url}/v1/x").parse().unwrap();
        let resp = pool
            .send(0, &Method::GET, &uri, &HeaderMap::new(), b"")
            .await
            .unwrap();
        let mut body = resp.into_body();
        let chunk =
            |data: &[u8]| [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
        let step = Duration::from_secs(2);
        for _ in 0..3 {
            step_tx
                .send(chunk(b"data: {\"token\":\"a\"}\n\n"))
                .await
                .unwrap();
            let frame = tokio::time::timeout(step, body.frame()).await.unwrap();
            assert!(frame.unwrap().unwrap().is_data());
        }
        // Wait for the next read: the drained buffer has been swapped for a small one.
        let pending = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
        assert!(pending.is_err(), "no data was sent");
        assert!(
            body.buf.capacity() <= BODY_READ_MIN,
            "{}",
            body.buf.capacity()
        );
        let burst = vec![b'x'; 3 * BODY_READ_MAX];
        step_tx.send(chunk(&burst)).await.unwrap();
        let mut got = 0;
        while got < burst.len() {
            let frame = tokio::time::timeout(step, body.frame()).await.unwrap();
            got += frame.unwrap().unwrap().into_data().unwrap().len();
        }
        assert!(body.read_size > BODY_READ_MIN, "a burst grows the reads");
        drop(step_tx);
        server.await.unwrap();
    }

    fn pool(url: &str) -> Option<H1Pool> {
        H1Pool::for_url(
            &url.parse().unwrap(),
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn plain_http_urls_only_and_never_the_userinfo() {
        let p = pool("http://user:secret@example.com:8080/base").unwrap();
        assert_eq!(p.inner.addr, "example.com:8080");
        assert_eq!(p.inner.authority, "example.com:8080");
        let p = pool("http://example.com").unwrap();
        assert_eq!(p.inner.addr, "example.com:80");
        assert_eq!(p.inner.authority, "example.com");
        let p = pool("http://[::1]:9000").unwrap();
        assert_eq!(p.inner.addr, "[::1]:9000");
        assert!(pool("https://api.example.com").is_none());
    }

    fn finished(head: RequestHead, body: &[u8]) -> String {
        let (bytes, tail) = head.finish(body);
        String::from_utf8([bytes.as_slice(), tail].concat()).unwrap()
    }

    #[test]
    fn serializes_the_request_with_host_and_length() {
        let p = pool("http://h:1").unwrap();
        let mut head = p
            .request_head(&Method::POST, "/v1/chat/completions?x=1", false, 1, 2)
            .unwrap();
        head.field(
            &HeaderName::from_static("content-type"),
            &HeaderValue::from_static("application/json"),
        );
        assert_eq!(
            finished(head, b"{}"),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let head = p.request_head(&Method::GET, "/m", false, 0, 0).unwrap();
        assert_eq!(finished(head, b""), "GET /m HTTP/1.1\r\nhost: h:1\r\n\r\n");
        let mut head = p.request_head(&Method::GET, "/m", true, 1, 0).unwrap();
        head.field(&HOST, &HeaderValue::from_static("virtual.example"));
        assert_eq!(
            finished(head, b""),
            "GET /m HTTP/1.1\r\nhost: virtual.example\r\n\r\n"
        );
    }

    #[test]
    fn a_raw_field_value_with_a_line_break_is_left_out() {
        let p = pool("http://h:1").unwrap();
        let mut head = p.request_head(&Method::GET, "/", true, 2, 0).unwrap();
        let name = HeaderName::from_static("x-a");
        head.field_bytes(&name, b"one\r\nx-injected: 1");
        head.field_bytes(&name, b"tab\tand caf\xc3\xa9");
        assert_eq!(
            head.as_bytes(),
            b"GET / HTTP/1.1\r\nx-a: tab\tand caf\xc3\xa9\r\n".as_slice()
        );
        for bad in [&b"a\rb"[..], b"a\nb", b"a\x00b", b"a\x7fb"] {
            assert!(
                HeaderValue::from_bytes(bad).is_err(),
                "the same rule as HeaderValue"
            );
        }
    }

    #[test]
    fn a_large_body_is_left_for_its_own_write() {
        let p = pool("http://h:1").unwrap();
        let body = vec![b'x'; INLINE_BODY + 1];
        let head = p
            .request_head(&Method::POST, "/", false, 0, body.len())
            .unwrap();
        let (bytes, tail) = head.finish(&body);
        assert!(bytes.ends_with(b"\r\n\r\n"));
        assert_eq!(tail.len(), body.len());
    }

    #[test]
    fn a_request_target_with_a_space_or_control_byte_is_refused() {
        let p = pool("http://h:1").unwrap();
        for bad in ["", "v1/models", "/a b", "/a\r\nx: y", "/a\tb", "/a\u{7f}"] {
            assert!(
                matches!(
                    p.request_head(&Method::GET, bad, false, 0, 0),
                    Err(H1Error::Target(_))
                ),
                "{bad:?}"
            );
        }
        assert!(p
            .request_head(&Method::GET, "/caf\u{e9}?q=\"x\"", false, 0, 0)
            .is_ok());
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Parses `input` the way `exchange` does: the buffer grows at the cut points.
    fn parse_split(input: &[u8], cuts: &[usize]) -> Result<Option<(usize, String)>, String> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        for p in points {
            match parse_head(&input[..p], false) {
                Ok(Some((n, h))) => {
                    return Ok(Some((
                        n,
                        format!(
                            "{} {:?} {:?} {:?}",
                            h.status, h.headers, h.framing, h.reusable
                        ),
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_head(&input, false);
            let _ = parse_head(&input, true);
        }

        #[test]
        fn a_valid_head_split_anywhere_parses_the_same(
            status in 200u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,24}"), 0..12),
            length in proptest::option::of(0u64..1_000_000),
            chunked in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut head = format!("HTTP/1.1 {status} X\r\n");
            for (k, v) in &headers {
                if k == "content-length" || k == "transfer-encoding" {
                    continue;
                }
                head.push_str(&format!("{k}: {}\r\n", v.trim()));
            }
            if let Some(n) = length {
                head.push_str(&format!("content-length: {n}\r\n"));
            }
            if chunked {
                head.push_str("transfer-encoding: chunked\r\n");
            }
            head.push_str("\r\nbody");
            let whole = parse_split(head.as_bytes(), &[]);
            let Ok(Some((consumed, _))) = &whole else {
                return Err(TestCaseError::fail(format!("{whole:?} for {head:?}")));
            };
            prop_assert_eq!(*consumed, head.len() - 4);
            prop_assert_eq!(parse_split(head.as_bytes(), &cuts), whole.clone());
            if chunked {
                let text = whole.unwrap().unwrap().1;
                prop_assert!(!text.contains("\"content-length\""), "{}", text);
            }
        }
    }
}
