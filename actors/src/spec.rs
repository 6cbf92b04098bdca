//! The resolved, validated description of one backend as the actors use it. The daemon's config
//! layer builds these from YAML; nothing here parses text or touches the network.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::kind::BackendKind;

/// Everything a [`crate::backend::BackendActor`] needs to run one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    /// Unique key of the endpoint (two endpoints may share a URL).
    pub name: String,
    /// Base URL; request paths are appended to its path.
    pub url: Uri,
    /// The URL as configured, without userinfo, query or fragment (Olla's sanitised URL: the
    /// endpoint id is hashed from it and status pages show it).
    pub configured_url: String,
    pub kind: BackendKind,
    /// Higher is preferred; requests go to the highest routable tier first.
    pub priority: i64,
    /// Relative share inside a priority tier (default 1).
    pub weight: u32,
    /// Health path (relative to `url`) or absolute URL; `None` = the profile's default.
    pub health_check_url: Option<String>,
    /// Model-list path or absolute URL; `None` = the profile's default.
    pub model_url: Option<String>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub health: HealthSettings,
    pub breaker: BreakerSettings,
    pub limits: ConcurrencyLimits,
    pub timeouts: UpstreamTimeouts,
    /// Headers added to every upstream request and probe: the endpoint's `headers`, then its `auth`.
    pub outbound_headers: Vec<(HeaderName, HeaderValue)>,
    pub model_filter: ModelFilter,
    pub discovery: DiscoverySettings,
    /// Speak HTTP/2 with prior knowledge (h2c) to this backend.
    pub h2c: bool,
    /// `Some` for an endpoint with `auth`: it receives only its type's API paths plus these
    /// `allowed_paths` entries (prefixes or globs). `None`: any path is forwarded.
    pub path_allowlist: Option<Vec<String>>,
    /// How often the backend's actor asks which models are loaded (warm-first routing);
    /// `None` = never.
    pub loaded_check_interval: Option<Duration>,
}

/// Active health-check hysteresis and backoff.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSettings {
    /// Consecutive failed probes that take a healthy backend down (K).
    pub fall: u32,
    /// Consecutive good probes that bring a down backend back (M).
    pub rise: u32,
    /// Cap of the exponential probe backoff while down.
    pub max_backoff: Duration,
    /// A 2xx probe slower than this marks the backend busy (reduced share of traffic).
    pub busy_threshold: Duration,
    /// Wait used for a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Cap of every wait this backend asks for (`Retry-After` on probes and on live traffic):
    /// `proxy.max_retry_after`, overridable per endpoint. See [`crate::wait`].
    pub max_retry_after: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            fall: 2,
            rise: 2,
            max_backoff: Duration::from_secs(60),
            busy_threshold: Duration::from_secs(10),
            default_retry_after: Duration::from_secs(30),
            max_retry_after: crate::wait::DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

/// Passive circuit breaker fed by live traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub enabled: bool,
    /// Backend faults (connection errors, timeouts, 5xx) within `window` that open the breaker.
    pub failure_threshold: u32,
    pub window: Duration,
    /// How long the breaker stays open before admitting trial requests.
    pub open_for: Duration,
    /// Cap of `open_for` after repeated re-opening (it doubles each time).
    pub max_open_for: Duration,
    /// Trial requests admitted at once while half-open.
    pub half_open_max_requests: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            half_open_max_requests: 1,
        }
    }
}

/// Per-backend concurrency cap and wait queue. `max_concurrency == 0` means unlimited.
#[derive(Clone, Debug, PartialEq)]
pub struct ConcurrencyLimits {
    pub max_concurrency: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        Self {
            max_concurrency: 0,
            queue_size: 0,
            queue_timeout: Duration::from_secs(30),
        }
    }
}

/// The three separate upstream timeouts, plus an optional total cap (off by default).
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// Request sent to response headers received.
    pub first_byte: Duration,
    /// Longest gap between two body chunks.
    pub idle: Duration,
    /// Whole-request cap; `None` = none (long generations are never cut).
    pub total: Option<Duration>,
    /// How long an idle pooled connection is kept.
    pub pool_idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(300),
            idle: Duration::from_secs(600),
            total: None,
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// Include/exclude glob patterns (`*` and `?`) applied to discovered model names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl ModelFilter {
    /// Whether a model name passes: it matches an include pattern (or there are none) and no
    /// exclude pattern. Matching is case-insensitive.
    pub fn allows(&self, name: &str) -> bool {
        let included = self.include.is_empty() || self.include.iter().any(|p| glob_match(p, name));
        included && !self.exclude.iter().any(|p| glob_match(p, name))
    }
}

/// Case-insensitive glob match supporting `*` (any run) and `?` (one char).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    glob_match_chars(&p, &t)
}

/// Case-sensitive glob match: `*` matches any run of characters, `?` one; everything else
/// literally.
pub fn glob_match_exact(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_match_chars(&p, &t)
}

/// The matcher behind both: backtracks to the last `*` only, so it is linear in practice.
fn glob_match_chars(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Model discovery schedule for one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoverySettings {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    /// Models kept from one listing (`discovery.max_models_per_endpoint`); the rest is dropped
    /// with a warning shown in status.
    pub max_models: usize,
}

/// Default of [`DiscoverySettings::max_models`].
pub const DEFAULT_MAX_MODELS_PER_ENDPOINT: usize = 10_000;

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            max_models: DEFAULT_MAX_MODELS_PER_ENDPOINT,
        }
    }
}

impl BackendSpec {
    /// A spec with defaults for everything but name, URL and kind (tests, demo).
    pub fn new(name: impl Into<String>, url: Uri, kind: BackendKind) -> Self {
        Self {
            name: name.into(),
            configured_url: sanitized_url(url.to_string().trim_end_matches('/')),
            url,
            kind,
            priority: 100,
            weight: 1,
            health_check_url: None,
            model_url: None,
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(2),
            health: HealthSettings::default(),
            breaker: BreakerSettings::default(),
            limits: ConcurrencyLimits::default(),
            timeouts: UpstreamTimeouts::default(),
            outbound_headers: Vec::new(),
            model_filter: ModelFilter::default(),
            discovery: DiscoverySettings::default(),
            h2c: false,
            path_allowlist: None,
            loaded_check_interval: None,
        }
    }

    /// The URL for a request path: the base URL's path joined with `path_and_query`.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        join_uri(&self.url, path_and_query)
    }

    /// The path and query of `path_and_query` under this endpoint's base path, unchecked (a
    /// request line built from it checks its bytes). Borrowed when the base path is `/`.
    pub fn join_path<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        join_path(self.url.path(), path_and_query)
    }

    /// The health-check URL (absolute `health_check_url`, or the path joined to `url`).
    pub fn health_uri(&self, kind: BackendKind) -> Result<Uri, http::Error> {
        self.resolve(self.health_check_url.as_deref(), kind.profile().health_path)
    }

    /// The model-list URL (absolute `model_url`, or the path joined to `url`).
    pub fn models_uri(&self, kind: BackendKind) -> Result<Uri, http::Error> {
        self.resolve(self.model_url.as_deref(), kind.profile().models_path)
    }

    fn resolve(&self, configured: Option<&str>, default: &str) -> Result<Uri, http::Error> {
        match configured {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Ok(u.parse::<Uri>()?)
            }
            Some(p) => self.join(p),
            None => self.join(default),
        }
    }
}

/// Olla's sanitised URL: the URL as written, without userinfo, query or fragment.
pub fn sanitized_url(raw: &str) -> String {
    let mut s = raw.trim();
    if let Some(i) = s.find(['?', '#']) {
        s = &s[..i];
    }
    match s.find("://") {
        Some(scheme_end) => {
            let rest = &s[scheme_end + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{}{}", &s[..scheme_end + 3], &rest[at + 1..]),
                None => s.to_string(),
            }
        }
        None => s.to_string(),
    }
}

/// Joins a base URI's path with a path-and-query, avoiding a doubled slash.
pub fn join_uri(base: &Uri, path_and_query: &str) -> Result<Uri, http::Error> {
    let joined = join_path(base.path(), path_and_query).into_owned();
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(joined)?);
    Ok(Uri::from_parts(parts)?)
}

/// `path_and_query` under `base_path`, with one `/` between them.
fn join_path<'a>(base_path: &str, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
    let base_path = base_path.trim_end_matches('/');
    if base_path.is_empty() && path_and_query.starts_with('/') {
        return std::borrow::Cow::Borrowed(path_and_query);
    }
    let mut joined = String::with_capacity(base_path.len() + 1 + path_and_query.len());
    joined.push_str(base_path);
    if !path_and_query.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(path_and_query);
    std::borrow::Cow::Owned(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob_match("llama*", "Llama3.1:8b"));
        assert!(glob_match("*embed*", "nomic-embed-text"));
        assert!(glob_match("qwen?", "qwen3"));
        assert!(!glob_match("qwen?", "qwen35"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
    }

    #[test]
    fn filter_include_then_exclude() {
        let f = ModelFilter {
            include: vec!["llama*".into()],
            exclude: vec!["*70b*".into()],
        };
        assert!(f.allows("llama3:8b"));
        assert!(!f.allows("llama3:70b"));
        assert!(!f.allows("qwen"));
        assert!(ModelFilter::default().allows("anything"));
    }

    #[test]
    fn joins_paths() {
        let base: Uri = "http://h:1/".parse().unwrap();
        assert_eq!(
            join_uri(&base, "/v1/models").unwrap(),
            "http://h:1/v1/models"
        );
        let base: Uri = "https://h/api/".parse().unwrap();
        assert_eq!(
            join_uri(&base, "/v1/x?a=1").unwrap(),
            "https://h/api/v1/x?a=1"
        );
        let spec = BackendSpec::new("a", "http://h:1".parse().unwrap(), BackendKind::Ollama);
        assert_eq!(spec.health_uri(BackendKind::Ollama).unwrap(), "http://h:1/");
        let mut spec = spec;
        spec.health_check_url = Some("http://other:2/health".into());
        assert_eq!(
            spec.health_uri(BackendKind::Ollama).unwrap(),
            "http://other:2/health"
        );
    }
}
