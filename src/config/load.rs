//! Reading a config: the file lookup order, `${VAR}` / `${VAR:-default}` interpolation in
//! values, `OLLA_*` environment overrides, and parse errors that name the key's path and the
//! nearest valid key.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::schema::Config;

/// Where the config came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

/// The lookup order after `-c/--config` and `OLLA_CONFIG_FILE`.
pub const DEFAULT_PATHS: &[&str] = &[
    "config/config.local.yaml",
    "config/config.yaml",
    "config.yaml",
    "default.yaml",
];

/// Finds the config file: explicit path, then `OLLA_CONFIG_FILE`, then [`DEFAULT_PATHS`].
/// An explicit path that does not exist is an error.
pub fn locate(explicit: Option<&Path>) -> Result<Source, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(Source::File(p.to_path_buf()))
        } else {
            Err(format!("config file {} not found", p.display()))
        };
    }
    if let Ok(p) = std::env::var("OLLA_CONFIG_FILE") {
        if !p.is_empty() {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(Source::File(p))
            } else {
                Err(format!(
                    "config file {} (from OLLA_CONFIG_FILE) not found",
                    p.display()
                ))
            };
        }
    }
    Ok(DEFAULT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map(Source::File)
        .unwrap_or(Source::Defaults))
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse(&text, &|k| std::env::var(k).ok()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses YAML text with interpolation and environment overrides taken from `env`.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let mut value: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    interpolate(&mut value, env)?;
    apply_env_overrides(&mut value, env)?;
    let inert = super::inert::present(&value);
    let mut config: Config = serde_path_to_error::deserialize(value).map_err(describe_error)?;
    config.inert = inert;
    Ok(config)
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string value. A value that becomes a plain
/// scalar (e.g. `"8080"`) is re-read as YAML so numbers and booleans keep their type.
fn interpolate(v: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains("${") => {
            let replaced = substitute(s, env)?;
            *v = match serde_yaml::from_str::<Value>(&replaced) {
                Ok(parsed @ (Value::Number(_) | Value::Bool(_))) => parsed,
                _ => Value::String(replaced),
            };
        }
        Value::Sequence(items) => {
            for i in items {
                interpolate(i, env)?;
            }
        }
        Value::Mapping(m) => {
            for (_, val) in m.iter_mut() {
                interpolate(val, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands the `${...}` references in one string.
pub fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{...}} in {s:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in {s:?}"));
        }
        match (env(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (used as ${{{name}}}; give a default with ${{{name}:-value}})"
                ))
            }
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `OLLA_*` variables that override a config key.
const ENV_OVERRIDES: &[(&str, &[&str])] = &[
    ("OLLA_SERVER_HOST", &["server", "host"]),
    ("OLLA_SERVER_PORT", &["server", "port"]),
    (
        "OLLA_SERVER_SHUTDOWN_TIMEOUT",
        &["server", "shutdown_timeout"],
    ),
    (
        "OLLA_SERVER_MAX_BODY_SIZE",
        &["server", "request_limits", "max_body_size"],
    ),
    (
        "OLLA_SERVER_MAX_HEADER_SIZE",
        &["server", "request_limits", "max_header_size"],
    ),
    ("OLLA_PROXY_ENGINE", &["proxy", "engine"]),
    ("OLLA_PROXY_PROFILE", &["proxy", "profile"]),
    ("OLLA_PROXY_LOAD_BALANCER", &["proxy", "load_balancer"]),
    (
        "OLLA_PROXY_STICKY_SESSIONS_ENABLED",
        &["proxy", "sticky_sessions", "enabled"],
    ),
    (
        "OLLA_PROXY_CONNECTION_TIMEOUT",
        &["proxy", "connection_timeout"],
    ),
    (
        "OLLA_PROXY_RESPONSE_TIMEOUT",
        &["proxy", "response_timeout"],
    ),
    ("OLLA_PROXY_READ_TIMEOUT", &["proxy", "read_timeout"]),
    (
        "OLLA_TRANSLATORS_ANTHROPIC_ENABLED",
        &["translators", "anthropic", "enabled"],
    ),
    (
        "OLLA_TRANSLATORS_ANTHROPIC_PASSTHROUGH_ENABLED",
        &["translators", "anthropic", "passthrough_enabled"],
    ),
    (
        "OLLA_TRANSLATORS_ANTHROPIC_MAX_MESSAGE_SIZE",
        &["translators", "anthropic", "max_message_size"],
    ),
    ("OLLA_LOGGING_LEVEL", &["logging", "level"]),
    ("OLLA_LOG_LEVEL", &["logging", "level"]),
    ("OLLA_LOGGING_FORMAT", &["logging", "format"]),
    ("OLLA_LOG_FORMAT", &["logging", "format"]),
    ("OLLA_SERVER_CORS_ENABLED", &["server", "cors", "enabled"]),
    (
        "OLLA_SERVER_CORS_ALLOWED_ORIGINS",
        &["server", "cors", "allowed_origins"],
    ),
    (
        "OLLA_SERVER_CORS_ALLOWED_METHODS",
        &["server", "cors", "allowed_methods"],
    ),
    (
        "OLLA_SERVER_CORS_ALLOWED_HEADERS",
        &["server", "cors", "allowed_headers"],
    ),
    (
        "OLLA_SERVER_CORS_EXPOSED_HEADERS",
        &["server", "cors", "exposed_headers"],
    ),
    (
        "OLLA_SERVER_CORS_ALLOW_CREDENTIALS",
        &["server", "cors", "allow_credentials"],
    ),
    ("OLLA_SERVER_CORS_MAX_AGE", &["server", "cors", "max_age"]),
];

/// Overridden keys that are lists: the variable holds comma-separated items.
const ENV_LIST_KEYS: &[&str] = &[
    "allowed_origins",
    "allowed_methods",
    "allowed_headers",
    "exposed_headers",
];

fn apply_env_overrides(v: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    for (var, path) in ENV_OVERRIDES {
        let Some(raw) = env(var).filter(|s| !s.is_empty()) else {
            continue;
        };
        let list = path.last().is_some_and(|k| ENV_LIST_KEYS.contains(k));
        let parsed = match serde_yaml::from_str::<Value>(&raw) {
            _ if list => Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            Ok(p @ (Value::Number(_) | Value::Bool(_))) => p,
            _ => Value::String(raw),
        };
        let mut cur = &mut *v;
        for (i, key) in path.iter().enumerate() {
            let Value::Mapping(m) = cur else {
                return Err(format!("{var}: {} is not a mapping", path[..i].join(".")));
            };
            let k = Value::String(key.to_string());
            if i + 1 == path.len() {
                m.insert(k, parsed.clone());
                break;
            }
            cur = m
                .entry(k)
                .or_insert_with(|| Value::Mapping(Default::default()));
        }
    }
    Ok(())
}

/// Turns a serde error into "at `path`: message", with a suggestion for an unknown key. Under a
/// secret key (auth, token, password, headers...) every value the parser echoes is redacted.
fn describe_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = e.path().to_string();
    let msg = e.inner().to_string();
    if super::inert::is_secret_path(&path) {
        return format!("at `{path}`: {}", super::inert::redact_quoted(&msg));
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let parent = path
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let mut out = if parent.is_empty() || parent == "." {
            format!("unknown key `{unknown}` at the top level")
        } else {
            format!("unknown key `{unknown}` in `{parent}`")
        };
        if let Some(best) = nearest(unknown, &expected) {
            out.push_str(&format!("; did you mean `{best}`?"));
        }
        if !expected.is_empty() {
            out.push_str(&format!(" (valid keys: {})", expected.join(", ")));
        }
        return out;
    }
    if path.is_empty() || path == "." {
        msg
    } else {
        format!("at `{path}`: {msg}")
    }
}

/// The candidate closest to `word` (Jaro-Winkler ≥ 0.7, or a prefix/suffix relation).
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, c)| *score >= 0.7 || c.contains(word) || word.contains(*c))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn unknown_key_names_path_and_suggests() {
        let e = parse("server:\n  prot: 1\n", &env(&[])).unwrap_err();
        assert!(e.contains("unknown key `prot` in `server`"), "{e}");
        assert!(e.contains("did you mean `port`"), "{e}");
        let e = parse("discovery:\n  static:\n    endpoints:\n      - name: a\n        url: http://x\n        type: ollama\n        check_intervall: 5s\n", &env(&[])).unwrap_err();
        assert!(e.contains("discovery.static.endpoints[0]"), "{e}");
        assert!(e.contains("did you mean `check_interval`"), "{e}");
        let e = parse("sever: {}\n", &env(&[])).unwrap_err();
        assert!(
            e.contains("at the top level") && e.contains("`server`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_its_path() {
        let e = parse("server:\n  shutdown_timeout: 10\n", &env(&[])).unwrap_err();
        assert!(
            e.contains("server.shutdown_timeout") && e.contains("missing unit"),
            "{e}"
        );
    }

    #[test]
    fn interpolates_values_with_types_and_defaults() {
        let c = parse(
            "server:\n  port: ${PORT}\n  host: ${HOST:-0.0.0.0}\n",
            &env(&[("PORT", "8080")]),
        )
        .unwrap();
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.server.host, "0.0.0.0");
        let e = parse("server:\n  host: ${NOPE}\n", &env(&[])).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
    }

    #[test]
    fn env_overrides_apply() {
        let c = parse(
            "server:\n  port: 1\n",
            &env(&[
                ("OLLA_SERVER_PORT", "9999"),
                ("OLLA_LOG_LEVEL", "debug"),
                ("OLLA_PROXY_STICKY_SESSIONS_ENABLED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.port, 9999);
        assert_eq!(c.logging.level, "debug");
        assert!(c.proxy.sticky_sessions.enabled);
        let c = parse(
            "",
            &env(&[
                ("OLLA_SERVER_CORS_ENABLED", "true"),
                (
                    "OLLA_SERVER_CORS_ALLOWED_ORIGINS",
                    "https://a.dev, https://*.b.dev",
                ),
                ("OLLA_SERVER_CORS_MAX_AGE", "60"),
            ]),
        )
        .unwrap();
        assert!(c.server.cors.enabled);
        assert_eq!(
            c.server.cors.allowed_origins,
            vec!["https://a.dev", "https://*.b.dev"]
        );
        assert_eq!(c.server.cors.max_age, 60);
        assert_eq!(
            c.server.cors.allowed_methods,
            vec!["GET", "POST", "OPTIONS"]
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("", &env(&[])).unwrap();
        assert_eq!(c.server.port, 40114);
        assert_eq!(c.server.host, "localhost");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Pieces a YAML config is made of, so generated text reaches deep into the schema.
    const PIECES: &[&str] = &[
        "server:",
        "proxy:",
        "discovery:",
        "static:",
        "endpoints:",
        "- ",
        "  ",
        "\n",
        ": ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "name: a",
        "url: http://h:1",
        "type: ollama",
        "port: ",
        "timeouts:",
        "total: ",
        "5s",
        "-1",
        "99999999999999999999",
        "1e400",
        "${X}",
        "${X:-",
        "&a",
        "*a",
        "!!binary",
        "~",
        "null",
        "true",
        "'",
        "\"",
        "#",
        "auth:",
        "token: ",
        "rate_limits:",
        "max_header_size: ",
        "check_interval: ",
        "h",
        "µ",
        "\t",
        "? ",
        "|",
        ">",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text, &|_| Some("7".into()));
        }

        #[test]
        fn yaml_ish_text_never_panics(idx in proptest::collection::vec(0..PIECES.len(), 0..64)) {
            let text: String = idx.iter().map(|&i| PIECES[i]).collect();
            if let Ok(config) = parse(&text, &|_| None) {
                let _ = crate::config::resolve(&config);
            }
        }
    }
}
