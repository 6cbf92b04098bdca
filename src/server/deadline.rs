//! Per-connection deadlines for client connections: the first request head (protocol
//! detection included), keep-alive idle, and stalled writes. It owns the rule that no client
//! connection lives without a deadline unless a request is in flight, and it must not look at
//! HTTP: it only sees bytes, and learns from the service when requests start and end.
//!
//! Cost: one timer per connection, created the first time a read or write waits, and moved
//! (reset) only when the deadline in force changes, about once per request on a keep-alive
//! connection. Nothing is allocated per request; the request counter is one atomic.
//!
//! States of a connection:
//! - no request yet: reads must bring a complete first request before accept +
//!   `read_header_timeout` (a socket that sends nothing, or half an HTTP/2 preface, is closed);
//! - a request in flight (counted from the parsed head until its response body is dropped):
//!   no read deadline (the request body has its own read deadline in the proxy, the backend its
//!   timeouts);
//! - idle between requests: the next head must come before the last response end +
//!   `idle_timeout`;
//! - at any time, a write that makes no progress for `write_timeout` (when set) ends the
//!   connection, which drops the response body and with it the backend slot and connection.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The deadlines a connection is held to (zero = none).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub first_head: Duration,
    pub idle: Duration,
    pub write_stall: Duration,
}

/// What the service tells the connection: requests in flight and when the last one ended.
#[derive(Debug)]
pub struct Clock {
    born: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `born` when the connection last became idle; `u64::MAX` before its
    /// first request.
    idle_since_ms: AtomicU64,
}

impl Clock {
    pub fn new(born: Instant) -> Arc<Self> {
        Arc::new(Self {
            born,
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// A request head was parsed; the returned ticket ends the request when dropped.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ticket(Arc::clone(self))
    }

    /// When the first request head must have arrived, if ever.
    pub fn first_head_deadline(&self, limits: &Limits) -> Option<Instant> {
        after(self.born, limits.first_head)
    }

    /// The read deadline in force, if any.
    fn read_deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.idle_since_ms.load(Ordering::Relaxed) {
            u64::MAX => after(self.born, limits.first_head),
            ms => self
                .born
                .checked_add(Duration::from_millis(ms))
                .and_then(|since| after(since, limits.idle)),
        }
    }
}

/// `at + d`, or `None` for no deadline (zero) or one beyond the clock's range.
fn after(at: Instant, d: Duration) -> Option<Instant> {
    if d.is_zero() {
        None
    } else {
        at.checked_add(d)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct Ticket(Arc<Clock>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let c = &self.0;
        let ms = Instant::now().saturating_duration_since(c.born).as_millis();
        c.idle_since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request's [`Ticket`] when the server drops it (HTTP/2, served
/// by hyper).
pub struct Tracked<B> {
    inner: B,
    _ticket: Ticket,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, ticket: Ticket) -> Self {
        Self {
            inner,
            _ticket: ticket,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket held to its connection's deadlines.
pub struct DeadlineIo {
    stream: TcpStream,
    clock: Arc<Clock>,
    limits: Limits,
    /// When writes started waiting (the client stopped reading), if they are.
    write_stalled: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl DeadlineIo {
    pub fn new(stream: TcpStream, clock: Arc<Clock>, limits: Limits) -> Self {
        Self {
            stream,
            clock,
            limits,
            write_stalled: None,
            timer: None,
            armed: None,
        }
    }

    /// The stream is not ready: checks the earliest deadline in force and arms the timer for
    /// it. `Err` once a deadline has passed.
    fn on_pending(&mut self, cx: &mut Context<'_>, writing: bool) -> io::Result<()> {
        let now = Instant::now();
        if writing && self.write_stalled.is_none() {
            self.write_stalled = Some(now);
        }
        let read = self.clock.read_deadline(&self.limits);
        let write = self
            .write_stalled
            .and_then(|at| after(at, self.limits.write_stall));
        let Some(deadline) = earliest(read, write) else {
            return Ok(());
        };
        if deadline <= now || self.arm(cx, deadline) {
            return Err(timed_out(write == Some(deadline)));
        }
        Ok(())
    }

    /// Points the timer at `deadline` (moving it only if it changed) and registers this task
    /// with it; `true` if it has already fired.
    fn arm(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        if self.armed != Some(deadline) {
            self.armed = Some(deadline);
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn wrote<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.on_pending(cx, true) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.write_stalled = None;
                // A response just ended before this write (its ticket is gone), after the last
                // read waited without a deadline: arm the idle deadline now, or nothing would
                // wake this connection when it passes.
                if let Some(deadline) = self.clock.read_deadline(&self.limits) {
                    if self.armed != Some(deadline) {
                        self.arm(cx, deadline);
                    }
                }
                ready
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn timed_out(writing: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        if writing {
            "client stopped reading (write_timeout)"
        } else {
            "client sent no complete request in time (read_header_timeout / idle_timeout)"
        },
    )
}

impl AsyncRead for DeadlineIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.on_pending(cx, false) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for DeadlineIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.wrote(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        first_head: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        write_stall: Duration::ZERO,
    };

    #[tokio::test(start_paused = true)]
    async fn the_read_deadline_follows_the_requests_in_flight() {
        let born = Instant::now();
        let clock = Clock::new(born);
        assert_eq!(
            clock.read_deadline(&LIMITS),
            Some(born + Duration::from_secs(10)),
            "before the first request: the head deadline from accept"
        );
        let a = clock.begin();
        let b = clock.begin();
        assert_eq!(clock.read_deadline(&LIMITS), None, "in flight: none");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(a);
        assert_eq!(clock.read_deadline(&LIMITS), None, "one still in flight");
        drop(b);
        assert_eq!(
            clock.read_deadline(&LIMITS),
            Some(born + Duration::from_secs(35)),
            "idle: from the last response end"
        );
        let none = Limits {
            idle: Duration::ZERO,
            ..LIMITS
        };
        assert_eq!(clock.read_deadline(&none), None, "zero means no deadline");
    }

    #[test]
    fn deadlines_beyond_the_clock_are_none() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), None);
        assert_eq!(after(now, Duration::ZERO), None);
        assert_eq!(earliest(Some(now), None), Some(now));
    }
}
