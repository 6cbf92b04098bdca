//! Config keys olla accepts (Olla's configs must load unchanged) but does not act on yet, kept
//! in ONE list, [`INERT`]: each one a config file sets earns a startup warning naming it and a
//! line in `--validate-config`. A feature that starts honouring a key removes its entry here.
//! Also the redaction of secrets in config errors: no error or log prints a URL's userinfo or
//! the value of a secret key. Pure functions over the parsed YAML; no logging here.

use serde_yaml::Value;

/// `(key path, what happens instead)`. A path segment `[]` means every item of a list.
pub const INERT: &[(&str, &str)] = &[
    (
        "server.rate_limits.health_requests_per_minute",
        "ignored, as in Olla: /internal/health is not rate-limited",
    ),
    (
        "proxy.engine",
        "one engine here; the value is only shown in status",
    ),
    (
        "proxy.profile",
        "responses are always streamed; the value is only shown in status",
    ),
    ("proxy.stream_buffer_size", "ignored"),
    ("proxy.max_retries", "ignored (deprecated in Olla)"),
    ("proxy.retry_backoff", "ignored (deprecated in Olla)"),
    (
        "proxy.retry.max_attempts",
        "ignored: each candidate endpoint is tried at most once",
    ),
    ("proxy.profile_filter", "ignored: every profile is loaded"),
    (
        "proxy.tls_handshake_timeout",
        "ignored: the connect timeout covers the TLS handshake",
    ),
    ("discovery.type", "only static discovery exists"),
    ("discovery.refresh_interval", "ignored (static endpoints)"),
    (
        "discovery.model_discovery.concurrent_workers",
        "ignored: each endpoint discovers its own models",
    ),
    ("discovery.model_discovery.retry_attempts", "ignored"),
    ("discovery.model_discovery.retry_backoff", "ignored"),
    (
        "discovery.static.endpoints[].preserve_path",
        "ignored: the route path is joined to the endpoint URL",
    ),
    ("model_registry.type", "only the in-memory registry exists"),
    (
        "model_registry.enable_unifier",
        "ignored: models are always unified",
    ),
    (
        "model_registry.unification.enabled",
        "ignored: models are always unified",
    ),
    ("model_registry.unification.cleanup_interval", "ignored"),
    (
        "translators",
        "translator settings are not read; the Anthropic routes use built-in settings",
    ),
    (
        "dashboard.gate_internal_api",
        "ignored (inert in Olla too); server.internal_access restricts /internal/*",
    ),
];

/// A key the config sets that olla does not act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InertKey {
    pub path: &'static str,
    pub effect: &'static str,
}

impl std::fmt::Display for InertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: accepted but not acted on ({})",
            self.path, self.effect
        )
    }
}

/// The [`INERT`] keys present in a config's YAML tree.
pub fn present(root: &Value) -> Vec<InertKey> {
    INERT
        .iter()
        .filter(|(path, _)| sets(root, path))
        .map(|&(path, effect)| InertKey { path, effect })
        .collect()
}

/// `path` (dot-separated, `[]` = each list item) exists under `v`.
fn sets(v: &Value, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let (key, each) = match head.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (head, false),
    };
    let Some(child) = v.as_mapping().and_then(|m| m.get(key)) else {
        return false;
    };
    match (each, rest) {
        (false, None) => true,
        (false, Some(r)) => sets(child, r),
        (true, None) => child.as_sequence().is_some_and(|s| !s.is_empty()),
        (true, Some(r)) => child
            .as_sequence()
            .is_some_and(|items| items.iter().any(|i| sets(i, r))),
    }
}

/// Key names whose values are secrets.
const SECRET_NAMES: &[&str] = &[
    "auth",
    "token",
    "key",
    "password",
    "secret",
    "headers",
    "api_key",
    "authorization",
];

/// A config key path (`a.b[0].c`) names a secret value or a block holding them.
pub fn is_secret_path(path: &str) -> bool {
    path.split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .any(|s| {
            !s.ends_with("_file")
                && (SECRET_NAMES.contains(&s.as_str())
                    || s.ends_with("_key")
                    || s.ends_with("_token")
                    || s.ends_with("_password"))
        })
}

/// Replaces every quoted (`"…"` or `` `…` ``) part of an error message, where parsers echo
/// the offending value.
pub fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in msg.chars() {
        match open {
            Some(q) if c == q => {
                out.push_str("<redacted>");
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push_str("<redacted>");
    }
    out
}

/// A URL as it may appear in an error: any userinfo (`user:password@`) replaced.
pub fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_string();
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://<redacted>@{}", &raw[..scheme_end], &rest[at + 1..]),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn lists_only_the_inert_keys_a_config_sets() {
        let v = yaml(
            "server:\n  port: 1\n  rate_limits: {burst_size: 5, health_requests_per_minute: 9}\nproxy:\n  profile_filter: {include: [a]}\ndashboard: {enabled: false, gate_internal_api: true}\n",
        );
        let paths: Vec<_> = present(&v).into_iter().map(|k| k.path).collect();
        assert_eq!(
            paths,
            vec![
                "server.rate_limits.health_requests_per_minute",
                "proxy.profile_filter",
                "dashboard.gate_internal_api"
            ]
        );
        assert!(present(&yaml("server: {port: 1}\n")).is_empty());
        let v = yaml("discovery:\n  static:\n    endpoints:\n      - {name: a}\n      - {name: b, preserve_path: true}\n");
        assert_eq!(
            present(&v)[0].path,
            "discovery.static.endpoints[].preserve_path"
        );
        assert!(present(&yaml("discovery: {static: {endpoints: [{name: a}]}}")).is_empty());
    }

    #[test]
    fn every_inert_path_is_a_key_of_the_schema() {
        // Serialising the defaults gives every key; an entry that names none is a typo.
        let mut all = serde_yaml::to_value(crate::config::Config::default()).unwrap();
        if let Some(list) = all
            .get_mut("discovery")
            .and_then(|d| d.get_mut("static"))
            .and_then(|s| s.get_mut("endpoints"))
        {
            *list = serde_yaml::to_value(vec![crate::config::schema::EndpointConfig::default()])
                .unwrap();
        }
        for (path, _) in INERT {
            assert!(sets(&all, path), "{path} is not a config key");
        }
    }

    #[test]
    fn secrets_are_recognised_and_redacted() {
        assert!(is_secret_path("discovery.static.endpoints[0].auth"));
        assert!(is_secret_path("discovery.static.endpoints[0].auth.token"));
        assert!(is_secret_path("x.headers.X-Api-Key"));
        assert!(
            !is_secret_path("x.token_file"),
            "a file path is not the secret"
        );
        assert!(!is_secret_path("server.port"));
        assert_eq!(
            redact_quoted(r#"invalid type: string "sk-live-123", expected struct AuthConfig"#),
            r#"invalid type: string "<redacted>", expected struct AuthConfig"#
        );
        assert_eq!(
            redact_quoted("unterminated \"sk"),
            "unterminated \"<redacted>"
        );
        assert_eq!(
            redact_userinfo("http://admin:hunter2@10.0.0.1:8080/v1?x=@"),
            "http://<redacted>@10.0.0.1:8080/v1?x=@"
        );
        assert_eq!(redact_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }
}
