//! `olla healthcheck`: one bounded `GET /internal/health` against a running daemon, for
//! container `HEALTHCHECK`s and scripts where curl may be absent. The target comes from
//! `--url`, else from the config's `server.host`/`server.port` (a wildcard host means
//! loopback). Exit 0 only on a 200.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head read.
const MAX_HEAD: usize = 8 * 1024;

/// The health URL for a daemon configured to listen on `host:port`.
pub fn url_for(host: &str, port: u16) -> String {
    let host = host.trim();
    let host = match host {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{port}/internal/health")
}

/// Splits `http://host:port/path` into (`host:port`, `path`).
fn target(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs are supported"));
    }
    let auth = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
    let port = auth.port_u16().unwrap_or(80);
    let host = auth.host();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((format!("{host}:{port}"), path))
}

/// The status code of an HTTP/1.x response head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// GETs `url` within `timeout`; `Ok` only for a 200.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    let (addr, path) = target(url)?;
    let run = async {
        let mut s = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while head.len() < MAX_HEAD && !head.windows(2).any(|w| w == b"\r\n") {
            let n = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read from {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        match status_of(&head) {
            Some(200) => Ok(()),
            Some(code) => Err(format!("{url} answered {code}")),
            None => Err(format!("{url} did not answer HTTP")),
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("{url} did not answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_mean_loopback() {
        assert_eq!(url_for("0.0.0.0", 1), "http://127.0.0.1:1/internal/health");
        assert_eq!(url_for("::", 2), "http://127.0.0.1:2/internal/health");
        assert_eq!(
            url_for("localhost", 3),
            "http://localhost:3/internal/health"
        );
        assert_eq!(url_for("::1", 4), "http://[::1]:4/internal/health");
    }

    #[test]
    fn targets_and_status_lines() {
        assert_eq!(
            target("http://127.0.0.1:9/internal/health").unwrap(),
            ("127.0.0.1:9".into(), "/internal/health".into())
        );
        assert!(target("https://x/").is_err());
        assert!(target("not a url").is_err());
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"SSH-2.0\r\n"), None);
        assert_eq!(status_of(b""), None);
    }

    #[tokio::test]
    async fn a_closed_port_fails_quickly() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}/internal/health");
        assert!(check(&url, Duration::from_secs(2)).await.is_err());
    }
}
