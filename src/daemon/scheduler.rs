//! The daemon's schedule book: which job is due when, which runs are going,
//! what to do with a fire time that comes while its job still runs.
//!
//! A plain state machine, fed instants and told when runs end; it never reads
//! a clock nor sleeps, so every rule here is tested with made-up times. The
//! daemon's loop owns the clock and does the waiting.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::model::Overlap;
use crate::report::Trigger;
use crate::schedule::Schedule;

/// One fire time of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub job: String,
    pub at: Timestamp,
    pub trigger: Trigger,
}

/// What the daemon is to do about a fire time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start(Fire),
    /// Not run; recorded as skipped, with why.
    Skip(Fire, &'static str),
}

struct Slot {
    schedule: Schedule,
    overlap: Overlap,
    /// The next fire time not yet acted on.
    next: Option<Timestamp>,
    running: bool,
    queued: Option<Fire>,
}

fn same_schedule(a: &Schedule, b: &Schedule) -> bool {
    a.expression() == b.expression() && a.zone().iana_name() == b.zone().iana_name()
}

#[derive(Default)]
pub struct Scheduler {
    slots: BTreeMap<String, Slot>,
}

/// A scheduled job as the scheduler needs it.
pub struct Entry {
    pub job: String,
    pub schedule: Schedule,
    pub overlap: Overlap,
}

impl Scheduler {
    /// Sets the jobs to schedule, keeping what is known of jobs that stay
    /// (a run going, a run queued): a reload never doubles a run. Fire times
    /// are counted from `now`.
    pub fn set_jobs(&mut self, entries: impl IntoIterator<Item = Entry>, now: Timestamp) {
        let mut slots = BTreeMap::new();
        for entry in entries {
            let old = self.slots.remove(&entry.job);
            // An unchanged schedule keeps its pending fire time: a reload just
            // after it fell due, before the loop acted on it, must not lose it.
            let next = match &old {
                Some(o) if o.next.is_some() && same_schedule(&o.schedule, &entry.schedule) => {
                    o.next
                }
                _ => entry.schedule.next_after(now),
            };
            let (running, queued) = old.map_or((false, None), |o| (o.running, o.queued));
            slots.insert(
                entry.job,
                Slot {
                    schedule: entry.schedule,
                    overlap: entry.overlap,
                    next,
                    running,
                    queued,
                },
            );
        }
        // Jobs removed while running are still tracked until they end.
        for (job, old) in std::mem::take(&mut self.slots) {
            if old.running {
                slots.insert(job, Slot { next: None, ..old });
            }
        }
        self.slots = slots;
    }

    /// At start, with `catch_up = "latest"`: the newest fire time at or before
    /// `now` that came after `last_run` (the start of the job's newest run
    /// record), if any. Without a record nothing is known to be missed.
    pub fn catch_up(
        &mut self,
        job: &str,
        last_run: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Decision> {
        let slot = self.slots.get_mut(job)?;
        let missed = slot.schedule.latest_until(now)?;
        if last_run? >= missed || slot.running {
            return None;
        }
        slot.running = true;
        // Time passed since the book was set up: the regular schedule must not
        // fire this same time again.
        if slot.next.is_some_and(|next| next <= missed) {
            slot.next = slot.schedule.next_after(missed);
        }
        Some(Decision::Start(Fire {
            job: job.to_owned(),
            at: missed,
            trigger: Trigger::CatchUp,
        }))
    }

    /// Everything due at `now`. A job's fire times that passed while the
    /// daemon was not looking (a suspended host) fold into one: the newest.
    pub fn due(&mut self, now: Timestamp) -> Vec<Decision> {
        let mut out = Vec::new();
        for (job, slot) in &mut self.slots {
            let Some(next) = slot.next else { continue };
            if next > now {
                continue;
            }
            let at = slot.schedule.latest_until(now).unwrap_or(next).max(next);
            slot.next = slot.schedule.next_after(now);
            let fire = Fire {
                job: job.clone(),
                at,
                trigger: Trigger::Schedule,
            };
            if !slot.running {
                slot.running = true;
                out.push(Decision::Start(fire));
                continue;
            }
            match slot.overlap {
                Overlap::Queue if slot.queued.is_none() => slot.queued = Some(fire),
                Overlap::Queue => out.push(Decision::Skip(
                    fire,
                    "the previous run is still going and one run is already queued",
                )),
                Overlap::Skip => out.push(Decision::Skip(fire, "the previous run is still going")),
            }
        }
        out
    }

    /// A run of `job` ended; returns the queued run to start now, if any.
    pub fn finished(&mut self, job: &str) -> Option<Fire> {
        let slot = self.slots.get_mut(job)?;
        if let Some(fire) = slot.queued.take() {
            return Some(fire);
        }
        slot.running = false;
        if slot.next.is_none() {
            // A job removed by a reload is forgotten once its run ends.
            self.slots.remove(job);
        }
        None
    }

    /// When the next fire time of any job comes.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.slots.values().filter_map(|s| s.next).min()
    }

    pub fn next_run(&self, job: &str) -> Option<Timestamp> {
        self.slots.get(job).and_then(|s| s.next)
    }

    pub fn is_running(&self, job: &str) -> bool {
        self.slots.get(job).is_some_and(|s| s.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn entry(job: &str, expression: &str, overlap: Overlap) -> Entry {
        Entry {
            job: job.to_owned(),
            schedule: Schedule::parse(expression, TimeZone::UTC).unwrap(),
            overlap,
        }
    }

    fn started(decisions: &[Decision]) -> Vec<(String, Timestamp)> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Start(f) => Some((f.job.clone(), f.at)),
                Decision::Skip(..) => None,
            })
            .collect()
    }

    #[test]
    fn a_job_fires_at_its_times_and_not_before() {
        let mut s = Scheduler::default();
        s.set_jobs(
            [entry("nightly", "0 3 * * *", Overlap::Skip)],
            t("2026-11-24T12:00:00Z"),
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-25T03:00:00Z")));
        assert!(s.due(t("2026-11-25T02:59:59Z")).is_empty());
        let d = s.due(t("2026-11-25T03:00:00.2Z"));
        assert_eq!(started(&d), [("nightly".into(), t("2026-11-25T03:00:00Z"))]);
        assert!(s.due(t("2026-11-25T03:00:01Z")).is_empty(), "fired once");
        assert_eq!(s.next_wake(), Some(t("2026-11-26T03:00:00Z")));
    }

    #[test]
    fn a_job_slower_than_its_interval_is_skipped_not_doubled() {
        let mut s = Scheduler::default();
        s.set_jobs(
            [entry("fast", "* * * * * *", Overlap::Skip)],
            t("2026-11-24T12:00:00Z"),
        );
        assert_eq!(started(&s.due(t("2026-11-24T12:00:01Z"))).len(), 1);
        for second in 2..6 {
            let d = s.due(t(&format!("2026-11-24T12:00:0{second}Z")));
            assert!(
                matches!(&d[..], [Decision::Skip(f, _)] if f.at == t(&format!("2026-11-24T12:00:0{second}Z"))),
                "{d:?}"
            );
        }
        assert_eq!(s.finished("fast"), None);
        assert_eq!(started(&s.due(t("2026-11-24T12:00:06Z"))).len(), 1);
    }

    #[test]
    fn queue_keeps_one_run_waiting_and_skips_the_rest() {
        let mut s = Scheduler::default();
        s.set_jobs(
            [entry("q", "* * * * * *", Overlap::Queue)],
            t("2026-11-24T12:00:00Z"),
        );
        assert_eq!(started(&s.due(t("2026-11-24T12:00:01Z"))).len(), 1);
        assert!(s.due(t("2026-11-24T12:00:02Z")).is_empty(), "queued");
        assert!(matches!(
            &s.due(t("2026-11-24T12:00:03Z"))[..],
            [Decision::Skip(..)]
        ));
        let queued = s.finished("q").expect("the queued run starts");
        assert_eq!(queued.at, t("2026-11-24T12:00:02Z"));
        assert!(s.is_running("q"));
        assert_eq!(s.finished("q"), None);
        assert!(!s.is_running("q"));
    }

    #[test]
    fn missed_fire_times_while_suspended_fold_into_the_newest() {
        let mut s = Scheduler::default();
        s.set_jobs(
            [entry("h", "0 * * * *", Overlap::Skip)],
            t("2026-11-24T12:30:00Z"),
        );
        let d = s.due(t("2026-11-24T17:10:00Z"));
        assert_eq!(started(&d), [("h".into(), t("2026-11-24T17:00:00Z"))]);
        assert_eq!(s.next_wake(), Some(t("2026-11-24T18:00:00Z")));
    }

    #[test]
    fn catch_up_runs_the_newest_missed_fire_time_once() {
        let mut s = Scheduler::default();
        let now = t("2026-11-25T09:00:00Z");
        s.set_jobs([entry("nightly", "0 3 * * *", Overlap::Skip)], now);
        // Down from the 23rd: the runs of the 24th and the 25th were missed.
        let d = s.catch_up("nightly", Some(t("2026-11-23T03:00:05Z")), now);
        assert_eq!(
            d,
            Some(Decision::Start(Fire {
                job: "nightly".into(),
                at: t("2026-11-25T03:00:00Z"),
                trigger: Trigger::CatchUp
            }))
        );
        s.finished("nightly");
        // Set up just before a fire time that then passed: caught up, not fired twice.
        let mut late = Scheduler::default();
        late.set_jobs(
            [entry("nightly", "0 3 * * *", Overlap::Skip)],
            t("2026-11-25T02:59:59Z"),
        );
        let d = late.catch_up(
            "nightly",
            Some(t("2026-11-24T03:00:01Z")),
            t("2026-11-25T03:00:02Z"),
        );
        assert!(matches!(d, Some(Decision::Start(f)) if f.at == t("2026-11-25T03:00:00Z")));
        late.finished("nightly");
        assert!(late.due(t("2026-11-25T03:00:03Z")).is_empty());
        // Ran after the newest fire time: nothing missed. No record: nothing known.
        assert_eq!(
            s.catch_up("nightly", Some(t("2026-11-25T03:00:01Z")), now),
            None
        );
        assert_eq!(s.catch_up("nightly", None, now), None);
    }

    #[test]
    fn a_reload_right_after_a_fire_time_does_not_lose_it() {
        let mut s = Scheduler::default();
        s.set_jobs(
            [entry("n", "0 3 * * *", Overlap::Skip)],
            t("2026-11-24T12:00:00Z"),
        );
        // SIGHUP handled at 03:00:00.1, before the loop looked at the clock.
        s.set_jobs(
            [entry("n", "0 3 * * *", Overlap::Skip)],
            t("2026-11-25T03:00:00.1Z"),
        );
        let d = s.due(t("2026-11-25T03:00:00.2Z"));
        assert_eq!(started(&d), [("n".into(), t("2026-11-25T03:00:00Z"))]);
        // A changed schedule counts from the reload.
        s.set_jobs(
            [entry("n", "30 3 * * *", Overlap::Skip)],
            t("2026-11-25T03:00:01Z"),
        );
        assert_eq!(s.next_run("n"), Some(t("2026-11-25T03:30:00Z")));
    }

    #[test]
    fn a_reload_keeps_a_running_job_running() {
        let mut s = Scheduler::default();
        let now = t("2026-11-24T12:00:00Z");
        s.set_jobs([entry("a", "* * * * * *", Overlap::Skip)], now);
        assert_eq!(started(&s.due(t("2026-11-24T12:00:01Z"))).len(), 1);
        s.set_jobs(
            [
                entry("a", "*/2 * * * * *", Overlap::Skip),
                entry("b", "0 3 * * *", Overlap::Skip),
            ],
            t("2026-11-24T12:00:01.5Z"),
        );
        assert!(s.is_running("a"));
        assert!(matches!(
            &s.due(t("2026-11-24T12:00:02Z"))[..],
            [Decision::Skip(..)]
        ));
        // Removed while running: tracked until it ends, then gone.
        s.set_jobs(
            [entry("b", "0 3 * * *", Overlap::Skip)],
            t("2026-11-24T12:00:03Z"),
        );
        assert!(s.is_running("a"));
        assert_eq!(s.next_run("a"), None);
        s.finished("a");
        assert!(!s.is_running("a"));
    }
}
