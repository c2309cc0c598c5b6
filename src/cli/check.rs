//! `backup status` (for people) and `backup check` (for monitors).
//!
//! Both read only what is in storage: run records and manifests. Nothing of
//! the daemon's memory is needed, so they answer the same on any host.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::jobs::wal_status::{self, WalStatus};
use crate::model::Job;
use crate::report;
use crate::status::{JobState, WalState, state_of};
use crate::time::show_duration;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this job.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only this job.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// The newest backup may be this old [default: twice the job's interval,
    /// 48h for a job without a schedule].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    max_age: Option<SignedDuration>,
}

fn parse_age(text: &str) -> std::result::Result<SignedDuration, String> {
    crate::time::parse_duration(text)
        .and_then(|d| SignedDuration::try_from(d).ok())
        .ok_or_else(|| format!("'{text}' is not a duration such as 26h, 2d or 90m"))
}

fn jobs<'a>(engine: &'a Engine, only: Option<&str>) -> Result<Vec<&'a Job>> {
    Ok(match only {
        Some(name) => vec![engine.config.job(name)?],
        None => engine.config.jobs.values().collect(),
    })
}

fn age(now: Timestamp, then: Timestamp) -> String {
    format!("{} ago", show_duration(now.duration_since(then)))
}

pub async fn status(engine: &Engine, args: StatusArgs, json: bool) -> Result<()> {
    let now = engine.clock().now();
    let mut states = Vec::new();
    for job in jobs(engine, args.job.as_deref())? {
        states.push((job, state_of(engine, job, now).await));
    }
    if json {
        let list: Vec<&JobState> = states.iter().map(|(_, s)| s).collect();
        return super::print_json(&json!({ "now": now, "jobs": list }));
    }
    for (job, s) in &states {
        let zone = &job.timezone;
        let show = |t: Timestamp| crate::time::show(t, zone);
        println!("job {} ({})", s.job, s.kind);
        match (&s.schedule, s.next_run) {
            (Some(expr), Some(next)) => println!("  schedule:       {expr}, next {}", show(next)),
            _ => println!("  schedule:       none (runs with `backup run`)"),
        }
        match &s.last_run {
            Some(r) => println!(
                "  last run:       {} {} ({}, took {}){}",
                r.outcome,
                age(now, r.finished_at),
                r.trigger,
                crate::time::show_seconds(r.duration_seconds),
                r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
            ),
            None => println!("  last run:       none recorded"),
        }
        for failure in s.last_run.iter().flat_map(|r| &r.storage_errors) {
            println!(
                "  storage error:  {} {} {}: {}",
                failure.storage,
                failure.kind.as_str(),
                age(now, failure.at),
                failure.message
            );
        }
        match &s.last_success {
            Some(r) => println!(
                "  last success:   {} ({})",
                show(r.finished_at),
                age(now, r.finished_at)
            ),
            None => println!("  last success:   never"),
        }
        match &s.newest_backup {
            _ if !holds_backups(s.kind) => {}
            Some(b) => println!(
                "  newest backup:  {} (data as of {}, {}; {} stored in {})",
                b.id,
                show(b.snapshot_at),
                age(now, b.snapshot_at),
                report::bytes_human(b.stored_size),
                b.storages.join(", ")
            ),
            None => println!("  newest backup:  none"),
        }
        if let Some(g) = &s.growth
            && (s.kind == "files" || s.kind == "physical")
        {
            let change = g.raw_size as i64 - g.since_raw_size as i64;
            println!(
                "  growth:         {} {} since {} ({}): about {} per 30 days",
                if s.kind == "files" {
                    "tar"
                } else {
                    "base backup"
                },
                signed_bytes(change),
                g.since_id,
                age(now, g.since_snapshot_at),
                signed_bytes(g.raw_bytes_per_30_days),
            );
        } else if let Some(g) = &s.growth {
            let change = g.raw_size as i64 - g.since_raw_size as i64;
            let percent = if g.since_raw_size > 0 {
                format!(
                    " ({:+.1}%)",
                    change as f64 * 100.0 / g.since_raw_size as f64
                )
            } else {
                String::new()
            };
            println!(
                "  growth:         dump {}{percent}, {:+} rows since {} ({}): about {} and {:+} rows per 30 days",
                signed_bytes(change),
                g.rows - g.since_rows,
                g.since_id,
                age(now, g.since_snapshot_at),
                signed_bytes(g.raw_bytes_per_30_days),
                g.rows_per_30_days
            );
        }
        if let Some(w) = &s.wal {
            show_wal(&w.archive, zone, now);
        }
        match &s.last_restore_test {
            _ if s.kind != "backup" && s.kind != "physical" => {}
            Some(r) => println!(
                "  restore tested: {} ({}), backup {}{}",
                show(r.finished_at),
                age(now, r.finished_at),
                r.backup_id.as_deref().unwrap_or("?"),
                r.tested_moment
                    .map(|at| format!(", recovered to {}", show(at)))
                    .unwrap_or_default()
            ),
            None => println!("  restore tested: never"),
        }
        for p in &s.problems {
            println!("  problem:        {p}");
        }
    }
    Ok(())
}

/// The WAL lines of `status`: one summary, then a line per gap, drop, the
/// last push failure and each note.
fn show_wal(w: &WalStatus, zone: &jiff::tz::TimeZone, now: Timestamp) {
    let show = |t: Timestamp| crate::time::show(t, zone);
    let mut summary = match &w.newest {
        Some(n) => format!(
            "newest {} archived {}",
            n.segment,
            n.archived_at
                .map_or("at an unknown time".to_owned(), |t| age(now, t))
        ),
        None => "nothing archived yet".to_owned(),
    };
    match &w.window {
        Some(win) => {
            let from = win
                .from
                .to_zoned(zone.clone())
                .strftime("%Y-%m-%d %H:%M:%S");
            match win.to {
                Some(to) => summary.push_str(&format!("; window {from} .. {}", show(to))),
                None => summary.push_str(&format!(
                    "; window from {} (no WAL archived after base backup {})",
                    show(win.from),
                    win.base_backup
                )),
            }
        }
        None if w.newest.is_some() => summary.push_str("; no base backup, so no recovery window"),
        None => {}
    }
    summary.push_str(&match w.gaps.len() {
        0 => "; no gaps".to_owned(),
        1 => "; 1 GAP".to_owned(),
        n => format!("; {n} GAPS"),
    });
    match w.dropped.len() {
        0 => {}
        1 => summary.push_str("; 1 DROPPED segment"),
        n => summary.push_str(&format!("; {n} DROPPED segments")),
    }
    summary.push_str(&format!("; push failures: {}", w.push_failures.total));
    println!("  wal:            {summary}");
    let archived = |a: &Option<wal_status::ArchivedSegment>| match a {
        Some(a) => format!(
            "{}{}",
            a.segment,
            a.archived_at
                .map_or(String::new(), |t| format!(" (archived {})", show(t)))
        ),
        None => "nothing".to_owned(),
    };
    for g in &w.gaps {
        println!(
            "  wal gap:        {} .. {} ({} segment{} missing): recovery stops after {}, the archive resumes at {}",
            g.first,
            g.last,
            g.segments,
            if g.segments == 1 { "" } else { "s" },
            archived(&g.after),
            archived(&g.resumes)
        );
    }
    for d in &w.dropped {
        println!(
            "  wal dropped:    {}{}: the .ready backlog of {} passed wal_queue_max {}",
            d.file,
            d.dropped_at
                .map_or(String::new(), |t| format!(" at {}", show(t))),
            report::bytes_human(d.backlog_bytes),
            report::bytes_human(d.limit_bytes)
        );
    }
    if let Some(f) = &w.push_failures.last {
        println!(
            "  wal push failed: {} {}: {}",
            f.file,
            age(now, f.at),
            f.error
        );
    }
    for note in &w.notes {
        println!("  wal note:       {note}");
    }
}

/// Nagios states, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Status {
    Ok,
    Warning,
    Critical,
}

/// Whether a job of `kind` makes backups (a database's or a directory's).
fn holds_backups(kind: &str) -> bool {
    matches!(kind, "backup" | "files" | "physical")
}

/// One performance datum of the Nagios plugin guidelines:
/// `'label'=value[UOM];[warn];[crit]`.
#[derive(Debug, PartialEq)]
struct Perf {
    /// `age`, `size`, `duration`: prefixed with the job's name when several
    /// jobs are checked.
    what: &'static str,
    value: String,
    uom: &'static str,
    warn: Option<i64>,
    crit: Option<i64>,
}

impl Perf {
    fn show(&self, job: Option<&str>) -> String {
        let label = match job {
            Some(job) => format!("{job} {}", self.what),
            None => self.what.to_owned(),
        };
        // Quotes are needed around a label with spaces; a quote in it is doubled.
        let label = if label.contains([' ', '\'', '=']) {
            format!("'{}'", label.replace('\'', "''"))
        } else {
            label
        };
        let threshold = |t: Option<i64>| t.map_or(String::new(), |t| t.to_string());
        let mut text = format!("{label}={}{}", self.value, self.uom);
        if self.warn.is_some() || self.crit.is_some() {
            text.push_str(&format!(
                ";{};{}",
                threshold(self.warn),
                threshold(self.crit)
            ));
        }
        text
    }
}

/// Judges one job: stale or missing backups are CRITICAL, a failed last run
/// is WARNING. For other jobs, whose lateness loses no data, a stale or
/// missing success is WARNING. Also returns the figures behind the verdict,
/// with the thresholds it applied, as performance data.
fn judge(
    job: &Job,
    s: &JobState,
    max_age: Option<SignedDuration>,
    now: Timestamp,
) -> (Status, String, Vec<Perf>) {
    // --max-age is about backups; a monthly maintenance job goes by its schedule.
    let max_age = max_age.filter(|_| holds_backups(s.kind));
    let (limit, why) = match (
        max_age,
        job.schedule.as_ref().and_then(|sch| sch.longest_gap(now)),
    ) {
        (Some(limit), _) => (limit, "--max-age"),
        (None, Some(gap)) => (gap * 2, "twice the interval"),
        (None, None) => (
            SignedDuration::from_hours(48),
            "default for a job without a schedule",
        ),
    };
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    let mut perf = Vec::new();
    let age_perf = |old: SignedDuration, warn, crit| Perf {
        what: "age",
        value: old.as_secs().to_string(),
        uom: "s",
        warn,
        crit,
    };
    match &s.newest_backup {
        _ if !holds_backups(s.kind) => match &s.last_success {
            None => {
                status = Status::Warning;
                notes.push("never succeeded".to_owned());
            }
            Some(r) => {
                let old = now.duration_since(r.finished_at);
                perf.push(age_perf(old, Some(limit.as_secs()), None));
                if old > limit {
                    status = Status::Warning;
                    notes.push(format!(
                        "last success {} ago, more than {} ({why})",
                        show_duration(old),
                        show_duration(limit)
                    ));
                } else {
                    notes.push(format!("last success {} ago", show_duration(old)));
                }
            }
        },
        None => {
            status = Status::Critical;
            notes.push("no complete backup".to_owned());
        }
        Some(b) => {
            let old = now.duration_since(b.snapshot_at);
            perf.push(age_perf(old, None, Some(limit.as_secs())));
            perf.push(Perf {
                what: "size",
                value: b.stored_size.to_string(),
                uom: "B",
                warn: None,
                crit: None,
            });
            if old > limit {
                status = Status::Critical;
                notes.push(format!(
                    "newest backup {} is {} old, more than {} ({why})",
                    b.id,
                    show_duration(old),
                    show_duration(limit)
                ));
            } else {
                notes.push(format!("newest backup {} old", show_duration(old)));
            }
        }
    }
    if let Some(w) = &s.wal {
        let (wal_status, wal_notes, wal_perf) = judge_wal(w, now);
        status = status.max(wal_status);
        notes.extend(wal_notes);
        perf.extend(wal_perf);
    }
    if let Some(r) = &s.last_run {
        perf.push(Perf {
            what: "duration",
            value: format!("{:.3}", r.duration_seconds),
            uom: "s",
            warn: None,
            crit: None,
        });
    }
    if let Some(r) = &s.last_run
        && r.outcome != "succeeded"
    {
        status = status.max(Status::Warning);
        notes.push(format!(
            "last run {} {}",
            r.outcome,
            age(now, r.finished_at)
        ));
    }
    if !s.problems.is_empty() {
        status = status.max(Status::Warning);
        notes.push(s.problems.join("; "));
    }
    (status, format!("{}: {}", job.name, notes.join(", ")), perf)
}

/// Judges a physical job's WAL archive: WARNING when the newest archived
/// segment is older than `wal_max_age` or none is archived (archiving has
/// stopped, or never began), CRITICAL on a gap on the path recovery
/// replays or a segment `wal push` dropped: a point in time that cannot be
/// recovered to.
fn judge_wal(w: &WalState, now: Timestamp) -> (Status, Vec<String>, Option<Perf>) {
    let archive = &w.archive;
    let limit = SignedDuration::from_secs(w.max_age_seconds as i64);
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    let mut perf = None;
    match &archive.newest {
        None => {
            status = Status::Warning;
            notes.push("no WAL archived".to_owned());
        }
        Some(n) => match n.archived_at {
            None => notes.push(format!("newest WAL {} (time unknown)", n.segment)),
            Some(at) => {
                let old = now.duration_since(at);
                perf = Some(Perf {
                    what: "wal_age",
                    value: old.as_secs().max(0).to_string(),
                    uom: "s",
                    warn: Some(limit.as_secs()),
                    crit: None,
                });
                if old > limit {
                    status = Status::Warning;
                    notes.push(format!(
                        "newest archived WAL {} is {} old, more than {} (wal_max_age)",
                        n.segment,
                        show_duration(old),
                        show_duration(limit)
                    ));
                } else {
                    notes.push(format!("newest WAL {} old", show_duration(old)));
                }
            }
        },
    }
    if let Some(g) = archive.gaps.first() {
        status = Status::Critical;
        let more = match archive.gaps.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        notes.push(format!(
            "WAL gap: {} .. {} missing{more}, recovery cannot pass it",
            g.first, g.last
        ));
    }
    if let Some(d) = archive.dropped.first() {
        status = Status::Critical;
        let more = match archive.dropped.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        notes.push(format!(
            "WAL segment {}{more} dropped by wal push (wal_queue_max), never archived",
            d.file
        ));
    }
    if let Some(t) = archive.missing_history.first() {
        status = Status::Critical;
        notes.push(format!(
            "timeline {t} has WAL archived but no history file: recovery cannot follow it"
        ));
    }
    for row in &archive.storages {
        if row.error.is_some() {
            status = status.max(Status::Warning);
            notes.push(format!(
                "storage {}: the WAL archive could not be listed",
                row.storage
            ));
        } else if row.segments < archive.segments {
            // A recovery reading this storage alone stops at the first hole.
            status = status.max(Status::Warning);
            notes.push(format!(
                "storage {} holds {} of the {} archived WAL segments",
                row.storage, row.segments, archive.segments
            ));
        }
    }
    (status, notes, perf)
}

/// Text fit for the status line: one line, and no `|`, which would start
/// the performance data.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/")
}

pub async fn check(engine: &Engine, args: CheckArgs, json: bool) -> Result<()> {
    let now = engine.clock().now();
    let mut worst = Status::Ok;
    let mut lines = Vec::new();
    let mut perfdata = Vec::new();
    let mut details = Vec::new();
    // Labels name the job unless one was asked for: adding a job to the
    // files then never renames the series a graph already has.
    let label_job = args.job.is_none();
    for job in jobs(engine, args.job.as_deref())? {
        let state = state_of(engine, job, now).await;
        let (status, line, perf) = judge(job, &state, args.max_age, now);
        worst = worst.max(status);
        let mut detail =
            json!({ "job": job.name, "status": status, "summary": line, "state": state });
        if let Some(w) = &state.wal {
            detail["wal_status"] = json!(judge_wal(w, now).0);
        }
        details.push(detail);
        lines.push(one_line(&line));
        perfdata.extend(
            perf.iter()
                .map(|p| p.show(label_job.then_some(job.name.as_str()))),
        );
    }
    let word = match worst {
        Status::Ok => "OK",
        Status::Warning => "WARNING",
        Status::Critical => "CRITICAL",
    };
    if json {
        super::print_json(&json!({ "status": worst, "jobs": details }))?;
    } else if perfdata.is_empty() {
        println!("BACKUP {word} - {}", lines.join("; "));
    } else {
        println!(
            "BACKUP {word} - {} | {}",
            lines.join("; "),
            perfdata.join(" ")
        );
    }
    match worst {
        Status::Ok => Ok(()),
        Status::Warning => Err(Error::new(Kind::CheckWarning, word).reported()),
        Status::Critical => Err(Error::new(Kind::CheckCritical, word).reported()),
    }
}

/// `check` as a monitoring plugin: whatever kept it from judging (a job file
/// it cannot read, an unknown job, a signal) is UNKNOWN, exit 3, with one
/// status line on stdout like every other outcome. The error itself still
/// goes to stderr, with its hint.
pub fn unknown_unless_judged(result: Result<()>, json: bool) -> Result<()> {
    match result {
        Err(e) if !e.is_reported() => {
            print_unknown(e.message(), json);
            let unknown = Error::new(Kind::CheckUnknown, e.message());
            Err(match e.hint() {
                Some(hint) => unknown.with_hint(hint),
                None => unknown,
            })
        }
        other => other,
    }
}

/// The UNKNOWN status line (or JSON document) on stdout.
pub fn print_unknown(why: &str, json: bool) {
    if json {
        let _ = super::print_json(&json!({ "status": "UNKNOWN", "error": why }));
    } else {
        println!("BACKUP UNKNOWN - {}", one_line(why));
    }
}

fn signed_bytes(n: i64) -> String {
    let shown = report::bytes_human(n.unsigned_abs());
    if n < 0 {
        format!("-{shown}")
    } else {
        format!("+{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfdata_follows_the_plugin_guidelines() {
        let age = Perf {
            what: "age",
            value: "3600".into(),
            uom: "s",
            warn: None,
            crit: Some(172_800),
        };
        assert_eq!(age.show(None), "age=3600s;;172800");
        assert_eq!(age.show(Some("nightly")), "'nightly age'=3600s;;172800");
        let size = Perf {
            what: "size",
            value: "1234".into(),
            uom: "B",
            warn: None,
            crit: None,
        };
        assert_eq!(size.show(Some("db.nightly-2")), "'db.nightly-2 size'=1234B");
        assert_eq!(size.show(None), "size=1234B");
    }

    #[test]
    fn old_or_missing_wal_warns_and_a_gap_or_a_drop_is_critical() {
        use crate::jobs::wal_status::{ArchivedSegment, Dropped, WalGap};
        let now: Timestamp = "2026-12-06T03:00:00Z".parse().unwrap();
        let segment = |n: u32| format!("0000000100000000000000{n:02X}");
        let state = |minutes_ago: i64| WalState {
            archive: WalStatus {
                newest: Some(ArchivedSegment {
                    segment: segment(9),
                    archived_at: Some(now - SignedDuration::from_mins(minutes_ago)),
                }),
                oldest: None,
                segments: 8,
                window: None,
                path_from: Some(segment(2)),
                timelines: vec![1],
                gaps: vec![],
                dropped: vec![],
                missing_history: vec![],
                push_failures: Default::default(),
                storages: vec![],
                notes: vec![],
            },
            max_age_seconds: 3600,
        };
        let (status, notes, perf) = judge_wal(&state(5), now);
        assert_eq!(status, Status::Ok, "{notes:?}");
        assert_eq!(perf.unwrap().show(None), "wal_age=300s;3600;");
        let (status, notes, _) = judge_wal(&state(90), now);
        assert_eq!(status, Status::Warning);
        assert!(
            notes[0].contains("is 1h 30m old, more than 1h (wal_max_age)"),
            "{notes:?}"
        );
        let mut none = state(0);
        none.archive.newest = None;
        let (status, notes, perf) = judge_wal(&none, now);
        assert_eq!(
            (status, notes[0].as_str()),
            (Status::Warning, "no WAL archived")
        );
        assert!(perf.is_none());
        let mut gap = state(5);
        gap.archive.gaps.push(WalGap {
            first: segment(5),
            last: segment(6),
            segments: 2,
            after: None,
            resumes: None,
        });
        let (status, notes, _) = judge_wal(&gap, now);
        assert_eq!(status, Status::Critical);
        assert!(notes[1].contains(&segment(5)), "{notes:?}");
        let mut dropped = state(5);
        dropped.archive.dropped.push(Dropped {
            file: segment(7),
            dropped_at: Some(now),
            backlog_bytes: 9 << 30,
            limit_bytes: 8 << 30,
        });
        let (status, notes, _) = judge_wal(&dropped, now);
        assert_eq!(status, Status::Critical);
        assert!(notes[1].contains("dropped by wal push"), "{notes:?}");
    }

    #[test]
    fn the_status_text_is_one_line_without_a_pipe() {
        assert_eq!(
            one_line("storage s3: listing failed:\n  500 | internal\r\n"),
            "storage s3: listing failed: 500 / internal"
        );
    }
}
