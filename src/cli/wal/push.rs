//! `backup wal push --job J PATH`: PostgreSQL's `archive_command`.
//!
//! PostgreSQL reads only the exit code: 0 when the file is in every storage
//! of the job (or the queue valve dropped it, which the server log says
//! loudly), non-zero otherwise, and then keeps the file and calls again.
//! Every code is below 126, which PostgreSQL would take for a crash of the
//! command. A failure is also noted in the job's spool for `status` and
//! the metrics.

use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::wal::push::{Archive, Outcome, Storages};
use crate::wal::spool::{self, PushFailure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The physical job whose archive takes the file.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The file, as PostgreSQL passes it (%p: pg_wal/000000010000000000000001).
    path: PathBuf,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let (job, spec, _, wal) = engine.config.physical_job(&args.job, "wal push")?;
    let archive = Archive {
        job: &job.name,
        compression: spec.compression,
        crypt: crate::archive::crypt::sealing(spec.encryption.as_ref())?,
        // Opened only when needed: a call the spool answers opens none.
        storages: Storages::new(
            spec.storages.iter().map(|s| s.name.clone()).collect(),
            |i| {
                Box::pin(async move {
                    engine
                        .open_all(&spec.storages[i..=i])
                        .await?
                        .pop()
                        .ok_or_else(|| Error::internal("opening one storage gave none"))
                })
            },
        ),
    };
    let now = engine.clock().now();
    let outcome = match crate::wal::push::archive_command(&archive, wal, &args.path, now).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let failure = PushFailure {
                at: engine.clock().now(),
                file: args
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| args.path.display().to_string()),
                error: e.message().to_owned(),
            };
            // The push failed either way: a spool that cannot take the
            // note changes nothing PostgreSQL hears.
            if let Err(note) = spool::record_push_failure(&wal.spool, &job.name, &failure) {
                tracing::debug!("job {}: {}", job.name, note.message());
            }
            return Err(e);
        }
    };
    match &outcome {
        Outcome::Pushed { pushed, ahead } => {
            if pushed.stored.is_empty() {
                tracing::info!("job {}: {} was archived already", job.name, pushed.file);
            } else {
                tracing::info!(
                    "job {}: archived {} ({} bytes) to {}",
                    job.name,
                    pushed.file,
                    pushed.size,
                    pushed.stored.join(", ")
                );
            }
            for a in ahead.iter().filter(|a| !a.stored.is_empty()) {
                tracing::info!(
                    "job {}: archived {} ahead ({} bytes) to {}",
                    job.name,
                    a.file,
                    a.size,
                    a.stored.join(", ")
                );
            }
        }
        Outcome::Spooled { file, .. } => {
            tracing::info!("job {}: {file} was pushed ahead already", job.name);
        }
        // Said loudly where it happened.
        Outcome::Dropped(_) => {}
    }
    if json {
        super::super::print_json(&outcome_json(&job.name, &outcome))?;
    }
    Ok(())
}

fn outcome_json(job: &str, outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Pushed { pushed, ahead } => serde_json::json!({
            "job": job,
            "outcome": "pushed",
            "file": pushed.file.name(),
            "sha256": pushed.sha256,
            "size": pushed.size,
            "stored": pushed.stored,
            "already": pushed.already,
            "pushed_ahead": ahead.iter().map(|a| a.file.name()).collect::<Vec<_>>(),
        }),
        Outcome::Spooled { file, sha256 } => serde_json::json!({
            "job": job,
            "outcome": "pushed_ahead_already",
            "file": file.name(),
            "sha256": sha256,
        }),
        Outcome::Dropped(d) => serde_json::json!({
            "job": job,
            "outcome": "dropped",
            "file": d.file.name(),
            "backlog_bytes": d.backlog_bytes,
            "limit_bytes": d.limit_bytes,
            "marked": d.marked,
            "unmarked": d.unmarked.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        }),
    }
}
