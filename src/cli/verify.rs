//! `backup verify --job J [--id ID | --latest | --all]`: read backups back and
//! check them against their manifests.

use crate::engine::{Engine, Verify};
use crate::error::{Error, Result};
use crate::jobs::verify::{self, Selection};
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
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
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
                        "  ok   {}: {} stored, {} raw, digests match{}",
                        o.key,
                        bytes_human(o.stored_size),
                        bytes_human(o.raw_size),
                        o.archive_entries.map_or(String::new(), |n| format!(
                            "; a pg_dump archive of {n} entries"
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
