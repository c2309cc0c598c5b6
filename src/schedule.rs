//! When jobs run: cron expressions read in a time zone, turned into instants.
//!
//! croner does the matching (5 fields, or 6 with leading seconds; `L`, `W`,
//! `DAY#n`, names). This module adds what a backup tool needs on top:
//! - the zone's rules are applied at every fire time, never frozen when the
//!   daemon starts, so a job at 03:00 stays at 03:00 across a DST change;
//! - a wall time that a spring-forward skips fires once, right after the gap;
//!   a wall time that a fall-back repeats fires once, the first time;
//! - the answers depend only on the instant asked about, so the scheduler can
//!   be driven by any clock.

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// A parsed `schedule = "..."` with the zone it is read in.
#[derive(Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
    zone: TimeZone,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Schedule({:?} in {})",
            self.expression,
            zone_name(&self.zone)
        )
    }
}

impl Schedule {
    /// Parses a 5-field expression, or 6 fields with leading seconds. The error
    /// is croner's reason, for the caller to place in the file.
    pub fn parse(expression: &str, zone: TimeZone) -> Result<Schedule, String> {
        let fields = expression.split_whitespace().count();
        if !(fields == 5 || fields == 6 || expression.trim_start().starts_with('@')) {
            return Err(format!(
                "'{expression}' has {fields} fields; a schedule has 5 (minute hour day month \
                 weekday), or 6 with leading seconds"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("'{expression}' is not a valid cron expression: {e}"))?;
        let schedule = Schedule {
            expression: expression.to_owned(),
            cron,
            zone,
        };
        // An expression such as "0 0 30 2 *" parses but never fires.
        if schedule.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(format!("'{expression}' never fires"));
        }
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.zone.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The newest fire time at or before `t`.
    pub fn latest_until(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&t.to_zoned(self.zone.clone()), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The next `n` fire times after `t`, in the schedule's zone.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Zoned> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next.to_zoned(self.zone.clone()));
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The longest gap between fire times over the next few runs after `t`:
    /// how old the newest backup may be when the schedule is kept.
    pub fn longest_gap(&self, t: Timestamp) -> Option<SignedDuration> {
        let mut times = vec![self.latest_until(t)?];
        times.extend(self.upcoming(t, 6).into_iter().map(|z| z.timestamp()));
        times
            .windows(2)
            .map(|pair| pair[1].duration_since(pair[0]))
            .max()
    }
}

/// The zone's IANA name, or its offset when it has none.
pub fn zone_name(zone: &TimeZone) -> String {
    zone.iana_name().map_or_else(
        || zone.to_offset(Timestamp::now()).to_string(),
        str::to_owned,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn at(text: &str, zone: &TimeZone) -> Timestamp {
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
            .unwrap()
            .to_zoned(zone.clone())
            .unwrap()
            .timestamp()
    }

    /// The next `n` fire times after a local time, as local times with offsets.
    fn runs(expression: &str, zone_name: &str, from: &str, n: usize) -> Vec<String> {
        let zone = zone(zone_name);
        let schedule = Schedule::parse(expression, zone.clone()).unwrap();
        schedule
            .upcoming(at(from, &zone), n)
            .iter()
            .map(|z| z.strftime("%Y-%m-%d %a %H:%M:%S %:z").to_string())
            .collect()
    }

    #[test]
    fn first_saturday_of_the_month_at_three_in_tokyo() {
        assert_eq!(
            runs("0 3 * * SAT#1", "Asia/Tokyo", "2026-11-24 12:00:00", 3),
            [
                "2026-12-05 Sat 03:00:00 +09:00",
                "2027-01-02 Sat 03:00:00 +09:00",
                "2027-02-06 Sat 03:00:00 +09:00",
            ]
        );
    }

    #[test]
    fn every_wednesday() {
        assert_eq!(
            runs("0 5 * * WED", "Asia/Tokyo", "2026-11-24 12:00:00", 3),
            [
                "2026-11-25 Wed 05:00:00 +09:00",
                "2026-12-02 Wed 05:00:00 +09:00",
                "2026-12-09 Wed 05:00:00 +09:00",
            ]
        );
    }

    #[test]
    fn every_six_hours() {
        assert_eq!(
            runs("0 */6 * * *", "Asia/Tokyo", "2026-11-24 12:00:00", 4),
            [
                "2026-11-24 Tue 18:00:00 +09:00",
                "2026-11-25 Wed 00:00:00 +09:00",
                "2026-11-25 Wed 06:00:00 +09:00",
                "2026-11-25 Wed 12:00:00 +09:00",
            ]
        );
    }

    #[test]
    fn the_fourth_week_of_the_month() {
        // Every day of days 22 to 28, the 4th week.
        assert_eq!(
            runs("0 4 22-28 * *", "Asia/Tokyo", "2026-11-27 12:00:00", 3),
            [
                "2026-11-28 Sat 04:00:00 +09:00",
                "2026-12-22 Tue 04:00:00 +09:00",
                "2026-12-23 Wed 04:00:00 +09:00",
            ]
        );
        // Its Sunday: `+` makes both day fields apply (the default is either).
        assert_eq!(
            runs("0 4 22-28 * +SUN", "Asia/Tokyo", "2026-11-24 12:00:00", 1),
            ["2026-12-27 Sun 04:00:00 +09:00"]
        );
        assert_eq!(
            runs("0 4 * * SUN#4", "Asia/Tokyo", "2026-11-24 12:00:00", 2),
            [
                "2026-12-27 Sun 04:00:00 +09:00",
                "2027-01-24 Sun 04:00:00 +09:00",
            ]
        );
    }

    #[test]
    fn six_fields_lead_with_seconds() {
        assert_eq!(
            runs("*/20 * * * * *", "UTC", "2026-11-24 12:00:00", 3),
            [
                "2026-11-24 Tue 12:00:20 +00:00",
                "2026-11-24 Tue 12:00:40 +00:00",
                "2026-11-24 Tue 12:01:00 +00:00",
            ]
        );
    }

    #[test]
    fn a_spring_forward_night_neither_skips_nor_doubles() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            runs("30 2 * * *", "America/New_York", "2026-03-07 00:00:00", 3),
            [
                "2026-03-07 Sat 02:30:00 -05:00",
                "2026-03-08 Sun 03:00:00 -04:00",
                "2026-03-09 Mon 02:30:00 -04:00",
            ]
        );
        // A job outside the gap keeps its wall time on both sides.
        assert_eq!(
            runs("0 3 * * *", "America/New_York", "2026-03-07 00:00:00", 3),
            [
                "2026-03-07 Sat 03:00:00 -05:00",
                "2026-03-08 Sun 03:00:00 -04:00",
                "2026-03-09 Mon 03:00:00 -04:00",
            ]
        );
    }

    #[test]
    fn a_fall_back_night_runs_once() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        assert_eq!(
            runs("30 1 * * *", "America/New_York", "2026-10-31 00:00:00", 3),
            [
                "2026-10-31 Sat 01:30:00 -04:00",
                "2026-11-01 Sun 01:30:00 -04:00",
                "2026-11-02 Mon 01:30:00 -05:00",
            ]
        );
        // Every 6 hours: 24 hours of wall time, 25 real hours, still 4 runs.
        assert_eq!(
            runs("0 */6 * * *", "America/New_York", "2026-10-31 23:00:00", 5),
            [
                "2026-11-01 Sun 00:00:00 -04:00",
                "2026-11-01 Sun 06:00:00 -05:00",
                "2026-11-01 Sun 12:00:00 -05:00",
                "2026-11-01 Sun 18:00:00 -05:00",
                "2026-11-02 Mon 00:00:00 -05:00",
            ]
        );
    }

    #[test]
    fn the_runbook_schedules_keep_their_wall_time_through_a_dst_year() {
        // A year of New York, both DST changes included: every fire time is at
        // the wall time asked for, on a day the expression allows, once.
        let ny = zone("America/New_York");
        let from = at("2025-12-31 23:59:59", &ny);
        let until = at("2027-01-01 00:00:00", &ny);
        type Allowed = fn(&Zoned) -> bool;
        let cases: [(&str, Allowed, &str); 4] = [
            (
                "0 3 * * SAT#1",
                |z| z.weekday() == jiff::civil::Weekday::Saturday && z.day() <= 7,
                "03:00",
            ),
            (
                "0 5 * * WED",
                |z| z.weekday() == jiff::civil::Weekday::Wednesday,
                "05:00",
            ),
            ("0 */6 * * *", |z| z.hour() % 6 == 0, ""),
            ("0 4 22-28 * *", |z| (22..=28).contains(&z.day()), "04:00"),
        ];
        for (expression, allowed, wall) in cases {
            let schedule = Schedule::parse(expression, ny.clone()).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let mut t = from;
            let mut count = 0;
            while let Some(next) = schedule.next_after(t).filter(|n| *n < until) {
                let local = next.to_zoned(ny.clone());
                assert!(allowed(&local), "{expression}: {local}");
                if !wall.is_empty() {
                    assert_eq!(
                        local.strftime("%H:%M").to_string(),
                        wall,
                        "{expression}: {local}"
                    );
                }
                assert!(
                    seen.insert(local.strftime("%F %H:%M").to_string()),
                    "{expression}: twice at {local}"
                );
                t = next;
                count += 1;
            }
            let expected = match expression {
                "0 3 * * SAT#1" => 12,
                "0 5 * * WED" => 52,
                "0 */6 * * *" => 365 * 4,
                _ => 12 * 7,
            };
            assert_eq!(count, expected, "{expression}");
        }
    }

    #[test]
    fn the_zone_is_read_at_each_fire_time_not_frozen() {
        // Started in winter, a daily 03:00 job is still at 03:00 local in summer.
        let zone = zone("Europe/Berlin");
        let schedule = Schedule::parse("0 3 * * *", zone.clone()).unwrap();
        let winter = at("2026-01-10 12:00:00", &zone);
        let mut t = winter;
        for _ in 0..200 {
            t = schedule.next_after(t).unwrap();
        }
        let local = t.to_zoned(zone);
        assert_eq!(local.strftime("%H:%M %:z").to_string(), "03:00 +02:00");
    }

    #[test]
    fn bad_expressions_say_why() {
        let utc = TimeZone::UTC;
        for (bad, says) in [
            ("0 3 * *", "4 fields"),
            ("0 0 3 * * * 2027", "7 fields"),
            ("0 25 * * *", "not a valid cron expression"),
            ("0 3 * * FUNDAY", "not a valid cron expression"),
        ] {
            let e = Schedule::parse(bad, utc.clone()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_longest_gap_is_the_interval_a_check_expects() {
        let utc = TimeZone::UTC;
        let now = at("2026-11-24 12:00:00", &utc);
        let daily = Schedule::parse("0 3 * * *", utc.clone()).unwrap();
        assert_eq!(daily.longest_gap(now), Some(SignedDuration::from_hours(24)));
        let monthly = Schedule::parse("0 3 * * SAT#1", utc).unwrap();
        assert!(monthly.longest_gap(now).unwrap() >= SignedDuration::from_hours(24 * 35));
    }
}
