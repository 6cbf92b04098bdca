//! The response body of a translated stream: feeds the upstream (chat-completions SSE) body
//! through a [`StreamTranslator`] frame by frame and hands on whatever events each frame
//! completes, at once. While the upstream is silent for [`PING_EVERY`], a `ping` event keeps
//! clients and intermediaries from timing out. An upstream failure becomes an `error` event,
//! then the body fails so the client sees the stream incomplete.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use crate::dialect::anthropic::stream::StreamTranslator;
use crate::http_util::{Body as BoxedBody, BoxError};

/// Silence after which a `ping` event is sent.
pub const PING_EVERY: Duration = Duration::from_secs(10);

pub struct TranslatedStream {
    inner: BoxedBody,
    translator: StreamTranslator,
    ping: Pin<Box<Sleep>>,
    every: Duration,
    /// The inner body's error, returned after the `error` event.
    failed: Option<BoxError>,
    done: bool,
}

impl TranslatedStream {
    pub fn new(inner: BoxedBody, translator: StreamTranslator, every: Duration) -> Self {
        Self {
            inner,
            translator,
            ping: Box::pin(tokio::time::sleep(every)),
            every,
            failed: None,
            done: false,
        }
    }

    fn reset_ping(&mut self) {
        if let Some(at) = Instant::now().checked_add(self.every) {
            self.ping.as_mut().reset(at);
        }
    }
}

impl Body for TranslatedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.failed.take() {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.translator.push(&data, &mut out);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.translator
                        .fail(&format!("upstream stream broke: {e}"), &mut out);
                    this.failed = Some(e);
                }
                Poll::Ready(None) => {
                    this.translator.finish(&mut out);
                    this.done = true;
                }
                Poll::Pending => {
                    if this.ping.as_mut().poll(cx).is_ready() {
                        this.translator.ping(&mut out);
                        this.reset_ping();
                        // Register the timer again before yielding.
                        let _ = this.ping.as_mut().poll(cx);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    return Poll::Pending;
                }
            }
            if this.translator.is_finished() && this.failed.is_none() {
                // Nothing may follow message_stop or error; the upstream is dropped with us.
                this.done = true;
            }
            if !out.is_empty() {
                this.reset_ping();
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.failed.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::anthropic::stream::check_well_formed;
    use http_body_util::BodyExt;

    fn translator() -> StreamTranslator {
        StreamTranslator::new("m", "msg_t".into(), 1, vec![])
    }

    #[tokio::test(start_paused = true)]
    async fn pings_during_silence_then_translates() {
        let (tx, inner) = channel();
        let mut body = TranslatedStream::new(inner, translator(), Duration::from_secs(5));
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(12)).await;
            let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
        });
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            all.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        feeder.await.unwrap();
        let events = check_well_formed(&all).unwrap();
        let pings = events.iter().filter(|(n, _)| n == "ping").count();
        assert_eq!(pings, 2, "{events:?}");
        assert_eq!(
            events[0].0, "message_start",
            "message_start goes before any ping"
        );
        assert_eq!(events.last().unwrap().0, "message_stop");
    }

    #[tokio::test]
    async fn upstream_failure_is_an_error_event_then_an_error() {
        let (tx, inner) = channel();
        let mut body = TranslatedStream::new(inner, translator(), PING_EVERY);
        let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.unwrap();
        tx.send(Err("reset".into())).await.unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let events = check_well_formed(&[first, second].concat()).unwrap();
        assert_eq!(events.last().unwrap().0, "error");
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());
    }

    /// A body fed by a channel.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        BoxedBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, ChannelBody(rx).boxed())
    }
}
