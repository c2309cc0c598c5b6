//! `backup verify --job J [--id ID | --latest | --all]`: read backups back and
//! check them against their manifests; `backup verify --job J --wal`: read a
//! physical job's WAL archive back and follow it from its oldest base backup.

use crate::catalog::Role;
use crate::engine::{Engine, Verify};
use crate::error::{Error, Result};
use crate::jobs::verify::{self, Selection};
use crate::jobs::wal_verify;
use crate::model::BackupId;
use crate::report::bytes_human;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").args(["latest", "id", "all"])))]
pub struct Args {
    /// The backup job whose backups to verify.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The newest backup (the default).
    #[arg(long)]
    latest: bool,
    /// The backup with this id (see `backup list`).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Every complete backup.
    #[arg(long)]
    all: bool,
    /// Only the copies in this storage (default: every storage of the job).
    #[arg(long, value_name = "STORAGE")]
    storage: Option<String>,
    /// The WAL archive of a physical job instead of its base backups: every
    /// segment from the oldest base backup's start to the newest, read back.
    #[arg(long, conflicts_with = "which")]
    wal: bool,
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    if args.wal {
        return run_wal(engine, args, json, cancel).await;
    }
    let which = match (&args.id, args.all) {
        (Some(id), _) => Selection::Id(BackupId::parse(id)?),
        (None, true) => Selection::All,
        (None, false) => Selection::Latest,
    };
    let work = Verify::new(&engine.config, &args.job, which, args.storage.as_deref())?;
    // Planned first, as restore and drill are: an unknown id or a job with no
    // backups is said, not recorded and announced as a failed verify.
    let plan = engine.plan(&work, cancel).await?;
    let (checks, recorded) = engine.act(&work, Some(plan), cancel).await?.split();
    if json {
        super::print_json(&serde_json::json!({
            "job": args.job,
            "ok": verify::failure(&checks).is_none(),
            "backups": checks,
        }))?;
    } else {
        for b in &checks {
            println!(
                "backup {} in storage {}: {}",
                b.backup_id,
                b.storage,
                if b.ok() { "ok" } else { "BAD" }
            );
            for o in &b.objects {
                match &o.error {
                    None => println!(
                        "  ok   {}: {} stored, {} raw, digests match{}{}",
                        o.key,
                        bytes_human(o.stored_size),
                        bytes_human(o.raw_size),
                        o.archive_entries.map_or(String::new(), |n| match o.role {
                            Some(Role::Base) =>
                                format!("; {n} files match the tar's backup_manifest"),
                            Some(Role::Files) => format!("; a tar of {n} entries"),
                            _ => format!("; a pg_dump archive of {n} entries"),
                        }),
                        o.rows.map_or(String::new(), |n| format!(
                            "; its {n} rows are the manifest's, table by table{}",
                            match o.tables_not_recounted {
                                0 => String::new(),
                                k => format!(
                                    " ({k} table(s) named outside ASCII in an archive not \
                                     in UTF-8 not counted again)"
                                ),
                            }
                        ))
                    ),
                    Some(e) if o.unread => println!("  UNREAD  {}: {e}", o.key),
                    Some(e) => println!("  BAD  {}: {e}", o.key),
                }
            }
        }
    }
    match verify::failure(&checks) {
        None => recorded,
        Some(failure) if verify::failure_kind(&checks) == crate::error::Kind::Storage => Err(
            Error::storage(format!("job {}: {failure}", args.job)).with_hint(
                "nothing was found wrong with the backup: the storage failed while it was \
                 read; check the storage and run verify again",
            ),
        ),
        Some(failure) => Err(
            Error::integrity(format!("job {}: {failure}", args.job)).with_hint(
                "restore from another backup or storage; `backup verify --all` checks the others",
            ),
        ),
    }
}

/// `--wal`: the archive of a physical job, in every storage (or `--storage`).
async fn run_wal(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let (job, spec, _, _) = engine.config.physical_job(&args.job, "verify --wal")?;
    let specs: Vec<_> = spec
        .storages
        .iter()
        .filter(|s| args.storage.as_deref().is_none_or(|only| s.name == only))
        .cloned()
        .collect();
    if specs.is_empty() {
        return Err(Error::usage(format!(
            "job {} does not archive WAL in storage '{}'",
            job.name,
            args.storage.as_deref().unwrap_or_default()
        ))
        .with_hint(format!(
            "the job's storages: {}",
            spec.storages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let storages = engine.open_all(&specs).await?;
    let checks = tokio::select! {
        checks = wal_verify::verify(&job.name, &storages, spec.keys()) => checks?,
        () = cancel.cancelled() => {
            return Err(Error::interrupted(format!(
                "job {}: verify --wal stopped before it finished",
                job.name
            )));
        }
    };
    let zone = &job.timezone;
    let failure = wal_verify::failure(&job.name, &checks, zone);
    if json {
        super::print_json(&serde_json::json!({
            "job": job.name,
            "ok": failure.is_none(),
            "storages": checks,
        }))?;
    } else {
        for c in &checks {
            print_wal_check(c, zone);
        }
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

fn print_wal_check(c: &wal_verify::WalCheck, zone: &jiff::tz::TimeZone) {
    println!(
        "WAL archive in storage {}: {}",
        c.storage,
        if c.ok() { "ok" } else { "BAD" }
    );
    match (&c.from, &c.from_backup) {
        (Some(from), Some(id)) => println!("  from   {from}, where base backup {id} starts"),
        (Some(from), None) => println!(
            "  from   {from}, the oldest archived segment: the job has no complete base backup here"
        ),
        (None, _) => println!("  from   nothing: no segment is archived"),
    }
    if !c.unreadable_backups.is_empty() {
        println!(
            "  note   not considered, their manifest does not read: {} \
             (`backup verify` says why)",
            c.unreadable_backups.join(", ")
        );
    }
    if let Some(newest) = &c.newest {
        let timelines: Vec<String> = c.timelines.iter().map(u32::to_string).collect();
        println!(
            "  path   {} segments, newest {newest}{}; timeline{} {}",
            c.segments,
            c.newest_at.map_or(String::new(), |at| format!(
                " (archived {})",
                crate::time::show(at, zone)
            )),
            if timelines.len() == 1 { "" } else { "s" },
            timelines.join(" -> ")
        );
    }
    println!(
        "  read   {} objects, {} raw, each against the digest its name carries",
        c.objects,
        bytes_human(c.bytes)
    );
    for gap in &c.gaps {
        println!("  GAP    {}", gap.describe(zone));
    }
    for bad in &c.corrupt {
        println!(
            "  BAD    {}: {}{}",
            bad.key,
            bad.error,
            if bad.on_path {
                ""
            } else {
                " (not on the recovery path)"
            }
        );
    }
    for unread in &c.unread {
        println!("  UNREAD {}: {}", unread.key, unread.error);
    }
    if !c.ok()
        && let Some(reachable) = &c.reachable
        && c.newest.as_ref() != Some(reachable)
    {
        println!(
            "  recovery from {} reaches {reachable} and stops",
            c.from.as_deref().unwrap_or("?")
        );
    }
}
