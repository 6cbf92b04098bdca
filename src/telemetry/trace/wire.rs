//! How a request is traced on today's request path, in three small hooks the request code
//! calls (each a no-op when tracing is off):
//!
//! - [`begin`] in the request handler: the request's [`TraceIdentity`] from its headers;
//!   [`scope`] runs the routing future with it as the task's current trace.
//! - [`AttemptTrace::begin`] / [`AttemptTrace::end`] around each upstream attempt in the proxy:
//!   a client span id, the outbound `traceparent` (and `tracestate`) headers, the attempt's
//!   times and outcome.
//! - [`finish`] on the response: wraps its body so that, when the body ends, errors or is
//!   dropped, a sampled request's [`RequestSpanInput`] is submitted to the exporter (once).
//!
//! The model, endpoint and backend type are read from the response's `X-Olla-Model`,
//! `X-Olla-Endpoint` and `X-Olla-Backend-Type` headers; tokens from the request's
//! [`UsageCounts`] (filled by the stream-usage filter, see [`usage_counts`]); time to first
//! token is the time to the first body frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;

use super::context::{SpanId, TraceIdentity};
use super::export::TraceExporter;
use super::span::{gen_ai_system, AttemptSpanInput, RequestSpanInput};
use crate::http_util::{Body, BoxError};
use crate::telemetry::stream_usage::UsageCounts;

/// The trace state of one request.
pub struct RequestTrace {
    pub identity: TraceIdentity,
    start: SystemTime,
    started: std::time::Instant,
    attempts: Mutex<Vec<AttemptSpanInput>>,
    pub usage: Arc<UsageCounts>,
}

tokio::task_local! {
    static CURRENT: Arc<RequestTrace>;
}

/// Whether requests to `path` are traced: all but olla's own status, metrics and version
/// routes (scrapes and health probes would drown the traces).
pub fn traced_path(path: &str) -> bool {
    !(path.starts_with("/internal/") || path == "/version")
}

/// The trace of a new request, when tracing is on and the path is traced.
pub fn begin(
    exporter: Option<&Arc<TraceExporter>>,
    path: &str,
    headers: &HeaderMap,
) -> Option<Arc<RequestTrace>> {
    let exporter = exporter.filter(|_| traced_path(path))?;
    Some(Arc::new(RequestTrace {
        identity: exporter.begin(headers),
        start: SystemTime::now(),
        started: std::time::Instant::now(),
        attempts: Mutex::new(Vec::new()),
        usage: Arc::new(UsageCounts::default()),
    }))
}

/// Runs `fut` with `trace` as the current trace of the task.
pub async fn scope<F: Future>(trace: Option<Arc<RequestTrace>>, fut: F) -> F::Output {
    match trace {
        Some(t) => CURRENT.scope(t, fut).await,
        None => fut.await,
    }
}

/// The current request's usage counts (a fresh, unshared one outside a traced request).
pub fn usage_counts() -> Arc<UsageCounts> {
    CURRENT.try_with(|t| t.usage.clone()).unwrap_or_default()
}

/// One upstream attempt of the current request.
pub struct AttemptTrace {
    trace: Arc<RequestTrace>,
    span_id: SpanId,
    endpoint: String,
    host: String,
    start: SystemTime,
}

impl AttemptTrace {
    /// Starts an attempt span for the current request (none outside a traced request).
    pub fn begin(endpoint: &str, host: &str) -> Option<Self> {
        let trace = CURRENT.try_with(Arc::clone).ok()?;
        Some(Self {
            trace,
            span_id: SpanId::random(),
            endpoint: endpoint.to_owned(),
            host: host.to_owned(),
            start: SystemTime::now(),
        })
    }

    /// Sets `traceparent` (and `tracestate`) for this attempt on the outbound headers.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        let id = &self.trace.identity;
        headers.insert("traceparent", id.traceparent_for(self.span_id));
        headers.remove("tracestate");
        if let Some(v) = id
            .tracestate
            .as_deref()
            .and_then(|s| HeaderValue::try_from(s).ok())
        {
            headers.insert("tracestate", v);
        }
    }

    /// Records the attempt's outcome.
    pub fn end(self, status: Option<u16>, error: Option<String>) {
        if !self.trace.identity.sampled {
            return;
        }
        let mut attempts = self.trace.attempts.lock();
        // Bounded: a request tries each candidate at most once.
        if attempts.len() < 64 {
            attempts.push(AttemptSpanInput {
                span_id: self.span_id,
                endpoint: self.endpoint,
                host: self.host,
                start: self.start,
                end: SystemTime::now(),
                status,
                error,
            });
        }
    }
}

/// Arranges for the request's spans to be submitted when `resp`'s body is finished.
pub fn finish(
    exporter: Option<&Arc<TraceExporter>>,
    trace: Option<Arc<RequestTrace>>,
    resp: Response<Body>,
    method: &Method,
    path: &str,
    request_id: &str,
) -> Response<Body> {
    let (Some(exporter), Some(trace)) = (exporter, trace) else {
        return resp;
    };
    if !trace.identity.sampled {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let pending = Pending {
        exporter: exporter.clone(),
        trace: trace.clone(),
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        status: parts.status.as_u16(),
        model: header("x-olla-model"),
        endpoint: header("x-olla-endpoint"),
        system: header("x-olla-backend-type").map(|k| gen_ai_system(&k)),
        request_id: request_id.to_owned(),
        first_frame: None,
        error: None,
    };
    let body = TracedBody {
        inner: body,
        pending: Some(pending),
    };
    Response::from_parts(parts, body.boxed())
}

struct Pending {
    exporter: Arc<TraceExporter>,
    trace: Arc<RequestTrace>,
    method: String,
    path: String,
    status: u16,
    model: Option<String>,
    endpoint: Option<String>,
    system: Option<&'static str>,
    request_id: String,
    first_frame: Option<Duration>,
    error: Option<String>,
}

impl Pending {
    fn submit(self) {
        let t = &self.trace;
        let elapsed = t.started.elapsed();
        let usage = t.usage.get();
        let attempts = std::mem::take(&mut *t.attempts.lock());
        self.exporter.submit(RequestSpanInput {
            trace_id: t.identity.trace_id,
            span_id: t.identity.span_id,
            parent_span_id: t.identity.parent_span_id,
            tracestate: t.identity.tracestate.clone(),
            method: self.method,
            path: self.path,
            status: self.status,
            start: t.start,
            end: t.start + elapsed,
            model: self.model,
            system: self.system,
            endpoint: self.endpoint,
            tokens_in: usage.map(|u| u.prompt_tokens),
            tokens_out: usage.map(|u| u.completion_tokens),
            ttft: self.first_frame,
            error: self.error,
            key_name: None,
            request_id: self.request_id,
            attempts,
        });
    }
}

/// The response body, submitting the request's spans once when it ends or is dropped.
struct TracedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl HttpBody for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = this.pending.as_mut() {
                    if p.first_frame.is_none() && frame.is_data() {
                        p.first_frame = Some(p.trace.started.elapsed());
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut p) = this.pending.take() {
                    p.error = Some(e.to_string());
                    p.submit();
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.submit();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if !self.inner.is_end_stream() {
                p.error = Some("client went away before the response ended".into());
            }
            p.submit();
        }
    }
}
