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
//!
//! With `wal_fetch_ahead`, a call starts this same program in the
//! background as `wal fetch --job J --ahead-of SEGMENT --recovery KEY`
//! (hidden flags) to fetch the segments after it into the spool
//! ([`crate::wal::fetch::fetch_ahead`]); PostgreSQL does not wait for it.

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
    #[arg(required_unless_present = "ahead_of")]
    name: Option<String>,
    /// Where to write it, as PostgreSQL passes it (%p: pg_wal/RECOVERYXLOG).
    #[arg(required_unless_present = "ahead_of")]
    path: Option<PathBuf>,
    /// The background fetch a call starts: the segments after SEGMENT into
    /// the spool of the recovery KEY.
    #[arg(
        long,
        hide = true,
        value_name = "SEGMENT",
        requires = "recovery",
        conflicts_with_all = ["name", "path"]
    )]
    ahead_of: Option<String>,
    #[arg(long, hide = true, value_name = "KEY", requires = "ahead_of")]
    recovery: Option<String>,
}

impl Args {
    /// Whether this is the background fetch a call starts.
    pub fn is_ahead(&self) -> bool {
        self.ahead_of.is_some()
    }
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
    if let (Some(segment), Some(key)) = (&args.ahead_of, &args.recovery) {
        let fetched = crate::wal::fetch::fetch_ahead(&archive, wal, segment, key, now).await?;
        tracing::debug!(
            "job {}: fetched {} ahead of {segment}",
            job.name,
            fetched.len()
        );
        return Ok(());
    }
    let (Some(name), Some(path)) = (&args.name, &args.path) else {
        return Err(
            Error::usage("wal fetch needs the file's name and where to write it")
                .with_hint("restore_command = 'backup wal fetch --job J %f %p'"),
        );
    };
    // PostgreSQL runs restore_command in the data directory.
    let data_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let config = engine.config.source.as_deref();
    let start_ahead = |segment: &str, key: &str| start_ahead(config, &job.name, segment, key);
    let outcome =
        crate::wal::fetch::restore_command(&archive, wal, name, path, &data_dir, now, &start_ahead)
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
            fetching_ahead,
        } => {
            let from = match from {
                Source::Spool => "spool".to_owned(),
                Source::Storage(s) => s,
            };
            let ahead = if fetching_ahead {
                "; fetching the next segments in the background"
            } else {
                ""
            };
            if from == "spool" {
                tracing::debug!("job {}: restored {file} fetched ahead{ahead}", job.name);
            } else {
                tracing::info!(
                    "job {}: restored {file} ({size} bytes) from storage {from}{ahead}",
                    job.name,
                );
            }
            if json {
                super::super::print_json(&serde_json::json!({
                    "job": job.name,
                    "file": file.name(),
                    "size": size,
                    "from": from,
                    "fetching_ahead": fetching_ahead,
                }))?;
            }
            Ok(())
        }
    }
}

/// Starts `wal fetch --ahead-of SEGMENT` in the background, with the job
/// file this call read: detached (a process group of its own, so the
/// signals meant for PostgreSQL's group miss it), nothing on its standard
/// streams (PostgreSQL, or whoever runs this call, may wait for their
/// end), and in `/` (it holds no directory that may be removed).
fn start_ahead(config: Option<&Path>, job: &str, segment: &str, key: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Error::io(Kind::Internal, "finding this program's path", e))?;
    let mut command = Command::new(&exe);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(["wal", "fetch", "--job", job, "--ahead-of", segment])
        .args(["--recovery", key])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0);
    // Not waited for: it outlives this call, and init reaps it.
    command.spawn().map(drop).map_err(|e| {
        Error::io(
            Kind::Internal,
            format!("starting {} to fetch ahead", exe.display()),
            e,
        )
    })
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
