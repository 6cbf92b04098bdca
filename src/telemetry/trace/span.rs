//! Building OTLP spans from a finished request: one server span for the request and one client
//! span per upstream attempt (a failover shows as several attempts under the same request).
//!
//! The inputs are plain data ([`RequestSpanInput`], [`AttemptSpanInput`]) the request path
//! fills when the request ends; [`build_spans`] turns them into OTLP spans with the HTTP and
//! GenAI semantic-convention attributes. Strings taken from the request or the backend are cut
//! to [`MAX_ATTRIBUTE_LEN`] bytes.
//!
//! Request span (kind SERVER), name `"{operation} {model}"` (`chat llama3`) when both are
//! known, else `"{METHOD} {path}"`:
//! `http.request.method`, `url.path`, `http.response.status_code`, `gen_ai.operation.name`,
//! `gen_ai.system`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.server.time_to_first_token` (seconds, double; also a
//! `gen_ai.first_token` event), `olla.request_id`, `olla.endpoint`, `olla.api_key.name`,
//! `olla.failovers`, `error.type`. Status ERROR on a 5xx or an error.
//!
//! Attempt span (kind CLIENT, child of the request span, its id is the parent id the backend
//! received in `traceparent`), name `"{METHOD} {endpoint}"`: `http.request.method`,
//! `server.address`, `olla.endpoint`, `olla.attempt` (1-based), `http.response.status_code`,
//! `error.type`. Status ERROR when no response came or it was a 4xx/5xx.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::context::{SpanId, TraceId};
use super::proto::{span_kind, status_code, Event, KeyValue, Span, Status};

/// Longest string attribute value, in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 256;

/// One upstream attempt of a request (borrowed from the finished request's record).
#[derive(Clone, Debug)]
pub struct AttemptSpanInput<'a> {
    /// The attempt's span id: the parent id sent to the backend in `traceparent`.
    pub span_id: SpanId,
    /// The endpoint's configured name.
    pub endpoint: &'a str,
    /// The backend's host (and port), never its full URL.
    pub host: &'a str,
    /// Start and end, nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    /// The backend's status when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed (connect error, timeout, retryable status).
    pub error: Option<&'a str>,
}

/// A finished request, as the span builder needs it (borrowed from the request's record, so
/// making it copies no string).
#[derive(Clone, Debug)]
pub struct RequestSpanInput<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The client's span when it sent a valid `traceparent`.
    pub parent_span_id: Option<SpanId>,
    /// The client's `tracestate`.
    pub tracestate: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Start and end, nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub model: Option<&'a str>,
    /// `gen_ai.system` of the backend that answered ([`gen_ai_system`]).
    pub system: Option<&'static str>,
    /// The endpoint that answered.
    pub endpoint: Option<&'a str>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Time from receiving the request to the first response byte.
    pub ttft: Option<Duration>,
    pub error: Option<&'a str>,
    pub key_name: Option<&'a str>,
    pub request_id: &'a str,
    pub attempts: Vec<AttemptSpanInput<'a>>,
}

/// `gen_ai.system` for a backend type name (`olla_actors::kind::BackendKind::as_str`).
pub fn gen_ai_system(backend_kind: &str) -> &'static str {
    match backend_kind {
        "ollama" => "ollama",
        "llamacpp" | "llama.cpp" | "llama-cpp" => "llama.cpp",
        "vllm" | "vllm-mlx" => "vllm",
        "lmdeploy" => "lmdeploy",
        "sglang" => "sglang",
        "lm-studio" | "lmstudio" => "lmstudio",
        "anthropic" => "anthropic",
        "lemonade" => "lemonade",
        "litellm" => "litellm",
        _ => "openai",
    }
}

/// `gen_ai.operation.name` for a request path, when it is a generation or embedding call.
pub fn gen_ai_operation(path: &str) -> Option<&'static str> {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") || p.ends_with("/api/chat") || p.ends_with("/messages") {
        Some("chat")
    } else if p.ends_with("/completions") || p.ends_with("/api/generate") {
        Some("text_completion")
    } else if p.ends_with("/embeddings")
        || p.ends_with("/api/embed")
        || p.ends_with("/api/embeddings")
    {
        Some("embeddings")
    } else {
        None
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_nanos)
}

/// A duration in nanoseconds, saturating.
pub fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `s` cut to at most `MAX_ATTRIBUTE_LEN` bytes on a character boundary.
pub(super) fn cut(s: &str) -> &str {
    if s.len() <= MAX_ATTRIBUTE_LEN {
        return s;
    }
    let mut end = MAX_ATTRIBUTE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`cut`], owned.
fn bounded(s: &str) -> String {
    cut(s).to_owned()
}

pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Span flags: sampled, and whether the parent is known and remote (OTLP 1.4 bits 8 and 9).
pub(super) fn flags(parent_remote: Option<bool>) -> u32 {
    const SAMPLED: u32 = 1;
    const HAS_IS_REMOTE: u32 = 1 << 8;
    const IS_REMOTE: u32 = 1 << 9;
    match parent_remote {
        Some(true) => SAMPLED | HAS_IS_REMOTE | IS_REMOTE,
        Some(false) => SAMPLED | HAS_IS_REMOTE,
        None => SAMPLED,
    }
}

fn error_status(message: Option<&str>) -> Option<Status> {
    Some(Status {
        message: message.map(bounded).unwrap_or_default(),
        code: status_code::ERROR,
    })
}

/// The request span followed by its attempt spans.
pub fn build_spans(r: &RequestSpanInput) -> Vec<Span> {
    let mut out = Vec::with_capacity(1 + r.attempts.len());
    let operation = gen_ai_operation(r.path);
    let name = match (operation, r.model) {
        (Some(op), Some(m)) => bounded(&format!("{op} {m}")),
        _ => bounded(&format!("{} {}", r.method, r.path)),
    };
    let mut attrs = vec![
        KeyValue::string("http.request.method", bounded(r.method)),
        KeyValue::string("url.path", bounded(r.path)),
        KeyValue::int("http.response.status_code", i64::from(r.status)),
        KeyValue::string("olla.request_id", bounded(r.request_id)),
        KeyValue::int(
            "olla.failovers",
            int(r.attempts.len().saturating_sub(1) as u64),
        ),
    ];
    if let Some(op) = operation {
        attrs.push(KeyValue::string("gen_ai.operation.name", op));
    }
    if let Some(s) = r.system {
        attrs.push(KeyValue::string("gen_ai.system", s));
    }
    if let Some(m) = r.model {
        attrs.push(KeyValue::string("gen_ai.request.model", bounded(m)));
    }
    if let Some(n) = r.tokens_in {
        attrs.push(KeyValue::int("gen_ai.usage.input_tokens", int(n)));
    }
    if let Some(n) = r.tokens_out {
        attrs.push(KeyValue::int("gen_ai.usage.output_tokens", int(n)));
    }
    let mut events = Vec::new();
    if let Some(t) = r.ttft {
        attrs.push(KeyValue::double(
            "gen_ai.server.time_to_first_token",
            t.as_secs_f64(),
        ));
        events.push(Event {
            time_unix_nano: r.start.saturating_add(duration_nanos(t)),
            name: "gen_ai.first_token".into(),
            attributes: Vec::new(),
        });
    }
    if let Some(e) = r.endpoint {
        attrs.push(KeyValue::string("olla.endpoint", bounded(e)));
    }
    if let Some(k) = r.key_name {
        attrs.push(KeyValue::string("olla.api_key.name", bounded(k)));
    }
    let failed = r.status >= 500 || r.error.is_some();
    if failed {
        let kind = if r.error.is_some() && r.status < 500 {
            "error".to_owned()
        } else {
            r.status.to_string()
        };
        attrs.push(KeyValue::string("error.type", kind));
    }
    let trace_id = r.trace_id.0.to_vec();
    let trace_state = r.tracestate.map(str::to_owned).unwrap_or_default();
    out.push(Span {
        trace_id: trace_id.clone(),
        span_id: r.span_id.0.to_vec(),
        trace_state: trace_state.clone(),
        parent_span_id: r.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        name,
        kind: span_kind::SERVER,
        start_time_unix_nano: r.start,
        end_time_unix_nano: r.end,
        attributes: attrs,
        events,
        status: if failed { error_status(r.error) } else { None },
        flags: flags(r.parent_span_id.map(|_| true)),
    });
    for (i, a) in r.attempts.iter().enumerate() {
        let mut attrs = vec![
            KeyValue::string("http.request.method", bounded(r.method)),
            KeyValue::string("server.address", bounded(a.host)),
            KeyValue::string("olla.endpoint", bounded(a.endpoint)),
            KeyValue::int("olla.attempt", int(i as u64 + 1)),
        ];
        if let Some(s) = a.status {
            attrs.push(KeyValue::int("http.response.status_code", i64::from(s)));
        }
        let failed = a.error.is_some() || a.status.is_none_or(|s| s >= 400);
        if failed {
            let kind = match a.status {
                Some(s) if s >= 400 => s.to_string(),
                _ => "error".to_owned(),
            };
            attrs.push(KeyValue::string("error.type", kind));
        }
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: a.span_id.0.to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: r.span_id.0.to_vec(),
            name: bounded(&format!("{} {}", r.method, a.endpoint)),
            kind: span_kind::CLIENT,
            start_time_unix_nano: a.start,
            end_time_unix_nano: a.end,
            attributes: attrs,
            events: Vec::new(),
            status: if failed { error_status(a.error) } else { None },
            flags: flags(Some(false)),
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::proto::any_value::Value;
    use super::*;

    pub(crate) fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    pub(crate) fn sample_input() -> RequestSpanInput<'static> {
        const MS: u64 = 1_000_000;
        let start = 1_700_000_000 * 1_000 * MS;
        RequestSpanInput {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId([9; 8])),
            tracestate: Some("k=v"),
            method: "POST",
            path: "/olla/proxy/v1/chat/completions",
            status: 200,
            start,
            end: start + 900 * MS,
            model: Some("llama3"),
            system: Some(gen_ai_system("vllm")),
            endpoint: Some("gpu2"),
            tokens_in: Some(12),
            tokens_out: Some(34),
            ttft: Some(Duration::from_millis(250)),
            error: None,
            key_name: Some("alice"),
            request_id: "rid-1",
            attempts: vec![
                AttemptSpanInput {
                    span_id: SpanId([2; 8]),
                    endpoint: "gpu1",
                    host: "10.0.0.1:8000",
                    start,
                    end: start + 5 * MS,
                    status: None,
                    error: Some("connection refused"),
                },
                AttemptSpanInput {
                    span_id: SpanId([3; 8]),
                    endpoint: "gpu2",
                    host: "10.0.0.2:8000",
                    start: start + 5 * MS,
                    end: start + 250 * MS,
                    status: Some(200),
                    error: None,
                },
            ],
        }
    }

    #[test]
    fn request_span_carries_genai_and_http_attributes() {
        let spans = build_spans(&sample_input());
        assert_eq!(spans.len(), 3);
        let s = &spans[0];
        assert_eq!(s.name, "chat llama3");
        assert_eq!(s.kind, span_kind::SERVER);
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.trace_state, "k=v");
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 900_000_000);
        let str_attr = |k| match attr(s, k) {
            Some(Value::StringValue(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(str_attr("gen_ai.request.model"), "llama3");
        assert_eq!(str_attr("gen_ai.system"), "vllm");
        assert_eq!(str_attr("gen_ai.operation.name"), "chat");
        assert_eq!(str_attr("olla.endpoint"), "gpu2");
        assert_eq!(str_attr("olla.api_key.name"), "alice");
        assert_eq!(str_attr("olla.request_id"), "rid-1");
        assert_eq!(
            attr(s, "gen_ai.usage.input_tokens"),
            Some(&Value::IntValue(12))
        );
        assert_eq!(
            attr(s, "gen_ai.usage.output_tokens"),
            Some(&Value::IntValue(34))
        );
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(&Value::IntValue(200))
        );
        assert_eq!(attr(s, "olla.failovers"), Some(&Value::IntValue(1)));
        assert_eq!(
            attr(s, "gen_ai.server.time_to_first_token"),
            Some(&Value::DoubleValue(0.25))
        );
        assert_eq!(s.events[0].name, "gen_ai.first_token");
        assert!(s.status.is_none());
        assert!(attr(s, "error.type").is_none());
    }

    #[test]
    fn attempts_are_children_and_failures_are_errors() {
        let spans = build_spans(&sample_input());
        for a in &spans[1..] {
            assert_eq!(a.kind, span_kind::CLIENT);
            assert_eq!(a.parent_span_id, vec![1; 8]);
            assert_eq!(a.trace_id, vec![7; 16]);
        }
        let failed = &spans[1];
        assert_eq!(failed.span_id, vec![2; 8]);
        assert_eq!(failed.name, "POST gpu1");
        assert_eq!(failed.status.as_ref().unwrap().code, status_code::ERROR);
        assert_eq!(
            failed.status.as_ref().unwrap().message,
            "connection refused"
        );
        assert_eq!(attr(failed, "olla.attempt"), Some(&Value::IntValue(1)));
        let ok = &spans[2];
        assert!(ok.status.is_none());
        assert_eq!(
            attr(ok, "server.address"),
            Some(&Value::StringValue("10.0.0.2:8000".into()))
        );
    }

    #[test]
    fn server_errors_mark_the_request_span() {
        let mut r = sample_input();
        r.status = 502;
        r.model = None;
        let long = "x".repeat(1000);
        r.error = Some(&long);
        r.attempts.truncate(1);
        let spans = build_spans(&r);
        let s = &spans[0];
        assert_eq!(s.name, "POST /olla/proxy/v1/chat/completions");
        assert_eq!(s.status.as_ref().unwrap().code, status_code::ERROR);
        assert_eq!(s.status.as_ref().unwrap().message.len(), MAX_ATTRIBUTE_LEN);
        assert_eq!(
            attr(s, "error.type"),
            Some(&Value::StringValue("502".into()))
        );
        let mut r = sample_input();
        r.parent_span_id = None;
        r.status = 404;
        let s = &build_spans(&r)[0];
        assert!(s.parent_span_id.is_empty());
        assert!(s.status.is_none(), "a 4xx is not a server error");
    }

    #[test]
    fn operations_and_systems() {
        assert_eq!(
            gen_ai_operation("/olla/ollama/api/generate"),
            Some("text_completion")
        );
        assert_eq!(
            gen_ai_operation("/olla/proxy/v1/completions"),
            Some("text_completion")
        );
        assert_eq!(
            gen_ai_operation("/olla/proxy/v1/embeddings"),
            Some("embeddings")
        );
        assert_eq!(
            gen_ai_operation("/olla/anthropic/v1/messages"),
            Some("chat")
        );
        assert_eq!(gen_ai_operation("/olla/proxy/v1/models"), None);
        assert_eq!(gen_ai_system("llamacpp"), "llama.cpp");
        assert_eq!(gen_ai_system("openai-compatible"), "openai");
    }
}
