//! `backup config check`: validate the configuration and show what it resolves to.
//!
//! Every secret the job files name is tried too. One that is not on this host
//! (a variable not set, a file not there) is a warning, since a laptop that
//! only lists backups needs no database password; `--strict` makes it an
//! error. One that is there and wrong (a file others may read, an empty
//! passphrase) is always an error.

use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{BackupSource, Job, JobKind};
use crate::schedule::zone_name;
use crate::secret::Unresolved;

/// How many fire times `config check` shows per job.
const SHOWN_RUNS: usize = 5;

/// The next fire times of a job, in its zone, as `2026-11-25 Wed 03:00:00 +09:00`.
fn next_runs(job: &Job) -> Vec<String> {
    job.schedule.as_ref().map_or_else(Vec::new, |s| {
        s.upcoming(jiff::Timestamp::now(), SHOWN_RUNS)
            .iter()
            .map(|z| z.strftime("%Y-%m-%d %a %H:%M:%S %:z").to_string())
            .collect()
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate every job file and print the resolved jobs; secrets that
    /// cannot be read here are warnings.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Fail (exit 3) when a secret the job files name cannot be read here too.
    #[arg(long)]
    strict: bool,
}

/// A secret that cannot be read, as `--json` shows it.
fn secret_json(u: &Unresolved) -> serde_json::Value {
    json!({
        "message": u.message,
        "defined_at": u.origin.as_ref().map(|o| o.to_string()),
        "hint": u.hint,
        "missing": u.missing,
    })
}

/// `warning: [databases.app] password_env: ... (jobs/app.toml:7)`, and its hint.
fn print_unreadable(label: &str, u: &Unresolved) {
    match &u.origin {
        Some(origin) => eprintln!("{label}: {} ({origin})", u.message),
        None => eprintln!("{label}: {}", u.message),
    }
    if let Some(hint) = &u.hint {
        eprintln!("hint: {hint}");
    }
}

pub fn run(engine: &Engine, command: Command, json: bool) -> Result<()> {
    let Command::Check(args) = command;
    let config = &engine.config;
    let unreadable: Vec<Unresolved> = config
        .secrets()
        .into_iter()
        .filter_map(|s| s.try_resolve().err())
        .collect();
    let (errors, warnings): (Vec<Unresolved>, Vec<Unresolved>) = unreadable
        .into_iter()
        .partition(|u| args.strict || !u.missing);
    let failed = (!errors.is_empty()).then(|| {
        let n = errors.len();
        Error::config(format!(
            "{n} secret{} of the configuration cannot be {}",
            if n == 1 { "" } else { "s" },
            if errors.iter().all(|u| u.missing) {
                "read on this host"
            } else {
                "used"
            }
        ))
        .with_hint(if args.strict {
            "export the variables and create the files named above, or leave out --strict \
             where a host needs only some of them (listing needs no database password)"
        } else {
            "fix the secrets named above"
        })
    });
    if json {
        let jobs: Vec<_> = config
            .jobs
            .values()
            .map(|job| {
                let db = job.database();
                let mut out = json!({
                    "job": job.name, "type": job.kind.name(), "defined_at": job.origin.to_string(),
                    "timezone": job.timezone.iana_name(),
                    "database": db.map(|db| json!({"name": db.name, "url": db.url, "password_from": db.password_from})),
                    "schedule": job.schedule.as_ref().map(|s| s.expression()),
                    "next_runs": next_runs(job),
                    "overlap": format!("{:?}", job.policy.overlap).to_lowercase(),
                    "timeout_seconds": job.policy.timeout.map(|t| t.as_secs()),
                    "retries": job.policy.retries,
                    "catch_up": format!("{:?}", job.policy.catch_up).to_lowercase(),
                    "records_in": job.record_storages().first().map(|s| &s.name),
                });
                match &job.kind {
                    JobKind::Backup(b) => {
                        out["storages"] = b
                            .storages
                            .iter()
                            .map(|s| json!({"name": s.name, "kind": s.kind.to_string()}))
                            .collect();
                        out["compression"] = json!(b.compression.to_string());
                        out["retention"] =
                            json!(b.retention.as_ref().map(crate::retention::describe));
                        out["incomplete_after_seconds"] = json!(b.incomplete_after.as_secs());
                        if let BackupSource::Directory(dir) = &b.source {
                            out["path"] = json!(dir.display().to_string());
                        }
                    }
                    JobKind::Prune(p) => {
                        out["backup_job"] = json!(p.backup_job);
                    }
                    JobKind::RestoreTest(t) => {
                        out["backup_job"] = json!(t.backup_job);
                        out["at"] = json!(tested_backup(t.at));
                        out["scratch_database"] = json!(t.scratch_database);
                        out["checks"] = json!(t.checks);
                        out["keep_on_failure"] = json!(t.keep_on_failure);
                    }
                    JobKind::Maintenance(m) => {
                        out["tasks"] = m.tasks.iter().map(|t| t.name()).collect();
                        out["heavy"] = json!(m.is_heavy());
                        out["all"] = json!(m.targets.all);
                        out["tables"] = json!(m.targets.tables);
                        out["exclude"] = json!(m.targets.exclude);
                        out["lock_timeout_ms"] = json!(m.lock_timeout.as_millis() as u64);
                        out["lock_retries"] = json!(m.lock_retries);
                        out["window"] = json!(m.window.map(|w| w.to_string()));
                        out["reindex_concurrently"] = json!(m.reindex_concurrently);
                    }
                }
                out
            })
            .collect();
        super::print_json(&json!({
            "ok": failed.is_none(),
            "jobs": jobs,
            "warnings": warnings.iter().map(secret_json).collect::<Vec<_>>(),
            "errors": errors.iter().map(secret_json).collect::<Vec<_>>(),
        }))?;
        return failed.map_or(Ok(()), Err);
    }
    for job in config.jobs.values() {
        println!(
            "job {} ({}) defined at {}",
            job.name,
            job.kind.name(),
            job.origin
        );
        println!("  timezone:    {}", zone_name(&job.timezone));
        match &job.schedule {
            Some(schedule) => {
                println!("  schedule:    {}", schedule.expression());
                for (i, run) in next_runs(job).iter().enumerate() {
                    let label = if i == 0 { "  next runs:" } else { "" };
                    println!("{label:<15}{run}");
                }
            }
            None => println!("  schedule:    none (runs only with `backup run`)"),
        }
        if let Some(db) = job.database() {
            let password = db
                .password_from
                .as_deref()
                .map_or(String::new(), |p| format!(", password from {p}"));
            println!("  database:    {} = {}{password}", db.name, db.url);
        }
        match &job.kind {
            JobKind::Backup(b) => {
                if let BackupSource::Directory(dir) = &b.source {
                    println!("  directory:   {}", dir.display());
                }
                for s in &b.storages {
                    println!("  storage:     {} ({})", s.name, s.kind);
                }
                println!("  compression: {}", b.compression);
                if let Some(r) = &b.retention {
                    println!("  retention:   {}", crate::retention::describe(r));
                }
            }
            JobKind::Prune(p) => println!("  prunes:      job {} by its retention", p.backup_job),
            JobKind::RestoreTest(t) if config.physical_job(&t.backup_job, "").is_ok() => {
                println!(
                    "  tests:       physical job {}: a throwaway cluster recovered to a moment \
                     drawn from the last 24 hours of its recovery window",
                    t.backup_job
                );
                for c in &t.checks {
                    println!("  check:       {}: {}", c.name, c.expected());
                }
            }
            JobKind::RestoreTest(t) => {
                println!(
                    "  tests:       {} backup of job {}, restored into {}",
                    tested_backup(t.at),
                    t.backup_job,
                    t.scratch_database
                        .as_deref()
                        .unwrap_or("<dbname>_restore_test_<backup id>")
                );
                for c in &t.checks {
                    println!("  check:       {}: {}", c.name, c.expected());
                }
            }
            JobKind::Maintenance(m) => {
                let tasks: Vec<&str> = m.tasks.iter().map(|t| t.name()).collect();
                println!(
                    "  tasks:       {}{}",
                    tasks.join(", "),
                    if m.is_heavy() {
                        " (heavy: waits for dumps of the database, and they for it)"
                    } else {
                        ""
                    }
                );
                let t = &m.targets;
                let scope = if t.tables.is_empty() {
                    "every table".to_owned()
                } else {
                    t.tables.join(", ")
                };
                let exclude = if t.exclude.is_empty() {
                    String::new()
                } else {
                    format!(" except {}", t.exclude.join(", "))
                };
                println!("  tables:      {scope}{exclude}");
                if t.all {
                    println!("  targeting:   all = true (every table and index in scope)");
                } else {
                    println!(
                        "  targeting:   dead tuples >= {} and >= {:.0}%, table >= {}, index bloat >= {:.0}%, table bloat >= {:.0}%",
                        t.min_dead_tuples,
                        t.min_dead_ratio * 100.0,
                        crate::report::bytes_human(t.min_table_size),
                        t.min_index_bloat * 100.0,
                        t.min_table_bloat * 100.0
                    );
                }
                println!(
                    "  locks:       lock_timeout {}, {} retries{}",
                    crate::time::show_std_duration(m.lock_timeout),
                    m.lock_retries,
                    m.window.map_or(String::new(), |w| format!(", window {w}"))
                );
                if let Some(timeout) = job.policy.timeout {
                    println!("  timeout:     {}", crate::time::show_std_duration(timeout));
                }
            }
        }
        match job.record_storages().first() {
            Some(s) => println!("  records:     storage {}", s.name),
            None => println!("  records:     none kept: no storage in its file (set `reports`)"),
        }
    }
    for u in &warnings {
        print_unreadable("warning", u);
    }
    for u in &errors {
        print_unreadable("error", u);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let n = config.jobs.len();
    let unread = match warnings.len() {
        0 => String::new(),
        1 => "; 1 secret cannot be read on this host (see the warning)".to_owned(),
        w => format!("; {w} secrets cannot be read on this host (see the warnings)"),
    };
    println!(
        "configuration OK: {n} job{}{unread}",
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `at` as written: "latest", or "newest at least 7d old".
fn tested_backup(at: crate::model::TestedBackup) -> String {
    match at {
        crate::model::TestedBackup::Latest => "the newest".to_owned(),
        crate::model::TestedBackup::OlderThan(age) => format!(
            "the newest at least {} old",
            crate::time::show_std_duration(age)
        ),
    }
}
