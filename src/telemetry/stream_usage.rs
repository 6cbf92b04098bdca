//! `proxy.inject_stream_usage`: streaming OpenAI requests that do not ask for usage are sent
//! with `stream_options.include_usage: true`, so the backend reports real token counts, and the
//! extra usage chunk this adds to the stream is removed before it reaches the client.
//!
//! Request side, [`inject_include_usage`]: the body is inspected without building a tree
//! (top-level keys borrowed, values as raw slices, as in [`crate::proxy::inspect`]) and the
//! change is spliced into the original bytes; every other byte is kept. Applies to a JSON object
//! with `"stream": true` on a chat-completions or completions path ([`applies_to_path`]):
//! - no `stream_options`: `"stream_options":{"include_usage":true},` is inserted after the
//!   opening `{`;
//! - `stream_options: null` or `{}`: replaced by `{"include_usage":true}`;
//! - an object without `include_usage`: `"include_usage":true,` inserted after its `{`;
//! - `include_usage` not `true` (e.g. `false`, `null`): its value replaced by `true`;
//! - `include_usage: true` already: the client asked ([`Injection::ClientAsked`]), nothing
//!   changes and nothing is removed from its stream.
//!
//! Anything ambiguous or odd (a duplicated `stream_options` or `include_usage` key, a
//! `stream_options` that is not an object, invalid JSON) is left alone.
//!
//! Response side, [`UsageFilter`]: an incremental SSE filter that removes the usage-only event
//! (`data:` JSON with `"choices": []` and a `usage` object, OpenAI's final usage chunk) and
//! records its `prompt_tokens`/`completion_tokens` in the request's [`UsageTap`]; every other
//! byte passes unchanged. An event split over chunks is held until its end (at most
//! [`MAX_HELD_EVENT`] bytes; a longer one is passed through as it comes). With `remove: false`
//! it only records the usage. [`filter_response`] wraps a response body with it.
//!
//! Pure functions and a body adapter; never panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http_util::{Body, BoxError};
use crate::telemetry::UsageTap;

/// Whether a (normalised, prefix-free) request path is an OpenAI chat-completions or
/// completions call.
pub fn applies_to_path(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or("").trim_end_matches('/');
    p.ends_with("/chat/completions") || p.ends_with("/v1/completions") || p == "/completions"
}

/// What [`inject_include_usage`] did.
#[derive(Debug, PartialEq)]
pub enum Injection {
    /// Not a streaming request, or a body left alone.
    NotApplicable,
    /// The client set `stream_options.include_usage: true` itself.
    ClientAsked,
    /// The new body, asking for usage.
    Injected(Bytes),
}

/// Members of one JSON object that matter, borrowed from the body; counts catch duplicates.
#[derive(Default)]
struct Members<'a> {
    stream: Option<&'a RawValue>,
    stream_count: u8,
    options: Option<&'a RawValue>,
    options_count: u8,
    include_usage: Option<&'a RawValue>,
    include_count: u8,
    not_object: bool,
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut m = Members::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            let (slot, count) = match key.as_ref() {
                "stream" => (&mut m.stream, &mut m.stream_count),
                "stream_options" => (&mut m.options, &mut m.options_count),
                "include_usage" => (&mut m.include_usage, &mut m.include_count),
                _ => continue,
            };
            *slot = Some(value);
            *count = count.saturating_add(1);
        }
        Ok(m)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Members::not_object())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Members::not_object())
    }
}

impl Members<'_> {
    fn not_object() -> Self {
        Self {
            not_object: true,
            ..Self::default()
        }
    }
}

fn members(json: &[u8]) -> Option<Members<'_>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let m = (&mut de).deserialize_any(MembersVisitor).ok()?;
    de.end().ok()?;
    (!m.not_object).then_some(m)
}

/// Where `inner` lies inside `outer`, when it is a sub-slice of it.
fn span_of(outer: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (outer.get(start..end)? == inner.as_bytes()).then_some(start..end)
}

/// `body` with `range` replaced by `with`.
fn splice(body: &[u8], range: Range<usize>, with: &[u8]) -> Option<Bytes> {
    let head = body.get(..range.start)?;
    let tail = body.get(range.end..)?;
    let mut out = BytesMut::with_capacity(head.len() + with.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(with);
    out.extend_from_slice(tail);
    Some(out.freeze())
}

/// Index just past the first `{` of an object's raw text (leading whitespace skipped).
fn after_open_brace(body: &[u8], obj: &Range<usize>) -> Option<usize> {
    let text = body.get(obj.clone())?;
    let skip = text.iter().position(|b| !b.is_ascii_whitespace())?;
    (text[skip] == b'{').then_some(obj.start + skip + 1)
}

/// Asks a streaming OpenAI request body for usage (see the module doc).
pub fn inject_include_usage(body: &Bytes) -> Injection {
    match try_inject(body) {
        Some(i) => i,
        None => Injection::NotApplicable,
    }
}

fn try_inject(body: &Bytes) -> Option<Injection> {
    let top = members(body)?;
    if top.stream_count != 1 || top.stream?.get() != "true" || top.options_count > 1 {
        return None;
    }
    let whole = 0..body.len();
    let Some(options) = top.options else {
        let at = after_open_brace(body, &whole)?;
        return splice(body, at..at, br#""stream_options":{"include_usage":true},"#)
            .map(Injection::Injected);
    };
    let opt_span = span_of(body, options.get())?;
    if options.get() == "null" {
        return splice(body, opt_span, br#"{"include_usage":true}"#).map(Injection::Injected);
    }
    let inner = members(options.get().as_bytes())?;
    if inner.include_count > 1 {
        return None;
    }
    match inner.include_usage {
        Some(v) if v.get() == "true" => Some(Injection::ClientAsked),
        Some(v) => {
            let span = span_of(body, v.get())?;
            splice(body, span, b"true").map(Injection::Injected)
        }
        None => {
            let text = options.get().trim_ascii();
            if text
                .trim_start_matches('{')
                .trim_end_matches('}')
                .trim_ascii()
                .is_empty()
            {
                splice(body, opt_span, br#"{"include_usage":true}"#).map(Injection::Injected)
            } else {
                let at = after_open_brace(body, &opt_span)?;
                splice(body, at..at, br#""include_usage":true,"#).map(Injection::Injected)
            }
        }
    }
}

/// Token counts of a stream's usage chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Longest SSE event held back while waiting for its end.
pub const MAX_HELD_EVENT: usize = 64 * 1024;

/// The incremental SSE usage filter (see the module doc).
pub struct UsageFilter {
    remove: bool,
    /// The current event's bytes so far (only while it may be a usage event).
    held: BytesMut,
    /// The current event outgrew [`MAX_HELD_EVENT`]: pass its remaining bytes through.
    passing: bool,
    /// The last byte seen ended a line (or nothing was seen yet).
    line_start: bool,
    /// The last byte seen was `\r` (a following `\n` belongs to the same line end).
    after_cr: bool,
    usage: Option<Usage>,
}

impl UsageFilter {
    pub fn new(remove: bool) -> Self {
        Self {
            remove,
            held: BytesMut::new(),
            passing: false,
            line_start: true,
            after_cr: false,
            usage: None,
        }
    }

    /// The usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Feeds a chunk; returns the bytes to send on (possibly empty).
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        let mut out = BytesMut::new();
        // Start of the part of `chunk` not yet emitted or held.
        let mut from = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.after_cr && b == b'\n' {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b != b'\n' && b != b'\r' {
                self.line_start = false;
                continue;
            }
            let blank = self.line_start;
            self.line_start = true;
            if !blank {
                continue;
            }
            // An empty line: the event ends here (a `\r\n` end keeps its `\n` when it is in
            // this chunk).
            let mut end = i + 1;
            if b == b'\r' && chunk.get(end) == Some(&b'\n') {
                end += 1;
                self.after_cr = false;
            }
            self.end_event(&chunk[from..end], &mut out);
            from = end;
            if end > i + 1 {
                // The `\n` was consumed with the event; skip it in the loop.
                self.line_start = true;
                self.after_cr = true;
            }
        }
        let rest = &chunk[from..];
        if !rest.is_empty() {
            if self.passing {
                out.extend_from_slice(rest);
            } else if self.held.len() + rest.len() > MAX_HELD_EVENT {
                out.extend_from_slice(&self.held);
                out.extend_from_slice(rest);
                self.held.clear();
                self.passing = true;
            } else {
                self.held.extend_from_slice(rest);
            }
        }
        if out.len() == chunk.len() && from == chunk.len() && out[..] == chunk[..] {
            return chunk.clone();
        }
        out.freeze()
    }

    /// The end of the stream: whatever is held goes out.
    pub fn finish(&mut self) -> Bytes {
        self.passing = false;
        std::mem::take(&mut self.held).freeze()
    }

    fn end_event(&mut self, tail: &[u8], out: &mut BytesMut) {
        if self.passing {
            out.extend_from_slice(tail);
            self.passing = false;
            return;
        }
        let usage = if self.held.is_empty() {
            usage_event(tail)
        } else {
            self.held.extend_from_slice(tail);
            usage_event(&self.held)
        };
        if let Some(u) = usage {
            self.usage = Some(u);
        }
        if usage.is_none() || !self.remove {
            if self.held.is_empty() {
                out.extend_from_slice(tail);
            } else {
                out.extend_from_slice(&self.held);
            }
        }
        self.held.clear();
    }
}

#[derive(Deserialize)]
struct UsageChunk<'a> {
    #[serde(borrow)]
    choices: Option<&'a RawValue>,
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// The usage of an SSE event that is a usage-only chunk.
fn usage_event(event: &[u8]) -> Option<Usage> {
    // Cheap test first: most events are token deltas.
    if !event.windows(7).any(|w| w == b"\"usage\"") {
        return None;
    }
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    let mut lines = 0;
    for line in text.split(['\n', '\r']) {
        if let Some(v) = line.strip_prefix("data:") {
            if lines > 0 {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
            lines += 1;
        } else if line.starts_with("event:")
            && line.trim() != "event: message"
            && line.trim() != "event:message"
        {
            return None;
        }
    }
    let chunk: UsageChunk = serde_json::from_str(&data).ok()?;
    let choices = chunk.choices?.get().trim_ascii();
    let empty = choices.starts_with('[')
        && choices.ends_with(']')
        && choices[1..choices.len() - 1].trim_ascii().is_empty();
    let u = chunk.usage?;
    empty.then_some(Usage {
        prompt_tokens: u.prompt_tokens?,
        completion_tokens: u.completion_tokens.unwrap_or(0),
    })
}

/// A response body run through a [`UsageFilter`]; the usage goes to `tap` (the request
/// context's, so the finisher's token metrics see usage removed from the client's stream).
pub struct FilteredBody {
    inner: Body,
    filter: UsageFilter,
    tap: Arc<UsageTap>,
    done: bool,
}

impl HttpBody for FilteredBody {
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
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.filter.push(&data);
                        if let Some(u) = this.filter.usage() {
                            this.tap.set(crate::telemetry::usage::Usage {
                                input: Some(u.prompt_tokens),
                                output: Some(u.completion_tokens),
                            });
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.filter.finish();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.inner.is_end_stream() && self.filter.held.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Runs a successful SSE response through the usage filter (removing the usage chunk when
/// `remove`); any other response is returned as it is.
pub fn filter_response(resp: Response<Body>, remove: bool, tap: Arc<UsageTap>) -> Response<Body> {
    let sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse || !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let filtered = FilteredBody {
        inner: body,
        filter: UsageFilter::new(remove),
        tap,
        done: false,
    };
    Response::from_parts(parts, filtered.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inject(s: &str) -> Injection {
        inject_include_usage(&Bytes::copy_from_slice(s.as_bytes()))
    }

    fn injected(s: &str) -> String {
        match inject(s) {
            Injection::Injected(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn injects_in_every_shape() {
        assert_eq!(
            injected(r#"{"model":"m","stream":true}"#),
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(
            injected(" \n{ \"stream\" : true }"),
            " \n{\"stream_options\":{\"include_usage\":true}, \"stream\" : true }"
        );
        assert_eq!(
            injected(r#"{"stream":true,"stream_options":null}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            injected(r#"{"stream":true,"stream_options": { } }"#),
            r#"{"stream":true,"stream_options": {"include_usage":true} }"#
        );
        assert_eq!(
            injected(r#"{"stream":true,"stream_options":{"x":1}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        assert_eq!(
            injected(r#"{"stream":true,"stream_options":{"include_usage":false}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            injected(r#"{"stream":true,"stream_options":{"include_usage":null,"a":"}\"{"}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true,"a":"}\"{"}}"#
        );
    }

    #[test]
    fn leaves_other_bodies_alone() {
        assert_eq!(
            inject(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            Injection::ClientAsked
        );
        for body in [
            r#"{"model":"m"}"#,
            r#"{"stream":false}"#,
            r#"{"stream":"true"}"#,
            r#"{"stream":true,"stream":true}"#,
            r#"{"stream":true,"stream_options":{},"stream_options":{}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":"x"}"#,
            r#"{"stream":true,"stream_options":[1]}"#,
            r#"{"stream":true"#,
            r#"[{"stream":true}]"#,
            r#"{"nested":{"stream":true}}"#,
            "",
        ] {
            assert_eq!(inject(body), Injection::NotApplicable, "{body}");
        }
    }

    #[test]
    fn paths() {
        assert!(applies_to_path("/v1/chat/completions"));
        assert!(applies_to_path("/v1/completions"));
        assert!(applies_to_path("/chat/completions"));
        assert!(!applies_to_path("/api/chat"));
        assert!(!applies_to_path("/v1/embeddings"));
    }

    const TOKEN: &str =
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(chunks: &[&[u8]], remove: bool) -> (Vec<u8>, Option<Usage>) {
        let mut f = UsageFilter::new(remove);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&f.push(&Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&f.finish());
        (out, f.usage())
    }

    #[test]
    fn removes_the_usage_chunk_and_reports_it() {
        let stream = format!("{TOKEN}{TOKEN}{USAGE}{DONE}");
        let (out, usage) = run(&[stream.as_bytes()], true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{TOKEN}{TOKEN}{DONE}")
        );
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7
            })
        );
        let (out, usage) = run(&[stream.as_bytes()], false);
        assert_eq!(out, stream.as_bytes(), "observe-only keeps everything");
        assert!(usage.is_some());
    }

    #[test]
    fn keeps_usage_inside_normal_chunks() {
        let with_choice = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        let null_usage = "data: {\"choices\":[],\"usage\":null}\n\n";
        let stream = format!("{with_choice}{null_usage}{DONE}");
        let (out, usage) = run(&[stream.as_bytes()], true);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(usage, None);
    }

    #[test]
    fn handles_crlf_and_split_events() {
        let crlf = format!("{TOKEN}{USAGE}{DONE}").replace('\n', "\r\n");
        let (out, usage) = run(&[crlf.as_bytes()], true);
        assert_eq!(
            out,
            format!("{TOKEN}{DONE}").replace('\n', "\r\n").as_bytes()
        );
        assert!(usage.is_some());
        // Every split point of the stream, including inside `\r\n`.
        let stream = format!("{TOKEN}{USAGE}{DONE}");
        for s in [stream.clone(), crlf] {
            let expected = run(&[s.as_bytes()], true).0;
            for cut in 0..s.len() {
                let (a, b) = s.as_bytes().split_at(cut);
                let (out, usage) = run(&[a, b], true);
                assert!(usage.is_some(), "cut {cut}");
                // A `\r\n` split across chunks may leave its `\n` as its own empty line.
                let o = String::from_utf8(out).unwrap();
                assert_eq!(
                    o.replace("\r\n", "\n")
                        .replace('\r', "\n")
                        .trim_start_matches('\n')
                        .replace("\n\n\n", "\n\n"),
                    String::from_utf8(expected.clone())
                        .unwrap()
                        .replace("\r\n", "\n"),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn a_huge_event_passes_through_bounded() {
        let big = format!("data: {{\"x\":\"{}\"}}\n\n", "a".repeat(MAX_HELD_EVENT * 2));
        let mut f = UsageFilter::new(true);
        let mut out = Vec::new();
        for c in big.as_bytes().chunks(1000) {
            out.extend_from_slice(&f.push(&Bytes::copy_from_slice(c)));
            assert!(f.held.len() <= MAX_HELD_EVENT);
        }
        out.extend_from_slice(&f.finish());
        assert_eq!(out, big.as_bytes());
        let (out, usage) = run(&[big.as_bytes(), USAGE.as_bytes()], true);
        assert_eq!(out, big.as_bytes());
        assert!(usage.is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_bodies_never_panic_and_injection_is_valid_json(
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = inject_include_usage(&Bytes::from(body));
        }

        #[test]
        fn injected_bodies_parse_with_include_usage(
            extra in proptest::collection::btree_map("[a-z]{1,6}", "\\PC{0,8}", 0..4),
            opts in prop_oneof![Just(None), Just(Some(serde_json::json!(null))), Just(Some(serde_json::json!({}))), Just(Some(serde_json::json!({"include_usage": false, "k": 1})))],
            pretty in any::<bool>(),
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in extra {
                obj.insert(k, v.into());
            }
            obj.insert("stream".into(), true.into());
            if let Some(o) = opts {
                obj.insert("stream_options".into(), o);
            }
            let v = serde_json::Value::Object(obj);
            let body = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
            let Injection::Injected(out) = inject_include_usage(&Bytes::from(body)) else {
                panic!("not injected");
            };
            let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&parsed["stream_options"]["include_usage"], &serde_json::json!(true));
            let mut expected = v.clone();
            let mut expected_opts = expected.get("stream_options").cloned().filter(|o| o.is_object()).unwrap_or(serde_json::json!({}));
            expected_opts["include_usage"] = true.into();
            expected["stream_options"] = expected_opts;
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn arbitrary_streams_pass_through_when_no_usage(
            stream in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(stream.len());
            let (a, b) = stream.split_at(cut);
            let (out, usage) = run(&[a, b], true);
            if usage.is_none() {
                prop_assert_eq!(out, stream);
            }
        }
    }
}
