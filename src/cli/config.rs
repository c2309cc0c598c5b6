//! `backup config check`: validate the configuration and show what it resolves to.

use serde_json::json;

use crate::engine::Engine;
use crate::error::Result;
use crate::model::JobKind;

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
        println!(
            "  timezone:    {}",
            job.timezone.iana_name().unwrap_or("(fixed offset)")
        );
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
