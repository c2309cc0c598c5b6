//! `backup restore`: plan, show, confirm, execute, prove.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use crate::catalog::Selector;
use crate::engine::{Engine, Restore, RestoreDir, Stop};
use crate::error::{Error, Result};
use crate::jobs::restore::RestoreRequest;
use crate::model::BackupId;
use crate::pg::command::RestoreFlags;
use crate::time;

impl Args {
    /// What an interrupted restore leaves incomplete, and how to redo it.
    pub(super) fn stop(&self) -> Stop<'_> {
        match (&self.target_db, &self.target_dir) {
            (_, Some(dir)) => Stop::RestoreDir {
                target: dir,
                force: self.force,
                in_place: self.in_place,
            },
            (db, None) => Stop::Restore {
                target_db: db.as_deref().unwrap_or_default(),
                in_place: self.in_place,
            },
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["at", "latest", "id"])))]
#[command(group(clap::ArgGroup::new("into").required(true).args(["target_db", "target_dir"])))]
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
    target_db: Option<String>,
    /// A files job: the directory to restore into, new or empty; created if
    /// missing. Modes, times and symlinks come back as they were.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<std::path::PathBuf>,
    /// With --target-dir: replace a directory that is not empty. The backup
    /// is restored beside it and swapped in once its digests check out.
    #[arg(long, requires = "target_dir")]
    force: bool,
    /// Read from this storage instead of the job's first that has the backup.
    #[arg(long, value_name = "STORAGE")]
    storage: Option<String>,
    /// Replace an existing, non-empty target database: the backup is restored
    /// beside it, proven, and swapped in; a failure leaves the target as it was.
    #[arg(long, conflicts_with = "target_dir")]
    clean: bool,
    /// Restore into the target itself instead of beside it: with --clean, a
    /// database that holds something is DROPPED FIRST; with --force, files
    /// are written into the directory, replacing those of the same name. For
    /// a server without room for a second copy; a failed restore leaves the
    /// target incomplete.
    #[arg(long)]
    in_place: bool,
    /// Keep the restored copy when it fails its proof, for a look.
    #[arg(long)]
    keep_failed: bool,
    /// Create the backup's roles that the target server lacks, from its
    /// globals, before restoring (roles that exist are left as they are):
    /// for a new server, or an upgrade to a newer major.
    #[arg(long, conflicts_with = "target_dir")]
    globals: bool,
    /// Parallel pg_restore jobs; above 1 the archive is spooled to a temp file.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with = "target_dir")]
    jobs: u32,
    /// Do not ask for confirmation on a terminal.
    #[arg(long)]
    yes: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not restore object ownership (pg_restore --no-owner).
    #[arg(long, conflicts_with = "target_dir")]
    no_owner: bool,
    /// Do not restore privileges (pg_restore --no-acl).
    #[arg(long, conflicts_with = "target_dir")]
    no_acl: bool,
    /// A physical job: start the server on the restored directory, wait for
    /// recovery to reach the target, prove the result and leave it running.
    #[arg(long, requires = "target_dir")]
    start: bool,
    /// With --start: the port the restored server listens on.
    #[arg(long, value_name = "PORT", requires = "start")]
    port: Option<u16>,
    /// A physical job: pause at the target instead of promoting, for a look
    /// before `SELECT pg_wal_replay_resume()`.
    #[arg(long, requires = "target_dir")]
    pause: bool,
    /// A physical job: recover along this timeline [default: the newest].
    #[arg(long, value_name = "N", requires = "target_dir")]
    timeline: Option<u32>,
    /// A physical job: the restored server archives WAL as the backed-up
    /// one did, into this job on its new timeline: for a restore that
    /// becomes the primary. Without it, archive_mode = off, so a copy
    /// restored beside the primary never pushes a timeline into its archive.
    #[arg(long, requires = "target_dir")]
    archive: bool,
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let job = engine.config.job(&args.job)?;
    if let crate::model::JobKind::Backup(b) = &job.kind
        && b.cluster().is_some()
    {
        return restore_pitr(engine, &args, json, cancel).await;
    }
    if args.start || args.pause || args.timeline.is_some() || args.archive {
        return Err(Error::usage(format!(
            "job {} is not a physical job: --start, --pause, --timeline and --archive are \
             for point-in-time restores of physical jobs",
            args.job
        ))
        .with_hint("leave them out"));
    }
    let selector = if let Some(at) = &args.at {
        Selector::At(time::parse_point(at, &job.timezone)?)
    } else if let Some(id) = &args.id {
        Selector::Id(BackupId::parse(id)?)
    } else {
        Selector::Latest
    };
    let Some(target_db) = args.target_db.clone() else {
        return restore_dir(engine, &args, selector, json, cancel).await;
    };
    crate::pg::database::check_name(&target_db)?;
    let request = RestoreRequest {
        selector,
        target_db,
        storage: args.storage.clone(),
        flags: RestoreFlags {
            jobs: args.jobs,
            no_owner: args.no_owner,
            no_acl: args.no_acl,
            no_tablespaces: false,
        },
        clean: args.clean,
        in_place: args.in_place,
        keep_failed: args.keep_failed,
        globals: args.globals,
    };
    let work = Restore::new(&engine.config, &args.job, request)?;
    let plan = engine.plan(&work, cancel).await?;
    let b = &plan.backup;
    say_selected(b, plan.requested_at, &plan.timezone, "data");
    if args.dry_run {
        if json {
            return super::print_json(&json!({
                "dry_run": true, "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at,
                "storage": plan.storage, "target_db": plan.target_db,
                "method": plan.method.name(), "staging_db": plan.method.staging(),
                "leftovers": plan.leftovers, "overwrites": plan.overwrites(),
            }));
        }
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    // A stop while planning ends here, before anything is asked or done.
    if cancel.is_cancelled() {
        return Err(Error::interrupted("restore cancelled; nothing was changed"));
    }
    if !args.yes && std::io::stdin().is_terminal() {
        confirm(&format!("database {}", plan.target_db), plan.overwrites())?;
    }
    let (outcome, recorded) = engine.act(&work, Some(plan.clone()), cancel).await?.split();
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    if json {
        return super::print_json(&json!({
            "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at, "target_db": plan.target_db,
            "method": plan.method.name(),
            "tables_checked": outcome.tables_checked, "rows_checked": outcome.rows_checked,
            "warnings": outcome.warnings,
        }))
        .and(recorded);
    }
    println!(
        "restored backup {} (data as of {}) into database {}: all {} tables match the backup's row counts ({} rows){}",
        b.id,
        time::show(b.snapshot_at, &plan.timezone),
        plan.target_db,
        outcome.tables_checked,
        outcome.rows_checked,
        if plan.overwrites() && plan.method.staging().is_some() {
            "; it replaced the database that was there"
        } else {
            ""
        }
    );
    recorded
}

/// With `--at`, said first and plainly: which backup, and how far before
/// the asked time its `what` ("data", "files") is.
fn say_selected(
    b: &crate::catalog::Manifest,
    requested_at: Option<jiff::Timestamp>,
    zone: &jiff::tz::TimeZone,
    what: &str,
) {
    if let Some(at) = requested_at {
        eprintln!(
            "selected backup {}: {what} as of {}, {} before the requested {}",
            b.id,
            time::show(b.snapshot_at, zone),
            time::show_duration(at.duration_since(b.snapshot_at)),
            time::show(at, zone)
        );
    }
}

/// `--target-dir`: a files job's directory, written into a directory.
async fn restore_dir(
    engine: &Engine,
    args: &Args,
    selector: Selector,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let target = args
        .target_dir
        .as_deref()
        .ok_or_else(|| Error::internal("no --target-dir"))?;
    let work = RestoreDir::new(
        &engine.config,
        &args.job,
        selector,
        args.storage.clone(),
        target,
        crate::jobs::files::Replace {
            force: args.force,
            in_place: args.in_place,
            keep_failed: args.keep_failed,
        },
    )?;
    let plan = engine.plan(&work, cancel).await?;
    let b = &plan.backup;
    say_selected(b, plan.requested_at, &plan.timezone, "files");
    let target = plan.target.display().to_string();
    if args.dry_run {
        if json {
            return super::print_json(&json!({
                "dry_run": true, "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at,
                "storage": plan.storage, "target_dir": target, "existing_entries": plan.existing,
            }));
        }
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    // A stop while planning ends here, before anything is asked or done.
    if cancel.is_cancelled() {
        return Err(Error::interrupted("restore cancelled; nothing was changed"));
    }
    if !args.yes && std::io::stdin().is_terminal() {
        confirm(&format!("directory {target}"), plan.existing > 0)?;
    }
    let (outcome, recorded) = engine.act(&work, Some(plan.clone()), cancel).await?.split();
    if json {
        return super::print_json(&json!({
            "job": plan.job, "backup": b.id, "snapshot_at": b.snapshot_at,
            "target_dir": target, "entries": outcome.entries,
        }))
        .and(recorded);
    }
    println!(
        "restored backup {} (files as of {}) into {target}: {} entries, digests match the manifest",
        b.id,
        time::show(b.snapshot_at, &plan.timezone),
        outcome.entries,
    );
    recorded
}

/// A physical job: its base backup and WAL, recovered to a moment in a
/// data directory.
async fn restore_pitr(
    engine: &Engine,
    args: &Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    use crate::jobs::pitr::{Target, plan::PitrRequest};
    let job = engine.config.job(&args.job)?;
    let Some(dir) = args.target_dir.clone() else {
        return Err(Error::usage(format!(
            "job {} is a physical job: it restores into a data directory",
            args.job
        ))
        .with_hint("pass --target-dir DIR (and --start to run and prove it)"));
    };
    let target = match (&args.at, &args.id) {
        (Some(at), _) => Target::Time(time::parse_point(at, &job.timezone)?),
        (None, Some(_)) => {
            return Err(Error::usage(
                "--id does not say where recovery stops: a physical job restores to a moment",
            )
            .with_hint("pass --at TIME, or --latest for everything archived"));
        }
        (None, None) => Target::Latest,
    };
    let exe = std::env::current_exe().map_err(|e| {
        Error::io(
            crate::error::Kind::Internal,
            "finding this program's path",
            e,
        )
    })?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let request = PitrRequest {
        target,
        timeline: args.timeline,
        storage: args.storage.clone(),
        dir,
        force: args.force,
        pause: args.pause,
        archive: args.archive,
        port: args.port,
        exe,
        config: engine.config.source.clone(),
    };
    let work = crate::engine::PitrRestore::new(&engine.config, &args.job, request, args.start)?;
    let plan = engine.plan(&work, cancel).await?;
    if args.dry_run {
        if json {
            let mut value = plan.json();
            value["dry_run"] = true.into();
            return super::print_json(&value);
        }
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    if cancel.is_cancelled() {
        return Err(Error::interrupted("restore cancelled; nothing was changed"));
    }
    if !args.yes && std::io::stdin().is_terminal() {
        confirm(
            &format!("directory {}", plan.target_dir.display()),
            plan.dir.existing > 0,
        )?;
    }
    let (outcome, recorded) = engine.act(&work, Some(plan.clone()), cancel).await?.split();
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    let recovered_to = outcome.recovery.as_ref().and_then(|r| r.last_replayed);
    if json {
        return super::print_json(&json!({
            "job": plan.job, "backup": plan.backup.id, "target": plan.target,
            "target_dir": plan.target_dir, "recovered_to": recovered_to,
            "recovery": outcome.recovery, "proof": outcome.proof,
            "started": outcome.running.is_some(),
            "port": outcome.running.as_ref().map(|r| r.port),
            "stop_command": outcome.running.as_ref().map(|r| r.stop_command.clone()),
            "laid": outcome.laid,
        }))
        .and(recorded);
    }
    println!(
        "restored base backup {} into {} ({} files, {})",
        plan.backup.id,
        plan.target_dir.display(),
        outcome.laid.files,
        crate::report::bytes_human(outcome.laid.bytes)
    );
    match (&outcome.running, &outcome.recovery) {
        (Some(running), Some(end)) => {
            println!(
                "recovered to {}{}; timeline {}",
                recovered_to.map_or(
                    "the base backup (no transaction replayed)".to_owned(),
                    |at| {
                        format!(
                            "{} (last transaction applied)",
                            time::show(at, &plan.timezone)
                        )
                    }
                ),
                end.stopped_before
                    .as_ref()
                    .map(|s| format!(
                        ", stopped before transaction {} of {}",
                        s.xid,
                        time::show(s.at, &plan.timezone)
                    ))
                    .unwrap_or_default(),
                end.timeline
            );
            println!(
                "took: base backup laid down {:.1}s; recovery {:.1}s ({} WAL files from the \
                 archive{}); proof {:.1}s",
                outcome.laid.seconds,
                end.seconds,
                end.segments_restored,
                end.replayed_bytes
                    .map(|b| format!(", {} replayed", crate::report::bytes_human(b)))
                    .unwrap_or_default(),
                outcome.proof.as_ref().map_or(0.0, |p| p.seconds)
            );
            if let Some(proof) = &outcome.proof {
                for c in &proof.checks {
                    println!(
                        "  {} {}: {}",
                        if c.passed { "ok  " } else { "FAIL" },
                        c.check,
                        c.actual
                    );
                }
            }
            println!(
                "the server is running on port {}: stop it with {}",
                running.port, running.stop_command
            );
        }
        _ => println!("{}", crate::jobs::pitr::run::how_to_start(&plan)),
    }
    recorded
}

/// Asks on the terminal; anything but the expected answer cancels.
/// `target` is what is named: "database app", "directory /srv/uploads".
fn confirm(target: &str, overwrites: bool) -> Result<()> {
    let name = target.split_once(' ').map_or(target, |(_, name)| name);
    let expected = if overwrites { name } else { "yes" };
    eprint!(
        "{}type {expected} to continue: ",
        if overwrites {
            format!("this replaces what is in {target}; ")
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
