//! Semantic validation and resolution: turns a parsed [`Config`] into the daemon's runtime
//! settings and the actors' [`BackendSpec`]s, collecting every problem (duplicate endpoint names,
//! bad URLs, unknown types, impossible values, unreadable secret files) with its path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use ipnet::IpNet;
use olla_actors::balance::{Strategy, STRATEGY_NAMES};
use olla_actors::kind::{BackendKind, ALL_KINDS};
use olla_actors::published::{Fallback, ModelRouting, RoutingPolicy};
use olla_actors::routing::loaded::WarmSettings;
use olla_actors::routing::prefix::CacheSettings;
use olla_actors::routing::sticky::{KeySource, StickySettings};
use olla_actors::spec::{
    sanitized_url, BackendSpec, BreakerSettings, ConcurrencyLimits, DiscoverySettings,
    HealthSettings, ModelFilter, UpstreamTimeouts,
};
use olla_actors::supervisor::SupervisionSettings;
use olla_actors::TreeConfig;

use super::admin::{resolve_admin, AdminSettings};
use super::load::nearest;
use super::schema::{
    AuthConfig, BreakerConfig, Config, EndpointConfig, HealthConfig, RateLimits, TimeoutsConfig,
};

/// Server-side settings the HTTP layer needs.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Serving threads; 0 = one per CPU core.
    pub threads: usize,
    /// Deadline for a connection's first request head, protocol detection included.
    pub read_header_timeout: Duration,
    /// Deadline for reading a request body (zero = none).
    pub read_timeout: Duration,
    /// A write to a client that makes no progress for this long ends the connection (zero =
    /// none).
    pub write_timeout: Duration,
    /// Keep-alive: the next request head must come within this (zero = none).
    pub idle_timeout: Duration,
    /// Client connections served at once (0 = no cap); beyond it a connection is closed at
    /// accept.
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub max_body_size: u64,
    pub max_header_size: u64,
    pub request_logging: bool,
    /// `telemetry.metrics.enabled`.
    pub metrics_enabled: bool,
    pub proxy_engine: String,
    pub proxy_profile: String,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` / `Forwarded` are believed
    /// (`rate_limits.trust_proxy_headers` and `trusted_proxy_cidrs`); empty = none.
    pub trusted_proxies: Vec<IpNet>,
    pub anthropic: AnthropicSettings,
    /// CORS, rate limits, inbound keys, `/internal` access, TLS.
    pub gate: crate::gate::GateSettings,
    /// `telemetry.otlp` with the `OTEL_*` environment; `None` = tracing off.
    pub otlp: Option<crate::telemetry::trace::OtlpSettings>,
    /// `proxy.inject_stream_usage`.
    pub inject_stream_usage: bool,
}

/// `translators.anthropic`, resolved.
#[derive(Clone, Debug)]
pub struct AnthropicSettings {
    /// The `/olla/anthropic` routes exist.
    pub enabled: bool,
    /// Requests go unchanged to backends that speak the Messages API natively.
    pub passthrough: bool,
    /// Largest request body accepted on these routes (0 in the config means 10 MiB).
    pub max_message_size: u64,
    /// Per endpoint name, the configured `anthropic_messages_path` (`""` = never passthrough).
    pub messages_paths: HashMap<String, String>,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            passthrough: true,
            max_message_size: DEFAULT_MESSAGE_SIZE,
            messages_paths: HashMap::new(),
        }
    }
}

const DEFAULT_MESSAGE_SIZE: u64 = 10 << 20;
const MAX_MESSAGE_SIZE: u64 = 100 << 20;

fn anthropic_settings(config: &Config, errors: &mut Vec<String>) -> AnthropicSettings {
    let a = &config.translators.anthropic;
    if a.max_message_size > MAX_MESSAGE_SIZE {
        errors.push(format!(
            "translators.anthropic.max_message_size: {} is over the 100 MiB limit",
            a.max_message_size
        ));
    }
    let mut messages_paths = HashMap::new();
    for (i, ep) in config.discovery.static_.endpoints.iter().enumerate() {
        if let Some(p) = &ep.anthropic_messages_path {
            if !p.is_empty() && (!p.starts_with('/') || p.parse::<Uri>().is_err()) {
                errors.push(format!(
                    "discovery.static.endpoints[{i}].anthropic_messages_path: {p:?} must be empty or a path starting with /"
                ));
            }
            messages_paths.insert(ep.name.clone(), p.clone());
        }
    }
    AnthropicSettings {
        enabled: a.enabled,
        passthrough: a.passthrough_enabled,
        max_message_size: if a.max_message_size == 0 {
            DEFAULT_MESSAGE_SIZE
        } else {
            a.max_message_size
        },
        messages_paths,
    }
}

/// Everything the daemon runs with.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub server: ServerSettings,
    pub tree: TreeConfig,
    pub admin: AdminSettings,
    pub dashboard: crate::dashboard::DashboardSettings,
}

const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(120);
const DEFAULT_IDLE: Duration = Duration::from_secs(120);

/// Validates and resolves a config. `Err` lists every problem found.
pub fn resolve(config: &Config) -> Result<Runtime, Vec<String>> {
    let mut errors = Vec::new();
    let s = &config.server;
    if s.host.trim().is_empty() {
        errors.push("server.host: must not be empty".to_string());
    }
    if s.request_limits.max_body_size == 0 {
        errors.push("server.request_limits.max_body_size: must be greater than 0".to_string());
    }
    if s.request_limits.max_header_size < 1024 {
        errors
            .push("server.request_limits.max_header_size: must be at least 1024 bytes".to_string());
    }
    if config.discovery.max_models_per_endpoint == 0 {
        errors.push("discovery.max_models_per_endpoint: must be at least 1".to_string());
    }
    let p = &config.proxy;
    let strategy = Strategy::parse(&p.load_balancer).unwrap_or_else(|| {
        errors.push(format!(
            "proxy.load_balancer: unknown balancer {:?}{} (valid: {})",
            p.load_balancer,
            suggest(&p.load_balancer, STRATEGY_NAMES),
            STRATEGY_NAMES.join(", ")
        ));
        Strategy::Priority
    });
    let (sticky, warm_first, cache_aware) = balancing(p, strategy, &mut errors);
    if !["olla", "sherpa"].contains(&p.engine.as_str()) {
        errors.push(format!(
            "proxy.engine: unknown engine {:?} (valid: olla, sherpa)",
            p.engine
        ));
    }
    if !["auto", "streaming", "standard"].contains(&p.profile.as_str()) {
        errors.push(format!(
            "proxy.profile: unknown profile {:?} (valid: auto, streaming, standard)",
            p.profile
        ));
    }
    for code in &p.retry.on_status_codes {
        if !(100..=599).contains(code) {
            errors.push(format!(
                "proxy.retry.on_status_codes: {code} is not an HTTP status"
            ));
        }
    }
    let rs = &config.model_registry.routing_strategy;
    let model_routing = match rs.kind.as_str() {
        "strict" => ModelRouting::Strict,
        "optimistic" => ModelRouting::Optimistic,
        "discovery" => ModelRouting::Discovery,
        other => {
            errors.push(format!(
                "model_registry.routing_strategy.type: unknown strategy {other:?}{} (valid: strict, optimistic, discovery)",
                suggest(other, &["strict", "optimistic", "discovery"])
            ));
            ModelRouting::Strict
        }
    };
    let fallback = match rs.options.fallback_behavior.as_str() {
        "compatible_only" => Fallback::CompatibleOnly,
        "all" => Fallback::All,
        "none" => Fallback::None,
        other => {
            errors.push(format!(
                "model_registry.routing_strategy.options.fallback_behavior: unknown value {other:?} (valid: compatible_only, all, none)"
            ));
            Fallback::CompatibleOnly
        }
    };
    if !["json", "text"].contains(&config.logging.format.as_str()) {
        errors.push(format!(
            "logging.format: unknown format {:?} (valid: json, text)",
            config.logging.format
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&config.logging.level).is_err() {
        errors.push(format!(
            "logging.level: invalid level {:?}",
            config.logging.level
        ));
    }
    for (alias, names) in &config.model_aliases {
        if names.is_empty() {
            errors.push(format!(
                "model_aliases.{alias}: must list at least one model name"
            ));
        }
    }

    let anthropic = anthropic_settings(config, &mut errors);
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, ep) in config.discovery.static_.endpoints.iter().enumerate() {
        let at = if ep.name.is_empty() {
            format!("discovery.static.endpoints[{i}]")
        } else {
            format!("discovery.static.endpoints[{i}] ({})", ep.name)
        };
        if ep.name.trim().is_empty() {
            errors.push(format!("{at}.name: required"));
        } else if !names.insert(ep.name.clone()) {
            errors.push(format!(
                "{at}.name: duplicate endpoint name {:?} (names must be unique)",
                ep.name
            ));
        }
        match endpoint_spec(config, ep, &at) {
            Ok(spec) => specs.push(Arc::new(spec)),
            Err(mut e) => errors.append(&mut e),
        }
    }

    let admin = resolve_admin(&config.admin).map_err(|mut e| errors.append(&mut e));
    let trusted_proxies = trusted_proxies(&s.rate_limits, &mut errors);
    let dashboard =
        crate::dashboard::resolve(&config.dashboard).map_err(|mut e| errors.append(&mut e));
    let gate = crate::gate::settings::resolve(config, &mut errors);
    let otlp = crate::telemetry::trace::config::resolve_otlp(
        &config.telemetry.otlp,
        &|k| std::env::var(k).ok(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Ok(admin), Ok(dashboard)) = (admin, dashboard) else {
        return Err(errors);
    };
    let model_aliases: HashMap<String, Vec<String>> = config
        .model_aliases
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sup = &config.supervision;
    Ok(Runtime {
        server: ServerSettings {
            host: s.host.clone(),
            port: s.port,
            threads: s.threads,
            read_header_timeout: nonzero(s.read_header_timeout.0, Duration::from_secs(10)),
            read_timeout: s.read_timeout.0,
            write_timeout: s.write_timeout.0,
            // Go's rule, which Olla inherits: no idle timeout means the read timeout.
            idle_timeout: nonzero(s.idle_timeout.0, s.read_timeout.0),
            max_connections: s.max_connections,
            shutdown_timeout: s.shutdown_timeout.0,
            max_body_size: s.request_limits.max_body_size,
            max_header_size: s.request_limits.max_header_size,
            request_logging: s.request_logging,
            metrics_enabled: config.telemetry.metrics.enabled,
            proxy_engine: p.engine.clone(),
            proxy_profile: p.profile.clone(),
            trusted_proxies,
            anthropic,
            gate,
            otlp,
            inject_stream_usage: p.inject_stream_usage,
        },
        tree: TreeConfig {
            specs,
            policy: RoutingPolicy {
                strategy,
                retry_on_status: if p.retry.enabled {
                    p.retry.on_status_codes.clone()
                } else {
                    Vec::new()
                },
                model_routing: if rs.options.discovery_refresh_on_miss
                    && model_routing == ModelRouting::Strict
                {
                    ModelRouting::Discovery
                } else {
                    model_routing
                },
                fallback,
                discovery_timeout: rs.options.discovery_timeout.0,
                discovery_min_interval: rs.options.discovery_min_interval.0,
                discovery_negative_ttl: rs.options.discovery_negative_ttl.0,
                sticky,
                warm_first,
                cache_aware,
            },
            model_aliases,
            stale_threshold: config.model_registry.unification.stale_threshold.0,
            supervision: SupervisionSettings {
                backend_max_restarts: sup.backend_max_restarts,
                backend_window: sup.backend_restart_window.0,
                root_max_restarts: sup.root_max_restarts,
                root_window: sup.root_restart_window.0,
                quarantine_backoff: nonzero(sup.quarantine_backoff.0, Duration::from_secs(300)),
                quarantine_max_backoff: sup.quarantine_max_backoff.0,
            },
        },
        admin,
        dashboard,
    })
}

/// Olla's defaults when `trust_proxy_headers` is on and no CIDR is listed.
const DEFAULT_TRUSTED_PROXIES: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

fn trusted_proxies(rl: &RateLimits, errors: &mut Vec<String>) -> Vec<IpNet> {
    if !rl.trust_proxy_headers {
        return Vec::new();
    }
    let listed: Vec<&str> = if rl.trusted_proxy_cidrs.is_empty() {
        DEFAULT_TRUSTED_PROXIES.to_vec()
    } else {
        rl.trusted_proxy_cidrs.iter().map(String::as_str).collect()
    };
    let mut out = Vec::new();
    for c in listed {
        let c = c.trim();
        match c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => out.push(n),
            Err(_) => errors.push(format!(
                "server.rate_limits.trusted_proxy_cidrs: {c:?} is not a CIDR (e.g. 10.0.0.0/8)"
            )),
        }
    }
    out
}

fn nonzero(d: Duration, fallback: Duration) -> Duration {
    if d.is_zero() {
        fallback
    } else {
        d
    }
}

fn suggest(word: &str, options: &[&str]) -> String {
    nearest(word, options)
        .map(|n| format!("; did you mean {n:?}?"))
        .unwrap_or_default()
}

/// Parses and checks a backend URL: http(s), with a host, no credentials.
pub fn parse_backend_url(raw: &str) -> Result<Uri, String> {
    // Errors show the URL without its userinfo: it holds credentials.
    let shown = super::inert::redact_userinfo(raw.trim());
    let uri: Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "invalid URL {shown:?}: scheme {other:?} is not http or https"
            ))
        }
        None => {
            return Err(format!(
                "invalid URL {shown:?}: missing http:// or https://"
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("invalid URL {shown:?}: missing host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "invalid URL {shown:?}: credentials in the URL are not allowed; use the endpoint's `auth` block"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("invalid URL {shown:?}: missing host"));
    }
    Ok(uri)
}

/// Validates one endpoint (`at` prefixes each error, e.g. `discovery.static.endpoints[0] (a)`)
/// and resolves it against the config's defaults.
pub fn endpoint_spec(
    config: &Config,
    ep: &EndpointConfig,
    at: &str,
) -> Result<BackendSpec, Vec<String>> {
    let mut errors = Vec::new();
    let url = match parse_backend_url(&ep.url) {
        Ok(u) => Some(u),
        Err(e) => {
            errors.push(format!("{at}.url: {e}"));
            None
        }
    };
    let kind = if ep.kind.trim().is_empty() {
        errors.push(format!(
            "{at}.type: required (e.g. ollama, lm-studio, llamacpp, vllm, openai-compatible, auto)"
        ));
        None
    } else {
        match BackendKind::parse(&ep.kind) {
            Some(k) => Some(k),
            None => {
                let names: Vec<&str> = ALL_KINDS.iter().map(|k| k.as_str()).collect();
                errors.push(format!(
                    "{at}.type: unknown backend type {:?}{} (valid: {})",
                    ep.kind,
                    suggest(&ep.kind, &names),
                    names.join(", ")
                ));
                None
            }
        }
    };
    for (field, v) in [
        ("health_check_url", &ep.health_check_url),
        ("model_url", &ep.model_url),
    ] {
        if let Some(v) = v {
            if v.starts_with("http://") || v.starts_with("https://") {
                if let Err(e) = parse_backend_url(v) {
                    errors.push(format!("{at}.{field}: {e}"));
                }
            } else if v.parse::<http::uri::PathAndQuery>().is_err() {
                errors.push(format!("{at}.{field}: invalid path {v:?}"));
            }
        }
    }
    if ep.check_interval.0 < Duration::from_millis(100) {
        errors.push(format!("{at}.check_interval: must be at least 100ms"));
    }
    if ep.check_timeout.0.is_zero() {
        errors.push(format!("{at}.check_timeout: must be greater than 0"));
    }
    if ep.weight == 0 {
        errors.push(format!("{at}.weight: must be at least 1"));
    }
    for p in &ep.allowed_paths {
        if !p.starts_with('/') && !p.starts_with('*') {
            errors.push(format!(
                "{at}.allowed_paths: {p:?} must start with / (a path prefix) or * (a glob)"
            ));
        }
    }
    let mut outbound_headers = Vec::new();
    for (k, v) in &ep.headers {
        match (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            (Ok(n), Ok(val)) => outbound_headers.push((n, val)),
            _ => errors.push(format!("{at}.headers.{k}: invalid header name or value")),
        }
    }
    if let Some(auth) = &ep.auth {
        match auth_header(auth) {
            Ok(h) => outbound_headers.push(h),
            Err(e) => errors.push(format!("{at}.auth: {e}")),
        }
    }
    let p = &config.proxy;
    let timeouts = timeouts(&p.timeouts, &ep.timeouts, p);
    if timeouts.first_byte.is_zero() || timeouts.idle.is_zero() || timeouts.connect.is_zero() {
        errors.push(format!(
            "{at}.timeouts: connect, first_byte and idle must be greater than 0"
        ));
    }
    let breaker = breaker(&p.circuit_breaker, &ep.circuit_breaker);
    let mut health = health(&p.health, &ep.health);
    health.max_retry_after = ep.max_retry_after.unwrap_or(p.max_retry_after).0;
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(url), Some(kind)) = (url, kind) else {
        return Err(vec![format!("{at}: invalid")]);
    };
    let md = &config.discovery.model_discovery;
    Ok(BackendSpec {
        name: ep.name.clone(),
        configured_url: sanitized_url(&ep.url),
        url,
        kind,
        priority: ep.priority,
        weight: ep.weight,
        health_check_url: ep.health_check_url.clone(),
        model_url: ep.model_url.clone(),
        check_interval: ep.check_interval.0,
        check_timeout: ep.check_timeout.0,
        health,
        breaker,
        limits: ConcurrencyLimits {
            max_concurrency: ep.max_concurrency.or(p.max_concurrency).unwrap_or(0),
            queue_size: ep.queue_size.or(p.queue_size).unwrap_or(0),
            queue_timeout: ep
                .queue_timeout
                .or(p.queue_timeout)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
        },
        timeouts,
        outbound_headers,
        model_filter: ModelFilter {
            include: ep.model_filter.include.clone(),
            exclude: ep.model_filter.exclude.clone(),
        },
        discovery: DiscoverySettings {
            enabled: md.enabled,
            interval: nonzero(md.interval.0, Duration::from_secs(300)),
            timeout: nonzero(md.timeout.0, Duration::from_secs(30)),
            max_models: config.discovery.max_models_per_endpoint,
        },
        h2c: ep.h2c,
        path_allowlist: ep.auth.is_some().then(|| ep.allowed_paths.clone()),
        loaded_check_interval: (p.warm_first.enabled
            || Strategy::parse(&p.load_balancer) == Some(Strategy::WarmFirst))
        .then_some(p.warm_first.check_interval.0),
    })
}

/// Sticky sessions, warm-first and cache-aware settings; bad values are reported.
fn balancing(
    p: &crate::config::schema::ProxyConfig,
    strategy: Strategy,
    errors: &mut Vec<String>,
) -> (StickySettings, WarmSettings, CacheSettings) {
    let st = &p.sticky_sessions;
    let key_sources: Vec<KeySource> = st
        .key_sources
        .iter()
        .filter_map(|s| KeySource::parse(s))
        .collect();
    if st.enabled && key_sources.is_empty() {
        errors.push(
            "proxy.sticky_sessions.key_sources: none of the sources is known (valid: session_header, prefix_hash, auth_header, ip)".to_string(),
        );
    }
    let sticky = StickySettings {
        enabled: st.enabled,
        idle_ttl: Duration::from_secs(st.idle_ttl_seconds),
        max_sessions: st.max_sessions,
        key_sources,
        prefix_hash_bytes: st.prefix_hash_bytes,
    };
    let w = &p.warm_first;
    if !w.max_wait_ratio.is_finite() || w.max_wait_ratio < 0.0 {
        errors.push(format!(
            "proxy.warm_first.max_wait_ratio: must be a number ≥ 0, got {}",
            w.max_wait_ratio
        ));
    }
    if w.check_interval.0 < Duration::from_millis(100) {
        errors.push("proxy.warm_first.check_interval: must be at least 100ms".to_string());
    }
    let warm = WarmSettings {
        enabled: w.enabled || strategy == Strategy::WarmFirst,
        max_wait_ratio: w.max_wait_ratio,
        check_interval: w.check_interval.0,
    };
    let c = &p.cache_aware;
    if !(0.0..=1.0).contains(&c.cache_threshold) {
        errors.push(format!(
            "proxy.cache_aware.cache_threshold: must be between 0 and 1, got {}",
            c.cache_threshold
        ));
    }
    if !c.balance_rel_threshold.is_finite() || c.balance_rel_threshold < 1.0 {
        errors.push(format!(
            "proxy.cache_aware.balance_rel_threshold: must be at least 1, got {}",
            c.balance_rel_threshold
        ));
    }
    if c.max_tree_bytes < 1 << 20 {
        errors.push("proxy.cache_aware.max_tree_bytes: must be at least 1 MiB".to_string());
    }
    let cache = CacheSettings {
        cache_threshold: c.cache_threshold,
        balance_abs_threshold: c.balance_abs_threshold,
        balance_rel_threshold: c.balance_rel_threshold,
        max_tree_bytes: usize::try_from(c.max_tree_bytes).unwrap_or(usize::MAX),
    };
    (sticky, warm, cache)
}

fn timeouts(
    global: &TimeoutsConfig,
    ep: &TimeoutsConfig,
    p: &super::schema::ProxyConfig,
) -> UpstreamTimeouts {
    let pick = |e: Option<super::duration::Dur>,
                g: Option<super::duration::Dur>,
                olla: Option<super::duration::Dur>,
                d: Duration| { e.or(g).or(olla).map(|x| x.0).unwrap_or(d) };
    UpstreamTimeouts {
        connect: pick(
            ep.connect,
            global.connect,
            p.connection_timeout,
            DEFAULT_CONNECT,
        ),
        first_byte: pick(
            ep.first_byte,
            global.first_byte,
            p.response_header_timeout,
            DEFAULT_FIRST_BYTE,
        ),
        idle: pick(ep.idle, global.idle, p.read_timeout, DEFAULT_IDLE),
        total: ep
            .total
            .or(global.total)
            .or(p.response_timeout)
            .map(|d| d.0)
            .filter(|d| !d.is_zero()),
        pool_idle: nonzero(p.connection_keep_alive.0, Duration::from_secs(90))
            .max(Duration::from_secs(5)),
    }
}

fn breaker(global: &BreakerConfig, ep: &BreakerConfig) -> BreakerSettings {
    let d = BreakerSettings::default();
    BreakerSettings {
        enabled: ep.enabled.or(global.enabled).unwrap_or(d.enabled),
        failure_threshold: ep
            .failure_threshold
            .or(global.failure_threshold)
            .unwrap_or(d.failure_threshold),
        window: ep.window.or(global.window).map(|x| x.0).unwrap_or(d.window),
        open_for: ep
            .open_for
            .or(global.open_for)
            .map(|x| x.0)
            .unwrap_or(d.open_for),
        max_open_for: ep
            .max_open_for
            .or(global.max_open_for)
            .map(|x| x.0)
            .unwrap_or(d.max_open_for),
        half_open_max_requests: ep
            .half_open_max_requests
            .or(global.half_open_max_requests)
            .unwrap_or(d.half_open_max_requests)
            .max(1),
    }
}

fn health(global: &HealthConfig, ep: &HealthConfig) -> HealthSettings {
    let d = HealthSettings::default();
    HealthSettings {
        fall: ep
            .unhealthy_threshold
            .or(global.unhealthy_threshold)
            .unwrap_or(d.fall)
            .max(1),
        rise: ep
            .healthy_threshold
            .or(global.healthy_threshold)
            .unwrap_or(d.rise)
            .max(1),
        max_backoff: ep
            .max_backoff
            .or(global.max_backoff)
            .map(|x| x.0)
            .unwrap_or(d.max_backoff),
        ..d
    }
}

pub(crate) fn secret(
    value: &Option<String>,
    file: &Option<String>,
    what: &str,
) -> Result<String, String> {
    match (value, file) {
        (Some(v), _) if !v.is_empty() => Ok(v.clone()),
        (_, Some(f)) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {what}_file {f:?}: {e}")),
        _ => Err(format!("`{what}` or `{what}_file` is required")),
    }
}

/// The header an `auth` block adds to upstream requests and probes (marked sensitive).
fn auth_header(auth: &AuthConfig) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = match auth.kind.as_str() {
        "bearer" => {
            let token = secret(&auth.token, &auth.token_file, "token")?;
            (http::header::AUTHORIZATION, format!("Bearer {token}"))
        }
        "api_key" => {
            let key = secret(&auth.key, &auth.key_file, "key")?;
            let header = auth.header.clone().unwrap_or_else(|| "X-Api-Key".into());
            let name = HeaderName::try_from(header.as_str())
                .map_err(|_| format!("invalid header name {header:?}"))?;
            (name, key)
        }
        "basic" => {
            let user = auth.username.clone().ok_or("`username` is required")?;
            let pass = secret(&auth.password, &auth.password_file, "password")?;
            (
                http::header::AUTHORIZATION,
                format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            )
        }
        other => {
            return Err(format!(
                "unknown auth type {other:?}{} (valid: bearer, api_key, basic)",
                suggest(other, &["bearer", "api_key", "basic"])
            ))
        }
    };
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| "secret contains characters not allowed in a header".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse;

    fn resolve_text(yaml: &str) -> Result<Runtime, Vec<String>> {
        resolve(&parse(yaml, &|_| None).expect("parses"))
    }

    const TWO: &str = "discovery:\n  static:\n    endpoints:\n";

    #[test]
    fn duplicate_names_bad_urls_and_types_are_all_reported() {
        let yaml = format!(
            "{TWO}      - {{name: a, url: 'http://h:1', type: ollama}}\n      - {{name: a, url: 'ftp://h', type: olama}}\n      - {{name: c, url: 'localhost:1', type: vllm}}\n"
        );
        let errs = resolve_text(&yaml).unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("duplicate endpoint name \"a\""), "{all}");
        assert!(all.contains("scheme \"ftp\""), "{all}");
        assert!(all.contains("did you mean \"ollama\""), "{all}");
        assert!(all.contains("endpoints[2] (c).url"), "{all}");
    }

    #[test]
    fn balancing_keys_resolve_and_bad_values_are_reported() {
        let ep = format!("{TWO}      - {{name: a, url: 'http://h:1', type: ollama}}\n");
        let rt = resolve_text(&format!(
            "proxy:\n  load_balancer: warm-first\n  warm_first: {{max_wait_ratio: 2, check_interval: 1s}}\n  sticky_sessions: {{enabled: true, idle_ttl_seconds: 60, key_sources: [ip, bogus, session_header]}}\n  cache_aware: {{cache_threshold: 0.5}}\n{ep}"
        ))
        .unwrap();
        let p = &rt.tree.policy;
        assert_eq!(p.strategy, Strategy::WarmFirst);
        assert!(p.warm_first_on() && p.warm_first.max_wait_ratio == 2.0);
        assert_eq!(
            rt.tree.specs[0].loaded_check_interval,
            Some(Duration::from_secs(1))
        );
        assert!(p.sticky.enabled);
        assert_eq!(p.sticky.idle_ttl, Duration::from_secs(60));
        assert_eq!(
            p.sticky.key_sources,
            vec![KeySource::Ip, KeySource::SessionHeader],
            "unknown sources are ignored, order kept"
        );
        assert_eq!(p.cache_aware.cache_threshold, 0.5);
        // Defaults: nothing on, no loaded-model checks.
        let rt = resolve_text(&ep).unwrap();
        assert!(!rt.tree.policy.sticky.enabled && !rt.tree.policy.warm_first_on());
        assert_eq!(rt.tree.specs[0].loaded_check_interval, None);
        let errs = resolve_text(&format!(
            "proxy:\n  load_balancer: wieghted\n  warm_first: {{max_wait_ratio: -1}}\n  sticky_sessions: {{enabled: true, key_sources: [nope]}}\n  cache_aware: {{cache_threshold: 2, balance_rel_threshold: 0.5, max_tree_bytes: 10}}\n{ep}"
        ))
        .unwrap_err()
        .join("\n");
        for want in [
            "did you mean \"weighted\"",
            "max_wait_ratio",
            "key_sources",
            "cache_threshold",
            "balance_rel_threshold",
            "max_tree_bytes",
        ] {
            assert!(errs.contains(want), "{want}: {errs}");
        }
    }

    #[test]
    fn anthropic_translator_keys() {
        let rt = resolve_text(&format!(
            "translators: {{anthropic: {{passthrough_enabled: false, max_message_size: 0}}}}\n{TWO}      - {{name: a, url: 'http://h:1', type: openai, anthropic_messages_path: /x/v1/messages}}\n      - {{name: b, url: 'http://h:2', type: llamacpp, anthropic_messages_path: ''}}\n"
        ))
        .unwrap();
        let a = &rt.server.anthropic;
        assert!(a.enabled && !a.passthrough);
        assert_eq!(a.max_message_size, 10 << 20);
        assert_eq!(a.messages_paths["a"], "/x/v1/messages");
        assert_eq!(a.messages_paths["b"], "");
        let errs = resolve_text(&format!(
            "translators: {{anthropic: {{max_message_size: 104857601}}}}\n{TWO}      - {{name: a, url: 'http://h:1', type: openai, anthropic_messages_path: 'v1/messages'}}\n"
        ))
        .unwrap_err()
        .join("\n");
        assert!(errs.contains("max_message_size"), "{errs}");
        assert!(errs.contains("anthropic_messages_path"), "{errs}");
        let env =
            |k: &str| (k == "OLLA_TRANSLATORS_ANTHROPIC_ENABLED").then(|| "false".to_string());
        let cfg = parse("translators: {anthropic: {enabled: true}}\n", &env).expect("parses");
        assert!(!resolve(&cfg).unwrap().server.anthropic.enabled);
    }

    #[test]
    fn credentials_in_url_are_rejected() {
        let yaml = format!("{TWO}      - {{name: a, url: 'http://u:p@h:1', type: ollama}}\n");
        assert!(resolve_text(&yaml)
            .unwrap_err()
            .join("")
            .contains("credentials"));
    }

    #[test]
    fn trusted_proxies_follow_olla_and_bad_cidrs_are_errors() {
        let off =
            resolve_text("server: {rate_limits: {trusted_proxy_cidrs: [10.0.0.0/8]}}\n").unwrap();
        assert!(
            off.server.trusted_proxies.is_empty(),
            "trust_proxy_headers is off"
        );
        let defaults =
            resolve_text("server: {rate_limits: {trust_proxy_headers: true}}\n").unwrap();
        assert_eq!(defaults.server.trusted_proxies.len(), 4);
        let listed = resolve_text(
            "server: {rate_limits: {trust_proxy_headers: true, trusted_proxy_cidrs: [192.0.2.1, '::1/128']}}\n",
        )
        .unwrap();
        assert_eq!(listed.server.trusted_proxies.len(), 2);
        let bad = resolve_text(
            "server: {rate_limits: {trust_proxy_headers: true, trusted_proxy_cidrs: [10.0.0.0/99]}}\n",
        )
        .unwrap_err();
        assert!(bad.join("").contains("trusted_proxy_cidrs"), "{bad:?}");
    }

    #[test]
    fn allowed_paths_apply_to_endpoints_with_auth_and_urls_keep_their_spelling() {
        let yaml = format!(
            "{TWO}      - {{name: a, url: 'http://h:1/', type: litellm, auth: {{type: bearer, token: t}}, allowed_paths: [/v1/files]}}\n      - {{name: b, url: 'http://h:2?x=1', type: vllm, allowed_paths: [/x]}}\n"
        );
        let rt = resolve_text(&yaml).unwrap();
        assert_eq!(
            rt.tree.specs[0].path_allowlist,
            Some(vec!["/v1/files".to_string()])
        );
        assert_eq!(rt.tree.specs[0].configured_url, "http://h:1/");
        assert_eq!(rt.tree.specs[1].path_allowlist, None);
        assert_eq!(rt.tree.specs[1].configured_url, "http://h:2");
        let bad = format!(
            "{TWO}      - {{name: a, url: 'http://h:1', type: vllm, allowed_paths: [v1/files]}}\n"
        );
        assert!(resolve_text(&bad)
            .unwrap_err()
            .join("")
            .contains("allowed_paths"));
    }

    #[test]
    fn resolves_defaults_timeouts_and_auth() {
        let yaml = format!(
            "proxy:\n  load_balancer: priority\n  response_header_timeout: 7s\n  timeouts: {{idle: 3s}}\n{TWO}      - name: a\n        url: http://h:1/base\n        type: openai\n        priority: 50\n        auth: {{type: basic, username: u, password: p}}\n        headers: {{X-Tenant: acme}}\n"
        );
        let rt = resolve_text(&yaml).unwrap();
        let spec = &rt.tree.specs[0];
        assert_eq!(spec.kind, BackendKind::OpenAiCompatible);
        assert_eq!(spec.priority, 50);
        assert_eq!(spec.timeouts.first_byte, Duration::from_secs(7));
        assert_eq!(spec.timeouts.idle, Duration::from_secs(3));
        assert_eq!(spec.timeouts.total, None);
        assert_eq!(spec.outbound_headers.len(), 2);
        assert_eq!(spec.outbound_headers[1].1, "Basic dTpw");
        assert_eq!(rt.tree.policy.strategy, Strategy::Priority);
        assert_eq!(rt.tree.policy.retry_on_status, vec![502, 503, 504, 429]);
    }

    #[test]
    fn missing_secret_file_is_reported() {
        let yaml = format!("{TWO}      - {{name: a, url: 'http://h', type: vllm, auth: {{type: bearer, token_file: /nonexistent/x}}}}\n");
        assert!(resolve_text(&yaml)
            .unwrap_err()
            .join("")
            .contains("cannot read token_file"));
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b"u:p"), "dTpw");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
