//! `backup wal fetch --job J NAME PATH`: PostgreSQL's `restore_command`.
//!
//! PostgreSQL reads only the exit code: 0 when the file is at PATH, 1 when
//! the archive does not have it (said at debug level only: recovery asks
//! for such files as a matter of course), and another code below 126 for a
//! failure, so a storage that did not answer is not mistaken for the end of
//! the archive in this command's own output.

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::crypt::Crypt;
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::keys::Identities;
use crate::wal::fetch::{Archive, Outcome, Source};
use crate::wal::push::Storages;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The physical job whose archive holds the file.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The file's name, as PostgreSQL passes it (%f: 000000010000000000000001).
    name: String,
    /// Where to write it, as PostgreSQL passes it (%p: pg_wal/RECOVERYXLOG).
    path: PathBuf,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let (job, spec, _, wal) = engine.config.physical_job(&args.job, "wal fetch")?;
    let keys = spec.encryption.as_ref();
    // The environment's identity opens old encrypted objects even when the
    // job no longer encrypts.
    let crypt = match Identities::load(
        keys.and_then(|e| e.passphrase.as_ref()),
        keys.and_then(|e| e.identity_file.as_deref()),
    )? {
        Some(identities) => Crypt::Open(Arc::new(identities)),
        None => Crypt::None,
    };
    let archive = Archive {
        job: &job.name,
        crypt,
        // Opened in turn, only as far as the file is looked for.
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
    let outcome =
        crate::wal::fetch::restore_command(&archive, wal, &args.name, &args.path, now).await?;
    match outcome {
        Outcome::NotArchived { file } => {
            tracing::debug!("job {}: {file} is not archived", job.name);
            // restore_command's answer for a file the archive does not
            // have is exit 1 and nothing said.
            Err(Error::new(
                Kind::Internal,
                format!("job {}: {file} is not archived", job.name),
            )
            .reported())
        }
        Outcome::Fetched {
            file,
            size,
            from,
            ahead,
        } => {
            let from = match from {
                Source::Spool => "spool".to_owned(),
                Source::Storage(s) => s,
            };
            if from == "spool" {
                tracing::debug!("job {}: restored {file} fetched ahead", job.name);
            } else {
                tracing::info!(
                    "job {}: restored {file} ({size} bytes) from storage {from}{}",
                    job.name,
                    if ahead.is_empty() {
                        String::new()
                    } else {
                        format!(", and fetched {} ahead", ahead.join(", "))
                    }
                );
            }
            if json {
                super::super::print_json(&serde_json::json!({
                    "job": job.name,
                    "file": file.name(),
                    "size": size,
                    "from": from,
                    "fetched_ahead": ahead,
                }))?;
            }
            Ok(())
        }
    }
}
