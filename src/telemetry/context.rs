//! The per-request context and its finisher.
//!
//! [`RequestContext`] is made once per request in `api::handle` and filled as the request
//! moves on (model, routing decision, upstream attempts, endpoint, queue wait, key name). The
//! response headers olla adds for the request (request id, model, routing decision, the
//! backend that answered) are taken from it once, by [`RequestContext::own_headers`].
//!
//! [`Finisher`] owns the context. `api::handle` holds it while the request is routed; when the
//! response is ready, [`Finisher::into_response`] moves it into the response body
//! ([`TrackedBody`]), which counts bytes, times the first byte and the gaps between chunks and
//! reads token usage as the body passes. The finish (metrics, access log, observers, and the
//! handover of a sampled request's record to the trace exporter) runs exactly once: when the
//! body ends, fails, or is dropped (client gone), or when the request task panics or is
//! dropped before a response exists (both through `Drop`). Nothing here may panic: the finish
//! can run while a panic unwinds.

use std::any::Any;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use olla_actors::spec::BackendSpec;
use tokio::time::Instant;

use crate::app::App;
use crate::http_util::{Body, BoxError};
use crate::own_headers::{OwnHeaders, RateFields, UpstreamFields};
use crate::proxy::headers::echo_text;
use crate::proxy::select::Decision;

use super::hist::{LocalHist, GAP_BUCKETS};
use super::trace::{SpanId, TraceIdentity};
use super::usage::{Usage, UsageScanner};

/// The API dialect of a request's route (a metric label and an access-log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// OpenAI-shaped paths (`/v1/...`) on the proxy and provider routes.
    OpenAi,
    /// `/olla/anthropic/...`.
    Anthropic,
    /// Ollama's native API (`/api/...`).
    Ollama,
    /// Other proxied paths (engine-native APIs).
    Other,
    /// olla's own routes: status, stats, metrics, model lists, version.
    Internal,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::OpenAi,
        Route::Anthropic,
        Route::Ollama,
        Route::Other,
        Route::Internal,
    ];

    /// The route of a request path.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/olla/anthropic/") || path == "/olla/anthropic" {
            return Self::Anthropic;
        }
        let Some(rest) = path.strip_prefix("/olla/") else {
            return Self::Internal;
        };
        if rest == "models" || rest.starts_with("models/") {
            return Self::Internal;
        }
        // Past the route prefix (`proxy`, `ollama`, `openai`, ...).
        // A byte scan: the prefix is a few bytes, less than a char searcher's set-up costs.
        let tail = rest
            .bytes()
            .position(|b| b == b'/')
            .map_or("", |i| &rest[i..]);
        if tail.starts_with("/v1/") || tail == "/v1" {
            Self::OpenAi
        } else if tail.starts_with("/api/") {
            Self::Ollama
        } else {
            Self::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Ollama => "ollama",
            Self::Other => "other",
            Self::Internal => "internal",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A proxied request (goes to a backend), as opposed to olla's own routes.
    pub fn is_proxy(self) -> bool {
        self != Self::Internal
    }
}

/// An endpoint's name, shared with its spec (no copy of the string per request).
#[derive(Clone, Debug)]
pub struct EndpointName(pub Arc<BackendSpec>);

impl std::ops::Deref for EndpointName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0.name
    }
}

impl std::fmt::Display for EndpointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// Why an upstream attempt produced no usable response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptError {
    /// The backend could not be reached (refused, unreachable, connect timeout).
    Connect,
    /// No response head within the first-byte timeout.
    Timeout,
    /// The exchange broke after the connection (reset, protocol error).
    Protocol,
    /// Headers came, then the body failed before its first byte.
    BodyBeforeData,
    /// The upstream request could not be built.
    Build,
}

impl AttemptError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::BodyBeforeData => "body",
            Self::Build => "build",
        }
    }
}

/// How an upstream attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response head with this status.
    Status(u16),
    Error(AttemptError),
}

/// One upstream attempt of a request (trace child spans are built from these).
#[derive(Clone, Debug)]
pub struct UpstreamAttempt {
    pub endpoint: EndpointName,
    /// The attempt's client span (the parent id the backend got in `traceparent`), when the
    /// request is traced.
    pub span_id: Option<SpanId>,
    pub started: Instant,
    /// When the response head came (or the attempt failed).
    pub ended: Instant,
    pub outcome: AttemptOutcome,
}

/// How a request's response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The body was sent whole.
    Complete,
    /// The body failed mid-way (upstream broke, idle or total timeout).
    Error,
    /// The client went away before the body (or the response) was complete.
    ClientGone,
    /// The request task panicked.
    Panic,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Error => "error",
            Self::ClientGone => "client_gone",
            Self::Panic => "panic",
        }
    }
}

/// Status recorded when the client left before a response existed (nginx's convention).
pub const STATUS_CLIENT_GONE: u16 = 499;

/// See the module doc.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub method: Method,
    pub path: String,
    pub route: Route,
    pub client_ip: IpAddr,
    /// The API key that admitted the request (set by the gate when keys are on): its name,
    /// model globs and budgets, never the key.
    pub caller: Option<Arc<crate::gate::keys::ApiKey>>,
    /// The model the client asked for.
    pub model: Option<String>,
    pub stream: bool,
    pub decision: Option<Decision>,
    /// The endpoint that served the response.
    pub endpoint: Option<EndpointName>,
    /// The `X-Olla-*` fields of the backend whose response is returned.
    pub upstream: Option<UpstreamFields>,
    pub attempts: Vec<UpstreamAttempt>,
    /// Moves to another candidate after a failed attempt.
    pub failovers: u32,
    /// Of those, moves caused by a retryable upstream status.
    pub retries: u32,
    /// Time spent waiting in a backend's queue.
    pub queue_wait: Option<Duration>,
    pub received: Instant,
    pub received_at: SystemTime,
    /// The request's W3C trace (accepted from the client's `traceparent` or new), when tracing
    /// is on for its path; its attempts propagate it to the backends.
    pub trace: Option<TraceIdentity>,
    /// Usage reported by a body stage that runs before the client sees the bytes (e.g. one that
    /// removes a usage chunk the client did not ask for); used when the bytes the client got
    /// carry none. Created on first use ([`RequestContext::usage_tap`]).
    pub usage_tap: Option<Arc<UsageTap>>,
    /// The request task panicked (the response is olla's 500).
    pub panicked: bool,
}

impl RequestContext {
    pub fn new(request_id: String, method: Method, path: String, client_ip: IpAddr) -> Self {
        let route = Route::of_path(&path);
        Self {
            request_id,
            method,
            path,
            route,
            client_ip,
            caller: None,
            model: None,
            stream: false,
            decision: None,
            endpoint: None,
            upstream: None,
            attempts: Vec::new(),
            failovers: 0,
            retries: 0,
            queue_wait: None,
            received: Instant::now(),
            received_at: SystemTime::now(),
            trace: None,
            usage_tap: None,
            panicked: false,
        }
    }

    /// The shared cell a body stage writes usage into (see `usage_tap`).
    pub fn usage_tap(&mut self) -> Arc<UsageTap> {
        self.usage_tap
            .get_or_insert_with(|| Arc::new(UsageTap::default()))
            .clone()
    }

    /// Records an attempt. Any attempt after the first is a failover; one after an attempt
    /// that got a response head (a retryable status) is also a retry.
    pub fn push_attempt(&mut self, attempt: UpstreamAttempt) {
        if let Some(prev) = self.attempts.last() {
            self.failovers += 1;
            if matches!(prev.outcome, AttemptOutcome::Status(_)) {
                self.retries += 1;
            }
        }
        if self.attempts.len() < MAX_ATTEMPTS {
            self.attempts.push(attempt);
        }
    }

    /// The fields every response of this request carries (request id, and Anthropic's
    /// `request-id`; the model; the routing decision; the backend that answered), with the
    /// gate's rate-limit state.
    pub fn own_headers(&self, rate: Option<RateFields>) -> OwnHeaders {
        OwnHeaders {
            request_id: Some(self.request_id.clone()),
            anthropic: self.route == Route::Anthropic,
            model: self
                .model
                .as_deref()
                .and_then(echo_text)
                .map(|m| m.into_owned()),
            decision: self.decision.clone(),
            upstream: self.upstream.clone(),
            rate,
        }
    }
}

/// Token usage written by a body stage and read by the finisher (atomics; `u64::MAX` =
/// unknown).
#[derive(Debug)]
pub struct UsageTap {
    input: std::sync::atomic::AtomicU64,
    output: std::sync::atomic::AtomicU64,
}

impl Default for UsageTap {
    fn default() -> Self {
        Self {
            input: std::sync::atomic::AtomicU64::new(u64::MAX),
            output: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl UsageTap {
    pub fn set(&self, usage: Usage) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(n) = usage.input {
            self.input.store(n.min(u64::MAX - 1), Relaxed);
        }
        if let Some(n) = usage.output {
            self.output.store(n.min(u64::MAX - 1), Relaxed);
        }
    }

    pub fn usage(&self) -> Usage {
        use std::sync::atomic::Ordering::Relaxed;
        let known = |v: u64| (v != u64::MAX).then_some(v);
        Usage {
            input: known(self.input.load(Relaxed)),
            output: known(self.output.load(Relaxed)),
        }
    }
}

/// Attempts kept per request (failover walks are bounded by the candidates anyway).
pub const MAX_ATTEMPTS: usize = 16;

/// Anthropic's request id header.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("request-id");

/// Everything known about a request when it ended; handed to every [`super::FinishObserver`].
#[derive(Debug)]
pub struct FinishRecord {
    pub request_id: String,
    pub method: Method,
    pub path: String,
    pub route: Route,
    pub model: Option<String>,
    pub endpoint: Option<EndpointName>,
    pub status: u16,
    pub stream: bool,
    pub end: EndReason,
    /// Time from the request head to the first body byte handed to the client.
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    pub queue_wait: Option<Duration>,
    pub bytes_out: u64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub failovers: u32,
    pub retries: u32,
    pub attempts: Vec<UpstreamAttempt>,
    pub client_ip: IpAddr,
    /// The API key that admitted the request.
    pub caller: Option<Arc<crate::gate::keys::ApiKey>>,
    pub decision: Option<Decision>,
    pub received_at: SystemTime,
    pub received: Instant,
    pub trace: Option<TraceIdentity>,
}

impl FinishRecord {
    pub fn endpoint_name(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The name of the API key that admitted the request.
    pub fn key_name(&self) -> Option<&str> {
        self.caller.as_ref().map(|k| &*k.spec.name)
    }

    /// A failed request: a 5xx, a body broken mid-way, or a panic.
    pub fn failed(&self) -> bool {
        self.status >= 500 || matches!(self.end, EndReason::Error | EndReason::Panic)
    }
}

/// What the body wrapper measures.
struct Tracker {
    app: Arc<App>,
    ctx: RequestContext,
    span: tracing::Span,
    status: u16,
    first_byte: Option<Instant>,
    last_chunk: Option<Instant>,
    bytes: u64,
    usage: UsageScanner,
    gaps: LocalHist,
    /// Counted in `Telemetry::in_flight` at the start (a proxy route then).
    in_flight: bool,
}

impl Tracker {
    fn on_data(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let now = Instant::now();
        match self.last_chunk {
            None => self.first_byte = Some(now),
            Some(prev) => self
                .gaps
                .observe(GAP_BUCKETS, now.duration_since(prev).as_secs_f64()),
        }
        self.last_chunk = Some(now);
        self.bytes += data.len() as u64;
        if self.ctx.route.is_proxy() {
            self.usage.push(data);
        }
    }

    fn finish(self: Box<Self>, end: EndReason) {
        let end = if self.ctx.panicked {
            EndReason::Panic
        } else {
            end
        };
        let Tracker {
            app,
            ctx,
            span,
            status,
            first_byte,
            bytes,
            usage,
            gaps,
            in_flight,
            ..
        } = *self;
        let now = Instant::now();
        let seen = usage.usage();
        let rec = FinishRecord {
            ttfb: first_byte.map(|t| t.duration_since(ctx.received)),
            duration: now.duration_since(ctx.received),
            tokens_in: seen
                .input
                .or_else(|| ctx.usage_tap.as_ref().and_then(|t| t.usage().input)),
            tokens_out: seen
                .output
                .or_else(|| ctx.usage_tap.as_ref().and_then(|t| t.usage().output)),
            request_id: ctx.request_id,
            method: ctx.method,
            path: ctx.path,
            route: ctx.route,
            model: ctx.model,
            endpoint: ctx.endpoint,
            status,
            stream: ctx.stream,
            end,
            queue_wait: ctx.queue_wait,
            bytes_out: bytes,
            failovers: ctx.failovers,
            retries: ctx.retries,
            attempts: ctx.attempts,
            client_ip: ctx.client_ip,
            caller: ctx.caller,
            decision: ctx.decision,
            received_at: ctx.received_at,
            received: ctx.received,
            trace: ctx.trace,
        };
        let _entered = span.enter();
        if in_flight {
            app.telemetry.end_in_flight();
        }
        let catalog = app.tree.published.catalog.load();
        app.telemetry.finish(&rec, &gaps, &catalog);
        if let Some(tracer) = &app.tracer {
            if rec.trace.as_ref().is_some_and(|t| t.sampled) {
                tracer.submit_record(rec);
            }
        }
    }
}

/// Owns the context until the response exists; see the module doc.
pub struct Finisher {
    /// Boxed: the tracker (about a kilobyte) moves from the request's future to its response
    /// body; a pointer moves cheaper than the struct.
    tracker: Option<Box<Tracker>>,
}

impl Finisher {
    pub fn new(app: Arc<App>, ctx: RequestContext) -> Self {
        let span = tracing::info_span!("request", request_id = %ctx.request_id);
        let in_flight = app.telemetry.begin(ctx.route);
        Self {
            // Written into the allocation (as the request future is, `server::Service::call`);
            // not through a closure-taking helper, whose captures would copy the context first.
            tracker: Some(Box::write(
                Box::new_uninit(),
                Tracker {
                    app,
                    ctx,
                    span,
                    status: 0,
                    first_byte: None,
                    last_chunk: None,
                    bytes: 0,
                    usage: UsageScanner::new(),
                    gaps: LocalHist::default(),
                    in_flight,
                },
            )),
        }
    }

    /// The context, to fill while the request is routed.
    ///
    /// # Panics
    /// Never: the tracker leaves only through `into_response` (which consumes `self`) or `Drop`.
    pub fn ctx(&mut self) -> &mut RequestContext {
        match self.tracker.as_mut() {
            Some(t) => &mut t.ctx,
            None => unreachable!("the finisher's context is present until it is consumed"),
        }
    }

    /// The request's tracing span (every log line of the request carries its request id).
    pub fn span(&self) -> tracing::Span {
        self.tracker
            .as_ref()
            .map_or_else(tracing::Span::none, |t| t.span.clone())
    }

    /// Hands the finish to the response's body; returns the response with the fields olla
    /// adds to it (the context's, and the gate's `rate`), to be written with its head.
    pub fn into_response(
        mut self,
        resp: Response<Body>,
        rate: Option<RateFields>,
    ) -> (Response<Body>, OwnHeaders) {
        let Some(mut tracker) = self.tracker.take() else {
            return (resp, OwnHeaders::default());
        };
        let own = tracker.ctx.own_headers(rate);
        let (parts, body) = resp.into_parts();
        tracker.status = parts.status.as_u16();
        let body = TrackedBody {
            inner: body,
            span: tracker.span.clone(),
            tracker: Some(tracker),
        };
        (Response::from_parts(parts, BodyExt::boxed(body)), own)
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            // No response exists: the task panicked, or hyper dropped the request (client gone).
            let end = if std::thread::panicking() {
                t.status = 500;
                EndReason::Panic
            } else {
                t.status = STATUS_CLIENT_GONE;
                EndReason::ClientGone
            };
            t.finish(end);
        }
    }
}

/// The response body with the finish attached (see the module doc).
pub struct TrackedBody {
    inner: Body,
    /// Entered while the body is polled: log lines of the stream carry the request id.
    span: tracing::Span,
    tracker: Option<Box<Tracker>>,
}

/// Finishes once: the tracker leaves its slot on the first call.
fn finish_once(slot: &mut Option<Box<Tracker>>, end: EndReason) {
    if let Some(t) = slot.take() {
        t.finish(end);
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(t), Some(data)) = (this.tracker.as_mut(), frame.data_ref()) {
                    t.on_data(data);
                }
                if this.inner.is_end_stream() {
                    finish_once(&mut this.tracker, EndReason::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                finish_once(&mut this.tracker, EndReason::Error);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                finish_once(&mut this.tracker, EndReason::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let head = self
            .tracker
            .as_ref()
            .is_some_and(|t| t.ctx.method == Method::HEAD);
        let end = if std::thread::panicking() {
            EndReason::Panic
        } else if self.inner.is_end_stream() || head {
            // A HEAD response has no body to send: the server drops it unpolled.
            EndReason::Complete
        } else {
            EndReason::ClientGone
        };
        finish_once(&mut self.tracker, end);
    }
}

pin_project_lite::pin_project! {
    /// The future of [`catch_unwind`].
    pub struct CatchUnwind<F> {
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// Runs `fut`, turning a panic inside it into `Err` (the request gets a 500; the daemon serves
/// on). The future is dropped after its panic like any other. It is polled where it lies (no
/// second copy of a large request future in the caller's state).
pub fn catch_unwind<F: Future>(fut: F) -> CatchUnwind<F> {
    CatchUnwind { fut }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_paths() {
        assert_eq!(
            Route::of_path("/olla/proxy/v1/chat/completions"),
            Route::OpenAi
        );
        assert_eq!(Route::of_path("/olla/ollama/api/chat"), Route::Ollama);
        assert_eq!(Route::of_path("/olla/openai/v1/models"), Route::OpenAi);
        assert_eq!(
            Route::of_path("/olla/anthropic/v1/messages"),
            Route::Anthropic
        );
        assert_eq!(Route::of_path("/olla/vllm/metrics"), Route::Other);
        assert_eq!(Route::of_path("/olla/models"), Route::Internal);
        assert_eq!(Route::of_path("/internal/status"), Route::Internal);
        assert_eq!(Route::of_path("/version"), Route::Internal);
    }

    #[test]
    fn failovers_and_retries_are_counted_from_attempts() {
        let mut ctx = RequestContext::new(
            "r".into(),
            Method::POST,
            "/olla/proxy/v1/chat/completions".into(),
            IpAddr::from([127, 0, 0, 1]),
        );
        let spec = Arc::new(BackendSpec::new(
            "a",
            http::Uri::from_static("http://127.0.0.1:1"),
            olla_actors::kind::BackendKind::Ollama,
        ));
        let at = |o| UpstreamAttempt {
            endpoint: EndpointName(spec.clone()),
            span_id: None,
            started: Instant::now(),
            ended: Instant::now(),
            outcome: o,
        };
        ctx.push_attempt(at(AttemptOutcome::Error(AttemptError::Connect)));
        ctx.push_attempt(at(AttemptOutcome::Status(503)));
        ctx.push_attempt(at(AttemptOutcome::Status(200)));
        assert_eq!((ctx.failovers, ctx.retries, ctx.attempts.len()), (2, 1, 3));
    }

    #[test]
    fn usage_tap_reports_what_a_stage_wrote() {
        let tap = UsageTap::default();
        assert_eq!(tap.usage(), Usage::default());
        tap.set(Usage {
            input: Some(3),
            output: None,
        });
        tap.set(Usage {
            input: None,
            output: Some(9),
        });
        assert_eq!(
            tap.usage(),
            Usage {
                input: Some(3),
                output: Some(9)
            }
        );
    }
}
