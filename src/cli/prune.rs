//! `backup prune [--job J] [--dry-run]`: retention, planned and carried out.

use serde_json::json;

use crate::engine::{Engine, Prune};
use crate::error::{Error, Result};
use crate::jobs::prune::{self, StoragePrune};
use crate::model::JobKind;
use crate::retention::Action;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job [default: every backup job with a retention policy].
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// Print the plan: every backup, keep or delete, and why (and for a
    /// physical job the WAL ranges kept and deleted). Deletes nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn print(job: &str, p: &StoragePrune, dry_run: bool, zone: &jiff::tz::TimeZone) {
    println!(
        "job {job}, storage {}{}",
        p.storage,
        if dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        }
    );
    if let Some(held) = &p.plan.held {
        println!("  held: {held}");
    }
    for warning in &p.warnings {
        println!("  warning: {warning}");
    }
    for e in &p.plan.entries {
        let word = match e.action {
            Action::Keep => "keep  ",
            Action::Delete if dry_run => "delete",
            Action::Delete if p.deleted.contains(&e.id) => "DELETED",
            Action::Delete => "FAILED",
        };
        println!(
            "  {word} {}  {}  {}",
            e.id,
            crate::time::show(e.at, zone),
            e.reasons.join("; ")
        );
    }
    for f in &p.failed {
        println!("  could not delete {}: {}", f.backup, f.error);
    }
    if let Some(wal) = &p.wal {
        for line in prune::wal::describe(wal, dry_run, p.plan.held.as_deref()) {
            println!("  {line}");
        }
    }
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let jobs: Vec<String> = match &args.job {
        Some(name) => vec![name.clone()],
        None => engine
            .config
            .jobs
            .values()
            .filter(|j| matches!(&j.kind, JobKind::Backup(b) if b.retention.is_some()))
            .map(|j| j.name.clone())
            .collect(),
    };
    if jobs.is_empty() {
        return Err(
            Error::usage("no backup job has a retention policy: nothing to prune").with_hint(
                "add e.g. retention = { keep_daily = 30, max_age = \"30d\" } to a backup job",
            ),
        );
    }
    let mut out = Vec::new();
    let mut first_error: Option<Error> = None;
    for name in &jobs {
        let (job, spec) = engine.config.backup_job(name)?;
        let (prunes, unreachable, unrecorded) =
            prune_job(engine, Prune::new(job, spec)?, args.dry_run, cancel).await?;
        if json {
            out.push(json!({"job": name, "dry_run": args.dry_run, "storages": prunes}));
        } else {
            for p in &prunes {
                print(name, p, args.dry_run, &job.timezone);
            }
        }
        for e in prune::failure(&prunes)
            .into_iter()
            .chain(unreachable)
            .chain(unrecorded)
        {
            let e = e.context(format!("job {name}"));
            crate::report::print_error(&e);
            first_error.get_or_insert(e);
        }
    }
    if json {
        super::print_json(&out)?;
    }
    first_error.map_or(Ok(()), |e| Err(e.reported()))
}

/// The prune of one job, or only its plan: each storage's prune, a storage
/// that could not be listed, and why the run record could not be stored.
pub(super) async fn prune_job(
    engine: &Engine,
    work: Prune<'_>,
    dry_run: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(Vec<StoragePrune>, Option<Error>, Option<Error>)> {
    if dry_run {
        let plan = engine.plan(&work, cancel).await?;
        let prunes = plan.storages.into_iter().map(|p| p.prune).collect();
        return Ok((prunes, plan.unreachable, None));
    }
    let (pruned, recorded) = engine.act(&work, None, cancel).await?.split();
    Ok((pruned.prunes, pruned.unreachable, recorded.err()))
}
