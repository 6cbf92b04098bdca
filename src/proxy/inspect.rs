//! The body inspector: the routing facts of a request body (`model`, `stream`) and where the
//! model's value lies in the bytes, read without building a JSON tree (top-level keys borrowed,
//! values skipped as raw slices), so the cost stays about one pass over the body.
//!
//! Top-level keys are matched as a Go backend (Ollama) matches them, case-insensitively
//! (`encoding/json`): `{"Model":"a"}` routes by `a`, and a body with two keys that both match
//! `model` (`{"model":"a","Model":"b"}`) is refused, since olla and the backend could disagree
//! on which one counts. A model rewrite ([`splice_model`]) replaces only the value's bytes.
//!
//! Pure functions; never panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProxyError;
use crate::proxy::json_scan::{self, go_key_eq, Members};

/// Parsed routing facts of a request body.
#[derive(Debug, Default, PartialEq)]
pub struct BodyFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// Byte range of the model's JSON string (quotes included) in the body.
    pub model_span: Option<Range<usize>>,
    /// Byte range of the raw JSON value of `messages` (sticky keys, cache-aware routing).
    pub messages_span: Option<Range<usize>>,
    /// Byte range of the raw JSON value of `prompt`.
    pub prompt_span: Option<Range<usize>>,
}

/// The top-level members that matter, borrowed from the body.
#[derive(Default)]
struct TopLevel<'a> {
    models: Vec<&'a RawValue>,
    stream: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    prompt: Option<&'a RawValue>,
    /// The body is JSON but not an object.
    not_object: bool,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = TopLevel::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            if go_key_eq(&key, "model") {
                // Two are already an error; stop collecting (bounded memory).
                if top.models.len() < 2 {
                    top.models.push(value);
                }
            } else if go_key_eq(&key, "stream") {
                top.stream = Some(value);
            } else if key == "messages" {
                top.messages = Some(value);
            } else if key == "prompt" {
                top.prompt = Some(value);
            }
        }
        Ok(top)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::not_object())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::not_object())
    }
}

impl TopLevel<'_> {
    fn not_object() -> Self {
        Self {
            not_object: true,
            ..Self::default()
        }
    }
}

fn parse_top(body: &[u8]) -> Result<TopLevel<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = (&mut de).deserialize_any(TopVisitor)?;
    de.end()?;
    Ok(top)
}

/// Where `inner` lies inside `outer`, when it is a sub-slice of it.
fn span_of(outer: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (outer.get(start..end)? == inner.as_bytes()).then_some(start..end)
}

/// Whether a `Content-Type` names JSON (`application/json`, `application/x-ndjson`, ...). A
/// plain scan: `str::contains` sets up a substring searcher per call, which costs more than the
/// whole scan of a short header value.
fn names_json(content_type: &str) -> bool {
    content_type.as_bytes().windows(4).any(|w| w == b"json")
}

/// The members the serde reading of the body finds: the test oracle of the one-pass scanner.
/// `None`: not JSON, or not an object.
#[cfg(test)]
pub(crate) fn serde_members(body: &[u8]) -> Option<Members> {
    let top = parse_top(body).ok()?;
    (!top.not_object).then(|| top.members(body))
}

impl TopLevel<'_> {
    fn members(&self, body: &[u8]) -> Members {
        let span = |v: &RawValue| span_of(body, v.get());
        Members {
            models: self.models.iter().filter_map(|v| span(v)).collect(),
            stream: self.stream.and_then(span),
            messages: self.messages.and_then(span),
            prompt: self.prompt.and_then(span),
        }
    }
}

/// A model value's name: the text of a JSON string (escapes decoded), `Ok(None)` for `null`.
fn model_name(raw: &[u8]) -> Result<Option<String>, ()> {
    if raw == b"null" {
        return Ok(None);
    }
    // Most names have no escapes: the text between the quotes is the name.
    if let [b'"', inner @ .., b'"'] = raw {
        if !inner.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
            return std::str::from_utf8(inner)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| ());
        }
    }
    serde_json::from_slice::<String>(raw)
        .map(Some)
        .map_err(|_| ())
}

/// Reads `model` and `stream` from a JSON body; malformed JSON, a non-string model or an
/// ambiguous model key is a 400. The one-pass scanner ([`json_scan`]) reads the common body;
/// anything it leaves is read with `serde_json`, which also words the errors.
pub fn inspect_body(content_type: Option<&str>, body: &[u8]) -> Result<BodyFacts, ProxyError> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Ok(BodyFacts::default());
    }
    let declared_json = content_type.is_some_and(names_json);
    let looks_json = trimmed.starts_with(b"{");
    if !declared_json && !looks_json {
        return Ok(BodyFacts::default());
    }
    let members = match json_scan::members(body) {
        Some(m) => m,
        None => {
            let top = parse_top(body).map_err(|e| {
                ProxyError::BadRequest(format!("invalid JSON in request body: {e}"))
            })?;
            if top.not_object {
                return Ok(BodyFacts::default());
            }
            top.members(body)
        }
    };
    if members.models.len() > 1 {
        return Err(ProxyError::BadRequest(
            "ambiguous request body: more than one top-level key names the model (keys are matched case-insensitively)".into(),
        ));
    }
    let mut facts = BodyFacts::default();
    if let Some(span) = members.models.first() {
        let raw = body.get(span.clone()).unwrap_or_default();
        let name = model_name(raw).map_err(|()| {
            ProxyError::BadRequest("invalid request body: \"model\" must be a string".into())
        })?;
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            facts.model_span = Some(span.clone());
            facts.model = Some(name);
        }
    }
    if let Some(span) = members.stream {
        facts.stream = body.get(span) == Some(b"true".as_slice());
    }
    facts.messages_span = members.messages;
    facts.prompt_span = members.prompt;
    Ok(facts)
}

/// The raw JSON text sticky sessions hash for `prefix_hash`: `messages`, or `prompt` when
/// `messages` is absent, `[]` or null.
pub fn prefix_text<'b>(facts: &BodyFacts, body: &'b [u8]) -> Option<&'b [u8]> {
    let get = |span: &Option<Range<usize>>| span.clone().and_then(|r| body.get(r));
    get(&facts.messages_span)
        .filter(|m| !matches!(m.trim_ascii(), b"[]" | b"null"))
        .or_else(|| get(&facts.prompt_span).filter(|p| p.trim_ascii() != b"null"))
}

/// Most messages split out for cache-aware routing (a longer conversation is matched on its
/// head).
pub const MAX_PROMPT_SEGMENTS: usize = 1024;

/// The prompt as segments for cache-aware routing: each message's raw JSON text in order, or
/// fixed blocks of a `prompt`. Borrowed from the body; bounded in count.
pub fn prompt_segments<'b>(facts: &BodyFacts, body: &'b [u8]) -> Vec<&'b [u8]> {
    if let Some(m) = facts.messages_span.clone().and_then(|r| body.get(r)) {
        let items = split_array(m).or_else(|| {
            serde_json::from_slice::<MessageList<'b>>(m)
                .ok()
                .map(|l| l.0)
        });
        if let Some(items) = items.filter(|i| !i.is_empty()) {
            return items;
        }
    }
    match facts.prompt_span.clone().and_then(|r| body.get(r)) {
        Some(p) if p.trim_ascii() != b"null" => p
            .chunks(olla_actors::routing::prefix::PROMPT_BLOCK)
            .take(MAX_PROMPT_SEGMENTS)
            .collect(),
        _ => Vec::new(),
    }
}

/// The elements of a JSON array as raw slices (whitespace around them cut), at most
/// [`MAX_PROMPT_SEGMENTS`] kept: the same slices as [`MessageList`] gives for a valid array,
/// found without validating (the body was parsed by [`inspect_body`] already) by one scan
/// that jumps through strings with `memchr`. `None` when `v` is not an array or the scan
/// does not end cleanly (the parser then decides).
fn split_array(v: &[u8]) -> Option<Vec<&[u8]>> {
    fn is_ws(b: &u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r')
    }
    fn lead(s: &[u8]) -> usize {
        s.iter().take_while(|b| is_ws(b)).count()
    }
    let mut i = lead(v);
    if v.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let mut out: Vec<&[u8]> = Vec::new();
    let mut depth = 0usize;
    // Where the current element starts, and whether it has anything yet.
    let mut start = i;
    let mut any = false;
    while let Some(&b) = v.get(i) {
        let end_of_item = match b {
            b'"' => {
                // Jump to the closing quote, over escapes.
                i += 1;
                loop {
                    i += memchr::memchr2(b'"', b'\\', v.get(i..)?)?;
                    if v.get(i) == Some(&b'\\') {
                        i += 2;
                    } else {
                        break;
                    }
                }
                any = true;
                false
            }
            b'[' | b'{' => {
                depth += 1;
                any = true;
                false
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                false
            }
            b'}' => return None,
            b']' | b',' if depth == 0 => true,
            b if is_ws(&b) => false,
            _ => {
                any = true;
                false
            }
        };
        if end_of_item {
            let last = b == b']';
            if any {
                let item = v.get(start..i)?;
                let tail = item.iter().rev().take_while(|b| is_ws(b)).count();
                if out.len() < MAX_PROMPT_SEGMENTS {
                    out.push(item.get(lead(item)..item.len() - tail)?);
                }
            } else if !(last && out.is_empty()) {
                // `[,`, `,,` or `,]`: not an array the parser would accept.
                return None;
            }
            if last {
                let rest = v.get(i + 1..)?;
                return (lead(rest) == rest.len()).then_some(out);
            }
            start = i + 1;
            any = false;
        }
        i += 1;
    }
    None
}

/// A JSON array's elements as raw slices, at most [`MAX_PROMPT_SEGMENTS`] kept.
struct MessageList<'a>(Vec<&'a [u8]>);

impl<'de> serde::Deserialize<'de> for MessageList<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessageList<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    if out.len() < MAX_PROMPT_SEGMENTS {
                        out.push(item.get().as_bytes());
                    }
                }
                Ok(MessageList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The body with the model's value at `span` replaced by `name` (JSON-escaped); every other
/// byte is kept. `None` when the span does not fit the body.
pub fn splice_model(body: &Bytes, span: &Range<usize>, name: &str) -> Option<Bytes> {
    let head = body.get(..span.start)?;
    let tail = body.get(span.end..)?;
    let quoted = serde_json::to_string(name).ok()?;
    let mut out = BytesMut::with_capacity(head.len() + quoted.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(tail);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_type_names_json_anywhere_in_it() {
        for c in [
            "application/json",
            "application/x-ndjson",
            "text/json; charset=utf-8",
            "json",
        ] {
            assert!(names_json(c), "{c}");
        }
        for c in [
            "",
            "jso",
            "text/plain",
            "application/JSON",
            "application/js on",
        ] {
            assert!(!names_json(c), "{c}");
        }
    }

    #[test]
    fn messages_and_prompt_are_located_for_routing() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"s"}, {"role":"user","content":"q"}],"stream":true}"#;
        let f = inspect_body(Some("application/json"), body).unwrap();
        assert_eq!(
            prefix_text(&f, body).unwrap(),
            br#"[{"role":"system","content":"s"}, {"role":"user","content":"q"}]"#
        );
        let segs = prompt_segments(&f, body);
        assert_eq!(
            segs,
            vec![
                &br#"{"role":"system","content":"s"}"#[..],
                &br#"{"role":"user","content":"q"}"#[..]
            ]
        );
        // `messages` empty or null: `prompt` is hashed instead; a long prompt is blocked.
        let long = "x".repeat(600);
        let body = format!(r#"{{"model":"m","messages":[],"prompt":"{long}"}}"#);
        let f = inspect_body(None, body.as_bytes()).unwrap();
        assert_eq!(prefix_text(&f, body.as_bytes()).unwrap().len(), 602);
        assert_eq!(prompt_segments(&f, body.as_bytes()).len(), 3);
        let body = br#"{"model":"m","messages":null}"#;
        let f = inspect_body(None, body).unwrap();
        assert_eq!(prefix_text(&f, body), None);
        // Not a list: no segments, never an error.
        let body = br#"{"model":"m","messages":{"a":1}}"#;
        let f = inspect_body(None, body).unwrap();
        assert!(prompt_segments(&f, body).is_empty());
    }

    /// What the parser makes of `v` as a list of raw values (the reference of `split_array`).
    fn parsed(v: &[u8]) -> Option<Vec<&[u8]>> {
        serde_json::from_slice::<MessageList>(v).ok().map(|l| l.0)
    }

    #[test]
    fn the_array_scan_cuts_what_the_parser_cuts() {
        let valid: &[&str] = &[
            "[]",
            " [ ] ",
            "[1]",
            "[ 1 , 2 ,3 ]",
            "\n[\t{\"a\": [1, {\"b\": \"]}[,\"}]} ,\r\n\"x\" ]\n",
            r#"[{"role":"user","content":"say \"hi\", then \\"}, {"c":"\\\""}]"#,
            r#"[{"content":"unicode \u00e9 é ✓ , ] }"}, null, true, -1.5e3, [[], {}]]"#,
            r#"[{"role":"system","content":"You are a helpful assistant. "},{"role":"user","content":"q"}]"#,
        ];
        for v in valid {
            let want = parsed(v.as_bytes());
            assert!(want.is_some(), "reference parses {v}");
            assert_eq!(split_array(v.as_bytes()), want, "{v}");
        }
        // Not arrays, or not finished: the scan says so (and the parser decides).
        for v in [
            "{}", "\"[1]\"", "", "  ", "[1", "[1,", "[,1]", "[1,,2]", "[1,]", "[\"a]", "[}",
            "[1] x", "[\"\\", "[1]]",
        ] {
            assert_eq!(split_array(v.as_bytes()), None, "{v:?}");
            assert_eq!(parsed(v.as_bytes()), None, "the parser refuses {v:?} too");
        }
    }

    #[test]
    fn message_segments_are_bounded() {
        let items: Vec<String> = (0..MAX_PROMPT_SEGMENTS + 10)
            .map(|i| i.to_string())
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, items.join(","));
        let f = inspect_body(None, body.as_bytes()).unwrap();
        assert_eq!(
            prompt_segments(&f, body.as_bytes()).len(),
            MAX_PROMPT_SEGMENTS
        );
    }
    use proptest::prelude::*;

    #[test]
    fn inspects_model_and_stream() {
        let body = br#"{"model":"m1","stream":true,"messages":[]}"#;
        let f = inspect_body(Some("application/json"), body).unwrap();
        assert_eq!(f.model.as_deref(), Some("m1"));
        assert!(f.stream);
        assert_eq!(&body[f.model_span.unwrap()], br#""m1""#);
        assert_eq!(inspect_body(None, b"").unwrap(), BodyFacts::default());
        assert_eq!(
            inspect_body(Some("text/plain"), b"hello").unwrap(),
            BodyFacts::default()
        );
        assert_eq!(
            inspect_body(Some("application/json"), br#"{"model":"a\"b"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("a\"b")
        );
        assert_eq!(
            inspect_body(Some("application/json"), b"[1,2]").unwrap(),
            BodyFacts::default()
        );
        assert_eq!(
            inspect_body(None, br#"{"model":null}"#).unwrap(),
            BodyFacts::default()
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        for body in [
            &b"{\"model\":"[..],
            b"{oops",
            br#"{"model":5}"#,
            br#"{"model":"a"} trailing"#,
        ] {
            assert!(
                matches!(
                    inspect_body(Some("application/json"), body),
                    Err(ProxyError::BadRequest(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn model_keys_match_as_go_does_and_ambiguity_is_refused() {
        let f = inspect_body(None, br#"{"Model":"a"}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("a"));
        let f = inspect_body(None, br#"{"MODEL":"b","Stream":true}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("b"));
        assert!(f.stream);
        let f = inspect_body(None, br#"{"\u006dodel":"c"}"#).unwrap();
        assert_eq!(
            f.model.as_deref(),
            Some("c"),
            "escaped keys are decoded first"
        );
        for body in [
            &br#"{"model":"a","Model":"b"}"#[..],
            br#"{"model":"a","model":"b"}"#,
            br#"{"model":"a","\u004dodel":"b"}"#,
        ] {
            assert!(matches!(
                inspect_body(None, body),
                Err(ProxyError::BadRequest(m)) if m.contains("ambiguous")
            ));
        }
        assert_eq!(
            inspect_body(None, br#"{"models":"x"}"#).unwrap().model,
            None
        );
    }

    #[test]
    fn splicing_changes_only_the_model_value() {
        let b = Bytes::from_static(
            br#"{ "Model" : "alias", "messages":[{"role":"user","content":"hi \"x\""}]}"#,
        );
        let f = inspect_body(None, &b).unwrap();
        let out = splice_model(&b, &f.model_span.unwrap(), "real:8b\"q").unwrap();
        assert_eq!(
            &out[..],
            br#"{ "Model" : "real:8b\"q", "messages":[{"role":"user","content":"hi \"x\""}]}"#
        );
        let again = inspect_body(None, &out).unwrap();
        assert_eq!(again.model.as_deref(), Some("real:8b\"q"));
        assert_eq!(splice_model(&b, &(5..500), "x"), None);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = inspect_body(Some("application/json"), &body);
            let _ = inspect_body(None, &body);
        }

        #[test]
        fn valid_bodies_give_the_same_facts_however_they_are_written(
            model in "\\PC{1,20}",
            stream in any::<bool>(),
            extra in proptest::collection::btree_map("[a-ln-rt-z][a-z]{0,5}", json_value(), 0..5),
            pretty in any::<bool>(),
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in extra {
                obj.insert(k, v);
            }
            obj.insert("model".into(), model.clone().into());
            obj.insert("stream".into(), stream.into());
            let v = serde_json::Value::Object(obj);
            let body = if pretty {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            };
            // The one-pass scanner answers for every such body, as the serde reading does.
            let fast = json_scan::members(&body);
            prop_assert!(fast.is_some());
            prop_assert_eq!(fast, serde_members(&body));
            let f = inspect_body(Some("application/json"), &body).unwrap();
            prop_assert_eq!(f.model.as_deref(), Some(model.as_str()));
            prop_assert_eq!(f.stream, stream);
            let span = f.model_span.clone().unwrap();
            let spliced = splice_model(&Bytes::from(body.clone()), &span, "new").unwrap();
            let mut expected = v.clone();
            expected["model"] = "new".into();
            let reparsed: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
            prop_assert_eq!(reparsed, expected);
        }
    }
}
