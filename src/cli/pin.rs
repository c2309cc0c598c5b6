//! `backup pin ID --job J` / `backup unpin ID --job J`: keep a backup out of
//! prune's reach (a legal hold, the last copy before a migration), and let it go.

use serde_json::json;

use crate::engine::{Engine, Pin};
use crate::error::Result;
use crate::model::BackupId;

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The backup, as `backup list` shows it.
    #[arg(value_name = "ID")]
    id: String,
    #[arg(long, value_name = "JOB")]
    job: String,
    /// Why it is kept: shown by `list` and in prune's plan.
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
}

#[derive(Debug, clap::Args)]
pub struct UnpinArgs {
    #[arg(value_name = "ID")]
    id: String,
    #[arg(long, value_name = "JOB")]
    job: String,
}

pub async fn pin(
    engine: &Engine,
    args: PinArgs,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let id = BackupId::parse(&args.id)?;
    let work = Pin::new(&engine.config, &args.job, id.clone(), Some(&args.reason))?;
    // Planned first: a backup that is not there is the operator's typo, not
    // a failed run to record and announce.
    let plan = engine.plan(&work, cancel).await?;
    let (storages, recorded) = engine.act(&work, Some(plan), cancel).await?.split();
    if json {
        return super::print_json(
            &json!({"job": args.job, "id": id, "pinned": true, "reason": args.reason, "storages": storages}),
        )
        .and(recorded);
    }
    println!(
        "backup {id} of job {} pinned in {}: prune keeps it until `backup unpin {id} --job {}`",
        args.job,
        storages.join(", "),
        args.job
    );
    recorded
}

pub async fn unpin(
    engine: &Engine,
    args: UnpinArgs,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let id = BackupId::parse(&args.id)?;
    let work = Pin::new(&engine.config, &args.job, id.clone(), None)?;
    // Planned first: a backup that is not there is the operator's typo, not
    // a failed run to record and announce.
    let plan = engine.plan(&work, cancel).await?;
    let (storages, recorded) = engine.act(&work, Some(plan), cancel).await?.split();
    if json {
        return super::print_json(
            &json!({"job": args.job, "id": id, "pinned": false, "storages": storages}),
        )
        .and(recorded);
    }
    println!(
        "backup {id} of job {} unpinned in {}: retention decides its fate again",
        args.job,
        storages.join(", ")
    );
    recorded
}
