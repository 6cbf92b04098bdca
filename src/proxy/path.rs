//! The upstream path of a proxied request: normalised before it is joined to a backend's base
//! path, so no client-chosen spelling can leave that base path or dodge a path rule.
//!
//! [`normalise`] turns the part of the route path after the route prefix into the one spelling
//! that is forwarded: `\` read as `/`, percent-escapes of unreserved characters decoded (other
//! escapes kept, their hex upper-cased), empty segments (`//`) dropped, and dot-segments
//! resolved as RFC 3986 §5.2.4 does. A path that climbs above its root (it would leave the
//! endpoint's base path), a segment that is a dot-segment once its encoded separators are
//! decoded (`..%2f`, `..%5c`), a NUL or a broken escape is refused with a reason. [`rule_key`]
//! is the spelling path rules match on: case-folded, `;params` and the trailing `/` removed.
//!
//! Pure string work: no I/O, no allocation beyond the output, never panics on any input.
//! Everything that forwards a client-chosen path must go through [`normalise`] first.

use std::fmt;

/// Why a path is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A `..` climbs above the route root: the path would leave the endpoint's base path.
    Escapes,
    /// A segment hides a dot-segment behind an encoded separator (`..%2f`, `%2e%2e%5c`) or
    /// `;params` (`..;x`).
    HiddenDotSegment,
    /// `%` not followed by two hex digits, or an encoded NUL.
    BadEscape,
    /// A raw control character.
    Control,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Escapes => "the path climbs above the endpoint's base path",
            Self::HiddenDotSegment => {
                "the path hides a dot-segment behind an encoded separator or parameters"
            }
            Self::BadEscape => "the path has an invalid percent-escape",
            Self::Control => "the path has a control character",
        })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes escapes of unreserved characters and upper-cases the hex of the rest; `\` becomes `/`.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex_val);
                let lo = b.get(i + 2).copied().and_then(hex_val);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi * 16 + lo;
                if v == 0 {
                    return Err(PathError::BadEscape);
                }
                if unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            c if c < 0x20 || c == 0x7f => return Err(PathError::Control),
            _ => {
                // Copy one whole UTF-8 character (the input is a `str`).
                let ch_len = raw[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&raw[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    Ok(out)
}

/// Whether a segment is a dot-segment once its `;params` are dropped (`..;x`), or contains one
/// once its encoded `/` and `\` are read as separators (`..%2f`).
fn hides_dot_segment(seg: &str) -> bool {
    if matches!(seg.split(';').next(), Some("." | "..")) {
        return true;
    }
    if !seg.contains('%') {
        return false;
    }
    let upper = seg.to_ascii_uppercase();
    let spread = upper.replace("%2F", "/").replace("%5C", "/");
    spread.contains('/') && spread.split('/').any(|p| p == "." || p == "..")
}

/// Normalises the path (no query) that will be joined to a backend's base path. The result
/// starts with `/`, has no empty or dot-segment, and keeps a trailing `/` when the input had one
/// (or ended in a dot-segment). Normalising the result again returns it unchanged.
pub fn normalise(raw: &str) -> Result<String, PathError> {
    if is_normal(raw) {
        return Ok(raw.to_owned());
    }
    normalise_full(raw)
}

/// [`normalise`] without its fast path: decode, then resolve segment by segment.
fn normalise_full(raw: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/') {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
                trailing_slash = true;
            }
            s => {
                if hides_dot_segment(s) {
                    return Err(PathError::HiddenDotSegment);
                }
                out.push(s);
            }
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Whether `raw` is already the one spelling [`normalise`] gives (the common case, taken
/// without decoding or splitting into a list): it starts with `/`, each segment is non-empty
/// (only the last may be, for a trailing `/`), no segment is `.` or `..`, and every byte is
/// unreserved or `/` (no escape, `\`, `;`, control or non-ASCII byte, which only the full pass
/// reads).
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
        if !seg.bytes().all(unreserved) {
            return false;
        }
    }
    true
}

/// The spelling path rules match on: a normalised path, ASCII case-folded, each segment's
/// `;params` removed, and no trailing `/` (the root stays `/`).
pub fn rule_key(normalised: &str) -> String {
    if is_rule_key(normalised) {
        return normalised.to_owned();
    }
    rule_key_full(normalised)
}

/// Whether `path` is its own rule key (the common case: a lower-case API path), checked in one
/// pass without splitting it: it starts with `/`, has no `;`, no upper-case letter, no empty
/// segment and no trailing `/` (or is the root).
fn is_rule_key(path: &str) -> bool {
    let b = path.as_bytes();
    if b == b"/" {
        return true;
    }
    if b.first() != Some(&b'/') || b.last() == Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        if c == b';' || c.is_ascii_uppercase() || (c == b'/' && prev == b'/') {
            return false;
        }
        prev = c;
    }
    true
}

/// [`rule_key`] segment by segment.
fn rule_key_full(normalised: &str) -> String {
    let mut key = String::with_capacity(normalised.len());
    for seg in normalised.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.split(';').next().unwrap_or("");
        if seg.is_empty() {
            continue;
        }
        key.push('/');
        key.push_str(&seg.to_ascii_lowercase());
    }
    if key.is_empty() {
        key.push('/');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/api/tags",
            "/v1/models/",
            "/a%2Fb",
        ] {
            assert_eq!(normalise(p).unwrap(), p);
        }
    }

    #[test]
    fn dot_segments_are_resolved_inside_the_root() {
        assert_eq!(normalise("/api/./pull").unwrap(), "/api/pull");
        assert_eq!(normalise("/v1/x/../models").unwrap(), "/v1/models");
        assert_eq!(normalise("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalise("/a/.").unwrap(), "/a/");
        assert_eq!(normalise("//api//pull").unwrap(), "/api/pull");
        assert_eq!(normalise("").unwrap(), "/");
        assert_eq!(normalise("api/tags").unwrap(), "/api/tags");
    }

    #[test]
    fn climbing_above_the_root_is_refused_in_every_spelling() {
        for p in [
            "/../admin",
            "/../../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/..\\admin",
            "\\..\\admin",
            "/v1/%2e%2e/%2e%2e/x",
        ] {
            assert_eq!(normalise(p), Err(PathError::Escapes), "{p}");
        }
    }

    #[test]
    fn encoded_separators_never_become_separators() {
        assert_eq!(normalise("/..%2fadmin"), Err(PathError::HiddenDotSegment));
        assert_eq!(normalise("/..%2Fadmin"), Err(PathError::HiddenDotSegment));
        assert_eq!(normalise("/x%2f..%2fy"), Err(PathError::HiddenDotSegment));
        assert_eq!(
            normalise("/%2e%2e%5cadmin"),
            Err(PathError::HiddenDotSegment)
        );
        assert_eq!(normalise("/a/..;x/pull"), Err(PathError::HiddenDotSegment));
        // An encoded slash inside a name stays encoded (upper-case hex).
        assert_eq!(
            normalise("/models/org%2fname").unwrap(),
            "/models/org%2Fname"
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(normalise("/api/pu%6cl").unwrap(), "/api/pull");
        assert_eq!(normalise("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalise("/%7e").unwrap(), "/~");
        assert_eq!(normalise("/%25"), Ok("/%25".into()));
        assert_eq!(normalise("/%2"), Err(PathError::BadEscape));
        assert_eq!(normalise("/%zz"), Err(PathError::BadEscape));
        assert_eq!(normalise("/%00"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a\nb"), Err(PathError::Control));
    }

    #[test]
    fn rule_keys_fold_case_params_and_trailing_slash() {
        assert_eq!(rule_key("/api/PULL/"), "/api/pull");
        assert_eq!(rule_key("/api/delete;x"), "/api/delete");
        assert_eq!(rule_key("/api;v=1/pull;y"), "/api/pull");
        assert_eq!(rule_key("/"), "/");
        assert_eq!(rule_key("/;x"), "/");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_rule_key_fast_path_agrees_with_the_full_pass(raw in "[aA/;.b-]{0,12}|\\PC{0,20}") {
            prop_assert_eq!(rule_key(&raw), rule_key_full(&raw));
        }

        #[test]
        fn normalising_never_panics_and_is_stable(raw in "[a-zA-Z0-9./\\\\%;_~-]{0,40}|\\PC{0,40}") {
            if let Ok(once) = normalise(&raw) {
                prop_assert!(once.starts_with('/'));
                prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
                prop_assert!(!once.contains("//"), "{}", once);
                prop_assert_eq!(normalise(&once), Ok(once.clone()));
                let key = rule_key(&once);
                prop_assert_eq!(rule_key(&key), key.clone());
                prop_assert_eq!(rule_key_full(&once), key);
            }
        }

        #[test]
        fn dot_segment_heavy_paths_stay_inside(segs in proptest::collection::vec(
            prop_oneof![Just(".."), Just("."), Just(""), Just("%2e%2e"), Just("%2E."), Just("a"), Just("b%2fc"), Just("..%2f")],
            0..12,
        )) {
            let raw = format!("/{}", segs.join("/"));
            if let Ok(once) = normalise(&raw) {
                prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
                prop_assert_eq!(normalise(&once), Ok(once.clone()));
            }
        }
    }

    #[test]
    fn the_fast_path_returns_only_what_the_full_pass_returns() {
        let inputs = [
            "/",
            "/v1/chat/completions",
            "/api/generate/",
            "/a.b/c-d_e~f/",
            "/v1//x",
            "//",
            "/./a",
            "/a/.",
            "/a/..",
            "/a/../b",
            "/..",
            "/.a/..b/...",
            "/a%2e/b",
            "/a;b/c",
            "/a\\b",
            "v1/models",
            "",
            "/a/b//",
            "/é",
            "/a b",
            "/A/B",
        ];
        for raw in inputs {
            let full = normalise_full(raw);
            if is_normal(raw) {
                assert_eq!(Ok(raw.to_owned()), full, "{raw:?}");
            }
            assert_eq!(normalise(raw), full, "{raw:?}");
        }
        assert!(is_normal("/v1/chat/completions") && is_normal("/") && is_normal("/a/"));
        assert!(!is_normal("/a//b") && !is_normal("/a/../b") && !is_normal("a/b"));
    }
}
