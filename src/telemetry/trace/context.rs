//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): parsing the inbound
//! `traceparent`/`tracestate`, making trace and span ids, the sampler, and formatting the
//! outbound `traceparent` of an upstream attempt.
//!
//! Parsing is strict: version `00` is exactly 55 characters; a later version (not `ff`) is
//! accepted by its first four fields when what follows is `-`; hex is lowercase; an all-zero
//! trace id or parent id is invalid. An invalid `traceparent` is ignored (the request starts a
//! new trace) and its `tracestate` with it. Ids come from `fastrand` (a per-thread generator:
//! fast, well distributed, not cryptographic, no lock).
//!
//! Pure functions; never panic on any input.

use std::fmt;

use http::HeaderValue;

use crate::http_util::HEX_DIGITS;

/// A 16-byte trace id (never all zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new random, non-zero trace id.
    pub fn random() -> Self {
        loop {
            let v = fastrand::u128(..);
            if v != 0 {
                return Self(v.to_be_bytes());
            }
        }
    }
}

impl SpanId {
    /// A new random, non-zero span id.
    pub fn random() -> Self {
        loop {
            let v = fastrand::u64(..);
            if v != 0 {
                return Self(v.to_be_bytes());
            }
        }
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = [0u8; 32];
        hex_into(&mut s, &self.0);
        f.write_str(std::str::from_utf8(&s).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = [0u8; 16];
        hex_into(&mut s, &self.0);
        f.write_str(std::str::from_utf8(&s).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Lowercase hex only (the spec forbids uppercase).
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// The W3C `traceparent` header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// A valid inbound `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    /// The `sampled` flag (bit 0 of trace-flags).
    pub sampled: bool,
}

/// Parses a `traceparent` header value strictly (see the module doc); `None` when invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    // Leading/trailing optional whitespace is allowed around header values (RFC 9110).
    let v = value.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let version: [u8; 1] = parse_hex(&v[0..2])?;
    match version[0] {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        0x00 => {}
        // A later version: the first four fields as version 00, then `-` or the end.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = parse_hex(&v[3..35])?;
    let parent_id: [u8; 8] = parse_hex(&v[36..52])?;
    let flags: [u8; 1] = parse_hex(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        sampled: flags[0] & 1 == 1,
    })
}

/// The longest `tracestate` carried (the spec lets a vendor cut at 512 characters).
pub const MAX_TRACESTATE: usize = 512;

/// A `tracestate` worth carrying: at most [`MAX_TRACESTATE`] bytes of visible ASCII, spaces and
/// tabs, with at least one `key=value`. Carried as it is (olla adds no entry of its own).
pub fn parse_tracestate(value: &[u8]) -> Option<String> {
    let v = value.trim_ascii();
    if v.is_empty()
        || v.len() > MAX_TRACESTATE
        || !v.contains(&b'=')
        || !v
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
    {
        return None;
    }
    String::from_utf8(v.to_vec()).ok()
}

/// `traceparent` for a request leaving olla: version 00, this trace, `span` as the parent.
pub fn format_traceparent(trace_id: TraceId, span: SpanId, sampled: bool) -> HeaderValue {
    // Written into a fixed array (no per-byte capacity checks), then copied once.
    let mut s = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut s[3..35], &trace_id.0);
    hex_into(&mut s[36..52], &span.0);
    if sampled {
        s[54] = b'1';
    }
    // Always valid: ASCII hex and dashes only.
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
    }
}

/// Which requests are recorded. The OpenTelemetry samplers olla offers, as
/// `OTEL_TRACES_SAMPLER` names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Follow the client's `sampled` flag when it sent a valid `traceparent`.
    pub parent_based: bool,
    /// Share of root traces (no valid parent) recorded, 0.0..=1.0, decided by the trace id.
    pub root_ratio: f64,
}

impl Default for Sampler {
    /// `parentbased_always_on`, OpenTelemetry's default.
    fn default() -> Self {
        Self {
            parent_based: true,
            root_ratio: 1.0,
        }
    }
}

impl Sampler {
    /// `TraceIdRatioBased`: the trace id's low 63 bits below `ratio * 2^63`, so every service
    /// with the same ratio decides the same for one trace.
    pub fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        if ratio <= 0.0 || ratio.is_nan() {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id.0[8..16]);
        let x = u64::from_be_bytes(low) >> 1;
        (x as f64) < ratio * (1u64 << 63) as f64
    }

    fn decide(&self, parent: Option<&TraceParent>, trace_id: TraceId) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled,
            _ => Self::ratio_samples(self.root_ratio, trace_id),
        }
    }
}

/// The trace identity of one request: its trace, its own (server) span, the client's span as
/// the parent, and whether it is recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceIdentity {
    pub trace_id: TraceId,
    /// The request's server span.
    pub span_id: SpanId,
    /// The client's span when it sent a valid `traceparent`.
    pub parent_span_id: Option<SpanId>,
    pub sampled: bool,
    /// The client's `tracestate`, carried to the backend and into the spans.
    pub tracestate: Option<String>,
}

impl TraceIdentity {
    /// The identity of a request from its `traceparent` and `tracestate` header values: the
    /// client's trace when its `traceparent` is valid, else a new one.
    pub fn from_headers(
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
        sampler: &Sampler,
    ) -> Self {
        let parent = traceparent.and_then(parse_traceparent);
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        Self {
            trace_id,
            span_id: SpanId::random(),
            parent_span_id: parent.map(|p| p.parent_id),
            sampled: sampler.decide(parent.as_ref(), trace_id),
            tracestate: parent.and(tracestate.and_then(parse_tracestate)),
        }
    }

    /// The `traceparent` for an upstream attempt whose client span is `attempt_span`.
    pub fn traceparent_for(&self, attempt_span: SpanId) -> HeaderValue {
        format_traceparent(self.trace_id, attempt_span, self.sampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        let p = parse_traceparent(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ")
            .unwrap();
        assert!(!p.sampled);
        // Other flag bits are kept out of the sampled decision.
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert!(parse_traceparent(v.as_bytes()).unwrap().sampled);
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(parse_traceparent(v.as_bytes()).is_some());
    }

    #[test]
    fn formats_round_trip() {
        let t = TraceId::random();
        let s = SpanId::random();
        for sampled in [true, false] {
            let v = format_traceparent(t, s, sampled);
            let p = parse_traceparent(v.as_bytes()).unwrap();
            assert_eq!((p.trace_id, p.parent_id, p.sampled), (t, s, sampled));
        }
    }

    #[test]
    fn identity_keeps_the_clients_trace_and_follows_its_flag() {
        let on = Sampler::default();
        let id =
            TraceIdentity::from_headers(Some(VALID.as_bytes()), Some(b"congo=t61rcWkgMzE"), &on);
        assert_eq!(id.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(id.parent_span_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(id.span_id, id.parent_span_id.unwrap());
        assert!(id.sampled);
        assert_eq!(id.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let unsampled = VALID.replace("-01", "-00");
        let id = TraceIdentity::from_headers(Some(unsampled.as_bytes()), None, &on);
        assert!(!id.sampled, "parent-based follows the client's flag");
        let never_roots = Sampler {
            parent_based: true,
            root_ratio: 0.0,
        };
        assert!(TraceIdentity::from_headers(Some(VALID.as_bytes()), None, &never_roots).sampled);
        let root = TraceIdentity::from_headers(None, Some(b"a=b"), &never_roots);
        assert!(!root.sampled);
        assert_eq!(root.parent_span_id, None);
        assert_eq!(
            root.tracestate, None,
            "no tracestate without a valid traceparent"
        );
        let not_parent_based = Sampler {
            parent_based: false,
            root_ratio: 0.0,
        };
        assert!(
            !TraceIdentity::from_headers(Some(VALID.as_bytes()), None, &not_parent_based).sampled
        );
        // An invalid traceparent starts a new trace.
        let fresh = TraceIdentity::from_headers(Some(b"garbage"), None, &on);
        assert_eq!(fresh.parent_span_id, None);
        assert!(fresh.sampled);
    }

    #[test]
    fn traceparent_for_an_attempt_names_the_attempt_span() {
        let id = TraceIdentity::from_headers(Some(VALID.as_bytes()), None, &Sampler::default());
        let attempt = SpanId::random();
        let p = parse_traceparent(id.traceparent_for(attempt).as_bytes()).unwrap();
        assert_eq!(p.trace_id, id.trace_id);
        assert_eq!(p.parent_id, attempt);
        assert!(p.sampled);
    }

    #[test]
    fn tracestate_is_bounded_and_printable() {
        assert_eq!(parse_tracestate(b"a=1,b=2").as_deref(), Some("a=1,b=2"));
        assert_eq!(parse_tracestate(b""), None);
        assert_eq!(parse_tracestate(b"novalue"), None);
        assert_eq!(parse_tracestate(b"a=\x01"), None);
        assert_eq!(parse_tracestate(&vec![b'a'; 600]), None);
    }

    #[test]
    fn ratio_sampling_is_close_to_the_ratio() {
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| Sampler::ratio_samples(0.25, TraceId::random()))
            .count();
        let share = hits as f64 / n as f64;
        assert!((0.22..0.28).contains(&share), "{share}");
        assert!(Sampler::ratio_samples(1.0, TraceId::random()));
        assert!(!Sampler::ratio_samples(0.0, TraceId::random()));
        assert!(!Sampler::ratio_samples(f64::NAN, TraceId::random()));
    }

    #[test]
    fn ids_are_never_zero_and_differ() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random().0, [0; 8]);
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(v in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_traceparent(&v);
            let _ = parse_tracestate(&v);
            let _ = TraceIdentity::from_headers(Some(&v), Some(&v), &Sampler::default());
        }
    }
}
