//! The HTTP/1.x server connection: reads request heads and bodies, hands each request to the
//! service, and writes its response, keep-alive and pipelining included. HTTP/2 stays hyper's.
//!
//! Why not hyper's: an open stream holds what its connection holds, and hyper's HTTP/1
//! connection keeps an 8 KiB read buffer, an 8 KiB head-write buffer and the last response's
//! header map for the connection's whole life. Here the read buffer starts at
//! [`READ_CHUNK`] and grows only while a head or body needs it; the head is encoded into a
//! buffer that is released once a streamed response's head is written; nothing of a response
//! is kept after it. Per request there is no body channel (a body already in the read buffer
//! is handed over whole; a larger one is pumped by this connection's task through one slot)
//! and no per-request timer (deadlines are [`super::deadline`]'s). The service answers with
//! its response and a [`HeadExtra`]: fields written straight into the head as lines (olla's
//! own headers, [`crate::own_headers`]) rather than inserted into the response's map.
//!
//! Behaviour follows hyper's HTTP/1 server, which it replaces: `Expect: 100-continue` is
//! answered when the body is first read; a request body the service did not read closes the
//! connection after the response; a client that closes its side while its request is served
//! (half-close) ends the connection, which drops the response body and with it the upstream
//! request; malformed heads get 400, heads over the size limit 431, other versions 505, each
//! with `Connection: close`. Responses carry `Date`; their length is the body's exact size when
//! known, chunked otherwise (close-delimited for HTTP/1.0 clients); HEAD, 1xx, 204 and 304
//! responses have no body.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use olla_actors::backend::h1::decode::{decimal, list_items, ChunkedDecoder};
use olla_actors::backend::h1::poll_read_buf;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::graceful::Watcher;
use crate::http_util::{keep_waker, Body, BoxError, HEX_DIGITS};

/// The read buffer's first size and its growth step: a typical request head, or head and small
/// JSON body, arrives in one read of this size.
pub const READ_CHUNK: usize = 4096;

/// A read buffer larger than this is released when the connection goes idle.
const KEEP_READ_CAPACITY: usize = 16 * 1024;

/// Largest read while pumping a request body.
const BODY_READ_MAX: usize = 64 * 1024;

/// Data gathered from the response body before it is written.
const WRITE_GATHER_MAX: usize = 64 * 1024;

/// Pieces queued for one vectored write.
const MAX_PIECES: usize = 16;

/// Limits of one connection's request heads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Buffered head bytes beyond which the head is refused (431).
    pub max_head: usize,
    /// Header lines beyond which the head is refused (431).
    pub max_headers: usize,
}

/// Why a connection ended early.
pub type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// Header fields a service answers with beside its response's header map, written straight
/// into the head (no map insert per field).
pub trait HeadExtra {
    /// Whether the map's field `name` is left out because [`HeadExtra::encode`] writes its own.
    fn supersedes(&self, name: &HeaderName) -> bool;
    /// Appends `name: value\r\n` lines; names lower case, values valid header values.
    fn encode(&self, head: &mut Vec<u8>);
}

/// No extra fields.
impl HeadExtra for () {
    fn supersedes(&self, _: &HeaderName) -> bool {
        false
    }

    fn encode(&self, _: &mut Vec<u8>) {}
}

// ---------------------------------------------------------------------------------------------
// Request body

/// The body of a request read by this module.
pub struct Inbound {
    kind: InboundKind,
}

enum InboundKind {
    Empty,
    /// The whole body was in hand with the head.
    Whole(Option<Bytes>),
    /// Pumped by the connection's task as the service reads it.
    Pumped {
        slot: Arc<Mutex<Slot>>,
        /// Bytes still to come, for a `Content-Length` body.
        remaining: Option<u64>,
    },
}

/// Hand-over between the connection's pump and the body.
#[derive(Default)]
struct Slot {
    data: Option<Bytes>,
    /// Every byte of the body has been handed over (or is in `data`).
    ended: bool,
    failed: Option<String>,
    /// The body asked for data since the pump last looked.
    wanted: bool,
    /// The body was dropped: nothing more will be read.
    dropped: bool,
    body_waker: Option<Waker>,
    pump_waker: Option<Waker>,
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(String);

impl http_body::Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            InboundKind::Empty => Poll::Ready(None),
            InboundKind::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            InboundKind::Pumped { slot, remaining } => {
                let mut s = slot.lock();
                if let Some(d) = s.data.take() {
                    if let Some(r) = remaining {
                        *r = r.saturating_sub(d.len() as u64);
                    }
                    wake(&mut s.pump_waker);
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if let Some(e) = &s.failed {
                    return Poll::Ready(Some(Err(BodyError(e.clone()).into())));
                }
                if s.ended {
                    return Poll::Ready(None);
                }
                s.wanted = true;
                keep_waker(&mut s.body_waker, cx.waker());
                wake(&mut s.pump_waker);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            InboundKind::Empty => true,
            InboundKind::Whole(d) => d.is_none(),
            InboundKind::Pumped { remaining, .. } => *remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            InboundKind::Empty => SizeHint::with_exact(0),
            InboundKind::Whole(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            InboundKind::Pumped {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            InboundKind::Pumped { .. } => SizeHint::default(),
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let InboundKind::Pumped { slot, .. } = &self.kind {
            let mut s = slot.lock();
            s.dropped = true;
            wake(&mut s.pump_waker);
        }
    }
}

/// How a request body is framed.
#[derive(Debug)]
enum BodyFraming {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// Reads a request body from the connection into its [`Slot`] as the service asks for it.
struct Pump {
    slot: Arc<Mutex<Slot>>,
    framing: BodyFraming,
    /// `100 Continue` still to be sent (before the first body read), and how much of it was.
    continue_pending: Option<usize>,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Pump {
    /// Ready once the body is read to its end (`Ok`) or cannot be (`Err`: the body reports it).
    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        rbuf: &mut BytesMut,
    ) -> Poll<Result<(), ()>> {
        loop {
            {
                let mut s = self.slot.lock();
                if s.dropped {
                    return Poll::Ready(Err(()));
                }
                keep_waker(&mut s.pump_waker, cx.waker());
                if s.data.is_some() || (self.continue_pending.is_some() && !s.wanted) {
                    return Poll::Pending;
                }
            }
            if let Some(sent) = &mut self.continue_pending {
                while *sent < CONTINUE.len() {
                    match Pin::new(&mut *io).poll_write(cx, &CONTINUE[*sent..]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return self.fail("client connection closed".into())
                        }
                        Poll::Ready(Ok(n)) => *sent += n,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.continue_pending = None;
            }
            // Decode what is buffered.
            let (data, done) = match &mut self.framing {
                BodyFraming::Length(rem) => {
                    let n = (*rem).min(rbuf.len() as u64) as usize;
                    *rem -= n as u64;
                    let data = (n > 0).then(|| rbuf.split_to(n).freeze());
                    (data, *rem == 0)
                }
                BodyFraming::Chunked(dec) => {
                    let mut out = BytesMut::new();
                    match dec.decode(rbuf, &mut out) {
                        Ok(done) => ((!out.is_empty()).then(|| out.freeze()), done),
                        Err(e) => return self.fail(e.to_string()),
                    }
                }
            };
            if data.is_some() || done {
                let mut s = self.slot.lock();
                s.data = data;
                s.ended = done;
                s.wanted = false;
                wake(&mut s.body_waker);
                if done {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Read more.
            let want = match &self.framing {
                BodyFraming::Length(rem) => (*rem as usize).clamp(1, BODY_READ_MAX),
                BodyFraming::Chunked(_) => READ_CHUNK,
            };
            if rbuf.capacity() - rbuf.len() < want.min(READ_CHUNK) {
                rbuf.reserve(want);
            }
            match poll_read_buf(io, cx, rbuf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return self.fail("client closed the connection before the body ended".into())
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return self.fail(format!("reading the request body: {e}")),
            }
        }
    }

    fn fail(&mut self, why: String) -> Poll<Result<(), ()>> {
        let mut s = self.slot.lock();
        s.failed = Some(why);
        wake(&mut s.body_waker);
        Poll::Ready(Err(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Request head

/// A parsed request head.
struct Head {
    request: http::request::Parts,
    /// Bytes of the head in the read buffer.
    len: usize,
    framing: Option<BodyFraming>,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a head is refused: the status to answer with before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal(StatusCode);

fn bad(_: impl std::fmt::Debug) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST)
}

/// Parses a request head at the start of `buf`; `None` while it is incomplete.
fn parse_head(buf: &[u8], max_headers: usize) -> Result<Option<Head>, Refusal> {
    const MAX_HEADER_SLOTS: usize = 256;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_SLOTS];
    let slots = &mut slots[..max_headers.min(MAX_HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Err(httparse::Error::Version) => {
            return Err(Refusal(StatusCode::HTTP_VERSION_NOT_SUPPORTED))
        }
        Err(e) => return Err(bad(e)),
    };
    // The head's own copy: header values point into it, not into the read buffer (which
    // would otherwise stay allocated for as long as the request's headers live).
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        head.slice(start..start + part.len())
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(bad)?;
    let target = req.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(slice(target.as_bytes())).map_err(bad)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(bad)?;
        // SAFETY: httparse accepted the value, and the bytes it accepts in a header value (tab,
        // 0x20..=0x7e, 0x80..=0xff) are exactly those a `HeaderValue` may hold.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(slice(h.value)) };
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(h.value).ok_or(Refusal(StatusCode::BAD_REQUEST))?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal(StatusCode::BAD_REQUEST));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked`, last: any other coding cannot be framed (RFC 9112 §6.3).
            chunked = list_items(h.value)
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(Refusal(StatusCode::BAD_REQUEST));
            }
        } else if name == header::CONNECTION {
            for token in list_items(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    // Both framings: a smuggling attempt, refused (RFC 9112 §6.3 allows rejecting it).
    if chunked && length.is_some() {
        return Err(Refusal(StatusCode::BAD_REQUEST));
    }
    let framing = if chunked {
        Some(BodyFraming::Chunked(ChunkedDecoder::new()))
    } else {
        length.filter(|&n| n > 0).map(BodyFraming::Length)
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let (mut request, ()) = Request::new(()).into_parts();
    request.method = method;
    request.uri = uri;
    request.version = version;
    request.headers = headers;
    Ok(Some(Head {
        request,
        len,
        expect_continue: expect_continue && version == Version::HTTP_11 && framing.is_some(),
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: decimal digits only (surrounding whitespace allowed), at most 19
/// of them (so it fits a `u64`).
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.len() > 19 {
        return None;
    }
    decimal(v)
}

// ---------------------------------------------------------------------------------------------
// Response

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    Close,
}

/// One piece of output.
enum Piece {
    Shared(Bytes),
    Static(&'static [u8]),
    /// A chunk-size line.
    Small([u8; 18], u8),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Shared(b) => b,
            Self::Static(s) => s,
            Self::Small(b, n) => &b[..*n as usize],
        }
    }
}

/// Output waiting to be written: the encoded head, then body pieces (or, on a transport
/// without vectored writes, everything copied into the head buffer).
struct Outbox {
    vectored: bool,
    head: Vec<u8>,
    head_pos: usize,
    pieces: std::collections::VecDeque<Piece>,
    /// Bytes of the front piece already written.
    front_pos: usize,
}

impl Outbox {
    fn new(vectored: bool) -> Self {
        Self {
            vectored,
            head: Vec::new(),
            head_pos: 0,
            pieces: std::collections::VecDeque::new(),
            front_pos: 0,
        }
    }

    /// Bytes waiting to be written.
    fn queued(&self) -> usize {
        let pieces: usize = self.pieces.iter().map(|p| p.bytes().len()).sum();
        self.head.len() - self.head_pos + pieces - self.front_pos
    }

    fn is_empty(&self) -> bool {
        self.head_pos == self.head.len() && self.pieces.is_empty()
    }

    fn room(&self) -> bool {
        self.pieces.len() + 3 <= MAX_PIECES && self.queued() < WRITE_GATHER_MAX
    }

    fn push(&mut self, piece: Piece) {
        if piece.bytes().is_empty() {
            return;
        }
        if self.vectored {
            self.pieces.push_back(piece);
        } else {
            self.head.extend_from_slice(piece.bytes());
        }
    }

    fn push_chunk(&mut self, data: Bytes) {
        let mut line = [0u8; 18];
        let n = hex_line(data.len(), &mut line);
        self.push(Piece::Small(line, n as u8));
        self.push(Piece::Shared(data));
        self.push(Piece::Static(b"\r\n"));
    }

    fn poll_flush<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_PIECES + 1];
            let mut n = 0;
            if self.head_pos < self.head.len() {
                slices[0] = IoSlice::new(&self.head[self.head_pos..]);
                n = 1;
            }
            for (i, p) in self.pieces.iter().enumerate() {
                if n == slices.len() {
                    break;
                }
                let b = p.bytes();
                slices[n] = IoSlice::new(if i == 0 { &b[self.front_pos..] } else { b });
                n += 1;
            }
            let written = match if n == 1 {
                Pin::new(&mut *io).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
            } {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.advance(written);
        }
        self.head.clear();
        self.head_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let head_left = self.head.len() - self.head_pos;
        let from_head = n.min(head_left);
        self.head_pos += from_head;
        n -= from_head;
        while n > 0 {
            let Some(front) = self.pieces.front() else {
                break;
            };
            let left = front.bytes().len() - self.front_pos;
            if n < left {
                self.front_pos += n;
                return;
            }
            n -= left;
            self.front_pos = 0;
            self.pieces.pop_front();
        }
    }

    /// Frees the buffers (a streamed response keeps none while it waits for the backend).
    fn release(&mut self) {
        if self.is_empty() {
            self.head = Vec::new();
            self.pieces = std::collections::VecDeque::new();
        }
    }
}

/// `{len:x}\r\n` into `out`; returns its length.
fn hex_line(len: usize, out: &mut [u8; 18]) -> usize {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = len;
    loop {
        i -= 1;
        digits[i] = HEX_DIGITS[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let n = digits.len() - i;
    out[..n].copy_from_slice(&digits[i..]);
    out[n] = b'\r';
    out[n + 1] = b'\n';
    n + 2
}

/// What a response's headers already say, read in one pass (lookups by name would hash each
/// name again).
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    date: bool,
    connection: bool,
    /// A `Connection` header names `close`.
    close: bool,
    content_length: bool,
    /// The value of the first `Content-Length`, when it is a valid length.
    length: Option<u64>,
    transfer_encoding: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Self {
        let mut p = Self::default();
        for (name, value) in headers {
            if *name == header::DATE {
                p.date = true;
            } else if *name == header::CONNECTION {
                p.connection = true;
                p.close |= list_items(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
            } else if *name == header::CONTENT_LENGTH {
                if !p.content_length {
                    p.length = parse_content_length(value.as_bytes());
                }
                p.content_length = true;
            } else if *name == header::TRANSFER_ENCODING {
                p.transfer_encoding = true;
            }
        }
        p
    }
}

/// Decides the framing of a response and settles its framing headers; a `Connection: close`
/// from the service ends keep-alive.
fn settle_framing(
    status: StatusCode,
    headers: &mut HeaderMap,
    hint: &SizeHint,
    head_request: bool,
    client_version: Version,
    keep_alive: &mut bool,
) -> (Framing, Present) {
    let mut p = Present::scan(headers);
    if p.close {
        *keep_alive = false;
    }
    let strip = |headers: &mut HeaderMap, p: &mut Present| {
        if p.content_length {
            headers.remove(header::CONTENT_LENGTH);
            p.content_length = false;
        }
        if p.transfer_encoding {
            headers.remove(header::TRANSFER_ENCODING);
            p.transfer_encoding = false;
        }
    };
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        strip(headers, &mut p);
        return (Framing::None, p);
    }
    if status == StatusCode::NOT_MODIFIED {
        return (Framing::None, p);
    }
    let length = match p.length {
        // A length the service set (and no transfer coding, whose chunked is re-done here).
        Some(n) if !p.transfer_encoding => Some(n),
        _ => {
            strip(headers, &mut p);
            hint.exact()
        }
    };
    let framing = match length {
        Some(n) => {
            if !p.content_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                p.content_length = true;
            }
            Framing::Length(n)
        }
        None if head_request => Framing::None,
        None if client_version == Version::HTTP_11 => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            p.transfer_encoding = true;
            Framing::Chunked
        }
        None => {
            *keep_alive = false;
            Framing::Close
        }
    };
    (if head_request { Framing::None } else { framing }, p)
}

/// Encodes a response head into `out`; `present` is what [`Present::scan`] (or
/// [`settle_framing`]) found in `headers`.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    extra: &impl HeadExtra,
    present: &Present,
    keep_alive: bool,
    client_version: Version,
) {
    let reason = status.canonical_reason().unwrap_or("");
    out.reserve(64 + reason.len() + headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if extra.supersedes(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    extra.encode(out);
    if !present.date {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        if !present.connection {
            out.extend_from_slice(b"connection: close\r\n");
        }
    } else if client_version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header value, formatted once per second per serving thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                let n = text.len().min(29);
                c.1[..n].copy_from_slice(&text.as_bytes()[..n]);
                c.0 = secs;
            }
            f(&c.1);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The connection

/// What watching the client's side found.
enum ClientSide {
    /// Still there (data may have been buffered for the next request).
    Open,
    /// Closed or failed: the request in progress is abandoned.
    Gone,
}

/// Reads whatever the client sends while its request is served: a pipelined next request is
/// buffered (up to `max`), end of stream means the client left. With no room in `rbuf` (it is
/// released while a response streams) the read goes through a small stack buffer, so a quiet
/// client costs no allocation.
fn poll_client<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    rbuf: &mut BytesMut,
    max: usize,
) -> ClientSide {
    loop {
        if rbuf.len() >= max {
            return ClientSide::Open;
        }
        let read = if rbuf.capacity() > rbuf.len() {
            poll_read_buf(io, cx, rbuf)
        } else {
            let mut small = [0u8; 512];
            let mut rb = ReadBuf::new(&mut small);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    rbuf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        };
        match read {
            Poll::Pending => return ClientSide::Open,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return ClientSide::Gone,
            Poll::Ready(Ok(_)) => {}
        }
    }
}

/// Serves HTTP/1.x requests on `io` until the client closes, a response ends the connection,
/// or shutdown is signalled (between requests). `handle` answers each request;
/// `on_request` is called when each head is parsed and its return value is dropped once the
/// response is written (the connection's deadline ticket).
pub async fn serve<I, F, Fut, T, X>(
    mut io: I,
    limits: Limits,
    watcher: Watcher,
    mut on_request: impl FnMut() -> T,
    mut handle: F,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<Inbound>) -> Fut,
    Fut: Future<Output = (Response<Body>, X)> + Unpin,
    X: HeadExtra,
{
    let mut rbuf = BytesMut::new();
    let mut out = Outbox::new(io.is_write_vectored());
    let mut shutdown_waker: Option<Waker> = None;
    loop {
        // 1. The next head.
        let parsed = poll_fn(|cx| loop {
            if !rbuf.is_empty() {
                match parse_head(&rbuf, limits.max_headers) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) if rbuf.len() >= limits.max_head => {
                        return Poll::Ready(Err(Refusal(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        )))
                    }
                    Ok(None) => {}
                    Err(refusal) => return Poll::Ready(Err(refusal)),
                }
            } else if watcher.poll_signalled(&mut shutdown_waker, cx) {
                return Poll::Ready(Ok(None));
            }
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }
            match poll_read_buf(&mut io, cx, &mut rbuf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
            }
        })
        .await;
        let head = match parsed {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(Refusal(status)) => {
                refuse(&mut io, &mut out, status).await;
                return Ok(());
            }
        };
        let ticket = on_request();
        rbuf.advance(head.len);
        let head_request = head.request.method == Method::HEAD;
        let client_version = head.request.version;
        let mut keep_alive = head.keep_alive;

        // 2. The body: whole if already buffered, else pumped as the service reads it.
        let (body, mut pump) = match head.framing {
            None => (InboundKind::Empty, None),
            Some(BodyFraming::Length(n)) if (rbuf.len() as u64) >= n && !head.expect_continue => {
                let data = rbuf.split_to(n as usize).freeze();
                (InboundKind::Whole(Some(data)), None)
            }
            Some(framing) => {
                let slot = Arc::new(Mutex::new(Slot::default()));
                let remaining = match &framing {
                    BodyFraming::Length(n) => Some(*n),
                    BodyFraming::Chunked(_) => None,
                };
                let pump = Pump {
                    slot: slot.clone(),
                    framing,
                    continue_pending: head.expect_continue.then_some(0),
                };
                (InboundKind::Pumped { slot, remaining }, Some(pump))
            }
        };
        let request = Request::from_parts(head.request, Inbound { kind: body });

        // 3. The service, with the body pumped and the client watched meanwhile; then the
        // response head. Both in a block of their own: what they use (the response's parts,
        // the service's extra fields) then holds no room in this future while the body is
        // written.
        let mut answer = handle(request);
        let mut body_complete = pump.is_none();
        let (framing, mut body) = {
            let answered = poll_fn(|cx| {
                if let Poll::Ready(resp) = Pin::new(&mut answer).poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                if let Some(p) = &mut pump {
                    match p.poll(cx, &mut io, &mut rbuf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(result) => {
                            body_complete = result.is_ok();
                            pump = None;
                            if !body_complete {
                                // The body reports the failure; the service answers it.
                                return Poll::Pending;
                            }
                        }
                    }
                }
                if body_complete {
                    if let ClientSide::Gone = poll_client(&mut io, cx, &mut rbuf, limits.max_head) {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            })
            .await;
            drop(answer);
            let Some((response, extra)) = answered else {
                return Ok(());
            };
            drop(pump);
            if !body_complete || watcher.is_signalled() {
                keep_alive = false;
            }
            let (mut parts, body) = response.into_parts();
            let (framing, present) = settle_framing(
                parts.status,
                &mut parts.headers,
                &body.size_hint(),
                head_request,
                client_version,
                &mut keep_alive,
            );
            encode_head(
                &mut out.head,
                parts.status,
                &parts.headers,
                &extra,
                &present,
                keep_alive,
                client_version,
            );
            (framing, body)
        };
        let written = write_body(&mut io, &mut out, &mut body, framing, &mut rbuf, &limits).await;
        drop(body);
        drop(ticket);
        written?;
        if !keep_alive {
            let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
            if !body_complete {
                linger(&mut io).await;
            }
            return Ok(());
        }
        if rbuf.is_empty() && rbuf.capacity() > KEEP_READ_CAPACITY {
            rbuf = BytesMut::new();
        }
    }
}

/// Writes a response body (the head is already in `out`).
async fn write_body<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Outbox,
    body: &mut Body,
    framing: Framing,
    rbuf: &mut BytesMut,
    limits: &Limits,
) -> Result<(), ConnError> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut finished = framing == Framing::None;
    let mut head_written = false;
    poll_fn(|cx| loop {
        while !finished && out.room() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers are not sent
                    };
                    if data.is_empty() {
                        continue;
                    }
                    match framing {
                        Framing::Chunked => out.push_chunk(data),
                        Framing::Length(_) => {
                            if data.len() as u64 > left {
                                data.truncate(left as usize);
                            }
                            left -= data.len() as u64;
                            out.push(Piece::Shared(data));
                        }
                        Framing::Close => out.push(Piece::Shared(data)),
                        Framing::None => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    finished = true;
                    match framing {
                        Framing::Chunked => out.push(Piece::Static(b"0\r\n\r\n")),
                        Framing::Length(_) if left > 0 => {
                            return Poll::Ready(Err("response body shorter than its length".into()))
                        }
                        _ => {}
                    }
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            if finished {
                return Poll::Ready(Ok(()));
            }
            if head_written {
                // Waiting for the backend: hold no buffers meanwhile.
                out.release();
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    *rbuf = BytesMut::new();
                }
            }
            return match poll_client(io, cx, rbuf, limits.max_head) {
                ClientSide::Open => Poll::Pending,
                ClientSide::Gone => Poll::Ready(Err("client closed the connection".into())),
            };
        }
        match out.poll_flush(cx, io) {
            Poll::Ready(Ok(())) => head_written = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// After a response that left the request body unread, with the write side shut: reads and
/// discards what the client still sends, up to [`LINGER_BYTES`] or [`LINGER_TIME`], before the
/// socket is closed. Closing a socket with unread data makes the kernel send a reset, which can
/// reach the client before it has read the response (a 413 or 401 it would then never see).
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    let drain = async {
        // On the heap: a buffer in this future would be in every connection's future, lingering
        // or not (an async fn's state is as large as its largest await point).
        let mut discard = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            let mut rb = ReadBuf::new(&mut discard);
            match poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut rb)).await {
                Ok(()) if !rb.filled().is_empty() => total += rb.filled().len(),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// How much of an unread request body is drained before closing (see [`linger`]).
const LINGER_BYTES: usize = 1 << 20;
/// How long an unread request body is drained before closing (see [`linger`]).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers a refused head, then lingers (see [`linger`]) and lets the caller close.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Outbox,
    status: StatusCode,
) {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let present = Present::scan(&headers);
    encode_head(
        &mut out.head,
        status,
        &headers,
        &(),
        &present,
        false,
        Version::HTTP_11,
    );
    if poll_fn(|cx| out.poll_flush(cx, io)).await.is_ok() {
        let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
        linger(io).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, Refusal> {
        parse_head(raw.as_bytes(), 100)
    }

    #[test]
    fn a_head_is_parsed_with_its_framing_and_connection_intent() {
        let raw = concat!(
            "POST /v1/x?a=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n",
            "X-A: 1\r\nx-a: 2\r\n\r\nhello"
        );
        let h = head(raw).unwrap().unwrap();
        assert_eq!(h.request.method, Method::POST);
        assert_eq!(h.request.uri.path(), "/v1/x");
        assert_eq!(h.request.uri.query(), Some("a=1"));
        assert_eq!(h.request.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(h.framing, Some(BodyFraming::Length(5))));
        assert!(h.keep_alive);
        assert_eq!(h.len, 71, "the head ends before the body");

        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        assert!(h.framing.is_none());
        let h = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = head("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Some(BodyFraming::Chunked(_))));
        assert!(h.expect_continue);
        assert!(
            head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none(),
            "partial"
        );
    }

    #[test]
    fn header_values_keep_tabs_and_non_ascii_bytes_and_refuse_controls() {
        // Debug builds check every unchecked value: a byte httparse passes and `HeaderValue`
        // refuses would panic here.
        let raw = b"GET / HTTP/1.1\r\nx-n: caf\xc3\xa9\t!~\r\n\r\n";
        let h = parse_head(raw, 100).unwrap().unwrap();
        assert_eq!(h.request.headers["x-n"].as_bytes(), b"caf\xc3\xa9\t!~");
        assert!(parse_head(b"GET / HTTP/1.1\r\nx-n: a\x7fb\r\n\r\n", 100).is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nx-n: a\x01b\r\n\r\n", 100).is_err());
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        let refused = |raw: &str| head(raw).err().map(|r| r.0.as_u16());
        assert_eq!(
            refused("GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(400)
        );
        assert_eq!(refused("GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(refused("G@T / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Some(400));
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        assert_eq!(
            head("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .map(|h| matches!(h.framing, Some(BodyFraming::Length(1)))),
            Some(true),
            "repeated equal lengths are one length"
        );
    }

    #[test]
    fn response_framing_follows_the_body_and_the_client() {
        let frame = |status: u16, hint: SizeHint, head_req: bool, v: Version| {
            let mut h = HeaderMap::new();
            let mut ka = true;
            let (f, _) = settle_framing(
                StatusCode::from_u16(status).unwrap(),
                &mut h,
                &hint,
                head_req,
                v,
                &mut ka,
            );
            (
                f,
                h.get("content-length").cloned(),
                h.get("transfer-encoding").cloned(),
                ka,
            )
        };
        let (f, cl, _, ka) = frame(200, SizeHint::with_exact(5), false, Version::HTTP_11);
        assert_eq!(
            (f, cl.unwrap(), ka),
            (Framing::Length(5), HeaderValue::from(5u64), true)
        );
        let (f, cl, te, _) = frame(200, SizeHint::default(), false, Version::HTTP_11);
        assert_eq!(
            (f, cl, te.unwrap()),
            (Framing::Chunked, None, HeaderValue::from_static("chunked"))
        );
        let (f, _, te, ka) = frame(200, SizeHint::default(), false, Version::HTTP_10);
        assert_eq!((f, te, ka), (Framing::Close, None, false));
        let (f, cl, _, _) = frame(200, SizeHint::with_exact(7), true, Version::HTTP_11);
        assert_eq!(
            (f, cl.unwrap()),
            (Framing::None, HeaderValue::from(7u64)),
            "HEAD keeps the length, sends no body"
        );
        let (f, cl, _, _) = frame(204, SizeHint::with_exact(0), false, Version::HTTP_11);
        assert_eq!((f, cl), (Framing::None, None));
    }

    #[test]
    fn heads_are_encoded_with_date_and_connection() {
        /// Replaces the map's `server` field with its own.
        struct Server;
        impl HeadExtra for Server {
            fn supersedes(&self, name: &HeaderName) -> bool {
                name == header::SERVER
            }
            fn encode(&self, head: &mut Vec<u8>) {
                head.extend_from_slice(b"server: olla\r\n");
            }
        }
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("2"));
        h.insert("server", HeaderValue::from_static("backend"));
        let mut out = Vec::new();
        let p = Present::scan(&h);
        encode_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &h,
            &Server,
            &p,
            false,
            Version::HTTP_11,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nserver: olla\r\ndate: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(" GMT\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            &(),
            &Present::default(),
            true,
            Version::HTTP_10,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn content_lengths_are_plain_decimal_that_fits() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 1234 "), Some(1234));
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"12a",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_connection_future_is_small() {
        // Every open connection holds its `serve` future for its whole life: a buffer kept
        // across an await inside it (a 4 KiB array in `linger` once) is memory per stream.
        let (io, _peer) = tokio::io::duplex(64);
        let shutdown = super::super::graceful::Shutdown::new();
        let limits = Limits {
            max_head: 16 * 1024,
            max_headers: 100,
        };
        type Answer = (Response<Body>, crate::own_headers::OwnHeaders);
        let answer = |_req: Request<Inbound>| -> Pin<Box<dyn Future<Output = Answer> + Send>> {
            Box::pin(async { (Response::new(crate::http_util::empty()), Default::default()) })
        };
        let conn = serve(io, limits, shutdown.watcher(), || (), answer);
        let size = std::mem::size_of_val(&conn);
        // 1.2 KB in a debug build (5.6 KB with the array in `linger`).
        assert!(size <= 1536, "serve's future is {size} bytes");
    }

    #[test]
    fn chunk_lines_are_lower_hex() {
        let mut b = [0u8; 18];
        let n = hex_line(0x1a2b, &mut b);
        assert_eq!(&b[..n], b"1a2b\r\n");
        let n = hex_line(0, &mut b);
        assert_eq!(&b[..n], b"0\r\n");
        let n = hex_line(usize::MAX, &mut b);
        assert_eq!(n, 18);
    }
}
