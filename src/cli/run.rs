//! `backup run JOB...`: run jobs once, now.

use serde_json::json;

use crate::engine::{Engine, Output, RunRequest};
use crate::error::{Error, Result};
use crate::jobs::maintenance::{self, MaintenanceOutcome, Plan, StepStatus};
use crate::jobs::prune;
use crate::jobs::restore_test::RestoreTestOutcome;
use crate::model::{BackupSource, Job, JobKind};
use crate::report::bytes_human;
use crate::time;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The jobs to run, in order.
    #[arg(required = true, value_name = "JOB")]
    jobs: Vec<String>,
    /// Print what each job would do, and why, without doing it.
    #[arg(long)]
    dry_run: bool,
    /// Back up a database other than the one the job's previous backups are
    /// of (a new server, a restored copy): once, for a deliberate move.
    #[arg(long)]
    accept_new_source: bool,
    /// A physical job with `incremental = true`: take a full base backup
    /// now, starting a new chain.
    #[arg(long)]
    full: bool,
}

/// How many tables a text plan names as left alone before it counts the rest.
const SHOWN_LEFT_ALONE: usize = 20;

fn print_plan(plan: &Plan) {
    for warning in &plan.warnings {
        println!("  warning: {warning}");
    }
    if plan.steps.is_empty() {
        println!("  nothing to do");
    }
    for (i, step) in plan.steps.iter().enumerate() {
        println!(
            "  {:>3}. {} {}{}: {}",
            i + 1,
            step.action.name(),
            step.target(),
            if step.urgent { " [URGENT]" } else { "" },
            step.reason
        );
    }
    if !plan.left_alone.is_empty() {
        println!("  left alone: {} table(s)", plan.left_alone.len());
        for l in plan.left_alone.iter().take(SHOWN_LEFT_ALONE) {
            println!("       {}: {}", l.table, l.reason);
        }
        if plan.left_alone.len() > SHOWN_LEFT_ALONE {
            println!(
                "       ... and {} more (--json lists every one)",
                plan.left_alone.len() - SHOWN_LEFT_ALONE
            );
        }
    }
}

/// What `--dry-run` says of one job. Nothing is changed, locked or recorded.
async fn dry_run(engine: &Engine, job: &Job, json: bool) -> Result<serde_json::Value> {
    match &job.kind {
        JobKind::Maintenance(spec) => {
            let preview = maintenance::preview(spec).await?;
            if !json {
                println!(
                    "job {}: maintenance plan for database {} (dry run: nothing changed)",
                    job.name, preview.database
                );
                match &preview.plan {
                    Some(plan) => print_plan(plan),
                    None => println!("  the server is a standby: a run would do nothing"),
                }
            }
            Ok(json!({"job": job.name, "type": "maintenance", "dry_run": true, "preview": preview}))
        }
        JobKind::Prune(spec) => {
            let (bjob, bspec) = engine.config.backup_job(&spec.backup_job)?;
            let work = crate::engine::Prune::new(bjob, bspec)?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let (prunes, unreachable, _) =
                super::prune::prune_job(engine, work, true, &cancel).await?;
            if !json {
                for p in &prunes {
                    super::prune::print(&spec.backup_job, p, true, &job.timezone);
                }
            }
            if let Some(e) = unreachable {
                return Err(e);
            }
            Ok(json!({"job": job.name, "type": "prune", "dry_run": true, "storages": prunes}))
        }
        JobKind::RestoreTest(t) if engine.config.physical_job(&t.backup_job, "").is_ok() => {
            let storages = engine.open_all(&t.storages).await?;
            let plan = crate::jobs::pitr::drill::plan(
                &engine.config,
                &t.backup_job,
                crate::jobs::pitr::drill::When::Recent,
                t.checks.clone(),
                vec![job.name.clone()],
                &storages,
            )
            .await?;
            if !json {
                println!("{plan}");
                println!("dry run: nothing was changed");
            }
            Ok(
                json!({"job": job.name, "type": "restore-test", "dry_run": true, "plan": plan.pitr.json()}),
            )
        }
        JobKind::RestoreTest(_) => {
            let plan = engine.plan_restore_test(&job.name).await?;
            if !json {
                println!("{plan}");
                println!("dry run: nothing was changed");
            }
            Ok(json!({"job": job.name, "type": "restore-test", "dry_run": true, "plan": plan}))
        }
        JobKind::Backup(spec) => {
            let storages: Vec<&str> = spec.storages.iter().map(|s| s.name.as_str()).collect();
            let (what, database) = match &spec.source {
                BackupSource::Database(db) => {
                    (format!("database {} ({})", db.name, db.url), Some(&db.name))
                }
                BackupSource::Directory(dir) => (format!("directory {}", dir.display()), None),
                BackupSource::Cluster { database: db, .. } => (
                    format!("the cluster of database {} ({})", db.name, db.url),
                    Some(&db.name),
                ),
            };
            if !json {
                println!(
                    "job {}: would back up {what} to {}, compressed with {} (dry run: nothing done)",
                    job.name,
                    storages.join(", "),
                    spec.compression
                );
            }
            Ok(json!({
                "job": job.name, "type": job.kind.name(), "dry_run": true,
                "database": database, "storages": storages,
                "compression": spec.compression.to_string(),
            }))
        }
    }
}

fn print_maintenance(name: &str, o: &MaintenanceOutcome) {
    println!(
        "job {name}: maintenance of database {}: {}",
        o.database,
        maintenance::summary(o)
    );
    for warning in &o.warnings {
        println!("  warning: {warning}");
    }
    for r in &o.steps {
        let status = match r.status {
            StepStatus::Done => "done",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "FAILED",
        };
        let change = match (&r.before, &r.after) {
            (before, Some(after)) => {
                let mut parts = Vec::new();
                if let (Some(b), Some(a)) = (before.dead_tuples, after.dead_tuples) {
                    parts.push(format!("dead tuples {b} -> {a}"));
                }
                if let (Some(b), Some(a)) = (before.total_bytes, after.total_bytes) {
                    parts.push(format!(
                        "size {} -> {}",
                        bytes_human(b.max(0) as u64),
                        bytes_human(a.max(0) as u64)
                    ));
                }
                parts.join(", ")
            }
            _ => r.note.clone().unwrap_or_default(),
        };
        println!(
            "  {status:<8} {} {}: {change} ({:.1}s)",
            r.step.action.name(),
            r.step.target(),
            r.seconds
        );
    }
}

/// Prints the checks of a proof, one per line, failures marked.
pub(super) fn print_checks(checks: &[crate::jobs::proof::CheckResult]) {
    for c in checks {
        println!(
            "  {:<6} {}: expected {}, found {}",
            if c.passed { "ok" } else { "FAILED" },
            c.check,
            c.expected,
            c.actual
        );
    }
}

fn print_pitr_test(
    name: &str,
    o: &crate::jobs::pitr::drill::PitrDrillOutcome,
    zone: &jiff::tz::TimeZone,
) {
    let show = |at: jiff::Timestamp| crate::time::show(at, zone);
    println!(
        "job {name}: point-in-time restore test of job {} from base backup {}: {}; asked for {}, \
         recovered to {}; RTO {}, {} WAL segments replayed",
        o.backup_job,
        o.backup_id,
        if o.failure().is_none() {
            "passed"
        } else {
            "FAILED"
        },
        o.requested_at
            .map_or("the end of the archive".to_owned(), show),
        o.recovered_to.map_or("no transaction".to_owned(), show),
        o.rto_seconds
            .map_or("not reached".to_owned(), |s| format!("{s:.1}s")),
        o.wal_segments
    );
    for c in &o.proof.checks {
        println!(
            "  {} {}: expected {}, found {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.check,
            c.expected,
            c.actual
        );
    }
    if let Some(e) = &o.error {
        println!("  error: {e}");
    }
}

fn print_restore_test(name: &str, o: &RestoreTestOutcome) {
    println!(
        "job {name}: restore test of backup {} (job {}): {} in {} ({} restored from {}, checks took {:.1}s)",
        o.backup_id,
        o.backup_job,
        if o.failure().is_none() {
            "passed"
        } else {
            "FAILED"
        },
        o.scratch_database,
        bytes_human(o.raw_bytes),
        o.storage,
        o.verify_seconds
    );
    println!(
        "  RTO {:.1}s (restore {:.1}s); scratch database {}",
        o.rto_seconds,
        o.restore_seconds,
        if o.kept { "kept" } else { "dropped" }
    );
    if let Some(e) = &o.restore_error {
        println!("  restore FAILED: {e}");
    }
    print_checks(&o.proof.checks);
    for w in &o.warnings {
        println!("  warning: {w}");
    }
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    // Check every name before running anything: a typo must not leave half the
    // list done.
    for name in &args.jobs {
        engine.config.job(name)?;
    }
    let mut report = Report::new(json);
    if args.dry_run {
        for name in &args.jobs {
            match dry_run(engine, engine.config.job(name)?, json).await {
                Ok(result) => report.items.push(result),
                Err(e) => report.failed(name, e),
            }
        }
        return report.finish();
    }
    for name in &args.jobs {
        let job = engine.config.job(name)?;
        let request = RunRequest {
            accept_new_source: args.accept_new_source,
            full: args.full,
            ..RunRequest::manual(cancel)
        };
        let mut unrecorded = None;
        let ran = engine.run_now(name, request).await.map(|done| {
            unrecorded = done.unrecorded;
            done.value
        });
        match ran {
            Ok(Output::Maintenance(outcome)) => {
                if json {
                    let mut value = serde_json::to_value(&outcome).unwrap_or_default();
                    value["job"] = json!(name);
                    value["type"] = json!("maintenance");
                    value["ok"] = json!(outcome.failure().is_none());
                    report.items.push(value);
                } else {
                    print_maintenance(name, &outcome);
                }
                if let Some(failure) = outcome.failure() {
                    report.also(Error::database(format!("job {name}: {failure}")).with_hint(
                        "the run record names each step and its error; the next run plans again",
                    ));
                }
            }
            Ok(Output::Prune(prunes, unreachable)) => {
                let JobKind::Prune(spec) = &job.kind else {
                    continue;
                };
                if json {
                    report
                        .items
                        .push(json!({"job": name, "type": "prune", "storages": prunes}));
                } else {
                    for p in &prunes {
                        super::prune::print(&spec.backup_job, p, false, &job.timezone);
                    }
                }
                let unreachable = unreachable.map(Error::storage);
                for e in prune::failure(&prunes).into_iter().chain(unreachable) {
                    report.also(e.context(format!("job {name}")));
                }
            }
            Ok(Output::RestoreTest(outcome)) => {
                if json {
                    let mut value = outcome.details();
                    value["job"] = json!(name);
                    value["type"] = json!("restore-test");
                    value["ok"] = json!(outcome.failure().is_none());
                    report.items.push(value);
                } else {
                    print_restore_test(name, &outcome);
                }
                if let Some(failure) = outcome.failure() {
                    report.also(
                        Error::integrity(format!("job {name}: {failure}")).with_hint(
                            "the run record lists every check with what was expected and found",
                        ),
                    );
                }
            }
            Ok(Output::PitrTest(outcome)) => {
                if json {
                    let mut value = outcome.details();
                    value["job"] = json!(name);
                    value["type"] = json!("restore-test");
                    value["ok"] = json!(outcome.failure().is_none());
                    report.items.push(value);
                } else {
                    print_pitr_test(name, &outcome, &job.timezone);
                }
                if let Some(failure) = outcome.failure() {
                    report.also(
                        Error::new(
                            outcome.error_kind.unwrap_or(crate::error::Kind::Integrity),
                            format!("job {name}: {failure}"),
                        )
                        .with_hint("the run record lists every step and check with what was expected and found"),
                    );
                }
            }
            Ok(Output::Backup(outcome)) => {
                let m = &outcome.manifest;
                if json {
                    report.items.push(json!({
                        "job": name, "ok": outcome.failed.is_empty(), "backup": m.id,
                        "snapshot_at": m.snapshot_at, "raw_size": m.raw_size(),
                        "stored_size": m.stored_size(), "stored_in": outcome.stored_in,
                        "failed": outcome.failed.iter().map(|(s, e)| json!({"storage": s, "error": e.to_string()})).collect::<Vec<_>>(),
                    }));
                } else {
                    let holds = match (&m.tree, &m.physical) {
                        (Some(t), _) => format!("{} files", t.files),
                        (None, Some(p)) => format!(
                            "WAL {} .. {} on timeline {}, archived",
                            p.wal_start, p.wal_stop, p.timeline
                        ),
                        (None, None) => format!("{} tables", m.tables.len()),
                    };
                    println!(
                        "job {name}: backup {} complete in {} (data as of {}; {} raw, {} stored, {holds}, {})",
                        m.id,
                        outcome.stored_in.join(", "),
                        time::show(m.snapshot_at, &job.timezone),
                        bytes_human(m.raw_size()),
                        bytes_human(m.stored_size()),
                        time::show_duration(m.duration()),
                    );
                    for warning in &m.warnings {
                        println!("  warning: {warning}");
                    }
                }
                for (storage, e) in outcome.failed {
                    report.also(e.context(format!(
                        "job {name}: storage {storage} does not have backup {}",
                        m.id
                    )));
                }
            }
            // Said once, by the caller: what this job's kind leaves when stopped.
            Err(e) if e.kind() == crate::error::Kind::Interrupted => {
                let (stopped, _) =
                    crate::engine::stops::left_behind(crate::engine::Stop::Job(&job.kind));
                return Err(Error::interrupted(format!("job {name}: {stopped}")).reported());
            }
            Err(e) => report.failed(name, e),
        }
        if let Some(e) = unrecorded {
            report.also(e.context(format!("job {name}")));
        }
    }
    report.finish()
}

/// What `run` prints at the end (`--json`) and the first error, which sets
/// the exit code; every error is printed as it happens.
struct Report {
    json: bool,
    items: Vec<serde_json::Value>,
    first_error: Option<Error>,
}

impl Report {
    fn new(json: bool) -> Self {
        Report {
            json,
            items: Vec::new(),
            first_error: None,
        }
    }

    /// A job that did not run, or did not finish.
    fn failed(&mut self, name: &str, e: Error) {
        if self.json {
            self.items
                .push(json!({"job": name, "ok": false, "error": e.to_string()}));
        }
        self.also(e.context(format!("job {name}")));
    }

    /// An error beside a result already reported.
    fn also(&mut self, e: Error) {
        crate::report::print_error(&e);
        self.first_error.get_or_insert(e);
    }

    fn finish(self) -> Result<()> {
        if self.json {
            super::print_json(&self.items)?;
        }
        // Already printed; the exit code is what is left to say.
        self.first_error.map_or(Ok(()), |e| Err(e.reported()))
    }
}
