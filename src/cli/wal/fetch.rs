//! `backup wal fetch --job J NAME PATH`: PostgreSQL's `restore_command`.
//!
//! PostgreSQL reads only the exit code, and reads every code below 126 as
//! "the archive does not have it": archive recovery then ends there and the
//! server is promoted onto a new timeline, short of the WAL the archive
//! holds. Only a code above 125 (or death by a signal) stops recovery with
//! FATAL, to be started again once the fault is fixed (PostgreSQL's
//! `shell_restore`, `wait_result_is_any_signal`). So this command answers:
//! - 0 when the file is at PATH;
//! - 1 when every storage answered and none has it, said at debug level
//!   only: recovery asks for such files as a matter of course;
//! - 126 for every failure (a storage that did not answer, no good copy,
//!   PATH not writable, a bad job file or command line), printed as usual;
//! - but the failure's own code (below 126) when the working directory,
//!   which PostgreSQL makes the data directory, holds `standby.signal`: a
//!   standby that hears "not there" tries streaming replication and asks
//!   again later, where FATAL would shut it down.
//!
//! [`restore_exit_code`] gives these codes; `cli::main` uses it for this
//! command in place of the usual one.

use std::path::{Path, PathBuf};
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
    // PostgreSQL runs restore_command in the data directory.
    let data_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let outcome =
        crate::wal::fetch::restore_command(&archive, wal, &args.name, &args.path, &data_dir, now)
            .await?;
    match outcome {
        Outcome::NotArchived { file } => {
            tracing::debug!("job {}: {file} is not archived", job.name);
            // restore_command's answer for a file the archive does not
            // have is exit 1 and nothing said.
            Err(Error::new(
                Kind::NotFound,
                format!("job {}: {file} is not archived", job.name),
            )
            .with_source(NotArchived)
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

/// What marks the one error that is an answer: the file is not archived.
#[derive(Debug)]
struct NotArchived;

impl std::fmt::Display for NotArchived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not archived")
    }
}

impl std::error::Error for NotArchived {}

/// The code PostgreSQL reads as "not in the archive".
const NOT_ARCHIVED: u8 = 1;
/// The lowest code that makes PostgreSQL stop recovery with FATAL rather
/// than take the failure for the end of the archive.
const STOP_RECOVERY: u8 = 126;
/// A data directory holding it is a standby's.
const STANDBY_SIGNAL: &str = "standby.signal";

/// The exit code of `wal fetch` for `e` (see the module's documentation).
pub fn restore_exit_code(e: &Error) -> u8 {
    let answer = std::error::Error::source(e).is_some_and(|s| s.is::<NotArchived>());
    if answer {
        return NOT_ARCHIVED;
    }
    failure_code_here(e.exit_code())
}

/// The exit code of a failure whose usual code is `usual` (a clap usage
/// error has no [`Error`]); `standby` when the working directory holds
/// `standby.signal`.
pub fn failure_code(usual: u8, standby: bool) -> u8 {
    match standby {
        // Never the code of the answer, nor one that stops recovery.
        true if usual == NOT_ARCHIVED || usual >= STOP_RECOVERY => Kind::Refused.exit_code(),
        true => usual,
        false => STOP_RECOVERY,
    }
}

/// [`failure_code`] in the current working directory.
pub fn failure_code_here(usual: u8) -> u8 {
    failure_code(usual, Path::new(STANDBY_SIGNAL).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_answer_exits_1_and_every_failure_stops_recovery_unless_on_a_standby() {
        let answer = Error::not_found("job base: 000000010000000000000003 is not archived")
            .with_source(NotArchived)
            .reported();
        assert_eq!(restore_exit_code(&answer), 1);
        for kind in [
            Kind::Internal,
            Kind::Config,
            Kind::Storage,
            Kind::Integrity,
            Kind::NotFound,
            Kind::Refused,
            Kind::Usage,
        ] {
            assert_eq!(failure_code(kind.exit_code(), false), 126, "{kind:?}");
        }
        assert_eq!(failure_code(Kind::Integrity.exit_code(), true), 6);
        assert_eq!(failure_code(Kind::Storage.exit_code(), true), 5);
        // A standby is told neither "not archived" nor "stop".
        assert_eq!(failure_code(Kind::Internal.exit_code(), true), 9);
        assert_eq!(failure_code(Kind::Interrupted.exit_code(), true), 9);
    }
}
