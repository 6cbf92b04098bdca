//! The streamed response body: forwards the backend's body frame by frame (never buffered),
//! enforces the idle timeout between chunks and the optional total deadline, counts bytes, holds
//! the backend's in-flight guard (and concurrency permit) for the whole stream, and reports the
//! outcome exactly once. A broken stream after the first byte is never retried: an SSE stream
//! gets a final `error` event, then the body is aborted so the client sees it incomplete. If the
//! client goes away, hyper drops this body, which drops the upstream body and so cancels the
//! upstream request at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use olla_actors::{InFlightGuard, Outcome};
use tokio::time::{Instant, Sleep};

use crate::http_util::BoxError;

/// How the stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("request exceeded its total time limit of {0:?}")]
    Total(Duration),
    #[error("upstream stream broke: {0}")]
    Upstream(String),
}

pub struct GuardedBody {
    inner: Incoming,
    guard: Option<InFlightGuard>,
    first_byte: Duration,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    sse: bool,
    /// Set after an error: the error event (if any) to emit, then the error to return.
    failing: Option<(Option<Bytes>, StreamError)>,
    done: bool,
}

impl GuardedBody {
    pub fn new(
        inner: Incoming,
        guard: InFlightGuard,
        first_byte: Duration,
        idle: Duration,
        total_deadline: Option<(Duration, Instant)>,
        sse: bool,
    ) -> Self {
        Self {
            inner,
            guard: Some(guard),
            first_byte,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            total: total_deadline.map(|(d, at)| (d, Box::pin(tokio::time::sleep_until(at)))),
            sse,
            failing: None,
            done: false,
        }
    }

    fn fail(&mut self, err: StreamError) {
        if let Some(mut g) = self.guard.take() {
            let outcome = match err {
                StreamError::Total(_) => Outcome::Success,
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
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((event, _)) = this.failing.as_mut() {
            if let Some(ev) = event.take() {
                return Poll::Ready(Some(Ok(Frame::data(ev))));
            }
            this.done = true;
            let (_, err) = this.failing.take().expect("failing is set");
            return Poll::Ready(Some(Err(Box::new(err))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(g) = &this.guard {
                        g.add_bytes(data.len() as u64);
                    }
                }
                let next = Instant::now() + this.idle;
                this.idle_timer.as_mut().reset(next);
                // hyper may stop polling once a sized body is complete: settle the outcome now.
                if this.inner.is_end_stream() {
                    this.done = true;
                    if let Some(mut g) = this.guard.take() {
                        g.report(Outcome::Success, Some(this.first_byte));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(StreamError::Upstream(e.to_string()));
                self.poll_frame(cx)
            }
            Poll::Ready(None) => {
                this.done = true;
                if let Some(mut g) = this.guard.take() {
                    g.report(Outcome::Success, Some(this.first_byte));
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    let idle = this.idle;
                    this.fail(StreamError::Idle(idle));
                    return self.poll_frame(cx);
                }
                if let Some((d, t)) = this.total.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        let d = *d;
                        this.fail(StreamError::Total(d));
                        return self.poll_frame(cx);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.failing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failing.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
