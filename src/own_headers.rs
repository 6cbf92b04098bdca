//! olla's own response headers: what every answer carries beside the handler's header map
//! (request id, model, routing decision, the serving backend, rate-limit state).
//!
//! They are kept as plain fields ([`OwnHeaders`]) until the response head is written. The
//! HTTP/1 connection writes them straight into the head's bytes ([`crate::server::h1`], through
//! [`HeadExtra`]); HTTP/2 and the admin listener render them into the header map
//! ([`OwnHeaders::render`]). Inserting fifteen fields into a `HeaderMap` (hash, probe, a value
//! each) was about 4,000 instructions per proxied request, as much as the rest of the head.
//!
//! Where a field here has the name of one in the map (a backend's `Via` or `X-RateLimit-*`),
//! this one replaces it, as an insert into the map did.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::gate::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};
use crate::proxy::headers::{self, names};
use crate::proxy::select::{
    Decision, X_OLLA_ROUTING_BALANCER, X_OLLA_ROUTING_PICK, X_OLLA_SESSION_ID,
    X_OLLA_STICKY_KEY_SOURCE, X_OLLA_STICKY_SESSION,
};
use crate::server::h1::HeadExtra;
use crate::telemetry::context::REQUEST_ID;

/// The backend that answered (set on a response an upstream sent).
#[derive(Debug, Clone)]
pub struct UpstreamFields {
    /// `X-Olla-Endpoint` (absent when the name is not a header value).
    pub endpoint: Option<HeaderValue>,
    /// `X-Olla-Backend-Type`.
    pub kind: &'static str,
    /// `X-Olla-Response-Time`: time to the upstream response head (whole milliseconds, then
    /// `ms`: Olla's form).
    pub first_byte: Duration,
}

/// `X-RateLimit-*`: the tightest limit the request passed.
#[derive(Debug, Clone)]
pub struct RateFields {
    pub limit: HeaderValue,
    pub remaining: u64,
    /// Unix seconds.
    pub reset: u64,
}

/// olla's fields of one response (see the module doc).
#[derive(Debug, Default)]
pub struct OwnHeaders {
    /// `X-Olla-Request-Id` (and `request-id` when `anthropic`). Visible ASCII by construction
    /// ([`crate::http_util::request_id`]).
    pub request_id: Option<String>,
    pub anthropic: bool,
    /// `X-Olla-Model`, already fit to echo ([`headers::echo_text`]).
    pub model: Option<String>,
    pub decision: Option<Decision>,
    pub upstream: Option<UpstreamFields>,
    pub rate: Option<RateFields>,
}

/// A field's value as this module holds it.
enum Value<'a> {
    /// Visible ASCII (and spaces) by construction.
    Text(&'a [u8]),
    Header(&'a HeaderValue),
}

/// A field olla sets: its name, and the start of its head line (`name: `), made at compile
/// time so a line is written in three copies.
struct Field {
    name: HeaderName,
    line: &'static str,
}

macro_rules! field {
    ($name:expr, $text:literal) => {
        Field {
            name: $name,
            line: concat!($text, ": "),
        }
    };
}

const F_REQUEST_ID: Field = field!(REQUEST_ID, "request-id");
const F_OLLA_REQUEST_ID: Field = field!(names::X_OLLA_REQUEST_ID, "x-olla-request-id");
const F_MODEL: Field = field!(names::X_OLLA_MODEL, "x-olla-model");
const F_STRATEGY: Field = field!(names::X_OLLA_ROUTING_STRATEGY, "x-olla-routing-strategy");
const F_DECISION: Field = field!(names::X_OLLA_ROUTING_DECISION, "x-olla-routing-decision");
const F_REASON: Field = field!(names::X_OLLA_ROUTING_REASON, "x-olla-routing-reason");
const F_BALANCER: Field = field!(X_OLLA_ROUTING_BALANCER, "x-olla-routing-balancer");
const F_PICK: Field = field!(X_OLLA_ROUTING_PICK, "x-olla-routing-pick");
const F_STICKY: Field = field!(X_OLLA_STICKY_SESSION, "x-olla-sticky-session");
const F_KEY_SOURCE: Field = field!(X_OLLA_STICKY_KEY_SOURCE, "x-olla-sticky-key-source");
const F_SESSION_ID: Field = field!(X_OLLA_SESSION_ID, "x-olla-session-id");
const F_ENDPOINT: Field = field!(names::X_OLLA_ENDPOINT, "x-olla-endpoint");
const F_BACKEND_TYPE: Field = field!(names::X_OLLA_BACKEND_TYPE, "x-olla-backend-type");
const F_RESPONSE_TIME: Field = field!(names::X_OLLA_RESPONSE_TIME, "x-olla-response-time");
const F_SERVED_BY: Field = field!(names::X_SERVED_BY, "x-served-by");
const F_VIA: Field = field!(http::header::VIA, "via");
const F_LIMIT: Field = field!(X_RATELIMIT_LIMIT, "x-ratelimit-limit");
const F_REMAINING: Field = field!(X_RATELIMIT_REMAINING, "x-ratelimit-remaining");
const F_RESET: Field = field!(X_RATELIMIT_RESET, "x-ratelimit-reset");

/// Where fields go: a header map or the bytes of an HTTP/1 head.
trait Emit {
    fn emit(&mut self, field: &Field, value: Value<'_>);
}

impl Emit for HeaderMap {
    fn emit(&mut self, field: &Field, value: Value<'_>) {
        let value = match value {
            Value::Text(t) => match HeaderValue::from_bytes(t) {
                Ok(v) => v,
                Err(_) => return,
            },
            Value::Header(v) => v.clone(),
        };
        self.insert(&field.name, value);
    }
}

/// `name: value\r\n` lines appended to a head.
struct Lines<'a>(&'a mut Vec<u8>);

impl Emit for Lines<'_> {
    fn emit(&mut self, field: &Field, value: Value<'_>) {
        let value = match value {
            Value::Text(t) => t,
            Value::Header(v) => v.as_bytes(),
        };
        let start = field.line.as_bytes();
        // One reservation per line: the pieces then never regrow the head.
        self.0.reserve(start.len() + value.len() + 2);
        for piece in [start, value, b"\r\n"] {
            self.0.extend_from_slice(piece);
        }
    }
}

impl OwnHeaders {
    /// Inserts the fields into `map`, replacing fields of the same names.
    pub fn render(&self, map: &mut HeaderMap) {
        self.emit_all(map);
    }

    fn emit_all(&self, out: &mut impl Emit) {
        if let Some(id) = &self.request_id {
            if self.anthropic {
                out.emit(&F_REQUEST_ID, Value::Text(id.as_bytes()));
            }
            out.emit(&F_OLLA_REQUEST_ID, Value::Text(id.as_bytes()));
        }
        if let Some(m) = &self.model {
            out.emit(&F_MODEL, Value::Text(m.as_bytes()));
        }
        if let Some(d) = &self.decision {
            emit_decision(out, d);
        }
        if let Some(u) = &self.upstream {
            if let Some(name) = &u.endpoint {
                out.emit(&F_ENDPOINT, Value::Header(name));
            }
            out.emit(&F_BACKEND_TYPE, Value::Text(u.kind.as_bytes()));
            let mut ms = itoa::Buffer::new();
            let ms = ms.format(u.first_byte.as_millis());
            let mut text = [0u8; 42];
            text[..ms.len()].copy_from_slice(ms.as_bytes());
            text[ms.len()..ms.len() + 2].copy_from_slice(b"ms");
            out.emit(&F_RESPONSE_TIME, Value::Text(&text[..ms.len() + 2]));
            out.emit(&F_SERVED_BY, Value::Text(headers::SERVED_BY.as_bytes()));
            out.emit(&F_VIA, Value::Text(headers::via().as_bytes()));
        }
        if let Some(r) = &self.rate {
            out.emit(&F_LIMIT, Value::Header(&r.limit));
            let mut n = itoa::Buffer::new();
            out.emit(&F_REMAINING, Value::Text(n.format(r.remaining).as_bytes()));
            out.emit(&F_RESET, Value::Text(n.format(r.reset).as_bytes()));
        }
    }
}

/// The routing decision: Olla's model routing trio (when the request named a model), the
/// balancer and its pick, and the sticky-session fields (when enabled).
fn emit_decision(out: &mut impl Emit, d: &Decision) {
    for (field, value) in [
        (&F_STRATEGY, d.strategy),
        (&F_DECISION, d.action),
        (&F_REASON, d.reason),
        (&F_BALANCER, d.balancer),
        (&F_PICK, d.pick),
    ] {
        if !value.is_empty() {
            out.emit(field, Value::Text(value.as_bytes()));
        }
    }
    if let Some(s) = &d.sticky {
        out.emit(&F_STICKY, Value::Text(s.outcome.as_str().as_bytes()));
        if let Some(src) = s.source {
            out.emit(&F_KEY_SOURCE, Value::Text(src.as_str().as_bytes()));
        }
        if let Some(id) = &s.session_id {
            out.emit(&F_SESSION_ID, Value::Header(id));
        }
    }
}

impl HeadExtra for OwnHeaders {
    fn supersedes(&self, name: &HeaderName) -> bool {
        // Only the names a handler's map may also hold: a backend's own `Via`, `X-Served-By`,
        // `request-id` or rate-limit fields. (A backend's `X-Olla-*` never reaches the map.)
        let n = name.as_str();
        match n.len() {
            3 => self.upstream.is_some() && n == "via",
            10 => self.anthropic && self.request_id.is_some() && n == "request-id",
            11 => self.upstream.is_some() && n == "x-served-by",
            17 => self.rate.is_some() && (n == "x-ratelimit-limit" || n == "x-ratelimit-reset"),
            21 => self.rate.is_some() && n == "x-ratelimit-remaining",
            _ => false,
        }
    }

    fn encode(&self, head: &mut Vec<u8>) {
        // The fifteen or so lines of a proxied answer are about 500 bytes.
        head.reserve(512);
        self.emit_all(&mut Lines(head));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::h1::HeadExtra;

    fn full() -> OwnHeaders {
        OwnHeaders {
            request_id: Some("alpaca_running_0a1b".into()),
            anthropic: true,
            model: Some("llama3.2:1b".into()),
            decision: Some(Decision {
                strategy: "strict",
                action: "routed",
                reason: "model_found",
                balancer: "priority",
                pick: "priority",
                sticky: None,
            }),
            upstream: Some(UpstreamFields {
                endpoint: Some(HeaderValue::from_static("gpu-1")),
                kind: "ollama",
                first_byte: Duration::from_micros(12_345),
            }),
            rate: Some(RateFields {
                limit: HeaderValue::from_static("100"),
                remaining: 99,
                reset: 1_790_000_000,
            }),
        }
    }

    /// The head lines and the map carry the same fields with the same values.
    #[test]
    fn head_lines_and_the_map_agree() {
        let own = full();
        let mut map = HeaderMap::new();
        own.render(&mut map);
        let mut head = Vec::new();
        own.encode(&mut head);
        let text = String::from_utf8(head).unwrap();
        let lines: Vec<(&str, &str)> = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once(": ").unwrap())
            .collect();
        assert_eq!(lines.len(), map.len(), "{text}");
        for (name, value) in &lines {
            assert_eq!(map.get(*name).unwrap(), value, "{name}");
        }
        assert_eq!(map["x-olla-response-time"], "12ms");
        assert_eq!(map["request-id"], "alpaca_running_0a1b");
        assert_eq!(map["x-ratelimit-reset"], "1790000000");
        assert_eq!(map["via"], headers::via());
    }

    #[test]
    fn each_line_starts_with_its_name() {
        let all = [
            F_REQUEST_ID,
            F_OLLA_REQUEST_ID,
            F_MODEL,
            F_STRATEGY,
            F_DECISION,
            F_REASON,
            F_BALANCER,
            F_PICK,
            F_STICKY,
            F_KEY_SOURCE,
            F_SESSION_ID,
            F_ENDPOINT,
            F_BACKEND_TYPE,
            F_RESPONSE_TIME,
            F_SERVED_BY,
            F_VIA,
            F_LIMIT,
            F_REMAINING,
            F_RESET,
        ];
        for f in all {
            assert_eq!(f.line, format!("{}: ", f.name.as_str()));
        }
    }

    /// Every value written as `Value::Text` without a check is one a header may carry.
    #[test]
    fn unchecked_values_are_header_values() {
        for kind in olla_actors::kind::ALL_KINDS {
            assert!(HeaderValue::try_from(kind.as_str()).is_ok(), "{kind:?}");
        }
        assert!(HeaderValue::try_from(headers::SERVED_BY).is_ok());
        let mut own = full();
        own.upstream.as_mut().unwrap().first_byte = Duration::MAX;
        let mut map = HeaderMap::new();
        own.render(&mut map);
        assert_eq!(map["x-olla-response-time"], "18446744073709551615999ms");
    }

    #[test]
    fn only_the_fields_written_supersede_a_map_field() {
        let own = full();
        for name in [
            "via",
            "x-served-by",
            "request-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(own.supersedes(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "content-type",
            "x-request-id",
            "server",
            "x-ratelimit-limit-requests",
        ] {
            assert!(!own.supersedes(&HeaderName::from_static(name)), "{name}");
        }
        let bare = OwnHeaders {
            request_id: Some("id".into()),
            ..OwnHeaders::default()
        };
        for name in ["via", "request-id", "x-ratelimit-limit", "x-served-by"] {
            assert!(!bare.supersedes(&HeaderName::from_static(name)), "{name}");
        }
    }
}
