//! `backup wal check --job J`: run once at setup (and by drills) to see
//! that the server archives its WAL into the job, proven end to end.

use crate::engine::Engine;
use crate::error::Result;
use crate::jobs::wal_check::{self, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The physical job.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// How long the switched segment may take to reach every storage.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    timeout: std::time::Duration,
}

fn word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ok => "ok     ",
        Verdict::Problem => "PROBLEM",
        Verdict::Unknown => "UNKNOWN",
    }
}

fn parse_timeout(text: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("'{text}' is not a duration such as 60s or 5m"))
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let (job, spec, db, _) = engine.config.physical_job(&args.job, "wal check")?;
    let storages = engine.open_all(&spec.storages).await?;
    let checked = wal_check::check(&job.name, &job.timezone, db, &storages, args.timeout).await?;
    let failure = checked.failure();
    if json {
        super::super::print_json(&checked)?;
    } else {
        println!("job {}: wal check", job.name);
        for f in &checked.findings {
            // A problem's text names the setting and its value already.
            let line = match (f.verdict, f.setting.as_str(), &f.value) {
                (Verdict::Problem, _, _) => format!("PROBLEM  {}", f.says),
                (_, "pg_stat_archiver", _) | (_, _, None) => {
                    format!("{}  {}: {}", word(f.verdict), f.setting, f.says)
                }
                (_, "role", Some(v)) => format!("{}  role {v}: {}", word(f.verdict), f.says),
                (_, setting, Some(v)) => {
                    format!("{}  {setting} = '{v}': {}", word(f.verdict), f.says)
                }
            };
            println!("  {line}");
            if let Some(fix) = &f.fix {
                println!("           fix: {fix}");
            }
        }
        if let Some(proof) = &checked.proof
            && !proof.arrived.is_empty()
        {
            let stores: Vec<&str> = proof.arrived.iter().map(|a| a.storage.as_str()).collect();
            let missing: Vec<&str> = proof.missing.iter().map(|m| m.storage.as_str()).collect();
            println!(
                "segment {} archived to {} in {:.1}s{}",
                proof.segment,
                stores.join(", "),
                proof.seconds(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; not in {} after {}s",
                        missing.join(", "),
                        proof.timeout_seconds
                    )
                }
            );
        }
        if let Some(proof) = &checked.proof
            && proof.arrived.is_empty()
        {
            println!(
                "segment {} reached no storage within {}s",
                proof.segment, proof.timeout_seconds
            );
        }
        if let Some(why) = &checked.not_proven {
            println!("chain not proven: {why}");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
