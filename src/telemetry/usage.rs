//! Token usage read from responses as they pass: an incremental, bounded scanner over the body
//! bytes sent to the client. It never copies the body and keeps at most [`CARRY`] bytes between
//! chunks. It owns no I/O.
//!
//! What it recognises (the keys, with a number after the colon):
//! - OpenAI JSON and the final SSE usage chunk: `prompt_tokens`, `completion_tokens`;
//! - Ollama JSON and NDJSON streams (last object): `prompt_eval_count`, `eval_count`;
//! - Anthropic JSON and the `message_start` / `message_delta` events (also the translated
//!   Anthropic stream olla writes itself): `input_tokens`, `output_tokens`.
//!
//! Inside a JSON string a quote is always escaped, so a quoted key followed by a colon can only
//! be a real key, never message text. The last value seen wins (Anthropic's `message_delta`
//! carries the final `output_tokens` after `message_start`'s placeholder).
//!
//! Cost: usage sits in the first event (Anthropic `message_start`) or at the end of a body or
//! stream (everything else), so only the head ([`HEAD_WINDOW`]) and tail ([`TAIL_WINDOW`]) of
//! each chunk are searched, for the two key suffixes `_tokens"` and `_count"`: a token event by
//! one pass over its underscores with `memchr`'s SIMD byte search (a substring searcher per
//! suffix cost about twice as much there), a longer chunk with a prebuilt substring searcher per
//! suffix. A chunk of an SSE token stream (a few hundred bytes) is searched whole.

use memchr::memmem;

/// Bytes of the previous chunk's tail kept so a key split across two chunks is still found.
pub const CARRY: usize = 64;
/// Bytes searched at the start of each chunk.
pub const HEAD_WINDOW: usize = 2048;
/// Bytes searched at the end of each chunk.
pub const TAIL_WINDOW: usize = 4096;

/// Tokens reported by the backend (either side may be missing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
}

impl Usage {
    pub fn is_known(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }
}

/// The suffixes of the keys the scanner knows, each starting at an underscore.
const TOKENS: &[u8] = b"_tokens\"";
const COUNT: &[u8] = b"_count\"";

/// Haystacks up to this long are read by their underscores ([`UsageScanner::scan`]).
const UNDERSCORE_SCAN_MAX: usize = 512;

/// The substring searchers for the two suffixes, built once: building one (picking and
/// preparing its SIMD prefilter) costs more than searching a chunk.
fn suffix_finders() -> &'static [memmem::Finder<'static>; 2] {
    static FINDERS: std::sync::OnceLock<[memmem::Finder<'static>; 2]> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| [memmem::Finder::new(TOKENS), memmem::Finder::new(COUNT)])
}

/// See the module doc.
#[derive(Debug)]
pub struct UsageScanner {
    usage: Usage,
    carry: [u8; CARRY],
    carry_len: usize,
}

/// Which side of the usage a key names.
#[derive(Clone, Copy)]
enum Side {
    Input,
    Output,
}

/// The key before a `_tokens"` / `_count"` suffix at `at` (index of `_`), if it is one we know.
fn key_before(hay: &[u8], at: usize, suffix: &[u8]) -> Option<Side> {
    const KEYS: &[(&[u8], &[u8], Side)] = &[
        (b"\"prompt", b"_tokens\"", Side::Input),
        (b"\"completion", b"_tokens\"", Side::Output),
        (b"\"input", b"_tokens\"", Side::Input),
        (b"\"output", b"_tokens\"", Side::Output),
        (b"\"prompt_eval", b"_count\"", Side::Input),
        (b"\"eval", b"_count\"", Side::Output),
    ];
    let head = &hay[..at];
    KEYS.iter()
        .find(|(stem, sfx, _)| *sfx == suffix && head.ends_with(stem))
        .map(|(_, _, side)| *side)
}

/// The unsigned integer after `: ` at `from`, if the JSON there is `: <digits>`.
fn number_after(hay: &[u8], from: usize) -> Option<u64> {
    let mut i = from;
    while i < hay.len() && hay[i].is_ascii_whitespace() {
        i += 1;
    }
    if hay.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < hay.len() && hay[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while i < hay.len() && hay[i].is_ascii_digit() && i - start < 19 {
        n = n * 10 + u64::from(hay[i] - b'0');
        i += 1;
    }
    // A number running to the end of the window may continue in the next chunk: the seam
    // between the two chunks reads it whole.
    if i == start || i == hay.len() || hay[i].is_ascii_digit() {
        return None;
    }
    Some(n)
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self {
            usage: Usage::default(),
            carry: [0; CARRY],
            carry_len: 0,
        }
    }
}

impl UsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// What has been found so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Feeds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        // The carried tail joined with the start of this chunk: keys split across the boundary.
        if self.carry_len > 0 {
            let mut seam = [0u8; CARRY * 2];
            let take = chunk.len().min(CARRY);
            seam[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
            seam[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            let len = self.carry_len + take;
            self.scan(&seam[..len]);
        }
        if chunk.len() <= HEAD_WINDOW + TAIL_WINDOW {
            self.scan(chunk);
        } else {
            // Overlap by CARRY so a key across the head window's end is not lost.
            self.scan(&chunk[..HEAD_WINDOW + CARRY]);
            self.scan(&chunk[chunk.len() - TAIL_WINDOW..]);
        }
        let keep = chunk.len().min(CARRY);
        self.carry[..keep].copy_from_slice(&chunk[chunk.len() - keep..]);
        self.carry_len = keep;
    }

    /// Finds the known keys of `hay` in the order they appear (so the last one wins). A short
    /// haystack (a token event) is read by its underscores, one `memchr` pass: every suffix
    /// starts with one and an event holds only a few (`finish_reason`, `system_fingerprint`).
    /// A longer one (a burst of events, a whole JSON body) holds many, and is searched with
    /// one prebuilt substring searcher per suffix instead, their hits merged in order.
    fn scan(&mut self, hay: &[u8]) {
        if hay.len() <= UNDERSCORE_SCAN_MAX {
            for at in memchr::memchr_iter(b'_', hay) {
                // The byte after the underscore tells the suffixes apart and rejects the rest.
                let suffix = match hay.get(at + 1) {
                    Some(b't') => TOKENS,
                    Some(b'c') => COUNT,
                    _ => continue,
                };
                if hay[at..].starts_with(suffix) {
                    self.take(hay, at, suffix);
                }
            }
            return;
        }
        let [tokens, count] = suffix_finders();
        let mut tokens = tokens.find_iter(hay).peekable();
        let mut count = count.find_iter(hay).peekable();
        loop {
            let next = match (tokens.peek(), count.peek()) {
                (Some(&t), Some(&c)) if c < t => count.next().map(|c| (c, COUNT)),
                (Some(_), _) => tokens.next().map(|t| (t, TOKENS)),
                (None, _) => count.next().map(|c| (c, COUNT)),
            };
            let Some((at, suffix)) = next else {
                return;
            };
            self.take(hay, at, suffix);
        }
    }

    /// Records the value of the key whose `suffix` starts at `at`, if it is a key we know.
    fn take(&mut self, hay: &[u8], at: usize, suffix: &[u8]) {
        let Some(side) = key_before(hay, at, suffix) else {
            return;
        };
        if let Some(n) = number_after(hay, at + suffix.len()) {
            match side {
                Side::Input => self.usage.input = Some(n),
                Side::Output => self.usage.output = Some(n),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Usage {
        let mut s = UsageScanner::new();
        for c in chunks {
            s.push(c);
        }
        s.usage()
    }

    #[test]
    fn openai_json_and_sse_usage() {
        let json = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        assert_eq!(
            scan_all(&[json]),
            Usage {
                input: Some(12),
                output: Some(34)
            }
        );
        let sse: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\": 5, \"completion_tokens\" : 7}}\n\ndata: [DONE]\n\n",
        ];
        assert_eq!(
            scan_all(sse),
            Usage {
                input: Some(5),
                output: Some(7)
            }
        );
    }

    #[test]
    fn ollama_ndjson_final_object() {
        let chunks: &[&[u8]] = &[
            b"{\"message\":{\"content\":\"a\"},\"done\":false}\n",
            b"{\"done\":true,\"total_duration\":1,\"prompt_eval_count\":26,\"eval_count\":290}\n",
        ];
        assert_eq!(
            scan_all(chunks),
            Usage {
                input: Some(26),
                output: Some(290)
            }
        );
    }

    #[test]
    fn anthropic_events_last_value_wins() {
        let chunks: &[&[u8]] = &[
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"hi\"}}\n\n",
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ];
        assert_eq!(
            scan_all(chunks),
            Usage {
                input: Some(25),
                output: Some(15)
            }
        );
    }

    #[test]
    fn keys_split_across_chunks_are_found() {
        let body = br#"{"usage":{"prompt_tokens":12,"completion_tokens":34}}"#;
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                scan_all(&[a, b]),
                Usage {
                    input: Some(12),
                    output: Some(34)
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn short_and_long_haystacks_find_the_same_keys_in_order() {
        // The same events, fed as one long chunk (substring searchers) and as one chunk per
        // event (underscore scan): the same usage, the last key of each side winning.
        let events: Vec<String> = (0..12)
            .map(|i| {
                format!(
                    "data: {{\"eval_count\":{},\"system_fingerprint\":\"fp_{i}\",\"usage\":\
                     {{\"prompt_tokens\":{i},\"completion_tokens\":{},\"finish_reason\":null}}}}\n\n",
                    i * 100,
                    i * 10
                )
            })
            .collect();
        let long = events.concat();
        assert!(long.len() > UNDERSCORE_SCAN_MAX && long.len() < HEAD_WINDOW);
        let per_event: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        assert!(per_event.iter().all(|e| e.len() <= UNDERSCORE_SCAN_MAX));
        // Each event's `eval_count` comes before its `completion_tokens`: the latter wins.
        let expected = Usage {
            input: Some(11),
            output: Some(110),
        };
        assert_eq!(scan_all(&[long.as_bytes()]), expected);
        assert_eq!(scan_all(&per_event), expected);
    }

    #[test]
    fn message_text_cannot_forge_usage() {
        let body = br#"{"choices":[{"message":{"content":"say \"prompt_tokens\": 99"}}]}"#;
        assert_eq!(scan_all(&[body]), Usage::default());
        // Unknown keys with the same suffix and non-numbers are ignored.
        let other = br#"{"max_tokens":5,"cached_tokens":3,"prompt_tokens":"x"}"#;
        assert_eq!(scan_all(&[other]), Usage::default());
    }

    #[test]
    fn large_chunks_are_searched_at_head_and_tail_only() {
        let mut big = Vec::new();
        big.extend_from_slice(br#"{"type":"message_start","usage":{"input_tokens":4}}"#);
        big.extend(std::iter::repeat_n(b' ', 100_000));
        big.extend_from_slice(br#"{"eval_count":9}"#);
        assert_eq!(
            scan_all(&[&big]),
            Usage {
                input: Some(4),
                output: Some(9)
            }
        );
        let mut hidden = vec![b' '; 50_000];
        hidden.extend_from_slice(br#"{"eval_count":9}"#);
        hidden.extend(std::iter::repeat_n(b' ', 50_000));
        assert_eq!(scan_all(&[&hidden]), Usage::default());
    }

    #[test]
    fn overlong_numbers_are_refused() {
        let body = br#"{"prompt_tokens":123456789012345678901234}"#;
        assert_eq!(scan_all(&[body]), Usage::default());
    }
}
