//! Which HTTP version a connection speaks, decided before it is served: from ALPN on TLS, from
//! the first bytes (peeked, left in the socket) on plain TCP (h2c by prior knowledge).
//!
//! Deciding here lets each connection go straight to its version's server (HTTP/1.x:
//! [`super::h1`]; HTTP/2: hyper's) with nothing to hand back: an auto-detecting server reads the
//! first bytes itself and must replay them through a rewind buffer in front of every read
//! (hyper-util's did, and it doubled each HTTP/1.1 connection's read buffer for good).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Enough of the preface to tell it from any HTTP/1.1 request line: `PRI` is reserved as a
/// method precisely so that no HTTP/1.1 request starts this way.
const PREFACE_DECISIVE: usize = 4;

/// How long to wait before peeking again when the bytes so far (fewer than
/// [`PREFACE_DECISIVE`]) could still start either version. Clients send a request line or the
/// preface in one segment, so this is the rare split-write case.
const UNDECIDED_RETRY: Duration = Duration::from_millis(2);

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// The version the first bytes of a connection announce; `None` while they could still start
/// either one. Anything not the preface is HTTP/1.1 (its server answers a malformed request).
pub fn from_first_bytes(first: &[u8]) -> Option<Version> {
    let n = first.len().min(PREFACE_DECISIVE);
    if first[..n] != PREFACE[..n] {
        Some(Version::Http1)
    } else if n == PREFACE_DECISIVE {
        Some(Version::Http2)
    } else {
        None
    }
}

/// The version ALPN negotiated on a TLS connection. Without `h2` it is HTTP/1.1: HTTP/2 over
/// TLS is negotiated with ALPN, never by prior knowledge (RFC 9113 §3.3).
pub fn from_alpn(protocol: Option<&[u8]>) -> Version {
    match protocol {
        Some(b"h2") => Version::Http2,
        _ => Version::Http1,
    }
}

/// Peeks at a plain TCP connection's first bytes (they stay in the socket for the server) until
/// they tell its version. `None`: the client closed, failed, or sent nothing decisive before
/// `deadline` (the connection's first-head deadline); the connection is then closed.
pub async fn plain(stream: &TcpStream, deadline: Option<Instant>) -> Option<Version> {
    let decide = async {
        let mut first = [0u8; PREFACE_DECISIVE];
        loop {
            let n = stream.peek(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(v) = from_first_bytes(&first[..n]) {
                return Some(v);
            }
            tokio::time::sleep(UNDECIDED_RETRY).await;
        }
    };
    match deadline {
        Some(at) => tokio::time::timeout_at(at, decide).await.ok().flatten(),
        None => decide.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http1_from_their_first_differing_byte() {
        assert_eq!(
            from_first_bytes(b"GET / HTTP/1.1\r\n"),
            Some(Version::Http1)
        );
        assert_eq!(from_first_bytes(b"POST /v1/chat"), Some(Version::Http1));
        assert_eq!(from_first_bytes(b"G"), Some(Version::Http1));
        // `P` could be POST, PUT, PATCH or the preface: wait for the next byte.
        assert_eq!(from_first_bytes(b"P"), None);
        assert_eq!(from_first_bytes(b"PU"), Some(Version::Http1));
        assert_eq!(from_first_bytes(b"PRO"), Some(Version::Http1));
        assert_eq!(from_first_bytes(b"PRI"), None);
        assert_eq!(from_first_bytes(b"PRIX"), Some(Version::Http1));
    }

    #[test]
    fn the_preface_is_http2_once_decisive() {
        assert_eq!(from_first_bytes(PREFACE), Some(Version::Http2));
        assert_eq!(from_first_bytes(b"PRI "), Some(Version::Http2));
    }

    #[test]
    fn alpn_picks_the_version_and_without_h2_it_is_http1() {
        assert_eq!(from_alpn(Some(b"h2")), Version::Http2);
        assert_eq!(from_alpn(Some(b"http/1.1")), Version::Http1);
        assert_eq!(from_alpn(None), Version::Http1);
    }

    #[tokio::test]
    async fn peeking_leaves_the_bytes_for_the_server_and_honours_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();

        // Split write: "P" alone is undecided; the rest decides it.
        client.write_all(b"P").await.unwrap();
        let sniffing = tokio::spawn(async move {
            let v = plain(&server, None).await;
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            (v, got)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"OST ").await.unwrap();
        let (v, got) = sniffing.await.unwrap();
        assert_eq!(v, Some(Version::Http1));
        assert_eq!(&got, b"POST ", "peeked bytes stay in the socket");

        // A client that sends nothing is given up on at the deadline.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let at = Instant::now() + Duration::from_millis(50);
        assert_eq!(plain(&server, Some(at)).await, None);
    }
}
