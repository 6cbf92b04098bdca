//! RFC 3339 timestamps (`2027-01-31T00:00:00Z`, `2027-01-31T01:00:00.5+01:00`) parsed into
//! `SystemTime`, for key expiry. Pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an RFC 3339 date-time; `None` if malformed or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() < 20 || !s.is_ascii() {
        return None;
    }
    let (date, rest) = (&s[..10], &s[11..]);
    if !matches!(s.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let (hh, mm, ss) = (
        num(rest.get(0..2)?)?,
        num(rest.get(3..5)?)?,
        num(rest.get(6..8)?)?,
    );
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut tail = &rest[8..];
    let mut nanos = 0u32;
    if let Some(frac) = tail.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if end == 0 {
            return None;
        }
        let digits = &frac[..end.min(9)];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
        tail = &frac[end..];
    }
    let offset = match tail {
        "Z" | "z" => 0,
        t if t.len() == 6 && (t.starts_with('+') || t.starts_with('-')) && &t[3..4] == ":" => {
            let (oh, om) = (num(&t[1..3])?, num(&t[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if t.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, da) * 86_400 + hh * 3600 + mm * 60 + ss.min(59) - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(s: &str) -> Option<u64> {
        parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix("2027-01-31T00:00:00Z"), Some(1_801_353_600));
        assert_eq!(unix("2000-02-29T12:00:00+02:00"), Some(951_818_400));
        assert_eq!(unix("2000-02-29T12:00:00-00:30"), Some(951_827_400));
        assert_eq!(unix("2024-05-01T10:20:30.123456789Z"), Some(1_714_558_830));
        assert_eq!(
            parse_rfc3339("2024-05-01T10:20:30.5Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_millis(),
            500
        );
        for bad in [
            "2027-01-31",
            "2027-13-01T00:00:00Z",
            "2027-01-31T25:00:00Z",
            "2027-01-31T00:00:00",
            "2027-01-31T00:00:00+0100",
            "2027-01-31T00:00:00.Z",
            "1969-12-31T23:59:59Z",
            "tomorrow at noon please",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
