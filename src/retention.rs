//! Retention: which backups a job keeps, and why. A pure function of the
//! backups, the policy and the time, so every rule is tested without a
//! storage, and `backup prune --dry-run` prints exactly what prune will do.
//!
//! Rules that hold whatever the policy says:
//! - the newest complete backup is kept;
//! - the newest backup that passed a restore test is kept;
//! - pinned backups are kept;
//! - a backup an incremental one that is kept was taken against is kept, and
//!   so on back to the full backup: a chain restores only whole;
//! - if the job's newest run did not succeed, nothing is deleted: a broken
//!   job must not eat its history.
//!
//! Time buckets (`keep_daily` and the rest) are read in the job's zone: a
//! backup at 23:59 and one at 00:01 JST fall on different days. Each bucket
//! rule keeps the newest backup of each of its newest N buckets that have one.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::model::{BackupId, RetentionBucket as Bucket, RetentionPolicy as Policy};

/// `keep_last 7, keep_daily 30, max_age 30d, min_keep 3`: the policy in one line.
pub fn describe(p: &Policy) -> String {
    let mut parts = Vec::new();
    if p.keep_last > 0 {
        parts.push(format!("keep_last {}", p.keep_last));
    }
    for bucket in Bucket::ALL {
        if p.count(bucket) > 0 {
            parts.push(format!("{} {}", bucket.key(), p.count(bucket)));
        }
    }
    if let Some(age) = p.max_age {
        parts.push(format!("max_age {}", show(age)));
    }
    if p.min_keep > 0 {
        parts.push(format!("min_keep {}", p.min_keep));
    }
    parts.join(", ")
}

/// How far ahead of this host's clock a backup may be dated before the clocks
/// are suspect: the database server's clock dates it.
const FUTURE_TOLERANCE: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: BackupId,
    /// When its data is as of; for an incomplete backup, when it started.
    pub at: Timestamp,
    /// It has a manifest.
    pub complete: bool,
    /// Why it is pinned, when it is.
    pub pinned: Option<String>,
    /// It passed a restore test.
    pub verified: bool,
    /// An incremental base backup: the backup it was taken against.
    pub based_on: Option<BackupId>,
    /// Kept whatever the policy says, for this reason (a newer backup
    /// whose manifest does not read may have been taken against it).
    pub held: Option<String>,
}

/// What retention is asked to judge.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub backups: Vec<Candidate>,
    /// The newest run of the job, when it did not succeed: its run id and outcome.
    pub newest_run_failed: Option<String>,
    /// Incomplete backups younger than this may still be running.
    pub incomplete_after: Duration,
    /// A run of the job is going on now: an incomplete backup of any age may
    /// be the one it is writing.
    pub running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

/// One backup's fate, with every rule that decided it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: BackupId,
    pub at: Timestamp,
    pub complete: bool,
    pub action: Action,
    pub reasons: Vec<String>,
}

/// Every backup of a job with keep or delete and why, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    pub entries: Vec<Entry>,
    /// Why nothing at all is deleted, when that is the case by rule.
    pub held: Option<String>,
}

impl RetentionPlan {
    pub fn deletions(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.action == Action::Delete)
    }

    pub fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.action == Action::Keep)
    }
}

/// The bucket `at` falls in, in `zone`: `2026-11-24`, `2026-W48`, ...
fn bucket_of(bucket: Bucket, at: Timestamp, zone: &TimeZone) -> String {
    let z = at.to_zoned(zone.clone());
    let format = match bucket {
        // The offset keeps apart the two 02:30s of an autumn night.
        Bucket::Hourly => "%Y-%m-%d %H:00 %:z",
        Bucket::Daily => "%Y-%m-%d",
        Bucket::Weekly => "%G-W%V",
        Bucket::Monthly => "%Y-%m",
        Bucket::Yearly => "%Y",
    };
    z.strftime(format).to_string()
}

fn show(d: Duration) -> String {
    crate::time::show_std_duration(d)
}

/// Decides, for every backup, keep or delete, and why.
pub fn plan(history: &History, policy: &Policy, zone: &TimeZone, now: Timestamp) -> RetentionPlan {
    let mut backups: Vec<&Candidate> = history.backups.iter().collect();
    backups.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];
    let complete: Vec<usize> = (0..backups.len())
        .filter(|&i| backups[i].complete)
        .collect();
    // A backup dated ahead of now (a wrong clock) is 0 old, not |age| old.
    let age = |c: &Candidate| Duration::try_from(now.duration_since(c.at)).unwrap_or_default();
    let within_max_age = |c: &Candidate| policy.max_age.is_none_or(|m| age(c) <= m);

    if let Some(&i) = complete.first() {
        reasons[i].push("newest complete backup".to_owned());
    }
    if let Some(&i) = complete.iter().find(|&&i| backups[i].verified) {
        reasons[i].push("newest backup that passed a restore test".to_owned());
    }
    for &i in &complete {
        if let Some(why) = &backups[i].pinned {
            reasons[i].push(if why.is_empty() {
                "pinned".to_owned()
            } else {
                format!("pinned: {why}")
            });
        }
    }
    for &i in &complete {
        if let Some(why) = &backups[i].held {
            reasons[i].push(why.clone());
        }
    }
    for &i in complete.iter().take(policy.min_keep as usize) {
        reasons[i].push(format!("min_keep = {}", policy.min_keep));
    }
    let recent: Vec<usize> = complete
        .iter()
        .copied()
        .filter(|&i| within_max_age(backups[i]))
        .collect();
    for &i in recent.iter().take(policy.keep_last as usize) {
        reasons[i].push(format!("keep_last = {}", policy.keep_last));
    }
    for bucket in Bucket::ALL {
        let count = policy.count(bucket) as usize;
        let mut seen = BTreeSet::new();
        for &i in &recent {
            if seen.len() == count {
                break;
            }
            let key = bucket_of(bucket, backups[i].at, zone);
            if seen.insert(key.clone()) {
                reasons[i].push(format!("{}: newest of {key}", bucket.key()));
            }
        }
    }
    if let Some(max_age) = policy.max_age
        && policy.keep_last == 0
        && Bucket::ALL.iter().all(|b| policy.count(*b) == 0)
    {
        // max_age alone: everything younger is kept.
        for &i in &recent {
            reasons[i].push(format!("younger than max_age {}", show(max_age)));
        }
    }
    for (i, c) in backups.iter().enumerate() {
        if c.complete {
            continue;
        }
        if history.running {
            reasons[i].push(
                "incomplete (no manifest), and a run of the job is going on: it may be writing it"
                    .to_owned(),
            );
        } else if age(c) < history.incomplete_after {
            reasons[i].push(format!(
                "incomplete (no manifest) but younger than incomplete_after {}: may still be running",
                show(history.incomplete_after)
            ));
        }
    }

    // Until nothing changes: a kept link keeps the one before it.
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..backups.len() {
            let Some(parent) = backups[i]
                .based_on
                .as_ref()
                .filter(|_| !reasons[i].is_empty())
            else {
                continue;
            };
            let why = format!("incremental backup {} was taken against it", backups[i].id);
            if let Some(p) = backups.iter().position(|c| &c.id == parent)
                && !reasons[p].contains(&why)
            {
                reasons[p].push(why);
                changed = true;
            }
        }
    }

    // Holds, in order: any of them keeps every backup.
    let future = backups
        .iter()
        .find(|c| c.at.duration_since(now) > FUTURE_TOLERANCE);
    let held = if let Some(c) = future {
        Some(format!(
            "backup {} is dated {}, ahead of this host's clock ({}): a clock is wrong, and \
             \"newest\" cannot be trusted; nothing is deleted until the clocks agree",
            c.id, c.at, now
        ))
    } else if let Some(run) = &history.newest_run_failed {
        Some(format!(
            "the job's newest run {run} did not succeed: nothing is deleted until one does"
        ))
    } else {
        backups
            .first()
            .filter(|c| !c.complete && !history.running)
            .map(|c| {
                format!(
                    "the newest backup {} is incomplete and no run is going on: the last run \
                     died without a record; nothing is deleted until a run succeeds",
                    c.id
                )
            })
    };
    let entries = backups
        .iter()
        .zip(reasons)
        .map(|(c, mut why)| {
            let action = if why.is_empty() && held.is_none() {
                why.push(if !c.complete {
                    format!(
                        "incomplete (no manifest) and older than incomplete_after {}",
                        show(history.incomplete_after)
                    )
                } else if !within_max_age(c) {
                    format!(
                        "older than max_age {} and no rule keeps it",
                        policy.max_age.map(show).unwrap_or_default()
                    )
                } else {
                    "no rule keeps it".to_owned()
                });
                Action::Delete
            } else {
                if why.is_empty()
                    && let Some(h) = &held
                {
                    why.push(h.clone());
                }
                Action::Keep
            };
            Entry {
                id: c.id.clone(),
                at: c.at,
                complete: c.complete,
                action,
                reasons: why,
            }
        })
        .collect();
    RetentionPlan { entries, held }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokyo() -> TimeZone {
        TimeZone::get("Asia/Tokyo").unwrap()
    }

    fn at(text: &str) -> Timestamp {
        format!("{text}+09:00[Asia/Tokyo]")
            .parse::<jiff::Zoned>()
            .unwrap()
            .timestamp()
    }

    fn backup(when: &str) -> Candidate {
        let at = at(when);
        Candidate {
            id: BackupId::from_start(at, 0),
            at,
            complete: true,
            pinned: None,
            verified: false,
            based_on: None,
            held: None,
        }
    }

    fn history(backups: Vec<Candidate>) -> History {
        History {
            backups,
            newest_run_failed: None,
            incomplete_after: Duration::from_secs(86_400),
            running: false,
        }
    }

    fn kept(plan: &RetentionPlan) -> Vec<String> {
        plan.kept()
            .map(|e| e.at.to_zoned(tokyo()).strftime("%m-%d %H:%M").to_string())
            .collect()
    }

    fn reasons_of(plan: &RetentionPlan, when: &str) -> Vec<String> {
        plan.entries
            .iter()
            .find(|e| e.at == at(when))
            .unwrap()
            .reasons
            .clone()
    }

    const NOW: &str = "2026-11-25T12:00:00";

    /// Every day at 03:00 for the 10 days before NOW.
    fn dailies() -> Vec<Candidate> {
        (16..=25)
            .map(|d| backup(&format!("2026-11-{d:02}T03:00:00")))
            .collect()
    }

    #[test]
    fn a_full_backup_stays_while_an_incremental_taken_against_it_is_kept() {
        // Two chains: full 16th, incrementals 17th-19th; full 20th, 21st-25th.
        let mut backups = dailies();
        for i in 1..backups.len() {
            if i != 4 {
                backups[i].based_on = Some(backups[i - 1].id.clone());
            }
        }
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let p = plan(&history(backups.clone()), &policy, &tokyo(), at(NOW));
        // The newest two need the whole of the second chain, and nothing of the first.
        assert_eq!(
            kept(&p),
            [
                "11-25 03:00",
                "11-24 03:00",
                "11-23 03:00",
                "11-22 03:00",
                "11-21 03:00",
                "11-20 03:00"
            ]
        );
        assert_eq!(
            reasons_of(&p, "2026-11-20T03:00:00"),
            [format!(
                "incremental backup {} was taken against it",
                backups[5].id
            )]
        );
        assert!(
            p.deletions().all(|e| e.at <= at("2026-11-19T03:00:00")),
            "{:?}",
            p.entries
        );
        // Held (a newer manifest does not read): kept, saying why.
        let mut held = backups.clone();
        held[0].held = Some("backup X's manifest does not read".into());
        let p = plan(&history(held), &policy, &tokyo(), at(NOW));
        assert_eq!(
            reasons_of(&p, "2026-11-16T03:00:00"),
            ["backup X's manifest does not read"]
        );
        // Keeping only the last of the first chain keeps its full backup too.
        let mut pinned = backups;
        pinned[2].pinned = Some("audit".into());
        let p = plan(&history(pinned), &policy, &tokyo(), at(NOW));
        assert!(
            kept(&p).contains(&"11-16 03:00".to_owned()),
            "{:?}",
            kept(&p)
        );
        assert!(!kept(&p).contains(&"11-19 03:00".to_owned()));
    }

    #[test]
    fn keep_last_keeps_the_newest_and_says_so() {
        let policy = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        let p = plan(&history(dailies()), &policy, &tokyo(), at(NOW));
        assert_eq!(kept(&p), ["11-25 03:00", "11-24 03:00", "11-23 03:00"]);
        assert_eq!(
            reasons_of(&p, "2026-11-25T03:00:00"),
            ["newest complete backup", "keep_last = 3"]
        );
        assert_eq!(reasons_of(&p, "2026-11-22T03:00:00"), ["no rule keeps it"]);
        assert_eq!(p.deletions().count(), 7);
    }

    #[test]
    fn daily_buckets_keep_the_newest_of_each_tokyo_day() {
        // 23:59 and 00:01 JST are different days (though both are the same UTC day).
        let backups = vec![
            backup("2026-11-24T23:59:00"),
            backup("2026-11-25T00:01:00"),
            backup("2026-11-25T06:00:00"),
        ];
        let policy = Policy {
            keep_daily: 2,
            ..Policy::default()
        };
        let p = plan(&history(backups), &policy, &tokyo(), at(NOW));
        assert_eq!(kept(&p), ["11-25 06:00", "11-24 23:59"]);
        assert_eq!(
            reasons_of(&p, "2026-11-24T23:59:00"),
            ["keep_daily: newest of 2026-11-24"]
        );
        assert_eq!(reasons_of(&p, "2026-11-25T00:01:00"), ["no rule keeps it"]);
    }

    #[test]
    fn weekly_monthly_and_yearly_buckets() {
        let backups = vec![
            backup("2026-11-25T03:00:00"), // Wed, W48
            backup("2026-11-23T03:00:00"), // Mon, W48
            backup("2026-11-22T03:00:00"), // Sun, W47
            backup("2026-10-31T03:00:00"),
            backup("2025-12-31T23:00:00"),
        ];
        let policy = Policy {
            keep_weekly: 2,
            keep_monthly: 2,
            keep_yearly: 2,
            ..Policy::default()
        };
        let p = plan(&history(backups), &policy, &tokyo(), at(NOW));
        assert_eq!(
            reasons_of(&p, "2026-11-22T03:00:00"),
            ["keep_weekly: newest of 2026-W47"]
        );
        assert_eq!(
            reasons_of(&p, "2026-10-31T03:00:00"),
            ["keep_monthly: newest of 2026-10"]
        );
        assert_eq!(
            reasons_of(&p, "2025-12-31T23:00:00"),
            ["keep_yearly: newest of 2025"]
        );
        assert_eq!(reasons_of(&p, "2026-11-23T03:00:00"), ["no rule keeps it"]);
    }

    #[test]
    fn max_age_caps_the_keep_rules_but_not_min_keep() {
        let policy = Policy {
            keep_daily: 30,
            max_age: Some(Duration::from_secs(5 * 86_400)),
            min_keep: 7,
            ..Policy::default()
        };
        let p = plan(&history(dailies()), &policy, &tokyo(), at(NOW));
        assert_eq!(p.kept().count(), 7);
        let r = reasons_of(&p, "2026-11-19T03:00:00");
        assert_eq!(r, ["min_keep = 7"]);
        assert_eq!(
            reasons_of(&p, "2026-11-18T03:00:00"),
            ["older than max_age 5d and no rule keeps it"]
        );
        assert!(
            reasons_of(&p, "2026-11-21T03:00:00")
                .contains(&"keep_daily: newest of 2026-11-21".to_owned())
        );
    }

    #[test]
    fn max_age_alone_keeps_everything_younger() {
        let policy = Policy {
            max_age: Some(Duration::from_secs(3 * 86_400)),
            ..Policy::default()
        };
        let p = plan(&history(dailies()), &policy, &tokyo(), at(NOW));
        assert_eq!(kept(&p), ["11-25 03:00", "11-24 03:00", "11-23 03:00"]);
        assert_eq!(
            reasons_of(&p, "2026-11-23T03:00:00"),
            ["younger than max_age 3d"]
        );
    }

    #[test]
    fn the_newest_complete_verified_and_pinned_backups_are_always_kept() {
        let mut backups = dailies();
        backups[0].pinned = Some("legal hold".into()); // 11-16
        backups[2].verified = true; // 11-18
        backups[8].complete = false; // 11-24: a run that died
        let policy = Policy {
            max_age: Some(Duration::from_secs(3600)),
            ..Policy::default()
        };
        let mut h = history(backups);
        h.incomplete_after = Duration::from_secs(3600);
        let p = plan(&h, &policy, &tokyo(), at(NOW));
        assert_eq!(
            reasons_of(&p, "2026-11-25T03:00:00"),
            ["newest complete backup"]
        );
        assert_eq!(
            reasons_of(&p, "2026-11-18T03:00:00"),
            ["newest backup that passed a restore test"]
        );
        assert_eq!(
            reasons_of(&p, "2026-11-16T03:00:00"),
            ["pinned: legal hold"]
        );
        assert_eq!(
            reasons_of(&p, "2026-11-24T03:00:00"),
            ["incomplete (no manifest) and older than incomplete_after 1h"]
        );
    }

    #[test]
    fn a_young_incomplete_backup_may_still_be_running() {
        let mut running = backup("2026-11-25T11:30:00");
        running.complete = false;
        let p = plan(
            &history(vec![running, backup("2026-11-24T03:00:00")]),
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            &tokyo(),
            at(NOW),
        );
        assert_eq!(p.deletions().count(), 0);
        assert!(reasons_of(&p, "2026-11-25T11:30:00")[0].contains("may still be running"));
    }

    #[test]
    fn an_old_incomplete_backup_is_kept_while_the_job_runs() {
        // Started before the newest complete one, still going (a lock holds it).
        let mut long_run = backup("2026-11-22T03:00:00");
        long_run.complete = false;
        let mut h = history(vec![long_run, backup("2026-11-23T03:00:00")]);
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        assert_eq!(plan(&h, &policy, &tokyo(), at(NOW)).deletions().count(), 1);
        h.running = true;
        let p = plan(&h, &policy, &tokyo(), at(NOW));
        assert_eq!(p.deletions().count(), 0);
        assert!(reasons_of(&p, "2026-11-22T03:00:00")[0].contains("a run of the job is going on"));
    }

    #[test]
    fn a_run_that_died_without_a_record_deletes_nothing() {
        let mut died = backup("2026-11-25T03:00:00");
        died.complete = false;
        let mut backups = dailies();
        backups.pop();
        backups.push(died);
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let p = plan(&history(backups), &policy, &tokyo(), at(NOW));
        assert_eq!(p.deletions().count(), 0);
        assert!(
            p.held
                .unwrap()
                .contains("the last run died without a record")
        );
    }

    #[test]
    fn a_backup_dated_in_the_future_holds_every_delete() {
        let mut backups = dailies();
        backups.push(backup("2027-11-25T03:00:00"));
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let p = plan(&history(backups), &policy, &tokyo(), at(NOW));
        assert_eq!(p.deletions().count(), 0);
        assert!(p.held.unwrap().contains("a clock is wrong"));
    }

    #[test]
    fn the_two_half_past_twos_of_an_autumn_night_are_two_hours() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let first: Timestamp = "2026-10-25T00:30:00Z".parse().unwrap(); // 02:30 CEST
        let second: Timestamp = "2026-10-25T01:30:00Z".parse().unwrap(); // 02:30 CET
        let candidates = [first, second]
            .map(|t| Candidate {
                id: BackupId::from_start(t, 0),
                at: t,
                complete: true,
                pinned: None,
                verified: false,
                based_on: None,
                held: None,
            })
            .to_vec();
        let policy = Policy {
            keep_hourly: 2,
            ..Policy::default()
        };
        let now: Timestamp = "2026-10-25T02:00:00Z".parse().unwrap();
        let p = plan(&history(candidates), &policy, &berlin, now);
        assert_eq!(p.kept().count(), 2, "{p:#?}");
    }

    #[test]
    fn a_failing_newest_run_deletes_nothing() {
        let mut h = history(dailies());
        h.newest_run_failed = Some("20261125T030000Z-backup (failed)".into());
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let p = plan(&h, &policy, &tokyo(), at(NOW));
        assert_eq!(p.deletions().count(), 0);
        assert!(p.held.as_ref().unwrap().contains("did not succeed"));
        assert!(reasons_of(&p, "2026-11-16T03:00:00")[0].contains("nothing is deleted"));
    }

    #[test]
    fn the_seed_policies_keep_what_their_runbooks_say() {
        // Shiojiri: backups every 6 hours; 30 days of dailies, 7 days of 6-hourly.
        let shiojiri = Policy {
            keep_daily: 30,
            keep_hourly: 28,
            max_age: Some(Duration::from_secs(30 * 86_400)),
            ..Policy::default()
        };
        let now = at("2026-11-25T12:00:00");
        let six_hourly: Vec<Candidate> = (0..60 * 4)
            .map(|i| {
                let t = now - jiff::SignedDuration::from_hours(6 * i + 3);
                Candidate {
                    id: BackupId::from_start(t, 0),
                    at: t,
                    complete: true,
                    pinned: None,
                    verified: false,
                    based_on: None,
                    held: None,
                }
            })
            .collect();
        let p = plan(&history(six_hourly), &shiojiri, &tokyo(), now);
        let week_ago = now - jiff::SignedDuration::from_hours(7 * 24);
        let recent = p.kept().filter(|e| e.at > week_ago).count();
        assert_eq!(recent, 28, "every 6-hourly backup of the last 7 days");
        let month_ago = now - jiff::SignedDuration::from_hours(30 * 24);
        assert!(p.kept().all(|e| e.at >= month_ago));
        // The 28 of the last week cover 8 calendar days; 22 more days have one each.
        assert_eq!(p.kept().count(), 28 + 22, "{:?}", kept(&p));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
            // Up to 60 backups over the 400 days before NOW.
            proptest::collection::vec(
                (0i64..400 * 24 * 60, any::<bool>(), any::<bool>(), 0u8..10),
                0..60,
            )
            .prop_map(|raw| {
                let now = at(NOW);
                let mut seen = std::collections::BTreeMap::new();
                raw.into_iter()
                    .map(|(minutes, complete, verified, pin)| {
                        // Coarse times, so some backups share a second: -1, -2 ids.
                        let t = now - jiff::SignedDuration::from_mins(minutes - minutes % 7);
                        let n = seen.entry(t).and_modify(|n| *n += 1).or_insert(0u32);
                        Candidate {
                            id: BackupId::from_start(t, *n),
                            at: t,
                            complete: complete || minutes % 3 == 0,
                            pinned: (pin == 0).then(|| "kept by hand".to_owned()),
                            verified,
                            based_on: None,
                            held: None,
                        }
                    })
                    .collect()
            })
        }

        fn policies() -> impl Strategy<Value = Policy> {
            (
                0u32..5,
                0u32..30,
                0u32..40,
                0u32..10,
                0u32..13,
                0u32..3,
                proptest::option::of(1u64..500),
                0u32..5,
            )
                .prop_map(
                    |(last, hourly, daily, weekly, monthly, yearly, max_days, min_keep)| Policy {
                        keep_last: last,
                        keep_hourly: hourly,
                        keep_daily: daily,
                        keep_weekly: weekly,
                        keep_monthly: monthly,
                        keep_yearly: yearly,
                        max_age: max_days.map(|d| Duration::from_secs(d * 86_400)),
                        min_keep,
                    },
                )
        }

        proptest! {
            #[test]
            fn the_invariants_hold_for_any_history_and_policy(
                backups in candidates(),
                policy in policies(),
                failing in any::<bool>(),
            ) {
                let mut h = history(backups.clone());
                if failing {
                    h.newest_run_failed = Some("r (failed)".into());
                }
                let p = plan(&h, &policy, &tokyo(), at(NOW));
                prop_assert_eq!(p.entries.len(), backups.len());
                let keeps = |id: &BackupId| p.entries.iter().any(|e| &e.id == id && e.action == Action::Keep);
                let mut complete: Vec<&Candidate> = backups.iter().filter(|c| c.complete).collect();
                complete.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
                if let Some(newest) = complete.first() {
                    prop_assert!(keeps(&newest.id), "newest complete deleted");
                }
                if let Some(verified) = complete.iter().find(|c| c.verified) {
                    prop_assert!(keeps(&verified.id), "newest verified deleted");
                }
                for c in backups.iter().filter(|c| c.complete && c.pinned.is_some()) {
                    prop_assert!(keeps(&c.id), "pinned deleted");
                }
                if failing {
                    prop_assert_eq!(p.deletions().count(), 0);
                }
                for e in &p.entries {
                    prop_assert!(!e.reasons.is_empty(), "an entry without a reason");
                }

                // A reference for every delete: no rule of the policy keeps it.
                let now = at(NOW);
                let recent: Vec<&Candidate> = complete
                    .iter()
                    .copied()
                    .filter(|c| policy.max_age.is_none_or(|m| {
                        Duration::try_from(now.duration_since(c.at)).unwrap_or_default() <= m
                    }))
                    .collect();
                for e in p.deletions() {
                    let rank = |list: &[&Candidate]| list.iter().position(|c| c.id == e.id);
                    if let Some(r) = rank(&complete) {
                        prop_assert!(r >= policy.min_keep as usize, "min_keep broken");
                    }
                    let Some(r) = rank(&recent) else { continue };
                    prop_assert!(r >= policy.keep_last as usize, "keep_last broken");
                    prop_assert!(policy.max_age.is_none() || policy.keep_last > 0
                        || Bucket::ALL.iter().any(|b| policy.count(*b) > 0), "max_age alone broken");
                    for bucket in Bucket::ALL {
                        let mut newest_of: Vec<(String, BackupId)> = Vec::new();
                        for c in &recent {
                            let key = bucket_of(bucket, c.at, &tokyo());
                            if !newest_of.iter().any(|(k, _)| *k == key) {
                                newest_of.push((key, c.id.clone()));
                            }
                        }
                        newest_of.truncate(policy.count(bucket) as usize);
                        prop_assert!(!newest_of.iter().any(|(_, id)| *id == e.id),
                            "{} would keep {}", bucket.key(), e.id);
                    }
                }

                // Carrying the plan out and planning again deletes nothing more.
                let survivors: Vec<Candidate> = backups
                    .iter()
                    .filter(|c| keeps(&c.id))
                    .cloned()
                    .collect();
                let mut after = history(survivors);
                after.newest_run_failed = h.newest_run_failed.clone();
                let again = plan(&after, &policy, &tokyo(), at(NOW));
                prop_assert_eq!(again.deletions().count(), 0,
                    "second plan deletes {:?}", again.deletions().map(|e| e.id.clone()).collect::<Vec<_>>());
            }
        }
    }
}
