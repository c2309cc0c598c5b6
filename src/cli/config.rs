//! `backup config check`: validate the configuration and show what it resolves to.

use serde_json::json;

use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Job, JobKind};
use crate::schedule::zone_name;

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
    /// Validate every job file and print the resolved jobs.
    Check,
}

pub fn run(engine: &Engine, command: Command, json: bool) -> Result<()> {
    let Command::Check = command;
    let config = &engine.config;
    if json {
        let jobs: Vec<_> = config
            .jobs
            .values()
            .map(|job| {
                let JobKind::Backup(b) = &job.kind;
                json!({
                    "job": job.name, "type": job.kind.name(), "defined_at": job.origin.to_string(),
                    "timezone": job.timezone.iana_name(),
                    "database": {"name": b.database.name, "url": b.database.url, "password_from": b.database.password_from},
                    "storages": b.storages.iter().map(|s| json!({"name": s.name, "kind": s.kind.to_string()})).collect::<Vec<_>>(),
                    "compression": b.compression.to_string(),
                    "schedule": job.schedule.as_ref().map(|s| s.expression()),
                    "next_runs": next_runs(job),
                    "overlap": format!("{:?}", job.policy.overlap).to_lowercase(),
                    "timeout_seconds": job.policy.timeout.map(|t| t.as_secs()),
                    "retries": job.policy.retries,
                    "catch_up": format!("{:?}", job.policy.catch_up).to_lowercase(),
                })
            })
            .collect();
        return super::print_json(&json!({"ok": true, "jobs": jobs}));
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
        match &job.kind {
            JobKind::Backup(b) => {
                let password = b
                    .database
                    .password_from
                    .as_deref()
                    .map_or(String::new(), |p| format!(", password from {p}"));
                println!(
                    "  database:    {} = {}{password}",
                    b.database.name, b.database.url
                );
                for s in &b.storages {
                    println!("  storage:     {} ({})", s.name, s.kind);
                }
                println!("  compression: {}", b.compression);
            }
        }
    }
    println!("configuration OK: {} jobs", config.jobs.len());
    Ok(())
}
