//! The `admin` section resolved: where the admin listener binds, its bearer token (inline or
//! from a file) and whether fault injection is on. A non-loopback address without a token is a
//! config error. Pure apart from reading `token_file`; never prints the token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::resolve::secret;
use super::schema::AdminConfig;

/// The admin listener's resolved settings.
#[derive(Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// `None`: no token required (loopback only).
    pub token: Option<String>,
    pub fault_injection: bool,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("fault_injection", &self.fault_injection)
            .finish()
    }
}

impl AdminSettings {
    /// No admin listener.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40115),
            token: None,
            fault_injection: false,
        }
    }
}

/// Parses `host:port` where host is an IP address or `localhost`.
pub fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    if let Ok(a) = raw.parse::<SocketAddr>() {
        return Ok(a);
    }
    match raw.rsplit_once(':') {
        Some(("localhost", port)) => port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| format!("invalid port in {raw:?}")),
        _ => Err(format!(
            "{raw:?} is not an address:port (e.g. 127.0.0.1:40115)"
        )),
    }
}

/// Resolves the `admin` section; `Err` lists every problem.
pub fn resolve_admin(cfg: &AdminConfig) -> Result<AdminSettings, Vec<String>> {
    let mut errors = Vec::new();
    let listen = match parse_listen(&cfg.listen) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(format!("admin.listen: {e}"));
            None
        }
    };
    let token = match (&cfg.token, &cfg.token_file) {
        (None, None) => None,
        (Some(t), _) if t.is_empty() && cfg.token_file.is_none() => {
            errors.push("admin.token: must not be empty".to_string());
            None
        }
        _ => match secret(&cfg.token, &cfg.token_file, "token") {
            Ok(t) if t.is_empty() => {
                errors.push("admin.token_file: the file is empty".to_string());
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("admin: {e}"));
                None
            }
        },
    };
    if let Some(addr) = listen {
        if cfg.enabled && token.is_none() && !addr.ip().is_loopback() && errors.is_empty() {
            errors.push(format!(
                "admin.listen: {addr} is not a loopback address; set admin.token or admin.token_file to expose the admin endpoint"
            ));
        }
    }
    match listen {
        Some(listen) if errors.is_empty() => Ok(AdminSettings {
            enabled: cfg.enabled,
            listen,
            token,
            fault_injection: cfg.fault_injection,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, token: Option<&str>) -> AdminConfig {
        AdminConfig {
            enabled: true,
            listen: listen.into(),
            token: token.map(str::to_string),
            ..AdminConfig::default()
        }
    }

    #[test]
    fn loopback_needs_no_token_but_any_other_address_does() {
        let a = resolve_admin(&cfg("127.0.0.1:0", None)).unwrap();
        assert!(a.token.is_none());
        assert_eq!(
            resolve_admin(&cfg("localhost:9", None))
                .unwrap()
                .listen
                .port(),
            9
        );
        let err = resolve_admin(&cfg("0.0.0.0:40115", None)).unwrap_err();
        assert!(err[0].contains("not a loopback address"), "{err:?}");
        assert!(resolve_admin(&cfg("0.0.0.0:40115", Some("s3cret"))).is_ok());
        let mut off = cfg("0.0.0.0:40115", None);
        off.enabled = false;
        assert!(
            resolve_admin(&off).is_ok(),
            "a disabled listener is not checked"
        );
    }

    #[test]
    fn bad_address_empty_token_and_missing_file_are_reported_without_the_secret() {
        assert!(resolve_admin(&cfg("nonsense", None)).unwrap_err()[0].contains("admin.listen"));
        assert!(resolve_admin(&cfg("127.0.0.1:1", Some(""))).unwrap_err()[0].contains("empty"));
        let mut c = cfg("127.0.0.1:1", None);
        c.token_file = Some("/nonexistent/token".into());
        assert!(resolve_admin(&c).unwrap_err()[0].contains("cannot read token_file"));
        let dbg = format!(
            "{:?}",
            resolve_admin(&cfg("127.0.0.1:1", Some("s3cret"))).unwrap()
        );
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }
}

/// Header names whose values are secrets in `headers` blocks.
fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "key",
        "token",
        "secret",
        "password",
        "cookie",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The config as JSON with every secret redacted: tokens, keys and passwords are never
/// serialized (see the schema), and `headers` values that look like credentials are replaced.
pub fn redacted_config(cfg: &super::Config) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(endpoints) = v
        .pointer_mut("/discovery/static/endpoints")
        .and_then(|e| e.as_array_mut())
    {
        for ep in endpoints {
            if let Some(headers) = ep.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for (k, val) in headers.iter_mut() {
                    if secret_header(k) {
                        *val = serde_json::Value::String("<redacted>".into());
                    }
                }
            }
            if let Some(auth) = ep.get_mut("auth").and_then(|a| a.as_object_mut()) {
                for k in ["token", "key", "password"] {
                    if auth.contains_key(k) {
                        auth.insert(k.into(), serde_json::Value::String("<redacted>".into()));
                    }
                }
            }
        }
    }
    if let Some(admin) = v.get_mut("admin").and_then(|a| a.as_object_mut()) {
        admin.remove("token");
        admin.insert(
            "token".into(),
            serde_json::Value::String(
                if cfg.admin.token.is_some() || cfg.admin.token_file.is_some() {
                    "<redacted>".into()
                } else {
                    String::new()
                },
            ),
        );
    }
    v
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn secrets_never_appear() {
        let yaml = "admin: {enabled: true, listen: '127.0.0.1:0', token: admintok}\ndiscovery:\n  static:\n    endpoints:\n      - name: a\n        url: http://h:1\n        type: openai\n        headers: {X-Api-Key: hdrsecret, X-Tenant: acme}\n        auth: {type: bearer, token: authsecret}\n";
        let cfg = crate::config::parse(yaml, &|_| None).unwrap();
        let text = redacted_config(&cfg).to_string();
        for secret in ["admintok", "hdrsecret", "authsecret"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("acme"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
