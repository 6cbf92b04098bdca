//! CORS as Olla does it (rs/cors v1.11 behind `server.cors`): origin patterns (case-insensitive,
//! one `*` per entry), preflight answered 204 before routing and rate limiting, and the
//! `Access-Control-*` headers on other responses when the origin and method are allowed. A
//! disallowed origin is still served, only without CORS headers. Pure over headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::schema::CorsConfig;
use crate::http_util::{empty, Body};

/// Olla's default `Access-Control-Expose-Headers`: its 12 `X-Olla-*` headers.
pub const DEFAULT_EXPOSED: &[&str] = &[
    "X-Olla-Request-Id",
    "X-Olla-Endpoint",
    "X-Olla-Backend-Type",
    "X-Olla-Model",
    "X-Olla-Response-Time",
    "X-Olla-Routing-Strategy",
    "X-Olla-Routing-Decision",
    "X-Olla-Routing-Reason",
    "X-Olla-Mode",
    "X-Olla-Sticky-Session",
    "X-Olla-Sticky-Key-Source",
    "X-Olla-Session-Id",
];

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

#[derive(Clone, Debug)]
enum OriginPattern {
    Exact(String),
    Wild { prefix: String, suffix: String },
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(o) => o == origin,
            Self::Wild { prefix, suffix } => {
                origin.len() >= prefix.len() + suffix.len()
                    && origin.starts_with(prefix.as_str())
                    && origin.ends_with(suffix.as_str())
            }
        }
    }
}

/// The resolved CORS policy.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    origins: Vec<OriginPattern>,
    methods: Vec<String>,
    any_header: bool,
    headers: Vec<String>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
}

impl CorsPolicy {
    /// `None` when disabled; `Err` lists Olla's startup errors.
    pub fn from_config(c: &CorsConfig) -> Result<Option<Self>, Vec<String>> {
        if !c.enabled {
            return Ok(None);
        }
        let mut errors = Vec::new();
        if c.allowed_origins.iter().all(|o| o.trim().is_empty()) {
            errors.push(
                "server.cors.allowed_origins: must not be empty when CORS is enabled".to_string(),
            );
        }
        if c.max_age < 0 {
            errors.push(format!(
                "server.cors.max_age: {} must not be negative",
                c.max_age
            ));
        }
        let any_origin = c.allowed_origins.iter().any(|o| o.trim() == "*");
        if c.allow_credentials && any_origin {
            errors.push(
                "server.cors: allow_credentials cannot be combined with the `*` origin".to_string(),
            );
        }
        let exposed_list: Vec<String> = if c.exposed_headers.is_empty() {
            DEFAULT_EXPOSED.iter().map(|s| s.to_string()).collect()
        } else {
            c.exposed_headers
                .iter()
                .map(|s| s.trim().to_string())
                .collect()
        };
        let exposed = match HeaderValue::try_from(exposed_list.join(", ")) {
            Ok(v) => Some(v),
            Err(_) => {
                errors.push("server.cors.exposed_headers: not valid header names".to_string());
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let origins = c
            .allowed_origins
            .iter()
            .map(|o| o.trim().to_ascii_lowercase())
            .filter(|o| !o.is_empty() && o != "*")
            .map(|o| match o.split_once('*') {
                Some((p, s)) => OriginPattern::Wild {
                    prefix: p.to_string(),
                    suffix: s.to_string(),
                },
                None => OriginPattern::Exact(o),
            })
            .collect();
        Ok(Some(Self {
            any_origin,
            origins,
            methods: c
                .allowed_methods
                .iter()
                .map(|m| m.trim().to_ascii_uppercase())
                .collect(),
            any_header: c.allowed_headers.iter().any(|h| h.trim() == "*"),
            headers: c
                .allowed_headers
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            credentials: c.allow_credentials,
            max_age: (c.max_age > 0).then(|| HeaderValue::from(c.max_age)),
            exposed: exposed.filter(|v| !v.is_empty()),
        }))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let o = origin.to_ascii_lowercase();
        self.origins.iter().any(|p| p.matches(&o))
    }

    fn method_allowed(&self, method: &str) -> bool {
        method == "OPTIONS" || self.methods.iter().any(|m| m == method)
    }

    fn headers_allowed(&self, requested: &str) -> bool {
        self.any_header
            || requested
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .all(|h| h == "origin" || self.headers.contains(&h))
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`), or `None`
    /// when the request is not one.
    pub fn preflight(&self, method: &Method, h: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS {
            return None;
        }
        let requested = h.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.append(header::VARY, PREFLIGHT_VARY);
        let origin = h.get(header::ORIGIN);
        let req_headers = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let ok = origin
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| self.origin_allowed(o))
            && requested
                .to_str()
                .is_ok_and(|m| self.method_allowed(&m.to_ascii_uppercase()))
            && req_headers.map_or(Some(true), |v| {
                v.to_str().ok().map(|s| self.headers_allowed(s))
            }) == Some(true);
        if let (true, Some(origin)) = (ok, origin) {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(origin),
            );
            if let Ok(m) =
                HeaderValue::try_from(requested.to_str().unwrap_or_default().to_ascii_uppercase())
            {
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
            }
            if let Some(rh) = req_headers.filter(|v| !v.is_empty()) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, rh.clone());
            }
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(age) = &self.max_age {
                out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
            }
        }
        Some(resp)
    }

    /// The `Access-Control-Allow-Origin` value for an actual request: `Some` when its origin
    /// and method are allowed.
    pub fn allowed_origin(&self, method: &Method, h: &HeaderMap) -> Option<HeaderValue> {
        let origin = h.get(header::ORIGIN)?;
        let ok = origin.to_str().is_ok_and(|o| self.origin_allowed(o))
            && self.method_allowed(method.as_str());
        ok.then(|| self.allow_origin_value(origin))
    }

    /// Adds the headers of an actual (non-preflight) response.
    pub fn decorate(&self, allow_origin: Option<&HeaderValue>, out: &mut HeaderMap) {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = allow_origin else {
            return;
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.exposed {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::from_config(&CorsConfig {
            enabled: true,
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allowed_headers: vec!["Content-Type".into(), "Authorization".into()],
            ..CorsConfig::default()
        })
        .unwrap()
        .unwrap()
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn startup_checks_follow_olla() {
        let bad = |c: CorsConfig| CorsPolicy::from_config(&c).unwrap_err();
        let on = CorsConfig {
            enabled: true,
            ..CorsConfig::default()
        };
        assert!(CorsPolicy::from_config(&on).unwrap().is_some());
        assert!(CorsPolicy::from_config(&CorsConfig::default())
            .unwrap()
            .is_none());
        assert!(bad(CorsConfig {
            allowed_origins: vec![],
            ..on.clone()
        })[0]
            .contains("allowed_origins"));
        assert!(bad(CorsConfig {
            max_age: -1,
            ..on.clone()
        })[0]
            .contains("max_age"));
        assert!(bad(CorsConfig {
            allow_credentials: true,
            ..on
        })[0]
            .contains("credentials"));
    }

    #[test]
    fn preflight_echoes_only_for_allowed_origin_method_and_headers() {
        let p = policy(&["https://*.example.com", "http://LOCALHOST:3000"], true);
        let ok = req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ]);
        let r = p.preflight(&Method::OPTIONS, &ok).unwrap();
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "POST");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "300");
        assert_eq!(
            h["vary"],
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        );
        let local = req(&[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(p
            .preflight(&Method::OPTIONS, &local)
            .unwrap()
            .headers()
            .contains_key("access-control-allow-origin"));
        for bad in [
            req(&[
                ("origin", "https://evil.com"),
                ("access-control-request-method", "POST"),
            ]),
            req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ]),
            req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-secret"),
            ]),
        ] {
            let r = p.preflight(&Method::OPTIONS, &bad).unwrap();
            assert_eq!(r.status(), 204);
            assert!(!r.headers().contains_key("access-control-allow-origin"));
            assert!(r.headers().contains_key("vary"));
        }
        assert!(
            p.preflight(
                &Method::OPTIONS,
                &req(&[("origin", "https://a.example.com")])
            )
            .is_none(),
            "bare OPTIONS is routed"
        );
        assert!(p.preflight(&Method::POST, &ok).is_none());
    }

    #[test]
    fn actual_requests_get_origin_and_expose_headers_when_allowed() {
        let p = policy(&["*"], false);
        let h = req(&[("origin", "https://anything.dev")]);
        let allow = p.allowed_origin(&Method::POST, &h);
        assert_eq!(allow.as_ref().unwrap(), "*");
        let mut out = HeaderMap::new();
        p.decorate(allow.as_ref(), &mut out);
        assert_eq!(out["vary"], "Origin");
        assert!(out["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .starts_with("X-Olla-Request-Id, X-Olla-Endpoint"));
        assert!(!out.contains_key("access-control-allow-credentials"));
        assert!(
            p.allowed_origin(&Method::DELETE, &h).is_none(),
            "method not listed"
        );
        let strict = policy(&["https://ok.dev"], false);
        let mut out = HeaderMap::new();
        strict.decorate(
            strict
                .allowed_origin(&Method::GET, &req(&[("origin", "https://no.dev")]))
                .as_ref(),
            &mut out,
        );
        assert!(!out.contains_key("access-control-allow-origin"));
        assert_eq!(out["vary"], "Origin");
    }
}
