//! `backup restore`: plan, show, confirm, execute, prove.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use crate::catalog::Selector;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::jobs::restore::RestoreRequest;
use crate::model::BackupId;
use crate::pg::command::RestoreFlags;
use crate::time;

impl Args {
    pub(super) fn target_db(&self) -> &str {
        &self.target_db
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["at", "latest", "id"])))]
pub struct Args {
    /// The backup job whose backups to restore from.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The newest backup whose data is as of TIME or earlier:
    /// "2024-01-20 14:30:00 JST", "2024-01-20 14:30 +09:00", RFC 3339.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The newest backup.
    #[arg(long)]
    latest: bool,
    /// The backup with this id (see `backup list`).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// The database to restore into; created if missing.
    #[arg(long, value_name = "NAME")]
    target_db: String,
    /// Read from this storage instead of the job's first that has the backup.
    #[arg(long, value_name = "STORAGE")]
    storage: Option<String>,
    /// Drop and re-create the backup's objects in an existing, non-empty target.
    #[arg(long)]
    clean: bool,
    /// Parallel pg_restore jobs; above 1 the archive is spooled to a temp file.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
    /// Do not ask for confirmation on a terminal.
    #[arg(long)]
    yes: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not restore object ownership (pg_restore --no-owner).
    #[arg(long)]
    no_owner: bool,
    /// Do not restore privileges (pg_restore --no-acl).
    #[arg(long)]
    no_acl: bool,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let job = engine.config.job(&args.job)?;
    let selector = if let Some(at) = &args.at {
        Selector::At(time::parse_point(at, &job.timezone)?)
    } else if let Some(id) = &args.id {
        Selector::Id(BackupId::parse(id)?)
    } else {
        Selector::Latest
    };
    let request = RestoreRequest {
        selector,
        target_db: args.target_db.clone(),
        storage: args.storage.clone(),
        flags: RestoreFlags {
            clean: args.clean,
            jobs: args.jobs,
            no_owner: args.no_owner,
            no_acl: args.no_acl,
            no_tablespaces: false,
        },
    };
    let plan = engine.plan_restore(&args.job, &request).await?;
    let b = &plan.backup;
    if let Some(at) = plan.requested_at {
        // Said first and plainly: which backup, and how far before the asked time.
        eprintln!(
            "selected backup {}: data as of {}, {} before the requested {}",
            b.id,
            time::show(b.snapshot_at, &plan.timezone),
            time::show_duration(at.duration_since(b.snapshot_at)),
            time::show(at, &plan.timezone)
        );
    }
    if args.dry_run {
        if json {
            return super::print_json(&json!({
                "dry_run": true, "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at,
                "storage": plan.storage, "target_db": plan.target_db,
                "target_exists": plan.target.is_some(), "overwrites": plan.overwrites(),
            }));
        }
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    if !args.yes && std::io::stdin().is_terminal() {
        confirm(&plan.target_db, plan.overwrites())?;
    }
    let outcome = engine.restore(&plan).await?;
    if json {
        return super::print_json(&json!({
            "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at, "target_db": plan.target_db,
            "tables_checked": outcome.tables_checked, "rows_checked": outcome.rows_checked,
        }));
    }
    println!(
        "restored backup {} (data as of {}) into database {}: all {} tables match the backup's row counts ({} rows)",
        b.id,
        time::show(b.snapshot_at, &plan.timezone),
        plan.target_db,
        outcome.tables_checked,
        outcome.rows_checked
    );
    Ok(())
}

/// Asks on the terminal; anything but the expected answer cancels.
fn confirm(target: &str, overwrites: bool) -> Result<()> {
    let expected = if overwrites { target } else { "yes" };
    eprint!(
        "{}type {expected} to continue: ",
        if overwrites {
            format!("this replaces objects in database {target}; ")
        } else {
            String::new()
        }
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io(crate::error::Kind::Refused, "reading the confirmation", e))?;
    if answer.trim() == expected {
        Ok(())
    } else {
        Err(Error::refused("restore cancelled; nothing was changed"))
    }
}
