//! The metrics registry: what finished requests leave behind, as atomics.
//!
//! Recording one request ([`Metrics::record`]) takes no lock and allocates nothing once its
//! series exist: series are found in maps published through `ArcSwap` (endpoint name, then
//! model label), and a histogram cell (route × status class) is created on its first use only.
//! A new series is added under a mutex on the rare miss path. Cardinality is bounded: endpoints
//! are the configured ones (at most [`MAX_ENDPOINT_SERIES`]), models only those in the catalog
//! (at most [`MAX_MODEL_SERIES`]; any other requested name is folded into `other`), keys at most
//! [`MAX_KEY_SERIES`].
//!
//! This module renders the histograms and counters it owns; Olla's gauges read from the
//! published snapshots are rendered by `render`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use olla_actors::catalog::Catalog;
use parking_lot::Mutex;

use super::context::{FinishRecord, Route};
use super::hist::{
    header, sample, Histogram, LocalHist, DURATION_BUCKETS, QUEUE_BUCKETS, TPS_BUCKETS,
    TTFB_BUCKETS,
};

pub const MAX_ENDPOINT_SERIES: usize = 1024;
pub const MAX_MODEL_SERIES: usize = 256;
pub const MAX_KEY_SERIES: usize = 1024;

/// Label of a request without an endpoint (rejected before any backend).
pub const NONE: &str = "none";
/// Label of a requested model that is not in the catalog.
pub const OTHER: &str = "other";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// FNV-1a: series keys are short names from the config and the catalog (inserts are bounded and
/// never client-chosen beyond the catalog), so a fast non-keyed hash is safe and cheaper than
/// SipHash on the hot path.
#[derive(Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A map of series by name.
pub type SeriesMap<T> = HashMap<Arc<str>, Arc<T>, std::hash::BuildHasherDefault<Fnv>>;

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Histograms and counters of one (endpoint, model, route, status class) series.
#[derive(Debug)]
pub struct Cell {
    pub requests: AtomicU64,
    pub ttfb: Histogram,
    pub duration: Histogram,
    pub gap: Histogram,
    pub queue_wait: Histogram,
    pub tokens_per_second: Histogram,
}

impl Cell {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            ttfb: Histogram::new(TTFB_BUCKETS),
            duration: Histogram::new(DURATION_BUCKETS),
            gap: Histogram::new(super::hist::GAP_BUCKETS),
            queue_wait: Histogram::new(QUEUE_BUCKETS),
            tokens_per_second: Histogram::new(TPS_BUCKETS),
        }
    }
}

/// One (endpoint, model) pair: its cells and token counters.
#[derive(Debug, Default)]
pub struct Pair {
    cells: [[OnceLock<Box<Cell>>; 5]; 5],
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
}

impl Pair {
    fn cell(&self, route: Route, status: u16) -> &Cell {
        self.cells[route.index()][class_index(status)].get_or_init(|| Box::new(Cell::new()))
    }
}

/// Counters of one endpoint that only requests see (Olla's per-endpoint traffic counters are
/// the backend's own).
#[derive(Debug, Default)]
pub struct EndpointSeries {
    pairs: ArcSwap<SeriesMap<Pair>>,
    /// Attempts on this endpoint that were followed by a move to another candidate.
    pub failovers_from: AtomicU64,
    /// Of those, the ones that got a retryable status.
    pub retries_from: AtomicU64,
}

/// Olla's per-model counters (`olla_model_*`), by the name the client sent.
#[derive(Debug)]
pub struct ModelSeries {
    pub requests: AtomicU64,
    pub successful: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    pub latency_ms_total: AtomicU64,
    pub latency: Histogram,
    /// Unix seconds of the last request.
    pub last_requested: AtomicU64,
}

impl Default for ModelSeries {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            successful: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latency_ms_total: AtomicU64::new(0),
            latency: Histogram::new(DURATION_BUCKETS),
            last_requested: AtomicU64::new(0),
        }
    }
}

impl ModelSeries {
    pub fn success_pct(&self) -> f64 {
        let done = get(&self.successful) + get(&self.failed);
        if done == 0 {
            0.0
        } else {
            get(&self.successful) as f64 * 100.0 / done as f64
        }
    }

    pub fn avg_latency_ms(&self) -> f64 {
        let n = get(&self.successful);
        if n == 0 {
            0.0
        } else {
            get(&self.latency_ms_total) as f64 / n as f64
        }
    }
}

/// Per API key (the gate's key name).
#[derive(Debug, Default)]
pub struct KeySeries {
    pub requests: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
}

/// Process-wide proxy request counters.
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub latency_ms_total: AtomicU64,
    pub bytes: AtomicU64,
    pub failovers: AtomicU64,
    pub retries: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    pub client_gone: AtomicU64,
    pub panics: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
}

/// See the module doc.
pub struct Metrics {
    enabled: bool,
    pub totals: Totals,
    endpoints: ArcSwap<SeriesMap<EndpointSeries>>,
    models: ArcSwap<SeriesMap<ModelSeries>>,
    keys: ArcSwap<SeriesMap<KeySeries>>,
    grow: Mutex<()>,
    /// The `none` label, shared (no allocation per request without a model).
    none: Arc<str>,
}

/// Returns the entry for `name`, adding it (bounded) on a miss.
fn series<T: Default>(
    map: &ArcSwap<SeriesMap<T>>,
    grow: &Mutex<()>,
    name: &str,
    cap: usize,
) -> Option<Arc<T>> {
    if let Some(s) = map.load().get(name) {
        return Some(s.clone());
    }
    let _g = grow.lock();
    let cur = map.load_full();
    if let Some(s) = cur.get(name) {
        return Some(s.clone());
    }
    if cur.len() >= cap {
        return None;
    }
    let mut next = (*cur).clone();
    let s = Arc::new(T::default());
    next.insert(Arc::from(name), s.clone());
    map.store(Arc::new(next));
    Some(s)
}

impl Metrics {
    pub fn new(enabled: bool) -> Self {
        let m = Self {
            enabled,
            totals: Totals::default(),
            endpoints: ArcSwap::from_pointee(SeriesMap::default()),
            models: ArcSwap::from_pointee(SeriesMap::default()),
            keys: ArcSwap::from_pointee(SeriesMap::default()),
            grow: Mutex::new(()),
            none: Arc::from(NONE),
        };
        let _ = m.endpoint(NONE);
        let _ = m.model_series(OTHER);
        m
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The series of an endpoint (`none` beyond the cap).
    pub fn endpoint(&self, name: &str) -> Arc<EndpointSeries> {
        series(&self.endpoints, &self.grow, name, MAX_ENDPOINT_SERIES)
            .or_else(|| self.endpoints.load().get(NONE).cloned())
            .unwrap_or_default()
    }

    fn model_series(&self, label: &str) -> Option<Arc<ModelSeries>> {
        series(&self.models, &self.grow, label, MAX_MODEL_SERIES)
    }

    /// The label a requested model is counted under: itself when the catalog knows it (and the
    /// cap allows), else `other`; `none` without a model.
    pub fn model_label(
        &self,
        model: Option<&str>,
        catalog: &Catalog,
    ) -> (Arc<str>, Option<Arc<ModelSeries>>) {
        let Some(name) = model else {
            return (self.none.clone(), None);
        };
        let models = self.models.load();
        if let Some((k, v)) = models.get_key_value(name) {
            return (k.clone(), Some(v.clone()));
        }
        drop(models);
        if !catalog.resolve(name).is_empty() {
            if let Some(s) = self.model_series(name) {
                if let Some((k, _)) = self.models.load().get_key_value(name) {
                    return (k.clone(), Some(s));
                }
            }
        }
        let models = self.models.load();
        match models.get_key_value(OTHER) {
            Some((k, v)) => (k.clone(), Some(v.clone())),
            None => (self.none.clone(), None),
        }
    }

    /// Records one finished request (proxied requests only).
    pub fn record(&self, rec: &FinishRecord, gaps: &LocalHist, catalog: &Catalog) {
        if !self.enabled || !rec.route.is_proxy() {
            return;
        }
        let t = &self.totals;
        bump(&t.requests);
        let failed = rec.failed();
        let duration_ms = u64::try_from(rec.duration.as_millis()).unwrap_or(u64::MAX);
        if failed {
            bump(&t.failures);
        } else {
            bump(&t.successes);
            add(&t.latency_ms_total, duration_ms);
        }
        match rec.status {
            400..=499 => bump(&t.errors_4xx),
            500.. => bump(&t.errors_5xx),
            _ => {}
        }
        add(&t.bytes, rec.bytes_out);
        add(&t.failovers, u64::from(rec.failovers));
        add(&t.retries, u64::from(rec.retries));
        add(&t.tokens_in, rec.tokens_in.unwrap_or(0));
        add(&t.tokens_out, rec.tokens_out.unwrap_or(0));
        match rec.end {
            super::context::EndReason::ClientGone => bump(&t.client_gone),
            super::context::EndReason::Panic => bump(&t.panics),
            _ => {}
        }

        let (label, model) = self.model_label(rec.model.as_deref(), catalog);
        if let Some(m) = &model {
            bump(&m.requests);
            add(&m.bytes, rec.bytes_out);
            if failed {
                bump(&m.failed);
            } else {
                bump(&m.successful);
                add(&m.latency_ms_total, duration_ms);
                m.latency.observe(rec.duration.as_secs_f64());
            }
            let at = rec
                .received_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            m.last_requested.store(at, Ordering::Relaxed);
        }

        let endpoint = self.endpoint(rec.endpoint_name().unwrap_or(NONE));
        let pair =
            series(&endpoint.pairs, &self.grow, &label, MAX_MODEL_SERIES + 1).unwrap_or_default();
        let cell = pair.cell(rec.route, rec.status);
        bump(&cell.requests);
        if let Some(ttfb) = rec.ttfb {
            cell.ttfb.observe(ttfb.as_secs_f64());
        }
        cell.duration.observe(rec.duration.as_secs_f64());
        if !gaps.is_empty() {
            cell.gap.merge(&gaps.counts, gaps.sum);
        }
        if let Some(q) = rec.queue_wait {
            cell.queue_wait.observe(q.as_secs_f64());
        }
        add(&pair.tokens_in, rec.tokens_in.unwrap_or(0));
        add(&pair.tokens_out, rec.tokens_out.unwrap_or(0));
        if let (Some(out), Some(ttfb), false) = (rec.tokens_out, rec.ttfb, failed) {
            let generating = rec.duration.saturating_sub(ttfb).as_secs_f64();
            if out > 0 && generating > 0.0 {
                cell.tokens_per_second.observe(out as f64 / generating);
            }
        }
        if rec.failovers > 0 {
            let last = rec.attempts.len().saturating_sub(1);
            for (i, a) in rec.attempts.iter().enumerate().take(last) {
                let e = self.endpoint(&a.endpoint);
                bump(&e.failovers_from);
                if matches!(a.outcome, super::context::AttemptOutcome::Status(_)) && i < last {
                    bump(&e.retries_from);
                }
            }
        }
        if let Some(key) = rec.key_name() {
            if let Some(k) = series(&self.keys, &self.grow, key, MAX_KEY_SERIES) {
                bump(&k.requests);
                add(&k.tokens_in, rec.tokens_in.unwrap_or(0));
                add(&k.tokens_out, rec.tokens_out.unwrap_or(0));
            }
        }
    }

    /// The per-model series (for `/internal/stats/models` and Olla's model metrics).
    pub fn models(&self) -> Vec<(Arc<str>, Arc<ModelSeries>)> {
        let mut v: Vec<_> = self
            .models
            .load()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn endpoint_series(&self) -> Vec<(Arc<str>, Arc<EndpointSeries>)> {
        let mut v: Vec<_> = self
            .endpoints
            .load()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Writes the series this registry owns (olla's own request metrics).
    pub fn render(&self, out: &mut String) {
        let t = &self.totals;
        header(
            out,
            "olla_proxy_failovers_total",
            "counter",
            "Moves of a request to another candidate after a failed attempt.",
        );
        sample(
            out,
            "olla_proxy_failovers_total",
            &[],
            get(&t.failovers) as f64,
        );
        header(
            out,
            "olla_proxy_retries_total",
            "counter",
            "Failovers caused by a retryable upstream status.",
        );
        sample(out, "olla_proxy_retries_total", &[], get(&t.retries) as f64);
        header(
            out,
            "olla_proxy_client_disconnects_total",
            "counter",
            "Requests whose client went away before the response was complete.",
        );
        sample(
            out,
            "olla_proxy_client_disconnects_total",
            &[],
            get(&t.client_gone) as f64,
        );
        header(
            out,
            "olla_proxy_panics_total",
            "counter",
            "Request tasks that panicked (answered 500; the daemon serves on).",
        );
        sample(out, "olla_proxy_panics_total", &[], get(&t.panics) as f64);

        let endpoints = self.endpoint_series();
        header(
            out,
            "olla_endpoint_failovers_total",
            "counter",
            "Attempts on an endpoint after which the request moved to another candidate.",
        );
        for (name, e) in &endpoints {
            sample(
                out,
                "olla_endpoint_failovers_total",
                &[("endpoint", name)],
                get(&e.failovers_from) as f64,
            );
        }
        header(
            out,
            "olla_endpoint_retries_total",
            "counter",
            "Attempts on an endpoint that got a retryable status and moved on.",
        );
        for (name, e) in &endpoints {
            sample(
                out,
                "olla_endpoint_retries_total",
                &[("endpoint", name)],
                get(&e.retries_from) as f64,
            );
        }

        let mut pairs: Vec<(Arc<str>, Arc<str>, Arc<Pair>)> = Vec::new();
        for (name, e) in &endpoints {
            for (model, p) in e.pairs.load().iter() {
                pairs.push((name.clone(), model.clone(), p.clone()));
            }
        }
        pairs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

        header(
            out,
            "olla_proxy_requests_total",
            "counter",
            "Proxied requests by endpoint, model, route and status class.",
        );
        for_cells(&pairs, |labels, c| {
            sample(
                out,
                "olla_proxy_requests_total",
                labels,
                get(&c.requests) as f64,
            )
        });
        let hists: [HistMetric; 5] = [
            (
                "olla_request_ttfb_seconds",
                "Time from the request head to the first response byte sent to the client.",
                |c| &c.ttfb,
            ),
            (
                "olla_request_duration_seconds",
                "Time from the request head to the end of the response.",
                |c| &c.duration,
            ),
            (
                "olla_stream_chunk_gap_seconds",
                "Gaps between consecutive chunks of a response body.",
                |c| &c.gap,
            ),
            (
                "olla_queue_wait_seconds",
                "Time a request waited in a backend's queue for a concurrency slot.",
                |c| &c.queue_wait,
            ),
            (
                "olla_tokens_per_second",
                "Output tokens per second after the first byte, when the backend reports usage.",
                |c| &c.tokens_per_second,
            ),
        ];
        for (name, help, pick) in hists {
            header(out, name, "histogram", help);
            for_cells(&pairs, |labels, c| {
                let h = pick(c);
                if h.count() > 0 || name == "olla_request_duration_seconds" {
                    h.render(out, name, labels);
                }
            });
        }
        header(
            out,
            "olla_tokens_input_total",
            "counter",
            "Prompt tokens reported by backends.",
        );
        for (e, m, p) in &pairs {
            sample(
                out,
                "olla_tokens_input_total",
                &[("endpoint", e), ("model", m)],
                get(&p.tokens_in) as f64,
            );
        }
        header(
            out,
            "olla_tokens_output_total",
            "counter",
            "Completion tokens reported by backends.",
        );
        for (e, m, p) in &pairs {
            sample(
                out,
                "olla_tokens_output_total",
                &[("endpoint", e), ("model", m)],
                get(&p.tokens_out) as f64,
            );
        }

        let mut keys: Vec<_> = self
            .keys
            .load()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            out,
            "olla_key_requests_total",
            "counter",
            "Proxied requests per API key name.",
        );
        for (k, s) in &keys {
            sample(
                out,
                "olla_key_requests_total",
                &[("key", k)],
                get(&s.requests) as f64,
            );
        }
        header(
            out,
            "olla_key_tokens_total",
            "counter",
            "Tokens reported by backends per API key name and direction.",
        );
        for (k, s) in &keys {
            sample(
                out,
                "olla_key_tokens_total",
                &[("key", k), ("direction", "input")],
                get(&s.tokens_in) as f64,
            );
            sample(
                out,
                "olla_key_tokens_total",
                &[("key", k), ("direction", "output")],
                get(&s.tokens_out) as f64,
            );
        }
    }
}

/// A histogram metric of a cell: name, help, and which histogram.
type HistMetric = (&'static str, &'static str, fn(&Cell) -> &Histogram);

/// Calls `f` for each existing cell with its labels.
fn for_cells(pairs: &[(Arc<str>, Arc<str>, Arc<Pair>)], mut f: impl FnMut(&[(&str, &str)], &Cell)) {
    for (e, m, p) in pairs {
        for route in Route::ALL {
            for (ci, class) in CLASSES.iter().enumerate() {
                if let Some(c) = p.cells[route.index()][ci].get() {
                    let labels = [
                        ("endpoint", &**e),
                        ("model", &**m),
                        ("route", route.as_str()),
                        ("status_class", *class),
                    ];
                    f(&labels, c);
                }
            }
        }
    }
}
