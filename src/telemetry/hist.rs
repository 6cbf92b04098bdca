//! A lock-free histogram (fixed bucket bounds, one atomic per bucket) and the Prometheus text
//! writer helpers shared by every metrics renderer. No I/O, no allocation when observing.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most buckets a histogram may have (the `+Inf` bucket comes on top).
pub const MAX_BUCKETS: usize = 16;

/// Seconds to the first byte sent to the client (includes queueing and failover).
pub const TTFB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Seconds from the request head to the end of the response (long generations included).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Seconds between two chunks of a streamed response (token pacing and stalls).
pub const GAP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds a request waited in a backend's queue for a concurrency slot.
pub const QUEUE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Output tokens per second of generation (after the first byte).
pub const TPS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0,
];

/// Sums are kept in millionths so they stay integers (atomics).
const SUM_SCALE: f64 = 1_000_000.0;

/// See the module doc. Bucket counts are per bucket (not cumulative) and summed when rendered.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

/// Index of the first bucket whose bound is at least `v` (`bounds.len()` = `+Inf`).
pub fn bucket_of(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.len() <= MAX_BUCKETS);
        Self {
            bounds: &bounds[..bounds.len().min(MAX_BUCKETS)],
            counts: Default::default(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        self.counts[bucket_of(self.bounds, v)].fetch_add(1, Ordering::Relaxed);
        self.sum
            .fetch_add((v * SUM_SCALE) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds pre-bucketed observations (per-bucket counts over the same bounds, and their sum).
    pub fn merge(&self, counts: &[u32], sum: f64) {
        let mut n = 0u64;
        for (slot, c) in self.counts.iter().zip(counts) {
            if *c > 0 {
                slot.fetch_add(u64::from(*c), Ordering::Relaxed);
                n += u64::from(*c);
            }
        }
        if n > 0 {
            self.sum
                .fetch_add((sum.max(0.0) * SUM_SCALE) as u64, Ordering::Relaxed);
            self.count.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.sum.load(Ordering::Relaxed) as f64 / SUM_SCALE
    }

    /// The value below which `q` (0..1) of the observations fall, interpolated inside its bucket
    /// (the last finite bound when it falls in `+Inf`); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate().take(self.bounds.len() + 1) {
            let c = c.load(Ordering::Relaxed);
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let frac = (rank - seen as f64) / c as f64;
                return Some(lo + (hi - lo) * frac);
            }
            seen += c;
        }
        self.bounds.last().copied()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples with the given labels.
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate().take(self.bounds.len() + 1) {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format_value(*b),
                None => "+Inf".to_string(),
            };
            out.push_str(name);
            out.push_str("_bucket");
            write_labels(out, labels, Some(("le", &le)));
            let _ = writeln!(out, " {cumulative}");
        }
        sample(out, &format!("{name}_sum"), labels, self.sum());
        sample(out, &format!("{name}_count"), labels, self.count() as f64);
    }
}

/// A local, non-atomic histogram for one request (inter-chunk gaps), merged at its end.
#[derive(Debug, Clone)]
pub struct LocalHist {
    pub counts: [u32; MAX_BUCKETS + 1],
    pub sum: f64,
}

impl Default for LocalHist {
    fn default() -> Self {
        Self {
            counts: [0; MAX_BUCKETS + 1],
            sum: 0.0,
        }
    }
}

impl LocalHist {
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bucket_of(bounds, v);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.sum += v;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped as the text format requires (`\`, `"`, newline).
pub fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

/// A number as Olla writes it: up to six decimals, trailing zeros and `.` trimmed.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" || s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

/// One sample line.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    write_labels(out, labels, None);
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_render_cumulative_with_inf() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        let mut out = String::new();
        h.render(&mut out, "x", &[("a", "b")]);
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"0.1\"} 1\nx_bucket{a=\"b\",le=\"1\"} 3\nx_bucket{a=\"b\",le=\"+Inf\"} 4\nx_sum{a=\"b\"} 8.05\nx_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn merge_adds_local_counts() {
        let h = Histogram::new(GAP_BUCKETS);
        let mut l = LocalHist::default();
        l.observe(GAP_BUCKETS, 0.002);
        l.observe(GAP_BUCKETS, 0.002);
        l.observe(GAP_BUCKETS, 100.0);
        h.merge(&l.counts, l.sum);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 100.004).abs() < 1e-6);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..50 {
            h.observe(0.5);
        }
        for _ in 0..50 {
            h.observe(3.0);
        }
        assert_eq!(h.quantile(0.5), Some(1.0));
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 > 2.0 && p99 <= 4.0, "{p99}");
    }

    #[test]
    fn values_and_labels_are_formatted_as_olla_does() {
        assert_eq!(format_value(97.5), "97.5");
        assert_eq!(format_value(100.0), "100");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(1.234_567_89), "1.234568");
        let mut s = String::new();
        escape("a\"b\\c\nd", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }
}
