//! Small helpers shared by the dialects: JSON string escaping into preformatted bodies,
//! timestamps, deterministic hashes (digests, embedding vectors), model metadata guessed
//! from a model name, and the lenient typed view of a generation request body.
//!
//! Pure functions only: no I/O, no config, no HTTP.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// Dimension of the mock embedding vectors.
pub(crate) const EMBED_DIM: usize = 8;
/// Context length the mock claims everywhere.
pub(crate) const CTX_LEN: u32 = 4096;
/// Fixed `created` of model-list entries, so lists are byte-for-byte stable.
pub(crate) const MODEL_CREATED: u64 = 1_700_000_000;
/// Fixed `modified_at` of Ollama model entries.
pub(crate) const MODEL_MODIFIED_AT: &str = "2025-01-01T00:00:00Z";

/// Appends `s` as a quoted JSON string.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `s` as a quoted JSON string.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

/// The text of token `i`.
pub(crate) struct Tok(pub usize);

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tok{} ", self.0)
    }
}

/// The whole completion text of `n` tokens: `"tok0 tok1 ..."`.
pub(crate) fn completion_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        let _ = write!(s, "{}", Tok(i));
    }
    s
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time as RFC 3339 UTC with microseconds (`2025-01-02T03:04:05.123456Z`).
pub(crate) fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_micros())
}

fn rfc3339(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A process-wide sequence for response ids.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// FNV-1a 64 with a seed.
pub(crate) fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A sha256-looking 64-hex-digit digest derived from the model name (stable across runs,
/// equal for equal names, so the same model on two mocks unifies by digest).
pub(crate) fn digest(name: &str) -> String {
    let mut s = String::with_capacity(64);
    for seed in 0..4 {
        let _ = write!(s, "{:016x}", fnv64(seed, name.as_bytes()));
    }
    s
}

/// Appends a deterministic unit-range vector for an input hash, as a JSON array.
pub(crate) fn push_embedding(out: &mut String, hash: u64) {
    out.push('[');
    for j in 0..EMBED_DIM {
        if j > 0 {
            out.push(',');
        }
        let byte = (hash >> (j * 8)) & 0xff;
        // byte/255*2-1, printed with 4 decimals.
        let v = (byte as f64 / 255.0) * 2.0 - 1.0;
        let _ = write!(out, "{v:.4}");
    }
    out.push(']');
}

/// Metadata guessed from a model name, as an Ollama/LM Studio listing shows it.
pub(crate) struct ModelMeta {
    pub family: String,
    pub parameter_size: String,
    pub size: u64,
    pub digest: String,
    pub publisher: String,
}

impl ModelMeta {
    pub fn guess(name: &str) -> ModelMeta {
        let (publisher, base) = match name.rsplit_once('/') {
            Some((org, base)) => (org.to_owned(), base),
            None => ("olla-mock".to_owned(), name),
        };
        let lower = base.to_ascii_lowercase();
        let billions = param_billions(&lower).unwrap_or(7.0);
        ModelMeta {
            family: family(&lower),
            parameter_size: format!("{}B", trim_float(billions)),
            // Roughly a Q4_K_M file: 0.6 bytes per parameter.
            size: (billions * 0.6e9) as u64,
            digest: digest(name),
            publisher,
        }
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Family from the name's leading word: known prefixes map to Ollama's family names,
/// otherwise the leading letters (and a directly following digit) are used.
fn family(lower: &str) -> String {
    const KNOWN: &[(&str, &str)] = &[
        ("llama", "llama"),
        ("codellama", "llama"),
        ("mistral", "llama"),
        ("mixtral", "llama"),
        ("qwen3", "qwen3"),
        ("qwen2", "qwen2"),
        ("qwen", "qwen2"),
        ("gemma3", "gemma3"),
        ("gemma2", "gemma2"),
        ("gemma", "gemma"),
        ("phi4", "phi3"),
        ("phi3", "phi3"),
        ("phi", "phi2"),
        ("deepseek", "deepseek2"),
        ("nomic", "nomic-bert"),
        ("gpt-oss", "gptoss"),
    ];
    if let Some((_, fam)) = KNOWN.iter().find(|(p, _)| lower.starts_with(p)) {
        return (*fam).to_owned();
    }
    let letters: String = lower
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if letters.is_empty() {
        return "unknown".to_owned();
    }
    match lower[letters.len()..].chars().next() {
        Some(d) if d.is_ascii_digit() => format!("{letters}{d}"),
        _ => letters,
    }
}

/// The parameter count in billions from a `8b` / `0.5B` / `70b` token in the name.
fn param_billions(lower: &str) -> Option<f64> {
    let bytes = lower.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'b' || i == 0 {
            continue;
        }
        // The 'b' must end a token.
        if bytes.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let start = bytes[..i]
            .iter()
            .rposition(|c| !(c.is_ascii_digit() || *c == b'.'))
            .map_or(0, |p| p + 1);
        if start == i {
            continue;
        }
        if let Ok(v) = lower[start..i].parse::<f64>() {
            if v > 0.0 {
                return Some(v);
            }
        }
    }
    None
}

/// Rough prompt token count of a request: a quarter of the body length, at least 1.
pub(crate) fn prompt_tokens(body: &[u8]) -> usize {
    (body.len() / 4).max(1)
}

/// The fields of a generation request the mock looks at. Everything is optional and
/// unknown fields are ignored; a body that is not a JSON object fails to parse (→ 400).
#[derive(Deserialize, Default)]
pub(crate) struct GenRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    /// Ollama's `/api/show` legacy spelling of `model`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
    /// Embedding inputs (OpenAI `input`, Ollama `/api/embed` `input`).
    #[serde(default)]
    pub input: Option<Inputs>,
    /// Ollama legacy `/api/embeddings` input.
    #[serde(default)]
    pub prompt: Option<Inputs>,
}

#[derive(Deserialize, Default)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(crate) struct OllamaOptions {
    #[serde(default)]
    pub num_predict: Option<i64>,
}

impl GenRequest<'_> {
    /// Parses a body; an empty body is an error like any other non-object.
    pub fn parse(body: &[u8]) -> Result<GenRequest<'_>, String> {
        // serde accepts a JSON array for a struct; a request body must be an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("invalid request body: expected a JSON object".to_owned());
        }
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
    }

    /// The requested model (`model`, else `name`), if any and not empty.
    pub fn model(&self) -> Option<&str> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .filter(|m| !m.is_empty())
    }

    /// The token cap the request asks for, if any.
    pub fn max_tokens(&self) -> Option<usize> {
        let ollama = self
            .options
            .as_ref()
            .and_then(|o| o.num_predict)
            .and_then(|n| u64::try_from(n).ok());
        self.max_tokens
            .or(self.max_completion_tokens)
            .or(ollama)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Embedding inputs reduced to one hash per input item: a string is one item, an array
/// has one item per element (strings, token arrays, anything).
#[derive(Default)]
pub(crate) struct Inputs(pub Vec<u64>);

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Inputs, E> {
                Ok(Inputs(vec![fnv64(0, s.as_bytes())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut out = Vec::new();
                while let Some(ItemHash(h)) = seq.next_element()? {
                    out.push(h);
                }
                Ok(Inputs(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Hash of one input item: a string's bytes, or a token array's numbers.
struct ItemHash(u64);

impl<'de> Deserialize<'de> for ItemHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ItemHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an input item")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ItemHash, E> {
                Ok(ItemHash(fnv64(0, s.as_bytes())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ItemHash, E> {
                Ok(ItemHash(fnv64(1, &v.to_le_bytes())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ItemHash, E> {
                Ok(ItemHash(fnv64(1, &v.to_le_bytes())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ItemHash, E> {
                Ok(ItemHash(fnv64(1, &v.to_le_bytes())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ItemHash, E> {
                Ok(ItemHash(u64::from(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ItemHash, E> {
                Ok(ItemHash(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemHash, A::Error> {
                let mut h = fnv64(2, b"");
                while let Some(ItemHash(x)) = seq.next_element()? {
                    h = fnv64(h, &x.to_le_bytes());
                }
                Ok(ItemHash(h))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ItemHash, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ItemHash(3))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_json_strings() {
        assert_eq!(json_str("plain"), r#""plain""#);
        let tricky = "a\"b\\c\nd\u{1}é";
        let s = json_str(tricky);
        let back: String = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(back, tricky);
    }

    #[test]
    fn tokens_and_text() {
        assert_eq!(Tok(3).to_string(), "tok3 ");
        assert_eq!(completion_text(3), "tok0 tok1 tok2 ");
        assert_eq!(completion_text(0), "");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(rfc3339(1_735_689_599, 0), "2024-12-31T23:59:59.000000Z");
        assert!(rfc3339_now().ends_with('Z'));
    }

    #[test]
    fn digests_are_stable_hex() {
        let d = digest("llama3:8b");
        assert_eq!(d.len(), 64);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(d, digest("llama3:8b"));
        assert_ne!(d, digest("llama3:70b"));
    }

    #[test]
    fn guesses_model_meta() {
        let m = ModelMeta::guess("llama3.2:3b");
        assert_eq!(
            (m.family.as_str(), m.parameter_size.as_str()),
            ("llama", "3B")
        );
        let m = ModelMeta::guess("Qwen/qwen2.5-0.5b-instruct");
        assert_eq!(m.family, "qwen2");
        assert_eq!(m.parameter_size, "0.5B");
        assert_eq!(m.publisher, "Qwen");
        let m = ModelMeta::guess("mock-model");
        assert_eq!(
            (m.family.as_str(), m.parameter_size.as_str()),
            ("mock", "7B")
        );
        assert_eq!(ModelMeta::guess("starcoder2:15b").family, "starcoder2");
        assert_eq!(ModelMeta::guess("42").family, "unknown");
    }

    #[test]
    fn embeddings_are_deterministic_and_valid() {
        let mut a = String::new();
        push_embedding(&mut a, fnv64(0, b"hi"));
        let v: Vec<f64> = serde_json::from_str(&a).expect("array");
        assert_eq!(v.len(), EMBED_DIM);
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
        let mut b = String::new();
        push_embedding(&mut b, fnv64(0, b"hi"));
        assert_eq!(a, b);
    }

    #[test]
    fn parses_generation_requests() {
        let r = GenRequest::parse(
            br#"{"model":"m","stream":true,"max_tokens":3,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        )
        .expect("parse");
        assert_eq!(r.model(), Some("m"));
        assert_eq!(r.stream, Some(true));
        assert_eq!(r.max_tokens(), Some(3));
        assert!(r.include_usage());

        let r = GenRequest::parse(br#"{"options":{"num_predict":-1}}"#).expect("parse");
        assert_eq!(r.model(), None);
        assert_eq!(r.max_tokens(), None);
        let r = GenRequest::parse(br#"{"options":{"num_predict":2}}"#).expect("parse");
        assert_eq!(r.max_tokens(), Some(2));

        let r = GenRequest::parse(br#"{"input":["a",[1,2],"c"]}"#).expect("parse");
        assert_eq!(r.input.map(|i| i.0.len()), Some(3));
        let r = GenRequest::parse(br#"{"input":"a"}"#).expect("parse");
        assert_eq!(r.input.map(|i| i.0.len()), Some(1));

        assert!(GenRequest::parse(b"").is_err());
        assert!(GenRequest::parse(b"{\"model\":").is_err());
        assert!(GenRequest::parse(b"[]").is_err());
        assert!(GenRequest::parse(br#"{"stream":"yes"}"#).is_err());
    }
}
