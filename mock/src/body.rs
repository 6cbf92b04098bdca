//! The response body type: whole bodies, token streams paced by a timer, and injected aborts.
//!
//! Owns [`MockBody`] (an `http_body::Body` polled frame by frame by hyper) and the
//! [`Encoder`] trait each dialect implements to turn "head / token i / tail" into bytes.
//! The body carries the request's [`Guard`] and marks it finished when the last frame is
//! produced; if hyper drops the body earlier (client gone), the guard counts a cancel.
//! It must not build JSON itself or look at the config: dialects and routes decide that.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::stats::Guard;

/// Pause before an injected abort, so the frames already produced reach the socket (hyper
/// drops its unflushed write buffer when a body fails, and h2 clears a reset stream's queue).
const ABORT_GRACE: Duration = Duration::from_millis(15);

/// A streaming dialect: the bytes sent before the first token, for each token, and after
/// the last one (all closing events together).
pub(crate) trait Encoder: Send + 'static {
    fn head(&self) -> Option<Bytes>;
    fn token(&self, index: usize) -> Bytes;
    fn tail(&self) -> Bytes;
}

/// The error a body returns to make hyper abort the connection (or reset the h2 stream).
#[derive(Debug)]
pub struct MockAbort;

impl fmt::Display for MockAbort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("olla-mock: injected connection drop")
    }
}

impl StdError for MockAbort {}

/// The body of every mock response.
pub struct MockBody {
    inner: Inner,
    guard: Option<Guard>,
}

enum Inner {
    /// One frame, then the end.
    Full(Option<Bytes>),
    /// Announces `full_len` bytes, sends `part`, waits briefly, then fails.
    Truncated {
        part: Option<Bytes>,
        full_len: u64,
        sleep: Option<Pin<Box<Sleep>>>,
    },
    Stream(Box<TokenStream>),
    /// The body has ended (normally or with the abort error).
    Done,
}

struct TokenStream {
    enc: Box<dyn Encoder>,
    tokens: usize,
    next: usize,
    phase: Phase,
    delay: Duration,
    /// Abort once this many tokens were sent (never more than `tokens`).
    drop_after: Option<usize>,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Tokens,
    Tail,
    Abort,
}

enum Step {
    Data(Bytes),
    Last(Bytes),
    Abort,
}

impl MockBody {
    /// A whole body sent as one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Self::empty();
        }
        Self {
            inner: Inner::Full(Some(bytes)),
            guard: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Done,
            guard: None,
        }
    }

    /// Announces the length of `whole` but sends only its first half, then aborts.
    pub fn truncated(whole: Bytes) -> Self {
        let full_len = whole.len() as u64;
        let part = whole.slice(..whole.len() / 2);
        Self {
            inner: Inner::Truncated {
                part: (!part.is_empty()).then_some(part),
                full_len,
                sleep: None,
            },
            guard: None,
        }
    }

    /// A token stream: `head`, then `tokens` tokens `delay` apart, then `tail`. With
    /// `drop_after = Some(k)` the body fails after `min(k, tokens)` tokens instead of
    /// sending the tail.
    pub(crate) fn stream(
        enc: Box<dyn Encoder>,
        tokens: usize,
        delay: Duration,
        drop_after: Option<usize>,
    ) -> Self {
        Self {
            inner: Inner::Stream(Box::new(TokenStream {
                enc,
                tokens,
                next: 0,
                phase: Phase::Head,
                delay,
                drop_after: drop_after.map(|k| k.min(tokens)),
                sleep: None,
                waiting: false,
            })),
            guard: None,
        }
    }

    /// Hands the request guard to the body. A body with nothing to send (or one that will
    /// never be polled, as for `HEAD`) settles it as completed right away.
    pub(crate) fn attach(&mut self, mut guard: Guard, never_polled: bool) {
        if never_polled || matches!(self.inner, Inner::Done) {
            guard.finish();
        }
        self.guard = Some(guard);
    }

    fn finish(&mut self) {
        self.inner = Inner::Done;
        if let Some(g) = self.guard.as_mut() {
            g.finish();
        }
    }
}

/// Arms (or re-arms) `slot` to fire at `deadline` and polls it.
fn poll_sleep(
    slot: &mut Option<Pin<Box<Sleep>>>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match (slot.as_mut(), deadline) {
        (Some(s), Some(d)) => s.as_mut().reset(d),
        (None, Some(d)) => *slot = Some(Box::pin(tokio::time::sleep_until(d))),
        (None, None) => return Poll::Ready(()),
        (Some(_), None) => {}
    }
    match slot.as_mut() {
        Some(s) => s.as_mut().poll(cx),
        None => Poll::Ready(()),
    }
}

impl TokenStream {
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            match self.phase {
                Phase::Head => {
                    self.phase = Phase::Tokens;
                    if let Some(head) = self.enc.head() {
                        return Poll::Ready(Step::Data(head));
                    }
                }
                Phase::Tokens => {
                    if self.drop_after.is_some_and(|k| self.next >= k) {
                        self.phase = Phase::Abort;
                        self.waiting = false;
                        continue;
                    }
                    if self.next >= self.tokens {
                        self.phase = Phase::Tail;
                        continue;
                    }
                    if self.next > 0 && !self.delay.is_zero() {
                        let deadline = (!self.waiting).then(|| Instant::now() + self.delay);
                        self.waiting = true;
                        if poll_sleep(&mut self.sleep, deadline, cx).is_pending() {
                            return Poll::Pending;
                        }
                        self.waiting = false;
                    }
                    let bytes = self.enc.token(self.next);
                    self.next += 1;
                    return Poll::Ready(Step::Data(bytes));
                }
                Phase::Tail => return Poll::Ready(Step::Last(self.enc.tail())),
                Phase::Abort => {
                    let deadline = (!self.waiting).then(|| Instant::now() + ABORT_GRACE);
                    self.waiting = true;
                    if poll_sleep(&mut self.sleep, deadline, cx).is_pending() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Step::Abort);
                }
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockAbort>>> {
        let this = self.get_mut();
        let step = match &mut this.inner {
            Inner::Done => return Poll::Ready(None),
            Inner::Full(bytes) => match bytes.take() {
                Some(b) => Step::Last(b),
                None => Step::Abort,
            },
            Inner::Truncated { part, sleep, .. } => match part.take() {
                Some(p) => Step::Data(p),
                None => {
                    let first = sleep.is_none();
                    let deadline = first.then(|| Instant::now() + ABORT_GRACE);
                    if poll_sleep(sleep, deadline, cx).is_pending() {
                        return Poll::Pending;
                    }
                    Step::Abort
                }
            },
            Inner::Stream(s) => match s.poll_step(cx) {
                Poll::Ready(step) => step,
                Poll::Pending => return Poll::Pending,
            },
        };
        match step {
            Step::Data(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Step::Last(b) => {
                this.finish();
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Step::Abort => {
                this.finish();
                Poll::Ready(Some(Err(MockAbort)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inner, Inner::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Done => SizeHint::with_exact(0),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::default(),
            Inner::Truncated { full_len, .. } => SizeHint::with_exact(*full_len),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counters;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    struct Words;
    impl Encoder for Words {
        fn head(&self) -> Option<Bytes> {
            Some(Bytes::from_static(b"<"))
        }
        fn token(&self, i: usize) -> Bytes {
            Bytes::from(format!("t{i}"))
        }
        fn tail(&self) -> Bytes {
            Bytes::from_static(b">")
        }
    }

    async fn frames(mut body: MockBody) -> (Vec<Bytes>, bool) {
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => out.extend(f.into_data().ok()),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[tokio::test(start_paused = true)]
    async fn stream_paces_tokens_and_completes() {
        let c = Arc::new(Counters::default());
        let mut body = MockBody::stream(Box::new(Words), 3, Duration::from_millis(100), None);
        body.attach(c.begin("/x"), false);
        let start = Instant::now();
        let (out, failed) = frames(body).await;
        assert!(!failed);
        assert_eq!(out, vec!["<", "t0", "t1", "t2", ">"]);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        let s = c.snapshot();
        assert_eq!((s.completed, s.cancelled, s.in_flight), (1, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn stream_drops_after_k_tokens() {
        let body = MockBody::stream(Box::new(Words), 5, Duration::ZERO, Some(2));
        let (out, failed) = frames(body).await;
        assert!(failed);
        assert_eq!(out, vec!["<", "t0", "t1"]);
        // Asking to drop after more tokens than exist drops before the tail.
        let body = MockBody::stream(Box::new(Words), 2, Duration::ZERO, Some(9));
        let (out, failed) = frames(body).await;
        assert!(failed);
        assert_eq!(out, vec!["<", "t0", "t1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_body_counts_cancelled() {
        let c = Arc::new(Counters::default());
        let mut body = MockBody::stream(Box::new(Words), 3, Duration::from_secs(1), None);
        body.attach(c.begin("/x"), false);
        let first = body.frame().await;
        assert!(first.is_some());
        drop(body);
        let s = c.snapshot();
        assert_eq!((s.completed, s.cancelled), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn full_truncated_and_empty() {
        let c = Arc::new(Counters::default());
        let mut body = MockBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        body.attach(c.begin("/x"), false);
        assert_eq!(
            frames(body).await,
            (vec![Bytes::from_static(b"hello")], false)
        );

        let mut body = MockBody::empty();
        assert!(body.is_end_stream());
        body.attach(c.begin("/x"), false);
        drop(body);

        let body = MockBody::truncated(Bytes::from_static(b"0123456789"));
        assert_eq!(body.size_hint().exact(), Some(10));
        assert_eq!(
            frames(body).await,
            (vec![Bytes::from_static(b"01234")], true)
        );
        let s = c.snapshot();
        assert_eq!((s.completed, s.cancelled), (2, 0));
    }
}
