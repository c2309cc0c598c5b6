//! `backup status` (for people) and `backup check` (for monitors).
//!
//! Both read only what is in storage: run records and manifests. Nothing of
//! the daemon's memory is needed, so they answer the same on any host.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::model::{Job, JobKind};
use crate::report::{self, Outcome, RunRecord};
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

/// What storage says about one job.
#[derive(Debug, Serialize)]
struct JobState {
    job: String,
    #[serde(rename = "type")]
    kind: &'static str,
    schedule: Option<String>,
    next_run: Option<Timestamp>,
    last_run: Option<RunSummary>,
    last_success: Option<RunSummary>,
    newest_backup: Option<BackupSummary>,
    last_restore_test: Option<RunSummary>,
    /// Why part of the above could not be read.
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RunSummary {
    run_id: String,
    outcome: &'static str,
    trigger: &'static str,
    started_at: Timestamp,
    finished_at: Timestamp,
    duration_seconds: f64,
    error: Option<String>,
    /// The backup a restore test or drill restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_id: Option<String>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        RunSummary {
            run_id: r.run_id.clone(),
            outcome: r.outcome.name(),
            trigger: r.trigger.name(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_seconds: r.finished_at.duration_since(r.started_at).as_secs_f64(),
            error: r.error.clone(),
            backup_id: r.details["backup_id"].as_str().map(str::to_owned),
        }
    }
}

#[derive(Debug, Serialize)]
struct BackupSummary {
    id: String,
    snapshot_at: Timestamp,
    stored_size: u64,
    storages: Vec<String>,
}

async fn state_of(engine: &Engine, job: &Job, now: Timestamp) -> JobState {
    let mut state = JobState {
        job: job.name.clone(),
        kind: job.kind.name(),
        schedule: job.schedule.as_ref().map(|s| s.expression().to_owned()),
        next_run: job.schedule.as_ref().and_then(|s| s.next_after(now)),
        last_run: None,
        last_success: None,
        newest_backup: None,
        last_restore_test: None,
        problems: Vec::new(),
    };
    let is_backup = matches!(job.kind, JobKind::Backup(_));
    match engine.list(Some(&job.name)).await {
        _ if !is_backup => {}
        Ok(listed) => {
            state.newest_backup = listed
                .into_iter()
                .flat_map(|(_, backups)| backups)
                .next()
                .map(|b| BackupSummary {
                    id: b.manifest.id.to_string(),
                    snapshot_at: b.manifest.snapshot_at,
                    stored_size: b.manifest.stored_size(),
                    storages: b.storages,
                });
        }
        Err(e) => state.problems.push(e.to_string()),
    }
    if job.record_storages().is_empty() {
        state.problems.push(
            "no storage keeps this job's run records: declare a storage in its file or \
             set `reports = \"STORAGE\"`"
                .to_owned(),
        );
    }
    // Records go to every storage of the job; the first that answers is read.
    for storage_spec in job.record_storages() {
        let storage = match crate::storage::open(storage_spec).await {
            Ok(s) => s,
            Err(e) => {
                state.problems.push(e.to_string());
                continue;
            }
        };
        let s = storage.as_ref();
        let name = job.name.as_str();
        let dir = job.records_dir();
        let tag = job.run_tag();
        let kind = job.kind.name();
        let (last, success, test) = futures::join!(
            report::newest_records(s, dir, &tag, 1, |r| r.job == name
                && r.kind == kind
                && r.outcome != Outcome::Skipped),
            report::newest_records(s, dir, &tag, 1, |r| r.job == name
                && r.kind == kind
                && r.succeeded),
            report::newest_records(s, dir, "restore-test", 1, |r| r.kind == "restore-test"
                && r.succeeded),
        );
        match (last, success, test) {
            (Ok(last), Ok(success), Ok(test)) => {
                state.last_run = last.first().map(RunSummary::from);
                state.last_success = success.first().map(RunSummary::from);
                state.last_restore_test = test.first().map(RunSummary::from);
                break;
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => state.problems.push(e.to_string()),
        }
    }
    state
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
                show_duration(SignedDuration::from_secs_f64(r.duration_seconds)),
                r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
            ),
            None => println!("  last run:       none recorded"),
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
            _ if s.kind != "backup" => {}
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
        match &s.last_restore_test {
            _ if s.kind != "backup" => {}
            Some(r) => println!(
                "  restore tested: {} ({}), backup {}",
                show(r.finished_at),
                age(now, r.finished_at),
                r.backup_id.as_deref().unwrap_or("?")
            ),
            None => println!("  restore tested: never"),
        }
        for p in &s.problems {
            println!("  problem:        {p}");
        }
    }
    Ok(())
}

/// Nagios states, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Status {
    Ok,
    Warning,
    Critical,
}

/// Judges one job: stale or missing backups are CRITICAL, a failed last run
/// is WARNING. For other jobs, whose lateness loses no data, a stale or
/// missing success is WARNING.
fn judge(
    job: &Job,
    s: &JobState,
    max_age: Option<SignedDuration>,
    now: Timestamp,
) -> (Status, String) {
    // --max-age is about backups; a monthly maintenance job goes by its schedule.
    let max_age = max_age.filter(|_| s.kind == "backup");
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
    match &s.newest_backup {
        _ if s.kind != "backup" => match &s.last_success {
            None => {
                status = Status::Warning;
                notes.push("never succeeded".to_owned());
            }
            Some(r) => {
                let old = now.duration_since(r.finished_at);
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
    (status, format!("{}: {}", job.name, notes.join(", ")))
}

pub async fn check(engine: &Engine, args: CheckArgs, json: bool) -> Result<()> {
    let now = engine.clock().now();
    let mut worst = Status::Ok;
    let mut lines = Vec::new();
    let mut details = Vec::new();
    for job in jobs(engine, args.job.as_deref())? {
        let state = state_of(engine, job, now).await;
        let (status, line) = judge(job, &state, args.max_age, now);
        worst = worst.max(status);
        details.push(json!({ "job": job.name, "status": status, "summary": line, "state": state }));
        lines.push(line);
    }
    let word = match worst {
        Status::Ok => "OK",
        Status::Warning => "WARNING",
        Status::Critical => "CRITICAL",
    };
    if json {
        super::print_json(&json!({ "status": worst, "jobs": details }))?;
    } else {
        println!("BACKUP {word} - {}", lines.join("; "));
    }
    match worst {
        Status::Ok => Ok(()),
        Status::Warning => Err(Error::new(Kind::CheckWarning, word).reported()),
        Status::Critical => Err(Error::new(Kind::CheckCritical, word).reported()),
    }
}
