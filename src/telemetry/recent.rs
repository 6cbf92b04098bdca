//! The recent-requests ring behind `GET /internal/stats/recent`: the last [`CAPACITY`] proxied
//! requests, newest first, and lifetime totals. It is a [`FinishObserver`]: each finish writes
//! one slot (a per-slot lock, picked by an atomic cursor, so finishing requests do not queue
//! behind one lock). Bounded in memory: fixed slots, strings cut at [`MAX_FIELD`] bytes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::Method;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use super::context::{EndpointName, FinishRecord};
use super::FinishObserver;

pub const CAPACITY: usize = 512;
/// Default `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Longest string kept per field (paths and model names can be long).
pub const MAX_FIELD: usize = 256;

/// One request as the route shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RecentEntry {
    #[serde(serialize_with = "as_rfc3339")]
    pub time: SystemTime,
    pub request_id: String,
    /// Shared, not copied: a standard method and the endpoint's name need no allocation.
    #[serde(serialize_with = "as_str")]
    pub method: Method,
    pub path: String,
    pub route: &'static str,
    pub model: Option<String>,
    #[serde(serialize_with = "name_of")]
    pub endpoint: Option<EndpointName>,
    pub status: u16,
    pub stream: bool,
    pub ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    pub bytes_out: u64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub failovers: u32,
    /// Formatted only when shown (serialised as the usual text form).
    pub client: IpAddr,
    pub key: Option<String>,
    #[serde(skip)]
    seq: u64,
}

fn as_str<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

fn name_of<S: serde::Serializer>(e: &Option<EndpointName>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(name) => s.serialize_str(name),
        None => s.serialize_none(),
    }
}

fn as_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::format::rfc3339(*t))
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// See the module doc.
pub struct RecentRing {
    slots: Box<[Mutex<Option<RecentEntry>>]>,
    cursor: AtomicU64,
    pub requests: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
}

impl Default for RecentRing {
    fn default() -> Self {
        Self {
            slots: (0..CAPACITY).map(|_| Mutex::new(None)).collect(),
            cursor: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors_4xx: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
        }
    }
}

impl RecentRing {
    /// The newest `limit` entries (at most the capacity), newest first.
    pub fn latest(&self, limit: usize) -> Vec<RecentEntry> {
        let mut all: Vec<RecentEntry> =
            self.slots.iter().filter_map(|s| s.lock().clone()).collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.seq));
        all.truncate(limit.min(CAPACITY));
        all
    }

    /// The route's document.
    pub fn document(&self, limit: usize, in_flight: i64) -> Value {
        json!({
            "capacity": CAPACITY,
            "totals": {
                "requests": self.requests.load(Ordering::Relaxed),
                "errors_4xx": self.errors_4xx.load(Ordering::Relaxed),
                "errors_5xx": self.errors_5xx.load(Ordering::Relaxed),
                "in_flight": in_flight.max(0),
            },
            "requests": self.latest(limit),
        })
    }
}

/// `limit` from a query string: default [`DEFAULT_LIMIT`], clamped to the capacity; anything
/// unparsable is the default.
pub fn parse_limit(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(CAPACITY)
}

impl FinishObserver for RecentRing {
    fn on_finish(&self, rec: &FinishRecord) {
        if !rec.route.is_proxy() {
            return;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match rec.status {
            400..=499 => self.errors_4xx.fetch_add(1, Ordering::Relaxed),
            500.. => self.errors_5xx.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let seq = self.cursor.fetch_add(1, Ordering::Relaxed);
        let entry = RecentEntry {
            time: rec.received_at,
            request_id: cut(&rec.request_id),
            method: rec.method.clone(),
            path: cut(&rec.path),
            route: rec.route.as_str(),
            model: rec.model.as_deref().map(cut),
            endpoint: rec.endpoint.clone(),
            status: rec.status,
            stream: rec.stream,
            ttfb_ms: rec.ttfb.map(ms),
            duration_ms: ms(rec.duration),
            bytes_out: rec.bytes_out,
            tokens_in: rec.tokens_in,
            tokens_out: rec.tokens_out,
            failovers: rec.failovers,
            client: rec.client_ip,
            key: rec.key_name().map(cut),
            seq,
        };
        *self.slots[(seq % CAPACITY as u64) as usize].lock() = Some(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped() {
        assert_eq!(parse_limit(None), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("limit=5")), 5);
        assert_eq!(parse_limit(Some("x=1&limit=100000")), CAPACITY);
        assert_eq!(parse_limit(Some("limit=-1")), DEFAULT_LIMIT);
    }

    #[test]
    fn long_fields_are_cut_on_char_boundaries() {
        let s = "é".repeat(300);
        let c = cut(&s);
        assert!(c.len() <= MAX_FIELD && s.starts_with(&c));
    }
}
