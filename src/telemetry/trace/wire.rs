//! How a request is traced on the request path, in three small steps (each a no-op when
//! tracing is off), with no state beside the request's own context:
//!
//! - [`begin`] in the request handler: the request's [`TraceIdentity`] from its headers, kept
//!   in its [`RequestContext`](crate::telemetry::RequestContext) (`trace`).
//! - [`client_span`] per upstream attempt in the proxy: a new client span id and the outbound
//!   `traceparent` (and `tracestate`) values, which replace the client's; the span id is kept in
//!   the attempt's record.
//! - When the request finishes, the finisher hands the [`FinishRecord`] of a sampled request to
//!   the exporter ([`TraceExporter::submit_record`]); its batch task turns it into the span
//!   input ([`span_input`]) and encodes it, off the request path. Model, endpoint, tokens (streamed
//!   or not), time to first byte, failovers and the key name all come from the record.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::context::{SpanId, TraceIdentity};
use super::export::TraceExporter;
use super::span::{duration_nanos, gen_ai_system, unix_nanos, AttemptSpanInput, RequestSpanInput};
use crate::telemetry::{AttemptOutcome, EndReason, FinishRecord};

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
) -> Option<TraceIdentity> {
    let exporter = exporter.filter(|_| traced_path(path))?;
    Some(exporter.begin(headers))
}

/// The trace context an upstream attempt sends: its client span's id, the `traceparent`
/// naming that span, and the client's `tracestate` (none: no `tracestate` is sent).
pub struct ClientSpan {
    pub span: SpanId,
    pub traceparent: HeaderValue,
    pub tracestate: Option<HeaderValue>,
}

impl ClientSpan {
    /// The outbound headers' view of it ([`crate::proxy::headers::Outbound::trace`]).
    pub fn headers(&self) -> (&HeaderValue, Option<&HeaderValue>) {
        (&self.traceparent, self.tracestate.as_ref())
    }
}

/// Starts an upstream attempt's client span: a new span id and the trace context to send.
pub fn client_span(identity: &TraceIdentity) -> ClientSpan {
    let span = SpanId::random();
    ClientSpan {
        span,
        traceparent: identity.traceparent_for(span),
        tracestate: identity
            .tracestate
            .as_deref()
            .and_then(|s| HeaderValue::try_from(s).ok()),
    }
}

/// Why a request ended badly, for its span (`None`: it completed).
fn end_error(end: EndReason) -> Option<&'static str> {
    match end {
        EndReason::Complete => None,
        EndReason::Error => Some("the response body failed before its end"),
        EndReason::ClientGone => Some("client went away before the response ended"),
        EndReason::Panic => Some("the request task panicked"),
    }
}

/// The span input of a finished, traced request (`None` when it carries no trace). It
/// borrows the record's strings; times are the record's wall-clock arrival plus offsets on
/// the request's monotonic clock.
pub fn span_input(rec: &FinishRecord) -> Option<RequestSpanInput<'_>> {
    let id = rec.trace.as_ref()?;
    let base = unix_nanos(rec.received_at);
    let at = |t: tokio::time::Instant| -> u64 {
        base.saturating_add(duration_nanos(t.saturating_duration_since(rec.received)))
    };
    let attempts = rec
        .attempts
        .iter()
        .filter_map(|a| {
            let (status, error) = match a.outcome {
                AttemptOutcome::Status(s) => (Some(s), None),
                AttemptOutcome::Error(e) => (None, Some(e.as_str())),
            };
            Some(AttemptSpanInput {
                span_id: a.span_id?,
                endpoint: &a.endpoint.0.name,
                host: a.endpoint.0.url.authority().map_or("", |h| h.as_str()),
                start: at(a.started),
                end: at(a.ended),
                status,
                error,
            })
        })
        .collect();
    Some(RequestSpanInput {
        trace_id: id.trace_id,
        span_id: id.span_id,
        parent_span_id: id.parent_span_id,
        tracestate: id.tracestate.as_deref(),
        method: rec.method.as_str(),
        path: &rec.path,
        status: rec.status,
        start: base,
        end: base.saturating_add(duration_nanos(rec.duration)),
        model: rec.model.as_deref(),
        system: rec
            .endpoint
            .as_ref()
            .map(|e| gen_ai_system(e.0.kind.as_str())),
        endpoint: rec.endpoint.as_ref().map(|e| e.0.name.as_str()),
        tokens_in: rec.tokens_in,
        tokens_out: rec.tokens_out,
        ttft: rec.ttfb,
        error: end_error(rec.end),
        key_name: rec.key_name(),
        request_id: &rec.request_id,
        attempts,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::schema::ApiKeyConfig;
    use crate::gate::keys::{key_spec, ApiKey, KeyRing};
    use crate::telemetry::context::{AttemptError, EndpointName, UpstreamAttempt};
    use crate::telemetry::Route;
    use olla_actors::kind::BackendKind;
    use olla_actors::spec::BackendSpec;
    use std::time::{Duration, SystemTime};

    /// An API key named `name`, as the gate hands it to a request.
    fn caller(name: &str) -> Arc<ApiKey> {
        let entry = ApiKeyConfig {
            name: name.into(),
            key: Some(format!("sk-{name}-0001")),
            ..ApiKeyConfig::default()
        };
        let ring = KeyRing::new(Some(&[key_spec(&entry).unwrap()]));
        ring.get(name).unwrap()
    }

    pub(crate) fn record(trace: Option<TraceIdentity>) -> FinishRecord {
        let spec = |name: &str, url: &'static str| {
            EndpointName(Arc::new(BackendSpec::new(
                name,
                http::Uri::from_static(url),
                BackendKind::LlamaCpp,
            )))
        };
        let received = tokio::time::Instant::now();
        let received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let attempt = |ep: EndpointName, from_ms, to_ms, outcome, span| UpstreamAttempt {
            endpoint: ep,
            span_id: span,
            started: received + Duration::from_millis(from_ms),
            ended: received + Duration::from_millis(to_ms),
            outcome,
        };
        FinishRecord {
            request_id: "req-1".into(),
            method: http::Method::POST,
            path: "/olla/proxy/v1/chat/completions".into(),
            route: Route::OpenAi,
            model: Some("llama3".into()),
            endpoint: Some(spec("b", "http://10.0.0.2:8080")),
            status: 200,
            stream: false,
            end: EndReason::Complete,
            ttfb: Some(Duration::from_millis(40)),
            duration: Duration::from_millis(90),
            queue_wait: None,
            bytes_out: 10,
            tokens_in: Some(12),
            tokens_out: Some(34),
            failovers: 1,
            retries: 0,
            attempts: vec![
                attempt(
                    spec("a", "http://10.0.0.1:8080"),
                    1,
                    5,
                    AttemptOutcome::Error(AttemptError::Connect),
                    Some(SpanId([1; 8])),
                ),
                attempt(
                    spec("b", "http://10.0.0.2:8080"),
                    5,
                    30,
                    AttemptOutcome::Status(200),
                    Some(SpanId([2; 8])),
                ),
            ],
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            caller: Some(caller("team-a")),
            decision: None,
            received_at,
            received,
            trace,
        }
    }

    pub(crate) fn identity() -> TraceIdentity {
        TraceIdentity {
            trace_id: super::super::TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            parent_span_id: Some(SpanId([8; 8])),
            sampled: true,
            tracestate: Some("k=v".into()),
        }
    }

    #[test]
    fn a_record_without_a_trace_has_no_spans() {
        assert!(span_input(&record(None)).is_none());
    }

    #[test]
    fn span_input_carries_the_record_with_times_from_the_request_clock() {
        let rec = record(Some(identity()));
        let i = span_input(&rec).unwrap();
        assert_eq!(i.trace_id, super::super::TraceId([7; 16]));
        assert_eq!(i.span_id, SpanId([9; 8]));
        assert_eq!(i.parent_span_id, Some(SpanId([8; 8])));
        assert_eq!(i.tracestate, Some("k=v"));
        assert_eq!((i.method, i.status), ("POST", 200));
        let ms = |n: u64| unix_nanos(rec.received_at) + n * 1_000_000;
        assert_eq!(i.start, ms(0));
        assert_eq!(i.end, ms(90));
        assert_eq!(i.ttft, Some(Duration::from_millis(40)));
        // Non-streamed usage reaches the span too, and the key's name (never the key).
        assert_eq!((i.tokens_in, i.tokens_out), (Some(12), Some(34)));
        assert_eq!(i.key_name, Some("team-a"));
        assert_eq!(i.system, Some("llama.cpp"));
        assert_eq!(i.endpoint, Some("b"));
        assert!(i.error.is_none());
        assert_eq!(i.attempts.len(), 2);
        let (a, b) = (&i.attempts[0], &i.attempts[1]);
        assert_eq!((a.endpoint, a.host), ("a", "10.0.0.1:8080"));
        assert_eq!((a.status, a.error), (None, Some("connect")));
        assert_eq!(a.start, ms(1));
        assert_eq!(a.end, ms(5));
        assert_eq!(
            (b.span_id, b.status, b.error),
            (SpanId([2; 8]), Some(200), None)
        );
    }

    #[test]
    fn a_request_that_did_not_complete_is_an_error_span() {
        let mut rec = record(Some(identity()));
        rec.end = EndReason::ClientGone;
        let i = span_input(&rec).unwrap();
        assert!(i.error.is_some_and(|e| e.contains("client went away")));
    }

    #[test]
    fn each_attempt_has_its_own_client_span_named_by_its_traceparent() {
        let id = identity();
        let first = client_span(&id);
        assert_eq!(
            first.traceparent,
            format!("00-{}-{}-01", "07".repeat(16), first.span)
        );
        assert_eq!(first.tracestate.as_ref().unwrap(), "k=v");
        assert_ne!(
            first.span,
            client_span(&id).span,
            "each attempt has its own span"
        );
    }
}
