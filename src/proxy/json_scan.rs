//! The fast path of the body inspector: one pass over a request body that checks it is JSON
//! (RFC 8259, as strictly as `serde_json` reads it) and finds where the top-level members the
//! router reads lie, without serde's per-token machinery.
//!
//! It answers only the common case: a UTF-8 object whose top-level keys carry no escapes, nested
//! at most [`MAX_DEPTH`] deep. For anything else (malformed, escaped keys, deeper, not an
//! object) it answers `None` and the caller reads the body with `serde_json`, which then gives
//! the verdict and the error text. So this scanner may refuse valid JSON but must never accept
//! what `serde_json` refuses, and must find the same members; a differential test holds it to
//! that.
//!
//! Pure; never panics on any input.

use std::ops::Range;

/// Deepest nesting of arrays and objects the fast path follows (the top-level object is 1);
/// deeper bodies go to `serde_json`, whose own limit is 128.
pub const MAX_DEPTH: u32 = 64;

/// Where the top-level members that matter lie in the body: each the raw value's bytes.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct Members {
    /// Values of keys that match `model` as Go's `encoding/json` matches (case-insensitively),
    /// the first two; more than one is an error the caller reports.
    pub models: Vec<Range<usize>>,
    /// The last `stream` (matched the same way), `messages` and `prompt` (matched exactly).
    pub stream: Option<Range<usize>>,
    pub messages: Option<Range<usize>>,
    pub prompt: Option<Range<usize>>,
}

/// Go's `encoding/json` key match: equal under simple case folding (`ſ` folds to `s`, the
/// Kelvin sign to `k`). `field` is lowercase ASCII.
pub fn go_key_eq(key: &str, field: &str) -> bool {
    if key.is_ascii() {
        return key.eq_ignore_ascii_case(field);
    }
    let fold = |c: char| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars())
}

/// The members of a body that is a JSON object, or `None` when the fast path does not answer
/// (see the module doc).
pub fn members(body: &[u8]) -> Option<Members> {
    // serde_json checks every key and every value (read as raw values) for UTF-8; outside
    // strings only ASCII is valid anyway, so the whole body must be UTF-8.
    let text = std::str::from_utf8(body).ok()?;
    let mut c = Cursor { b: body, i: 0 };
    c.ws();
    if c.peek()? != b'{' {
        return None;
    }
    c.i += 1;
    c.ws();
    let mut found = Members::default();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            if c.peek()? != b'"' {
                return None;
            }
            let key_start = c.i + 1;
            if c.string()? {
                return None; // an escaped key: serde_json decodes it
            }
            let key = text.get(key_start..c.i - 1)?;
            c.ws();
            if c.peek()? != b':' {
                return None;
            }
            c.i += 1;
            c.ws();
            let start = c.i;
            c.value()?;
            let span = start..c.i;
            if go_key_eq(key, "model") {
                if found.models.len() < 2 {
                    found.models.push(span);
                }
            } else if go_key_eq(key, "stream") {
                found.stream = Some(span);
            } else if key == "messages" {
                found.messages = Some(span);
            } else if key == "prompt" {
                found.prompt = Some(span);
            }
            c.ws();
            match c.peek()? {
                b',' => {
                    c.i += 1;
                    c.ws();
                }
                b'}' => {
                    c.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    c.ws();
    (c.i == body.len()).then_some(found)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// At a `"`: moves past the closing quote. `Some(true)` when the string has escapes.
    fn string(&mut self) -> Option<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..)?;
            let n = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.i += n;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// At a key's opening quote inside a nested object: the key, then its colon.
    fn key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.ws();
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        Some(())
    }

    /// One whole value starting here (no leading whitespace), nested containers included;
    /// the depth is the top-level object's 1 plus the containers opened here.
    fn value(&mut self) -> Option<()> {
        // One bit per open container, 1 = object; `depth` counts them.
        let mut objects: u64 = 0;
        let mut depth: u32 = 0;
        loop {
            self.ws();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1;
                    } else {
                        depth += 1;
                        if depth + 1 > MAX_DEPTH {
                            return None;
                        }
                        objects = objects << 1 | u64::from(open == b'{');
                        if open == b'{' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value is complete: close what it completes, or go on to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let in_object = objects & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if in_object {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                self.i += 1;
                depth -= 1;
                objects >>= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::inspect::serde_members;

    /// What the inspector's `serde_json` reading accepts as a body with members (it reads
    /// every top-level value as a raw value, which checks UTF-8 as well).
    fn serde_accepts(body: &[u8]) -> bool {
        serde_members(body).is_some()
    }

    #[test]
    fn finds_the_members_of_a_plain_body() {
        let body = br#" {"model": "m", "stream":true, "messages":[{"role":"user","content":"hi"}], "n":1.5e3} "#;
        let m = members(body).unwrap();
        let at = |r: &Range<usize>| std::str::from_utf8(&body[r.clone()]).unwrap();
        assert_eq!(m.models.iter().map(at).collect::<Vec<_>>(), [r#""m""#]);
        assert_eq!(m.stream.as_ref().map(at), Some("true"));
        assert_eq!(
            m.messages.as_ref().map(at),
            Some(r#"[{"role":"user","content":"hi"}]"#)
        );
        assert_eq!(m.prompt, None);
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"{}x",
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":[,1]}"#,
            br#"{"a" 1}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":1e}"#,
            br#"{"a":-}"#,
            br#"{"a":+1}"#,
            br#"{"a":tru}"#,
            br#"{"a":nul}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12g4"}"#,
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a":{"b":1]}"#,
            br#"{"a":[1}"#,
            br#"{"a":{1:2}}"#,
            br#"{"a":1 "b":2}"#,
            br#"{'a':1}"#,
            br#"{"a":NaN}"#,
        ];
        for b in bad {
            assert!(
                !serde_accepts(b),
                "serde accepts {:?}",
                String::from_utf8_lossy(b)
            );
            assert_eq!(members(b), None, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn leaves_escaped_keys_deep_nesting_and_non_objects_to_serde() {
        assert_eq!(members(br#"{"mod\u0065l":"m"}"#), None);
        assert_eq!(members(br#"[1,2]"#), None);
        assert_eq!(members(br#""s""#), None);
        let deep = |n: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(members(deep(MAX_DEPTH as usize - 1).as_bytes()).is_some());
        assert_eq!(members(deep(MAX_DEPTH as usize).as_bytes()), None);
        assert_eq!(members(deep(10_000).as_bytes()), None);
    }

    #[test]
    fn keys_fold_as_go_folds() {
        assert!(go_key_eq("MODEL", "model"));
        assert!(go_key_eq("\u{17f}tream", "stream"));
        assert!(go_key_eq("\u{212a}", "k"));
        assert!(!go_key_eq("modes", "model"));
        assert!(!go_key_eq("mod\u{e9}l", "model"));
    }

    /// A small deterministic generator (xorshift), so the differential test needs no seed
    /// file and fails the same way every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const SEEDS: &[&str] = &[
        r#"{"model":"llama3:8b","stream":false,"messages":[{"role":"user","content":"Say hello."}]}"#,
        r#"{"Model":"a","stream":true,"prompt":"once upon","options":{"temperature":0.7,"stop":["\n","\u00e9"]}}"#,
        r#"{ "model" : "m" , "messages" : [ { "role" : "system" , "content" : "x\"y\\z" } ] , "max_tokens" : -12e+3 }"#,
        r#"{"model":null,"stream":null,"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"n":[[],{},[[0.5]]]}"#,
        r#"{"ſtream":true,"MODEL":"x","model":"y","prompt":["a","b"],"e":1E-7,"z":0}"#,
        "{\"model\":\"caf\u{e9}\",\"messages\":[{\"content\":\"\u{1f600} \u{212a}\"}],\"x\":true}",
    ];

    /// Mutations of valid bodies, each either still JSON or broken somewhere: the fast path
    /// must never accept a body serde refuses, and where it answers it must find what the
    /// serde reading of the inspector finds.
    #[test]
    fn agrees_with_serde_json_on_mutated_bodies() {
        const ALPHABET: &[u8] = b"{}[]:,\"\\ \t\n0123456789-+.eEtrufalsn/ubx\x01\x7f\xc3\xa9\xff";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut answered = 0;
        for round in 0..60_000 {
            let mut body = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(body.len() + 1);
                match rng.below(4) {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 => body.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                    2 if at < body.len() => body[at] = ALPHABET[rng.below(ALPHABET.len())],
                    _ => body.truncate(at),
                }
            }
            let Some(fast) = members(&body) else { continue };
            answered += 1;
            assert!(
                serde_accepts(&body),
                "accepted what serde refuses: {:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(
                Some(fast),
                serde_members(&body),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(
            answered > 1_000,
            "only {answered} mutated bodies were answered"
        );
    }
}
