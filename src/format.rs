//! Human formats used by the status endpoints, matching Olla's: percentages, latencies, byte
//! counts, "12s ago", uptimes, and RFC 3339 timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn percentage(v: f64) -> String {
    if v == 0.0 {
        "0%".into()
    } else if (v - 100.0).abs() < f64::EPSILON {
        "100%".into()
    } else {
        format!("{v:.1}%")
    }
}

pub fn latency_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

pub fn bytes(b: u64) -> String {
    if b < 1024 {
        return format!("{b} B");
    }
    let units = ["KB", "MB", "GB", "TB", "PB"];
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{}s", d.as_secs())
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 86400.0 {
        format!("{:.0}h", s / 3600.0)
    } else {
        format!("{:.0}d", s / 86400.0)
    }
}

pub fn time_ago(t: Option<SystemTime>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!(
            "{} ago",
            short_duration(SystemTime::now().duration_since(t).unwrap_or_default())
        ),
    }
}

pub fn time_until(t: Option<SystemTime>) -> String {
    match t {
        None => "unknown".into(),
        Some(t) => match t.duration_since(SystemTime::now()) {
            Ok(d) if !d.is_zero() => format!("in {}", short_duration(d)),
            _ => "now".into(),
        },
    }
}

pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86400, (s % 86400) / 3600)
    }
}

/// The parameter count a size label names (`8B`, `7.5b`, `270M`, `1.2T`, `500K`); 0 when it
/// names none.
pub fn parameter_count(label: &str) -> u64 {
    let t = label.trim();
    let Some(unit) = t.chars().last() else {
        return 0;
    };
    let scale = match unit.to_ascii_uppercase() {
        'K' => 1e3,
        'M' => 1e6,
        'B' => 1e9,
        'T' => 1e12,
        _ => return 0,
    };
    match t[..t.len() - unit.len_utf8()].parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => (n * scale).min(u64::MAX as f64) as u64,
        _ => 0,
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T01:02:03.456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_olla() {
        assert_eq!(percentage(0.0), "0%");
        assert_eq!(percentage(100.0), "100%");
        assert_eq!(percentage(96.66), "96.7%");
        assert_eq!(latency_ms(5), "5ms");
        assert_eq!(latency_ms(1500), "1.5s");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.50 KB");
        assert_eq!(uptime(Duration::from_secs(3700)), "1h 1m");
        assert_eq!(time_ago(None), "never");
    }

    #[test]
    fn parameter_counts_from_labels() {
        assert_eq!(parameter_count("8B"), 8_000_000_000);
        assert_eq!(parameter_count("7.5b"), 7_500_000_000);
        assert_eq!(parameter_count("270M"), 270_000_000);
        assert_eq!(parameter_count(""), 0);
        assert_eq!(parameter_count("big"), 0);
        assert_eq!(parameter_count("1e400B"), 0);
        assert_eq!(parameter_count("-3B"), 0);
    }

    #[test]
    fn rfc3339_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(784_111_777_123);
        assert_eq!(rfc3339(t), "1994-11-06T08:49:37.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
