//! The config file schema: Olla's YAML keys, accepted as they are, with our additions beside
//! them (split timeouts, retry-on-status, breaker, health hysteresis, concurrency limits and
//! queues, weights, supervision budgets). Every struct denies unknown keys; defaults follow Olla.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Dur;

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub proxy: ProxyConfig,
    pub discovery: DiscoveryConfig,
    pub model_registry: ModelRegistryConfig,
    pub model_aliases: BTreeMap<String, Vec<String>>,
    pub translators: TranslatorsConfig,
    pub dashboard: DashboardConfig,
    pub logging: LoggingConfig,
    /// Ours: restart budgets of the supervision tree.
    pub supervision: SupervisionConfig,
    /// Ours: the admin listener (run-time commands, `olla ctl`).
    pub admin: AdminConfig,
    /// Ours: inbound API keys (`auth.keys`; off when absent).
    pub auth: InboundAuthConfig,
    /// Ours: metrics (and, beside them, tracing export).
    pub telemetry: TelemetryConfig,
    /// Keys the file sets that olla accepts but does not act on (filled by the loader).
    #[serde(skip)]
    pub inert: Vec<super::inert::InertKey>,
}

/// `telemetry`: what olla records about requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub metrics: MetricsConfig,
    pub otlp: OtlpConfig,
}

/// `telemetry.metrics`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record request metrics (`/internal/metrics` still answers, with zero request counts).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The admin listener: a separate port for run-time commands, never the proxy port.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// `host:port`; a non-loopback address requires a token.
    pub listen: String,
    /// Bearer token every admin request must carry.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub token_file: Option<String>,
    /// Enables `POST /admin/backends/{name}/crash` (chaos tests and demos).
    pub fault_injection: bool,
    /// Ours: TLS on the admin listener.
    pub tls: Option<TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:40115".into(),
            token: None,
            token_file: None,
            fault_injection: false,
            tls: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Ours: serving threads (one runtime each); 0 = one per CPU core.
    pub threads: usize,
    pub read_timeout: Dur,
    pub read_header_timeout: Dur,
    pub write_timeout: Dur,
    pub idle_timeout: Dur,
    pub shutdown_timeout: Dur,
    /// Ours: client connections served at once (0 = no cap).
    pub max_connections: usize,
    pub request_logging: bool,
    pub request_limits: RequestLimits,
    pub rate_limits: RateLimits,
    pub cors: CorsConfig,
    /// Ours: TLS termination on the proxy port.
    pub tls: Option<TlsConfig>,
    /// Ours: who may reach `/internal/*`.
    pub internal_access: InternalAccessConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 40114,
            threads: 0,
            read_timeout: Dur::secs(30),
            read_header_timeout: Dur::secs(10),
            write_timeout: Dur::secs(0),
            idle_timeout: Dur::secs(0),
            shutdown_timeout: Dur::secs(10),
            max_connections: 10_000,
            request_logging: true,
            request_limits: RequestLimits::default(),
            rate_limits: RateLimits::default(),
            cors: CorsConfig::default(),
            tls: None,
            internal_access: InternalAccessConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    pub max_body_size: u64,
    pub max_header_size: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_size: 100 << 20,
            max_header_size: 1 << 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub global_requests_per_minute: i64,
    pub per_ip_requests_per_minute: i64,
    pub health_requests_per_minute: i64,
    pub burst_size: i64,
    pub cleanup_interval: Dur,
    pub trust_proxy_headers: bool,
    pub trusted_proxy_cidrs: Vec<String>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            global_requests_per_minute: 0,
            per_ip_requests_per_minute: 0,
            health_requests_per_minute: 0,
            burst_size: 50,
            cleanup_interval: Dur::secs(300),
            trust_proxy_headers: false,
            trusted_proxy_cidrs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub enabled: bool,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: i64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_origins: vec!["*".into()],
            allowed_methods: vec!["GET".into(), "POST".into(), "OPTIONS".into()],
            allowed_headers: vec!["*".into()],
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: 300,
        }
    }
}

/// Ours: TLS certificate files (PEM), re-read on reload and SIGHUP.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca_file: Option<String>,
}

/// Ours: restricts `/internal/*` to client addresses and/or requires an inbound API key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InternalAccessConfig {
    /// Client CIDRs (or addresses) allowed; empty = any.
    pub allowed_cidrs: Vec<String>,
    /// Requests need a valid `auth.keys` key (`/internal/health` excepted).
    pub require_api_key: bool,
}

/// Ours: inbound API keys. `keys` absent = no key needed; present (even empty) = every
/// request outside `/internal/*` needs a key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InboundAuthConfig {
    pub keys: Option<Vec<ApiKeyConfig>>,
}

/// One inbound API key: exactly one of `key`, `key_hash` (SHA-256 hex) or `key_file`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    pub name: String,
    #[serde(skip_serializing)]
    pub key: Option<String>,
    #[serde(skip_serializing)]
    pub key_hash: Option<String>,
    pub key_file: Option<String>,
    /// Model globs (`*`, `?`) the key may use; absent = all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// 0 = no limit.
    pub requests_per_minute: u64,
    /// 0 = no limit.
    pub tokens_per_minute: u64,
    /// RFC 3339 time after which the key is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `olla` | `sherpa`: one engine here; accepted for compatibility.
    pub engine: String,
    /// `auto` | `streaming` | `standard`: we always stream; accepted for compatibility.
    pub profile: String,
    /// `priority` | `round-robin` | `least-connections` | `weighted` | `warm-first` |
    /// `cache-aware` (inside priority tiers, always).
    pub load_balancer: String,
    /// Olla's dial timeout; used as the connect timeout unless `timeouts.connect` is set.
    pub connection_timeout: Option<Dur>,
    pub connection_keep_alive: Dur,
    /// Olla's `response_timeout`: here a real whole-request cap when set (off by default).
    pub response_timeout: Option<Dur>,
    /// Olla's `read_timeout`: the idle gap between body chunks unless `timeouts.idle` is set.
    pub read_timeout: Option<Dur>,
    /// Olla's `response_header_timeout`: time to first byte unless `timeouts.first_byte` is set.
    pub response_header_timeout: Option<Dur>,
    pub tls_handshake_timeout: Dur,
    pub stream_buffer_size: Option<u64>,
    /// Deprecated in Olla, accepted and ignored.
    pub max_retries: Option<u32>,
    pub retry_backoff: Option<Dur>,
    /// Ours (Olla ignores this block): statuses that fail over before the first byte.
    pub retry: RetryConfig,
    pub profile_filter: IncludeExclude,
    pub sticky_sessions: StickyConfig,
    /// Ours: prefer backends that have the requested model loaded.
    pub warm_first: WarmFirstConfig,
    /// Ours: prefix-cache affinity of the `cache-aware` balancer.
    pub cache_aware: CacheAwareConfig,
    /// Ours: the three split timeouts plus an optional total.
    pub timeouts: TimeoutsConfig,
    /// Ours: breaker defaults for every endpoint.
    pub circuit_breaker: BreakerConfig,
    /// Ours: health-check hysteresis defaults for every endpoint.
    pub health: HealthConfig,
    /// Ours: concurrency defaults for every endpoint (0 = unlimited).
    pub max_concurrency: Option<usize>,
    pub queue_size: Option<usize>,
    pub queue_timeout: Option<Dur>,
    /// Ours: cap of any wait a backend asks for (`Retry-After`), per endpoint overridable.
    pub max_retry_after: Dur,
    /// Ours: ask OpenAI streaming requests for usage (`stream_options.include_usage`) and hide
    /// the extra usage chunk from clients that did not ask for it.
    pub inject_stream_usage: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            engine: "olla".into(),
            profile: "auto".into(),
            load_balancer: "least-connections".into(),
            connection_timeout: None,
            connection_keep_alive: Dur::secs(30),
            response_timeout: None,
            read_timeout: None,
            response_header_timeout: None,
            tls_handshake_timeout: Dur::secs(10),
            stream_buffer_size: None,
            max_retries: None,
            retry_backoff: None,
            retry: RetryConfig::default(),
            profile_filter: IncludeExclude::default(),
            sticky_sessions: StickyConfig::default(),
            warm_first: WarmFirstConfig::default(),
            cache_aware: CacheAwareConfig::default(),
            timeouts: TimeoutsConfig::default(),
            circuit_breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            max_concurrency: None,
            queue_size: None,
            queue_timeout: None,
            max_retry_after: Dur::secs(3600),
            inject_stream_usage: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub enabled: bool,
    pub on_status_codes: Vec<u16>,
    /// Accepted (Olla users write it); the number of attempts is the number of candidates.
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            on_status_codes: vec![502, 503, 504, 429],
            max_attempts: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IncludeExclude {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StickyConfig {
    pub enabled: bool,
    pub idle_ttl_seconds: u64,
    pub max_sessions: u64,
    pub key_sources: Vec<String>,
    pub prefix_hash_bytes: u64,
}

/// `proxy.warm_first`: a warm backend (model loaded) with a free slot goes first while its
/// in-flight count is at most `max_wait_ratio` × (the least-loaded cold backend's + 1).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WarmFirstConfig {
    /// Layer warm-first over any balancer (`load_balancer: warm-first` turns it on too).
    pub enabled: bool,
    pub max_wait_ratio: f64,
    /// How often each backend is asked which models it has loaded.
    pub check_interval: Dur,
}

impl Default for WarmFirstConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_wait_ratio: 4.0,
            check_interval: Dur::secs(5),
        }
    }
}

/// `proxy.cache_aware`: tuning of the `cache-aware` balancer.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheAwareConfig {
    /// Share of the prompt that must match a backend's cached prefix (0..=1).
    pub cache_threshold: f64,
    /// Load is skewed when max − min in-flight exceeds this …
    pub balance_abs_threshold: usize,
    /// … and max > min × this (≥ 1); then the least-loaded backend wins.
    pub balance_rel_threshold: f64,
    /// Memory bound of the prefix trees, bytes.
    pub max_tree_bytes: u64,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 32,
            balance_rel_threshold: 1.5,
            max_tree_bytes: 64 << 20,
        }
    }
}

impl Default for StickyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            idle_ttl_seconds: 600,
            max_sessions: 10000,
            key_sources: vec![
                "session_header".into(),
                "prefix_hash".into(),
                "auth_header".into(),
            ],
            prefix_hash_bytes: 512,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub connect: Option<Dur>,
    pub first_byte: Option<Dur>,
    pub idle: Option<Dur>,
    pub total: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub enabled: Option<bool>,
    pub failure_threshold: Option<u32>,
    pub window: Option<Dur>,
    pub open_for: Option<Dur>,
    pub max_open_for: Option<Dur>,
    pub half_open_max_requests: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Consecutive failed probes to mark a backend down (K).
    pub unhealthy_threshold: Option<u32>,
    /// Consecutive good probes to bring it back (M).
    pub healthy_threshold: Option<u32>,
    pub max_backoff: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub refresh_interval: Dur,
    /// Ours: models kept from one endpoint's listing; the rest is dropped with a warning.
    pub max_models_per_endpoint: usize,
    pub model_discovery: ModelDiscoveryConfig,
    #[serde(rename = "static")]
    pub static_: StaticDiscovery,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            kind: "static".into(),
            refresh_interval: Dur::secs(30),
            max_models_per_endpoint: 10_000,
            model_discovery: ModelDiscoveryConfig::default(),
            static_: StaticDiscovery::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDiscoveryConfig {
    pub enabled: bool,
    pub interval: Dur,
    pub timeout: Dur,
    pub concurrent_workers: u32,
    pub retry_attempts: u32,
    pub retry_backoff: Dur,
}

impl Default for ModelDiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Dur::secs(300),
            timeout: Dur::secs(30),
            concurrent_workers: 5,
            retry_attempts: 3,
            retry_backoff: Dur::secs(1),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StaticDiscovery {
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: i64,
    pub health_check_url: Option<String>,
    pub model_url: Option<String>,
    pub check_interval: Dur,
    pub check_timeout: Dur,
    pub preserve_path: bool,
    pub model_filter: IncludeExclude,
    pub auth: Option<AuthConfig>,
    pub headers: BTreeMap<String, String>,
    /// Ours: share inside the priority tier (default 1).
    pub weight: u32,
    pub max_concurrency: Option<usize>,
    pub queue_size: Option<usize>,
    pub queue_timeout: Option<Dur>,
    pub timeouts: TimeoutsConfig,
    pub circuit_breaker: BreakerConfig,
    pub health: HealthConfig,
    /// Speak HTTP/2 with prior knowledge (h2c) to this backend.
    pub h2c: bool,
    /// Ours: for an endpoint with `auth`, paths forwarded beside its type's API (prefixes or
    /// globs); every other path answers 404.
    pub allowed_paths: Vec<String>,
    /// Overrides `proxy.max_retry_after` for this endpoint.
    pub max_retry_after: Option<Dur>,
    /// Ours: where this backend serves the Anthropic Messages API natively (`/olla/anthropic`
    /// passes requests through to it); `""` = never. Default: by backend type.
    pub anthropic_messages_path: Option<String>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            kind: String::new(),
            priority: 100,
            health_check_url: None,
            model_url: None,
            check_interval: Dur::secs(5),
            check_timeout: Dur::secs(2),
            preserve_path: false,
            model_filter: IncludeExclude::default(),
            auth: None,
            headers: BTreeMap::new(),
            weight: 1,
            max_concurrency: None,
            queue_size: None,
            queue_timeout: None,
            timeouts: TimeoutsConfig::default(),
            circuit_breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            h2c: false,
            allowed_paths: Vec::new(),
            max_retry_after: None,
            anthropic_messages_path: None,
        }
    }
}

/// Outbound auth to a backend: `bearer{token}`, `api_key{key,header}`, `basic{username,password}`;
/// each secret may come from a `*_file` instead.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub token_file: Option<String>,
    #[serde(skip_serializing)]
    pub key: Option<String>,
    pub key_file: Option<String>,
    pub header: Option<String>,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelRegistryConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub enable_unifier: bool,
    pub routing_strategy: RoutingStrategyConfig,
    pub unification: UnificationConfig,
}

impl Default for ModelRegistryConfig {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            enable_unifier: true,
            routing_strategy: RoutingStrategyConfig::default(),
            unification: UnificationConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingStrategyConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub options: RoutingOptions,
}

impl Default for RoutingStrategyConfig {
    fn default() -> Self {
        Self {
            kind: "strict".into(),
            options: RoutingOptions::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingOptions {
    pub fallback_behavior: String,
    pub discovery_timeout: Dur,
    pub discovery_refresh_on_miss: bool,
    /// Ours: shortest time between two refreshes started by routing misses.
    pub discovery_min_interval: Dur,
    /// Ours: how long a name still unknown after a refresh starts no new one.
    pub discovery_negative_ttl: Dur,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self {
            fallback_behavior: "compatible_only".into(),
            discovery_timeout: Dur::secs(2),
            discovery_refresh_on_miss: false,
            discovery_min_interval: Dur::secs(5),
            discovery_negative_ttl: Dur::secs(30),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UnificationConfig {
    pub enabled: bool,
    pub stale_threshold: Dur,
    pub cleanup_interval: Dur,
}

impl Default for UnificationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stale_threshold: Dur::secs(24 * 3600),
            cleanup_interval: Dur::secs(600),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TranslatorsConfig {
    pub anthropic: AnthropicTranslatorConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicTranslatorConfig {
    pub enabled: bool,
    pub passthrough_enabled: bool,
    pub max_message_size: u64,
    pub inspector: InspectorConfig,
}

impl Default for AnthropicTranslatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            passthrough_enabled: true,
            max_message_size: 10 << 20,
            inspector: InspectorConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InspectorConfig {
    pub enabled: bool,
    pub output_dir: Option<String>,
    pub session_header: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the web dashboard at `/internal/ui/` (and `/admin/ui/` on the admin listener).
    pub enabled: bool,
    pub access_policy: AccessPolicy,
    /// Inert in Olla too: accepted so Olla configs load; the `/internal/*` JSON is not gated.
    pub gate_internal_api: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            access_policy: AccessPolicy::default(),
            gate_internal_api: false,
        }
    }
}

/// Who may load the dashboard: the TCP peer (never forwarding headers) must be inside one of
/// `allowed_cidrs`, and the `Host` header an IP literal or one of `allowed_hosts`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessPolicy {
    pub allowed_cidrs: Vec<String>,
    pub allowed_hosts: Vec<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            allowed_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            allowed_hosts: vec!["localhost".into()],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: String,
    /// `json` | `text`.
    pub format: String,
    /// `stdout` | `stderr`.
    pub output: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "json".into(),
            output: "stdout".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    pub backend_max_restarts: u32,
    pub backend_restart_window: Dur,
    pub root_max_restarts: u32,
    pub root_restart_window: Dur,
    /// A backend actor that exhausts its budget is quarantined this long (doubling per
    /// quarantine, capped at `quarantine_max_backoff`).
    pub quarantine_backoff: Dur,
    pub quarantine_max_backoff: Dur,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            backend_max_restarts: 5,
            backend_restart_window: Dur::secs(60),
            root_max_restarts: 3,
            root_restart_window: Dur::secs(60),
            quarantine_backoff: Dur::secs(300),
            quarantine_max_backoff: Dur::secs(3600),
        }
    }
}

/// `telemetry.otlp`: OpenTelemetry traces over OTLP/HTTP (off without an endpoint). Unset keys
/// fall back to the `OTEL_*` environment variables (`telemetry::trace::config`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector base URL (`http://collector:4318`); spans go to `<endpoint>/v1/traces`.
    pub endpoint: Option<String>,
    /// Extra request headers (e.g. an API key of a hosted collector).
    pub headers: BTreeMap<String, String>,
    /// Per export request (default 10s).
    pub timeout: Option<Dur>,
    /// Share of root requests traced, 0..=1 (parent-based: a client's sampled flag wins).
    pub sample_ratio: Option<f64>,
    /// Finished requests waiting for export at most (default 2048); beyond, spans are dropped.
    pub max_queue: Option<usize>,
    /// Requests per export at most (default 512).
    pub max_batch: Option<usize>,
    /// A batch leaves this long after its first request at the latest (default 5s).
    pub batch_interval: Option<Dur>,
    /// `service.name` of the spans (default `OTEL_SERVICE_NAME`, else `olla`).
    pub service_name: Option<String>,
}
