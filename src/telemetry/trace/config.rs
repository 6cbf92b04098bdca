//! `telemetry.otlp` resolved with the OpenTelemetry environment variables into
//! [`OtlpSettings`] (tracing is off when no endpoint results).
//!
//! Precedence, per setting: the config file key, then the trace-specific variable, then the
//! generic one, then the default.
//!
//! | setting | config key | environment | default |
//! |---|---|---|---|
//! | traces URL | `endpoint` (base URL; `/v1/traces` appended) | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is), `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) | off |
//! | headers | `headers` (map) | `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, values percent-decoded) | none |
//! | timeout | `timeout` | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds) | 10s |
//! | sampler | `sample_ratio` (parent-based ratio) | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` |
//! | service name | `service_name` | `OTEL_SERVICE_NAME` | `olla` |
//!
//! `OTEL_SDK_DISABLED=true` turns tracing off whatever else is set. A malformed value (file or
//! environment) is a startup error naming it.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::context::Sampler;
use crate::config::schema::OtlpConfig;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_QUEUE: usize = 2048;
pub const DEFAULT_MAX_BATCH: usize = 512;
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_secs(5);
const MAX_QUEUE_LIMIT: usize = 1 << 20;
const MAX_BATCH_LIMIT: usize = 1 << 16;

/// The exporter's resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub traces_url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub sampler: Sampler,
    /// Requests waiting for export at most; beyond it new ones are dropped.
    pub max_queue: usize,
    /// Requests per export at most.
    pub max_batch: usize,
    /// A batch leaves when full or this long after its first request.
    pub batch_interval: Duration,
    pub service_name: String,
}

fn traces_url(base: &str, append: bool) -> Result<Uri, String> {
    let base = base.trim();
    let full = if append && !base.trim_end_matches('/').ends_with("/v1/traces") {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    } else {
        base.to_owned()
    };
    let uri: Uri = full
        .parse()
        .map_err(|e| format!("{base:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("{base:?} must be an http:// or https:// URL")),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::try_from(name.trim()).map_err(|_| format!("bad header name {name:?}"))?;
    let v = HeaderValue::try_from(value.trim())
        .map_err(|_| format!("bad value for header {name:?}"))?;
    Ok((n, v))
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, values percent-encoded).
pub fn parse_env_headers(s: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            header(k, &percent_decode(v))
        })
        .collect()
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} must be a number from 0 to 1")),
    }
}

/// Parses `OTEL_TRACES_SAMPLER` (and its `_ARG` for the ratio samplers).
pub fn parse_env_sampler(name: &str, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = || arg.map_or(Ok(1.0), parse_ratio);
    Ok(match name.trim() {
        "always_on" => Sampler {
            parent_based: false,
            root_ratio: 1.0,
        },
        "always_off" => Sampler {
            parent_based: false,
            root_ratio: 0.0,
        },
        "traceidratio" => Sampler {
            parent_based: false,
            root_ratio: ratio()?,
        },
        "parentbased_always_on" => Sampler::default(),
        "parentbased_always_off" => Sampler {
            parent_based: true,
            root_ratio: 0.0,
        },
        "parentbased_traceidratio" => Sampler {
            parent_based: true,
            root_ratio: ratio()?,
        },
        other => {
            return Err(format!(
                "{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ))
        }
    })
}

/// Resolves `telemetry.otlp` with the environment (`env` looks a variable up); problems go to
/// `errors`. `None` = tracing off.
pub fn resolve_otlp(
    cfg: &OtlpConfig,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<OtlpSettings> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let url = if let Some(e) = cfg.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
        traces_url(e, true).map_err(|m| format!("telemetry.otlp.endpoint: {m}"))
    } else if let Some(e) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        traces_url(&e, false).map_err(|m| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {m}"))
    } else if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        traces_url(&e, true).map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))
    } else {
        return None;
    };
    let mut problems = Vec::new();
    let mut headers = Vec::new();
    if !cfg.headers.is_empty() {
        for (k, v) in &cfg.headers {
            match header(k, v) {
                Ok(h) => headers.push(h),
                Err(m) => problems.push(format!("telemetry.otlp.headers: {m}")),
            }
        }
    } else if let Some((name, v)) = [
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ]
    .iter()
    .find_map(|k| var(k).map(|v| (*k, v)))
    {
        match parse_env_headers(&v) {
            Ok(h) => headers = h,
            Err(m) => problems.push(format!("{name}: {m}")),
        }
    }
    let timeout = match cfg.timeout {
        Some(d) if d.0.is_zero() => {
            problems.push("telemetry.otlp.timeout: must be greater than 0".into());
            DEFAULT_TIMEOUT
        }
        Some(d) => d.0,
        None => match [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .iter()
        .find_map(|k| var(k).map(|v| (*k, v)))
        {
            Some((name, v)) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    problems.push(format!(
                        "{name}: {v:?} must be a positive number of milliseconds"
                    ));
                    DEFAULT_TIMEOUT
                }
            },
            None => DEFAULT_TIMEOUT,
        },
    };
    let sampler = match cfg.sample_ratio {
        Some(r) if (0.0..=1.0).contains(&r) => Sampler {
            parent_based: true,
            root_ratio: r,
        },
        Some(r) => {
            problems.push(format!(
                "telemetry.otlp.sample_ratio: {r} must be from 0 to 1"
            ));
            Sampler::default()
        }
        None => match var("OTEL_TRACES_SAMPLER") {
            Some(name) => parse_env_sampler(&name, var("OTEL_TRACES_SAMPLER_ARG").as_deref())
                .unwrap_or_else(|m| {
                    problems.push(format!("OTEL_TRACES_SAMPLER: {m}"));
                    Sampler::default()
                }),
            None => Sampler::default(),
        },
    };
    let mut count = |key: &str, v: Option<usize>, default: usize, max: usize| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            problems.push(format!("telemetry.otlp.{key}: {n} must be from 1 to {max}"));
            default
        }
    };
    let max_queue = count(
        "max_queue",
        cfg.max_queue,
        DEFAULT_MAX_QUEUE,
        MAX_QUEUE_LIMIT,
    );
    let max_batch = count(
        "max_batch",
        cfg.max_batch,
        DEFAULT_MAX_BATCH,
        MAX_BATCH_LIMIT,
    );
    let batch_interval = match cfg.batch_interval {
        Some(d) if d.0.is_zero() => {
            problems.push("telemetry.otlp.batch_interval: must be greater than 0".into());
            DEFAULT_BATCH_INTERVAL
        }
        Some(d) => d.0,
        None => DEFAULT_BATCH_INTERVAL,
    };
    let service_name = cfg
        .service_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| "olla".into());
    let traces_url = match url {
        Ok(u) => u,
        Err(m) => {
            problems.push(m);
            errors.append(&mut problems);
            return None;
        }
    };
    if !problems.is_empty() {
        errors.append(&mut problems);
        return None;
    }
    Some(OtlpSettings {
        traces_url,
        headers,
        timeout,
        sampler,
        max_queue,
        max_batch,
        batch_interval,
        service_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::duration::Dur;
    use std::collections::HashMap;

    fn run(cfg: &OtlpConfig, vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut errors = Vec::new();
        let s = resolve_otlp(cfg, &|k| map.get(k).cloned(), &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(run(&OtlpConfig::default(), &[]), Ok(None));
        let cfg = OtlpConfig {
            endpoint: Some("http://c:4318".into()),
            ..OtlpConfig::default()
        };
        assert_eq!(run(&cfg, &[("OTEL_SDK_DISABLED", "true")]), Ok(None));
    }

    #[test]
    fn config_endpoint_wins_and_gets_the_traces_path() {
        let cfg = OtlpConfig {
            endpoint: Some("http://collector:4318/".into()),
            ..OtlpConfig::default()
        };
        let s = run(&cfg, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:1")])
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(s.sampler, Sampler::default());
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.service_name, "olla");
    }

    #[test]
    fn environment_variables_follow_the_spec() {
        let s = run(
            &OtlpConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gen:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://t:4318/custom",
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x-tenant=t1"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ("OTEL_SERVICE_NAME", "edge-proxy"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.traces_url, "https://t:4318/custom",
            "the signal URL is used as is"
        );
        assert_eq!(s.headers.len(), 2);
        assert_eq!(s.headers[0].1, "a b");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(
            s.sampler,
            Sampler {
                parent_based: true,
                root_ratio: 0.1
            }
        );
        assert_eq!(s.service_name, "edge-proxy");
        let s = run(
            &OtlpConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gen:4318")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces_url, "http://gen:4318/v1/traces");
    }

    #[test]
    fn malformed_values_are_errors() {
        let bad = OtlpConfig {
            endpoint: Some("collector:4318".into()),
            sample_ratio: Some(1.5),
            max_queue: Some(0),
            batch_interval: Some(Dur(Duration::ZERO)),
            ..OtlpConfig::default()
        };
        let errs = run(&bad, &[]).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("sample_ratio")));
        let errs = run(
            &OtlpConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_TRACES_SAMPLER", "sometimes"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn yaml_keys_reach_the_settings_and_mistakes_are_reported() {
        let yaml = "telemetry:\n  otlp:\n    endpoint: http://c:4318\n    headers: {x-key: k}\n    timeout: 3s\n    sample_ratio: 0.5\n    max_queue: 10\n    max_batch: 5\n    batch_interval: 1s\n    service_name: edge\nproxy:\n  inject_stream_usage: true\n";
        let cfg = crate::config::parse(yaml, &|_| None).unwrap();
        assert!(cfg.proxy.inject_stream_usage);
        let s = run(&cfg.telemetry.otlp, &[]).unwrap().unwrap();
        assert_eq!(s.traces_url, "http://c:4318/v1/traces");
        assert_eq!(s.headers[0].0, "x-key");
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.sampler.root_ratio, 0.5);
        assert_eq!((s.max_queue, s.max_batch), (10, 5));
        assert_eq!(s.batch_interval, Duration::from_secs(1));
        assert_eq!(s.service_name, "edge");
        let unknown = crate::config::parse("telemetry:\n  otlp:\n    endpont: x\n", &|_| None);
        assert!(unknown.unwrap_err().contains("endpont"));
        let bad = crate::config::parse("telemetry:\n  otlp:\n    endpoint: ftp://c\n", &|_| None)
            .unwrap();
        let errs = crate::config::resolve(&bad).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("telemetry.otlp.endpoint")),
            "{errs:?}"
        );
        assert!(
            crate::config::resolve(&crate::config::parse("", &|_| None).unwrap())
                .unwrap()
                .server
                .otlp
                .is_none_or(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok()
                    || std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_ok())
        );
    }

    #[test]
    fn samplers_by_name() {
        assert_eq!(
            parse_env_sampler("always_off", None).unwrap().root_ratio,
            0.0
        );
        assert!(
            !parse_env_sampler("traceidratio", Some("0.5"))
                .unwrap()
                .parent_based
        );
        assert!(parse_env_sampler("traceidratio", Some("2")).is_err());
        assert_eq!(
            parse_env_sampler("parentbased_always_off", None)
                .unwrap()
                .root_ratio,
            0.0
        );
    }
}
