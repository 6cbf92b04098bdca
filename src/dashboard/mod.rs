//! The web dashboard: static assets embedded in the binary ([`assets`]), served read-only at
//! `/internal/ui/` on the proxy port behind Olla's access policy (TCP peer inside
//! `dashboard.access_policy.allowed_cidrs`, `Host` an IP literal or in `allowed_hosts`), and with
//! the admin actions at `/admin/ui/` on the admin listener (the admin token guards the API it
//! calls, not the static files). Every answer carries Olla's security headers and CSP; assets
//! carry a strong ETag and answer `If-None-Match` with 304. The pure parts (settings, gate,
//! path mapping) are unit-tested here; the page's data comes from the status routes.

pub mod assets;

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use ipnet::IpNet;

use crate::config::schema::DashboardConfig;
use crate::http_util::{empty, full, Body};

/// Where the read-only dashboard lives on the proxy port.
pub const UI_PATH: &str = "/internal/ui";
/// Where the dashboard with admin actions lives on the admin listener.
pub const ADMIN_UI_PATH: &str = "/admin/ui";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Longest `Host` value echoed in a denial.
const MAX_ECHOED_HOST: usize = 256;

/// `dashboard.*`, resolved.
#[derive(Clone, Debug)]
pub struct DashboardSettings {
    pub enabled: bool,
    pub allowed_cidrs: Vec<IpNet>,
    /// Lowercased host names (IP literals always pass).
    pub allowed_hosts: Vec<String>,
}

impl Default for DashboardSettings {
    /// Olla's defaults: enabled, loopback peers, `localhost`.
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_cidrs: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            allowed_hosts: vec!["localhost".into()],
        }
    }
}

/// Resolves `dashboard.*`: with the dashboard enabled, an empty or invalid CIDR list is an
/// error (as in Olla); every problem is reported with its key.
pub fn resolve(cfg: &DashboardConfig) -> Result<DashboardSettings, Vec<String>> {
    let mut errors = Vec::new();
    let mut cidrs = Vec::new();
    for c in &cfg.access_policy.allowed_cidrs {
        let c = c.trim();
        match c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => cidrs.push(n),
            Err(_) => errors.push(format!(
                "dashboard.access_policy.allowed_cidrs: {c:?} is not a CIDR (e.g. 127.0.0.0/8)"
            )),
        }
    }
    if cfg.enabled && cfg.access_policy.allowed_cidrs.is_empty() {
        errors.push(
            "dashboard.access_policy.allowed_cidrs: must list at least one CIDR while the dashboard is enabled (e.g. [\"127.0.0.0/8\", \"::1/128\"])"
                .to_string(),
        );
    }
    let mut hosts = Vec::new();
    for h in &cfg.access_policy.allowed_hosts {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/') {
            errors.push(format!(
                "dashboard.access_policy.allowed_hosts: {h:?} is not a host name"
            ));
        } else {
            hosts.push(h);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(DashboardSettings {
        enabled: cfg.enabled,
        allowed_cidrs: cidrs,
        allowed_hosts: hosts,
    })
}

/// How long one reading of the supervision tree is served to every caller.
const SUPERVISION_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// `/internal/status/supervision` asks the tree's actors for their state (mailbox round
/// trips): at most one reading is in flight and each is reused for a second, so a client
/// polling in a loop costs the actors nothing more.
#[derive(Default)]
pub struct SupervisionCache {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, serde_json::Value)>>,
}

impl SupervisionCache {
    /// The cached tree, or a fresh reading from `read` when the cached one is a second old.
    pub async fn get<F, Fut>(&self, read: F) -> serde_json::Value
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = serde_json::Value>,
    {
        let mut last = self.last.lock().await;
        let now = tokio::time::Instant::now();
        if let Some((at, v)) = last.as_ref() {
            if now.duration_since(*at) < SUPERVISION_FRESH {
                return v.clone();
            }
        }
        let v = read().await;
        *last = Some((now, v.clone()));
        v
    }
}

/// Why the access policy turned a request away.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    Ip,
    Host,
}

/// `Host` with its port and IPv6 brackets stripped, lowercased.
fn bare_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if raw.matches(':').count() == 1 {
        raw.split(':').next().unwrap_or("")
    } else {
        raw
    };
    host.to_ascii_lowercase()
}

/// Olla's gate: the TCP peer inside a CIDR (forwarding headers are never consulted), then the
/// `Host` an IP literal or a listed name.
pub fn check_access(
    settings: &DashboardSettings,
    peer: IpAddr,
    raw_host: &str,
) -> Result<(), Denied> {
    let peer = peer.to_canonical();
    if !settings.allowed_cidrs.iter().any(|n| n.contains(&peer)) {
        return Err(Denied::Ip);
    }
    let host = bare_host(raw_host);
    if host.parse::<IpAddr>().is_ok() || settings.allowed_hosts.contains(&host) {
        Ok(())
    } else {
        Err(Denied::Host)
    }
}

/// Olla's denial text (with a trailing newline).
pub fn denial_text(why: &Denied, peer: IpAddr, raw_host: &str) -> String {
    let reason = match why {
        Denied::Ip => "ip not in allowed range",
        Denied::Host => "host not accepted",
    };
    let host: String = raw_host.chars().take(MAX_ECHOED_HOST).collect();
    format!(
        "403 forbidden: {reason} (ip={}, host={host}). Adjust dashboard.access_policy.allowed_hosts (or allowed_cidrs) in your config.\n",
        peer.to_canonical()
    )
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(text.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The `Host` a request names: the header, else (HTTP/2) the URI authority.
fn raw_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default()
}

fn if_none_match(header: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(v) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    // If-None-Match compares weakly (RFC 9110 §13.1.2).
    v.len() <= 1024
        && v.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// Serves the dashboard at `base` (`/internal/ui` or `/admin/ui`); `gate` applies the access
/// policy (the proxy port). Any `path` under `base` may come here.
pub fn serve<B>(
    settings: &DashboardSettings,
    req: &Request<B>,
    peer: SocketAddr,
    base: &str,
    gate: bool,
) -> Response<Body> {
    let mut resp = answer(settings, req, peer, base, gate);
    security_headers(resp.headers_mut());
    resp
}

fn answer<B>(
    settings: &DashboardSettings,
    req: &Request<B>,
    peer: SocketAddr,
    base: &str,
    gate: bool,
) -> Response<Body> {
    if gate {
        let host = raw_host(req);
        if let Err(why) = check_access(settings, peer.ip(), &host) {
            return plain(StatusCode::FORBIDDEN, denial_text(&why, peer.ip(), &host));
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(base) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if rest.is_empty() {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        let mut to = format!("{base}/");
        if let Some(q) = req.uri().query() {
            to.push('?');
            to.push_str(q);
        }
        if let Ok(v) = HeaderValue::try_from(to) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let Some(asset) = assets::lookup(rest) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if asset.bytes.is_empty() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "dashboard not built; this binary has no dashboard assets\n",
        );
    }
    let etag = asset.etag();
    let mut r = if if_none_match(req.headers().get(header::IF_NONE_MATCH), etag) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(asset.bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::try_from(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control()),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::AccessPolicy;

    fn settings() -> DashboardSettings {
        DashboardSettings::default()
    }

    #[test]
    fn defaults_are_ollas() {
        let s = settings();
        let shown: Vec<String> = s.allowed_cidrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(s.allowed_hosts, ["localhost"]);
        let from_config = resolve(&DashboardConfig::default()).unwrap();
        assert_eq!(from_config.allowed_cidrs, s.allowed_cidrs);
        assert_eq!(from_config.allowed_hosts, s.allowed_hosts);
    }

    #[test]
    fn bad_or_empty_cidrs_are_errors_only_when_they_matter() {
        let cfg = |enabled, cidrs: &[&str]| DashboardConfig {
            enabled,
            access_policy: AccessPolicy {
                allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
                allowed_hosts: vec!["Example.COM".into()],
            },
            ..DashboardConfig::default()
        };
        assert!(resolve(&cfg(true, &[])).unwrap_err()[0].contains("at least one"));
        assert!(resolve(&cfg(false, &[])).is_ok());
        let e = resolve(&cfg(true, &["10.0.0.0/8", "nope"])).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("\"nope\""), "{e:?}");
        let ok = resolve(&cfg(true, &["10.1.2.3", "fd00::/8"])).unwrap();
        assert_eq!(ok.allowed_cidrs.len(), 2);
        assert_eq!(ok.allowed_hosts, ["example.com"]);
    }

    #[test]
    fn the_gate_checks_the_peer_then_the_host() {
        let s = settings();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(check_access(&s, lo, "localhost:40114"), Ok(()));
        assert_eq!(check_access(&s, lo, "LOCALHOST"), Ok(()));
        assert_eq!(check_access(&s, lo, "127.0.0.1:1"), Ok(()));
        assert_eq!(check_access(&s, lo, "[::1]:8080"), Ok(()));
        assert_eq!(check_access(&s, lo, "10.9.9.9"), Ok(()), "IP literals pass");
        assert_eq!(check_access(&s, lo, "evil.example"), Err(Denied::Host));
        assert_eq!(check_access(&s, lo, ""), Err(Denied::Host));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(check_access(&s, mapped, "localhost"), Ok(()));
        let outside: IpAddr = "192.168.1.5".parse().unwrap();
        assert_eq!(check_access(&s, outside, "localhost"), Err(Denied::Ip));
    }

    #[test]
    fn denial_text_is_ollas_and_bounded() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            denial_text(&Denied::Ip, ip, "localhost:1"),
            "403 forbidden: ip not in allowed range (ip=10.0.0.1, host=localhost:1). Adjust dashboard.access_policy.allowed_hosts (or allowed_cidrs) in your config.\n"
        );
        let long = "h".repeat(10_000);
        assert!(denial_text(&Denied::Host, ip, &long).len() < 500);
    }

    #[tokio::test(start_paused = true)]
    async fn supervision_readings_are_reused_for_a_second() {
        let cache = SupervisionCache::default();
        let reads = std::sync::atomic::AtomicU32::new(0);
        let read = || async {
            let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            serde_json::json!({ "n": n })
        };
        assert_eq!(cache.get(read).await["n"], 0);
        assert_eq!(cache.get(read).await["n"], 0);
        tokio::time::advance(std::time::Duration::from_millis(999)).await;
        assert_eq!(cache.get(read).await["n"], 0);
        tokio::time::advance(std::time::Duration::from_millis(2)).await;
        assert_eq!(cache.get(read).await["n"], 1);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn strong_etags_match_exactly() {
        assert!(if_none_match(
            Some(&HeaderValue::from_static("\"a\", \"b\"")),
            "\"b\""
        ));
        assert!(if_none_match(
            Some(&HeaderValue::from_static("W/\"b\"")),
            "\"b\""
        ));
        assert!(!if_none_match(
            Some(&HeaderValue::from_static("\"c\"")),
            "\"b\""
        ));
        assert!(if_none_match(Some(&HeaderValue::from_static("*")), "\"b\""));
        assert!(!if_none_match(None, "\"b\""));
    }
}
