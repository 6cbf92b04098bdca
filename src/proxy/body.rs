//! The streamed response body: forwards the backend's body as it arrives (never waiting for more
//! than the backend has already sent), enforces the idle timeout between chunks and the optional
//! total deadline, counts bytes, holds the backend's in-flight guard (and concurrency permit) for
//! the whole stream, and reports the outcome exactly once.
//!
//! Coalescing: the server connection writes whenever the body it polls is not ready, so forwarding
//! chunk by chunk would cost one `writev` per SSE event even when the backend sent a burst of
//! events in one packet. The direct HTTP/1.1 body (`Upstream::Direct`) already hands over
//! everything the socket holds in one frame. hyper's client body (`Upstream::Hyper`, for TLS and
//! h2c backends) hands over one decoded chunk at a time, from another task: when data is in hand
//! and it has nothing ready, this body yields to the scheduler (to the back of the run queue,
//! letting the upstream connection task decode what it already read) and emits everything gathered
//! as soon as a round brings nothing new, or at 64 KiB. A paced stream (tokens milliseconds apart)
//! is delayed by one scheduler round, microseconds.
//!
//! A broken stream after the first byte is never retried: an SSE stream gets a final `error` event,
//! then the body is aborted so the client sees it incomplete. If the client goes away, the server
//! drops this body, which drops the upstream body and so cancels the upstream request.
//!
//! A client that stops reading: the server stops polling a body whose data it cannot write, so the
//! timers checked inside a poll would never fire and the backend slot and upstream connection would
//! be held for as long as the client stays connected. Rule: the idle and total limits hold whether
//! or not the body is polled. Once a response streams past its first frame, a watchdog task (one
//! per streaming response, none for a body complete in its first frame) sleeps until the next
//! deadline and, if it has passed, cuts the stream: the slot is released, the upstream body dropped
//! (closing its connection), and the next poll ends the body with the error. The stream state sits
//! behind a mutex shared with the watchdog.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use olla_actors::backend::h1::H1Body;
use olla_actors::published::BackendSlot;
use olla_actors::{InFlightGuard, Outcome};
use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use crate::http_util::BoxError;

/// Emit gathered data once it reaches this size.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Scheduler rounds without new data after which gathered data is sent.
const MAX_EMPTY_ROUNDS: u8 = 2;

/// How the stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("request exceeded its total time limit of {0:?}")]
    Total(Duration),
    #[error("upstream stream broke: {0}")]
    Upstream(String),
    #[error("client read nothing for {0:?}")]
    ClientStalled(Duration),
    #[error("backend removed while the stream ran")]
    BackendRemoved,
}

/// The upstream response body: read directly (plain HTTP/1.1) or through hyper's client.
pub enum Upstream {
    Direct(H1Body),
    Hyper(Incoming),
    /// Dropped after the stream was cut.
    Closed,
}

impl Upstream {
    /// Each poll already returns everything available (no need to wait for more rounds).
    fn self_coalescing(&self) -> bool {
        matches!(self, Self::Direct(_))
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Direct(b) => Pin::new(b).poll_frame(cx).map_err(|e| e.into()),
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(|e| e.into()),
            Self::Closed => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(b) => b.is_end_stream(),
            Self::Hyper(b) => b.is_end_stream(),
            Self::Closed => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(b) => b.size_hint(),
            Self::Hyper(b) => b.size_hint(),
            Self::Closed => SizeHint::with_exact(0),
        }
    }
}

/// The streamed response body handed to the server connection (see the module doc).
pub struct GuardedBody {
    stream: Arc<Mutex<Stream>>,
    watchdog: Option<AbortHandle>,
}

/// The state of one streamed response, shared by the body and its watchdog.
struct Stream {
    inner: Upstream,
    guard: Option<InFlightGuard>,
    first_byte: Duration,
    idle: Duration,
    /// Created the first time the upstream is not ready (single-frame bodies never need it).
    idle_timer: Option<Pin<Box<Sleep>>>,
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The waker the timers were last polled with. Until one is due, polling them again with
    /// the same waker would only register it again, so they are not polled (a stream event
    /// would otherwise poll both at each wait for the upstream).
    timers_waker: Option<Waker>,
    sse: bool,
    /// Data received and not yet handed to the server.
    gathered: Vec<Bytes>,
    gathered_len: usize,
    /// A scheduler yield is in progress while data is gathered.
    yielding: bool,
    /// Consecutive yields that brought nothing new.
    empty_rounds: u8,
    /// A trailers frame held back until the gathered data is out.
    held: Option<Frame<Bytes>>,
    /// The upstream ended (cleanly) while data was still gathered.
    upstream_done: bool,
    /// Some data has been handed to the server.
    sent_any: bool,
    /// Set after an error: the error event (if any) to emit, then the error to return.
    failing: Option<(Option<Bytes>, StreamError)>,
    done: bool,
    /// When data was last handed to the server (or the stream began).
    handed_at: Instant,
    /// The last poll waited for the upstream (not for hyper to take data).
    upstream_pending: bool,
    /// The waker of the last poll that returned pending.
    waker: Option<Waker>,
}

impl GuardedBody {
    pub fn new(
        inner: Upstream,
        guard: InFlightGuard,
        first_byte: Duration,
        idle: Duration,
        total_deadline: Option<(Duration, Instant)>,
        sse: bool,
    ) -> Self {
        let stream = Stream {
            inner,
            guard: Some(guard),
            first_byte,
            idle,
            idle_timer: None,
            timers_waker: None,
            total: total_deadline.map(|(d, at)| (d, Box::pin(tokio::time::sleep_until(at)))),
            sse,
            gathered: Vec::new(),
            gathered_len: 0,
            yielding: false,
            empty_rounds: 0,
            held: None,
            upstream_done: false,
            sent_any: false,
            failing: None,
            done: false,
            handed_at: Instant::now(),
            upstream_pending: false,
            waker: None,
        };
        Self {
            stream: Arc::new(Mutex::new(stream)),
            watchdog: None,
        }
    }

    /// Waits for the first batch of the body before the response head is handed to the server,
    /// so head and first data leave in one write.
    pub async fn prefill(&mut self) {
        std::future::poll_fn(|cx| self.stream.lock().poll_gather(cx)).await
    }

    /// The upstream failed before a single body byte was gathered: the request may still move
    /// to another backend (nothing reached the client).
    pub fn failed_before_data(&self) -> Option<String> {
        self.stream.lock().failed_before_data()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

/// Sleeps until the stream's next deadline and cuts it if the deadline has passed by then;
/// ends when the stream no longer holds a backend slot.
/// A removal that outlives its drain timeout cuts the stream too ([`BackendSlot::cut_streams`]).
async fn watchdog(stream: Weak<Mutex<Stream>>, slot: Option<Arc<BackendSlot>>) {
    let seen = slot.as_ref().map(|s| s.cut_generation()).unwrap_or(0);
    loop {
        let at = {
            let Some(s) = stream.upgrade() else { return };
            let s = s.lock();
            match s.deadline() {
                Some(at) if s.holds_slot() => at,
                _ => return,
            }
        };
        let removed = async {
            match &slot {
                Some(slot) => slot.cut_requested(seen).await,
                None => std::future::pending().await,
            }
        };
        let removed = tokio::select! {
            _ = tokio::time::sleep_until(at) => false,
            _ = removed => true,
        };
        let Some(s) = stream.upgrade() else { return };
        let mut s = s.lock();
        if !s.holds_slot() {
            return;
        }
        if removed {
            s.cut_with(StreamError::BackendRemoved);
            return;
        }
        if s.deadline().is_some_and(|d| d <= Instant::now()) {
            s.cut();
            return;
        }
    }
}

impl Stream {
    /// The stream still holds its backend slot (and upstream body).
    fn holds_slot(&self) -> bool {
        self.guard.is_some() && !self.done
    }

    /// When the idle or total limit runs out, whoever is slow (backend or client).
    fn deadline(&self) -> Option<Instant> {
        let idle = self.handed_at.checked_add(self.idle);
        let total = self.total.as_ref().map(|(_, t)| t.deadline());
        match (idle, total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A deadline passed without a poll: fail the stream, release the slot, drop the upstream
    /// body, and wake hyper if it waits on this body.
    fn cut(&mut self) {
        let err = match &self.total {
            Some((d, t)) if t.deadline() <= Instant::now() => StreamError::Total(*d),
            _ if self.upstream_pending => StreamError::Idle(self.idle),
            _ => StreamError::ClientStalled(self.idle),
        };
        self.cut_with(err);
    }

    /// Ends the stream now with `err`: see [`Stream::cut`].
    fn cut_with(&mut self, err: StreamError) {
        tracing::warn!(error = %err, "stream cut: backend slot and upstream connection released");
        self.fail(err);
        self.inner = Upstream::Closed;
        self.idle_timer = None;
        self.timers_waker = None;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn finish_ok(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.report(Outcome::Success, Some(self.first_byte));
        }
    }

    fn fail(&mut self, err: StreamError) {
        if let Some(mut g) = self.guard.take() {
            let outcome = match err {
                StreamError::Total(_) => Outcome::Success,
                StreamError::ClientStalled(_) | StreamError::BackendRemoved => Outcome::Cancelled,
                _ => Outcome::Fault,
            };
            g.report(outcome, Some(self.first_byte));
        }
        let event = self.sse.then(|| {
            let payload = serde_json::json!({"error": {
                "message": err.to_string(), "type": "upstream_error", "code": "stream_interrupted"}});
            Bytes::from(format!("event: error\ndata: {payload}\n\n"))
        });
        self.failing = Some((event, err));
    }

    /// Hands over everything gathered as one frame.
    fn take_gathered(&mut self) -> Option<Frame<Bytes>> {
        if self.gathered.is_empty() {
            return None;
        }
        self.yielding = false;
        let data = if self.gathered.len() == 1 {
            self.gathered.pop().unwrap_or_default()
        } else {
            let mut buf = BytesMut::with_capacity(self.gathered_len);
            for b in self.gathered.drain(..) {
                buf.extend_from_slice(&b);
            }
            buf.freeze()
        };
        self.gathered_len = 0;
        if let Some(g) = &self.guard {
            g.add_bytes(data.len() as u64);
        }
        // The idle timer is not moved here (a timer-wheel update per frame); it is re-armed
        // from this time when it fires (`poll_timers`).
        self.handed_at = Instant::now();
        Some(Frame::data(data))
    }

    /// Checks the idle and total timers (only called while the upstream is not ready).
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Option<StreamError> {
        let idle = self.idle;
        let due = self.handed_at.checked_add(idle);
        let registered = self.idle_timer.is_some()
            && self
                .timers_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
        let timer = self.idle_timer.get_or_insert_with(|| {
            Box::pin(match due {
                Some(at) => tokio::time::sleep_until(at),
                None => tokio::time::sleep(idle),
            })
        });
        let total_due = self.total.as_ref().is_some_and(|(_, t)| t.is_elapsed());
        if registered && !timer.is_elapsed() && !total_due {
            return None;
        }
        // Armed from an earlier hand-over: when it fires, the stream is idle only if nothing was
        // handed over since; else it is re-armed from the last hand-over.
        while timer.as_mut().poll(cx).is_ready() {
            match due {
                Some(at) if at > Instant::now() => timer.as_mut().reset(at),
                _ => return Some(StreamError::Idle(idle)),
            }
        }
        if let Some((d, t)) = self.total.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Some(StreamError::Total(*d));
            }
        }
        if !registered {
            self.timers_waker = Some(cx.waker().clone());
        }
        None
    }

    /// Pulls upstream frames into `gathered` until there is something to hand over: data
    /// after the coalescing rounds (or at the size limit), a held trailers frame, the end of
    /// the upstream body, or a failure.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.failing.is_some() || self.upstream_done || self.held.is_some() {
                return Poll::Ready(());
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        self.gathered_len += data.len();
                        self.gathered.push(data);
                        if self.inner.is_end_stream() {
                            self.upstream_done = true;
                        } else if self.gathered_len >= COALESCE_LIMIT
                            || self.inner.self_coalescing()
                        {
                            // The direct upstream handed over all its socket held: polled again
                            // now, it would only find the socket empty. The next poll for more
                            // data comes once this is handed over.
                            return Poll::Ready(());
                        }
                        // New data this round: look again after the next yield.
                        self.yielding = false;
                        self.empty_rounds = 0;
                    }
                    Err(frame) => {
                        self.held = Some(frame);
                        return Poll::Ready(());
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.fail(StreamError::Upstream(e.to_string()));
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    self.upstream_done = true;
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    if self.gathered.is_empty() {
                        if let Some(err) = self.poll_timers(cx) {
                            self.fail(err);
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    }
                    if self.inner.self_coalescing() {
                        return Poll::Ready(());
                    }
                    // Data in hand: give the upstream a few scheduler rounds to add more. A
                    // self-wake puts this task at the back of the run queue, behind the upstream
                    // connection task that our poll just woke.
                    if !self.yielding {
                        self.yielding = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    self.yielding = false;
                    self.empty_rounds += 1;
                    if self.empty_rounds >= MAX_EMPTY_ROUNDS {
                        self.empty_rounds = 0;
                        return Poll::Ready(());
                    }
                }
            }
        }
    }

    /// See [`GuardedBody::failed_before_data`].
    fn failed_before_data(&self) -> Option<String> {
        match &self.failing {
            Some((_, err)) if self.gathered.is_empty() && !self.sent_any => Some(err.to_string()),
            _ => None,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut stream = this.stream.lock();
        let polled = stream.poll_frame(cx);
        stream.upstream_pending = polled.is_pending();
        if polled.is_pending() {
            crate::http_util::keep_waker(&mut stream.waker, cx.waker());
        }
        if this.watchdog.is_none() && stream.holds_slot() {
            // Streaming past its first frame: keep the limits even if the server stops polling.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(&this.stream);
                let slot = stream.guard.as_ref().map(|g| g.handle().slot().clone());
                this.watchdog = Some(rt.spawn(watchdog(weak, slot)).abort_handle());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stream.lock().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.stream.lock().size_hint()
    }
}

impl Stream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(frame) = this.take_gathered() {
                this.sent_any = true;
                if this.upstream_done && this.held.is_none() && this.failing.is_none() {
                    // The last frame: hyper may never poll a complete sized body again.
                    this.done = true;
                    this.finish_ok();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(frame) = this.held.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.failing.is_some() {
                if let Some(ev) = this.failing.as_mut().and_then(|(event, _)| event.take()) {
                    return Poll::Ready(Some(Ok(Frame::data(ev))));
                }
                this.done = true;
                let (_, err) = this.failing.take().expect("failing is set");
                return Poll::Ready(Some(Err(Box::new(err))));
            }
            if this.upstream_done {
                this.done = true;
                this.finish_ok();
                return Poll::Ready(None);
            }
            if this.poll_gather(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.failing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failing.is_some() || self.upstream_done {
            return SizeHint::default();
        }
        let inner = self.inner.size_hint();
        let gathered = self.gathered_len as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(gathered));
        }
        hint.set_lower(inner.lower().saturating_add(gathered));
        hint
    }
}
