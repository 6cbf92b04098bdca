//! Waits that a backend dictates (`Retry-After`) and the one place where such untrusted
//! durations meet clock arithmetic.
//!
//! # The rule
//!
//! **No `+` on `Instant`/`SystemTime` with a duration that came from a backend or a client.**
//! `Instant + Duration` and `SystemTime + Duration` panic on overflow, and integer arithmetic
//! on milliseconds wraps in release builds. Every such wait is first clamped with
//! [`clamp_backend_wait`] (to `max_retry_after`, 1 h by default, per endpoint), and every point
//! in time computed from it goes through [`instant_after`] / [`system_after`] (checked
//! arithmetic). Parsers of backend data ([`parse_retry_after`]) use checked arithmetic too and
//! answer `None` for garbage instead of panicking. Grep for `clamp_backend_wait` to find every
//! call site; add new ones there, never an open-coded `+`.
//!
//! Pure: no I/O, the current time is passed in.

use std::time::{Duration, SystemTime};

/// Default cap of any backend-supplied wait (`proxy.max_retry_after`).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Longest `Retry-After` value looked at; longer values are garbage.
const MAX_RETRY_AFTER_LEN: usize = 64;

/// Clamps a wait a backend asked for to `max` (the endpoint's `max_retry_after`).
pub fn clamp_backend_wait(wait: Duration, max: Duration) -> Duration {
    wait.min(max)
}

/// `now + wait` without overflow: a wait past the end of time saturates to the latest
/// representable point reachable by halving, never panics.
pub fn instant_after(now: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    let mut wait = wait;
    loop {
        if let Some(t) = now.checked_add(wait) {
            return t;
        }
        wait /= 2;
    }
}

/// `now + wait` on the wall clock (for status output), `None` when it does not fit.
pub fn system_after(now: SystemTime, wait: Duration) -> Option<SystemTime> {
    now.checked_add(wait)
}

/// Parses a `Retry-After` value: delay seconds or an IMF-fixdate HTTP date (relative to `now`;
/// a date in the past is a zero wait). Never panics: a number too large for `u64` is
/// `Duration::MAX` (clamp it), impossible dates and anything else are `None`. The result is
/// *not* clamped: pass it through [`clamp_backend_wait`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || v.len() > MAX_RETRY_AFTER_LEN {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a delay; one too large for u64 is "very long", not garbage.
        return Some(v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let when = httpdate_parse(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers send. Fields out
/// of range (hour 99, day 31 of February, year 10000 and beyond) are `None`.
fn httpdate_parse(v: &str) -> Option<SystemTime> {
    let mut parts = v.split_ascii_whitespace();
    let (_weekday, day, month, year, hms, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" {
        return None;
    }
    let day = small_number(day, 2)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)? as u64
        + 1;
    let year = small_number(year, 4)?;
    let mut hms_parts = hms.split(':');
    let (h, m, s) = (
        small_number(hms_parts.next()?, 2)?,
        small_number(hms_parts.next()?, 2)?,
        small_number(hms_parts.next()?, 2)?,
    );
    if hms_parts.next().is_some() || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + s)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A decimal number of at most `max_digits` digits (so it cannot overflow anything).
fn small_number(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: u64, month: u64) -> u64 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm), for years >= 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let (y, m) = if month <= 2 {
        (year.checked_sub(1)?, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn parses_seconds_and_http_dates() {
        let now = t0();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now),
            Some(Duration::ZERO),
            "a past date is no wait"
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 1996 00:00:00 GMT", now),
            Some(Duration::from_secs(825_552_000 - 784_111_777))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
    }

    #[test]
    fn hostile_values_never_panic_and_clamp() {
        let now = t0();
        let max = DEFAULT_MAX_RETRY_AFTER;
        let huge = parse_retry_after("18446744073709551615", now).unwrap();
        assert_eq!(clamp_backend_wait(huge, max), max);
        let huger = parse_retry_after("99999999999999999999999999", now).unwrap();
        assert_eq!(huger, Duration::MAX);
        assert_eq!(clamp_backend_wait(huger, max), max);
        for garbage in [
            "Sun, 06 Nov 99999999999 08:49:37 GMT",
            "Sun, 06 Nov 1994 99999999999:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 31 Feb 1995 00:00:00 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37:1 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage}");
        }
        // Far future but valid: parsed, then clamped.
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert!(far > Duration::from_secs(240 * 365 * 86_400));
        assert_eq!(clamp_backend_wait(far, max), max);
    }

    #[test]
    fn time_arithmetic_saturates() {
        let now = tokio::time::Instant::now();
        assert!(instant_after(now, Duration::MAX) > now);
        assert_eq!(
            instant_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(system_after(SystemTime::now(), Duration::MAX), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let s = String::from_utf8_lossy(&bytes);
            if let Some(d) = parse_retry_after(&s, SystemTime::now()) {
                prop_assert!(clamp_backend_wait(d, DEFAULT_MAX_RETRY_AFTER) <= DEFAULT_MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn date_shaped_values_never_panic(
            day in any::<u64>(), year in any::<u64>(), h in any::<u64>(), m in any::<u64>(),
            s in any::<u64>(), month in 0usize..13, small in any::<bool>(),
        ) {
            let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                "Nov", "Dec", "Foo"];
            let (day, year, h, m, s) = if small {
                (day % 40, 1960 + year % 8100, h % 30, m % 70, s % 70)
            } else {
                (day, year, h, m, s)
            };
            let v = format!("Mon, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT", months[month]);
            let _ = parse_retry_after(&v, SystemTime::now());
            let _ = parse_retry_after(&v, SystemTime::UNIX_EPOCH);
        }

        #[test]
        fn valid_dates_parse_to_their_second(
            y in 1970u64..=9999, mo in 1u64..=12, d in 1u64..=31, h in 0u64..24, mi in 0u64..60,
            s in 0u64..60,
        ) {
            let d = d.min(days_in_month(y, mo));
            // Naive oracle: whole years, then whole months, then the rest.
            let days: u64 = (1970..y).map(|yy| if days_in_month(yy, 2) == 29 { 366 } else { 365 }).sum::<u64>()
                + (1..mo).map(|mm| days_in_month(y, mm)).sum::<u64>()
                + d - 1;
            let want = days * 86_400 + h * 3600 + mi * 60 + s;
            let v = format!(
                "Xxx, {d:02} {} {y} {h:02}:{mi:02}:{s:02} GMT",
                ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec"][mo as usize - 1],
            );
            prop_assert_eq!(
                parse_retry_after(&v, SystemTime::UNIX_EPOCH),
                Some(Duration::from_secs(want))
            );
        }
    }
}
