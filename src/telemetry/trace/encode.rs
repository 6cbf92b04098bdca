//! The OTLP export body written straight from the span inputs: protobuf bytes with no
//! intermediate message structs, no per-attribute strings and one pass over each span (a nested
//! message's length is written after its body, shifting the body only when the length needs
//! more than one byte). The bytes are the ones `prost` writes for [`super::build_spans`] (a test
//! checks they are identical); that builder stays the readable definition of the spans and the
//! test oracle, this is the exporter's path (it costs a fraction of building and encoding the
//! message structs, which re-measure nested lengths at every level).

use super::proto::{span_kind, status_code};
use super::span::{
    cut, duration_nanos, flags, gen_ai_operation, int as int_value, AttemptSpanInput,
    RequestSpanInput,
};
use bytes::Bytes;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A `bytes`/`string` field (proto3: omitted when empty).
fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        key(buf, field, LEN);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An `int32`/`int64` field (negative values as ten-byte varints, as protobuf does).
fn int(buf: &mut Vec<u8>, field: u32, v: i64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v as u64);
    }
}

/// A nested message whose body `body` writes. Two bytes are kept for the length, which is
/// what a span needs (128 to 16,383 bytes), so a span's body is never moved; a shorter body
/// moves left by one byte, and only a longer one (a whole batch) is shifted right.
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    body(buf);
    let len = buf.len() - at - 2;
    if len < 0x80 {
        buf[at] = len as u8;
        buf.remove(at + 1);
    } else if len < 0x4000 {
        buf[at] = (len as u8 & 0x7f) | 0x80;
        buf[at + 1] = (len >> 7) as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        buf.splice(at..at + 2, prefix);
    }
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The start of an attribute's encoding, made at compile time: the `KeyValue` tag (span field
/// 9), one byte for its length (filled in per value), the key field (tag, length, name) and the
/// tag of the value field. Names are shorter than 128 bytes, so their length is one byte.
const fn attr_head<const N: usize>(name: &str) -> [u8; N] {
    let b = name.as_bytes();
    assert!(b.len() + 5 == N && b.len() < 0x80);
    let mut out = [0u8; N];
    out[0] = tag(9, LEN);
    out[2] = tag(1, LEN);
    out[3] = b.len() as u8;
    let mut i = 0;
    while i < b.len() {
        out[i + 4] = b[i];
        i += 1;
    }
    out[N - 1] = tag(2, LEN);
    out
}

/// The one-byte key of a field below 16.
const fn tag(field: u32, wire: u32) -> u8 {
    (field << 3 | wire) as u8
}

/// An attribute name as the start of its encoding (see [`attr_head`]).
macro_rules! k {
    ($name:literal) => {{
        const HEAD: [u8; $name.len() + 5] = attr_head($name);
        &HEAD
    }};
}

/// A `KeyValue` attribute whose start is `head` (from [`k!`]) and whose `AnyValue` body is
/// `value_len` bytes written by `value`. Lengths are known up front, so nothing is shifted; an
/// attribute under 128 bytes (nearly all) is its fixed-size head with one byte patched, copied
/// in one go.
fn attr<const N: usize>(
    buf: &mut Vec<u8>,
    head: &[u8; N],
    value_len: usize,
    value: impl FnOnce(&mut Vec<u8>),
) {
    // The key field is the head less the outer tag, the length byte and the value tag.
    let kv = (N - 3) + 1 + varint_len(value_len as u64) + value_len;
    buf.reserve(1 + varint_len(kv as u64) + kv);
    if kv < 0x80 {
        let mut h = *head;
        h[1] = kv as u8;
        buf.extend_from_slice(&h);
    } else {
        buf.push(head[0]);
        varint(buf, kv as u64);
        buf.extend_from_slice(&head[2..]);
    }
    varint(buf, value_len as u64);
    value(buf);
}

fn attr_str<const N: usize>(buf: &mut Vec<u8>, head: &[u8; N], v: &str) {
    let len = 1 + varint_len(v.len() as u64) + v.len();
    attr(buf, head, len, |b| {
        b.push(tag(1, LEN));
        varint(b, v.len() as u64);
        b.extend_from_slice(v.as_bytes());
    });
}

fn attr_int<const N: usize>(buf: &mut Vec<u8>, head: &[u8; N], v: i64) {
    attr(buf, head, 1 + varint_len(v as u64), |b| {
        b.push(tag(3, VARINT));
        varint(b, v as u64);
    });
}

fn attr_double<const N: usize>(buf: &mut Vec<u8>, head: &[u8; N], v: f64) {
    attr(buf, head, 9, |b| {
        b.push(tag(4, FIXED64));
        b.extend_from_slice(&v.to_bits().to_le_bytes());
    });
}

fn error_status(buf: &mut Vec<u8>, message_text: Option<&str>) {
    message(buf, 15, |b| {
        bytes(b, 2, cut(message_text.unwrap_or("")).as_bytes());
        int(b, 3, i64::from(status_code::ERROR));
    });
}

/// Writes spans; `scratch` holds span names and numbers between uses.
struct SpanWriter {
    scratch: String,
}

impl SpanWriter {
    /// `scratch` = `a` + " " + `b`, bounded; returns it.
    fn joined(&mut self, a: &str, b: &str) -> &str {
        self.scratch.clear();
        self.scratch.push_str(a);
        self.scratch.push(' ');
        self.scratch.push_str(b);
        cut(&self.scratch)
    }

    /// `scratch` = the decimal status; returns it.
    fn status(&mut self, status: u16) -> &str {
        self.scratch.clear();
        self.scratch.push_str(itoa::Buffer::new().format(status));
        &self.scratch
    }

    /// The request span followed by its attempt spans (as `build_spans`).
    fn request(&mut self, buf: &mut Vec<u8>, r: &RequestSpanInput) {
        let trace_state = r.tracestate.unwrap_or("");
        message(buf, 2, |b| {
            bytes(b, 1, &r.trace_id.0);
            bytes(b, 2, &r.span_id.0);
            bytes(b, 3, trace_state.as_bytes());
            if let Some(p) = r.parent_span_id {
                bytes(b, 4, &p.0);
            }
            let operation = gen_ai_operation(r.path);
            let name = match (operation, r.model) {
                (Some(op), Some(m)) => self.joined(op, m),
                _ => self.joined(r.method, r.path),
            };
            bytes(b, 5, name.as_bytes());
            int(b, 6, i64::from(span_kind::SERVER));
            fixed64(b, 7, r.start);
            fixed64(b, 8, r.end);
            attr_str(b, k!("http.request.method"), cut(r.method));
            attr_str(b, k!("url.path"), cut(r.path));
            attr_int(b, k!("http.response.status_code"), i64::from(r.status));
            attr_str(b, k!("olla.request_id"), cut(r.request_id));
            attr_int(
                b,
                k!("olla.failovers"),
                int_value(r.attempts.len().saturating_sub(1) as u64),
            );
            if let Some(op) = operation {
                attr_str(b, k!("gen_ai.operation.name"), op);
            }
            if let Some(s) = r.system {
                attr_str(b, k!("gen_ai.system"), s);
            }
            if let Some(m) = r.model {
                attr_str(b, k!("gen_ai.request.model"), cut(m));
            }
            if let Some(n) = r.tokens_in {
                attr_int(b, k!("gen_ai.usage.input_tokens"), int_value(n));
            }
            if let Some(n) = r.tokens_out {
                attr_int(b, k!("gen_ai.usage.output_tokens"), int_value(n));
            }
            if let Some(t) = r.ttft {
                attr_double(b, k!("gen_ai.server.time_to_first_token"), t.as_secs_f64());
            }
            if let Some(e) = r.endpoint {
                attr_str(b, k!("olla.endpoint"), cut(e));
            }
            if let Some(k) = r.key_name {
                attr_str(b, k!("olla.api_key.name"), cut(k));
            }
            let failed = r.status >= 500 || r.error.is_some();
            if failed {
                let kind = if r.error.is_some() && r.status < 500 {
                    "error"
                } else {
                    self.status(r.status)
                };
                attr_str(b, k!("error.type"), kind);
            }
            if let Some(t) = r.ttft {
                message(b, 11, |b| {
                    fixed64(b, 1, r.start.saturating_add(duration_nanos(t)));
                    bytes(b, 2, b"gen_ai.first_token");
                });
            }
            if failed {
                error_status(b, r.error);
            }
            fixed32(b, 16, flags(r.parent_span_id.map(|_| true)));
        });
        for (i, a) in r.attempts.iter().enumerate() {
            self.attempt(buf, r, trace_state, i, a);
        }
    }

    fn attempt(
        &mut self,
        buf: &mut Vec<u8>,
        r: &RequestSpanInput,
        trace_state: &str,
        i: usize,
        a: &AttemptSpanInput,
    ) {
        message(buf, 2, |b| {
            bytes(b, 1, &r.trace_id.0);
            bytes(b, 2, &a.span_id.0);
            bytes(b, 3, trace_state.as_bytes());
            bytes(b, 4, &r.span_id.0);
            let name = self.joined(r.method, a.endpoint);
            bytes(b, 5, name.as_bytes());
            int(b, 6, i64::from(span_kind::CLIENT));
            fixed64(b, 7, a.start);
            fixed64(b, 8, a.end);
            attr_str(b, k!("http.request.method"), cut(r.method));
            attr_str(b, k!("server.address"), cut(a.host));
            attr_str(b, k!("olla.endpoint"), cut(a.endpoint));
            attr_int(b, k!("olla.attempt"), int_value(i as u64 + 1));
            if let Some(s) = a.status {
                attr_int(b, k!("http.response.status_code"), i64::from(s));
            }
            let failed = a.error.is_some() || a.status.is_none_or(|s| s >= 400);
            if failed {
                let kind = match a.status {
                    Some(s) if s >= 400 => self.status(s),
                    _ => "error",
                };
                attr_str(b, k!("error.type"), kind);
                error_status(b, a.error);
            }
            fixed32(b, 16, flags(Some(false)));
        });
    }
}

/// [`export_each`] for a slice of span inputs (what the tests compare with prost's bytes).
#[cfg(test)]
pub fn export_request(resource: &[u8], scope: &[u8], batch: &[RequestSpanInput]) -> Bytes {
    export_each(resource, scope, batch.len(), |each| {
        batch.iter().for_each(each)
    })
}

/// One `ExportTraceServiceRequest` for the span inputs `inputs` makes one at a time (`requests`
/// of them at most), handing each to the writer it is given: the exporter encodes a batch with
/// no collection of its inputs. `resource` and `scope` are the encoded `Resource` and
/// `InstrumentationScope` messages (made once by the exporter).
///
/// The spans are written first, after room for the envelope; the envelope (whose lengths are
/// the batch's) is then written into the end of that room, so the batch is never moved, and the
/// body is a view that starts where the envelope does.
pub fn export_each<'a>(
    resource: &[u8],
    scope: &[u8],
    requests: usize,
    inputs: impl FnOnce(&mut dyn FnMut(&RequestSpanInput<'a>)),
) -> Bytes {
    // Four keys and four lengths (ten bytes at most each) and the two fixed messages.
    let room = 4 * 11 + resource.len() + scope.len();
    let mut buf = Vec::with_capacity(room + requests * 1024);
    buf.resize(room, 0);
    let mut w = SpanWriter {
        scratch: String::with_capacity(64),
    };
    inputs(&mut |r| w.request(&mut buf, r));
    let spans = buf.len() - room;
    let field = |len: usize| 1 + varint_len(len as u64) + len;
    let scope_spans = field(scope.len()) + spans;
    let resource_spans = field(resource.len()) + field(scope_spans);
    let mut envelope = Vec::with_capacity(room);
    key(&mut envelope, 1, LEN);
    varint(&mut envelope, resource_spans as u64);
    key(&mut envelope, 1, LEN);
    varint(&mut envelope, resource.len() as u64);
    envelope.extend_from_slice(resource);
    key(&mut envelope, 2, LEN);
    varint(&mut envelope, scope_spans as u64);
    key(&mut envelope, 1, LEN);
    varint(&mut envelope, scope.len() as u64);
    envelope.extend_from_slice(scope);
    let start = room - envelope.len();
    buf[start..room].copy_from_slice(&envelope);
    Bytes::from(buf).slice(start..)
}

#[cfg(test)]
mod tests {
    use super::super::proto::{
        ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
        ScopeSpans,
    };
    use super::super::span::{build_spans, tests::sample_input};
    use super::*;
    use prost::Message;
    use std::time::Duration;

    fn resource() -> Resource {
        Resource {
            attributes: vec![
                KeyValue::string("service.name", "olla-test"),
                KeyValue::string("service.version", "1.2.3"),
            ],
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "olla".into(),
            version: "1.2.3".into(),
        }
    }

    /// What prost writes for the message structs `build_spans` makes.
    fn oracle(batch: &[RequestSpanInput]) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: batch.iter().flat_map(build_spans).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec()
    }

    fn direct(batch: &[RequestSpanInput]) -> Vec<u8> {
        export_request(&resource().encode_to_vec(), &scope().encode_to_vec(), batch).to_vec()
    }

    static LONG_MODEL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "é".repeat(300));

    fn variants() -> Vec<RequestSpanInput<'static>> {
        let base = sample_input();
        let mut out = vec![base.clone()];
        // No parent, no tracestate, no model, no usage, no ttft, failed with a 502.
        let mut v = base.clone();
        v.parent_span_id = None;
        v.tracestate = None;
        v.model = None;
        v.system = None;
        v.tokens_in = None;
        v.tokens_out = None;
        v.ttft = None;
        v.key_name = None;
        v.endpoint = None;
        v.status = 502;
        v.error = Some("upstream broke");
        out.push(v);
        // An error below 500, a long model name (cut), a non-ASCII path, no attempts.
        let mut v = base.clone();
        v.status = 200;
        v.error = Some("client went away");
        v.model = Some(LONG_MODEL.as_str());
        v.path = "/olla/ollama/api/generate/ü";
        v.attempts.clear();
        v.ttft = Some(Duration::ZERO);
        out.push(v);
        // Huge token counts, a 4xx attempt, an embeddings path, many attempts (long lengths).
        let mut v = base;
        v.tokens_in = Some(u64::MAX);
        v.path = "/olla/proxy/v1/embeddings";
        for a in &mut v.attempts {
            a.status = Some(429);
            a.error = None;
        }
        let more = v.attempts.clone();
        for _ in 0..20 {
            v.attempts.extend(more.iter().cloned());
        }
        out.push(v);
        out
    }

    #[test]
    fn the_direct_bytes_are_what_prost_writes_for_the_built_spans() {
        for (i, v) in variants().into_iter().enumerate() {
            let one = [v];
            assert_eq!(direct(&one), oracle(&one), "variant {i}");
        }
        let all = variants();
        assert_eq!(direct(&all), oracle(&all), "a batch of every variant");
        assert_eq!(direct(&[]), oracle(&[]), "an empty batch");
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
    }

    #[test]
    fn long_bodies_get_multi_byte_lengths_and_still_decode() {
        let batch: Vec<_> = (0..200).map(|_| sample_input()).collect();
        let bytes = direct(&batch);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 600);
    }
}
