//! Request accounting: counters, the per-request drop guard, and the last recorded request.
//!
//! Owns [`MockStats`] / [`RecordedRequest`] (the public snapshots) and [`Guard`], which is
//! created when a request enters, lives in the handler future, then moves into the response
//! body. Its `Drop` decides whether the request *completed* (the body produced its last
//! frame) or was *cancelled* (the future or body was dropped first: the client went away).
//! Recording keeps the raw request parts (a header map moved out of the request and a
//! reference-counted body), converted to strings only when someone asks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use parking_lot::Mutex;
use serde::Serialize;

/// A snapshot of the request counters. `/_mock/*` requests are never counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    /// Requests received (since start or the last reset).
    pub requests: u64,
    /// Requests whose response body was produced to the end (an injected mid-stream drop
    /// counts as completed: the mock did what it was told).
    pub completed: u64,
    /// Requests dropped before finishing: the client left while waiting for headers
    /// (ttft, hang) or mid-stream, or the server was stopped.
    pub cancelled: u64,
    /// Requests being handled right now.
    pub in_flight: u64,
    /// Requests per path.
    pub by_path: BTreeMap<String, u64>,
}

/// The last request received (other than `/_mock/*`), for tests to see what arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URI path.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercased; non-UTF-8 values are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The body, converted lossily to UTF-8.
    pub body: String,
}

/// A request as received, kept cheaply until someone asks for it.
#[derive(Clone)]
pub(crate) struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    fn to_public(&self) -> RecordedRequest {
        RecordedRequest {
            method: self.method.as_str().to_owned(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(str::to_owned),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// Shared counters of one server.
#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    /// Generation requests in flight (drives llama.cpp's `/slots` `is_processing`).
    generating: AtomicU64,
    by_path: Mutex<BTreeMap<String, u64>>,
    last: Mutex<Option<Recorded>>,
    /// The last request that was not a health check or a model list.
    last_work: Mutex<Option<Recorded>>,
}

impl Counters {
    /// Counts a new request and returns the guard that will settle it.
    pub fn begin(self: &Arc<Self>, path: &str) -> Guard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        {
            let mut by_path = self.by_path.lock();
            match by_path.get_mut(path) {
                Some(n) => *n += 1,
                None => {
                    by_path.insert(path.to_owned(), 1);
                }
            }
        }
        Guard {
            counters: Arc::clone(self),
            done: false,
            generating: false,
        }
    }

    pub fn record(&self, rec: Recorded) {
        // Swap under the lock, drop the previous record outside it.
        let old = self.last.lock().replace(rec);
        drop(old);
    }

    pub fn last(&self) -> Option<RecordedRequest> {
        self.last.lock().as_ref().map(Recorded::to_public)
    }

    /// Records a request that is not a health check or model list (also kept as `last`).
    pub fn record_work(&self, rec: Recorded) {
        let old = self.last_work.lock().replace(rec.clone());
        drop(old);
        self.record(rec);
    }

    pub fn last_work(&self) -> Option<RecordedRequest> {
        self.last_work.lock().as_ref().map(Recorded::to_public)
    }

    pub fn generating(&self) -> u64 {
        self.generating.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            by_path: self.by_path.lock().clone(),
        }
    }

    /// Zeroes the totals and forgets the last request. `in_flight` is left alone: the
    /// requests it counts are still running and will decrement it when they end.
    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.completed.store(0, Ordering::Relaxed);
        self.cancelled.store(0, Ordering::Relaxed);
        self.by_path.lock().clear();
        let old = self.last.lock().take();
        drop(old);
        let old = self.last_work.lock().take();
        drop(old);
    }
}

/// Settles one request when dropped: completed if [`Guard::finish`] was called, else
/// cancelled.
pub(crate) struct Guard {
    counters: Arc<Counters>,
    done: bool,
    generating: bool,
}

impl Guard {
    /// The response was produced to its end.
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// Marks this request as a generation (counted in the llama.cpp slot view).
    pub fn set_generating(&mut self) {
        if !self.generating {
            self.generating = true;
            self.counters.generating.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let c = &self.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.generating {
            c.generating.fetch_sub(1, Ordering::Relaxed);
        }
        if self.done {
            c.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_settles_completed_or_cancelled() {
        let c = Arc::new(Counters::default());
        let mut g = c.begin("/a");
        g.set_generating();
        assert_eq!(c.generating(), 1);
        let s = c.snapshot();
        assert_eq!((s.requests, s.in_flight), (1, 1));
        g.finish();
        drop(g);
        drop(c.begin("/a"));
        drop(c.begin("/b"));
        let s = c.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.completed, 1);
        assert_eq!(s.cancelled, 2);
        assert_eq!(s.in_flight, 0);
        assert_eq!(c.generating(), 0);
        assert_eq!(s.by_path.get("/a"), Some(&2));
        assert_eq!(s.by_path.get("/b"), Some(&1));
        c.reset();
        assert_eq!(c.snapshot(), MockStats::default());
    }

    #[test]
    fn record_converts_lazily() {
        let c = Counters::default();
        assert!(c.last().is_none());
        let mut headers = HeaderMap::new();
        headers.insert("X-Test", http::HeaderValue::from_static("1"));
        c.record(Recorded {
            method: Method::POST,
            uri: Uri::from_static("/v1/chat/completions?x=1"),
            headers,
            body: Bytes::from_static(b"{}"),
        });
        let r = c.last().expect("recorded");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.headers, vec![("x-test".to_owned(), "1".to_owned())]);
        assert_eq!(r.body, "{}");
    }
}
