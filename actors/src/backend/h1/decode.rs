//! Pure HTTP/1.1 response framing, no I/O: how a response body is delimited (RFC 9112 §6.3)
//! and an incremental decoder for the chunked transfer coding that hands over all the data the
//! input holds in one call (so a burst of small chunks becomes one buffer).

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// The response's framing headers contradict each other or cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid response framing: {0}")]
pub struct FramingError(pub &'static str);

/// The items of a comma-separated header value (RFC 9110 §5.6.1: `Connection`,
/// `Transfer-Encoding`), trimmed, empty ones skipped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// ASCII decimal digits as a number: `None` when empty, when anything but a digit is in them,
/// or beyond `u64`.
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Decides the body framing of a response to a request (`head` = it was a HEAD request).
pub fn framing(head: bool, status: u16, headers: &HeaderMap) -> Result<Framing, FramingError> {
    if head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let mut last = None;
        for value in codings {
            value
                .to_str()
                .map_err(|_| FramingError("transfer-encoding is not text"))?;
            if let Some(coding) = list_items(value.as_bytes()).last() {
                last = Some(coding);
            }
        }
        // A final coding other than chunked leaves the body delimited by the close.
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let value = value
            .to_str()
            .map_err(|_| FramingError("content-length is not text"))?;
        // Every part counts, empty ones too ("5," is not a length).
        for part in value.split(',') {
            let part = part.trim().as_bytes();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(FramingError("content-length is not a number"));
            }
            let n = decimal(part).ok_or(FramingError("content-length is too large"))?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Removes `Content-Length` from a response head that also carries `Transfer-Encoding`: the
/// transfer coding decides the framing (RFC 9112 §6.3), so a length next to it is wrong and
/// must not reach the client, where it would truncate or stall the re-framed body. Both
/// upstream clients (this one and hyper's) call it on every response head.
pub fn drop_length_beside_coding(headers: &mut HeaderMap) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
}

/// A malformed chunked body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// Longest chunk extension accepted on one size line.
const MAX_EXTENSION: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size.
    Size {
        digits: u8,
    },
    /// Skipping a chunk extension (or whitespace) up to the CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Copying chunk data; `self.remaining` bytes left.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section; `at_line_start` is true right after a line ended.
    Trailers {
        at_line_start: bool,
    },
    /// Expecting the LF of the empty line that ends the body.
    EndLf,
    Done,
}

/// Incremental decoder of the chunked transfer coding.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Size being parsed, then data bytes left in the current chunk.
    remaining: u64,
    /// Extension or trailer bytes seen (bounded).
    skipped: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            remaining: 0,
            skipped: 0,
        }
    }

    /// The terminating chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as it can, appending chunk data to `out`. Returns `true`
    /// once the body is complete; bytes after the end stay in `input`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ChunkError> {
        // Walks the input by index and consumes what it read once at the end (framing bytes
        // are stepped one by one; chunk data is copied in one piece).
        let buf = &input[..];
        let mut pos = 0;
        let result = loop {
            if self.state == State::Done {
                break Ok(true);
            }
            if pos == buf.len() {
                break Ok(false);
            }
            if self.state == State::Data {
                let n = (self.remaining.min((buf.len() - pos) as u64)) as usize;
                out.extend_from_slice(&buf[pos..pos + n]);
                pos += n;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = buf[pos];
            pos += 1;
            match self.step(byte) {
                Ok(next) => self.state = next,
                Err(e) => break Err(e),
            }
        };
        input.advance(pos);
        result
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size { digits } => match byte {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let v = (byte as char).to_digit(16).unwrap_or(0) as u64;
                    self.remaining = self.remaining * 16 + v;
                    State::Size { digits: digits + 1 }
                }
                _ if digits == 0 => return Err(ChunkError("missing chunk size")),
                b';' | b' ' | b'\t' => {
                    self.skipped = 0;
                    State::Extension
                }
                b'\r' => State::SizeLf,
                b'\n' => self.after_size_line(),
                _ => return Err(ChunkError("invalid byte in chunk size")),
            },
            State::Extension => match byte {
                b'\r' => State::SizeLf,
                b'\n' => self.after_size_line(),
                _ => {
                    self.skipped += 1;
                    if self.skipped > MAX_EXTENSION {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    State::Extension
                }
            },
            State::SizeLf => match byte {
                b'\n' => self.after_size_line(),
                _ => return Err(ChunkError("expected LF after chunk size")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                b'\n' => State::Size { digits: 0 },
                _ => return Err(ChunkError("expected CRLF after chunk data")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { digits: 0 },
                _ => return Err(ChunkError("expected LF after chunk data")),
            },
            State::Trailers { at_line_start } => {
                self.skipped += 1;
                if self.skipped > MAX_TRAILERS {
                    return Err(ChunkError("trailers too long"));
                }
                match byte {
                    b'\r' if at_line_start => State::EndLf,
                    b'\n' if at_line_start => State::Done,
                    b'\n' => State::Trailers {
                        at_line_start: true,
                    },
                    b'\r' => State::Trailers {
                        at_line_start: false,
                    },
                    _ => State::Trailers {
                        at_line_start: false,
                    },
                }
            }
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(ChunkError("expected LF at the end of the body")),
            },
            State::Data | State::Done => self.state,
        })
    }

    fn after_size_line(&mut self) -> State {
        if self.remaining == 0 {
            self.skipped = 0;
            State::Trailers {
                at_line_start: true,
            }
        } else {
            State::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn list_items_are_trimmed_and_skip_empties_and_decimals_fit_u64() {
        let items: Vec<&[u8]> = list_items(b" keep-alive ,, Close,").collect();
        assert_eq!(items, [&b"keep-alive"[..], b"Close"]);
        assert_eq!(list_items(b" , ").count(), 0);
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"18446744073709551616", b"+1", b"1 ", b"1a"] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let none = HeaderMap::new();
        assert_eq!(
            framing(true, 200, &headers(&[("content-length", "5")])),
            Ok(Framing::Empty)
        );
        assert_eq!(framing(false, 204, &none), Ok(Framing::Empty));
        assert_eq!(framing(false, 304, &none), Ok(Framing::Empty));
        assert_eq!(framing(false, 200, &none), Ok(Framing::UntilClose));
        assert_eq!(
            framing(false, 200, &headers(&[("content-length", "42")])),
            Ok(Framing::Length(42))
        );
        assert_eq!(
            framing(false, 200, &headers(&[("content-length", "7, 7")])),
            Ok(Framing::Length(7))
        );
        assert!(framing(false, 200, &headers(&[("content-length", "7, 8")])).is_err());
        assert!(framing(false, 200, &headers(&[("content-length", "-1")])).is_err());
        assert!(framing(false, 200, &headers(&[("content-length", "+1")])).is_err());
        assert!(framing(
            false,
            200,
            &headers(&[("content-length", "99999999999999999999999")])
        )
        .is_err());
        // Transfer-Encoding wins over Content-Length.
        assert_eq!(
            framing(
                false,
                200,
                &headers(&[
                    ("transfer-encoding", "gzip, Chunked"),
                    ("content-length", "3")
                ])
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(false, 200, &headers(&[("transfer-encoding", "gzip")])),
            Ok(Framing::UntilClose)
        );
    }

    fn decode_all(parts: &[&[u8]]) -> (Result<bool, ChunkError>, Vec<u8>, Vec<u8>) {
        let mut d = ChunkedDecoder::new();
        let mut out = BytesMut::new();
        let mut input = BytesMut::new();
        let mut result = Ok(false);
        for p in parts {
            input.extend_from_slice(p);
            result = d.decode(&mut input, &mut out);
            if result.is_err() {
                break;
            }
        }
        (result, out.to_vec(), input.to_vec())
    }

    #[test]
    fn decodes_a_burst_of_chunks_into_one_buffer() {
        let (r, out, rest) = decode_all(&[b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT"]);
        assert_eq!(r, Ok(true));
        assert_eq!(out, b"hello world");
        assert_eq!(rest, b"NEXT", "bytes after the body stay in the input");
    }

    #[test]
    fn decodes_any_split_of_the_input() {
        let body: &[u8] =
            b"4;name=value\r\nWiki\r\n9\r\npedia in \r\n2\r\n\r\n\r\n0\r\nExpires: x\r\n\r\n";
        for cut in 0..body.len() {
            for cut2 in cut..body.len() {
                let (r, out, rest) = decode_all(&[&body[..cut], &body[cut..cut2], &body[cut2..]]);
                assert_eq!(r, Ok(true), "cuts at {cut},{cut2}");
                assert_eq!(out, b"Wikipedia in \r\n", "cuts at {cut},{cut2}");
                assert!(rest.is_empty());
            }
        }
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let (r, out, _) = decode_all(&[b"5\r\nhel"]);
        assert_eq!(r, Ok(false));
        assert_eq!(out, b"hel");
        let (r, _, _) = decode_all(&[b"0\r\n"]);
        assert_eq!(r, Ok(false), "the final CRLF is missing");
    }

    #[test]
    fn rejects_malformed_chunks() {
        assert!(decode_all(&[b"xyz\r\n"]).0.is_err());
        assert!(decode_all(&[b"\r\n"]).0.is_err());
        assert!(decode_all(&[b"3\r\nabcX\r\n"]).0.is_err());
        assert!(decode_all(&[b"11111111111111111\r\n"]).0.is_err());
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_EXTENSION + 1]].concat();
        assert!(decode_all(&[&long_ext]).0.is_err());
    }

    #[test]
    fn accepts_bare_lf_line_ends() {
        let (r, out, _) = decode_all(&[b"3\nabc\n0\n\n"]);
        assert_eq!(r, Ok(true));
        assert_eq!(out, b"abc");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in pieces cut at `cuts`; the result and the decoded data.
    fn decode_split(input: &[u8], cuts: &[usize]) -> (Result<bool, ChunkError>, Vec<u8>) {
        let mut decoder = ChunkedDecoder::new();
        let mut out = BytesMut::new();
        let mut pending = BytesMut::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        for p in points {
            pending.extend_from_slice(&input[at..p.max(at)]);
            at = p.max(at);
            match decoder.decode(&mut pending, &mut out) {
                Ok(true) => return (Ok(true), out.to_vec()),
                Ok(false) => {}
                Err(e) => return (Err(e), out.to_vec()),
            }
        }
        (Ok(decoder.is_done()), out.to_vec())
    }

    /// A valid chunked encoding of `chunks`, with optional extensions and trailers.
    fn encode(chunks: &[Vec<u8>], ext: bool, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:X}", c.len()).as_bytes());
            if ext {
                out.extend_from_slice(b";name=value");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"x-checksum: abc\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512),
                                       cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let _ = decode_split(&input, &cuts);
        }

        #[test]
        fn a_valid_body_split_anywhere_decodes_the_same(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            ext in any::<bool>(),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let encoded = encode(&chunks, ext, trailer);
            let whole = decode_split(&encoded, &[]);
            prop_assert_eq!(&whole.0, &Ok(true));
            prop_assert_eq!(&whole.1, &chunks.concat());
            prop_assert_eq!(decode_split(&encoded, &cuts), whole);
        }
    }
}
