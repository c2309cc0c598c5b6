//! Times as operators write and read them.
//!
//! `--at` accepts RFC 3339 (`2024-01-20T05:30:00Z`) and `YYYY-MM-DD HH:MM[:SS]`
//! followed by an optional zone: an abbreviation from a short unambiguous list
//! (`JST`, `UTC`, ...), an offset (`+09:00`) or an IANA name (`Asia/Tokyo`).
//! Without a zone the job's timezone applies.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::error::{Error, Result};

/// Abbreviations that mean one offset the world over. Ambiguous ones (`CST`,
/// `IST`, ...) are left out on purpose: a restore must not guess.
const ABBREVIATIONS: &[(&str, i8)] = &[
    ("UTC", 0),
    ("GMT", 0),
    ("Z", 0),
    ("JST", 9),
    ("KST", 9),
    ("HKT", 8),
    ("SGT", 8),
    ("CET", 1),
    ("CEST", 2),
    ("EST", -5),
    ("EDT", -4),
    ("PST", -8),
    ("PDT", -7),
];

/// Parses an operator's point in time; `default_zone` applies when none is given.
pub fn parse_point(text: &str, default_zone: &TimeZone) -> Result<Timestamp> {
    let text = text.trim();
    let bad = || {
        Error::usage(format!("cannot read '{text}' as a point in time")).with_hint(
            "write \"2024-01-20 14:30:00 JST\", \"2024-01-20 14:30 +09:00\", \
             \"2024-01-20 14:30 Asia/Tokyo\" or RFC 3339 \"2024-01-20T05:30:00Z\"",
        )
    };
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Ok(ts);
    }
    let (civil, zone) = match text.rsplit_once(' ') {
        Some((head, last)) if looks_like_zone(last) => (head.trim_end(), Some(last)),
        _ => (text, None),
    };
    let datetime: DateTime = civil.parse().map_err(|_| bad())?;
    let tz = match zone {
        None => default_zone.clone(),
        Some(zone) => zone_named(zone)?,
    };
    let zoned = datetime.to_zoned(tz).map_err(|_| bad())?;
    Ok(zoned.timestamp())
}

fn looks_like_zone(token: &str) -> bool {
    token.starts_with(['+', '-'])
        || token
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
}

fn zone_named(zone: &str) -> Result<TimeZone> {
    if let Some((_, hours)) = ABBREVIATIONS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(zone))
    {
        return Ok(TimeZone::fixed(Offset::constant(*hours)));
    }
    if zone.starts_with(['+', '-']) {
        return parse_offset(zone).map(TimeZone::fixed).ok_or_else(|| {
            Error::usage(format!("'{zone}' is not a UTC offset"))
                .with_hint("write offsets as +09:00 or -0500")
        });
    }
    TimeZone::get(zone).map_err(|_| {
        let known: Vec<&str> = ABBREVIATIONS.iter().map(|(n, _)| *n).collect();
        Error::usage(format!("'{zone}' is not a time zone this tool knows")).with_hint(format!(
            "use an offset (+09:00), an IANA name (Asia/Tokyo) or one of {}",
            known.join(", ")
        ))
    })
}

fn parse_offset(text: &str) -> Option<Offset> {
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let digits: String = text[1..].chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (hours, minutes): (i32, i32) = match digits.len() {
        2 => (digits.parse().ok()?, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
        _ => return None,
    };
    if hours > 18 || minutes > 59 {
        return None;
    }
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

/// `2024-01-20 14:30:00 JST`: how times are shown to operators.
pub fn show(ts: Timestamp, zone: &TimeZone) -> String {
    ts.to_zoned(zone.clone())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// `2h 5m 3s`, `45s`, `3d 4h`: a duration for people, to the second.
/// [`show_duration`] of a count of seconds read from a record or a server:
/// `?` for one no duration holds (NaN, 1e300), never a panic.
pub fn show_seconds(seconds: f64) -> String {
    match SignedDuration::try_from_secs_f64(seconds) {
        Ok(d) => show_duration(d),
        Err(_) => "?".to_owned(),
    }
}

pub fn show_duration(d: SignedDuration) -> String {
    let mut secs = d.as_secs().unsigned_abs();
    if secs == 0 {
        return if d.is_zero() {
            "0s".to_owned()
        } else {
            "under 1s".to_owned()
        };
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// [`show_duration`] of a standard library duration.
pub fn show_std_duration(d: std::time::Duration) -> String {
    show_duration(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
}

/// Parses a duration written as a number and a unit, or several in a row:
/// `"500ms"`, `"30s"`, `"5m"`, `"24h"`, `"30d"`, `"1h30m"`. Spaces are allowed
/// between the parts. Returns `None` for anything else, so callers can name the key.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => std::time::Duration::from_millis(1),
            "s" | "sec" | "secs" => std::time::Duration::from_secs(1),
            "m" | "min" | "mins" => std::time::Duration::from_secs(60),
            "h" | "hour" | "hours" => std::time::Duration::from_secs(3_600),
            "d" | "day" | "days" => std::time::Duration::from_secs(86_400),
            "w" | "week" | "weeks" => std::time::Duration::from_secs(7 * 86_400),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = rest[unit_len..].trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_compounds() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        for bad in ["", "5", "m", "5x", "-5s", "5 s s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    fn tokyo() -> TimeZone {
        TimeZone::get("Asia/Tokyo").unwrap()
    }

    #[test]
    fn every_documented_form_means_the_same_instant() {
        let expected: Timestamp = "2024-01-20T05:30:00Z".parse().unwrap();
        for text in [
            "2024-01-20 14:30:00 JST",
            "2024-01-20 14:30 JST",
            "2024-01-20 14:30:00 jst",
            "2024-01-20 14:30:00 +09:00",
            "2024-01-20 14:30:00 +0900",
            "2024-01-20 14:30:00 Asia/Tokyo",
            "2024-01-20T14:30:00+09:00",
            "2024-01-20T05:30:00Z",
            "2024-01-20 05:30:00 UTC",
            "  2024-01-20 14:30:00  ",
        ] {
            let got = parse_point(text, &tokyo()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn no_zone_means_the_jobs_zone() {
        let got = parse_point("2024-01-20 14:30:00", &TimeZone::UTC).unwrap();
        assert_eq!(got, "2024-01-20T14:30:00Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn nonsense_and_ambiguous_zones_are_refused() {
        for text in [
            "yesterday",
            "2024-13-01 00:00",
            "2024-01-20 14:30 CST",
            "2024-01-20 14:30 +25:00",
        ] {
            let err = parse_point(text, &tokyo()).unwrap_err();
            assert_eq!(err.kind(), crate::error::Kind::Usage, "{text}");
            assert!(err.hint().is_some(), "{text}");
        }
    }

    #[test]
    fn times_show_in_the_zone_with_its_abbreviation() {
        let ts: Timestamp = "2024-01-20T05:30:00Z".parse().unwrap();
        assert_eq!(show(ts, &tokyo()), "2024-01-20 14:30:00 JST");
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(show_duration(SignedDuration::from_secs(7_503)), "2h 5m");
        assert_eq!(show_duration(SignedDuration::from_secs(45)), "45s");
        assert_eq!(show_duration(SignedDuration::from_secs(90_061)), "1d 1h");
        assert_eq!(show_duration(SignedDuration::from_millis(300)), "under 1s");
    }
}
