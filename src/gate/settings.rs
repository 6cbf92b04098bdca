//! The gate's part of the config resolved: CORS policy and its startup checks, Olla's rate
//! limits, inbound keys (`auth.keys`), the `/internal/*` access option, and the TLS
//! certificates of both listeners (loaded here, so a bad file is a startup or reload error).

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::cors::CorsPolicy;
use super::keys::{key_spec, KeySpec};
use crate::config::Config;
use crate::server::tls::ReloadableTls;

/// What the gate runs with.
#[derive(Clone, Debug, Default)]
pub struct GateSettings {
    pub cors: Option<Arc<CorsPolicy>>,
    pub global_requests_per_minute: i64,
    pub per_ip_requests_per_minute: i64,
    pub burst_size: i64,
    pub cleanup_interval: Duration,
    /// `None`: inbound keys are off.
    pub keys: Option<Vec<KeySpec>>,
    /// `/internal/*` only from these client networks (empty = any).
    pub internal_cidrs: Vec<IpNet>,
    /// `/internal/*` (but `/internal/health`) needs an inbound key.
    pub internal_require_key: bool,
    pub tls: Option<Arc<ReloadableTls>>,
    pub admin_tls: Option<Arc<ReloadableTls>>,
}

fn cidr(c: &str) -> Option<IpNet> {
    let c = c.trim();
    c.parse::<IpNet>()
        .ok()
        .or_else(|| c.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Resolves the gate's settings, appending every problem to `errors`.
pub fn resolve(config: &Config, errors: &mut Vec<String>) -> GateSettings {
    let s = &config.server;
    let cors = match CorsPolicy::from_config(&s.cors) {
        Ok(p) => p.map(Arc::new),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    let rl = &s.rate_limits;
    if rl.cleanup_interval.0.is_zero() && (rl.per_ip_requests_per_minute > 0) {
        errors.push("server.rate_limits.cleanup_interval: must be greater than 0".into());
    }
    let keys = config.auth.keys.as_ref().map(|entries| {
        let mut specs: Vec<KeySpec> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            match key_spec(e) {
                Ok(k) => {
                    if specs.iter().any(|p| p.name == k.name) {
                        errors.push(format!(
                            "auth.keys[{i}].name: duplicate key name {:?}",
                            &*k.name
                        ));
                    } else if specs.iter().any(|p| p.digest == k.digest) {
                        errors.push(format!(
                            "auth.keys[{i}] ({}): the same key is listed twice",
                            &*k.name
                        ));
                    } else {
                        specs.push(k);
                    }
                }
                Err(msg) => errors.push(format!("auth.keys[{i}]: {msg}")),
            }
        }
        specs
    });
    let ia = &s.internal_access;
    let mut internal_cidrs = Vec::new();
    for c in &ia.allowed_cidrs {
        match cidr(c) {
            Some(n) => internal_cidrs.push(n),
            None => errors.push(format!(
                "server.internal_access.allowed_cidrs: {c:?} is not a CIDR (e.g. 10.0.0.0/8)"
            )),
        }
    }
    if ia.require_api_key && keys.is_none() {
        errors.push(
            "server.internal_access.require_api_key: needs inbound keys (`auth.keys`)".into(),
        );
    }
    // The proxy port speaks HTTP/2 and HTTP/1.1; the admin listener HTTP/1.1 only.
    let mut load_tls = |t: &Option<crate::config::schema::TlsConfig>, what: &'static str| {
        let h2 = what == "server.tls";
        t.as_ref()
            .and_then(|files| match ReloadableTls::load(files, what, h2) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            })
    };
    let tls = load_tls(&s.tls, "server.tls");
    let admin_tls = load_tls(&config.admin.tls, "admin.tls");
    GateSettings {
        cors,
        global_requests_per_minute: rl.global_requests_per_minute,
        per_ip_requests_per_minute: rl.per_ip_requests_per_minute,
        burst_size: rl.burst_size,
        cleanup_interval: rl.cleanup_interval.0,
        keys,
        internal_cidrs,
        internal_require_key: ia.require_api_key,
        tls,
        admin_tls,
    }
}
