//! The gate: one stage at the top of [`crate::api::handle`], before routing, in this order —
//! CORS preflight → client identity (the socket peer; forwarded headers only from a trusted
//! proxy) → `/internal/*` access → API key → rate limits (global, per IP, per key) → size
//! limits. A rejection is the proxy's JSON error (Anthropic-shaped on `/olla/anthropic`) with
//! the request id; every one is counted in [`SecurityStats`] (`security` in
//! `/internal/status`, `olla_security_*` metrics). With nothing configured the stage costs a
//! few branches and the header-size estimate.
//!
//! Submodules: [`cors`], [`keys`] (the key ring and per-key budgets), [`ratelimit`] (Olla's
//! buckets), [`settings`] (config), [`time`] (RFC 3339).

pub mod cors;
pub mod keys;
pub mod prehashed;
pub mod ratelimit;
pub mod settings;
pub mod time;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use ipnet::IpNet;
use serde_json::{json, Value};

use crate::error::ProxyError;
use crate::http_util::Body;
use crate::own_headers::RateFields;
use crate::proxy::headers::ClientInfo;
use crate::server::tls::ReloadableTls;
use cors::CorsPolicy;
use keys::{ApiKey, KeyLimitKind, KeyRing};
use ratelimit::{Blocked, GlobalBucket, IpTable, IpVerdict, Rate};
pub use settings::GateSettings;

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Request extension: the connection is TLS (set by the listener).
#[derive(Clone, Copy, Debug)]
pub struct ViaTls;

/// Process-wide counters of refusals (lifetime totals) and the recently blocked IPs.
#[derive(Default)]
pub struct SecurityStats {
    pub rate_limits: AtomicU64,
    pub size_limits: AtomicU64,
    pub auth_failures: AtomicU64,
    pub model_denied: AtomicU64,
    pub key_rate_limits: AtomicU64,
    pub key_token_limits: AtomicU64,
    pub internal_denied: AtomicU64,
    pub blocked: Blocked,
}

impl SecurityStats {
    fn load(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Olla's `elevated`: more than 100 violations or more than 10 blocked IPs.
    fn elevated(&self, blocked: usize) -> bool {
        self.load(&self.rate_limits) + self.load(&self.size_limits) > 100 || blocked > 10
    }

    /// The `security` section of `/internal/status` (Olla's shape, plus our counters).
    pub fn status_json(&self) -> Value {
        let blocked = self.blocked.count(Instant::now());
        json!({
            "status": if self.elevated(blocked) { "elevated" } else { "normal" },
            "blocked_ips": blocked,
            "violations": {
                "rate_limits": self.load(&self.rate_limits),
                "size_limits": self.load(&self.size_limits),
            },
            "auth_failures": self.load(&self.auth_failures),
            "model_denied": self.load(&self.model_denied),
            "key_rate_limits": self.load(&self.key_rate_limits),
            "key_token_limits": self.load(&self.key_token_limits),
            "internal_denied": self.load(&self.internal_denied),
        })
    }

    /// The `olla_security_*` metrics, Prometheus text 0.0.4.
    pub fn render_prometheus(&self, out: &mut String) {
        let blocked = self.blocked.count(Instant::now());
        let (rate, size) = (self.load(&self.rate_limits), self.load(&self.size_limits));
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        metric(
            "olla_security_blocked_ips",
            "gauge",
            "Distinct client IPs rate-limited in the last hour",
            blocked as u64,
        );
        metric(
            "olla_security_status",
            "gauge",
            "Security status: 1 normal, 0 elevated",
            u64::from(!self.elevated(blocked)),
        );
        metric(
            "olla_security_violations_total",
            "counter",
            "Rate and size limit violations",
            rate + size,
        );
        metric(
            "olla_security_rate_limit_violations_total",
            "counter",
            "Requests refused by the global or per-IP rate limit",
            rate,
        );
        metric(
            "olla_security_size_limit_violations_total",
            "counter",
            "Requests refused for header or body size",
            size,
        );
        metric(
            "olla_security_auth_failures_total",
            "counter",
            "Requests refused for a missing, invalid or expired API key",
            self.load(&self.auth_failures),
        );
        metric(
            "olla_security_model_denied_total",
            "counter",
            "Requests refused because the API key may not use the model",
            self.load(&self.model_denied),
        );
        metric(
            "olla_security_key_rate_limit_violations_total",
            "counter",
            "Requests refused by an API key's requests/min limit",
            self.load(&self.key_rate_limits),
        );
        metric(
            "olla_security_key_token_limit_violations_total",
            "counter",
            "Requests refused by an API key's tokens/min budget",
            self.load(&self.key_token_limits),
        );
        metric(
            "olla_security_internal_denied_total",
            "counter",
            "/internal requests refused by server.internal_access",
            self.load(&self.internal_denied),
        );
    }
}

/// Olla's global and per-IP limits.
struct Limiter {
    base: Instant,
    /// Unix nanoseconds at `base` (the wall clock is read once; `X-RateLimit-Reset` is derived).
    base_unix_ns: u64,
    global: Option<GlobalBucket>,
    per_ip: Option<IpTable>,
    per_ip_limit: u64,
    /// `X-RateLimit-Limit`: the per-IP limit, made once.
    limit_value: HeaderValue,
}

impl Limiter {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The rate-limit headers of a request checked at `now` (ns since `base`): Olla's reset is
    /// the current Unix second plus 60.
    fn headers(&self, now: u64, remaining: u64) -> RateFields {
        RateFields {
            limit: self.limit_value.clone(),
            remaining,
            reset: self.base_unix_ns.saturating_add(now) / 1_000_000_000 + 60,
        }
    }
}

/// What a request passed the gate with; [`Pass::finish`] finishes the response with it.
#[derive(Default)]
pub struct Pass {
    rate: Option<RateFields>,
    cors: Option<Arc<CorsPolicy>>,
    allow_origin: Option<HeaderValue>,
    /// The key that admitted the request.
    pub key: Option<Arc<ApiKey>>,
}

impl Pass {
    /// Adds the CORS headers; returns the rate-limit fields, written with olla's own
    /// ([`crate::own_headers`]).
    pub fn finish(self, resp: &mut Response<Body>) -> Option<RateFields> {
        if let Some(c) = &self.cors {
            c.decorate(self.allow_origin.as_ref(), resp.headers_mut());
        }
        self.rate
    }
}

/// The gate's verdict on a request.
pub enum Admission {
    /// Go on routing; finish the response with the pass.
    Pass(Pass),
    /// A CORS preflight, answered here.
    Preflight(Response<Body>),
    /// Refused: render the error, then finish it with the pass.
    Reject(ProxyError, Pass),
}

/// Olla's estimate of a request head's size.
pub fn header_size<B>(req: &Request<B>) -> u64 {
    let uri_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    let mut n = req.method().as_str().len() + uri_len + 12;
    for (k, v) in req.headers() {
        n += k.as_str().len() + v.len() + 4;
    }
    n as u64
}

/// Olla rate-limits only the proxy catch-alls: not `/internal/*`, `/version`, `/olla/models*`,
/// model-list routes or `/olla/anthropic/*`.
pub fn rate_limited_route(method: &Method, path: &str) -> bool {
    let Some(rest) = path.as_bytes().strip_prefix(b"/olla/") else {
        return false;
    };
    // Bytes, not `split_once`: this runs on every request.
    let (prefix, tail) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    if matches!(prefix, b"models" | b"anthropic" | b"") {
        return false;
    }
    if method != Method::GET && method != Method::HEAD {
        return true;
    }
    !matches!(
        tail,
        b"v1/models" | b"v1/models/" | b"api/tags" | b"api/v0/models" | b"api/v1/models"
    )
}

/// The gate's state, one per daemon.
pub struct Gate {
    cors: Option<Arc<CorsPolicy>>,
    limiter: Option<Arc<Limiter>>,
    /// Inbound API keys (read lock-free per request; admin and reload write).
    pub keys: Arc<KeyRing>,
    internal_cidrs: Vec<IpNet>,
    internal_require_key: bool,
    trusted: Vec<IpNet>,
    max_header_size: u64,
    max_body_size: u64,
    pub stats: Arc<SecurityStats>,
    /// The proxy listener's certificates (`server.tls`).
    pub tls: Option<Arc<ReloadableTls>>,
    /// The admin listener's certificates (`admin.tls`).
    pub admin_tls: Option<Arc<ReloadableTls>>,
}

impl Gate {
    /// Builds the gate; with a per-IP limit and a tokio runtime present, starts the sweeper of
    /// idle IP entries (it stops when the gate is dropped).
    pub fn new(
        s: &GateSettings,
        trusted: Vec<IpNet>,
        max_header_size: u64,
        max_body_size: u64,
    ) -> Self {
        let global =
            Rate::per_minute(s.global_requests_per_minute, s.burst_size).map(GlobalBucket::new);
        let per_ip = Rate::per_minute(s.per_ip_requests_per_minute, s.burst_size).map(|r| {
            IpTable::new(
                r,
                s.per_ip_requests_per_minute as u64,
                ratelimit::MAX_TRACKED_IPS,
            )
        });
        let limiter = (global.is_some() || per_ip.is_some()).then(|| {
            let per_ip_limit = s.per_ip_requests_per_minute.max(0) as u64;
            Arc::new(Limiter {
                base: Instant::now(),
                base_unix_ns: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                global,
                per_ip,
                per_ip_limit,
                limit_value: HeaderValue::from(per_ip_limit),
            })
        });
        if let (Some(l), Ok(rt)) = (&limiter, tokio::runtime::Handle::try_current()) {
            if l.per_ip.is_some() {
                rt.spawn(sweep(
                    Arc::downgrade(l),
                    s.cleanup_interval.max(Duration::from_secs(1)),
                ));
            }
        }
        if s.cors.is_some() || limiter.is_some() || s.keys.is_some() || s.tls.is_some() {
            tracing::info!(
                cors = s.cors.is_some(),
                global_rpm = s.global_requests_per_minute,
                per_ip_rpm = s.per_ip_requests_per_minute,
                api_keys = s.keys.as_ref().map(|k| k.len() as i64).unwrap_or(-1),
                tls = s.tls.is_some(),
                mtls = s.tls.as_ref().is_some_and(|t| t.verifies_clients()),
                "edge security"
            );
        }
        Self {
            cors: s.cors.clone(),
            limiter,
            keys: Arc::new(KeyRing::new(s.keys.as_deref())),
            internal_cidrs: s.internal_cidrs.clone(),
            internal_require_key: s.internal_require_key,
            trusted,
            max_header_size,
            max_body_size,
            stats: Arc::new(SecurityStats::default()),
            tls: s.tls.clone(),
            admin_tls: s.admin_tls.clone(),
        }
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the stage on a request.
    pub fn admit<B: http_body::Body>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        path: &str,
    ) -> Admission {
        let mut pass = Pass::default();
        let h = req.headers();
        // 1. CORS preflight.
        if let Some(c) = &self.cors {
            if let Some(resp) = c.preflight(req.method(), h) {
                return Admission::Preflight(resp);
            }
            pass.allow_origin = c.allowed_origin(req.method(), h);
            pass.cors = Some(c.clone());
        }
        // 2. Client identity, only when something needs it.
        let internal = path.starts_with("/internal/") || path == "/internal";
        let limited = self.limiter.is_some() && rate_limited_route(req.method(), path);
        let client_ip = if limited || (internal && !self.internal_cidrs.is_empty()) {
            let tls = req.extensions().get::<ViaTls>().is_some();
            Some(ClientInfo::new(peer.ip(), tls, &self.trusted).client_ip(h))
        } else {
            None
        };
        // 3. /internal access, then the API key.
        let need_key = if internal {
            if let Some(ip) = client_ip.filter(|_| !self.internal_cidrs.is_empty()) {
                if !self.internal_cidrs.iter().any(|n| n.contains(&ip)) {
                    self.count(&self.stats.internal_denied);
                    return Admission::Reject(
                        ProxyError::Forbidden(format!(
                            "{path} is not served to {ip} (server.internal_access.allowed_cidrs)"
                        )),
                        pass,
                    );
                }
            }
            self.internal_require_key && path != "/internal/health"
        } else {
            true
        };
        if need_key {
            match self.keys.authenticate(h) {
                Ok(key) => pass.key = key,
                Err(refusal) => {
                    self.count(&self.stats.auth_failures);
                    return Admission::Reject(ProxyError::Unauthorized(refusal.message()), pass);
                }
            }
        }
        // 4. Rate limits: Olla's global and per-IP buckets, then the key's budgets.
        if let (true, Some(l), Some(ip)) = (limited, &self.limiter, client_ip) {
            if let Err(e) = self.rate_limit(l, ip, &mut pass) {
                return Admission::Reject(e, pass);
            }
        }
        if let Some(k) = pass.key.as_ref().filter(|k| k.limits.any()) {
            if let Err((kind, wait)) = keys::admit(k, Instant::now()) {
                let (counter, what) = match kind {
                    KeyLimitKind::Requests => (&self.stats.key_rate_limits, "requests per minute"),
                    KeyLimitKind::Tokens => (&self.stats.key_token_limits, "tokens per minute"),
                };
                self.count(counter);
                let e = ProxyError::RateLimited {
                    retry_after: wait.as_secs() + 1,
                    message: format!("API key {:?} is over its {what} limit", &*k.spec.name),
                };
                return Admission::Reject(e, pass);
            }
        }
        // 5. Size limits.
        // The body's declared length, as its framing read it (`Content-Length`).
        let body_len = req.body().size_hint().exact();
        let too_big = |n: u64| n > self.max_body_size;
        if header_size(req) > self.max_header_size {
            self.count(&self.stats.size_limits);
            let e = if body_len.is_some_and(too_big) {
                ProxyError::BodyTooLarge(self.max_body_size)
            } else {
                ProxyError::HeadersTooLarge(self.max_header_size)
            };
            return Admission::Reject(e, pass);
        }
        if body_len.is_some_and(too_big) {
            self.count(&self.stats.size_limits);
            return Admission::Reject(ProxyError::BodyTooLarge(self.max_body_size), pass);
        }
        Admission::Pass(pass)
    }

    fn rate_limit(&self, l: &Limiter, ip: IpAddr, pass: &mut Pass) -> Result<(), ProxyError> {
        let now = l.now_ns();
        let limit = l.per_ip_limit;
        let refuse = |retry_after: u64, remaining: u64, pass: &mut Pass| {
            self.count(&self.stats.rate_limits);
            self.stats.blocked.record(ip, Instant::now());
            if limit > 0 {
                pass.rate = Some(l.headers(now, remaining));
            }
            ProxyError::RateLimited {
                retry_after,
                message: "Too Many Requests".into(),
            }
        };
        if let Some(g) = &l.global {
            if !g.take(now) {
                return Err(refuse(60, 0, pass));
            }
        }
        if let Some(t) = &l.per_ip {
            match t.check(ip, now) {
                IpVerdict::Allowed { remaining } => {
                    pass.rate = Some(l.headers(now, remaining));
                }
                IpVerdict::Refused {
                    retry_after,
                    remaining,
                } => {
                    return Err(refuse(retry_after, remaining, pass));
                }
            }
        }
        Ok(())
    }

    /// The key that admitted the request may use `model` (called once the body is inspected).
    pub fn check_model(
        &self,
        caller: Option<&ApiKey>,
        model: Option<&str>,
    ) -> Result<(), ProxyError> {
        let Some(key) = caller else {
            return Ok(());
        };
        if key.allows_model(model) {
            return Ok(());
        }
        self.count(&self.stats.model_denied);
        Err(ProxyError::Forbidden(match model {
            Some(m) => format!("API key {:?} may not use model {m:?}", &*key.spec.name),
            None => format!(
                "API key {:?} is limited to some models and the request names none",
                &*key.spec.name
            ),
        }))
    }

    /// Applies a reloaded config: keys replaced (unchanged keys keep their budgets) and
    /// certificates swapped. Other gate settings need a restart.
    pub fn reload(&self, s: &GateSettings) {
        self.keys.replace(s.keys.as_deref());
        if let (Some(cur), Some(new)) = (&self.tls, &s.tls) {
            cur.replace_with(new);
        }
        if let (Some(cur), Some(new)) = (&self.admin_tls, &s.admin_tls) {
            cur.replace_with(new);
        }
    }
}

async fn sweep(limiter: Weak<Limiter>, every: Duration) {
    let idle = ratelimit::IDLE_AFTER.as_nanos() as u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(l) = limiter.upgrade() else {
            return;
        };
        if let Some(t) = &l.per_ip {
            let dropped = t.sweep(l.now_ns(), idle);
            if dropped > 0 {
                tracing::debug!(dropped, left = t.len(), "idle rate-limit entries swept");
            }
        }
    }
}

impl crate::telemetry::MetricsSource for SecurityStats {
    fn render_prometheus(&self, out: &mut String) {
        SecurityStats::render_prometheus(self, out);
    }
}

/// Charges the tokens a finished response reported to the key that sent it (tokens/min).
impl crate::telemetry::FinishObserver for KeyRing {
    fn on_finish(&self, rec: &crate::telemetry::FinishRecord) {
        if let Some(key) = &rec.caller {
            key.charge_usage(rec.tokens_in, rec.tokens_out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proxy_catch_alls_are_rate_limited() {
        let get = Method::GET;
        for p in [
            "/olla/proxy/v1/chat/completions",
            "/olla/ollama/api/chat",
            "/olla/openai/v1/embeddings",
        ] {
            assert!(rate_limited_route(&Method::POST, p), "{p}");
        }
        for p in [
            "/internal/status",
            "/version",
            "/olla/models",
            "/olla/models/x",
            "/olla/anthropic/v1/messages",
            "/olla/proxy/v1/models",
            "/olla/ollama/api/tags",
            "/olla/lmstudio/api/v0/models",
        ] {
            assert!(!rate_limited_route(&get, p), "{p}");
        }
    }

    #[test]
    fn metrics_text_has_help_type_and_samples() {
        let s = SecurityStats::default();
        s.rate_limits.fetch_add(3, Ordering::Relaxed);
        s.size_limits.fetch_add(2, Ordering::Relaxed);
        let mut out = String::new();
        s.render_prometheus(&mut out);
        assert!(out.contains(
            "# TYPE olla_security_violations_total counter\nolla_security_violations_total 5\n"
        ));
        assert!(out.contains("olla_security_status 1\n"));
        assert_eq!(s.status_json()["violations"]["rate_limits"], 3);
        assert_eq!(s.status_json()["status"], "normal");
    }
}
